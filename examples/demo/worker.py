"""Calls the API by its alias and by each replica's container name; exits 1 on any miss."""

import json
import os
import socket
import sys
import time
import urllib.request

API_URL = os.environ["API_URL"]


def get(url: str) -> dict[str, object]:
    deadline = time.monotonic() + 10
    while True:
        try:
            with urllib.request.urlopen(url, timeout=3) as response:
                return json.load(response)  # type: ignore[no-any-return]
        except OSError as exc:
            if time.monotonic() > deadline:
                raise SystemExit(f"worker: FAILED to reach {url}: {exc}") from exc
            time.sleep(0.1)  # the API may still be binding its port


def main() -> int:
    failures = 0
    for name in ("web", "api", "api-1", "api-2"):
        try:
            addresses = sorted({i[4][0] for i in socket.getaddrinfo(name, 8080)})
            print(f"worker: {name} resolves to {', '.join(addresses)}")
        except socket.gaierror as exc:
            print(f"worker: FAILED to resolve {name}: {exc}")
            failures += 1
    try:
        socket.getaddrinfo("kv", 7000)
        print("worker: FAILED: kv is on the backend network only, yet it resolved")
        failures += 1
    except socket.gaierror:
        print("worker: kv does not resolve here (not on a shared network), as it should")
    for url in (API_URL, "http://api-1:8080/", "http://api-2:8080/"):
        reply = get(url)
        print(f"worker: GET {url} -> {json.dumps(reply)}")
    print("worker: OK, every service was reached by name" if not failures else "worker: FAILED")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
