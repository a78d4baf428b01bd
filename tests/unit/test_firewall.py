"""Pure firewall: the stack's nftables table (data, and its golden text), host ports and
their conflicts."""

from __future__ import annotations

import itertools
from ipaddress import IPv4Network

import pytest

from linkd.core import firewall, nftables
from linkd.core.plan import StackPlan
from linkd.errors import ConflictError, SpecError
from linkd.spec.stack_file import parse_stack
from tests.planning import realize

SUBNETS = {
    "front": IPv4Network("10.87.0.0/24"),
    "back": IPv4Network("10.87.1.0/24"),
    "side": IPv4Network("10.87.2.0/24"),
    "default": IPv4Network("10.87.3.0/24"),
}

SHOP = """
services:
  db: {command: x, networks: [back]}
  web:
    command: x
    networks: [back, front]
    ports: ["8080:80", "127.0.0.1:5353:53/udp", "8000-8002:8000-8002", "7000-7001:9000-9001"]
  tool: {command: x, networks: [side]}
networks:
  front:
  back: {internal: true}
  side: {enable_ipv6: true, ipam: {config: [{subnet: "fd00:87::/64"}]}}
x-linkd:
  host: ["5432", "192.0.2.2:8000-8010/udp"]
"""


def plan_of(text: str, name: str = "shop") -> StackPlan:
    stack = parse_stack(text, source="linkd.yaml", project_name=name)
    return realize(stack, {n.name: SUBNETS[n.name] for n in stack.networks})


def bridge(plan: StackPlan, key: str) -> str:
    return next(n.bridge for n in plan.networks if n.key == key)


GOLDEN = """\
table inet linkd-shop {
	chain raw {
		type filter hook prerouting priority raw; policy accept;
		iifname "FRONT" ip daddr 10.87.0.0/24 ip daddr != 10.87.0.1 notrack
		iifname "BACK" ip daddr 10.87.1.0/24 ip daddr != 10.87.1.1 notrack
		iifname "SIDE" ip daddr 10.87.2.0/24 ip daddr != 10.87.2.1 notrack
		iifname "SIDE" ip6 daddr fd00:87::/64 ip6 daddr != fd00:87::1 notrack
	}
	chain forward {
		type filter hook forward priority filter; policy accept;
		iifname "FRONT" oifname "FRONT" accept
		iifname "BACK" oifname "BACK" accept
		iifname "SIDE" oifname "SIDE" accept
		iifname "BACK" oifname != "BACK" drop
		oifname "BACK" iifname != "BACK" drop
		ct state established,related accept
		ct status dnat accept
		iifname "FRONT" oifname != "FRONT" meta oifkind "bridge" drop
		oifname "FRONT" iifname != "FRONT" drop
		iifname "SIDE" oifname != "SIDE" meta oifkind "bridge" drop
		oifname "SIDE" iifname != "SIDE" drop
	}
	chain input {
		type filter hook input priority filter; policy accept;
		ct state established,related accept
		icmpv6 type nd-neighbor-solicit accept
		icmpv6 type nd-neighbor-advert accept
		iifname "FRONT" ip daddr 127.0.0.0/8 drop
		iifname "SIDE" ip daddr 127.0.0.0/8 drop
		iifname "FRONT" tcp dport 5432 accept
		iifname "FRONT" ip daddr 192.0.2.2 udp dport 8000-8010 accept
		iifname "SIDE" tcp dport 5432 accept
		iifname "SIDE" ip daddr 192.0.2.2 udp dport 8000-8010 accept
		iifname "FRONT" drop
		iifname "BACK" drop
		iifname "SIDE" drop
	}
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		meta nfproto ipv4 fib daddr type local jump published
	}
	chain output {
		type nat hook output priority -100; policy accept;
		meta nfproto ipv4 fib daddr type local jump published
	}
	chain published {
		tcp dport 8080 dnat ip to 10.87.0.2:80
		ip daddr 127.0.0.1 udp dport 5353 dnat ip to 10.87.0.2:53
		tcp dport 8000-8002 dnat ip to 10.87.0.2
		tcp dport 7000 dnat ip to 10.87.0.2:9000
		tcp dport 7001 dnat ip to 10.87.0.2:9001
	}
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "FRONT" ip saddr 127.0.0.0/8 masquerade
		oifname "FRONT" ct status dnat ip saddr 10.87.0.0/24 masquerade
		ip saddr 10.87.0.0/24 oifname != "FRONT" masquerade
		ip saddr 10.87.2.0/24 oifname != "SIDE" masquerade
		ip6 saddr fd00:87::/64 oifname != "SIDE" masquerade
	}
}
"""


def test_containers_leave_through_an_uplink_bridge_but_no_other_bridge() -> None:
    plan = plan_of(SHOP)
    front = bridge(plan, "front")
    text = firewall.ruleset(plan, frozenset({"br0", "eth1"}))
    assert (f'iifname "{front}" oifname != "{front}" meta oifkind "bridge" '
            'oifname != "br0" oifname != "eth1" drop') in text


def test_the_ruleset_of_a_stack_is_golden() -> None:
    plan = plan_of(SHOP)
    golden = (
        GOLDEN.replace("FRONT", bridge(plan, "front"))
        .replace("BACK", bridge(plan, "back"))
        .replace("SIDE", bridge(plan, "side"))
    )
    assert firewall.ruleset(plan) == golden
    # Published to the container's address on its first non-internal network (front),
    # though back is its eth0.
    assert {p.address for p in firewall.published(plan)} == {
        next(i.address for i in plan.container("web-1").interfaces if i.network == "front")
    }
    assert firewall.localnet_bridges(plan) == [bridge(plan, "front")]


def test_the_table_is_data_the_text_renders() -> None:
    plan = plan_of(SHOP)
    table = firewall.table(plan)
    assert (table.family, table.name) == ("inet", "linkd-shop")
    assert [(c.name, c.hook) for c in table.chains] == [
        ("raw", nftables.Hook("filter", "prerouting", -300)),
        ("forward", nftables.Hook("filter", "forward", 0)),
        ("input", nftables.Hook("filter", "input", 0)),
        ("prerouting", nftables.Hook("nat", "prerouting", -100)),
        ("output", nftables.Hook("nat", "output", -100)),
        ("published", None),
        ("postrouting", nftables.Hook("nat", "postrouting", 100)),
    ]
    front = bridge(plan, "front")
    forward = next(c for c in table.chains if c.name == "forward")
    assert forward.rules[0] == nftables.rule(
        nftables.Interface("iif", front), nftables.Interface("oif", front), nftables.Accept())
    assert table == firewall.table(plan_of(SHOP))  # deterministic, comparable
    assert firewall.ruleset(plan) == table.text()
    assert firewall.table_name("a-b_1") == "linkd-a-b_1"
    assert firewall.stack_of_table("linkd-a-b_1") == "a-b_1"
    assert firewall.stack_of_table("linkd_dns") is None


def test_a_stack_without_published_ports_has_no_dnat_and_no_localnet() -> None:
    plan = plan_of("services: {a: {command: x}}\nnetworks: {front: {}}\n")
    text = firewall.ruleset(plan)
    assert "dnat ip to" not in text and "jump published" not in text
    assert "masquerade" in text  # egress still
    assert firewall.localnet_bridges(plan) == []
    lone = plan_of("services: {a: {command: x, network_mode: none}}\n")
    assert not firewall.wanted(lone)


def counter(start: int = 40000) -> firewall.Allocate:
    numbers = itertools.count(start)
    return lambda protocol, host_ip: next(numbers)


RANDOM = """
services:
  web: {command: x, scale: 2, ports: ["80", "127.0.0.1::81", "8000-8001", "53/udp"]}
  fixed: {command: x, ports: ["40001:80"]}
"""


def test_random_host_ports_one_per_container_port_and_replica() -> None:
    plan = firewall.assign_host_ports(plan_of(RANDOM), counter(), {})
    by = {
        (p.container, p.start, p.protocol): (p.host_ip, p.host_start)
        for p in firewall.published(plan)
    }
    # 40001 is published by `fixed`: the allocator's answer is skipped.
    assert by == {
        ("web-1", 80, "tcp"): (None, 40000),
        ("web-1", 81, "tcp"): ("127.0.0.1", 40002),
        ("web-1", 8000, "tcp"): (None, 40003),
        ("web-1", 8001, "tcp"): (None, 40004),
        ("web-1", 53, "udp"): (None, 40005),
        ("web-2", 80, "tcp"): (None, 40006),
        ("web-2", 81, "tcp"): ("127.0.0.1", 40007),
        ("web-2", 8000, "tcp"): (None, 40008),
        ("web-2", 8001, "tcp"): (None, 40009),
        ("web-2", 53, "udp"): (None, 40010),
        ("fixed-1", 80, "tcp"): (None, 40001),
    }
    assert firewall.port_of(plan, "web", 80) == ["0.0.0.0:40000"]
    assert firewall.port_of(plan, "web", 80, index=2) == ["0.0.0.0:40006"]
    assert firewall.port_of(plan, "web", 81) == ["127.0.0.1:40002"]
    assert firewall.port_of(plan, "web", 53, "udp") == ["0.0.0.0:40005"]
    assert firewall.port_of(plan, "web", 53) == []
    for service, index in (("nope", 1), ("web", 3)):
        with pytest.raises(KeyError):
            firewall.port_of(plan, service, 80, index=index)


def test_random_host_ports_stay_across_a_changed_stack_and_avoid_other_stacks() -> None:
    first = firewall.assign_host_ports(plan_of(RANDOM), counter(), {})
    taken = {("tcp", None, 50000): "stack other service api"}
    again = firewall.assign_host_ports(plan_of(RANDOM), counter(50000), taken, previous=first)
    assert again == first  # nothing changes: no container is recreated for its port
    fresh = firewall.assign_host_ports(plan_of(RANDOM), counter(50000), taken)
    assert firewall.port_of(fresh, "web", 80) == ["0.0.0.0:50001"]


def test_a_host_port_of_another_stack_is_refused_naming_both() -> None:
    plan = plan_of(RANDOM)
    taken = {("tcp", "127.0.0.1", 40001): "stack other service api"}
    with pytest.raises(ConflictError) as caught:
        firewall.check_published(plan, taken)
    assert str(caught.value) == (
        "service fixed: host port 40001/tcp on all addresses is already published by "
        "stack other service api"
    )
    # Another address, or another protocol, is no clash.
    firewall.check_published(plan, {("tcp", "127.0.0.2", 1): "x", ("udp", None, 40001): "y"})
    other = plan_of(RANDOM, name="other")
    assert firewall.holders([other])[("tcp", None, 40001)] == "stack other service fixed"


def test_ports_of_internal_only_services_and_ipv6_host_addresses_are_refused() -> None:
    plan = plan_of("""
services:
  db: {command: x, networks: [back], ports: ["5432"]}
  web: {command: x, networks: [front], ports: ["[::1]:8080:80"]}
networks:
  front:
  back: {internal: true}
""")
    with pytest.raises(SpecError) as caught:
        firewall.check_plan_ports(plan)
    assert [p[0] for p in caught.value.problems] == ["services.db.ports", "services.web.ports"]
    assert "only on internal networks" in caught.value.problems[0][2]
    assert "IPv4 host addresses only" in caught.value.problems[1][2]
