"""Who reaches whom: a TCP server that answers with its name and the peer it sees, and a
probe that tries several targets at once (at most a second each) and prints what each
answered (null: nothing). Plain Python scripts, run with `python3 -c` anywhere: in a
container, in a simulated host, on the test's side of an uplink."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence

SERVER = r"""
import socket, sys, threading
name, address = sys.argv[1], sys.argv[2]
def serve(port):
    s = socket.create_server((address, port), reuse_port=True)
    while True:
        c, peer = s.accept()
        c.sendall(f"{name} {peer[0]}".encode())
        c.close()
threads = [threading.Thread(target=serve, args=(int(p),)) for p in sys.argv[3:]]
[t.start() for t in threads]
print("listening", flush=True)
"""

PROBE = r"""
import json, socket, sys, threading
results = {}
def run(target):
    address, port = target.rsplit(":", 1)
    try:
        with socket.create_connection((address, int(port)), timeout=1) as c:
            c.settimeout(1)
            results[target] = c.recv(200).decode() or None
    except OSError:
        results[target] = None
threads = [threading.Thread(target=run, args=(t,)) for t in sys.argv[1:]]
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps(results))
"""


def server_argv(name: str, address: str, *ports: int) -> list[str]:
    return [sys.executable, "-c", SERVER, name, address, *map(str, ports)]


def start_server(name: str, address: str, *ports: int) -> subprocess.Popen[str]:
    """A server here (the caller ends it by PID); returns once it listens."""
    server = subprocess.Popen(server_argv(name, address, *ports), stdout=subprocess.PIPE,
                              text=True)
    assert server.stdout is not None
    if server.stdout.readline() != "listening\n":
        server.kill()
        raise AssertionError(f"the server {name} on {address} did not start")
    return server


def probe_argv(targets: Sequence[str]) -> list[str]:
    return ["/usr/bin/python3", "-c", PROBE, *targets]


def parse(output: str) -> dict[str, str | None]:
    result: dict[str, str | None] = json.loads(output.strip().splitlines()[-1])
    return result


def probe_here(*targets: str) -> dict[str, str | None]:
    done = subprocess.run(probe_argv(targets), capture_output=True, text=True, check=True,
                          timeout=30)
    return parse(done.stdout)
