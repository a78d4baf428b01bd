"""Containers on overlay networks, between a node and the cluster: which endpoint records
this node publishes for its own, and what it makes of every node's.

- `local_records`: from the states of the stacks this node runs, one record per
  container and overlay network, for every container that has not stopped for good
  (as a local DNS zone keeps them), `ready` unless its healthcheck holds it back.
- `neighbour_plans`: the records of containers on other nodes that share an overlay
  network with a stack here, as plans of their stacks (those containers, those
  networks): what the stack's DNS adds to its zone, as it adds other local stacks'
  containers on a shared network (linkd.core.shared_networks.neighbours). Each is
  named on the network by the key its own stack gives it, as at home.
- `forwarding`: the FDB and neighbour entries one network's VXLAN device needs to reach
  the containers on other nodes (linkd.core.overlay.desired_forwarding).

A record is believed only as far as it goes: it came from etcd, decoded and checked
(linkd.core.cluster_endpoints), and it only ever adds names on the overlay network it
names, for the stacks of this node on that network.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterable, Mapping
from ipaddress import IPv4Address, IPv6Address

from linkd.core.cluster_endpoints import MAX_PORTS, EndpointRecord, Port
from linkd.core.model import DnsSettings, HostAccess, PortSpec, RestartPolicy
from linkd.core.overlay import Desired, Endpoint, desired_forwarding
from linkd.core.overlay_plan import owner_of
from linkd.core.plan import ContainerPlan, InterfacePlan, NetworkPlan, StackPlan
from linkd.core.state import StackState
from linkd.dns.zone import held_back

GONE = ("exited", "failed")  # a container in these states is out of every zone


def local_records(node: str, underlay: IPv4Address | IPv6Address,
                  states: Iterable[StackState]) -> list[EndpointRecord]:
    """What this node publishes for the stacks it runs."""
    records: list[EndpointRecord] = []
    for state in states:
        if state.status not in ("starting", "up"):
            continue
        spanning = {n.key: n for n in state.plan.networks if n.overlay is not None}
        if not spanning:
            continue
        by_name = {c.name: c for c in state.containers}
        pending = held_back(state.plan, by_name)
        for c in state.plan.containers:
            current = by_name.get(c.name)
            if current is None or current.status in GONE:
                continue
            for i in c.interfaces:
                net = spanning.get(i.network)
                if net is None or net.overlay is None or i.mac_address is None:
                    continue
                records.append(EndpointRecord(
                    network=net.overlay.id, node=node, underlay=underlay,
                    stack=state.plan.stack, container=c.name, service=c.service,
                    replica=c.replica, hostname=c.hostname, aliases=i.aliases,
                    address=i.address, address6=None, mac=i.mac_address,
                    ready=(state.plan.stack, c.name) not in pending,
                    ports=_ports(c.ports), key=i.network))
    return records


def _ports(ports: Iterable[PortSpec]) -> tuple[Port, ...]:
    found: list[Port] = []
    for p in ports:
        if p.protocol not in ("tcp", "udp"):
            continue  # SRV names TCP and UDP only
        for number in p.numbers():
            if (number, p.protocol, p.name) not in found:
                found.append((number, p.protocol, p.name))
    return tuple(found[:MAX_PORTS])


def neighbour_plans(plan: StackPlan, records: Iterable[EndpointRecord], node: str
                    ) -> tuple[tuple[StackPlan, ...], frozenset[tuple[str, str]]]:
    """The containers on other nodes that `plan`'s overlay networks reach, as plans of
    their stacks, and those of them held back by their healthcheck."""
    overlays = tuple(n for n in plan.networks if n.overlay is not None)
    if not overlays:
        return (), frozenset()
    ids = {n.overlay.id for n in overlays if n.overlay is not None}
    by_stack: dict[str, list[EndpointRecord]] = defaultdict(list)
    for record in records:
        if record.node != node and record.network in ids:
            by_stack[record.stack].append(record)
    plans: list[StackPlan] = []
    pending: set[tuple[str, str]] = set()
    for stack, found in sorted(by_stack.items()):
        theirs, held = _their_plan(stack, tuple(found), overlays, plan.dns, plan.host_access)
        plans.append(theirs)
        pending |= held
    return tuple(plans), frozenset(pending)


# Memoized, per stack: a pass asks again for every stack's neighbours on every change of
# any record, and a stack whose records are the same gets the same plan object, which
# the zone skips without looking inside (linkd.dns.zone.rezone).
@functools.lru_cache(maxsize=1024)
def _their_plan(stack: str, found: tuple[EndpointRecord, ...], overlays: tuple[NetworkPlan, ...],
                dns: DnsSettings, host_access: tuple[HostAccess, ...]
                ) -> tuple[StackPlan, frozenset[tuple[str, str]]]:
    """Stack `stack`'s containers on other nodes as a plan of it, from its records
    `found` on the networks `overlays` (the asking stack's), and those held back."""
    mine = {n.overlay.id: n for n in overlays if n.overlay is not None}
    networks: dict[str, NetworkPlan] = {}
    interfaces: dict[str, list[InterfacePlan]] = defaultdict(list)
    first: dict[str, EndpointRecord] = {}
    pending: set[tuple[str, str]] = set()
    for r in sorted(found, key=lambda r: (r.container, r.network)):
        net = mine[r.network]
        key = r.network_key
        if key in networks and networks[key].overlay != net.overlay:
            continue  # one key for two networks: not a record a node makes
        networks[key] = _as_theirs(net, key)
        interfaces[r.container].append(_interface(r, net, key, len(interfaces[r.container])))
        first.setdefault(r.container, r)
        if not r.ready:
            pending.add((stack, r.container))
    containers = tuple(_container(first[name], tuple(ifaces))
                       for name, ifaces in sorted(interfaces.items()))
    return (StackPlan(stack, tuple(networks.values()), containers, (), dns, host_access, ()),
            frozenset(pending))


# Memoized: a pass rebuilds every stack's neighbours from every record, and a zone is
# changed only by the containers whose plans differ (linkd.dns.zone.rezone), so the same
# record gives the same objects each time, cheaply.
@functools.lru_cache(maxsize=16384)
def _interface(r: EndpointRecord, net: NetworkPlan, key: str, index: int) -> InterfacePlan:
    return InterfacePlan(
        network=key, ifname=f"eth{index}", host_ifname="", bridge=net.bridge,
        address=r.address, prefixlen=net.subnet.prefixlen, gateway=net.gateway,
        aliases=r.aliases, mac_address=r.mac)


@functools.lru_cache(maxsize=1024)
def _as_theirs(net: NetworkPlan, key: str) -> NetworkPlan:
    """The network as the other node's stack knows it: under its key, and one network
    with ours (the same owner) for the zone's scoping."""
    assert net.overlay is not None
    owner = net.owner or owner_of(net.overlay.id)
    return NetworkPlan(key=key, name=net.name, bridge=net.bridge, bridge_mac=net.bridge_mac,
                       subnet=net.subnet, gateway=net.gateway, internal=net.internal,
                       owner=owner, overlay=net.overlay)


@functools.lru_cache(maxsize=16384)
def _container(record: EndpointRecord, interfaces: tuple[InterfacePlan, ...]) -> ContainerPlan:
    ports = tuple(PortSpec(number, number, protocol, name=name)
                  for number, protocol, name in record.ports)
    return ContainerPlan(
        name=record.container, service=record.service, replica=record.replica,
        netns="", hostname=record.hostname, interfaces=interfaces, argv=(), env=(),
        working_dir="/", user=None, restart=RestartPolicy(), stop_signal="SIGTERM",
        stop_grace_period=0.0, healthcheck=None, image=None, ports=ports)


def forwarding(network: str, records: Iterable[EndpointRecord],
               local: IPv4Address | IPv6Address) -> Desired:
    """The entries network `network`'s VXLAN device on the node at `local` needs."""
    return desired_forwarding((_endpoint(r) for r in records if r.network == network), local)


@functools.lru_cache(maxsize=16384)
def _endpoint(record: EndpointRecord) -> Endpoint:
    return Endpoint(record.mac, record.address, record.underlay)


def by_network(records: Iterable[EndpointRecord]) -> Mapping[str, list[EndpointRecord]]:
    grouped: dict[str, list[EndpointRecord]] = defaultdict(list)
    for r in records:
        grouped[r.network].append(r)
    return grouped
