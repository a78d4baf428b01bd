"""Nothing the daemon does on behalf of one request blocks its event loop, which also
answers DNS and every other request: a log read that cannot finish, a namespace helper
slow to exit. Each test makes the blocking real (a FIFO nobody writes yet, a child that
has not exited) and checks what else is answered meanwhile, not how fast."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from linkd.runtime.daemon import api
from linkd.runtime.daemon.daemon import Daemon
from linkd.runtime.kernel.netlink import NamespaceHelper


async def test_a_log_read_that_blocks_holds_up_no_other_request(
    daemon_with_a_log: tuple[Daemon, Path]
) -> None:
    daemon, log = daemon_with_a_log
    os.mkfifo(log)  # opening it for reading blocks until a writer comes
    answered = threading.Event()
    gave_up: list[bool] = []

    def writer() -> None:
        if not answered.wait(10):
            gave_up.append(True)  # the other request was not answered meanwhile
        with open(log, "wb") as f:
            f.write(b"hello\n")

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        client: TestClient[Any, Any]
        async with TestClient(TestServer(api.make_app(daemon))) as client:
            reading = await client.get("/v1/stacks/shop/containers/web-1/logs")
            assert reading.status == 200
            other = await client.get("/v1/stacks")
            answered.set()
            assert other.status == 200 and await other.json() == []
            assert await reading.text() == "hello\n"
    finally:
        answered.set()
        thread.join()
    assert not gave_up, "the log read blocked the event loop"


async def test_closing_the_namespace_helper_never_waits_for_it_on_the_loop() -> None:
    helper = NamespaceHelper()
    ours, theirs = socket.socketpair()
    pid = os.posix_spawnp("sleep", ["sleep", "3"], dict(os.environ))  # a helper slow to exit
    helper._channel, helper._pid = ours, pid
    started = time.monotonic()
    helper.close()
    assert time.monotonic() - started < 1, "close() waited for the helper to exit"
    theirs.close()
    # The loop reaps it once it has exited: no zombie is left.
    deadline = time.monotonic() + 15
    while Path(f"/proc/{pid}").exists():
        assert time.monotonic() < deadline, f"helper {pid} was never reaped"
        await asyncio.sleep(0.05)
