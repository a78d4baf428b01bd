"""Overlay networks as data (linkd.core.overlay): VNIs, names, MTU, and the FDB and
neighbour entries a VXLAN device needs, with the diff that gets the kernel there."""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linkd.core import names, overlay
from linkd.core.overlay import (
    Endpoint,
    FdbEntry,
    ForwardingChanges,
    ForwardingState,
    NeighEntry,
    OverlayError,
    allocate_vni,
    apply,
    desired_forwarding,
    diff,
    overlay_mtu,
    parse_mac,
    vni_for,
    vxlan_device,
)

NODE_A, NODE_B, NODE_C = (IPv4Address(f"192.0.2.{i}") for i in (1, 2, 3))
MAC_1, MAC_2, MAC_3 = "02:00:00:00:00:01", "02:00:00:00:00:02", "02:00:00:00:00:03"
IP_1, IP_2, IP_3 = (IPv4Address(f"10.90.0.{i}") for i in (11, 12, 13))

# -- identity ----------------------------------------------------------------------------


def test_the_vni_is_stable_in_24_bits_and_never_0() -> None:
    vni = vni_for(overlay.overlay_id("shop", "backend"))
    assert vni == vni_for("shop/backend")
    assert 1 <= vni < 1 << 24
    assert vni != vni_for("shop/frontend")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_every_network_id_gets_a_vni_in_range(network_id: str) -> None:
    assert overlay.VNI_MIN <= vni_for(network_id) <= overlay.VNI_MAX


def test_a_vni_taken_by_another_network_moves_to_the_next_free_one() -> None:
    wanted = vni_for("a/net")
    assert allocate_vni("a/net", ()) == wanted
    assert allocate_vni("a/net", {wanted}) == (wanted + 1 if wanted < overlay.VNI_MAX else 1)
    assert allocate_vni("a/net", {wanted, wanted + 1, wanted + 2}) == wanted + 3


def test_allocation_wraps_round_past_the_largest_vni_and_skips_0() -> None:
    # A network whose preferred VNI is near the last one (found by search, so the test
    # does not depend on a guess), and every VNI from there up taken.
    network_id = next(f"n{i}" for i in range(10**6)
                      if vni_for(f"n{i}") >= overlay.VNI_MAX - 1000)
    wanted = vni_for(network_id)
    taken = set(range(wanted, overlay.VNI_MAX + 1))
    assert allocate_vni(network_id, taken) == 1
    assert allocate_vni(network_id, taken | {1, 0}) == 2


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=20), st.sets(st.integers(0, overlay.VNI_MAX + 5), max_size=50))
def test_an_allocated_vni_is_free_in_range_and_the_same_on_every_node(
        network_id: str, taken: set[int]) -> None:
    vni = allocate_vni(network_id, taken)
    assert overlay.VNI_MIN <= vni <= overlay.VNI_MAX and vni not in taken
    assert allocate_vni(network_id, sorted(taken, reverse=True)) == vni


def test_no_vni_left_is_an_error_naming_the_network() -> None:
    class Everything:  # a 16M-element set would be slow to build; only len/in are used
        def __len__(self) -> int:
            return overlay.VNI_MAX

        def __contains__(self, item: object) -> bool:
            return True

        def __iter__(self) -> Iterator[int]:
            return iter(range(overlay.VNI_MIN, overlay.VNI_MAX + 1))

    with pytest.raises(OverlayError, match="x/y: every VNI"):
        allocate_vni("x/y", Everything())


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80), st.text(max_size=80))
def test_device_names_fit_ifnamsiz_carry_the_prefix_and_differ_from_the_bridge(
        stack: str, network: str) -> None:
    name = names.vxlan_name(stack, network)
    assert name.startswith(names.VXLAN_PREFIX) and name.startswith(names.LINK_PREFIX)
    assert len(name) <= names.IFNAME_MAX and name.isascii() and "/" not in name
    assert name != names.bridge_name(stack, network)
    assert name == names.vxlan_name(stack, network)


def test_a_device_joins_the_network_s_own_bridge() -> None:
    device = vxlan_device("shop", "backend", 4242, NODE_A, 1500)
    assert device.bridge == names.bridge_name("shop", "backend")
    assert device.name == names.vxlan_name("shop", "backend")
    assert (device.vni, device.local, device.mtu, device.port) == (4242, NODE_A, 1450, 4789)
    with pytest.raises(OverlayError, match="VNI 0 is outside"):
        vxlan_device("shop", "backend", 0, NODE_A, 1500)


@pytest.mark.parametrize(("underlay", "ipv6", "mtu"), [
    (1500, False, 1450), (9000, False, 8950), (1500, True, 1430), (118, False, 68),
])
def test_the_mtu_leaves_room_for_the_vxlan_headers(underlay: int, ipv6: bool, mtu: int) -> None:
    assert overlay_mtu(underlay, ipv6_underlay=ipv6) == mtu


def test_an_underlay_too_small_for_vxlan_says_what_it_needs() -> None:
    with pytest.raises(OverlayError, match="at least 118"):
        overlay_mtu(117)
    assert vxlan_device("s", "n", 1, IPv6Address("2001:db8::1"), 1500).mtu == 1430


@pytest.mark.parametrize(("text", "mac"), [
    ("02:42:0A:00:00:02", "02:42:0a:00:00:02"), ("02-42-0a-00-00-02", "02:42:0a:00:00:02"),
])
def test_macs_are_read_in_both_spellings(text: str, mac: str) -> None:
    assert parse_mac(text) == mac


@pytest.mark.parametrize(("text", "why"), [
    ("01:00:5e:00:00:01", "multicast"), ("ff:ff:ff:ff:ff:ff", "multicast"),
    ("00:00:00:00:00:00", "not a container"), ("02:42:0a:00:00", "not a MAC"),
    ("02:42:0a:00:00:0g", "not a MAC"), ("x" * 1000, "not a MAC"),
])
def test_macs_that_would_flood_or_are_malformed_are_refused(text: str, why: str) -> None:
    with pytest.raises(OverlayError, match=why):
        parse_mac(text)


# -- forwarding entries ------------------------------------------------------------------


def test_remote_endpoints_get_an_fdb_and_a_neighbour_entry_local_ones_none() -> None:
    endpoints = [
        Endpoint(MAC_1, IP_1, NODE_A),  # on this node: reached through the bridge
        Endpoint(MAC_2, IP_2, NODE_B),
        Endpoint(MAC_3, IP_3, NODE_C),
        Endpoint(MAC_3, IPv6Address("fd00::13"), NODE_C),  # the same container, IPv6 too
    ]
    desired = desired_forwarding(endpoints, NODE_A)
    assert desired.problems == ()
    assert desired.state.fdb == {FdbEntry(MAC_2, NODE_B), FdbEntry(MAC_3, NODE_C)}
    assert desired.state.neigh == {NeighEntry(IP_2, MAC_2), NeighEntry(IP_3, MAC_3),
                                   NeighEntry(IPv6Address("fd00::13"), MAC_3)}


def test_endpoints_that_disagree_are_left_out_and_said() -> None:
    endpoints = [
        Endpoint(MAC_1, IP_1, NODE_B), Endpoint(MAC_1, IP_1, NODE_C),  # one MAC, two nodes
        Endpoint(MAC_2, IP_2, NODE_B), Endpoint(MAC_3, IP_2, NODE_C),  # one IP, two MACs
        Endpoint(MAC_3, IP_3, NODE_C),
    ]
    desired = desired_forwarding(endpoints, NODE_A)
    assert desired.state.fdb == {FdbEntry(MAC_2, NODE_B), FdbEntry(MAC_3, NODE_C)}
    assert desired.state.neigh == {NeighEntry(IP_3, MAC_3)}
    assert desired.problems == (
        f"MAC {MAC_1} is claimed by containers on several nodes ({NODE_B}, {NODE_C})",
        f"address {IP_2} is claimed by several MACs ({MAC_2}, {MAC_3})",
    )


def test_the_diff_removes_what_is_stale_and_replaces_a_moved_address() -> None:
    observed = ForwardingState(
        fdb=frozenset({FdbEntry(MAC_1, NODE_B), FdbEntry(MAC_2, NODE_B),
                       FdbEntry(MAC_2, NODE_C)}),  # a second destination: not ours
        neigh=frozenset({NeighEntry(IP_1, MAC_1), NeighEntry(IP_2, MAC_1)}),
    )
    desired = ForwardingState(
        fdb=frozenset({FdbEntry(MAC_2, NODE_B), FdbEntry(MAC_3, NODE_C)}),
        neigh=frozenset({NeighEntry(IP_2, MAC_2), NeighEntry(IP_3, MAC_3)}),
    )
    changes = diff(desired, observed)
    assert changes == ForwardingChanges(
        remove_fdb=(FdbEntry(MAC_1, NODE_B), FdbEntry(MAC_2, NODE_C)),
        remove_neigh=(NeighEntry(IP_1, MAC_1),),  # IP_2's entry is replaced, not removed
        add_fdb=(FdbEntry(MAC_3, NODE_C),),
        add_neigh=(NeighEntry(IP_2, MAC_2), NeighEntry(IP_3, MAC_3)),
    )
    assert apply(observed, changes) == desired
    assert diff(desired, desired).empty()


_macs = st.sampled_from([MAC_1, MAC_2, MAC_3, "02:00:00:00:00:04", "0a:bb:cc:dd:ee:ff"])
_nodes = st.sampled_from([NODE_A, NODE_B, NODE_C, IPv6Address("2001:db8::9")])
_ips = st.sampled_from([IP_1, IP_2, IP_3, ip_address("10.90.0.14"), ip_address("fd00::1"),
                        ip_address("fd00::2")])
_endpoints = st.lists(st.builds(Endpoint, _macs, _ips, _nodes), max_size=12)
_observed = st.builds(
    ForwardingState,
    st.frozensets(st.builds(FdbEntry, _macs, _nodes), max_size=8),
    # the kernel holds one neighbour entry per address
    st.dictionaries(_ips, _macs, max_size=6).map(
        lambda d: frozenset(NeighEntry(a, m) for a, m in d.items())),
)


@settings(max_examples=500, deadline=None)
@given(_endpoints, _nodes, _observed)
def test_the_diff_applied_to_what_is_observed_gives_what_is_desired(
        endpoints: list[Endpoint], local: IPv4Address, observed: ForwardingState) -> None:
    desired = desired_forwarding(endpoints, local)
    state = desired.state
    # one destination per MAC and one MAC per address, never an entry for a local one
    assert len({e.mac for e in state.fdb}) == len(state.fdb)
    assert len({e.address for e in state.neigh}) == len(state.neigh)
    assert all(e.vtep != local for e in state.fdb)
    assert {e.mac for e in state.neigh} <= {e.mac for e in state.fdb}
    changes = diff(state, observed)
    assert apply(observed, changes) == state
    assert diff(state, apply(observed, changes)).empty()  # a second pass changes nothing
    # nothing removed that is wanted, nothing added that is there already
    assert not set(changes.remove_fdb) & state.fdb
    assert not set(changes.add_fdb) & observed.fdb
    assert not set(changes.remove_neigh) & state.neigh
    assert not set(changes.add_neigh) & observed.neigh


@settings(max_examples=200, deadline=None)
@given(_endpoints, _nodes)
def test_the_desired_state_does_not_depend_on_the_order_of_the_endpoints(
        endpoints: list[Endpoint], local: IPv4Address) -> None:
    assert desired_forwarding(endpoints, local) == desired_forwarding(endpoints[::-1], local)


@settings(max_examples=100, deadline=None)
@given(_endpoints)
def test_entries_hashed_once_are_found_by_entries_made_anew(endpoints: list[Endpoint]) -> None:
    """Endpoints and their entries keep their hash (linkd.core.hash_once): an equal value
    made anew, or by `replace`, is the same key."""
    from dataclasses import replace

    seen = {e: e.fdb for e in endpoints}
    for e in endpoints:
        again = Endpoint(e.mac, e.address, e.node)
        assert again in seen and again.fdb in set(seen.values()) and again.neigh == e.neigh
        moved = replace(e, node=IPv4Address("198.18.255.254"))
        assert moved.fdb == FdbEntry(e.mac, IPv4Address("198.18.255.254"))
        assert (moved in seen) == any(x == moved for x in endpoints)
