"""One stack's life from `up` to `down`: in the foreground (`linkd up`, `run`) or as a
task of the daemon (`lifecycle`, which the daemon runs per stack).

1. What an earlier supervisor of the stack left is removed (`teardown`).
2. The supervisor comes up (cut short if a stop is asked for meanwhile).
3. It runs until stopped, or until a service in `--abort-on-container-exit` exits for
   good; SIGINT/SIGTERM (Ctrl-C, or `linkd down` from elsewhere) stop a foreground one.
4. Teardown always runs, for a failed `up` too, so a failure part-way leaves nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from linkd.core import names
from linkd.core.model import Stack
from linkd.errors import ConflictError, LinkdError
from linkd.runtime.images.pull import Transfer
from linkd.runtime.kernel.netlink import Kernel
from linkd.runtime.stack import store
from linkd.runtime.stack.live import Report
from linkd.runtime.stack.supervisor import Supervisor
from linkd.runtime.stack.teardown import down_unsupervised


@dataclass(frozen=True, slots=True)
class UpOptions:
    abort_on_exit: frozenset[str] = frozenset()  # services whose exit stops the stack
    exit_code_from: str | None = None


async def run(
    stack: Stack,
    source: str,
    options: UpOptions,
    report: Report,
    *,
    on_up: Callable[[Supervisor], None] | None = None,
    before_down: Callable[[], Awaitable[None]] | None = None,
    transfer: Transfer | None = None,
) -> int:
    """`linkd up` in the foreground: up, supervise until stopped, then always down.

    `on_up` runs once everything is started; `before_down` before teardown begins (the
    CLI uses it to show the last output of the containers before they are stopped);
    `transfer` hears the bytes of each layer an image pull fetches (a live display).
    """
    try:
        lock = store.locked(store.supervisor_lock(stack.name), wait=False)
        lock.__enter__()
    except BlockingIOError:
        raise ConflictError(
            f"stack {stack.name} is already up; `linkd down -p {stack.name}` first, "
            "or pick another name with -p"
        ) from None
    try:
        return await _supervised(stack, source, options, report, on_up, before_down,
                                 transfer)
    finally:
        lock.__exit__(None, None, None)


async def _supervised(
    stack: Stack,
    source: str,
    options: UpOptions,
    report: Report,
    on_up: Callable[[Supervisor], None] | None,
    before_down: Callable[[], Awaitable[None]] | None,
    transfer: Transfer | None,
) -> int:
    supervisor = Supervisor(stack.name, source, report)
    supervisor.transfer = transfer
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    received: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig.name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    async with asyncio.TaskGroup() as supervisor.tasks:
        return await _up_and_supervise(
            stack, supervisor, stop, received, options, on_up, before_down
        )


async def _up_and_supervise(
    stack: Stack,
    supervisor: Supervisor,
    stop: asyncio.Event,
    received: list[str],
    options: UpOptions,
    on_up: Callable[[Supervisor], None] | None,
    before_down: Callable[[], Awaitable[None]] | None,
) -> int:
    loop = asyncio.get_running_loop()

    async def shielded_before_down() -> None:
        # A second Ctrl-C must not cut teardown in half (netavark ignores it too).
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: None)
        if before_down is not None:
            await before_down()

    try:
        code = await lifecycle(
            stack,
            supervisor,
            stop,
            options,
            on_up=on_up,
            before_down=shielded_before_down,
            interrupted_by=lambda: received[0] if received else "a stop request",
        )
        # Ctrl-C ends `up` as a shell would report it; `linkd down` elsewhere is a
        # normal end.
        return 130 if received and received[0] == "SIGINT" else code
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def lifecycle(
    stack: Stack,
    supervisor: Supervisor,
    stop: asyncio.Event,
    options: UpOptions,
    *,
    on_up: Callable[[Supervisor], None] | None = None,
    before_down: Callable[[], Awaitable[None]] | None = None,
    interrupted_by: Callable[[], str] = lambda: "a stop request",
) -> int:
    """One stack's life inside a running event loop: clean what an earlier supervisor
    left, come up (cut short if `stop` is set meanwhile), supervise until `stop` or an
    abort, and always tear down. Runs inside `supervisor.tasks` (a TaskGroup).

    Returns the exit code `up` reports (130 when interrupted while coming up).
    """
    report = supervisor.report
    try:
        await _cleanup_leftovers(stack.name, supervisor)
        up = asyncio.create_task(supervisor.up(stack))
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({up, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if up not in done:
            up.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await up
            report(f"stack {stack.name}", f"interrupted by {interrupted_by()} while coming up")
            return 130
        stopper.cancel()
        up.result()
        if on_up is not None:
            on_up(supervisor)
        return await supervise(supervisor, stop, options)
    finally:
        try:
            if before_down is not None:
                await before_down()
        finally:
            await supervisor.teardown()


async def supervise(supervisor: Supervisor, stop: asyncio.Event, options: UpOptions) -> int:
    """Run until `stop` is set, or a service in `abort_on_exit` exits for good."""
    exit_code = 0
    exits = supervisor.containers.exits
    stop_task = asyncio.create_task(stop.wait())
    try:
        while True:
            exit_task = asyncio.create_task(exits.get())
            done, _ = await asyncio.wait(
                {stop_task, exit_task}, return_when=asyncio.FIRST_COMPLETED
            )
            if exit_task not in done:
                exit_task.cancel()
                return exit_code
            name, code, final = exit_task.result()
            plan = supervisor.plan
            service = plan.container(name).service if plan else name
            if final and service in options.abort_on_exit:
                if options.exit_code_from in (None, service):
                    exit_code = code
                return exit_code
    finally:
        stop_task.cancel()


async def _cleanup_leftovers(stack: str, supervisor: Supervisor) -> None:
    """Remove what an earlier supervisor of this stack left when it died."""
    try:
        previous = store.load(stack)
    except LinkdError:
        previous = None
    if previous is None and not Kernel.netns_names(names.netns_prefix(stack)):
        return
    await down_unsupervised(stack, supervisor.report)
