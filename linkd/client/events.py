"""One stack's events from the daemon's stream (`GET /v1/events`), on a thread of their
own: what `up -d` draws on a terminal while it waits for the daemon's answer (image
pulls layer by layer, networks, containers), as a foreground `up` does.

Stdlib only and HTTP/1.0, like linkd.client.api: the daemon then sends the stream
without chunked encoding, each event a `data: {json}` line ended by a blank one.
"""

from __future__ import annotations

import contextlib
import json
import threading
from _socket import AF_UNIX, SHUT_RDWR, SOCK_STREAM
from _socket import socket as c_socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from linkd.client.api import ANSWER_TIMEOUT

SUBSCRIBED = b": linkd events\n\n"  # the daemon's first words once it has subscribed us
_HEAD_LIMIT = 64 << 10


class StackEvents:
    """Hands each event of `stack` to `handle` until `close`. Subscribed when made (the
    daemon said so), so nothing the caller then asks for goes unseen."""

    def __init__(self, path: Path, stack: str, handle: Callable[[dict[str, Any]], None]
                 ) -> None:
        self.stack = stack
        self.handle = handle
        self.sock = c_socket(AF_UNIX, SOCK_STREAM)
        try:
            self.sock.settimeout(ANSWER_TIMEOUT)
            self.sock.connect(str(path))
            self.sock.sendall(b"GET /v1/events HTTP/1.0\r\nHost: linkd\r\n\r\n")
            self.rest = self._subscribed()
            self.sock.settimeout(None)
        except BaseException:
            self.sock.close()
            raise
        self.thread = threading.Thread(target=self._run, name="linkd-events", daemon=True)
        self.thread.start()

    def _subscribed(self) -> bytes:
        """Read up to the daemon's first comment; what came after it."""
        got = b""
        while SUBSCRIBED not in got:
            chunk = self.sock.recv(4096)
            if not chunk or len(got) > _HEAD_LIMIT:
                raise ConnectionError("the daemon's event stream did not start")
            got += chunk
        return got.partition(SUBSCRIBED)[2]

    def _run(self) -> None:
        buffer = self.rest
        try:
            while True:
                while b"\n\n" in buffer:
                    block, _, buffer = buffer.partition(b"\n\n")
                    self._event(block)
                chunk = self.sock.recv(65536)
                if not chunk:
                    return
                buffer += chunk
        except OSError:  # closed by `close`
            return

    def _event(self, block: bytes) -> None:
        for line in block.split(b"\n"):
            if line.startswith(b"data: "):
                try:
                    event = json.loads(line[6:])
                except ValueError:
                    return
                if isinstance(event, dict) and event.get("stack") == self.stack:
                    self.handle(event)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(SHUT_RDWR)
        self.thread.join(timeout=2)
        self.sock.close()
