"""The DNS zone: an immutable, requester-scoped snapshot built from StackPlans.

`build_zone(plans)` turns the desired state into lookup tables; `linkd.dns.answer` reads
them. A change (a container starts, a stack goes down) builds a new Zone and the runtime
swaps it in; nothing here is ever updated in place except the answer cache, which is a
memo of this snapshot and dies with it.

Zone layout (domain `linkd.` by default), for a container `web-2` of service `web` in
stack `shop`, attached to network `front` with alias `www`:

    web  web-2  www                         short names (service, container, alias)
    web.front  web-2.front  www.front       NAME.NETWORK
    web.front.shop.linkd.  (and web-2, www) NAME.NETWORK.STACK.DOMAIN
    web.shop.linkd.        (and web-2, www) NAME.STACK.DOMAIN
    2.0.87.10.in-addr.arpa. PTR web-2.front.shop.linkd.

`shop.linkd.` and `front.shop.linkd.` exist as empty non-terminals (NODATA, not
NXDOMAIN, RFC 8020). A service name covers all its replicas.

Scoping: names live per network, and a network belongs to one stack (`front` of two
stacks are two networks). A requester is identified by its source address: the address
gives the container and so the networks it is attached to, in interface order (its
*view*). It sees only names of networks in its view, like Docker's embedded DNS and
aardvark-dns. A name present on several of its networks is answered from the first of
them (per record type) in interface order, as Docker's sandbox resolver does, so a
replica on two shared networks is not counted twice in the round robin. An unknown
source sees no names at all.

SRV names (`_PORT._PROTO.SERVICE`, and `_NAME._PROTO.SERVICE` for named ports) come
from the ports each ContainerPlan carries. Link aliases are requester-scoped extras
(`link_names`), looked up before the view's networks; network aliases come from the
plans (`plan_aliases`). Both can be passed explicitly to `build_zone`.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from linkd.model import PortSpec, Stack
from linkd.plan import StackPlan

Address = IPv4Address | IPv6Address
NetId = tuple[str, str]  # (stack, network key)
AliasKey = tuple[str, str, str]  # (stack, service, network key)

DEFAULT_DOMAIN = "linkd."
CACHE_LIMIT = 20_000  # entries; beyond it answers are built each time (random names)


@dataclass(frozen=True, slots=True)
class Record:
    """One container behind a name, and why it is there (for `explain`)."""

    container: str
    via: str  # "service name", "container name", "alias", "link alias", ...
    v4: IPv4Address | None
    v6: IPv6Address | None
    srv: SrvTarget | None = None  # set on SRV names, whose A/AAAA are the target's


@dataclass(frozen=True, slots=True)
class SrvTarget:
    """An SRV target: a container's port, and the addresses for the additional section."""

    port: int
    target: str  # CONTAINER.NETWORK.STACK.linkd.
    v4: IPv4Address | None
    v6: IPv6Address | None


@dataclass(frozen=True, slots=True)
class Entry:
    """A name on one network: its records and their addresses, deduplicated, sorted."""

    records: tuple[Record, ...]
    v4: tuple[IPv4Address, ...]
    v6: tuple[IPv6Address, ...]
    srv: tuple[SrvTarget, ...] = ()


@dataclass(frozen=True, slots=True)
class View:
    """What one requester sees: its networks in interface order."""

    id: int
    who: str  # "stack/container"
    networks: tuple[NetId, ...]


@dataclass(frozen=True, slots=True)
class Pointer:
    """A reverse name: the address, the network it is on, and the PTR target."""

    address: Address
    network: NetId
    target: str  # absolute, with trailing dot


@dataclass(frozen=True)
class Zone:
    domain: str  # lower-case, without trailing dot ("linkd")
    serial: int
    names: Mapping[NetId, Mapping[str, Entry]]  # names lower-case, no trailing dot
    reverse: Mapping[str, Pointer]  # "2.0.87.10.in-addr.arpa" -> Pointer
    views: Mapping[Address, View]
    subnets: tuple[IPv4Network | IPv6Network, ...]
    extra: Mapping[Address, Mapping[str, Entry]]
    # The answer cache (see linkd.dns): a memo of this snapshot, never part of its value.
    cache: dict[object, tuple[bytes, ...] | None] = field(
        default_factory=dict, compare=False, repr=False
    )
    counter: itertools.count[int] = field(
        default_factory=itertools.count, compare=False, repr=False
    )
    # Exact-bytes reply tables (see linkd.dns.reply_table), per (requester, max_size).
    replies: dict[object, dict[bytes, tuple[bytes, ...]]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def view_of(self, requester: Address) -> View | None:
        return self.views.get(requester)

    def in_zone(self, name: str) -> bool:
        return name == self.domain or name.endswith("." + self.domain)


def network_aliases(stack: Stack) -> dict[AliasKey, tuple[str, ...]]:
    """(stack, service, network) -> the service's aliases on that network."""
    return {
        (stack.name, s.name, a.network): a.aliases
        for s in stack.services
        for a in s.networks
        if a.aliases
    }


def plan_aliases(plans: Sequence[StackPlan]) -> dict[AliasKey, tuple[str, ...]]:
    """(stack, service, network) -> the service's aliases there, as the plans record them."""
    return {
        (plan.stack, c.service, i.network): i.aliases
        for plan in plans
        for c in plan.containers
        for i in c.interfaces
        if i.aliases
    }


def link_names(plans: Sequence[StackPlan]) -> dict[Address, dict[str, list[Address]]]:
    """Names only a linking container sees: each of its link aliases, from each of its
    addresses, resolving to the linked service's containers on the first network the two
    share (the same address the hosts file gives)."""
    extra: dict[Address, dict[str, list[Address]]] = {}
    for plan in plans:
        for c in plan.containers:
            if not c.links:
                continue
            mine = [i.network for i in c.interfaces]
            for alias, service in c.links:
                targets: list[Address] = []
                for peer in plan.of_service(service):
                    shared = [i for i in peer.interfaces if i.network in mine]
                    if shared:
                        first = min(shared, key=lambda i: mine.index(i.network))
                        targets.append(first.address)
                        if first.address6 is not None:
                            targets.append(first.address6)
                for iface in c.interfaces:
                    for requester in (iface.address, iface.address6):
                        if requester is not None:
                            extra.setdefault(requester, {})[alias] = targets
    return extra


def _srv_labels(ports: Iterable[PortSpec]) -> list[tuple[str, int]]:
    """`_PORT._PROTO` for every exposed port, and `_NAME._PROTO` where the port is named."""
    labels: list[tuple[str, int]] = []
    for spec in ports:
        for port in spec.numbers():
            labels.append((f"_{port}._{spec.protocol}", port))
        if spec.name is not None:
            labels.append((f"_{spec.name}._{spec.protocol}", spec.start))
    return labels


def make_entry(records: Iterable[Record]) -> Entry:
    recs = tuple(records)
    v4 = sorted({r.v4 for r in recs if r.v4 is not None})
    v6 = sorted({r.v6 for r in recs if r.v6 is not None})
    srv = sorted({r.srv for r in recs if r.srv is not None}, key=lambda t: (t.target, t.port))
    return Entry(recs, tuple(v4), tuple(v6), tuple(srv))


def build_zone(
    plans: Sequence[StackPlan],
    *,
    domain: str = DEFAULT_DOMAIN,
    aliases: Mapping[AliasKey, Sequence[str]] | None = None,
    extra: Mapping[Address, Mapping[str, Sequence[Address]]] | None = None,
) -> Zone:
    """The zone for these stacks; see the module docstring for the layout.

    Aliases and link names come from the plans unless given.
    """
    apex = domain.lower().rstrip(".")
    aliases = plan_aliases(plans) if aliases is None else aliases
    extra = link_names(plans) if extra is None else extra
    names: dict[NetId, dict[str, list[Record]]] = {}
    reverse: dict[str, Pointer] = {}
    memberships: dict[Address, list[tuple[str, tuple[NetId, ...]]]] = {}
    subnets: list[IPv4Network | IPv6Network] = []
    for plan in plans:
        for net in plan.networks:
            netid = (plan.stack, net.key)
            table = names.setdefault(netid, {})
            # Empty non-terminals: they exist, with no records.
            table.setdefault(f"{plan.stack}.{apex}".lower(), [])
            table.setdefault(f"{net.key}.{plan.stack}.{apex}".lower(), [])
            subnets.append(net.subnet)
            if net.subnet6 is not None:
                subnets.append(net.subnet6)
        for c in plan.containers:
            nets = tuple((plan.stack, i.network) for i in c.interfaces)
            for iface in c.interfaces:
                netid = (plan.stack, iface.network)
                table = names.setdefault(netid, {})
                bases = [(c.service, "service name"), (c.name, "container name")]
                bases += [
                    (a, "alias") for a in aliases.get((plan.stack, c.service, iface.network), ())
                ]
                for base, via in bases:
                    record = Record(c.name, via, iface.address, iface.address6)
                    for form in (
                        base,
                        f"{base}.{iface.network}",
                        f"{base}.{iface.network}.{plan.stack}.{apex}",
                        f"{base}.{plan.stack}.{apex}",
                    ):
                        table.setdefault(form.lower(), []).append(record)
                target = f"{c.name}.{iface.network}.{plan.stack}.{apex}."
                for label, port in _srv_labels(c.ports):
                    srv = SrvTarget(port, target, iface.address, iface.address6)
                    record = Record(c.name, f"port {port}", None, None, srv)
                    for form in (
                        f"{label}.{c.service}",
                        f"{label}.{c.service}.{iface.network}",
                        f"{label}.{c.service}.{iface.network}.{plan.stack}.{apex}",
                        f"{label}.{c.service}.{plan.stack}.{apex}",
                    ):
                        table.setdefault(form.lower(), []).append(record)
                for address in (iface.address, iface.address6):
                    if address is None:
                        continue
                    reverse[address.reverse_pointer.lower()] = Pointer(address, netid, target)
                    memberships.setdefault(address, []).append((f"{plan.stack}/{c.name}", nets))
    views = _views(memberships)
    frozen = {netid: {n: make_entry(rs) for n, rs in t.items()} for netid, t in names.items()}
    extras = {
        requester: {
            n.lower().rstrip("."): make_entry(
                Record(
                    n,
                    "link alias (seen by this container only)",
                    a if isinstance(a, IPv4Address) else None,
                    a if isinstance(a, IPv6Address) else None,
                )
                for a in addrs
            )
            for n, addrs in table.items()
        }
        for requester, table in (extra or {}).items()
    }
    return Zone(
        domain=apex,
        serial=_serial(apex, frozen, reverse, extras),
        names=frozen,
        reverse=reverse,
        views=views,
        subnets=tuple(subnets),
        extra=extras,
    )


def _views(
    memberships: Mapping[Address, list[tuple[str, tuple[NetId, ...]]]],
) -> dict[Address, View]:
    """Requester address -> view; requesters with the same networks share one view id."""
    ids: dict[tuple[NetId, ...], int] = {}
    views: dict[Address, View] = {}
    for address, owners in memberships.items():
        # One address for two containers (overlapping subnets of two stacks) should not
        # happen; if it does, the requester sees both sets of networks.
        networks = tuple(dict.fromkeys(n for _, nets in owners for n in nets))
        who = ", ".join(sorted({w for w, _ in owners}))
        view_id = ids.setdefault(networks, len(ids))
        views[address] = View(view_id, who, networks)
    return views


def _serial(
    apex: str,
    names: Mapping[NetId, Mapping[str, Entry]],
    reverse: Mapping[str, Pointer],
    extra: Mapping[Address, Mapping[str, Entry]],
) -> int:
    """A 32-bit serial that changes with the zone content (RFC 1982 arithmetic aside)."""
    digest = hashlib.sha256(apex.encode())
    for netid in sorted(names):
        for name in sorted(names[netid]):
            entry = names[netid][name]
            digest.update(f"{netid}|{name}|{entry.v4}|{entry.v6}\n".encode())
    for name in sorted(reverse):
        digest.update(f"{name}|{reverse[name].target}\n".encode())
    for requester in sorted(extra, key=str):
        for name in sorted(extra[requester]):
            entry = extra[requester][name]
            digest.update(f"{requester}|{name}|{entry.v4}|{entry.v6}\n".encode())
    return int.from_bytes(digest.digest()[:4], "big") or 1
