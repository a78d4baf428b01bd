"""Compose's networking keys (issue 16 §5): external networks shared between stacks,
network modes, and the per-container DNS, sysctl and link keys — parsing, planning and
the DNS zone, without a kernel (tests/integration/test_network_keys.py has the kernel's
side)."""

from __future__ import annotations

import re
import textwrap
from ipaddress import IPv4Address, IPv4Network, ip_address
from typing import Any

import pytest
import yaml
from dnslib import RCODE
from hypothesis import given, settings
from hypothesis import strategies as st

from linkd.core import shared_networks
from linkd.core.hosts import hosts_file, resolv_conf
from linkd.core.model import Attachment, Dependency, Network, Stack
from linkd.core.plan import StackPlan, lease_of
from linkd.core.reconcile import ConfigureNetns, EnsureNetns, Observed, plan_up
from linkd.dns.zone import build_zone
from linkd.errors import ConflictError, NotFoundError, SpecError
from linkd.spec import net_keys
from linkd.spec.stack_file import parse_stack, stack_to_dict
from linkd.spec.values import Bad
from tests.planning import realize
from tests.unit.test_dns import addresses, ask


def parse(text: str, name: str = "p", **kw: Any) -> Stack:
    return parse_stack(textwrap.dedent(text), source="t.yaml", project_name=name, **kw)


def problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        parse(text)
    return [f"{path}: {message}" for path, _, message in caught.value.problems]


# --- external networks: the file ------------------------------------------------------


def test_external_network_is_read_with_its_real_name() -> None:
    stack = parse("""
        services:
          a: {command: x, networks: [shared, default]}
        networks:
          shared: {external: true, name: shop_default}
          other: {external: true}
          mine: {name: fixed-name}
    """)
    nets = {n.name: n for n in stack.networks}
    assert nets["shared"] == Network("shared", real_name="shop_default", external=True)
    assert nets["other"] == Network("other", external=True)
    assert nets["mine"].real_name == "fixed-name" and not nets["mine"].external
    assert shared_networks.real_name("p", nets["shared"]) == "shop_default"
    assert shared_networks.real_name("p", nets["other"]) == "other"
    assert shared_networks.real_name("p", nets["mine"]) == "fixed-name"
    assert shared_networks.real_name("p", nets["default"]) == "p_default"
    assert not stack.warnings


def test_the_default_network_may_be_external() -> None:
    stack = parse("""
        services: {a: {command: x}}
        networks:
          default: {external: true, name: proxy}
    """)
    assert stack.networks == (Network("default", real_name="proxy", external=True),)


def test_the_old_external_name_form() -> None:
    stack = parse("""
        services: {a: {command: x, networks: [n]}}
        networks:
          n: {external: {name: traefik}}
    """)
    assert stack.networks == (Network("n", real_name="traefik", external=True),)
    found = problems("""
        services: {a: {command: x, networks: [n]}}
        networks:
          n: {external: {name: one}, name: two}
    """)
    assert found == ['networks.n.external.name: both "external.name" (deprecated) and '
                     '"name" are given (Compose refuses it too); keep "name"']


def test_settings_of_an_external_network_are_the_owners() -> None:
    stack = parse("""
        services: {a: {command: x, networks: [n]}}
        networks:
          n: {external: true, driver: bridge, ipam: {config: [{subnet: 10.9.0.0/24}]}}
    """)
    assert stack.networks == (Network("n", external=True),)
    assert [w.split(":")[0] for w in stack.warnings] == [
        "networks.n.driver (line 4)", "networks.n.ipam (line 4)"]
    assert all("the stack that creates the network decides it" in w for w in stack.warnings)


@pytest.mark.parametrize(("network", "fragment"), [
    ("{external: maybe}", "expected true or false"),
    ("{name: '-bad'}", "expected a network name of letters"),
    ("{name: 'a b'}", "expected a network name of letters"),
    ("{external: true, name: ''}", "expected a network name of letters"),
])
def test_bad_external_or_name(network: str, fragment: str) -> None:
    found = problems(f"services: {{a: {{command: x, networks: [n]}}}}\n"
                     f"networks:\n  n: {network}\n")
    assert any(fragment in p for p in found), found


def test_a_static_address_on_an_external_network_waits_for_its_subnet() -> None:
    stack = parse("""
        services:
          a: {command: x, networks: {n: {ipv4_address: 10.9.0.7}}}
        networks:
          n: {external: true}
    """)
    assert stack.services[0].networks[0].ipv4_address == IPv4Address("10.9.0.7")
    found = problems("""
        services:
          a: {command: x, networks: {n: {ipv4_address: 10.9.0.7}}}
          b: {command: x, networks: {n: {ipv4_address: 10.9.0.7}}}
        networks:
          n: {external: true}
    """)
    assert found == ["services.b.networks.n.ipv4_address: 10.9.0.7 on network n is already "
                     "taken by service a"]


def test_config_writes_external_networks_back() -> None:
    stack = parse("""
        services: {a: {command: x, networks: [n, m]}}
        networks:
          n: {external: true, name: shop_default}
          m: {name: fixed}
    """)
    written = stack_to_dict(stack)
    assert written["networks"]["n"] == {"external": True, "name": "shop_default"}
    assert written["networks"]["m"]["name"] == "fixed"
    again = parse(yaml.safe_dump(written, sort_keys=False))
    assert again.networks == stack.networks


# --- external networks: planning ------------------------------------------------------

SHOP = """
    services:
      web: {command: x, scale: 2}
      db: {command: x, networks: [back]}
    networks:
      back: {}
"""
JOINER = """
    services:
      client: {command: x, networks: [shop, own]}
      lone: {command: x, networks: [own]}
    networks:
      shop: {external: true, name: shop_default}
      own: {}
"""


def shop_plan() -> StackPlan:
    stack = parse(SHOP, "shop")
    return realize(stack, {"default": IPv4Network("10.87.0.0/24"),
                           "back": IPv4Network("10.87.1.0/24")})


def joined_plan(shop: StackPlan, text: str = JOINER, name: str = "app") -> StackPlan:
    stack = parse(text, name)
    joined = shared_networks.join(stack, [shop])
    networks = [joined.get(n.name) or (stack.name, n.name) for n in stack.networks]
    held = shared_networks.held(stack.name, networks, [shop])
    own = {n.name: IPv4Network("10.87.5.0/24") for n in stack.networks if not n.external}
    return realize(stack, own, joined=joined, held=held)


def test_joining_takes_the_owners_bridge_and_subnet_and_avoids_its_addresses() -> None:
    shop = shop_plan()
    app = joined_plan(shop)
    net = next(n for n in app.networks if n.key == "shop")
    owner = next(n for n in shop.networks if n.key == "default")
    assert (net.key, net.name, net.owner) == ("shop", "shop_default", ("shop", "default"))
    assert (net.bridge, net.subnet, net.gateway) == (owner.bridge, owner.subnet, owner.gateway)
    client = app.container("client-1").interfaces[0]
    assert client.bridge == owner.bridge and client.address in owner.subnet
    theirs = {i.address for c in shop.containers for i in c.interfaces}
    assert client.address not in theirs | {owner.gateway}
    assert client.host_ifname not in {i.host_ifname for c in shop.containers
                                      for i in c.interfaces}
    # The owner, planned again, keeps away from the joiner's address (both sides avoid).
    held = shared_networks.held("shop", [("shop", "default"), ("shop", "back")], [app])
    assert held == {"default": frozenset({client.address})}
    again = realize(parse(SHOP, "shop"), {"default": IPv4Network("10.87.0.0/24"),
                                          "back": IPv4Network("10.87.1.0/24")}, held=held)
    assert client.address not in {i.address for c in again.containers for i in c.interfaces}


def test_held_addresses_push_the_owner_elsewhere() -> None:
    shop = shop_plan()
    first = shop.container("web-1").interfaces[0].address
    held = {"default": frozenset({first})}
    again = realize(parse(SHOP, "shop"), {"default": IPv4Network("10.87.0.0/24"),
                                          "back": IPv4Network("10.87.1.0/24")}, held=held)
    assert first not in {i.address for c in again.containers for i in c.interfaces}


def test_a_joiners_lease_never_holds_the_owners_subnet() -> None:
    app = joined_plan(shop_plan())
    lease = lease_of(app)
    assert [key for key, _ in lease.subnets] == ["own"]
    assert {(key, c) for key, c, _, _ in lease.addresses} >= {("shop", "client-1")}


def test_a_missing_external_network_is_an_error_naming_what_exists() -> None:
    stack = parse("""
        services: {a: {command: x, networks: [n]}}
        networks:
          n: {external: true, name: nowhere}
    """, "app")
    with pytest.raises(NotFoundError) as caught:
        shared_networks.join(stack, [shop_plan()])
    message = str(caught.value)
    assert message.startswith("network nowhere declared as external, but could not be "
                              "found: create it with another stack first")
    assert "shop_back, shop_default" in message


def test_only_networks_a_stack_made_can_be_joined() -> None:
    shop = shop_plan()
    app = joined_plan(shop)
    # A third stack naming the joiner's copy's name finds the owner's network, once.
    third = parse("""
        services: {t: {command: x, networks: [n]}}
        networks:
          n: {external: true, name: shop_default}
    """, "third")
    joined = shared_networks.join(third, [app, shop])
    assert joined["n"].owner == ("shop", "default")
    # Its own external key is not a network anyone can join by `<stack>_<key>`.
    with pytest.raises(NotFoundError):
        shared_networks.join(parse(
            "services: {t: {command: x, networks: [n]}}\n"
            "networks:\n  n: {external: true, name: app_shop}\n", "third"), [app, shop])


def test_two_stacks_cannot_make_one_network_name() -> None:
    shop = shop_plan()
    clash = parse("""
        services: {a: {command: x, networks: [n]}}
        networks:
          n: {name: shop_default}
    """, "other")
    with pytest.raises(ConflictError, match="network shop_default exists already"):
        shared_networks.check_names(clash, [shop])
    shared_networks.check_names(parse(JOINER, "app"), [shop])  # joining is fine


def test_a_static_address_outside_the_owners_subnet() -> None:
    text = JOINER.replace("client: {command: x, networks: [shop, own]}",
                          "client: {command: x, networks: {shop: {ipv4_address: 10.99.0.5}}}")
    with pytest.raises(SpecError, match=r"10\.99\.0\.5 is not a free address of network "
                                        "shop_default"):
        joined_plan(shop_plan(), text)
    taken = str(shop_plan().container("web-1").interfaces[0].address)
    text = text.replace("10.99.0.5", taken)
    with pytest.raises(ConflictError, match="another stack's container"):
        joined_plan(shop_plan(), text)


def test_users_of_a_bridge() -> None:
    shop = shop_plan()
    app = joined_plan(shop)
    bridge = next(n.bridge for n in shop.networks if n.key == "default")
    back = next(n.bridge for n in shop.networks if n.key == "back")
    assert shared_networks.users(bridge, [shop, app], "shop") == ("app",)
    assert shared_networks.users(bridge, [shop, app], "app") == ("shop",)
    assert shared_networks.users(back, [shop, app], "shop") == ()
    # A joiner with no container on it does not keep it.
    idle = app.without([c.name for c in app.containers if c.service == "client"])
    assert shared_networks.users(bridge, [shop, idle], "shop") == ()


# --- external networks: DNS across the two stacks -------------------------------------


def test_names_answer_both_ways_on_the_shared_network_only() -> None:
    shop = shop_plan()
    app = joined_plan(shop)
    web1 = shop.container("web-1").interfaces[0].address
    db = shop.container("db-1").interfaces[0].address
    client = app.container("client-1")
    # The joiner's server: its own plan and the owner's containers there.
    near = shared_networks.neighbours(app, [shop])
    assert [c.name for p in near for c in p.containers] == ["web-1", "web-2"]
    zone = build_zone([app, *near])
    me = client.interfaces[0].address
    assert sorted(addresses(ask(zone, "web", me))) == sorted(
        str(shop.container(f"web-{n}").interfaces[0].address) for n in (1, 2))
    assert addresses(ask(zone, "web-1.shop.linkd", me)) == [str(web1)]
    assert addresses(ask(zone, "web-1.default", me)) == [str(web1)]
    assert ask(zone, "db", me).header.rcode == RCODE.NXDOMAIN  # not on the shared network
    lone = app.container("lone-1").interfaces[0].address
    assert ask(zone, "web", lone).header.rcode == RCODE.NXDOMAIN  # not on it either
    # The owner's server: the joiner's container on its network, and no other.
    theirs = build_zone([shop, *shared_networks.neighbours(shop, [app])])
    assert addresses(ask(theirs, "client", web1)) == [str(me)]
    assert addresses(ask(theirs, "client-1.app.linkd", web1)) == [str(me)]
    assert ask(theirs, "client", db).header.rcode == RCODE.NXDOMAIN
    assert ask(theirs, "lone", web1).header.rcode == RCODE.NXDOMAIN
    # Reverse lookups of the joiner's address answer on the owner's side too.
    ptr = ask(theirs, ip_address(me).reverse_pointer, web1, "PTR")
    assert [str(rr.rdata) for rr in ptr.rr] == ["client-1.shop.app.linkd."]


def test_neighbours_of_stacks_sharing_nothing_are_none() -> None:
    shop = shop_plan()
    other = realize(parse("services: {x: {command: y}}\n", "other"),
                    {"default": IPv4Network("10.87.9.0/24")})
    assert shared_networks.neighbours(shop, [other]) == ()
    assert shared_networks.neighbours(other, [shop]) == ()
    assert not shared_networks.shares(shop, other) and not shared_networks.shares(other, shop)
    app = joined_plan(shop)
    assert shared_networks.shares(app, shop) and shared_networks.shares(shop, app)
    assert shared_networks.neighbours(app, [shop]) == (shared_networks.shared_part(app, shop),)


def test_a_plan_less_no_container_is_the_same_plan() -> None:
    """A zone skips a plan object it has already (linkd.dns.zone.rezone): a stack with
    nothing stopped keeps its plan object from one refresh to the next."""
    shop = shop_plan()
    assert shop.without([]) is shop
    assert shop.without(["web-1"]) is not shop
    assert [c.name for c in shop.without(["web-1"]).containers] == [
        c.name for c in shop.containers if c.name != "web-1"]


# --- network_mode -----------------------------------------------------------------------

MODES = """
    services:
      vpn: {command: x, ports: ["8080:80"]}
      app: {command: y, network_mode: "service:vpn"}
      chained: {command: y, network_mode: "service:app", scale: 2}
      named: {command: y, network_mode: "container:vpn-1"}
      hosty: {command: z, network_mode: host, ports: ["80"]}
      plain: {command: z, network_mode: bridge}
"""


def test_network_modes_are_read_with_the_implied_dependency() -> None:
    stack = parse(MODES)
    modes = {s.name: (s.network_mode, s.networks, s.depends_on) for s in stack.services}
    assert modes["app"][0] == "service:vpn" and modes["app"][1] == ()
    assert modes["app"][2] == (Dependency("vpn", restart=True),)  # as Compose adds it
    assert modes["named"] == ("container:vpn-1", (), ())  # none for container:, as Compose
    assert modes["hosty"][:2] == ("host", ())
    assert modes["plain"] == (None, (Attachment("default"),), ())
    assert [w.split(": ", 1)[0] for w in stack.warnings] == [
        "services.hosty.ports (line 7)", "services.hosty.network_mode (line 7)",
        "services.plain.network_mode (line 8)"]
    assert "without linkd's DNS" in stack.warnings[1]
    # A dependency written by hand stays as written.
    kept = parse("""
        services:
          vpn: {command: x}
          app:
            command: y
            network_mode: "service:vpn"
            depends_on: {vpn: {condition: service_started}}
    """)
    assert kept.service("app").depends_on == (Dependency("vpn"),)
    again = parse(yaml.safe_dump(stack_to_dict(stack), sort_keys=False))
    assert {s.name: s.network_mode for s in again.services} == {
        s.name: s.network_mode for s in stack.services}


@pytest.mark.parametrize(("body", "fragment"), [
    ('network_mode: "service:vpn", ports: ["80:80"]',
     '"ports" cannot go with network_mode "service:vpn": ports are published by the '
     "container that owns the namespace"),
    ('network_mode: "service:vpn", networks: [default]', '"networks" cannot go with'),
    ('network_mode: "container:x", expose: ["80"]', '"expose" cannot go with'),
    ('network_mode: "service:vpn", links: [vpn]', '"links" cannot go with'),
    ('network_mode: "service:vpn", hostname: h', '"hostname" cannot go with'),
    ('network_mode: "service:vpn", extra_hosts: ["a:1.2.3.4"]', '"extra_hosts" cannot go'),
    ("network_mode: host, networks: [default]", '"networks" cannot go with network_mode '
                                                '"host"'),
    ("network_mode: host, links: [vpn]", '"links" cannot go with network_mode "host"'),
    ('network_mode: "service:nope"', 'unknown service "nope"'),
    ('network_mode: "service:app"', "service app cannot share its own network namespace"),
    ('network_mode: "container:-x"', "expected container:NAME with a container name"),
    ('network_mode: "service:"', 'expected network_mode "none", "host"'),
    ("network_mode: bridge, networks: [default]", '"network_mode: bridge" and "networks" '
                                                  "cannot be combined"),
])
def test_what_cannot_go_with_a_network_mode(body: str, fragment: str) -> None:
    found = problems(f"services:\n  vpn: {{command: x}}\n  app: {{command: y, {body}}}\n")
    assert any(fragment in p for p in found), found


def test_a_sharing_cycle_is_a_dependency_cycle() -> None:
    found = problems("""
        services:
          a: {command: x, network_mode: "service:b"}
          b: {command: x, network_mode: "service:a"}
    """)
    assert any("cycle" in p for p in found), found


def test_the_plan_of_shared_and_host_namespaces() -> None:
    stack = parse(MODES)
    plan = realize(stack, {"default": IPv4Network("10.87.0.0/24")})
    vpn = plan.container("vpn-1")
    for name in ("app-1", "chained-1", "chained-2", "named-1"):
        c = plan.container(name)
        assert (c.network_mode, c.netns, c.hostname, c.interfaces) == (
            "container", vpn.netns, "vpn-1", ()), name
        assert dict(c.env)["HOSTNAME"] == "vpn-1"
        assert not c.owns_netns()
    host = plan.container("hosty-1")
    assert (host.network_mode, host.netns, host.ports) == ("host", "", ())
    assert plan.container("plain-1").interfaces[0].network == "default"
    # Only owners get a namespace made and wired; the others' files are written.
    actions = plan_up(plan, Observed({}, frozenset(), frozenset()))
    made = {a.netns for a in actions if isinstance(a, EnsureNetns)}
    assert made == {vpn.netns, plan.container("plain-1").netns}
    configured = {a.container.name for a in actions if isinstance(a, ConfigureNetns)}
    assert configured == {c.name for c in plan.containers}
    # Running already: nothing to do for them.
    running = frozenset(c.name for c in plan.containers)
    observed = Observed({}, frozenset(made), running)
    assert not [a for a in plan_up(plan, observed)
                if isinstance(a, ConfigureNetns) and not a.container.owns_netns()]


def test_container_mode_finds_another_stacks_container_or_says_none_is_there() -> None:
    stack = parse("services: {tool: {command: x, network_mode: 'container:db-1'}}\n", "app")
    plan = realize(stack, {}, foreign={"db-1": "linkd-shop.db-1"})
    assert plan.container("tool-1").netns == "linkd-shop.db-1"
    with pytest.raises(SpecError, match="no container db-1 to share a network namespace "
                                        "with, in this stack or another stack that is up"):
        realize(stack, {}, foreign={})
    dry = realize(stack, {})  # `linkd config`: not looked for
    assert dry.container("tool-1").network_mode == "container"


# --- dns, dns_search, dns_opt, sysctls, domainname, mac_address, hostname ---------------

NET_KEYS = """
    services:
      web:
        command: x
        hostname: web.internal
        domainname: example.com
        dns: [1.1.1.1, "2606:4700::1111"]
        dns_search: [svc.local, example.com]
        dns_opt: ["ndots:2", edns0]
        sysctls: {net.core.somaxconn: 1024, kernel.shmmax: "68719476736",
                  fs.mqueue.msg_max: 20, net/ipv4/ip_forward: 1}
        mac_address: "02-42-AC-11-00-02"
        networks: [front, back]
      db:
        command: x
        dns: 9.9.9.9
        dns_search: .
        sysctls: ["kernel.sem=250 32000 100 128", "kernel.msgmax=65536"]
        networks:
          back: {mac_address: "02:42:ac:11:00:09"}
    networks: {front: {}, back: {}}
"""


def test_per_container_network_keys_are_read() -> None:
    stack = parse(NET_KEYS)
    web, db = stack.service("web"), stack.service("db")
    assert web.hostname == "web.internal"
    assert web.net.domainname == "example.com"
    assert web.net.dns == ("1.1.1.1", "2606:4700::1111")
    assert web.net.dns_search == ("svc.local", "example.com")
    assert web.net.dns_opt == ("ndots:2", "edns0")
    assert web.net.sysctls == (("net.core.somaxconn", "1024"),
                               ("kernel.shmmax", "68719476736"),
                               ("fs.mqueue.msg_max", "20"), ("net.ipv4.ip_forward", "1"))
    assert web.net.mac_address == "02:42:ac:11:00:02"
    assert db.net.dns == ("9.9.9.9",) and db.net.dns_search == ()  # "." is no search line
    assert db.net.sysctls == (("kernel.sem", "250 32000 100 128"), ("kernel.msgmax", "65536"))
    assert db.networks[0].mac_address == "02:42:ac:11:00:09"
    assert not stack.warnings
    again = parse(yaml.safe_dump(stack_to_dict(stack), sort_keys=False))
    assert again.service("web").net == web.net
    assert again.service("db").networks == db.networks


@pytest.mark.parametrize(("body", "fragment"), [
    ("sysctls: {kernel.pid_max: 100}", "sysctl kernel.pid_max is not namespaced: setting it "
                                       "would change the host (Docker refuses it too)"),
    ("sysctls: [vm.swappiness=10]", "sysctl vm.swappiness is not namespaced"),
    ("sysctls: [net.core.somaxconn]", "expected KEY=VALUE"),
    ("sysctls: {'net/../x': 1}", "expected a sysctl name like net.core.somaxconn"),
    ("sysctls: {net.core.somaxconn: 1}\n    network_mode: host",
     "sysctl net.core.somaxconn would change the host's network"),
    ("dns: [not-an-ip]", "expected a DNS server's IP address"),
    ("dns_search: ['bad domain']", "expected a search domain"),
    ("dns_opt: ['ndots 2']", "expected a resolv.conf option"),
    ("domainname: 'a b'", "expected a domain name"),
    ("hostname: " + "h" * 65, "at most 64 characters"),
    ("hostname: 'has space'", "expected a host name"),
    ("mac_address: 01:00:5e:00:00:01", "multicast"),
    ("mac_address: 00:00:00:00:00:00", "no interface's address"),
    ("mac_address: 02:42:ac:11:00", "expected a MAC address"),
    ("mac_address: 02:42:ac:11:00:02\n    scale: 2", "2 replicas and one MAC address"),
    ("networks: {default: {mac_address: 02:42:ac:11:00:02}}\n    scale: 2",
     "2 replicas and one MAC address"),
])
def test_bad_per_container_network_keys(body: str, fragment: str) -> None:
    found = problems(f"services:\n  a:\n    command: x\n    {body}\n")
    assert any(fragment in p for p in found), found


def test_net_sysctls_wait_for_the_namespace_owner() -> None:
    found = problems("""
        services:
          vpn: {command: x}
          app: {command: y, network_mode: "service:vpn", sysctls: {net.core.somaxconn: 1}}
    """)
    assert any("would change the network namespace of the container it shares" in p
               for p in found), found
    stack = parse("""
        services:
          vpn: {command: x}
          app: {command: y, network_mode: "service:vpn", sysctls: {kernel.shmmni: 8}}
    """)
    assert stack.service("app").net.sysctls == (("kernel.shmmni", "8"),)


def test_the_plan_carries_them_and_the_mac_goes_to_the_first_network() -> None:
    stack = parse(NET_KEYS)
    plan = realize(stack, {"front": IPv4Network("10.87.0.0/24"),
                           "back": IPv4Network("10.87.1.0/24")})
    web, db = plan.container("web-1"), plan.container("db-1")
    assert [i.mac_address for i in web.interfaces] == ["02:42:ac:11:00:02", None]
    assert [i.mac_address for i in db.interfaces] == ["02:42:ac:11:00:09"]
    assert web.net == stack.service("web").net and web.hostname == "web.internal"
    hosts = hosts_file(plan, web)
    assert f"{web.interfaces[0].address}\tweb.internal.example.com web.internal web-1.front" \
        in hosts.splitlines()


def test_resolv_conf_of_a_container() -> None:
    plan = realize(parse(NET_KEYS), {"front": IPv4Network("10.87.0.0/24"),
                                     "back": IPv4Network("10.87.1.0/24")})
    web = resolv_conf(plan.container("web-1")).splitlines()
    assert web[2:] == ["nameserver 127.0.0.11", "search svc.local example.com",
                       "options ndots:2 edns0"]  # ndots:2 replaces linkd's ndots:0
    assert "servers of its dns: key" in web[1]
    db = resolv_conf(plan.container("db-1")).splitlines()
    assert db[2:] == ["nameserver 127.0.0.11", "options ndots:0"]
    plain = realize(parse("services: {a: {command: x}}\n"),
                    {"default": IPv4Network("10.87.0.0/24")}).container("a-1")
    assert resolv_conf(plain).splitlines()[2:] == ["nameserver 127.0.0.11", "options ndots:0"]


def test_resolv_conf_on_the_hosts_network() -> None:
    host = "nameserver 10.0.0.1\nsearch corp.example\noptions timeout:2\n"
    stack = parse("""
        services:
          a: {command: x, network_mode: host}
          b: {command: x, network_mode: host, dns: [8.8.8.8], dns_search: [x.test],
              dns_opt: [rotate]}
    """)
    plan = realize(stack, {})
    assert resolv_conf(plan.container("a-1"), host) == host
    assert resolv_conf(plan.container("b-1"), host) == (
        "nameserver 8.8.8.8\nsearch x.test\noptions rotate\n")


# --- hostile input: a sysctl name becomes a path under /proc/sys ------------------------

_SAFE_PART = re.compile(r"[A-Za-z0-9_-]+")


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from("net.kernel/fsmqueueshm._-/..\\0 x9%$"), max_size=40)
       | st.text(max_size=40))
def test_a_sysctl_name_is_a_path_beneath_proc_sys_or_refused(text: str) -> None:
    try:
        name = net_keys._sysctl(text, None)
    except Bad:
        return
    parts = name.split(".")
    assert all(_SAFE_PART.fullmatch(p) for p in parts), name  # no "..", "/", "" or NUL
    assert name.startswith(("net.", "kernel.shm", "kernel.msg", "fs.mqueue.")) or (
        name == "kernel.sem")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=24))
def test_a_mac_is_six_unicast_octets_or_refused(text: str) -> None:
    try:
        mac = net_keys.parse_mac(text)
    except Bad:
        return
    octets = mac.split(":")
    assert len(octets) == 6 and all(len(o) == 2 for o in octets)
    assert int(octets[0], 16) & 1 == 0 and mac == mac.lower()
