"""Level-based planning: desired state against observed state gives actions.

`plan_up(desired, observed, previous)` and `plan_down(stack, previous, observed)` are pure; the
runtime observes the kernel and its processes, calls them, and applies the actions in
the order given. Running the same plan twice is harmless: every action is an idempotent
`ensure_*`/`remove_*` step, and a second observation after a complete `up` yields only
the actions still needed (none).

Ordering rules (they are why this module exists):
- up:   bridges, then per container its namespace, veths and addresses, then processes
        in dependency waves. Containers and networks that are no longer desired are
        removed first, so a moved address or name is free before it is reused.
- down: processes (reverse dependency order), then namespaces (the kernel removes the
        veths inside in bulk, much faster than deleting them one by one), then any
        host-side veth left over, then bridges last, and the runtime deletes a bridge
        only when it has no ports left.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from linkd.core import names
from linkd.core.ipam import Lease
from linkd.core.plan import ContainerPlan, InterfacePlan, NetworkPlan, StackPlan


@dataclass(frozen=True, slots=True)
class ObservedLink:
    name: str
    kind: str  # "bridge", "veth", ...
    master: str | None  # name of the bridge it is enslaved to


@dataclass(frozen=True, slots=True)
class Observed:
    links: Mapping[str, ObservedLink]  # host namespace links whose names carry linkd's prefix
    netns: frozenset[str]  # this stack's namespaces
    running: frozenset[str]  # this stack's containers whose process is alive


@dataclass(frozen=True, slots=True)
class EnsureBridge:
    network: NetworkPlan


@dataclass(frozen=True, slots=True)
class EnsureNetns:
    netns: str


@dataclass(frozen=True, slots=True)
class EnsureVeth:
    netns: str
    interface: InterfacePlan


@dataclass(frozen=True, slots=True)
class ConfigureNetns:
    container: ContainerPlan


@dataclass(frozen=True, slots=True)
class StartContainer:
    container: ContainerPlan


@dataclass(frozen=True, slots=True)
class StopContainer:
    name: str
    wave: int = 0  # consecutive stops of one wave may run together


@dataclass(frozen=True, slots=True)
class RemoveNetns:
    netns: str


@dataclass(frozen=True, slots=True)
class RemoveLink:
    name: str


@dataclass(frozen=True, slots=True)
class RemoveBridge:
    name: str  # only if it has no ports left; the runtime checks


Action = (
    EnsureBridge
    | EnsureNetns
    | EnsureVeth
    | ConfigureNetns
    | StartContainer
    | StopContainer
    | RemoveNetns
    | RemoveLink
    | RemoveBridge
)


def plan_up(
    desired: StackPlan, observed: Observed, previous: StackPlan | None = None
) -> list[Action]:
    actions: list[Action] = []
    wanted_containers = {c.name for c in desired.containers}
    if previous is not None:
        stale = [c for c in previous.containers if c.name not in wanted_containers]
        actions += [StopContainer(c.name) for c in stale if c.name in observed.running]
    for netns in sorted(observed.netns):
        unwanted = names.container_from_netns(desired.stack, netns)
        if unwanted is not None and unwanted not in wanted_containers:
            if unwanted in observed.running and not _stopping(actions, unwanted):
                actions.append(StopContainer(unwanted))
            actions.append(RemoveNetns(netns))
    if previous is not None:
        wanted_bridges = {n.bridge for n in desired.networks}
        actions += [
            RemoveBridge(n.bridge)
            for n in previous.networks
            if n.bridge not in wanted_bridges and n.bridge in observed.links
        ]

    for network in desired.networks:
        link = observed.links.get(network.bridge)
        if link is None or link.kind != "bridge":
            actions.append(EnsureBridge(network))
    for container in desired.containers:
        if not container.owns_netns():
            # Another's namespace, or the host's: nothing to make; its files are written
            # before it starts (ConfigureNetns), once the one it shares is wired.
            if container.name not in observed.running:
                actions.append(ConfigureNetns(container))
            continue
        fresh = container.netns not in observed.netns
        if fresh:
            actions.append(EnsureNetns(container.netns))
        rewired = False
        for interface in container.interfaces:
            link = observed.links.get(interface.host_ifname)
            if fresh or link is None or link.master != interface.bridge:
                actions.append(EnsureVeth(container.netns, interface))
                rewired = True
        if fresh or rewired:
            actions.append(ConfigureNetns(container))
    for wave in desired.start_waves:
        for service in wave:
            actions += [
                StartContainer(c)
                for c in desired.of_service(service)
                if c.name not in observed.running
            ]
    return actions


def plan_down(
    stack: str, previous: StackPlan | None, observed: Observed, lease: Lease | None = None
) -> list[Action]:
    """Remove what `observed` has of the stack. Without a plan (no state survived), the
    stack's `lease` names its veths and bridges; namespaces are found by their prefix."""
    actions: list[Action] = []
    ordered: set[str] = set()
    if previous is not None:
        for index, wave in enumerate(reversed(previous.start_waves)):
            for service in wave:
                for container in previous.of_service(service):
                    ordered.add(container.name)
                    if container.name in observed.running:
                        actions.append(StopContainer(container.name, index))
    actions += [StopContainer(name, -1) for name in sorted(observed.running - ordered)]
    actions += [RemoveNetns(netns) for netns in sorted(observed.netns)]
    if previous is not None:
        # A veth whose namespace is already gone is an orphan; the others vanish with
        # their namespace, and deleting them one by one would cost ~20 ms each.
        actions += [
            RemoveLink(i.host_ifname)
            for c in previous.containers
            if c.netns not in observed.netns
            for i in c.interfaces
            if i.host_ifname in observed.links
        ]
        actions += [
            RemoveBridge(n.bridge) for n in previous.networks if n.bridge in observed.links
        ]
    elif lease is not None:
        veths = {
            names.host_veth_name(stack, container, network)
            for network, container, _, _ in lease.addresses
            if names.netns_name(stack, container) not in observed.netns
        }
        actions += [RemoveLink(veth) for veth in sorted(veths & observed.links.keys())]
        bridges = {names.bridge_name(stack, network) for network, _ in lease.subnets}
        actions += [RemoveBridge(bridge) for bridge in sorted(bridges & observed.links.keys())]
    return actions


def _stopping(actions: list[Action], container: str) -> bool:
    return any(isinstance(a, StopContainer) and a.name == container for a in actions)
