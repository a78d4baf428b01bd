"""Isolation and published ports: from a stack's plan to the nftables table that does it.

Pure: `table(plan)` is the stack's table in the host's namespace as data (the
vocabulary of `linkd.core.nftables`: chains, rules of matches and a statement), `ruleset(plan)`
the same table as `nft -f` text (docs, golden tests, the integration tests' oracle),
`assign_host_ports` fills in random host ports through a callback, and
`check_published` refuses a host port another stack holds. `linkd.runtime.kernel.firewall`
sends the table to the kernel over netlink and does the binding and probing.

One table per stack, `inet linkd-<stack>`: created with the stack's first network,
replaced whole in one transaction, deleted with the stack. Tables of different stacks
never need each other: every rule a table holds names only its own bridges, and a drop
in any base chain is final (an accept only ends that chain), so the tables compose.

Rules (Docker's bridge driver and netavark's "isolate" mode are the models):

- forward: an `internal` network forwards nothing in or out (its containers talk only to
  each other on their bridge); a network's traffic may not be routed into another
  bridge, linkd's or other software's (a dockerd's, libvirt's), unless that bridge is one
  of the host's uplinks (it carries a default route), and nothing may be routed into it
  but replies and published ports (DNAT). So a container reaches only containers it
  shares a network with, over TCP, UDP and ICMP, in its stack or another; other
  software's containers only through their published ports, as theirs reach linkd's;
  the outside reaches containers only through published ports.
  Traffic between two containers on one bridge is bridged, not routed; with
  br_netfilter loaded (bridge-nf-call-iptables=1) it crosses this hook with the bridge
  as input and output device, which no rule here drops.
- input: containers cannot reach the host's own services, except the ports the stack
  allows (`x-linkd: host:`), and those only from non-internal networks (Docker lets
  every container reach every host service). No container may send to 127.0.0.0/8
  through its bridge (route_localnet is on for the bridges; CVE-2020-8558). Replies to
  connections the host opened pass (established).
- published ports: DNAT in prerouting (traffic to the host's addresses from outside and
  from containers: hairpin) and in output (the host's own processes, 127.0.0.1
  included), to the container's address on its first non-internal network. No
  userland proxy: the kernel forwards at bridge speed.
- raw (prerouting): traffic between containers of one network is not tracked (it is
  bridged; with br_netfilter conntrack would cost ~8% of a TCP stream for nothing).
- postrouting: masquerade what leaves a non-internal network (egress), the host's
  127.0.0.1 sources reaching a published port (route_localnet lets them onto the
  bridge, masquerade gives them an address the container can answer), and hairpin
  within a network (else the container would answer its peer directly and the peer
  would drop the answer).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Literal

from linkd.core import nftables as nft
from linkd.core.model import HostAccess, PortSpec, Protocol
from linkd.core.nftables import rule
from linkd.core.plan import ContainerPlan, StackPlan
from linkd.errors import ConflictError, SpecError

TABLE_PREFIX = "linkd-"
FAMILY: Literal["inet"] = "inet"
# The node's own tables (not a stack's: linkd.core.overlay_firewall) are `linkd-_<what>`:
# a stack name starts with a letter or a digit (linkd.spec.values), so none makes one.
NODE_TABLE_MARK = "_"


def table_name(stack: str) -> str:
    return f"{TABLE_PREFIX}{stack}"


def node_table_name(what: str) -> str:
    return f"{TABLE_PREFIX}{NODE_TABLE_MARK}{what}"


def stack_of_table(table: str) -> str | None:
    """The stack whose table this is; None for a node's table and for other software's."""
    if not table.startswith(TABLE_PREFIX) or table.startswith(node_table_name("")):
        return None
    return table[len(TABLE_PREFIX):]


@dataclass(frozen=True, slots=True)
class Published:
    """One published port or range of one container, with the host side decided."""

    service: str
    container: str
    protocol: Protocol
    host_ip: str | None  # None: every address of the host
    host_start: int
    host_end: int
    start: int
    end: int
    address: ipaddress.IPv4Address  # the container's, on its first non-internal network
    bridge: str



def _target(plan: StackPlan, container: ContainerPlan) -> tuple[ipaddress.IPv4Address, str]:
    internal = {n.key for n in plan.networks if n.internal}
    for interface in container.interfaces:
        if interface.network not in internal:
            return interface.address, interface.bridge
    raise SpecError([(
        f"services.{container.service}.ports", None,
        f"service {container.service} publishes ports but is only on internal networks, "
        "which have no way in or out; add a non-internal network or use expose",
    )])


def published(plan: StackPlan) -> list[Published]:
    """Every published port of the plan whose host port is decided, in plan order."""
    found = []
    for container in plan.containers:
        ports = [p for p in container.ports if p.published and p.host_start is not None]
        if not ports:
            continue
        address, bridge = _target(plan, container)
        for p in ports:
            assert p.host_start is not None and p.host_end is not None
            found.append(Published(
                container.service, container.name, p.protocol, p.host_ip,
                p.host_start, p.host_end, p.start, p.end, address, bridge,
            ))
    return found


# -- host ports ---------------------------------------------------------------------------

# (protocol, host ip or None, port) -> who holds it ("stack shop service web")
Holders = dict[tuple[str, str | None, int], str]
Allocate = Callable[[Protocol, str | None], int]  # a free host port, from the kernel


def _key(container: str, p: PortSpec) -> tuple[str, int, str, str | None]:
    return (container, p.start, p.protocol, p.host_ip)


def check_plan_ports(plan: StackPlan) -> None:
    """What the kernel part cannot do: IPv6 host addresses, ports of internal-only
    containers (raises SpecError naming the service)."""
    problems: list[tuple[str, int | None, str]] = []
    for container in plan.containers:
        ports = [p for p in container.ports if p.published]
        if not ports or container.replica != 1:
            continue
        for p in ports:
            if p.host_ip is not None and ipaddress.ip_address(p.host_ip).version == 6:
                problems.append((
                    f"services.{container.service}.ports", None,
                    f"host address {p.host_ip}: linkd publishes ports on IPv4 host "
                    "addresses only; leave the address out or give an IPv4 one",
                ))
        try:
            _target(plan, container)
        except SpecError as exc:
            problems += exc.problems
    if problems:
        raise SpecError(problems)


def assign_host_ports(
    plan: StackPlan, allocate: Allocate, taken: Holders, previous: StackPlan | None = None
) -> StackPlan:
    """`plan` with a host port for every published port that names none.

    A range without host ports gets one random port per container port, as Docker does.
    A container keeps the host port it had in `previous` (a changed stack, the same
    container and container port), so `linkd port` stays true across `up -d`; new ones
    come from `allocate`, retried while what it gives is in `taken` (other stacks' DNAT
    rules hold no socket, so the kernel cannot know them).
    """
    before: dict[tuple[str, int, str, str | None], int] = {}
    if previous is not None:
        for c in previous.containers:
            for p in c.ports:
                if p.published and p.host_start is not None and p.start == p.end:
                    before[_key(c.name, p)] = p.host_start
    used = dict(taken)
    for c in plan.containers:
        for p in c.ports:
            if p.published and p.host_start is not None and p.host_end is not None:
                for port in range(p.host_start, p.host_end + 1):
                    used[(p.protocol, p.host_ip, port)] = f"service {c.service}"
    containers = []
    for c in plan.containers:
        ports: list[PortSpec] = []
        for p in c.ports:
            if not p.published or p.host_start is not None:
                ports.append(p)
                continue
            for number in p.numbers():
                single = replace(p, start=number, end=number)
                host = before.get(_key(c.name, single))
                if host is None or _clash(used, p.protocol, p.host_ip, host):
                    host = _fresh(allocate, used, p.protocol, p.host_ip)
                used[(p.protocol, p.host_ip, host)] = f"service {c.service}"
                ports.append(replace(single, host_start=host, host_end=host))
        containers.append(replace(c, ports=tuple(ports)))
    return replace(plan, containers=tuple(containers))


def _clash(used: Holders, protocol: str, host_ip: str | None, port: int) -> str | None:
    for (proto, ip, number), holder in used.items():
        if proto == protocol and number == port and _ips_overlap(ip, host_ip):
            return holder
    return None


def _fresh(allocate: Allocate, used: Holders, protocol: Protocol, host_ip: str | None) -> int:
    for _ in range(64):
        port = allocate(protocol, host_ip)
        if _clash(used, protocol, host_ip, port) is None:
            return port
    raise ConflictError(f"no free host port for {protocol} on {host_ip or 'all addresses'}")


def _ips_overlap(a: str | None, b: str | None) -> bool:
    return a is None or b is None or a == b or "0.0.0.0" in (a, b)


def holders(plans: Iterable[StackPlan]) -> Holders:
    """Host ports the given (other) stacks publish, each with who holds it."""
    found: Holders = {}
    for plan in plans:
        for c in plan.containers:
            for p in c.ports:
                if p.published and p.host_start is not None and p.host_end is not None:
                    for port in range(p.host_start, p.host_end + 1):
                        found[(p.protocol, p.host_ip, port)] = (
                            f"stack {plan.stack} service {c.service}"
                        )
    return found


def check_published(plan: StackPlan, taken: Holders) -> None:
    """Refuse a fixed host port another stack publishes (ConflictError naming both)."""
    problems = []
    for c in plan.containers:
        for p in c.ports:
            if not p.published or p.host_start is None or p.host_end is None:
                continue
            for port in range(p.host_start, p.host_end + 1):
                holder = _clash(taken, p.protocol, p.host_ip, port)
                if holder is not None:
                    problems.append(
                        f"service {c.service}: host port {port}/{p.protocol} on "
                        f"{p.host_ip or 'all addresses'} is already published by {holder}"
                    )
                    break
    if problems:
        raise ConflictError("; ".join(problems))


def port_of(
    plan: StackPlan, service: str, port: int, protocol: str = "tcp", index: int = 1
) -> list[str]:
    """`linkd port SERVICE PORT[/PROTO]`: where the host reaches that container port,
    as `docker port` prints it (`0.0.0.0:32768`). Empty if it is not published."""
    chosen = [c for c in plan.of_service(service) if c.replica == index]
    if not chosen:
        raise KeyError(f"{service}-{index}")
    found = []
    for c in chosen:
        for p in c.ports:
            if (p.published and p.protocol == protocol and p.start <= port <= p.end
                    and p.host_start is not None):
                host = p.host_start + (port - p.start)
                found.append(f"{p.host_ip or '0.0.0.0'}:{host}")
    return found


# -- the ruleset --------------------------------------------------------------------------

_ACCEPT, _DROP = nft.Accept(), nft.Drop()
_REPLIES = nft.ConntrackState(("established", "related"))
_DNATED = nft.ConntrackStatus("dnat")
_MASQUERADE = nft.Masquerade()
_LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")
_BRIDGE_OUT = nft.InterfaceKind("oif", "bridge")


def _iif(bridge: str, negate: bool = False) -> nft.Interface:
    return nft.Interface("iif", bridge, negate)


def _oif(bridge: str, negate: bool = False) -> nft.Interface:
    return nft.Interface("oif", bridge, negate)


def _net(address: str | ipaddress.IPv4Address | ipaddress.IPv6Address
         ) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An address or `A.B.C.D/N` as a network (a host address: /32 or /128)."""
    return ipaddress.ip_network(address)


def table(plan: StackPlan, uplinks: frozenset[str] = frozenset()) -> nft.Table:
    """The stack's table, as data (deterministic: golden-tested through `ruleset`).

    `uplinks`: the host's devices that carry a default route. Containers may leave through
    any device but another bridge (other software's container and VM networks: Docker's,
    libvirt's, another linkd network's), and through a bridge that is an uplink."""
    nets = plan.networks
    # First: bridged traffic (br_netfilter), which no rule drops. One rule per bridge
    # where nft would look `iifname . oifname` up in a set: the same packets match.
    forward = [rule(_iif(n.bridge), _oif(n.bridge), _ACCEPT) for n in nets]
    for n in nets:
        if n.internal:
            forward += [
                rule(_iif(n.bridge), _oif(n.bridge, negate=True), _DROP),
                rule(_oif(n.bridge), _iif(n.bridge, negate=True), _DROP),
            ]
    forward += [rule(_REPLIES, _ACCEPT), rule(_DNATED, _ACCEPT)]
    for n in nets:
        if not n.internal:
            forward += [
                rule(_iif(n.bridge), _oif(n.bridge, negate=True), _BRIDGE_OUT,
                     *(_oif(u, negate=True) for u in sorted(uplinks)), _DROP),
                rule(_oif(n.bridge), _iif(n.bridge, negate=True), _DROP),
            ]
    # Neighbour discovery is not tracked: without it the host could not reach an
    # internal network's containers over IPv6.
    inputs = [rule(_REPLIES, _ACCEPT)]
    inputs += [rule(nft.Icmpv6Type(name), _ACCEPT) for name in nft.ICMPV6_TYPES]
    inputs += [
        rule(_iif(n.bridge), nft.Address("daddr", _LOOPBACK), _DROP)
        for n in nets if not n.internal
    ]
    inputs += [
        _host_access(n.bridge, h) for n in nets if not n.internal for h in plan.host_access
    ]
    inputs += [rule(_iif(n.bridge), _DROP) for n in nets]

    ports = [dnat for p in published(plan) for dnat in _dnat(p)]
    targets = {p.bridge for p in published(plan)}
    post: list[nft.Rule] = []
    for n in nets:
        if n.internal:
            continue
        if n.bridge in targets:
            post += [
                rule(_oif(n.bridge), nft.Address("saddr", _LOOPBACK), _MASQUERADE),
                rule(_oif(n.bridge), _DNATED, nft.Address("saddr", n.subnet), _MASQUERADE),
            ]
        post.append(rule(nft.Address("saddr", n.subnet), _oif(n.bridge, negate=True),
                         _MASQUERADE))
        if n.subnet6 is not None:
            post.append(rule(nft.Address("saddr", n.subnet6), _oif(n.bridge, negate=True),
                             _MASQUERADE))

    # Traffic between two containers of one network is bridged and needs no state: with
    # br_netfilter it would still be tracked (conntrack costs ~8% of a TCP stream here,
    # bench/ports.py). Only the gateway is a host address on the subnet: what goes to it
    # (published ports: DNAT) is tracked.
    raw = []
    for n in nets:
        raw.append(rule(_iif(n.bridge), nft.Address("daddr", n.subnet),
                        nft.Address("daddr", _net(n.gateway), negate=True), nft.Notrack()))
        if n.subnet6 is not None and n.gateway6 is not None:
            raw.append(rule(_iif(n.bridge), nft.Address("daddr", n.subnet6),
                            nft.Address("daddr", _net(n.gateway6), negate=True), nft.Notrack()))

    # Published ports are for IPv4 host addresses the host owns (fib), whichever way
    # the packet comes: from outside or a container (prerouting), or from the host
    # itself, 127.0.0.1 included (output).
    jump = [rule(nft.Family(4), nft.LocalDestination(), nft.Jump("published"))]
    if not ports:
        jump = []
    return nft.Table(FAMILY, table_name(plan.stack), (
        nft.Chain("raw", nft.Hook("filter", "prerouting", -300), tuple(raw)),
        nft.Chain("forward", nft.Hook("filter", "forward", 0), tuple(forward)),
        nft.Chain("input", nft.Hook("filter", "input", 0), tuple(inputs)),
        nft.Chain("prerouting", nft.Hook("nat", "prerouting", -100), tuple(jump)),
        nft.Chain("output", nft.Hook("nat", "output", -100), tuple(jump)),
        nft.Chain("published", None, tuple(ports)),
        nft.Chain("postrouting", nft.Hook("nat", "postrouting", 100), tuple(post)),
    ))


def ruleset(plan: StackPlan, uplinks: frozenset[str] = frozenset()) -> str:
    """The stack's table as `nft -f` reads it (`nft list table` shows the same rules)."""
    return table(plan, uplinks).text()


def _host_access(bridge: str, h: HostAccess) -> nft.Rule:
    where = [nft.Address("daddr", _net(h.address))] if h.address else []
    return rule(_iif(bridge), *where, nft.Port(h.protocol, h.start, h.end), _ACCEPT)


def _dnat(p: Published) -> list[nft.Rule]:
    match = (
        [nft.Address("daddr", _net(p.host_ip))] if p.host_ip and p.host_ip != "0.0.0.0"
        else []
    )
    proto = p.protocol
    if p.host_start == p.host_end:
        return [rule(*match, nft.Port(proto, p.host_start, p.host_start),
                     nft.Dnat(p.address, p.start))]
    if p.host_start == p.start:  # the same numbers: keep the port
        return [rule(*match, nft.Port(proto, p.host_start, p.host_end), nft.Dnat(p.address))]
    return [  # a shifted range: one rule per port (nft maps no port offsets here)
        rule(*match, nft.Port(proto, p.host_start + i, p.host_start + i),
             nft.Dnat(p.address, p.start + i))
        for i in range(p.end - p.start + 1)
    ]


def localnet_bridges(plan: StackPlan) -> list[str]:
    """Bridges that need route_localnet=1: those a published port leads to (the host's
    127.0.0.1 connections are routed out through them before masquerade)."""
    return sorted({p.bridge for p in published(plan)})


def wanted(plan: StackPlan) -> bool:
    """A stack has a table while it has a network."""
    return bool(plan.networks)
