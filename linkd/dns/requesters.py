"""Who asks the DNS server, and the names only one requester sees.

A requester is identified by its source address: the address gives the container, and
so its view of the zone (`linkd.dns.snapshot.View`). A container with no network but lo
has no address; its resolver socket is served as `lo_requester`, a key made up for it
(`linkd.dns.zone.requester_of` gives the address any container is served as).

Some names are requester-scoped (`Zone.extra`, looked up before the view's networks):
- link aliases: a container's `links:` aliases, seen by that container only, resolving
  to the linked service's containers on the first network the two share (the same
  address the hosts file gives); targets not healthy yet are held, as under the
  service's name;
- a lo-only container's own names (container, service, hostname), which resolve to
  loopback: it can reach no one else.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from ipaddress import IPv4Address, IPv6Address, ip_address

from linkd.core.plan import ContainerPlan, StackPlan
from linkd.dns.snapshot import Address, Entry, Record, make_entry

LOOPBACK: tuple[Address, ...] = (IPv4Address("127.0.0.1"), IPv6Address("::1"))


def lo_requester(stack: str, container: str) -> IPv6Address:
    """Who a container with no network but lo is, to the DNS server.

    It has no address of its own, so its resolver socket is served with this one as the
    requester: an fd00::/8 address derived from the names, configured nowhere, only a
    key into the zone that cannot collide with a container's real address.
    """
    digest = hashlib.sha256(f"{stack}/{container}".encode()).digest()
    return IPv6Address(b"\xfd" + digest[:15])


def addresses_of(c: ContainerPlan) -> list[Address]:
    """Every address of a container: each is a requester the server may hear it as."""
    return [a for i in c.interfaces for a in (i.address, i.address6) if a is not None]


def link_names(plans: Sequence[StackPlan]) -> dict[Address, dict[str, list[Address]]]:
    """Names only a linking container sees: each of its link aliases, from each of its
    addresses, resolving to the linked service's containers on the first network the two
    share (the same address the hosts file gives). The service's containers are those of
    every plan of the stack: a stack spanning a cluster's nodes has its containers on
    other nodes in a plan of its name beside its own (linkd.core.overlay_peers)."""
    extra: dict[Address, dict[str, list[Address]]] = {}
    linkers = [(plan.stack, c) for plan in plans for c in plan.containers if c.links]
    if not linkers:
        return extra
    replicas: dict[tuple[str, str], list[ContainerPlan]] = {}
    for plan in plans:
        for c in plan.containers:
            replicas.setdefault((plan.stack, c.service), []).append(c)
    for stack, c in linkers:
        mine = [i.network for i in c.interfaces]
        for alias, service in c.links:
            targets: list[Address] = []
            for peer in sorted(replicas.get((stack, service), []), key=lambda p: p.replica):
                shared = [i for i in peer.interfaces if i.network in mine]
                if shared:
                    first = min(shared, key=lambda i: mine.index(i.network))
                    targets.append(first.address)
                    if first.address6 is not None:
                        targets.append(first.address6)
            if not targets:
                continue  # the linked service has no container running: NXDOMAIN
            for iface in c.interfaces:
                for requester in (iface.address, iface.address6):
                    if requester is not None:
                        extra.setdefault(requester, {})[alias] = targets
    return extra


def loopback_names(plans: Sequence[StackPlan]) -> dict[Address, dict[str, list[Address]]]:
    """A container with only lo resolves its own names (container, service, hostname) to
    loopback, and nothing else of linkd's: it can reach no one."""
    return {
        lo_requester(plan.stack, c.name): {
            name: list(LOOPBACK) for name in dict.fromkeys((c.name, c.service, c.hostname))
        }
        for plan in plans
        for c in plan.containers
        if not c.interfaces
    }


VIA_LINK = "link alias (seen by this container only)"
_VIA_LOOPBACK = "own name of a container with no network (loopback)"
_VIA_EXTRA_HOSTS = "extra_hosts of this container"


def scoped_entries(
    plans: Sequence[StackPlan], pending: frozenset[tuple[str, str]] = frozenset()
) -> dict[Address, dict[str, Entry]]:
    """Requester-scoped names: link aliases (their not-healthy targets held), and
    lo-only containers' own names."""
    extras = extra_entries(link_names(plans), VIA_LINK)
    if pending:
        sick = {
            a
            for plan in plans
            for c in plan.containers
            if (plan.stack, c.name) in pending
            for a in addresses_of(c)
        }
        for table in extras.values():
            for name, entry in table.items():
                if any((r.v4 or r.v6) in sick for r in entry.records):
                    table[name] = make_entry(
                        [r for r in entry.records if (r.v4 or r.v6) not in sick],
                        [r for r in entry.records if (r.v4 or r.v6) in sick],
                    )
    for requester, names in extra_entries(loopback_names(plans), _VIA_LOOPBACK).items():
        extras.setdefault(requester, {}).update(names)
    for requester, names in extra_entries(added_host_names(plans), _VIA_EXTRA_HOSTS).items():
        extras.setdefault(requester, {}).update(names)  # its own extra_hosts win
    return extras


def added_host_names(plans: Sequence[StackPlan]) -> dict[Address, dict[str, list[Address]]]:
    """A container's `extra_hosts`, answered to it alone, as its hosts file has them."""
    extra: dict[Address, dict[str, list[Address]]] = {}
    for plan in plans:
        for c in plan.containers:
            if not c.added_hosts:
                continue
            table: dict[str, list[Address]] = {}
            for host, address in c.added_hosts:
                table.setdefault(host.lower(), []).append(ip_address(address))
            for requester in addresses_of(c):
                extra.setdefault(requester, {}).update(table)
    return extra


def extra_entries(
    extra: Mapping[Address, Mapping[str, Sequence[Address]]], via: str
) -> dict[Address, dict[str, Entry]]:
    """requester -> name -> addresses, as zone entries whose records say `via`."""
    return {
        requester: {
            n.lower().rstrip("."): make_entry(
                Record(
                    n,
                    via,
                    a if isinstance(a, IPv4Address) else None,
                    a if isinstance(a, IPv6Address) else None,
                )
                for a in addrs
            )
            for n, addrs in table.items()
        }
        for requester, table in extra.items()
    }
