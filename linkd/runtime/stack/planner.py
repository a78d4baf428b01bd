"""Where a stack goes: its images and conventions resolved, its subnets, addresses and
host ports picked, and the claim recorded, under the global lock from the pick to the
record.

Every linkd process of one run directory picks subnets and host ports against what the
others hold: other stacks' state files (their plans), their leases (held while they are
down) and the host's routes. Two stacks picking at once would take the same subnet, so
`claim` holds `<root>/lock` from the pick until the caller has recorded the plan (its
state file) and the lease is saved; a caller that has more to do before it can record
(an update stopping what it replaces) does it inside, and the lock waits.

Networks shared between stacks (`external: true`, linkd.core.shared_networks) are
decided here too, under the same lock: an external network is found among the networks
the other stacks made (or the `up` fails before anything is created), and every
network's addresses avoid those other stacks' containers have on it, so neither side of
a shared network ever takes an address of the other's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from linkd.conventions.schema import Convention
from linkd.core import ipam, names, shared_networks
from linkd.core.model import Stack
from linkd.core.plan import NetworkPlan, StackPlan, lease_of, realize
from linkd.runtime.images import image_store, pull
from linkd.runtime.kernel.firewall import publish_ports
from linkd.runtime.kernel.netlink import Kernel
from linkd.runtime.stack import shared, store
from linkd.runtime.stack.conventions import load_conventions
from linkd.runtime.volumes.mounts import check_stack as check_mounts

if TYPE_CHECKING:  # etcd's client is loaded by a cluster daemon only
    from linkd.runtime.cluster.overlay_networks import OverlayNetworks

Conventions = dict[str, Convention]  # by name, as linkd.core.plan.realize takes them


async def resolve(stack: Stack, base: Path, report: pull.Report = pull.quiet,
                  transfer: pull.Transfer | None = None,
                  only: frozenset[str] | None = None) -> tuple[Stack, Conventions]:
    """`stack` with its images merged in (pulled from their registries, or loaded into
    the store if they are paths), its mounts checked, and the conventions it uses, read
    off the event loop and before the global lock is taken: a long image pull or load
    must not hold up every other stack's `up`, and a failed one has made nothing.

    `only`: the containers this node runs of a stack that spans nodes; the services of
    the others are left as written (their images and mounts are their nodes' business:
    their link variables name the ports the stack file gives, not their images')."""
    here = stack if only is None else replace(stack, services=tuple(
        s for s in stack.services
        if any(s.container(r) in only for r in range(1, s.replicas + 1))))
    await pull.pull_missing(here, base, report=report, transfer=transfer)

    def read() -> tuple[Stack, Conventions]:
        resolved = image_store.resolve_stack(here, base)
        check_mounts(resolved)  # external volumes, bind sources: before anything is made
        if only is not None:
            mine = {s.name: s for s in resolved.services}
            resolved = replace(stack, services=tuple(
                mine.get(s.name, s) for s in stack.services))
        return resolved, load_conventions(resolved, base)

    return await asyncio.to_thread(read)


@contextlib.asynccontextmanager
async def claim(
    kernel: Kernel, stack: Stack, conventions: Conventions, base: Path,
    previous: StackPlan | None, overlay: OverlayNetworks | None = None,
    only: frozenset[str] | None = None,
) -> AsyncIterator[StackPlan]:
    """The plan of `stack`, with the global lock held until the caller's block has
    recorded it; the lease is saved last, still under the lock. `previous` is the plan
    the stack runs now (an update): its own bridges' routes do not count as taken, and
    its host ports stay where they are. `overlay`: this node's side of the cluster (a
    `linkd daemon --cluster`), which makes `driver: overlay` networks span nodes.
    `only`: the containers this node runs of a stack spanning nodes; the whole stack is
    planned (every node plans it alike: the others' addresses, its link variables), and
    the plan keeps these."""
    async with store.locked_async(store.root() / "lock"):
        plan = await _plan(kernel, stack, conventions, base, previous, overlay, only)
        yield plan
        store.save_lease(lease_of(plan))


async def _plan(
    kernel: Kernel, stack: Stack, conventions: Conventions, base: Path,
    previous: StackPlan | None, overlay: OverlayNetworks | None,
    only: frozenset[str] | None = None,
) -> StackPlan:
    """Its lease's subnets and addresses where still free, others' leases avoided."""
    states = shared.other_states(stack.name)
    others = [s.plan for s in states]
    joinable = [s.plan for s in states if s.status in ("starting", "up")]
    shared_networks.check_names(stack, others)
    spanning: dict[str, NetworkPlan] = {}  # its own overlay networks
    remote: dict[str, NetworkPlan] = {}  # overlay networks it joins, made on other nodes
    reserved: list[tuple[ipam.IPNetwork, str]] = []
    if overlay is not None:
        reserved = await overlay.taken_subnets()
        made_here = shared_networks.owned(p for p in joinable if p.stack != stack.name)
        spanning, remote = await overlay.networks(
            stack, made_here, await _taken_subnets(kernel, others))
    joined = shared_networks.join(stack, joinable, remote)  # before anything is made
    own = {n.bridge for n in previous.networks} if previous is not None else set()
    own |= {n.bridge for n in joined.values()}  # routes of the bridges it joins: no clash
    # Its own bridges, kept while it was down because a joiner's containers are on them.
    own |= {names.bridge_name(stack.name, n.name) for n in stack.networks if not n.external}
    taken = [
        (net, who)
        for net, who in await _taken_subnets(kernel, others)
        if not any(who == f"host route via {bridge}" for bridge in own)
    ]
    lease = store.load_lease(stack.name)
    # Other stacks' leases are held for them while they are down.
    held = [
        subnet
        for other in store.leases()
        if other.stack != stack.name
        for _, subnet in other.subnets
    ]
    subnets = ipam.pick_subnets(
        [n for n in stack.networks if not n.external and n.name not in spanning],
        taken + [(subnet, why) for subnet, why in reserved
                 if not any(subnet == n.subnet for n in spanning.values())],
        previous=lease.subnet_map() if lease else None,
        reserved=held,
    )
    joined |= spanning
    networks = [joined.get(n.name) or (stack.name, n.name) for n in stack.networks]
    theirs = shared_networks.held(stack.name, networks, others)
    assigned = await overlay.assign(stack, joined) if overlay is not None else None
    plan = realize(stack, subnets, workdir=str(base), conventions=conventions, lease=lease,
                   joined=joined, held=theirs, foreign=_containers(joinable),
                   assigned=assigned)
    if only is not None:
        plan = replace(plan, containers=tuple(c for c in plan.containers if c.name in only))
    return publish_ports(plan, previous)  # host ports decided, or refused


def _containers(plans: list[StackPlan]) -> dict[str, str]:
    """Other stacks' containers with a namespace of their own, by name, to that namespace
    (`network_mode: container:NAME`); a name two stacks have is left out: ambiguous."""
    found: dict[str, list[str]] = {}
    for plan in plans:
        for c in plan.containers:
            if c.owns_netns():
                found.setdefault(c.name, []).append(c.netns)
    return {name: netns[0] for name, netns in found.items() if len(netns) == 1}


async def _taken_subnets(
    kernel: Kernel, others: list[StackPlan]
) -> list[tuple[ipam.IPNetwork, str]]:
    taken = list(await kernel.routes())
    for other in others:
        for net in other.networks:
            if net.owner is None:  # a network it joined is its owner's (counted there)
                taken.append((net.subnet, f"stack {other.stack} network {net.key}"))
    return taken
