"""Containers on overlay networks between a node and the cluster (linkd.core.overlay_peers):
the records a node publishes for its stacks, the neighbours its DNS adds from every
node's records (named as at home, held back when not healthy, only on the networks a
stack shares), and the forwarding entries of its VXLAN devices."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network

from linkd.core import overlay_peers, overlay_plan
from linkd.core.cluster_endpoints import EndpointRecord
from linkd.core.cluster_ipam import NetworkRecord
from linkd.core.plan import StackPlan, realize
from linkd.core.state import ContainerState, StackState
from linkd.dns.answers import lookup
from linkd.dns.snapshot import Zone
from linkd.dns.zone import build_zone
from linkd.spec.stack_file import parse_stack
from tests.planning import realize as planned

BACK = NetworkRecord("db/back", IPv4Network("10.87.9.0/24"), 77, "node1", "db_back")
NODE1, NODE2 = IPv4Address("198.19.0.1"), IPv4Address("198.19.0.2")


def stack_plan(text: str, project: str, node: str, local: IPv4Address,
               addresses: dict[tuple[str, str], IPv4Address], joined: dict[str, str]
               ) -> StackPlan:
    stack = parse_stack(text, source="t.yaml", project_name=project)
    nets = {key: overlay_plan.network_plan(key, BACK, internal=False, node=node, local=local,
                                           underlay_mtu=1500, owned=owned == "own")
            for key, owned in joined.items()}
    subnets = {n.name: IPv4Network(f"10.87.{i + 1}.0/24")
               for i, n in enumerate(stack.networks) if n.name not in nets}
    return realize(stack, subnets, joined=nets, assigned=addresses)


DB = stack_plan(
    "services:\n  db:\n    command: x\n    networks: {back: {aliases: [database]}}\n"
    "    expose: ['5432']\n    healthcheck: {test: [CMD, x]}\n"
    "networks:\n  back: {driver: overlay}\n",
    "db", "node1", NODE1, {("db-1", "back"): IPv4Address("10.87.9.2")}, {"back": "own"})
WEB = stack_plan(
    "services:\n  web: {command: x, networks: [shared, own], deploy: {replicas: 2}}\n"
    "  lone: {command: x, networks: [own]}\n"
    "networks:\n  shared: {external: true, name: db_back}\n  own: {}\n",
    "web", "node2", NODE2, {("web-1", "shared"): IPv4Address("10.87.9.3"),
                            ("web-2", "shared"): IPv4Address("10.87.9.4")},
    {"shared": "joined"})


def ask(zone: Zone, who: IPv4Address, name: str) -> list[IPv4Address] | str | None:
    """The A records `who` gets for `name`, or the rcode when it is not NOERROR."""
    found = lookup(zone, name, "A", who)
    if found.rcode != "NOERROR":
        return found.rcode
    return sorted(IPv4Address(r[3]) for r in found.records if r[1] == "A")


def state(plan: StackPlan, **statuses: ContainerState) -> StackState:
    containers = tuple(statuses.get(c.name.replace("-", "_"), ContainerState(c.name, "running"))
                       for c in plan.containers)
    return StackState(plan, "t.yaml", "up", None, containers)


def test_a_node_publishes_its_running_containers_on_overlay_networks_only() -> None:
    records = overlay_peers.local_records("node2", NODE2, [state(
        WEB, web_2=ContainerState("web-2", "exited"))])
    (web1,) = records  # web-2 stopped for good; lone is on no overlay network
    assert (web1.network, web1.node, web1.underlay, web1.stack, web1.container,
            web1.key) == ("db/back", "node2", NODE2, "web", "web-1", "shared")
    assert web1.address == IPv4Address("10.87.9.3") and web1.ready
    assert web1.mac == "02:42:0a:57:09:03"
    db = overlay_peers.local_records("node1", NODE1, [state(DB)])  # health unknown
    assert [(r.container, r.ready, r.aliases, r.ports) for r in db] == [
        ("db-1", False, ("database",), ((5432, "tcp", None),))]
    healthy = ContainerState("db-1", "running", health="healthy")
    assert overlay_peers.local_records("node1", NODE1, [state(DB, db_1=healthy)])[0].ready
    stopping = replace(state(DB), status="stopping")
    assert overlay_peers.local_records("node1", NODE1, [stopping]) == []


def everyone() -> list[EndpointRecord]:
    return (overlay_peers.local_records("node1", NODE1, [state(DB)])
            + overlay_peers.local_records("node2", NODE2, [state(WEB)]))


def test_dns_on_each_node_answers_for_the_other_node_s_containers_as_at_home() -> None:
    far, pending = overlay_peers.neighbour_plans(WEB, everyone(), "node2")
    assert [p.stack for p in far] == ["db"] and pending == {("db", "db-1")}
    zone = build_zone([WEB, *far], pending=pending)
    web1 = IPv4Address("10.87.9.3")
    # The container's name answers at once; the service's is held until it is healthy.
    assert ask(zone, web1, "db-1") == [IPv4Address("10.87.9.2")]
    assert ask(zone, web1, "db-1.back.db.linkd") == [IPv4Address("10.87.9.2")]
    assert ask(zone, web1, "database") == "SERVFAIL"  # held: retried
    far, pending = overlay_peers.neighbour_plans(
        WEB, [replace(r, ready=True) for r in everyone()], "node2")
    zone = build_zone([WEB, *far], pending=pending)
    assert ask(zone, web1, "database") == [IPv4Address("10.87.9.2")]
    assert lookup(zone, "_5432._tcp.db", "SRV", web1).records
    # The owner's node sees the joiner's containers under the joiner's key.
    far, _ = overlay_peers.neighbour_plans(DB, everyone(), "node1")
    zone = build_zone([DB, *far])
    db1 = IPv4Address("10.87.9.2")
    assert ask(zone, db1, "web") == [IPv4Address("10.87.9.3"), IPv4Address("10.87.9.4")]
    assert ask(zone, db1, "web-2.shared.web.linkd") == [IPv4Address("10.87.9.4")]
    # A container off the overlay network sees none of it; a node's own records are its
    # stacks' (served from their state, not from etcd).
    lone = WEB.container("lone-1").interfaces[0].address
    assert ask(build_zone([WEB, *overlay_peers.neighbour_plans(
        WEB, everyone(), "node2")[0]]), lone, "db-1") != [IPv4Address("10.87.9.2")]
    assert overlay_peers.neighbour_plans(WEB, overlay_peers.local_records(
        "node2", NODE2, [state(WEB)]), "node2") == ((), frozenset())


def test_a_record_of_another_network_adds_nothing() -> None:
    other = replace(everyone()[0], network="else/net")
    assert overlay_peers.neighbour_plans(WEB, [other], "node2") == ((), frozenset())


def test_each_device_gets_entries_for_the_containers_on_other_nodes() -> None:
    desired = overlay_peers.forwarding("db/back", everyone(), NODE2)
    assert {(e.mac, e.vtep) for e in desired.state.fdb} == {("02:42:0a:57:09:02", NODE1)}
    assert {(n.address, n.mac) for n in desired.state.neigh} == {
        (IPv4Address("10.87.9.2"), "02:42:0a:57:09:02")}
    assert overlay_peers.forwarding("else/net", everyone(), NODE2).state.fdb == frozenset()


SHOP = NetworkRecord("shop/default", IPv4Network("10.87.12.0/24"), 78, "node1")


def shop_share(node: str, local: IPv4Address, mine: set[str]) -> StackPlan:
    """One node's share of a stack spanning two nodes: web links db as `database`."""
    stack = parse_stack("services:\n  db: {command: x, expose: ['5432']}\n"
                        "  web: {command: y, links: ['db:database']}\n"
                        "networks:\n  default: {driver: overlay}\n",
                        source="t.yaml", project_name="shop")
    net = overlay_plan.network_plan("default", SHOP, internal=False, node=node, local=local,
                                    underlay_mtu=1500, owned=True)
    whole = planned(stack, {}, joined={"default": net}, assigned={
        ("db-1", "default"): IPv4Address("10.87.12.2"),
        ("web-1", "default"): IPv4Address("10.87.12.3")})
    return replace(whole, containers=tuple(c for c in whole.containers if c.name in mine))


def test_a_link_alias_answers_for_the_stack_s_containers_on_other_nodes() -> None:
    """web on node1 links db, which runs on node2: its alias answers from web's node as on
    one host (the stack's containers elsewhere are a plan of its name beside its own)."""
    web_share = shop_share("node1", NODE1, {"web-1"})
    db_share = shop_share("node2", NODE2, {"db-1"})
    theirs = overlay_peers.local_records("node2", NODE2, [state(db_share)])
    far, _ = overlay_peers.neighbour_plans(web_share, theirs, "node1")
    zone = build_zone([web_share, *far])
    web1 = IPv4Address("10.87.12.3")
    assert ask(zone, web1, "database") == [IPv4Address("10.87.12.2")]
    assert ask(zone, web1, "db") == [IPv4Address("10.87.12.2")]
    # db has no link: the alias is web's alone.
    db_zone = build_zone([db_share, *overlay_peers.neighbour_plans(
        db_share, overlay_peers.local_records("node1", NODE1, [state(web_share)]), "node2")[0]])
    assert ask(db_zone, IPv4Address("10.87.12.2"), "database") == "NXDOMAIN"
