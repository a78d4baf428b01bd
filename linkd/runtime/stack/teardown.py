"""Taking a stack down: the one path for `down`, a failed `up`, crash recovery and
orphans.

A stack is removed in one order, whoever removes it (DESIGN principle 5): its processes,
then its namespaces (their veths go with them), the host-side veths left over, its
bridges, its nftables table, linkd's forwarding chain once no bridge of linkd's is left,
and its cgroups. Every step runs; the failures are collected and returned together, so
one that fails never leaves the rest in place.

A bridge another stack still uses stays (`shared.kept`): a network the stack made that
another stack joined keeps running for that stack's containers (Compose's `down` leaves
a network with active endpoints too), and one it joined is left to its owner; whichever
stack leaves it last removes it.

What differs is only how the processes end and what names the stack's objects:

* its supervisor is alive (`down`, a failed `up`): the supervisor stops its own
  children, in reverse dependency order with their stop signal and grace period, as the
  `apply` it hands in;
* its supervisor died (`down` of a stack a killed daemon left, a stack whose state says
  it was stopping): `end_leftovers` kills the containers by PID, each through a pidfd
  and only while that PID is still linkd's shim for that very container;
* nothing records it but its lease (a crash between creating objects and recording
  them): the same, with the lease naming its veths and bridges
  (`linkd.core.reconcile.plan_down`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping

from linkd.core import firewall, names
from linkd.core.ipam import Lease
from linkd.core.plan import StackPlan
from linkd.core.reconcile import (
    Action,
    Observed,
    RemoveBridge,
    RemoveLink,
    RemoveNetns,
    StopContainer,
    plan_down,
)
from linkd.core.state import ContainerState, StackState
from linkd.errors import KernelError, LinkdError, TeardownError
from linkd.runtime.containers import process
from linkd.runtime.kernel import cgroups, forwarding
from linkd.runtime.kernel.firewall import remove_table
from linkd.runtime.kernel.firewall import tables as firewall_tables
from linkd.runtime.kernel.netlink import Kernel
from linkd.runtime.stack import shared, store
from linkd.runtime.stack.live import Report

log = logging.getLogger("linkd")

Apply = Callable[[Action], Awaitable[None]]


async def remove_stack(
    kernel: Kernel, stack: str, plan: StackPlan | None, *,
    lease: Lease | None = None,
    running: frozenset[str] = frozenset(),
    apply: Apply | None = None,
    release: bool = True,
    report: Report | None = None,
) -> list[BaseException]:
    """Remove what the kernel has of `stack`, in order and best effort; the failures.
    `running` are the containers whose processes `apply` stops (StopContainer); the
    kernel's objects are removed by `apply` too when given, else here. `release`: take
    linkd's forwarding chain out if no bridge of linkd's is left (a caller removing
    many stacks does it once, after the last)."""
    prefix = names.netns_prefix(stack)
    await kernel.settle(prefix)  # a namespace still being made is there when observed
    observed = Observed(
        links=await kernel.links(), netns=kernel.netns_names(prefix), running=running
    )
    step = apply if apply is not None else (
        lambda action: remove(kernel, action, stack, report))
    errors: list[BaseException] = []
    for group in stop_groups(plan_down(stack, plan, observed, lease)):
        results = await asyncio.gather(*(_logged(step, a) for a in group),
                                       return_exceptions=True)
        errors += [r for r in results if isinstance(r, BaseException)]
    try:
        if firewall.table_name(stack) in await firewall_tables():
            await remove_table(stack)  # a table-deleting commit waits for the kernel
    except LinkdError as exc:
        errors.append(exc)
    if release:
        errors += await forwarding.release()
    errors += await asyncio.to_thread(cgroups.remove_stack, stack)
    return errors


async def remove(
    kernel: Kernel, action: Action, stack: str, report: Report | None = None
) -> None:
    """One removal step of `plan_down` (or of an update) of `stack`."""
    match action:
        case RemoveNetns(netns):
            kernel.remove_netns(netns)
        case RemoveLink(name):
            await kernel.remove_link(name)
        case RemoveBridge(name):
            reason = shared.kept(stack, name)
            if reason is not None:
                log.info("stack %s: bridge %s kept: %s", stack, name, reason)
                if report is not None:
                    report(f"stack {stack}", f"bridge {name} kept: {reason} (it goes with "
                                             "the last stack on it)")
                return
            await kernel.remove_bridge(name)
        case _:  # a stop: the caller's to apply, and none is asked for without one
            raise KernelError(f"{type(action).__name__} needs the stack's supervisor")


async def _logged(apply: Apply, action: Action) -> None:
    try:
        await apply(action)
    except Exception as exc:  # a teardown step failing must not stop the others
        log.warning("teardown step %s failed: %s", type(action).__name__, exc)
        raise


def stop_groups(actions: list[Action]) -> list[list[Action]]:
    """Consecutive stops of the same wave run together; everything else runs alone."""
    groups: list[list[Action]] = []
    for action in actions:
        previous = groups[-1][-1] if groups else None
        if (
            isinstance(action, StopContainer)
            and isinstance(previous, StopContainer)
            and previous.wave == action.wave
        ):
            groups[-1].append(action)
        else:
            groups.append([action])
    return groups


class Leftovers:
    """Ends containers that no supervisor of ours watches, by PID through a pidfd, and
    only what `process.open_shim` identifies as that container's shim or init.

    A recorded init goes first and alone: its shim then reaps it and exits on its own
    (killing both at once would leave init a zombie for the host's PID 1). A container
    whose PIDs were never recorded (its starter died between starting it and saving
    them) is found by its run directory, in one scan of /proc for all of them."""

    def __init__(self) -> None:
        self._shims: dict[str, tuple[int, int]] | None = None

    def shims(self) -> dict[str, tuple[int, int]]:
        """Running containers by run directory: (shim PID, init PID)."""
        if self._shims is None:
            self._shims = process.running_shims()
        return self._shims

    def end(self, stack: str, container: str, state: ContainerState | None = None) -> bool:
        """End what runs of `container`; whether anything did."""
        run_dir = str(store.container_dir(stack, container))
        if state is not None and _end(run_dir, state.pid, state.init_pid):
            return True
        found = self.shims().get(run_dir)
        return found is not None and _end(run_dir, *found)

    def end_all(
        self, stack: str, containers: Iterable[str], states: Mapping[str, ContainerState]
    ) -> list[BaseException]:
        errors: list[BaseException] = []
        for name in containers:
            try:
                self.end(stack, name, states.get(name))
            except OSError as exc:
                errors.append(exc)
        return errors


def _end(run_dir: str, shim: int | None, init: int | None) -> bool:
    if init is not None and process.kill_shim(init, run_dir, init=True):
        return True
    return shim is not None and process.kill_shim(shim, run_dir)


async def down_unsupervised(stack: str, report: Report) -> None:
    """Tear down a stack whose supervisor is gone, from its state file and the kernel."""
    try:
        previous: StackState | None = store.load(stack)
    except LinkdError:
        previous = None
    errors: list[BaseException] = []
    if previous is not None:
        states = {c.name: c for c in previous.containers}
        containers = [c.name for c in previous.plan.containers]
        errors += Leftovers().end_all(stack, containers, states)
    kernel = Kernel()
    try:
        errors += await remove_stack(kernel, stack, previous.plan if previous else None,
                                     lease=store.load_lease(stack), report=report)
    finally:
        kernel.close()
    if errors:
        raise TeardownError(f"linkd down {stack}", errors)
    store.remove_stack_dir(stack)
    report(f"stack {stack}", "removed")


async def remove_orphans(kernel: Kernel, report: Report) -> None:
    """Remove the processes and kernel objects of stacks this run directory knows (they
    have a lease) but no longer runs (they have no state): what a crash between
    creating objects and recording them, or a failed teardown, left behind.

    Only names derived from those leases are touched, so the stacks of another run
    directory ($LINKD_RUN_DIR), a benchmark's objects or anything else are never seen
    as orphans."""
    running = set(store.stacks())
    leftovers = Leftovers()
    for lease in store.leases():
        if lease.stack in running:
            continue
        containers = sorted({c for _, c, _, _ in lease.addresses})
        ended = [c for c in containers if leftovers.end(lease.stack, c)]
        for name in ended:
            report(f"container {lease.stack}/{name}", "killed (orphan)")
        for exc in await remove_stack(kernel, lease.stack, None, lease=lease, release=False):
            report(f"stack {lease.stack}", f"cleanup of orphans failed: {exc}")
    for exc in await forwarding.release():
        report("host", f"cleanup failed: {exc}")
