"""Pure core: names, address management, planning, reconcile ordering, restarts, state."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Network, ip_network

import pytest

from linkd.core import ipam, names, restart, state
from linkd.core.hosts import hosts_file
from linkd.core.model import Attachment, Dependency, Link, Network, RestartPolicy, Service, Stack
from linkd.core.plan import lease_of, start_waves
from linkd.core.reconcile import (
    ConfigureNetns,
    EnsureBridge,
    EnsureNetns,
    EnsureVeth,
    Observed,
    ObservedLink,
    RemoveBridge,
    RemoveLink,
    RemoveNetns,
    StartContainer,
    StopContainer,
    plan_down,
    plan_up,
)
from linkd.errors import ConflictError, SpecError
from tests.planning import realize

CMD = ("sleep", "60")


def shop() -> Stack:
    return Stack(
        name="shop",
        services=(
            Service("db", command=CMD, networks=(Attachment("back", aliases=("database",)),)),
            Service(
                "web",
                command=CMD,
                replicas=2,
                networks=(Attachment("front"), Attachment("back")),
                depends_on=(Dependency("db"),),
            ),
            Service(
                "client",
                command=CMD,
                networks=(Attachment("front"),),
                links=(Link("web", "shopfront"),),
            ),
        ),
        networks=(Network("front"), Network("back", internal=True)),
    )


SUBNETS = {"front": IPv4Network("10.87.0.0/24"), "back": IPv4Network("10.87.1.0/24")}


# -- names -------------------------------------------------------------------------------


def test_kernel_names_are_short_prefixed_and_stable() -> None:
    bridge = names.bridge_name("shop", "front")
    veth = names.host_veth_name("a-very-long-stack-name-x", "service-with-long-name-12", "net")
    assert bridge.startswith("lkb-") and len(bridge) <= names.IFNAME_MAX
    assert veth.startswith("lkv-") and len(veth) <= names.IFNAME_MAX
    assert bridge == names.bridge_name("shop", "front")
    assert bridge != names.bridge_name("shop2", "front")


def test_netns_prefix_selects_one_stack_only() -> None:
    ns = names.netns_name("a-b", "web-1")
    assert names.container_from_netns("a-b", ns) == "web-1"
    assert names.container_from_netns("a", ns) is None


def test_bridge_mac_is_unicast_and_locally_administered() -> None:
    first = int(names.bridge_mac("s", "n").split(":")[0], 16)
    assert first & 0x01 == 0 and first & 0x02 == 2


# -- ipam --------------------------------------------------------------------------------


def test_pick_subnets_skips_host_routes_and_other_stacks() -> None:
    taken = [
        (ip_network("10.87.0.0/24"), "host route via eth1"),
        (ip_network("10.87.1.0/25"), "stack other network x"),
        (ip_network("0.0.0.0/0"), "default route"),
    ]
    chosen = ipam.pick_subnets([Network("a"), Network("b")], taken)
    assert chosen == {"a": IPv4Network("10.87.2.0/24"), "b": IPv4Network("10.87.3.0/24")}


def test_declared_subnet_overlapping_a_host_route_names_both() -> None:
    with pytest.raises(ConflictError, match=r"networks.a: subnet 192.0.2.0/24 overlaps .*eth0"):
        ipam.pick_subnets(
            [Network("a", subnet=IPv4Network("192.0.2.0/24"))],
            [(ip_network("192.0.2.0/24"), "host route via eth0")],
        )


def test_assign_honours_static_addresses_first() -> None:
    subnet = IPv4Network("10.0.0.0/29")
    got = ipam.assign(
        subnet,
        {IPv4Address("10.0.0.1")},
        [("a", None), ("b", IPv4Address("10.0.0.2")), ("c", None)],
    )
    assert got == {
        "b": IPv4Address("10.0.0.2"),
        "a": IPv4Address("10.0.0.3"),
        "c": IPv4Address("10.0.0.4"),
    }


def test_assign_reports_a_full_subnet() -> None:
    with pytest.raises(ConflictError, match="no free address"):
        ipam.assign(IPv4Network("10.0.0.0/30"), {IPv4Address("10.0.0.1")}, [("a", None)] * 2)


def test_ula_subnet_is_a_stable_unique_local_64() -> None:
    net = ipam.ula_subnet("shop", "front")
    assert net.prefixlen == 64 and net.subnet_of(IPv6Network("fd00::/8"))
    assert net == ipam.ula_subnet("shop", "front") != ipam.ula_subnet("shop", "back")


# -- plan --------------------------------------------------------------------------------


def test_replicas_get_numbered_names_and_addresses_in_order() -> None:
    plan = realize(shop(), SUBNETS)
    assert [c.name for c in plan.containers] == ["db-1", "web-1", "web-2", "client-1"]
    web2 = plan.container("web-2")
    assert [(i.ifname, i.network, str(i.address)) for i in web2.interfaces] == [
        ("eth0", "front", "10.87.0.3"),
        ("eth1", "back", "10.87.1.4"),
    ]
    assert web2.netns == "linkd-shop.web-2"


def test_default_route_goes_through_the_first_non_internal_network() -> None:
    plan = realize(shop(), SUBNETS)
    assert [i.default_route for i in plan.container("web-1").interfaces] == [True, False]
    assert [i.default_route for i in plan.container("db-1").interfaces] == [False]


def hosts_names(hosts: str) -> dict[str, set[str]]:
    result: dict[str, set[str]] = {}
    for line in hosts.splitlines():
        address, *hostnames = line.split()
        for hostname in hostnames:
            result.setdefault(hostname, set()).add(address)
    return result


def test_hosts_file_lists_only_names_on_shared_networks() -> None:
    plan = realize(shop(), SUBNETS)
    client = hosts_names(hosts_file(plan, plan.container("client-1")))
    assert client["web"] == {"10.87.0.2", "10.87.0.3"}  # both replicas, front network
    assert client["web-2"] == {"10.87.0.3"}
    assert client["shopfront"] == {"10.87.0.2", "10.87.0.3"}  # its link alias
    assert "db" not in client and "database" not in client  # db is on back only
    web = hosts_names(hosts_file(plan, plan.container("web-1")))
    assert web["database"] == {"10.87.1.2"} and web["db.back"] == {"10.87.1.2"}
    assert "shopfront" not in web  # a link alias is the linker's alone


def test_a_container_knows_its_own_name() -> None:
    plan = realize(shop(), SUBNETS)
    assert hosts_names(hosts_file(plan, plan.container("db-1")))["db-1"] == {"10.87.1.2"}


def test_link_to_a_service_on_no_shared_network_is_an_error() -> None:
    stack = Stack(
        "s",
        services=(
            Service("a", command=CMD, networks=(Attachment("n1"),), links=(Link("b", "b"),)),
            Service("b", command=CMD, networks=(Attachment("n2"),)),
        ),
        networks=(Network("n1"), Network("n2")),
    )
    with pytest.raises(SpecError, match=r"services.a.links\[0\]: a and b share no network"):
        realize(stack, {"n1": IPv4Network("10.1.0.0/24"), "n2": IPv4Network("10.2.0.0/24")})


def test_start_waves_follow_depends_on_and_links() -> None:
    assert start_waves(shop()) == (("db",), ("web",), ("client",))


def test_working_dir_defaults_to_the_given_directory() -> None:
    plan = realize(shop(), SUBNETS, workdir="/srv/shop")
    assert plan.container("db-1").working_dir == "/srv/shop"


# -- reconcile ---------------------------------------------------------------------------


def nothing() -> Observed:
    return Observed(links={}, netns=frozenset(), running=frozenset())


def test_up_from_nothing_builds_networks_then_containers_then_processes() -> None:
    plan = realize(shop(), SUBNETS)
    kinds = [type(a).__name__ for a in plan_up(plan, nothing())]
    assert kinds[:2] == ["EnsureBridge", "EnsureBridge"]
    assert kinds[-4:] == ["StartContainer"] * 4
    starts = [a.container.name for a in plan_up(plan, nothing()) if isinstance(a, StartContainer)]
    assert starts == ["db-1", "web-1", "web-2", "client-1"]


def observed_after_up(plan_: object) -> Observed:
    from linkd.core.plan import StackPlan

    assert isinstance(plan_, StackPlan)
    links = {n.bridge: ObservedLink(n.bridge, "bridge", None) for n in plan_.networks}
    for c in plan_.containers:
        for i in c.interfaces:
            links[i.host_ifname] = ObservedLink(i.host_ifname, "veth", i.bridge)
    return Observed(
        links=links,
        netns=frozenset(c.netns for c in plan_.containers),
        running=frozenset(c.name for c in plan_.containers),
    )


def test_up_is_idempotent_once_everything_exists() -> None:
    plan = realize(shop(), SUBNETS)
    assert plan_up(plan, observed_after_up(plan)) == []


def test_up_repairs_a_veth_deleted_by_hand() -> None:
    plan = realize(shop(), SUBNETS)
    observed = observed_after_up(plan)
    lost = plan.container("web-2").interfaces[1].host_ifname
    links = {k: v for k, v in observed.links.items() if k != lost}
    actions = plan_up(plan, Observed(links, observed.netns, observed.running))
    assert [type(a) for a in actions] == [EnsureVeth, ConfigureNetns]


def test_up_removes_containers_no_longer_wanted() -> None:
    plan = realize(shop(), SUBNETS)
    observed = observed_after_up(plan)
    extra = Observed(
        observed.links, observed.netns | {"linkd-shop.old-1"}, observed.running | {"old-1"}
    )
    assert plan_up(plan, extra) == [StopContainer("old-1"), RemoveNetns("linkd-shop.old-1")]


def test_down_stops_in_reverse_order_then_namespaces_then_bridges() -> None:
    plan = realize(shop(), SUBNETS)
    actions = plan_down("shop", plan, observed_after_up(plan))
    stops = [a for a in actions if isinstance(a, StopContainer)]
    assert [s.name for s in stops] == ["client-1", "web-1", "web-2", "db-1"]
    assert stops[1].wave == stops[2].wave != stops[0].wave
    kinds = [type(a) for a in actions]
    assert kinds.index(RemoveNetns) > kinds.index(StopContainer)
    assert RemoveLink not in kinds  # the namespaces take their veths with them
    assert kinds[-2:] == [RemoveBridge, RemoveBridge]


def test_down_removes_orphan_veths_whose_namespace_is_gone() -> None:
    plan = realize(shop(), SUBNETS)
    observed = observed_after_up(plan)
    gone = plan.container("db-1")
    partial = Observed(observed.links, observed.netns - {gone.netns}, frozenset())
    actions = plan_down("shop", plan, partial)
    assert RemoveLink(gone.interfaces[0].host_ifname) in actions


def test_down_without_a_plan_still_removes_the_stacks_namespaces() -> None:
    observed = Observed({}, frozenset({"linkd-shop.web-1"}), frozenset())
    assert plan_down("shop", None, observed) == [RemoveNetns("linkd-shop.web-1")]


def test_down_without_a_plan_removes_what_the_lease_names() -> None:
    """Orphans: no state survived, only the lease. Its veths whose namespace is gone and
    its bridges go; veths still in a namespace go with it."""
    plan = realize(shop(), SUBNETS)
    observed = observed_after_up(plan)
    gone = plan.container("db-1")
    partial = Observed(observed.links, observed.netns - {gone.netns}, frozenset())
    actions = plan_down("shop", None, partial, lease_of(plan))
    assert RemoveLink(gone.interfaces[0].host_ifname) in actions
    assert [a for a in actions if isinstance(a, RemoveLink)] == [
        RemoveLink(i.host_ifname) for i in gone.interfaces
    ]
    assert {a for a in actions if isinstance(a, RemoveBridge)} == {
        RemoveBridge(n.bridge) for n in plan.networks
    }


def test_down_of_nothing_is_nothing() -> None:
    assert plan_down("shop", realize(shop(), SUBNETS), nothing()) == []


def test_up_creates_a_bridge_that_is_not_a_bridge() -> None:
    plan = realize(shop(), SUBNETS)
    bridge = plan.networks[0].bridge
    observed = Observed({bridge: ObservedLink(bridge, "veth", None)}, frozenset(), frozenset())
    assert EnsureBridge(plan.networks[0]) in plan_up(plan, observed)
    assert EnsureNetns("linkd-shop.db-1") in plan_up(plan, observed)


# -- restart -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "retries", "code", "restarts", "expected"),
    [
        ("no", None, 1, 0, None),
        ("always", None, 0, 0, 0.1),
        ("always", None, 1, 5, 0.1),
        ("unless-stopped", None, 0, 0, 0.1),
        ("on-failure", None, 0, 0, None),
        ("on-failure", None, 2, 0, 0.1),
        ("on-failure", 3, 2, 2, 0.1),
        ("on-failure", 3, 2, 3, None),
    ],
)
def test_restart_policy_decides_like_docker(
    mode: str, retries: int | None, code: int, restarts: int, expected: float | None
) -> None:
    policy = RestartPolicy(mode, retries)  # type: ignore[arg-type]
    got = restart.next_delay(policy, code, restarts=restarts, backoff=0, stopped_by_user=False)
    assert got == expected


def test_restart_backoff_doubles_caps_and_resets() -> None:
    always = RestartPolicy("always")
    delays = [
        restart.next_delay(always, 1, restarts=n, backoff=n, stopped_by_user=False)
        for n in range(10)
    ]
    assert delays[:4] == [0.1, 0.2, 0.4, 0.8] and delays[-1] == restart.MAX_DELAY
    assert restart.backoff_after_run(7, ran_for=11.0) == 0
    assert restart.backoff_after_run(7, ran_for=1.0) == 7


def test_a_container_stopped_by_the_user_is_never_restarted() -> None:
    always = RestartPolicy("always")
    assert restart.next_delay(always, 1, restarts=0, backoff=0, stopped_by_user=True) is None


# -- state -------------------------------------------------------------------------------


def test_state_round_trips_through_msgpack() -> None:
    plan = realize(shop(), SUBNETS)
    original = state.StackState(
        plan=plan,
        source="/srv/shop/linkd.yaml",
        status="up",
        supervisor_pid=42,
        containers=(state.ContainerState("db-1", "running", 10, 11, 1.5, None, 0),),
    )
    assert state.decode(state.encode(original)) == original


def test_corrupt_or_foreign_state_is_refused_with_a_message() -> None:
    with pytest.raises(state.StateError, match="corrupt"):
        state.decode(b"\xc1\x00garbage")
    import msgpack

    with pytest.raises(state.StateError, match="version 99"):
        state.decode(msgpack.packb({"v": 99}))


def test_a_full_pool_says_what_fills_it() -> None:
    with pytest.raises(ConflictError, match=r"no free /24 .*in use: host route via tun0"):
        ipam.pick_subnets([Network("a")], [(ip_network("10.0.0.0/8"), "host route via tun0")])
