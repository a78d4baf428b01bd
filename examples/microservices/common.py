"""What the three services share: quiet exits on SIGTERM, a small HTTP client, and a
JSON request handler."""

import json
import signal
import sys
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler
from typing import Any

# Container addresses are local: never go through a proxy of the host's environment.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def exit_on_sigterm() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))


def call(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with OPENER.open(request, timeout=5) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    return status, json.loads(raw) if raw else None


class JsonHandler(BaseHTTPRequestHandler):
    def reply(self, status: int, body: Any = None) -> None:
        raw = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length)) if length else None
