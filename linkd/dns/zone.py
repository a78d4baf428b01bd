"""The DNS zone: a requester-scoped snapshot (`linkd.dns.snapshot.Zone`) built from StackPlans.

`build_zone(plans)` turns the desired state into lookup tables; `linkd.dns.answers.answer`
reads them. A change (a container starts, a stack goes down) builds a new Zone, or
`rezone` the few names that changed, and the runtime swaps it in.

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
stacks are two networks), unless another stack joins it (`external: true`): then both
stacks' containers on it share its names, under the network's one id, the owner's
(`linkd.core.shared_networks.network_id`), and each stack's server is given the other
stack's containers there (`neighbours`). A requester is identified by its source
address: the address gives the container and so the networks it is attached to, in
interface order (its *view*). It sees only names of networks in its view, like Docker's
embedded DNS and aardvark-dns. A name present on several of its networks is answered
from the first of them (per record type) in interface order, as Docker's sandbox
resolver does, so a replica on two shared networks is not counted twice in the round
robin. An unknown source sees no names at all.

SRV names (`_PORT._PROTO.SERVICE`, and `_NAME._PROTO.SERVICE` for named ports) come
from the ports each ContainerPlan carries.

Health: `pending` (stack, container) pairs are containers of a service with a
healthcheck that are not healthy (yet). Their records under the service name, its
aliases, its SRV names and link aliases to it are *held*: kept in `Entry.held`, not
answered. A name whose every record is held answers SERVFAIL (see `linkd.dns.resolve`),
so a client retries instead of giving up. Container names (`web-2`) are never held, and
`_all.NAME` (for the service name and each alias) lists every instance, healthy or
not, for bootstrapping a cluster. Compose service names cannot start with `_`, nor
can SRV names be two labels, so `_all.` never collides. Link aliases are requester-scoped
extras (`linkd.dns.requesters`), looked up before the view's networks; network aliases
come from the plans (`plan_aliases`). Both can be passed explicitly to `build_zone`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from ipaddress import IPv4Network, IPv6Network

from linkd.core import health
from linkd.core.model import PortSpec, Stack
from linkd.core.plan import ContainerPlan, StackPlan
from linkd.core.shared_networks import network_id
from linkd.core.state import ContainerState, StackState
from linkd.dns.requesters import (
    VIA_LINK,
    addresses_of,
    extra_entries,
    lo_requester,
    scoped_entries,
)
from linkd.dns.snapshot import (
    DEFAULT_DOMAIN,
    Address,
    AliasKey,
    Entry,
    NetId,
    Pointer,
    Record,
    SrvTarget,
    View,
    Zone,
    make_entry,
)


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


def requester_of(stack: str, c: ContainerPlan) -> Address:
    """The address the DNS server answers a container's queries as (its first one)."""
    return c.interfaces[0].address if c.interfaces else lo_requester(stack, c.name)


def forwards_for(c: ContainerPlan) -> bool:
    """Whether names outside the zone are forwarded for this container: only with a
    route out (a non-internal network), else they are REFUSED (Docker, too, does not
    forward for internal networks)."""
    return any(i.default_route for i in c.interfaces)


def _srv_labels(ports: Iterable[PortSpec]) -> list[tuple[str, int]]:
    """`_PORT._PROTO` for every exposed port, and `_NAME._PROTO` where the port is named."""
    labels: list[tuple[str, int]] = []
    for spec in ports:
        for port in spec.numbers():
            labels.append((f"_{port}._{spec.protocol}", port))
        if spec.name is not None:
            labels.append((f"_{spec.name}._{spec.protocol}", spec.start))
    return labels


def build_zone(
    plans: Sequence[StackPlan],
    *,
    domain: str = DEFAULT_DOMAIN,
    aliases: Mapping[AliasKey, Sequence[str]] | None = None,
    extra: Mapping[Address, Mapping[str, Sequence[Address]]] | None = None,
    pending: frozenset[tuple[str, str]] = frozenset(),
) -> Zone:
    """The zone for these stacks; see the module docstring for the layout.

    Aliases and link names come from the plans unless given. `pending`: (stack,
    container) pairs not healthy yet, held back from their service's names.
    """
    apex = domain.lower().rstrip(".")
    aliases = plan_aliases(plans) if aliases is None else aliases
    names: dict[NetId, dict[str, list[Record]]] = {}
    held: dict[NetId, dict[str, list[Record]]] = {}
    reverse: dict[str, Pointer] = {}
    memberships: dict[Address, list[tuple[str, tuple[NetId, ...]]]] = {}
    ids = _shared_ids(plans)
    for plan in plans:
        for net in plan.networks:
            table = names.setdefault(_netid(ids, plan.stack, net.key), {})
            for name in _empty_non_terminals((plan.stack, net.key), apex):
                table.setdefault(name, [])
        for c in plan.containers:
            sick = (plan.stack, c.name) in pending
            for netid, name, record, hold in _names_of(plan.stack, c, apex, aliases, sick,
                                                       ids):
                names.setdefault(netid, {}).setdefault(name, [])
                (held if hold else names).setdefault(netid, {}).setdefault(name, []).append(
                    record
                )
            reverse.update(_pointers_of(plan.stack, c, apex, ids))
            who, nets = _membership_of(plan.stack, c, ids)
            for address in addresses_of(c):
                memberships.setdefault(address, []).append((who, nets))
    frozen = {
        netid: {n: make_entry(rs, held.get(netid, {}).get(n, ())) for n, rs in t.items()}
        for netid, t in names.items()
    }
    extras = scoped_entries(plans, pending) if extra is None else extra_entries(extra, VIA_LINK)
    return Zone(
        domain=apex,
        serial=_serial(apex, frozen, reverse, extras),
        names=frozen,
        reverse=reverse,
        views=_views(memberships),
        subnets=_subnets(plans),
        extra=extras,
        pending=pending,
    )


def rezone(
    zone: Zone,
    before: Sequence[StackPlan],
    after: Sequence[StackPlan],
    pending: frozenset[tuple[str, str]] = frozenset(),
) -> Zone:
    """`zone` (built from `before`) changed to serve `after`, touching only the names of
    containers that came or went: the cost of a container starting or stopping does not
    grow with the size of the zone (a full `build_zone` of 500 containers takes ~20 ms,
    and a peer would wait that long for a new name). A container whose health changed
    (in `pending` now and not in `zone.pending`, or the other way) goes and comes back.

    The result serves what `build_zone(after)` serves; its serial is the old one plus
    one (RFC 1982: it increases on every change). Networks must be the same in both;
    otherwise, or when most containers change, it is a full build.
    """
    apex = zone.domain
    shared, shared_before = _shared_ids(after), _shared_ids(before)
    # Stacks may come and go (another stack's containers on a shared network, another
    # node's), as long as every network they are on is one the zone has already.
    pairs_before, pairs_after = _network_pairs(before), _network_pairs(after)
    if (set(_subnets(before)) != set(_subnets(after))
            or {_netid(shared_before, *k) for k in pairs_before}
            != {_netid(shared, *k) for k in pairs_after}
            or any(_netid(shared_before, *k) != _netid(shared, *k)
                   for k in pairs_before & pairs_after)):
        return build_zone(after, domain=apex, pending=pending)
    # A plan object in both is unchanged (callers keep the plans of stacks that did not
    # change): only its containers whose health flipped are looked at.
    kept = {id(p) for p in before} & {id(p) for p in after}
    old = {(p.stack, c.name): (p.stack, c)
           for p in before if id(p) not in kept for c in p.containers}
    new = {(p.stack, c.name): (p.stack, c)
           for p in after if id(p) not in kept for c in p.containers}
    flipped = zone.pending ^ pending
    went = [
        v for k, v in old.items()
        if k not in new or (new[k][1] is not v[1] and new[k][1] != v[1]) or k in flipped
    ]
    came = [
        v for k, v in new.items()
        if k not in old or (old[k][1] is not v[1] and old[k][1] != v[1]) or k in flipped
    ]
    if flipped:
        touched = {stack for stack, _ in flipped}
        for p in after:
            if id(p) in kept and p.stack in touched:
                for c in p.containers:
                    if (p.stack, c.name) in flipped:
                        went.append((p.stack, c))
                        came.append((p.stack, c))
    if not went and not came and pairs_before == pairs_after:
        return zone if zone.pending == pending else replace(zone, pending=pending)
    if len(went) + len(came) > max(8, sum(len(p.containers) for p in after) // 2):
        return build_zone(after, domain=apex, pending=pending)
    copies: dict[NetId, dict[str, Entry]] = {}  # copy-on-write, per network touched

    def table(netid: NetId) -> dict[str, Entry]:
        t = copies.get(netid)
        if t is None:
            t = copies[netid] = dict(zone.names.get(netid, {}))
        return t

    reverse = dict(zone.reverse)
    views = dict(zone.views)
    empties = _empties(pairs_after, apex, shared)
    for pair in pairs_after - pairs_before:  # a stack's names with no records
        t = table(_netid(shared, *pair))
        for name in _empty_non_terminals(pair, apex):
            t.setdefault(name, make_entry([], []))
    for stack, c in went:  # as `before` named them
        mine = set(addresses_of(c))  # another stack's container may have its name
        for netid, name, _, _ in _names_of(stack, c, apex, None, False, shared_before):
            t = table(netid)
            entry = t.get(name)
            if entry is None:
                continue
            rest = [r for r in entry.records if not _of(r, c, mine)]
            held = [r for r in entry.held if not _of(r, c, mine)]
            if rest or held or name in empties.get(netid, ()):
                t[name] = make_entry(rest, held)
            else:
                del t[name]
        for key, pointer in _pointers_of(stack, c, apex, shared_before).items():
            if reverse.get(key) == pointer:
                del reverse[key]
        for address in addresses_of(c):
            views.pop(address, None)
    for pair in pairs_before - pairs_after:  # a stack gone: its empty names too
        netid = _netid(shared_before, *pair)
        t = table(netid)
        for name in _empty_non_terminals(pair, apex):
            entry = t.get(name)
            if entry is not None and not entry.records and not entry.held and (
                    name not in empties.get(netid, ())):
                del t[name]
    ids = {v.networks: v.id for v in views.values()}
    for stack, c in came:
        added: dict[tuple[NetId, str], tuple[list[Record], list[Record]]] = {}
        sick = (stack, c.name) in pending
        for netid, name, record, hold in _names_of(stack, c, apex, None, sick, shared):
            added.setdefault((netid, name), ([], []))[hold].append(record)
        for (netid, name), (records, held) in added.items():
            t = table(netid)
            entry = t.get(name)
            if entry is not None:
                records, held = [*entry.records, *records], [*entry.held, *held]
            t[name] = make_entry(records, held)
        reverse.update(_pointers_of(stack, c, apex, shared))
        who, nets = _membership_of(stack, c, shared)
        view = View(ids.setdefault(nets, max(ids.values(), default=-1) + 1), who, nets)
        for address in addresses_of(c):
            views[address] = view
    return Zone(
        domain=apex,
        serial=(zone.serial + 1) & 0xFFFFFFFF or 1,
        names={**zone.names, **copies},
        reverse=reverse,
        views=views,
        subnets=_subnets(after),
        extra=scoped_entries(after, pending),
        pending=pending,
    )


def _network_ids(plan: StackPlan) -> list[NetId]:
    return [network_id(plan.stack, net) for net in plan.networks]


def _shared_ids(plans: Sequence[StackPlan]) -> dict[NetId, NetId]:
    """(stack, key) -> the network's id, for the networks a stack joined; the others'
    ids are their (stack, key)."""
    return {(p.stack, n.key): n.owner for p in plans for n in p.networks if n.owner}


def _netid(ids: Mapping[NetId, NetId], stack: str, network: str) -> NetId:
    return ids.get((stack, network), (stack, network))


def _of(record: Record, c: ContainerPlan, addresses: set[Address]) -> bool:
    """Whether `record` is container `c`'s (by name and address: two stacks on a shared
    network may each have a container of that name)."""
    if record.container != c.name:
        return False
    target = record.srv if record.srv is not None else record
    return target.v4 in addresses or target.v6 in addresses


def _network_pairs(plans: Sequence[StackPlan]) -> set[NetId]:
    """(stack, key) of every network of every plan, as each stack names it."""
    return {(p.stack, n.key) for p in plans for n in p.networks}


def _empties(pairs: set[NetId], apex: str, shared: Mapping[NetId, NetId]
             ) -> dict[NetId, set[str]]:
    """By network, the names that exist there without records for the stacks `pairs`."""
    found: dict[NetId, set[str]] = {}
    for pair in pairs:
        found.setdefault(_netid(shared, *pair), set()).update(_empty_non_terminals(pair, apex))
    return found


def _subnets(plans: Sequence[StackPlan]) -> tuple[IPv4Network | IPv6Network, ...]:
    subnets: list[IPv4Network | IPv6Network] = []
    for plan in plans:
        for net in plan.networks:
            subnets.append(net.subnet)
            if net.subnet6 is not None:
                subnets.append(net.subnet6)
    return tuple(subnets)


def _empty_non_terminals(netid: NetId, apex: str) -> tuple[str, str]:
    """`STACK.linkd` and `NETWORK.STACK.linkd`: names that exist with no records."""
    stack, network = netid
    return f"{stack}.{apex}".lower(), f"{network}.{stack}.{apex}".lower()


def _names_of(
    stack: str,
    c: ContainerPlan,
    apex: str,
    aliases: Mapping[AliasKey, Sequence[str]] | None,
    sick: bool,
    ids: Mapping[NetId, NetId],
) -> Iterator[tuple[NetId, str, Record, bool]]:
    """Every (network, name, record, held) one container puts in the zone; `sick`: the
    container is not healthy yet, so its records under shared names are held.

    Aliases come from the container's interfaces unless `aliases` says otherwise."""
    for iface in c.interfaces:
        netid = _netid(ids, stack, iface.network)
        key = (stack, c.service, iface.network)
        mine = iface.aliases if aliases is None else aliases.get(key, ())
        bases = [(c.service, "service name", sick), (c.name, "container name", False)]
        bases += [(a, "alias", sick) for a in mine]
        bases += [(f"_all.{c.service}", "service name, all instances", False)]
        bases += [(f"_all.{a}", "alias, all instances", False) for a in mine]
        for base, via, hold in bases:
            record = Record(c.name, via, iface.address, iface.address6)
            for form in (
                base,
                f"{base}.{iface.network}",
                f"{base}.{iface.network}.{stack}.{apex}",
                f"{base}.{stack}.{apex}",
            ):
                yield netid, form.lower(), record, hold
        target = f"{c.name}.{iface.network}.{stack}.{apex}."
        for label, port in _srv_labels(c.ports):
            srv = SrvTarget(port, target, iface.address, iface.address6)
            record = Record(c.name, f"port {port}", None, None, srv)
            for form in (
                f"{label}.{c.service}",
                f"{label}.{c.service}.{iface.network}",
                f"{label}.{c.service}.{iface.network}.{stack}.{apex}",
                f"{label}.{c.service}.{stack}.{apex}",
            ):
                yield netid, form.lower(), record, sick


def _pointers_of(
    stack: str, c: ContainerPlan, apex: str, ids: Mapping[NetId, NetId]
) -> dict[str, Pointer]:
    pointers: dict[str, Pointer] = {}
    for iface in c.interfaces:
        target = f"{c.name}.{iface.network}.{stack}.{apex}."
        for address in (iface.address, iface.address6):
            if address is not None:
                pointers[address.reverse_pointer.lower()] = Pointer(
                    address, _netid(ids, stack, iface.network), target
                )
    return pointers


def _membership_of(
    stack: str, c: ContainerPlan, ids: Mapping[NetId, NetId]
) -> tuple[str, tuple[NetId, ...]]:
    return f"{stack}/{c.name}", tuple(_netid(ids, stack, i.network) for i in c.interfaces)


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


def held_back(plan: StackPlan, states: Mapping[str, ContainerState]) -> frozenset[tuple[str, str]]:
    """The containers of `plan` with a healthcheck that are not running and healthy: the
    zone leaves them out of their service's names (`build_zone`'s `pending`)."""
    statuses = {n: s.health if s.status == "running" else None for n, s in states.items()}
    checks = ((c.name, c.healthcheck) for c in plan.containers)
    return frozenset((plan.stack, n) for n in health.pending(checks, statuses))


def served_zone(state: StackState) -> Zone:
    """The zone a stack's resolver serves, rebuilt from its state: without the containers
    that stopped for good, and with those not (yet) healthy held back, as the supervisor
    keeps it (`linkd dns` of a stack no daemon runs)."""
    gone = [c.name for c in state.containers if c.status in ("exited", "failed")]
    served = state.plan.without(gone)
    states = {c.name: c for c in state.containers}
    return build_zone([served], domain=served.dns.domain, pending=held_back(served, states))
