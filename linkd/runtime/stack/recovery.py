"""Taking a stack over from a supervisor that died (a daemon killed with -9, a crash).

From the stack's state file and the kernel: the containers still running are adopted
(none is restarted that did not need it), those that died meanwhile go to their restart
policy, what is missing is recreated (a bridge or veth deleted by hand, steps a crash
cut short), what never started is started, and DNS is served in every container again.
A container that cannot be adopted is ended first (`teardown.Leftovers`: by PID,
through a pidfd) and started afresh.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING

from linkd.core.plan import ContainerPlan
from linkd.core.reconcile import EnsureNetns, plan_up
from linkd.core.state import ContainerState, StackState
from linkd.errors import ContainerError
from linkd.runtime.containers import process
from linkd.runtime.stack.teardown import Leftovers

if TYPE_CHECKING:
    from linkd.runtime.stack.supervisor import Supervisor


async def recover(sup: Supervisor, state: StackState) -> None:
    live, containers = sup.live, sup.containers
    plan = state.plan
    live.plan = plan
    live.states = {c.name: c for c in state.containers}
    sup.neighbours.refresh()
    sup.publisher.serve(plan)
    sup.neighbours.start()
    sup.publisher.publish_zone()
    observed = await sup.observe()
    leftovers = Leftovers()
    handled: set[str] = set()
    for container in plan.containers:
        current = live.state(container.name)
        if current.status in ("exited", "failed"):
            handled.add(container.name)  # stopped for good before: stays so
            continue
        if container.netns and container.netns not in observed.netns:
            continue  # its namespace is gone: a process left in it reaches no one
        proc = await _adopt(sup, container, current, leftovers)
        if proc is not None:
            handled.add(container.name)
            live.processes[container.name] = proc
            containers.watch(container, proc, restarts=current.restarts)
            # Probed afresh: the health the dead supervisor saw is not known now.
            first = containers.start_health(
                container, proc.init_pid, current.started_at or time.time()
            )
            live.states[container.name] = replace(
                live.states[container.name], health=first.status if first else None
            )
    for leftover in {c.name for c in plan.containers} - handled:
        leftovers.end(live.name, leftover, live.states.get(leftover))
    actions = plan_up(plan, replace(observed, running=frozenset(handled)))
    sup.kernel.prefetch_netns(a.netns for a in actions if isinstance(a, EnsureNetns))
    await sup.apply_all(actions)
    await sup.ensure_host(plan)
    await sup.firewall.ensure(plan, await sup.kernel.default_route_devices())
    present = observed.netns | {a.netns for a in actions if isinstance(a, EnsureNetns)}
    for container in plan.containers:
        if (container.owns_netns() and not sup.resolvers.serves(container.name)
                and container.netns in present):
            await sup.resolvers.serve(container)
    live.status = "up"
    await sup.publisher.writer.flush()
    live.report(f"stack {live.name}", f"recovered ({len(handled)} containers adopted)")


async def _adopt(
    sup: Supervisor, container: ContainerPlan, current: ContainerState, leftovers: Leftovers
) -> process.ContainerProcess | None:
    spec = sup.containers.process_spec(container)
    if current.pid is not None and current.init_pid is not None:
        try:
            return await process.adopt(spec, current.pid, current.init_pid)
        except ContainerError as exc:
            sup.live.report(f"container {container.name}", f"not adopted: {exc}")
    # Started, but its PIDs never reached the state file: find it by its spec.
    found = leftovers.shims().get(spec.run_dir)
    if found is None:
        return None
    try:
        proc = await process.adopt(spec, *found)
    except ContainerError:
        return None
    sup.publisher.set_state(container.name, status="running", pid=found[0], init_pid=found[1])
    return proc
