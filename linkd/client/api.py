"""The CLI's side of the daemon API: HTTP over the unix socket, stdlib only.

Kept synchronous and small on purpose: a CLI command makes one or two requests, and
importing aiohttp's client costs more start-up time than the request itself. So does
http.client (it brings the email package and ssl: 20 of the 75 ms a `linkd ps` took),
so a request is written here: HTTP/1.0, which the daemon (aiohttp) answers without
chunked encoding and ends by closing the connection, so the answer is everything until
EOF, its status in the first line. For the same reason the client imports neither the
daemon nor the state store, only where they live (linkd.paths), and subprocess
only to start a daemon.
"""

from __future__ import annotations

import json
import os
import sys
import time

# The C socket type that socket.socket wraps: socket.py's own module body (enums for its
# constants, selectors) costs 2 to 4 ms, a tenth of a `linkd ps`, and a request needs none
# of it.
from _socket import AF_UNIX, SOCK_STREAM
from _socket import socket as c_socket
from pathlib import Path

from linkd import paths
from linkd.errors import LinkdError

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without the 3 ms import (see linkd/__init__)
if TYPE_CHECKING:
    from typing import Any

START_TIMEOUT = 10.0  # seconds for a daemon started by the CLI to answer
ANSWER_TIMEOUT = 2.0  # seconds for a running daemon to answer a question at all
REQUEST_TIMEOUT = 600.0  # `up` of a big stack, `down` with long grace periods


class DaemonError(LinkdError):
    """An error the daemon answered with; status and message as it said."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        error = body.get("error", {})
        lines = [str(error.get("message", f"HTTP {status}"))]
        for problem in error.get("problems") or []:
            at = f" (line {problem['line']})" if problem.get("line") else ""
            lines.append(f"  {problem.get('path')}{at}: {problem.get('message')}")
        super().__init__("\n".join(lines))
        self.status = status
        self.exit_code = 2 if status in (400, 422) else 1
        self.progress: list[str] = list(error.get("progress") or [])
        self.problems: list[tuple[str, int | None, str]] = [
            (str(p.get("path")), p.get("line"), str(p.get("message")))
            for p in error.get("problems") or []
        ]


def exchange(path: Path, method: str, target: str, body: bytes | None, timeout: float
             ) -> tuple[int, bytes]:
    """One HTTP/1.0 request over the unix socket at `path`: the answer's status and body.
    OSError if nothing answers there, or what answers is not HTTP."""
    chunks = []
    sock = c_socket(AF_UNIX, SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(_request(method, target, body))
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    finally:
        sock.close()
    return _answer(path, b"".join(chunks))


async def exchange_async(path: Path, method: str, target: str, body: bytes | None,
                         timeout: float) -> tuple[int, bytes]:
    """`exchange` for a caller on an event loop (the Python API's async form): the same
    request and answer, the loop free meanwhile."""
    import asyncio  # here, not above: the CLI imports this module and never needs it

    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_unix_connection(str(path))
        try:
            writer.write(_request(method, target, body))
            await writer.drain()
            raw = await reader.read()  # HTTP/1.0: the answer ends at EOF
        finally:
            writer.close()
    return _answer(path, raw)


def _request(method: str, target: str, body: bytes | None) -> bytes:
    head = f"{method} {target} HTTP/1.0\r\nHost: linkd\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + (body or b"")


def _answer(path: Path, raw: bytes) -> tuple[int, bytes]:
    header, end, content = raw.partition(b"\r\n\r\n")
    status = header.split(b"\r\n", 1)[0].split(b" ", 2)  # HTTP/1.x CODE REASON
    if not end or len(status) < 2 or not status[0].startswith(b"HTTP/") \
            or not status[1].isdigit():
        raise ConnectionError(f"{path}: not an HTTP answer: {header[:80]!r}")
    return int(status[1]), content


class Client:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or paths.socket_path()

    def available(self) -> bool:
        """A daemon answers on the socket."""
        try:
            self.request("GET", "/v1/stacks", timeout=ANSWER_TIMEOUT)
        except (OSError, LinkdError):
            return False
        return True

    def request(
        self, method: str, path: str, body: Any = None, *, timeout: float = REQUEST_TIMEOUT
    ) -> Any:
        raw = self.request_raw(method, path, body, timeout=timeout)
        return json.loads(raw) if raw else None

    def request_raw(
        self, method: str, path: str, body: Any = None, *, timeout: float = REQUEST_TIMEOUT
    ) -> bytes:
        """The answer's body as it came (the logs endpoint answers text); DaemonError for
        an error status."""
        data = None if body is None else json.dumps(body).encode()
        return _body(*exchange(self.path, method, path, data, timeout))

    async def request_async(
        self, method: str, path: str, body: Any = None, *, timeout: float = REQUEST_TIMEOUT
    ) -> Any:
        """`request`, awaited: the event loop runs on while the daemon answers."""
        raw = await self.request_raw_async(method, path, body, timeout=timeout)
        return json.loads(raw) if raw else None

    async def request_raw_async(
        self, method: str, path: str, body: Any = None, *, timeout: float = REQUEST_TIMEOUT
    ) -> bytes:
        data = None if body is None else json.dumps(body).encode()
        return _body(*await exchange_async(self.path, method, path, data, timeout))


def _body(status: int, raw: bytes) -> bytes:
    """The answer's body, or the DaemonError its error status and body say."""
    if status >= 400:
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = {}
        raise DaemonError(status, payload if isinstance(payload, dict) else {})
    return raw


def ensure_daemon(client: Client) -> Client:
    """The running daemon, or a new one started in the background (its own session,
    output in `<root>/daemon.log`)."""
    if client.available():
        return client
    import subprocess  # only here: a command that finds its daemon never pays for it

    log = paths.root() / "daemon.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        subprocess.Popen(
            [sys.executable, "-m", "linkd", "daemon"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
            env=dict(os.environ), cwd="/",
        )
    deadline = time.monotonic() + START_TIMEOUT
    while not client.available():
        if time.monotonic() > deadline:
            raise LinkdError(f"the linkd daemon did not start; see {log}")
        time.sleep(0.02)
    return client
