"""The CLI's side of the daemon API: HTTP/1.1 over the unix socket, stdlib only.

Kept synchronous and small on purpose: a CLI command makes one or two requests, and
importing aiohttp's client costs more start-up time than the request itself. For the
same reason it imports neither the daemon nor the state store, only where they live
(linkd.runtime.paths).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from linkd.errors import LinkdError
from linkd.runtime import paths

START_TIMEOUT = 10.0  # seconds for a daemon started by the CLI to answer
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


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("linkd", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(str(self.path))
        self.sock = sock


class Client:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or paths.socket_path()

    def available(self) -> bool:
        """A daemon answers on the socket."""
        try:
            self.request("GET", "/v1/stacks", timeout=2)
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
        connection = _UnixConnection(self.path, timeout)
        try:
            data = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json"} if data is not None else {}
            connection.request(method, path, body=data, headers=headers)
            response = connection.getresponse()
            raw = response.read()
        finally:
            connection.close()
        if response.status >= 400:
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = {}
            raise DaemonError(response.status, payload if isinstance(payload, dict) else {})
        return raw


def ensure_daemon(client: Client) -> Client:
    """The running daemon, or a new one started in the background (its own session,
    output in `<root>/daemon.log`)."""
    if client.available():
        return client
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
