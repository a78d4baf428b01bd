"""Containers that outlive their starter, and adopting them (needs root).

The starter is a separate Python process (``STARTER`` below) that calls ``start`` and prints
the shim's and init's pids, as a daemon would record them; the tests SIGKILL it, as
``kill -9`` of the daemon would.  Every container process is watched through pidfds
opened while the starter still lived, and the fixture ends whatever a failed test left
running, by those pidfds only.  Adopted containers are not given to test_process's
``runner`` to track: their shims are not our children, and linger as zombies until the
host's PID 1 reaps them, which its check would take for survivors.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import select
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from linkd.errors import ContainerError
from linkd.runtime.containers.process import EXIT_FILE, ProcessSpec, adopt
from tests.integration import test_process
from tests.integration.conftest import REPO
from tests.integration.test_process import Runner, members, pid_ns, proc_info, wait_for_log

# test_process's fixtures, shared (assigned rather than imported: the tests' parameters of
# the same name are not redefinitions).
netns = test_process.netns
runner = test_process.runner

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, mounts)")

STARTER = textwrap.dedent(
    """
    import asyncio, pickle, sys
    from linkd.runtime.containers.process import start

    async def main():
        for spec in pickle.load(sys.stdin.buffer):
            proc = await start(spec)
            print(proc.pid, proc.init_pid, flush=True)
        await asyncio.Event().wait()  # until killed

    asyncio.run(main())
    """
)


def has_exited(pidfd: int) -> bool:
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))


async def exited(pidfd: int, timeout: float = 5.0) -> bool:
    """Wait until the process of `pidfd` exits; False if it still runs after `timeout`."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    loop.add_reader(pidfd, lambda: done.done() or done.set_result(None))
    try:
        async with asyncio.timeout(timeout):
            await done
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(pidfd)


@dataclass
class Container:
    """A container of the starter's: its pids, and pidfds opened while the starter lived."""

    spec: ProcessSpec
    pid: int
    init_pid: int
    pidfd: int
    init_pidfd: int
    pid_ns: str


@dataclass
class Starter:
    popen: subprocess.Popen[bytes] | None = None
    containers: list[Container] = field(default_factory=list)

    async def start(self, *specs: ProcessSpec) -> list[Container]:
        """Start `specs` in a new starter process; return once every command runs."""
        self.popen = subprocess.Popen(
            [sys.executable, "-c", STARTER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert self.popen.stdin is not None and self.popen.stdout is not None
        self.popen.stdin.write(pickle.dumps(specs))
        self.popen.stdin.close()
        started = []
        for spec in specs:
            async with asyncio.timeout(10):
                line = await asyncio.to_thread(self.popen.stdout.readline)
            assert line, f"the starter failed to start {spec.name}"
            pid, init_pid = (int(p) for p in line.split())
            # The starter is alive and has not reaped its child: the pids are still theirs.
            container = Container(
                spec, pid, init_pid, os.pidfd_open(pid), os.pidfd_open(init_pid), pid_ns(init_pid)
            )
            self.containers.append(container)
            started.append(container)
        return started

    def kill(self) -> None:
        """SIGKILL the starter (our child) and reap it."""
        assert self.popen is not None
        self.popen.kill()
        self.popen.wait(5)


@pytest.fixture
async def starter() -> AsyncIterator[Starter]:
    s = Starter()
    try:
        yield s
    finally:
        if s.popen is not None:
            if s.popen.poll() is None:
                s.popen.kill()
            s.popen.wait(5)
        survived = []
        for c in s.containers:
            # Whatever a failed test left running: init first, so that the shim reaps it.
            if not has_exited(c.init_pidfd):
                survived.append(c.spec.name)
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(c.init_pidfd, signal.SIGKILL)
            if not await exited(c.pidfd, 5):
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(c.pidfd, signal.SIGKILL)
                await exited(c.pidfd, 5)
            os.close(c.pidfd)
            os.close(c.init_pidfd)
        # Checked after the cleanup above so a failed test still cleans up.  The shims and
        # inits are not our children: as zombies they are the host's PID 1's to reap.
        for c in s.containers:
            async with asyncio.timeout(5):
                while [p for p in members(c.pid_ns) if p.state != "Z"]:
                    await asyncio.sleep(0.02)
        assert not survived, f"containers left running: {survived}"


def exit_file(spec: ProcessSpec) -> Path:
    return Path(spec.run_dir) / EXIT_FILE


# --- survive_parent=True: the container outlives its starter and is adopted ------------------


async def test_survivor_keeps_running_and_is_adopted_and_stopped(
    runner: Runner, starter: Starter
) -> None:
    plain = runner.spec("sleep", "60", name="web-1", survive_parent=True)
    stubborn = runner.spec(
        "sh", "-c", "trap 'echo got-term' TERM; echo ready; while :; do sleep 0.02; done",
        name="web-2", survive_parent=True,
    )
    first, second = await starter.start(plain, stubborn)
    await wait_for_log(stubborn, "ready")
    assert starter.popen is not None
    starter_pid = starter.popen.pid
    starter.kill()
    await asyncio.sleep(0.3)  # a parent-death signal would have struck by now

    for c in (first, second):
        info = proc_info(c.pid)
        assert info is not None and info.comm == "linkd-shim"
        assert info.ppid != starter_pid  # reparented: the starter is gone
        assert os.getsid(c.pid) == c.pid  # a session of its own: no terminal's SIGHUP
        assert not has_exited(c.pidfd) and not has_exited(c.init_pidfd)
        alive = {p.nspid[-1]: p.comm for p in members(pid_ns(c.init_pid))}
        assert (alive[1], alive[2]) == ("linkd-init", "sleep" if c is first else "sh")
        assert not exit_file(c.spec).exists()

    web1 = await adopt(plain, first.pid, first.init_pid)
    web2 = await adopt(stubborn, second.pid, second.init_pid)
    assert (web1.pid, web1.init_pid, web1.returncode) == (first.pid, first.init_pid, None)
    assert web1.started_at == pytest.approx(time.time(), abs=10)

    assert await web1.stop(signal.SIGTERM, 5) == 143
    assert exit_file(plain).read_text() == f"143\nshim {first.pid}\n"
    began = time.monotonic()
    assert await web2.stop(signal.SIGTERM, 0.5) == 137  # ignores SIGTERM: killed after grace
    assert 0.5 <= time.monotonic() - began < 2
    assert "got-term" in Path(stubborn.log_path).read_text()
    assert (web1.returncode, web2.returncode) == (143, 137)
    assert await exited(first.pidfd) and await exited(second.pidfd)


async def test_exit_after_the_starter_died_is_read_from_the_exit_file(
    runner: Runner, starter: Starter, tmp_path: Path
) -> None:
    def until(marker: str, code: int) -> str:
        return f"while [ ! -e {tmp_path / marker} ]; do sleep 0.02; done; exit {code}"

    # tmp_path is under /tmp, which containers see only through keep_dirs.
    early = runner.spec("sh", "-c", until("go-1", 3), name="web-1", survive_parent=True,
                        keep_dirs=(str(tmp_path),))
    late = runner.spec("sh", "-c", until("go-2", 4), name="web-2", survive_parent=True,
                       keep_dirs=(str(tmp_path),))
    first, second = await starter.start(early, late)
    starter.kill()

    # web-1 ends on its own while nobody watches it.
    (tmp_path / "go-1").touch()
    assert await exited(first.pidfd)
    adopted = await adopt(early, first.pid, first.init_pid)
    assert adopted.returncode == 3
    assert await adopted.wait() == 3
    assert await adopted.stop() == 3  # nothing left to stop

    # web-2 ends on its own after it was adopted.
    adopted = await adopt(late, second.pid, second.init_pid)
    assert adopted.returncode is None
    (tmp_path / "go-2").touch()
    async with asyncio.timeout(5):
        assert await adopted.wait() == 4


# --- adopt refuses what is not ours ----------------------------------------------------------


async def test_adopt_refuses_a_pid_that_is_not_this_containers_shim(runner: Runner) -> None:
    spec = runner.spec("sleep", "60", name="web-1")
    proc = await runner.start(spec)
    other = runner.spec("sleep", "60", name="web-2")  # never started

    with pytest.raises(ContainerError) as info:
        await adopt(spec, os.getpid(), proc.init_pid)
    assert str(info.value) == f"container web-1: PID {os.getpid()} is not linkd's shim for web-1"

    with pytest.raises(ContainerError) as info:
        await adopt(other, proc.pid, proc.init_pid)  # linkd's shim, for another container
    assert str(info.value) == f"container web-2: PID {proc.pid} is not linkd's shim for web-2"

    with pytest.raises(ContainerError) as info:
        await adopt(spec, proc.pid, os.getpid())
    assert str(info.value) == (
        f"container web-1: PID {os.getpid()} is not the init of shim {proc.pid} for web-1"
    )

    # The right pids are accepted even while the starter lives; both watchers see the end.
    adopted = await adopt(spec, proc.pid, proc.init_pid)
    assert await adopted.stop(signal.SIGTERM, 5) == 143
    async with asyncio.timeout(5):
        assert await proc.wait() == 143


async def test_adopt_refuses_a_shim_that_is_gone(runner: Runner) -> None:
    spec = runner.spec("sleep", "60", name="web-1")
    proc = await runner.start(spec)
    ns = pid_ns(proc.init_pid)
    os.kill(proc.pid, signal.SIGKILL)  # our unreaped child: the pid is still the shim's
    async with asyncio.timeout(5):
        assert await proc.wait() == 137  # init followed its shim
        while members(ns):  # orphaned, init's zombie is the host's PID 1's to reap
            await asyncio.sleep(0.02)
    assert not exit_file(spec).exists()  # a killed shim writes none
    with pytest.raises(ContainerError) as info:
        await adopt(spec, proc.pid, proc.init_pid)
    assert str(info.value) == f"container web-1: shim {proc.pid} is no longer running"

    done = subprocess.Popen(["true"])
    done.wait()
    with pytest.raises(ContainerError, match=rf"^container web-1: shim {done.pid} is no longer"):
        await adopt(spec, done.pid, proc.init_pid)


# --- survive_parent=False (the default): the container dies with its starter ----------------


async def test_by_default_the_container_dies_with_its_starter(
    runner: Runner, starter: Starter
) -> None:
    spec = runner.spec("sleep", "60", name="web-1")
    assert spec.survive_parent is False
    (container,) = await starter.start(spec)
    ns = pid_ns(container.init_pid)
    starter.kill()
    assert await exited(container.pidfd), "the shim outlived its starter"
    assert await exited(container.init_pidfd), "init outlived its starter"
    async with asyncio.timeout(5):
        while members(ns):  # the command goes with init; zombies are reaped by the host
            await asyncio.sleep(0.02)
    assert not exit_file(spec).exists()  # killed, not an orderly exit
    with pytest.raises(ContainerError, match="no longer running"):
        await adopt(spec, container.pid, container.init_pid)
