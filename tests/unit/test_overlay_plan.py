"""An overlay network in a stack's plan (linkd.core.overlay_plan, linkd.core.plan): the
bridge named by the network's owner on every node, a MAC of the bridge's own per node,
the overlay MTU on the bridge and every container end, containers' MACs from their
addresses, the cluster's addresses taken as given; and what an overlay network cannot
have yet, refused by key."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from linkd.core import names, overlay_plan
from linkd.core.cluster_ipam import NetworkRecord
from linkd.core.plan import NetworkPlan, realize
from linkd.errors import SpecError
from linkd.spec.stack_file import parse_stack

RECORD = NetworkRecord("db/back", IPv4Network("10.87.9.0/24"), 4242, "node1", "db_back")
LOCAL = IPv4Address("198.19.0.1")


def plan_of(key: str, owned: bool, node: str = "node1") -> NetworkPlan:
    return overlay_plan.network_plan(key, RECORD, internal=False, node=node, local=LOCAL,
                                     underlay_mtu=1500, owned=owned)


def test_the_owner_and_a_joiner_share_the_bridge_and_device_but_not_the_bridge_mac() -> None:
    own, joined = plan_of("back", True), plan_of("shared", False, node="node2")
    assert own.bridge == joined.bridge == names.bridge_name("db", "back")
    assert own.owner is None and joined.owner == ("db", "back")
    assert own.name == joined.name == "db_back"
    assert own.overlay is not None and joined.overlay is not None
    assert own.overlay.vxlan == joined.overlay.vxlan == names.vxlan_name("db", "back")
    assert own.overlay.vni == 4242 and own.mtu == 1450 and own.gateway == IPv4Address("10.87.9.1")
    assert own.bridge_mac != joined.bridge_mac  # one per node
    device = overlay_plan.device_of(own)
    assert (device.name, device.bridge, device.vni, device.local, device.mtu) == (
        own.overlay.vxlan, own.bridge, 4242, LOCAL, 1450)


def test_containers_take_the_cluster_s_addresses_with_a_mac_from_each_and_the_mtu() -> None:
    stack = parse_stack("services:\n  web: {command: x, networks: [back, local], "
                        "deploy: {replicas: 2}}\n"
                        "networks:\n  back: {driver: overlay}\n  local: {}\n",
                        source="t.yaml", project_name="db")
    given_out = {("web-1", "back"): IPv4Address("10.87.9.7"),
                 ("web-2", "back"): IPv4Address("10.87.9.3")}
    plan = realize(stack, {"local": IPv4Network("10.87.1.0/24")},
                   joined={"back": plan_of("back", True)}, assigned=given_out)
    for container in ("web-1", "web-2"):
        back, local = plan.container(container).interfaces
        assert back.address == given_out[(container, "back")]
        assert back.mac_address == names.address_mac(back.address)
        assert back.mtu == 1450 and back.bridge == names.bridge_name("db", "back")
        assert local.mtu is None and local.mac_address is None  # a bridge of this host's


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_an_address_s_mac_is_unicast_local_and_its_own(number: int) -> None:
    address = IPv4Address(number)
    mac = names.address_mac(address)
    first = int(mac[:2], 16)
    assert first & 1 == 0 and first & 2 == 2  # unicast, locally administered
    assert bytes(int(b, 16) for b in mac.split(":")[2:]) == address.packed


def test_what_an_overlay_network_cannot_have_yet_is_refused_by_key() -> None:
    stack = parse_stack(
        "services:\n  a:\n    command: x\n    networks:\n"
        "      back: {ipv4_address: 10.5.0.9}\n"
        "networks:\n  back:\n    driver: overlay\n    enable_ipv6: true\n"
        "    ipam: {config: [{subnet: 10.5.0.0/24}, {subnet: 'fd00:5::/64'}]}\n",
        source="t.yaml", project_name="s")
    with pytest.raises(SpecError) as caught:
        overlay_plan.check(stack, {"back"})
    said = str(caught.value)
    assert "networks.back.ipam: an overlay network's subnet is the cluster's" in said
    assert "networks.back.enable_ipv6: overlay networks are IPv4 only" in said
    assert "services.a.networks.back: static addresses on an overlay network" in said
    overlay_plan.check(stack, set())  # the same file on a bridge: nothing to say
    assert [n.name for n in overlay_plan.overlay_networks(stack)] == ["back"]
