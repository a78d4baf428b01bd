"""The container processes of one stack: start them (after their dependencies), watch
them, restart them by their policy, stop them.

One monitor task per running container waits for its process and applies the restart
policy (`linkd.core.restart`); every final exit is also put on `exits`, which the
foreground `up` watches for `--abort-on-container-exit`. Health probes start with each
process (`linkd.runtime.containers.health`) and stop with it. A state change goes
through the publisher, never around it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

from linkd.core import health, restart
from linkd.core.plan import ContainerPlan
from linkd.core.reconcile import Action, StartContainer
from linkd.errors import ContainerError
from linkd.runtime.containers import process, rootfs
from linkd.runtime.containers.health import HealthChecks
from linkd.runtime.stack import store
from linkd.runtime.stack.container_files import process_spec, under_tmp
from linkd.runtime.stack.live import LiveStack
from linkd.runtime.stack.publisher import Publisher
from linkd.runtime.volumes.mounts import host_mounts

START_CONCURRENCY = 8  # containers of one wave starting at once


class Containers:
    def __init__(self, live: LiveStack, publisher: Publisher, *, survive: bool) -> None:
        self.live = live
        self.publisher = publisher
        # Containers outlive this process (the daemon: a restarted one adopts them).
        self.survive = survive
        self.health = HealthChecks(publisher.on_probe)  # probe loops, one per container
        publisher.wake = self.health.wake  # dependency waits look again on any change
        self.user_stopped: set[str] = set()
        self.exits: asyncio.Queue[tuple[str, int, bool]] = asyncio.Queue()
        self.monitors: dict[str, asyncio.Task[None]] = {}
        self._warm: dict[str, process.WarmShim] = {}  # shims started ahead, by container
        # A stack spanning a cluster's nodes: by service, its containers on other nodes
        # (set by the supervisor), and why a node refuses its share, if one does (the
        # cluster daemon's, linkd.runtime.cluster.stacks).
        self.elsewhere: dict[str, tuple[str, ...]] = {}
        self.refusal: Callable[[], Awaitable[str | None]] | None = None

    def process_spec(self, container: ContainerPlan) -> process.ProcessSpec:
        spec = process_spec(
            self.live.container_dir(container.name),
            container,
            keep_dirs=under_tmp(str(self.live.base)),
        )
        assert self.live.plan is not None, "containers start from a plan"
        # Its volumes made if they are not yet (linkd.runtime.volumes).
        files = self.live.container_dir(container.name) / "files"
        mounts = tuple(m.for_shim() for m in host_mounts(self.live.plan, container, files))
        # Limits, and an image's root filesystem and runtime (linkd.runtime.containers.rootfs).
        return rootfs.prepare(replace(spec, survive_parent=self.survive, mounts=mounts),
                              container, self.live.name)

    # -- warm shims ----------------------------------------------------------------------

    def warm(self, actions: list[Action]) -> None:
        """Start the shims of the containers that start without waiting for another
        (process.WarmShim): their interpreters start while the network is wired, and
        wait to be told to go on."""
        starts = [a.container for a in actions
                  if isinstance(a, StartContainer) and not a.container.depends_on]
        for container in starts[:START_CONCURRENCY]:
            directory = self.live.container_dir(container.name)
            store.private_dirs(directory)
            # Where the container's files are, as its start will say (process_spec): a
            # warm shim only serves the start whose spec path is its own.
            files = process_spec(directory, container)
            try:
                self._warm[container.name] = process.warm(files.run_dir, files.log_path)
            except ContainerError:
                return  # started the usual way then, which says what is wrong

    def discard_warm(self) -> None:
        for shim in self._warm.values():
            shim.discard()
        self._warm.clear()

    # -- start, watch, restart -----------------------------------------------------------

    async def start(self, container: ContainerPlan) -> None:
        proc = await self._launch(container, restarts=0)
        self.live.report(f"container {container.name}", "started")
        self.watch(container, proc)

    def watch(self, container: ContainerPlan, proc: process.ContainerProcess,
              restarts: int = 0) -> None:
        """Monitor `proc` (started here, or adopted) until it exits for good."""
        assert self.live.tasks is not None, "containers run inside the stack's task group"
        self.monitors[container.name] = self.live.tasks.create_task(
            self._monitor(container, proc, restarts=restarts), name=f"monitor {container.name}"
        )

    async def _launch(self, container: ContainerPlan, *, restarts: int) -> process.ContainerProcess:
        try:
            proc = await process.start(self.process_spec(container),
                                       self._warm.pop(container.name, None))
        except ContainerError as exc:
            self.publisher.set_state(container.name, status="failed", error=str(exc))
            raise
        self.live.processes[container.name] = proc
        started_at = time.time()
        first = self.start_health(container, proc.init_pid, started_at)
        self.publisher.set_state(
            container.name,
            status="running",
            pid=proc.pid,
            init_pid=proc.init_pid,
            started_at=started_at,
            exit_code=None,
            error=None,
            restarts=restarts,
            health=first.status if first else None,
        )
        return proc

    def start_health(
        self, container: ContainerPlan, init_pid: int, started_at: float
    ) -> health.Health | None:
        assert self.live.tasks is not None, "health checks run inside the stack's task group"
        directory = self.live.container_dir(container.name)
        return self.health.start(self.live.tasks, container, directory, init_pid, started_at)

    async def _monitor(
        self, container: ContainerPlan, proc: process.ContainerProcess, restarts: int = 0
    ) -> None:
        backoff = 0
        while True:
            code = await proc.wait()
            await self.health.stop(container.name)
            started = self.live.state(container.name).started_at or time.time()
            ran_for = time.time() - started
            backoff = restart.backoff_after_run(backoff, ran_for)
            delay = restart.next_delay(
                container.restart,
                code,
                restarts=restarts,
                backoff=backoff,
                stopped_by_user=container.name in self.user_stopped,
            )
            final = delay is None
            self.publisher.set_state(
                container.name,
                status="exited" if final else "restarting",
                exit_code=code,
            )
            self.live.report(f"container {container.name}", f"exited with code {code}")
            self.exits.put_nowait((container.name, code, final))
            if final:
                return
            assert delay is not None
            await asyncio.sleep(delay)
            restarts += 1
            backoff += 1
            try:
                proc = await self._launch(container, restarts=restarts)
            except ContainerError as exc:
                self.exits.put_nowait((container.name, exc.exit_code, True))
                return
            self.live.report(f"container {container.name}", f"restarted ({restarts})")

    # -- dependencies --------------------------------------------------------------------

    async def wait_for_dependencies(self, container: ContainerPlan) -> None:
        """Compose's `depends_on` conditions (`service_started` holds by the start
        waves). A failed `required: false` dependency is a warning and start goes on."""
        plan = self.live.plan
        assert plan is not None
        service = container.service
        for dependency in container.depends_on:
            peers = plan.of_service(dependency.service)
            failure = ""
            if dependency.condition == "service_completed_successfully":
                for peer in peers:
                    proc = self.live.processes.get(peer.name)
                    code = await proc.wait() if proc is not None else None
                    if code != 0:
                        failure = (
                            f"service {service} depends on {dependency.service} completing "
                            f"successfully, but {peer.name} exited with code {code}"
                        )
                        break
            elif dependency.condition == "service_healthy":
                failure = await self._wait_healthy(service, dependency.service, peers)
            away = self.elsewhere.get(dependency.service)
            if away and not failure:
                failure = await self._wait_elsewhere(
                    service, dependency.service, away,
                    healthy=dependency.condition == "service_healthy")
            if failure and dependency.required:
                raise ContainerError(failure)
            if failure and container.replica == 1:
                self.live.report(f"container {container.name}",
                                 f"warning: {failure}; starting anyway (required: false)")

    async def _wait_elsewhere(self, service: str, dependency: str, names: tuple[str, ...], *,
                              healthy: bool) -> str:
        """Until `dependency`'s containers on other nodes run (their nodes publish them)
        and, `healthy`, are ready (healthy, or running without a healthcheck): "" then,
        else why not (their node refuses its share). linkd.core.cluster_stacks refuses
        a wait for an exit elsewhere before anything is made: no node sees it."""
        asked = 0.0
        while True:
            changed = self.health.changed()
            here = {c.name for c in self.publisher.elsewhere}
            held = self.publisher.pending_elsewhere()
            if all(n in here and not (healthy and n in held) for n in names):
                return ""
            # A refusal is read from etcd: once a second at most, however often the
            # stack's state changes meanwhile.
            if self.refusal is not None and time.monotonic() - asked >= 1.0:
                asked = time.monotonic()
                why = await self.refusal()
                if why:
                    return (f"service {service} depends on {dependency}, which runs on "
                            f"another node, and {why}")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await changed.wait()

    async def _wait_healthy(self, service: str, dependency: str,
                            peers: tuple[ContainerPlan, ...]) -> str:
        """Until every container of `dependency` is healthy: "" then, else why not."""
        while True:
            changed = self.health.changed()
            states = [(p, self.live.state(p.name)) for p in peers]
            verdict, why = health.healthy_verdict(service, dependency, (
                health.Peer(p.name, st.status, st.exit_code, health.enabled(p.healthcheck),
                            self.health.current.get(p.name))
                for p, st in states
            ))
            if verdict != "wait":
                return why
            await changed.wait()

    # -- stop ----------------------------------------------------------------------------

    async def stop(self, name: str) -> None:
        self.user_stopped.add(name)
        monitor = self.monitors.pop(name, None)
        if monitor is not None:
            monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await monitor
        await self.health.stop(name)
        proc = self.live.processes.get(name)
        if proc is None or proc.returncode is not None:
            return
        plan = self.live.plan
        container = plan.container(name) if plan else None
        sig = signal.Signals[container.stop_signal] if container else signal.SIGTERM
        grace = container.stop_grace_period if container else 10.0
        code = await proc.stop(sig, grace)
        self.publisher.set_state(name, status="exited", exit_code=code)
        self.live.report(f"container {name}", f"stopped (exit code {code})")

    async def cancel_restarts(self) -> None:
        """Containers waiting to restart never start again once teardown began: their
        monitors are cancelled in the backoff, or mid-launch (which kills what was
        started). Else one could start after the kernel was observed for teardown, in a
        namespace already unlinked, and keep it and its veth alive."""
        waiting = [
            (name, monitor) for name, monitor in self.monitors.items()
            if self.live.state(name).status == "restarting"
        ]
        for name, monitor in waiting:
            self.monitors.pop(name, None)
            monitor.cancel()
        for _, monitor in waiting:
            with contextlib.suppress(asyncio.CancelledError):
                await monitor

    async def end(self) -> None:
        """Before teardown: no probe runs, no warm shim waits, no monitor restarts."""
        await self.cancel_restarts()
        await self.health.stop_all()
        self.discard_warm()

    def unwatch_all(self) -> None:
        for monitor in self.monitors.values():
            monitor.cancel()
