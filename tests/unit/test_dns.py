"""linkd.dns.answers: the zone built from plans and the answers it gives, golden and pure."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, ip_address

import pytest
from dnslib import EDNS0, QTYPE, RCODE, DNSRecord

from linkd.core.model import Attachment, Network, Service, Stack
from linkd.core.plan import StackPlan
from linkd.dns.answers import Answered, Drop, Forward, Reply, answer, reachable_names
from linkd.dns.explain import explain
from linkd.dns.snapshot import Zone
from linkd.dns.zone import build_zone, network_aliases
from tests.planning import realize

CMD = ("sleep", "60")
SUBNETS = {"front": IPv4Network("10.87.0.0/24"), "back": IPv4Network("10.87.1.0/24")}


def shop(web_replicas: int = 2, *, ipv6: bool = False) -> Stack:
    return Stack(
        name="shop",
        services=(
            Service("db", command=CMD, networks=(Attachment("back", aliases=("database",)),)),
            Service(
                "web",
                command=CMD,
                replicas=web_replicas,
                networks=(Attachment("front", aliases=("www",)), Attachment("back")),
            ),
            Service("client", command=CMD, networks=(Attachment("front"),)),
        ),
        networks=(Network("front", enable_ipv6=ipv6), Network("back", internal=True)),
    )


def make(stack: Stack, subnets: dict[str, IPv4Network] | None = None) -> tuple[StackPlan, Zone]:
    plan = realize(stack, subnets or SUBNETS)
    return plan, build_zone([plan], aliases=network_aliases(stack))


def addr(plan: StackPlan, container: str, network: str) -> IPv4Address:
    return next(i.address for i in plan.container(container).interfaces if i.network == network)


def ask(
    zone: Zone,
    name: str,
    requester: IPv4Address | IPv6Address,
    qtype: str = "A",
    *,
    seed: int | None = 0,
    edns: int | None = None,
    max_size: int | None = 1232,
) -> DNSRecord:
    reply = ask_raw(zone, name, requester, qtype, seed=seed, edns=edns, max_size=max_size)
    assert isinstance(reply, Answered), reply
    return DNSRecord.parse(reply.data)


def query_bytes(name: str, qtype: str = "A", edns: int | None = None, qid: int = 4242) -> bytes:
    q = DNSRecord.question(name, qtype)
    q.header.id = qid
    if edns is not None:
        q.add_ar(EDNS0(udp_len=edns))
    data: bytes = q.pack()
    return data


def ask_raw(
    zone: Zone,
    name: str,
    requester: IPv4Address | IPv6Address,
    qtype: str = "A",
    *,
    seed: int | None = 0,
    edns: int | None = None,
    max_size: int | None = 1232,
) -> Reply:
    return answer(
        zone, query_bytes(name, qtype, edns), requester, shuffle_seed=seed, max_size=max_size
    )


def addresses(reply: DNSRecord) -> list[str]:
    return [str(rr.rdata) for rr in reply.rr]


@pytest.fixture
def shop_zone() -> tuple[StackPlan, Zone]:
    return make(shop())


# -- names ---------------------------------------------------------------------------------


def test_service_name_gives_all_replicas_authoritatively(shop_zone: tuple[StackPlan, Zone]) -> None:
    plan, zone = shop_zone
    client = addr(plan, "client-1", "front")
    reply = ask(zone, "web", client)
    assert reply.header.rcode == RCODE.NOERROR and reply.header.aa == 1
    assert sorted(addresses(reply)) == sorted(str(addr(plan, f"web-{i}", "front")) for i in (1, 2))
    assert all(rr.ttl == 1 for rr in reply.rr)


@pytest.mark.parametrize(
    "name",
    ["web-2", "web-2.front", "web-2.front.shop.linkd.", "web-2.shop.linkd", "WEB-2.Front"],
)
def test_container_name_forms(shop_zone: tuple[StackPlan, Zone], name: str) -> None:
    plan, zone = shop_zone
    reply = ask(zone, name, addr(plan, "client-1", "front"))
    assert addresses(reply) == [str(addr(plan, "web-2", "front"))]
    assert str(reply.q.qname) == name.rstrip(".") + "."  # the question echoed as sent


def test_alias_is_per_network(shop_zone: tuple[StackPlan, Zone]) -> None:
    plan, zone = shop_zone
    assert addresses(ask(zone, "database", addr(plan, "web-1", "back"))) == [
        str(addr(plan, "db-1", "back"))
    ]
    assert len(addresses(ask(zone, "www.front", addr(plan, "client-1", "front")))) == 2


def test_first_shared_network_answers(shop_zone: tuple[StackPlan, Zone]) -> None:
    plan, zone = shop_zone
    # web-1 is on front (eth0) and back: web-2 is answered with its front address only.
    reply = ask(zone, "web-2", addr(plan, "web-1", "back"))
    assert addresses(reply) == [str(addr(plan, "web-2", "front"))]


def test_scoping_hides_other_networks_without_forwarding(
    shop_zone: tuple[StackPlan, Zone],
) -> None:
    plan, zone = shop_zone
    client = addr(plan, "client-1", "front")
    for name in ("db", "database", "db.shop.linkd.", "db-1.back.shop.linkd"):
        reply = ask(zone, name, client)
        assert reply.header.rcode == RCODE.NXDOMAIN, name
        assert reply.auth[0].rtype == QTYPE.SOA
    # NAME.NETWORK outside the zone is an ordinary multi-label name, as in Docker.
    assert isinstance(ask_raw(zone, "db.back", client), Forward)


def test_unknown_requester_sees_nothing_but_is_forwarded(
    shop_zone: tuple[StackPlan, Zone],
) -> None:
    _, zone = shop_zone
    stranger = IPv4Address("192.0.2.9")
    assert ask(zone, "web", stranger).header.rcode == RCODE.NXDOMAIN
    assert isinstance(ask_raw(zone, "example.com", stranger), Forward)


def test_stacks_are_separate() -> None:
    one = realize(shop(), SUBNETS)
    other_subnets = {"front": IPv4Network("10.88.0.0/24"), "back": IPv4Network("10.88.1.0/24")}
    other = realize(Stack("shop2", shop().services, shop().networks), other_subnets)
    zone = build_zone([one, other])
    reply = ask(zone, "web-1.shop2.linkd", addr(one, "client-1", "front"))
    assert reply.header.rcode == RCODE.NXDOMAIN
    reply = ask(zone, "web-1", addr(other, "client-1", "front"))
    assert addresses(reply) == [str(addr(other, "web-1", "front"))]


def test_nodata_for_missing_type(shop_zone: tuple[StackPlan, Zone]) -> None:
    plan, zone = shop_zone
    client = addr(plan, "client-1", "front")
    for qtype in ("AAAA", "MX", "TXT"):
        reply = ask(zone, "web", client, qtype)
        assert reply.header.rcode == RCODE.NOERROR and reply.rr == [], qtype
        assert [rr.rtype for rr in reply.auth] == [QTYPE.SOA]
    # empty non-terminals exist too (RFC 8020)
    reply = ask(zone, "front.shop.linkd", client)
    assert reply.header.rcode == RCODE.NOERROR and reply.rr == []


def test_aaaa_on_ipv6_network() -> None:
    plan, zone = make(shop(ipv6=True))
    client = addr(plan, "client-1", "front")
    reply = ask(zone, "web-1", client, "AAAA")
    six = next(i.address6 for i in plan.container("web-1").interfaces if i.network == "front")
    assert addresses(reply) == [str(six)]
    assert six is not None
    reply = ask(zone, six.reverse_pointer + ".", client, "PTR")
    assert addresses(reply) == ["web-1.front.shop.linkd."]
    # the requester may ask from its IPv6 address too
    me6 = plan.container("client-1").interfaces[0].address6
    assert me6 is not None
    assert addresses(ask(zone, "web-1", me6)) == [str(addr(plan, "web-1", "front"))]


def test_unknown_single_label_and_in_zone_are_nxdomain(
    shop_zone: tuple[StackPlan, Zone],
) -> None:
    plan, zone = shop_zone
    client = addr(plan, "client-1", "front")
    for name in ("nosuch", "nosuch.linkd.", "a.b.c.linkd"):
        reply = ask(zone, name, client)
        assert reply.header.rcode == RCODE.NXDOMAIN, name
        soa = reply.auth[0]
        assert str(soa.rname) == "linkd." and str(soa.rdata.mname) == "ns.linkd."


def test_forwarded_names(shop_zone: tuple[StackPlan, Zone]) -> None:
    plan, zone = shop_zone
    client = addr(plan, "client-1", "front")
    assert isinstance(ask_raw(zone, "example.com", client), Forward)
    assert isinstance(ask_raw(zone, "www.example.com.", client, "AAAA"), Forward)


def test_soa_at_apex_serial_follows_content(shop_zone: tuple[StackPlan, Zone]) -> None:
    plan, zone = shop_zone
    reply = ask(zone, "LINKD.", addr(plan, "client-1", "front"), "SOA")
    soa = reply.rr[0].rdata
    assert str(soa.mname) == "ns.linkd." and str(soa.rname) == "hostmaster.linkd."
    assert soa.times[0] == zone.serial
    assert make(shop())[1].serial == zone.serial
    assert make(shop(3))[1].serial != zone.serial


def test_ptr(shop_zone: tuple[StackPlan, Zone]) -> None:
    plan, zone = shop_zone
    client = addr(plan, "client-1", "front")
    web1 = addr(plan, "web-1", "front")
    reply = ask(zone, web1.reverse_pointer, client, "PTR")
    assert addresses(reply) == ["web-1.front.shop.linkd."]
    # on a network the requester is not on: in a linkd subnet, so NXDOMAIN
    db = addr(plan, "db-1", "back")
    assert ask(zone, db.reverse_pointer, client, "PTR").header.rcode == RCODE.NXDOMAIN
    unused = IPv4Address("10.87.0.200")
    assert ask(zone, unused.reverse_pointer, client, "PTR").header.rcode == RCODE.NXDOMAIN
    assert isinstance(ask_raw(zone, "8.8.8.8.in-addr.arpa", client, "PTR"), Forward)
    v6 = ip_address("2001:db8::1").reverse_pointer
    assert isinstance(ask_raw(zone, v6, client, "PTR"), Forward)


# -- order, size ---------------------------------------------------------------------------


def test_rotation_changes_order_and_keeps_the_set() -> None:
    plan, zone = make(shop(5))
    client = addr(plan, "client-1", "front")
    orders = [addresses(ask(zone, "web", client, seed=s)) for s in range(5)]
    assert len({tuple(o) for o in orders}) == 5
    assert len({frozenset(o) for o in orders}) == 1
    assert len({o[0] for o in orders}) == 5  # each replica comes first once
    # deterministic per seed, cache or no cache
    assert addresses(ask(zone, "web", client, seed=3)) == orders[3]
    # without a seed, successive answers still rotate
    firsts = {addresses(ask(zone, "web", client, seed=None))[0] for _ in range(5)}
    assert len(firsts) == 5


def test_many_replicas_are_shuffled_not_rotated() -> None:
    plan, zone = make(shop(40))
    client = addr(plan, "client-1", "front")
    one = addresses(ask(zone, "web", client, seed=1, max_size=None))
    two = addresses(ask(zone, "web", client, seed=2, max_size=None))
    assert one != two and sorted(one) == sorted(two) and len(one) == 40


def test_udp_truncation_and_edns() -> None:
    plan, zone = make(shop(60))
    client = addr(plan, "client-1", "front")
    plain = ask(zone, "web", client)  # no OPT: 512 bytes
    assert plain.header.tc == 1 and plain.rr == [] and plain.ar == []
    assert str(plain.q.qname) == "web."
    big = ask(zone, "web", client, edns=4096)  # 60 * 16 bytes fit under our 1232
    assert big.header.tc == 0 and len(big.rr) == 60
    assert big.ar[0].rtype == QTYPE.OPT and big.ar[0].rclass == 1232
    small = ask(zone, "web", client, edns=100)  # below 512 counts as 512
    assert small.header.tc == 1 and small.ar[0].rtype == QTYPE.OPT
    tcp = ask(zone, "web", client, max_size=None)
    assert tcp.header.tc == 0 and len(tcp.rr) == 60


# -- malformed -----------------------------------------------------------------------------


def test_malformed() -> None:
    plan, zone = make(shop())
    client = addr(plan, "client-1", "front")
    assert isinstance(answer(zone, b"\x01\x02", client), Drop)
    query = query_bytes("web")
    response = bytes([query[0], query[1], query[2] | 0x80]) + query[3:]
    assert isinstance(answer(zone, response, client), Drop)
    garbage = answer(zone, query[:12] + b"\x3fabc", client)
    assert isinstance(garbage, Answered)
    parsed = DNSRecord.parse(garbage.data)
    assert parsed.header.rcode == RCODE.FORMERR and parsed.header.id == 4242
    no_question = query[:4] + b"\x00\x00" + query[6:12]
    reply = answer(zone, no_question, client)
    assert isinstance(reply, Answered)
    assert DNSRecord.parse(reply.data).header.rcode == RCODE.FORMERR
    notify = query[:2] + bytes([query[2] | (4 << 3)]) + query[3:]
    reply = answer(zone, notify, client)
    assert isinstance(reply, Answered)
    assert DNSRecord.parse(reply.data).header.rcode == RCODE.NOTIMP


# -- cache ---------------------------------------------------------------------------------


def test_cache_hit_patches_id_and_case(shop_zone: tuple[StackPlan, Zone]) -> None:
    plan, zone = shop_zone
    client = addr(plan, "client-1", "front")
    first = answer(zone, query_bytes("web-1", qid=1), client)
    assert len(zone.cache) == 1
    second = answer(zone, query_bytes("WeB-1", qid=2), client)
    assert isinstance(first, Answered) and isinstance(second, Answered)
    assert second.data[:2] == b"\x00\x02"
    assert second.data[2:] == first.data[2:].replace(b"web-1", b"WeB-1")
    assert len(zone.cache) == 1
    assert str(DNSRecord.parse(second.data).q.qname) == "WeB-1."
    # another view is another key
    answer(zone, query_bytes("web-1", qid=3), addr(plan, "web-2", "front"))
    assert len(zone.cache) == 2


def test_cache_keeps_forward_and_negative_answers(shop_zone: tuple[StackPlan, Zone]) -> None:
    plan, zone = shop_zone
    client = addr(plan, "client-1", "front")
    for _ in range(2):
        assert isinstance(ask_raw(zone, "example.com", client), Forward)
        assert ask(zone, "nosuch", client).header.rcode == RCODE.NXDOMAIN
    assert len(zone.cache) == 2


def test_cache_separates_edns_sizes() -> None:
    plan, zone = make(shop(60))
    client = addr(plan, "client-1", "front")
    assert ask(zone, "web", client).header.tc == 1
    assert ask(zone, "web", client, edns=1232).header.tc == 0
    assert ask(zone, "web", client).header.tc == 1


def test_new_zone_serves_new_data() -> None:
    plan, zone = make(shop())
    client = addr(plan, "client-1", "front")
    old = addresses(ask(zone, "web-1", client))
    moved = {"front": IPv4Network("10.99.0.0/24"), "back": IPv4Network("10.99.1.0/24")}
    plan2, zone2 = make(shop(), moved)
    new = addresses(ask(zone2, "web-1", addr(plan2, "client-1", "front")))
    assert old != new and new == [str(addr(plan2, "web-1", "front"))]
    assert zone2.cache is not zone.cache


def test_requester_scoped_extra_names() -> None:
    plan = realize(shop(), SUBNETS)
    client = addr(plan, "client-1", "front")
    target = addr(plan, "web-1", "front")
    zone = build_zone([plan], extra={client: {"shopfront": [target]}})
    assert addresses(ask(zone, "shopfront", client)) == [str(target)]
    other = addr(plan, "web-2", "front")
    assert ask(zone, "shopfront", other).header.rcode == RCODE.NXDOMAIN


# -- explain -------------------------------------------------------------------------------


def test_explain(shop_zone: tuple[StackPlan, Zone]) -> None:
    plan, zone = shop_zone
    lines = explain(zone, "database", addr(plan, "client-1", "front"))
    assert lines[0].endswith("is shop/client-1, on networks shop/front")
    assert any("exists on shop/back" in line and "not visible" in line for line in lines)
    lines = explain(zone, "web", addr(plan, "web-1", "back"))
    assert any("web-2 (service name)" in line for line in lines)
    assert any("A answered from shop/front" in line for line in lines)
    lines = explain(zone, "example.com", addr(plan, "client-1", "front"))
    assert lines[-1].endswith("forwarded upstream")


def test_the_plan_alone_gives_the_aliases() -> None:
    plan = realize(shop(), SUBNETS)
    client = addr(plan, "client-1", "front")
    assert {str(r.rdata) for r in ask(build_zone([plan]), "www", client).rr} == {
        str(addr(plan, "web-1", "front")),
        str(addr(plan, "web-2", "front")),
    }


def test_a_link_alias_resolves_for_the_linking_container_only() -> None:
    from linkd.core.model import Link

    base = shop()
    linked = Stack(
        base.name,
        tuple(
            Service("client", command=CMD, networks=(Attachment("front"),),
                    links=(Link("web", "shopfront"),))
            if s.name == "client" else s
            for s in base.services
        ),
        base.networks,
    )
    plan = realize(linked, SUBNETS)
    zone = build_zone([plan])
    client = addr(plan, "client-1", "front")
    got = {str(r.rdata) for r in ask(zone, "shopfront", client).rr}
    assert got == {str(addr(plan, "web-1", "front")), str(addr(plan, "web-2", "front"))}
    web = addr(plan, "web-1", "front")
    assert ask(zone, "shopfront", web).header.rcode == 3  # NXDOMAIN for everyone else
    assert any("link alias" in line for line in explain(zone, "shopfront", client))
    # The names the page lists for each: its networks' short names, its own link alias.
    assert reachable_names(zone, client) == (
        "client", "client-1", "shopfront", "web", "web-1", "web-2", "www")
    assert reachable_names(zone, web) == tuple(sorted(
        {"client", "client-1", "db", "db-1", "web", "web-1", "web-2", "www", "database"}))
    assert reachable_names(zone, ip_address("192.0.2.1")) == ()


def test_srv_for_every_exposed_and_named_port_with_targets_in_additional() -> None:
    from linkd.core.model import PortSpec

    base = shop()
    with_ports = Stack(
        base.name,
        tuple(
            Service("web", command=CMD, replicas=2,
                    networks=(Attachment("front"), Attachment("back")),
                    expose=(PortSpec(8080, 8080), PortSpec(53, 53, "udp", name="dns")))
            if s.name == "web" else s
            for s in base.services
        ),
        base.networks,
    )
    plan = realize(with_ports, SUBNETS)
    zone = build_zone([plan])
    client = addr(plan, "client-1", "front")
    reply = ask(zone, "_8080._tcp.web", client, "SRV")
    targets = sorted((r.rdata.port, str(r.rdata.target)) for r in reply.rr)
    assert targets == [
        (8080, "web-1.front.shop.linkd."),
        (8080, "web-2.front.shop.linkd."),
    ]
    glue = {str(r.rname): str(r.rdata) for r in reply.ar if r.rtype == 1}
    assert glue == {
        "web-1.front.shop.linkd.": str(addr(plan, "web-1", "front")),
        "web-2.front.shop.linkd.": str(addr(plan, "web-2", "front")),
    }
    named = ask(zone, "_dns._udp.web.shop.linkd", client, "SRV")
    assert {r.rdata.port for r in named.rr} == {53}
    # The SRV name exists without addresses: NODATA for A, not NXDOMAIN.
    nodata = ask(zone, "_8080._tcp.web", client, "A")
    assert nodata.header.rcode == 0 and not nodata.rr and nodata.auth
    # Seen from the back network, the targets are the back addresses.
    db = addr(plan, "db-1", "back")
    back = ask(zone, "_8080._tcp.web", db, "SRV")
    assert {str(r.rdata.target) for r in back.rr} == {
        "web-1.back.shop.linkd.", "web-2.back.shop.linkd."}
    assert ask(zone, "_9999._tcp.web.shop.linkd", client, "SRV").header.rcode == 3


@pytest.mark.parametrize("service", ["matomo_db", "peer0.org1.example.com", "Api_V2"])
def test_service_names_with_underscores_and_dots_resolve_as_in_docker(service: str) -> None:
    """Compose allows `_` and `.` in service names, and Docker's DNS answers them."""
    stack = Stack(
        name="shop",
        services=(
            Service(service, command=CMD, networks=(Attachment("front"),)),
            Service("client", command=CMD, networks=(Attachment("front"),)),
        ),
        networks=(Network("front"),),
    )
    plan, zone = make(stack)
    client = addr(plan, "client-1", "front")
    target = str(addr(plan, f"{service}-1", "front"))
    for name in (service, f"{service}-1", service.upper(), f"{service}.shop.linkd"):
        reply = ask(zone, name, client)
        assert addresses(reply) == [target], name


def test_a_container_name_is_the_containers_dns_name_and_hostname() -> None:
    """Compose's `container_name`: the container is that name (in DNS, as its hostname),
    and its service name still resolves to it."""
    stack = Stack(
        name="shop",
        services=(
            Service("db", command=CMD, container_name="shop-mysql",
                    networks=(Attachment("front"),)),
            Service("cache", command=CMD, container_name="cache",
                    networks=(Attachment("front"),)),
            Service("client", command=CMD, networks=(Attachment("front"),)),
        ),
        networks=(Network("front"),),
    )
    plan, zone = make(stack)
    assert [c.name for c in plan.containers] == ["shop-mysql", "cache", "client-1"]
    assert plan.container("shop-mysql").hostname == "shop-mysql"
    client = addr(plan, "client-1", "front")
    for name, container in (("shop-mysql", "shop-mysql"), ("db", "shop-mysql"),
                            ("cache", "cache")):
        assert addresses(ask(zone, name, client)) == [str(addr(plan, container, "front"))]
    reply = ask_raw(zone, "db-1", client)
    assert isinstance(reply, Answered)
    assert DNSRecord.parse(reply.data).header.rcode == RCODE.NXDOMAIN  # no <service>-1 then
