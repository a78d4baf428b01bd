"""Running healthchecks: one probe loop per running container that has a healthcheck.

What a result does to the container's health is `linkd.core.health` (pure); this module owns
the clock and the processes.

How a probe runs: through `linkd exec`'s path into the container, kept open. Per
container a small agent (`health_agent.py`, built from the shim's exec mode) joins the
container's namespaces once; for each probe it forks a child that joins the container's
cgroups and becomes the test command with the service's environment, user and working
directory, in a session of its own. At the timeout the whole session is SIGKILLed
(Docker: "Health check exceeded timeout", exit code -1), and once the probe has exited
what it left running in its session is killed too, so a probe every 100 ms cannot pile
up background processes. The spec the agent reads is written once per container start
(`health.spec` in the container's directory).

Cost: nothing blocks the event loop. A probe is one line to the agent's stdin and one
reply read with `add_reader`; no process is spawned by the daemon per probe, no thread,
no child watcher. A fork of the agent costs far less than a `python -I -S shim.py exec`
(~15 ms of CPU) would, so many containers can be probed every 100 ms. A dead agent is
replaced at the next probe; one that does not answer within the timeout plus
AGENT_GRACE is killed and the probe counts as failed.

A monitor starts with the container (`start`) and is cancelled when it stops
(`stop`): a probe in flight is killed. A restart starts a fresh one (`starting`, no
log), as Docker does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from linkd.core import health
from linkd.core.health import Health, Probe
from linkd.core.model import Healthcheck
from linkd.core.plan import ContainerPlan
from linkd.runtime.containers import process

SPEC_FILE = "health.spec"
AGENT_PATH = str(Path(__file__).with_name("health_agent.py"))
AGENT_GRACE = 5.0  # seconds past a probe's timeout before the agent counts as stuck

# (container, health before, health after) after every probe
OnProbe = Callable[[str, Health | None, Health], None]


class HealthChecks:
    """The probe loops of one stack's containers."""

    def __init__(self, on_probe: OnProbe) -> None:
        self.on_probe = on_probe
        self.current: dict[str, Health] = {}  # container -> health, while it runs
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._changed: asyncio.Event = asyncio.Event()

    def start(
        self,
        tasks: asyncio.TaskGroup,
        container: ContainerPlan,
        run_dir: Path,
        init_pid: int,
        started_at: float,
    ) -> Health | None:
        """Begin probing `container` (PID 1 `init_pid`); its first health, None if it has
        no healthcheck."""
        self.stop_nowait(container.name)
        first = health.initial(container.healthcheck)
        check = container.healthcheck
        if first is None or check is None:
            self.current.pop(container.name, None)
            return None
        self.current[container.name] = first
        spec = run_dir / SPEC_FILE
        process.write_exec_spec(
            str(spec), check.test, container.env, container.working_dir, container.user,
            name=container.name, image=container.image is not None,
            group_add=container.group_add,
        )
        self._tasks[container.name] = tasks.create_task(
            self._loop(container.name, check, str(spec), init_pid, started_at),
            name=f"health {container.name}",
        )
        return first

    def stop_nowait(self, name: str) -> asyncio.Task[None] | None:
        """Cancel the probes of `name`; the cancelled task, if there was one."""
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()
        return task

    async def stop(self, name: str) -> None:
        """End the probes of `name` (a probe in flight is killed); its health is kept
        until it starts again, for `ps` and the API to show."""
        task = self.stop_nowait(name)
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def stop_all(self) -> None:
        for name in list(self._tasks):
            await self.stop(name)

    def wake(self) -> None:
        """Set the event `changed()` gave out (a health or lifecycle change)."""
        self._changed.set()
        self._changed = asyncio.Event()

    def changed(self) -> asyncio.Event:
        """An event set at the next `wake()`: take it, look, then wait on it."""
        return self._changed

    async def _loop(
        self, name: str, check: Healthcheck, spec: str, init_pid: int, started_at: float
    ) -> None:
        now = self.current[name]
        agent = Agent(init_pid, spec)
        try:
            await self._probes(name, check, agent, started_at, now)
        finally:
            agent.close()

    async def _probes(
        self, name: str, check: Healthcheck, agent: Agent, started_at: float, now: Health
    ) -> None:
        while True:
            delay = health.interval(now, check, time.time(), started_at)
            await asyncio.sleep(delay)
            probe = await agent.probe(check.timeout)
            before, now = now, health.record(now, check, probe, started_at)
            self.current[name] = now
            self.on_probe(name, before, now)


class Agent:
    """One container's health agent (`health_agent.py`): started at the first probe,
    again if it died, killed by `close`."""

    def __init__(self, init_pid: int, spec: str) -> None:
        self.argv = [sys.executable, "-I", "-S", AGENT_PATH, process.SHIM_PATH,
                     str(init_pid), spec]
        self._popen: subprocess.Popen[bytes] | None = None
        self._buffer = bytearray()
        self._reply: asyncio.Future[tuple[int, bytes]] | None = None

    async def probe(self, timeout: float) -> Probe:
        """Run the test once inside the container; killed at `timeout`."""
        loop = asyncio.get_running_loop()
        start = time.time()
        if self._popen is None or self._popen.poll() is not None:
            self.close()
            try:
                self._spawn(loop)
            except OSError as exc:
                return Probe(start, time.time(), health.TIMEOUT_EXIT_CODE,
                             f"cannot start the health agent: {exc}")
        assert self._popen is not None and self._popen.stdin is not None
        self._reply = loop.create_future()
        try:
            self._popen.stdin.write(f"{timeout!r}\n".encode())
            self._popen.stdin.flush()
            async with asyncio.timeout(timeout + AGENT_GRACE):
                code, output = await self._reply
        except (OSError, TimeoutError, AgentGone) as exc:
            self.close()
            why = exc if isinstance(exc, AgentGone) else "no answer from the health agent"
            return Probe(start, time.time(), health.TIMEOUT_EXIT_CODE, str(why))
        if code == health.TIMEOUT_EXIT_CODE:
            return health.timed_out(start, time.time(), timeout)
        return Probe(start, time.time(), code, health.clip(output))

    def _spawn(self, loop: asyncio.AbstractEventLoop) -> None:
        self._popen = subprocess.Popen(
            self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True,
        )
        assert self._popen.stdout is not None
        self._buffer.clear()
        os.set_blocking(self._popen.stdout.fileno(), False)
        loop.add_reader(self._popen.stdout.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        assert self._popen is not None and self._popen.stdout is not None
        try:
            data = os.read(self._popen.stdout.fileno(), 65536)
        except BlockingIOError:
            return
        if not data:  # the agent is gone
            asyncio.get_running_loop().remove_reader(self._popen.stdout.fileno())
            if self._reply is not None and not self._reply.done():
                self._reply.set_exception(AgentGone(self._last_words()))
            return
        self._buffer += data
        header, newline, rest = self._buffer.partition(b"\n")
        if not newline:
            return
        code, length = (int(x) for x in header.split())
        if len(rest) < length:
            return
        del self._buffer[: len(header) + 1 + length]
        if self._reply is not None and not self._reply.done():
            self._reply.set_result((code, bytes(rest[:length])))

    def _last_words(self) -> str:
        assert self._popen is not None and self._popen.stderr is not None
        os.set_blocking(self._popen.stderr.fileno(), False)
        try:
            said = self._popen.stderr.read() or b""
        except OSError:
            said = b""
        return said.decode(errors="replace").strip() or "the health agent exited"

    def close(self) -> None:
        """Kill the agent (a probe in flight dies with it: PR_SET_PDEATHSIG); it is
        reaped when it has exited, never waited for here."""
        popen, self._popen = self._popen, None
        if popen is None:
            return
        assert popen.stdout is not None
        loop = asyncio.get_running_loop()
        loop.remove_reader(popen.stdout.fileno())
        with contextlib.suppress(ProcessLookupError):
            popen.kill()  # not reaped yet: the pid is still the agent's
        for pipe in (popen.stdin, popen.stdout, popen.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        _reap_later(loop, popen)


def _reap_later(loop: asyncio.AbstractEventLoop, popen: subprocess.Popen[bytes]) -> None:
    """Reap a killed agent once it has exited, without waiting for that on the loop.

    A SIGKILLed process is usually gone within microseconds, but not always (one in
    uninterruptible sleep, or in a frozen cgroup, dies only when it wakes), and the loop
    that would wait for it also answers DNS. Its pidfd turns readable when it exits.
    """
    if popen.poll() is not None:
        return
    pidfd = os.pidfd_open(popen.pid)  # our child, not reaped: the pid cannot be reused

    def reap() -> None:
        if popen.poll() is not None:
            loop.remove_reader(pidfd)
            os.close(pidfd)

    loop.add_reader(pidfd, reap)


class AgentGone(Exception):
    pass
