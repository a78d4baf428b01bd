"""The async form of linkd.Stack against the real daemon: inside `async with`, waits,
`exec`, `logs`, `resolve`, `env_for_host` and `wait_healthy` are coroutines that leave
the test's event loop free, so an asyncio server and a ticker beside them keep going."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from linkd import Stack
from linkd.client import waits
from linkd.client.api import Client
from linkd.client.stacks import AsyncService, AsyncStack
from linkd.core.state import ContainerState
from linkd.errors import LinkdError, NotFoundError
from tests.integration.conftest import Linkd
from tests.integration.test_process import members, pid_ns, processes_mentioning

IDLE = {
    "services": {
        "idle": {"command": ["python3", "-u", "-c",
                             "import time; print('idle here', flush=True); time.sleep(300)"],
                 "healthcheck": {"test": ["CMD", "true"], "interval": "100ms"}},
        "peer": {"command": ["sleep", "300"], "links": ["idle:db"]},
    }
}


def hosted() -> set[str]:
    return {s["name"] for s in Client().request("GET", "/v1/stacks")}


@asynccontextmanager
async def busy_loop() -> AsyncIterator[Callable[[], Awaitable[int]]]:
    """A ticker task and an aiohttp server on this loop; yields `progress()`, which
    says how many ticks passed since the previous call and checks, by a request made
    while the caller's await ran, that the server answered meanwhile."""
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.02)
            ticks += 1

    async def pong(request: web.Request) -> web.Response:
        return web.Response(text="pong")

    app = web.Application()
    app.router.add_get("/", pong)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    seen = 0
    answered: list[float] = []

    async def ping() -> None:
        await asyncio.sleep(0.2)  # well inside every operation measured (each takes ~1 s)
        async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{port}/"
        ) as response:
            assert await response.text() == "pong"
        answered.append(asyncio.get_running_loop().time())

    pinger: asyncio.Task[None] | None = None

    async def progress() -> int:
        nonlocal seen, pinger
        now = asyncio.get_running_loop().time()
        if pinger is not None:  # the ping started before the operation must be answered
            assert pinger.done() and answered and answered[-1] < now, "the server stalled"
            await pinger
        pinger = asyncio.create_task(ping())
        advanced, seen = ticks - seen, ticks
        return advanced

    ticker = asyncio.create_task(tick())
    try:
        yield progress
    finally:
        ticker.cancel()
        if pinger is not None:
            pinger.cancel()
        await runner.cleanup()


# A blocked loop makes no tick at all; a free one ~50 in a second. A few is proof enough
# and leaves room for a loaded machine.
FREE = 5


async def test_waits_and_exec_leave_the_event_loop_free(linkd: Linkd) -> None:
    async with busy_loop() as progress:
        await progress()
        up = Stack.up(IDLE, directory=linkd.directory,
                      wait={"idle": waits.command("sh", "-c", "sleep 1")})
        async with up as stack:
            assert await progress() >= FREE  # Stack.up's own wait
            idle = stack["idle"]
            assert isinstance(stack, AsyncStack) and isinstance(idle, AsyncService)

            done = await idle.exec("sh", "-c", "sleep 1; echo slept")
            assert done.returncode == 0 and done.stdout == "slept\n"
            assert await progress() >= FREE

            await idle.wait(waits.command("sh", "-c", "sleep 1"))
            assert await progress() >= FREE

            for strategy in (
                waits.port(9, timeout=1), waits.http(9, "/", timeout=1),
                waits.log(r"^never$", timeout=1),
            ):
                with pytest.raises(waits.WaitTimeout, match="service idle: not ready"):
                    await idle.wait(strategy)
                assert await progress() >= FREE, strategy


async def test_what_the_async_stack_gives(linkd: Linkd) -> None:
    async with Stack.up(IDLE, directory=linkd.directory) as stack:
        assert stack.name in hosted() and stack.services == ["idle", "peer"]
        idle, peer = stack["idle"], stack.service("peer")
        assert idle.url(80, "x") == f"http://{idle.address}:80/x"
        assert idle.addresses == [idle.address] and idle.replica(1).address == idle.address
        with pytest.raises(NotFoundError, match="has no service nope"):
            stack["nope"]

        await stack.wait_healthy(timeout=30)
        assert await idle.replica(1).health() == "healthy"
        assert await idle.replica(1).status() == "running"
        await idle.wait(waits.log("idle here"))
        assert "idle here" in await idle.logs()
        assert set(await stack.logs()) == {"idle-1", "peer-1"}

        env = await stack.env_for_host("peer")
        assert env["LINKD_DB_HOST"] == idle.address
        assert await stack.env_for_host() == env
        assert await stack.resolve("db", from_service="peer") == [idle.address]
        assert await stack.resolve("nosuch", from_service="peer") == []
        assert (await stack.state()).container("idle-1").status == "running"

        with stack.names():  # the hook answers in asyncio's resolver threads
            found = await asyncio.get_running_loop().getaddrinfo("idle", 80)
            assert {a[4][0] for a in found} == {idle.address}
            resolved = await aiohttp.resolver.DefaultResolver().resolve("peer", 80)
            assert [r["host"] for r in resolved] == [peer.address]

        timed = time.monotonic()
        with pytest.raises(subprocess.TimeoutExpired) as expired:
            await idle.exec("sh", "-c", "echo before >&2; sleep 5 & sleep 5; wait", timeout=1.5)
        assert time.monotonic() - timed < 3  # the sleeps, killed, keep no pipe open
        assert expired.value.stderr == "before\n"  # what came before the timeout is kept
        with pytest.raises(subprocess.CalledProcessError):
            await peer.exec("sh", "-c", "exit 3", check=True)
        assert (await peer.exec("cat", input="fed in")).stdout == "fed in"
        with pytest.raises(LinkdError, match="service peer has no healthcheck"):
            await peer.wait_healthy(timeout=1)
    assert stack.name not in hosted()


async def test_the_sync_stack_gives_its_async_view(linkd: Linkd) -> None:
    """What the pytest plugin's (sync) fixtures give an async test: `stack.aio`."""
    with Stack.up(IDLE, directory=linkd.directory) as stack:
        view = stack.aio
        assert isinstance(view, AsyncStack) and view.name == stack.name
        assert view.sync is stack
        assert (await view["peer"].exec("cat", "/etc/hostname")).stdout.strip() == "peer-1"
        # The sync form, called on this loop, still works (in a thread of its own).
        assert stack["peer"].exec("cat", "/etc/hostname").stdout.strip() == "peer-1"
        assert "idle here" in stack.logs()["idle-1"]
        await stack.wait_async({"idle": waits.log("idle here")})


async def test_a_cancelled_exec_ends_its_command_s_whole_tree_at_once(linkd: Linkd) -> None:
    async with Stack.up(IDLE, directory=linkd.directory) as stack:
        peer = stack["peer"]
        ns = pid_ns(_init_pid((await stack.state()).container("peer-1")))
        before = {p.pid for p in members(ns)}
        # sh and two sleeps, its children: none of them is the shim's own child, and each
        # holds the pipes `linkd exec`'s reader waits on.
        task = asyncio.create_task(peer.exec("sh", "-c", "sleep 30 & sleep 30; wait"))
        async with asyncio.timeout(10):
            while len(tree := [p for p in members(ns) if p.pid not in before]) < 3:
                await asyncio.sleep(0.02)
        assert sorted(p.comm for p in tree) == ["sh", "sleep", "sleep"]
        cancelled = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - cancelled < 2  # not the 30 s the command would take
        # Nothing of the `linkd exec` is left in this process's children...
        await asyncio.sleep(0)
        assert not [p for p in _children() if "exec" in p]
        # ... and no process of the command in the container (killed ones may linger a
        # moment as zombies until their new parent reaps them).
        async with asyncio.timeout(2):
            while [p for p in members(ns) if p.pid not in before and p.state != "Z"]:
                await asyncio.sleep(0.02)
        # The guard that killed them is gone too.
        async with asyncio.timeout(2):
            while processes_mentioning(f"/stacks/{stack.name}/containers/peer-1/exec-"):
                await asyncio.sleep(0.02)


def _init_pid(container: ContainerState) -> int:
    assert container.init_pid is not None
    return container.init_pid


def _children() -> list[str]:
    """The command lines of this process's children (of any of its threads)."""
    found: list[str] = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:  # a thread or a child may be gone by the time it is read
            pids = (task / "children").read_text().split()
            found += [Path(f"/proc/{pid}/cmdline").read_bytes().decode() for pid in pids]
        except OSError:
            continue
    return found

