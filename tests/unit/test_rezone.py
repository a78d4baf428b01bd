"""linkd.dns.zone.rezone: changing a zone by the containers that came and went serves
exactly what a full build of the new plans serves."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Network

from hypothesis import given, settings
from hypothesis import strategies as st

from linkd.core.model import Attachment, Link, Network, PortSpec, Service, Stack
from linkd.core.plan import StackPlan
from linkd.dns.answers import Answered, answer
from linkd.dns.snapshot import Zone
from linkd.dns.zone import build_zone, rezone
from tests.planning import realize
from tests.unit.test_dns import addr, query_bytes, shop

CMD = ("sleep", "60")
SUBNETS = {"front": IPv4Network("10.87.0.0/24"), "back": IPv4Network("10.87.1.0/24")}


def rich() -> Stack:
    """Replicas, two networks, aliases shared by two services, links and SRV ports."""
    return Stack(
        name="shop",
        services=(
            Service("db", command=CMD, networks=(Attachment("back", aliases=("store",)),),
                    expose=(PortSpec(5432, 5432),)),
            Service("cache", command=CMD, networks=(Attachment("back", aliases=("store",)),)),
            Service(
                "web",
                command=CMD,
                replicas=3,
                networks=(Attachment("front", aliases=("www",)), Attachment("back")),
                links=(Link("db", "database"),),
                expose=(PortSpec(8080, 8080, name="http"),),
            ),
            Service("client", command=CMD, networks=(Attachment("front"),),
                    links=(Link("web", "site"),)),
        ),
        networks=(Network("front"), Network("back")),
    )


PLAN = realize(rich(), SUBNETS)
NAMES = [c.name for c in PLAN.containers]


def content(zone: Zone) -> tuple[object, ...]:
    """What a zone serves, without its serial, view ids or record order."""
    names = {
        netid: {
            name: (e.v4, e.v6, e.srv, sorted(map(repr, e.records)))
            for name, e in table.items()
        }
        for netid, table in zone.names.items()
    }
    views = {a: (v.who, v.networks) for a, v in zone.views.items()}
    extra = {a: {n: (e.v4, e.v6) for n, e in t.items()} for a, t in zone.extra.items()}
    return names, dict(zone.reverse), views, extra, zone.subnets, zone.domain


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sets(st.sampled_from(NAMES)), min_size=1, max_size=6))
def test_a_sequence_of_changes_serves_what_a_full_build_serves(
    gone_sets: list[set[str]],
) -> None:
    before: StackPlan = PLAN
    zone = build_zone([before])
    for gone in gone_sets:
        after = PLAN.without(gone)
        changed = rezone(zone, [before], [after])
        assert content(changed) == content(build_zone([after]))
        if changed is not zone:
            assert changed.serial != zone.serial
        zone, before = changed, after


def test_one_container_going_touches_only_its_network_tables() -> None:
    zone = build_zone([PLAN])
    after = PLAN.without(["db-1"])
    changed = rezone(zone, [PLAN], [after])
    assert changed.names[("shop", "front")] is zone.names[("shop", "front")]
    assert "db" not in changed.names[("shop", "back")]
    assert "store" in changed.names[("shop", "back")]  # cache still carries the alias
    assert changed.serial == zone.serial + 1


def test_no_change_is_the_same_zone() -> None:
    zone = build_zone([PLAN])
    assert rezone(zone, [PLAN], [PLAN]) is zone


def test_a_changed_zone_starts_with_an_empty_answer_cache() -> None:
    plan, zone = realize(shop(), SUBNETS), None
    zone = build_zone([plan])
    client = addr(plan, "client-1", "front")
    first = answer(zone, query_bytes("web"), client)
    assert isinstance(first, Answered) and zone.cache and zone.replies
    changed = rezone(zone, [plan], [plan.without(["web-1"])])
    assert not changed.cache and not changed.replies
    reply = answer(changed, query_bytes("web"), client)
    assert isinstance(reply, Answered)
    assert reply.data != first.data  # one replica fewer, never the cached two


def test_a_link_alias_to_a_service_with_nothing_running_is_nxdomain() -> None:
    from dnslib import RCODE, DNSRecord

    client = PLAN.container("client-1").interfaces[0].address
    zone = build_zone([PLAN.without(["web-1", "web-2", "web-3"])])
    reply = answer(zone, query_bytes("site"), client)
    assert isinstance(reply, Answered)
    assert DNSRecord.parse(reply.data).header.rcode == RCODE.NXDOMAIN
    reply = answer(build_zone([PLAN]), query_bytes("site"), client)
    assert isinstance(reply, Answered) and len(DNSRecord.parse(reply.data).rr) == 3


def _joiner(name: str, replicas: int) -> StackPlan:
    """Another stack's containers on shop's `back` network (joined: owner shop/back)."""
    back = next(n for n in PLAN.networks if n.key == "back")
    stack = Stack(name=name, services=(
        Service("svc", command=CMD, replicas=replicas,
                networks=(Attachment("shared", aliases=(f"{name}-alias",)),),
                expose=(PortSpec(80, 80),)),), networks=(Network("shared", external=True),))
    offset = 100 + 10 * int(name[-1])
    plan = realize(stack, {}, joined={"shared": replace(back, key="shared",
                                                        owner=("shop", "back"))})
    return replace(plan, containers=tuple(
        replace(c, interfaces=tuple(replace(i, address=i.address + offset)
                                    for i in c.interfaces))
        for c in plan.containers))


JOINERS = [_joiner(f"ext{i}", i + 1) for i in range(3)]


HEALTH = [("shop", n) for n in NAMES] + [(j.stack, c.name) for j in JOINERS
                                         for c in j.containers]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sets(st.integers(0, 2)), st.sets(st.sampled_from(NAMES)),
                          st.frozensets(st.sampled_from(HEALTH))),
                min_size=1, max_size=6))
def test_stacks_on_a_shared_network_come_and_go_as_a_full_build_serves(
        steps: list[tuple[set[int], set[str], frozenset[tuple[str, str]]]]) -> None:
    """Other stacks' plans are the same objects from step to step (as a node's memoized
    neighbours are), while their containers' health flips."""
    before: list[StackPlan] = [PLAN]
    zone = build_zone(before)
    for present, gone, pending in steps:
        after = [PLAN.without(gone), *(JOINERS[i] for i in sorted(present))]
        changed = rezone(zone, before, after, pending)
        assert content(changed) == content(build_zone(after, pending=pending))
        assert changed.pending == pending
        zone, before = changed, after
