"""`linkd daemon`: one process hosting every stack, driven through an HTTP API.

Each stack runs the same lifecycle as a foreground `linkd up` (`linkd.runtime.stack.lifecycle`),
as a task of this process's event loop, holding the stack's supervisor lock so the CLI
and other linkd processes see it as up. The daemon itself holds `<root>/daemon.lock`:
a second daemon on the same directory is refused with a message naming the first.

What the daemon does on SIGTERM or SIGINT: takes every stack down in order, then exits.
(Keeping containers running across a daemon restart, and adopting them, comes with the
reconciler; until then, a daemon that stops leaves nothing behind.)

Events (container lifecycle, DNS zone changes, stack status) are fanned out to every
subscriber of the event stream through bounded queues: a subscriber that does not read
loses its oldest events, never slows the runtime down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from linkd.core.model import Stack
from linkd.core.plan import ContainerPlan
from linkd.core.state import StackState
from linkd.errors import (
    ConflictError,
    LinkdError,
    NotFoundError,
    TeardownError,
    leaves,
    user_error,
)
from linkd.paths import socket_path as socket_path  # where the CLI finds the API
from linkd.runtime.kernel import link_events
from linkd.runtime.kernel.netlink import Kernel
from linkd.runtime.stack import lifecycle, store, supervisor, teardown

if TYPE_CHECKING:
    from linkd.runtime.cluster.membership import Membership
    from linkd.runtime.cluster.overlay_networks import OverlayNetworks
    from linkd.runtime.cluster.overlay_sync import OverlaySync
    from linkd.runtime.cluster.stacks import ClusterStacks

log = logging.getLogger("linkd")

EVENT_BACKLOG = 1000  # events kept per subscriber that is not reading
RECONCILE_INTERVAL = 2.0  # seconds between checks of the kernel against every plan
EVENT_SETTLE = 0.1  # seconds from a link removal to the check: a burst of them is one check


def daemon_lock() -> Path:
    return store.root() / "daemon.lock"


class Events:
    """Fan-out of event dicts to any number of subscribers."""

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[dict[str, object]]] = set()

    def publish(self, event: dict[str, object]) -> None:
        for queue in self._queues:
            if queue.full():
                queue.get_nowait()  # drop the oldest: a slow reader never blocks us
            queue.put_nowait(event)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[dict[str, object]]]:
        queue: asyncio.Queue[dict[str, object]] = asyncio.Queue(EVENT_BACKLOG)
        self._queues.add(queue)
        try:
            yield queue
        finally:
            self._queues.discard(queue)


@dataclass
class Hosted:
    """One stack the daemon runs."""

    name: str
    supervisor: supervisor.Supervisor
    stop: asyncio.Event
    task: asyncio.Task[int] | None = None
    progress: list[str] = field(default_factory=list)  # what `up` reported, for errors
    updating: asyncio.Lock = field(default_factory=asyncio.Lock)  # one change at a time


class Daemon:
    def __init__(self) -> None:
        self.stacks: dict[str, Hosted] = {}
        self._kernel: Kernel | None = None  # shared by the stacks, made with the first
        self.events = Events()
        self.started_at = time.time()
        self.cluster: Membership | None = None  # `linkd daemon --cluster`: this node
        self.overlay: OverlayNetworks | None = None  # and its side of overlay networks
        self.overlay_sync: OverlaySync | None = None  # other nodes' containers, kept in step
        self.spread: ClusterStacks | None = None  # stacks placed on several nodes

    # -- stacks ------------------------------------------------------------------------

    async def create(self, stack: Stack, source: str) -> StackState:
        """Bring `stack` up; returns once every container has started.

        Raises ConflictError if a stack of that name is up (here or elsewhere), and the
        error that stopped `up` otherwise (the stack is then already torn down). On a
        cluster daemon, the stack is placed over the nodes first
        (linkd.runtime.cluster.stacks).
        """
        if self.spread is not None:
            return await self.spread.create(stack, source)
        return await self.create_here(stack, source)

    def refuse_existing(self, name: str) -> None:
        """ConflictError if a stack of that name is up on this node."""
        if name in self.stacks or store.supervised(name):
            raise ConflictError(
                f"stack {name} is already up; delete it first, or pick another name"
            )

    async def create_here(self, stack: Stack, source: str,
                          only: frozenset[str] | None = None) -> StackState:
        """`create` on this node; `only`: the containers it runs of a stack spanning
        nodes (None: all)."""
        self.refuse_existing(stack.name)
        hosted = self._host(stack.name, source)
        hosted.supervisor.only = only
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def on_up(_: supervisor.Supervisor) -> None:
            if not ready.done():
                ready.set_result(None)

        def life() -> Awaitable[int]:
            return lifecycle.lifecycle(
                stack, hosted.supervisor, hosted.stop, lifecycle.UpOptions(), on_up=on_up
            )

        self._start(hosted, life, ready)
        try:
            await asyncio.shield(ready)
        except LinkdError as exc:
            exc.progress = list(hosted.progress)  # type: ignore[attr-defined]
            raise
        return self.state(stack.name)

    async def update(self, stack: Stack) -> dict[str, list[str]]:
        """Change a running stack to `stack` (see Supervisor.update)."""
        if self.spread is not None:
            self._hosted(stack.name)
            return await self.spread.update(stack)
        return await self.update_here(stack)

    async def update_here(self, stack: Stack) -> dict[str, list[str]]:
        hosted = self._hosted(stack.name)
        async with hosted.updating:
            return await hosted.supervisor.update(stack)

    async def delete(self, name: str) -> None:
        """Take the stack down (on a cluster daemon: everywhere, or refused on a node
        that runs another's share; linkd.runtime.cluster.stacks); see `delete_here`."""
        self._hosted(name)
        if self.spread is not None:
            await self.spread.before_down(name)
        await self.delete_here(name)

    async def delete_here(self, name: str) -> None:
        """Take the stack down, in order; returns once it is gone.

        Teardown is best-effort: every step is tried, and the failed ones come out as a
        TeardownError naming each (the stack is then left as "failed", for the next
        `linkd down` to finish). A stack that had failed on its own meanwhile (its `up`
        said why to whoever waited) is gone all the same.
        """
        hosted = self._hosted(name)
        hosted.stop.set()
        assert hosted.task is not None
        try:
            await asyncio.shield(hosted.task)
        except Exception as exc:
            failed = [e for e in leaves(exc) if isinstance(e, TeardownError)]
            if failed:
                raise user_error(BaseExceptionGroup("teardown", failed)) from None
            if not isinstance(user_error(exc), LinkdError):
                raise  # a bug: its traceback is wanted
            log.info("stack %s had already failed: %s", name, user_error(exc))

    async def shutdown(self) -> None:
        """Every stack down, newest first; one whose teardown fails does not keep the
        others up (its failures are logged)."""
        for name in reversed(list(self.stacks)):
            try:
                await self.delete_here(name)
            except LinkdError as exc:
                log.warning("stack %s: %s", name, exc)
            except Exception:
                log.exception("stack %s: taking it down failed", name)
        if self._kernel is not None:
            self._kernel.close()
            self._kernel = None

    async def recover(self) -> list[str]:
        """Take over every stack whose supervisor is gone (a daemon killed with -9, a
        crash): adopt what still runs, repair the rest; then remove orphans. Returns
        the stacks recovered."""
        recovered = []
        for name in store.stacks():
            if name in self.stacks or store.supervised(name):
                continue  # alive elsewhere (a foreground `linkd up`)
            try:
                state = store.load(name)
            except LinkdError as exc:
                log.warning("stack %s: cannot recover: %s", name, exc)
                continue
            if state.status in ("stopping", "failed"):
                await teardown.down_unsupervised(name, lambda s, m: log.info("%s: %s", s, m))
                continue
            hosted = self._host(name, state.source)
            ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            def life(state: StackState = state, hosted: Hosted = hosted,
                     ready: asyncio.Future[None] = ready) -> Awaitable[int]:
                async def run() -> int:
                    sup = hosted.supervisor
                    try:
                        await sup.recover(state)
                    except BaseException:
                        await sup.teardown()
                        raise
                    ready.set_result(None)
                    try:
                        return await lifecycle.supervise(sup, hosted.stop, lifecycle.UpOptions())
                    finally:
                        await sup.teardown()

                return run()

            self._start(hosted, life, ready)
            try:
                await asyncio.shield(ready)
                recovered.append(name)
            except Exception as exc:
                log.warning("stack %s: recovery failed: %s", name, exc)
        kernel = Kernel()
        try:
            await teardown.remove_orphans(kernel, lambda s, m: log.info("%s: %s", s, m))
        finally:
            kernel.close()
        return recovered

    async def reconcile_forever(self, interval: float = RECONCILE_INTERVAL) -> None:
        """Repair what went missing in the kernel for every stack: as soon as the kernel
        says a link of linkd's was removed, and every `interval` (what events cannot
        tell: a namespace's addresses flushed, say)."""
        wake = asyncio.Event()
        watch = link_events.LinkWatch(lambda name: wake.set())
        try:
            watch.start()
        except OSError as exc:
            log.warning("no link events (%s): the kernel is checked every %ss only",
                        exc, interval)
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), interval)
                    # A removal comes in bursts (a namespace goes with its veths, a
                    # bridge with its ports): settle, then check once.
                    await asyncio.sleep(EVENT_SETTLE)
                wake.clear()
                try:
                    await self._repair_all()
                except Exception:  # _repair_all's own bookkeeping: still not a reason to stop
                    log.exception("repairing stacks failed (a bug, please report it); "
                                  "trying again in the next round")
        finally:
            watch.close()

    async def _repair_all(self) -> None:
        """Repair every stack; a failure, even a bug, is logged and the next stack (and
        the next round) repaired all the same: the repair loop is the daemon's for its
        whole life, and one that died would stop repairing without a word."""
        for hosted in list(self.stacks.values()):
            try:
                await hosted.supervisor.repair()
            except LinkdError as exc:
                log.warning("stack %s: repair failed: %s", hosted.name, exc)
            except Exception:
                log.exception("stack %s: repair failed with an unexpected error (a bug, "
                              "please report it); trying again in the next round",
                              hosted.name)

    @property
    def kernel(self) -> Kernel:
        """The kernel connection the stacks share, made with the first that needs it."""
        if self._kernel is None:
            self._kernel = Kernel()
        return self._kernel

    def _host(self, name: str, source: str) -> Hosted:
        sup = supervisor.Supervisor(name, source, lambda s, m: None, survive=True,
                                    kernel=self.kernel)
        sup.overlay = self.overlay
        hosted = Hosted(name, sup, asyncio.Event())
        sup.report = self._reporter(hosted)
        sup.on_event = self.events.publish
        if self.spread is not None:
            spread = self.spread

            def refusal() -> Awaitable[str | None]:
                return spread.refusal(name)

            sup.containers.refusal = refusal
        if self.overlay_sync is not None:
            sync = self.overlay_sync
            sup.neighbours.remote = sync.neighbours_of

            def publish(event: dict[str, object]) -> None:
                self.events.publish(event)
                if event.get("type") in ("lifecycle", "health"):
                    sync.changed(name)  # its endpoint records follow its containers

            sup.on_event = publish

        def transfer(subject: str, got: int, total: int) -> None:
            self.events.publish({"type": "transfer", "stack": name, "subject": subject,
                                 "bytes": got, "total": total})

        sup.transfer = transfer
        self.stacks[name] = hosted
        return hosted

    def _start(
        self, hosted: Hosted, life: Callable[[], Awaitable[int]], ready: asyncio.Future[None]
    ) -> None:
        hosted.task = asyncio.create_task(self._run(hosted, life, ready), name=hosted.name)
        hosted.task.add_done_callback(_retrieve)

    async def _run(
        self, hosted: Hosted, life: Callable[[], Awaitable[int]], ready: asyncio.Future[None]
    ) -> int:
        name = hosted.name
        self.events.publish({"type": "stack", "stack": name, "status": "starting",
                             "time": time.time()})
        try:
            with store.locked(store.supervisor_lock(name), wait=False):
                async with asyncio.TaskGroup() as hosted.supervisor.tasks:
                    return await life()
        except BaseException as exc:
            failure = user_error(exc)
            if not ready.done():
                ready.set_exception(failure)
            else:
                log.warning("stack %s failed: %s", name, failure)
            raise
        finally:
            if not ready.done():
                ready.set_exception(ConflictError(f"stack {name} ended before it was up"))
            self.stacks.pop(name, None)
            self.events.publish({"type": "stack", "stack": name, "status": "removed",
                                 "time": time.time()})

    def _reporter(self, hosted: Hosted) -> Callable[[str, str], None]:
        def report(subject: str, message: str) -> None:
            line = f"{subject}: {message}"
            hosted.progress.append(line)
            del hosted.progress[:-200]
            log.info("%s", line)
            # `up -d` on a terminal draws them as `up` does (linkd.cli.follow)
            self.events.publish({"type": "progress", "stack": hosted.name,
                                 "subject": subject, "message": message})

        return report

    # -- containers ----------------------------------------------------------------------

    async def stop_container(self, stack: str, container: str) -> None:
        hosted = self._hosted(stack)
        self._container(hosted, container)
        await hosted.supervisor.stop(container)

    async def start_container(self, stack: str, container: str) -> None:
        hosted = self._hosted(stack)
        plan = self._container(hosted, container)
        proc = hosted.supervisor.processes.get(container)
        if proc is not None and proc.returncode is None:
            raise ConflictError(f"container {container} is already running")
        hosted.supervisor.user_stopped.discard(container)
        await hosted.supervisor.start(plan)

    async def restart_container(self, stack: str, container: str) -> None:
        await self.stop_container(stack, container)
        await self.start_container(stack, container)

    def _container(self, hosted: Hosted, name: str) -> ContainerPlan:
        plan = hosted.supervisor.plan
        if plan is None or not any(c.name == name for c in plan.containers):
            known = ", ".join(c.name for c in plan.containers) if plan else "none yet"
            raise NotFoundError(f"stack {hosted.name} has no container {name} ({known})")
        return plan.container(name)

    # -- reading -------------------------------------------------------------------------

    def names(self) -> list[str]:
        return sorted(self.stacks)

    def state(self, name: str) -> StackState:
        hosted = self._hosted(name)
        state = hosted.supervisor.snapshot()  # what the state file holds, or will soon
        if state is None:
            raise NotFoundError(f"stack {name} is still being planned")
        return state

    def hosted(self, name: str) -> Hosted:
        return self._hosted(name)

    def _hosted(self, name: str) -> Hosted:
        hosted = self.stacks.get(name)
        if hosted is None:
            known = ", ".join(self.names()) or "none"
            raise NotFoundError(f"no stack {name} (stacks up: {known})")
        return hosted


def _retrieve(task: asyncio.Task[int]) -> None:
    """A stack task's failure was handed to whoever waited for it: do not warn again."""
    if not task.cancelled():
        task.exception()

