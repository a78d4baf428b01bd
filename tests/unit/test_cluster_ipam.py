"""Overlay networks' etcd layout (linkd.core.cluster_ipam): keys, records and the order
candidates are tried in. Records come from other nodes, so decoding takes hostile
input: golden cases, then generated ones."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linkd.core import cluster_ipam as c
from linkd.core.cluster import RecordError
from linkd.core.cluster_ipam import NetworkRecord
from linkd.core.overlay import VNI_MAX
from linkd.errors import ConflictError

P = "/linkd/"
RECORD = NetworkRecord("shop/back", IPv4Network("10.87.3.0/24"), 4242, "db1")
KEY = b"/linkd/v1/networks/shop/back"


def test_keys() -> None:
    assert c.network_key("shop/back", P) == KEY
    assert c.vni_key(4242, P) == b"/linkd/v1/vnis/4242"
    assert c.subnet_key(RECORD.subnet, P) == b"/linkd/v1/subnets/10.87.3.0/24"
    assert c.address_key("shop/back", IPv4Address("10.87.3.2"), P) == \
        b"/linkd/v1/networks/shop/back/addresses/10.87.3.2"
    assert c.lease_key("shop/back", "shop/web-1", P) == \
        b"/linkd/v1/networks/shop/back/leases/shop/web-1"
    assert c.vni_of_key(c.vni_key(4242, P), P) == 4242
    assert c.subnet_of_key(c.subnet_key(RECORD.subnet, P), P) == RECORD.subnet
    assert c.address_of_key(c.address_key("shop/back", IPv4Address("10.87.3.2"), P),
                            "shop/back", P) == IPv4Address("10.87.3.2")


@pytest.mark.parametrize("bad", ["shop", "a/b/c", "/b", "a/", "a/..", "./b", "a b/c",
                                 "a/" + "x" * 129, "é/b"])
def test_ids_and_owners_are_two_names(bad: str) -> None:
    assert c.pair_problem(bad, "network id")
    with pytest.raises(ValueError):
        c.network_key(bad, P)
    with pytest.raises(ValueError):
        c.lease_key("shop/back", bad, P)


@pytest.mark.parametrize("key", [b"/linkd/v1/vnis/0", b"/linkd/v1/vnis/16777216",
                                 b"/linkd/v1/vnis/-1", b"/linkd/v1/vnis/1e3",
                                 b"/linkd/v1/vnis/\xff", b"/other/v1/vnis/5"])
def test_bad_vni_keys_are_refused(key: bytes) -> None:
    with pytest.raises(RecordError):
        c.vni_of_key(key, P)


@pytest.mark.parametrize("tail", [b"10.87.3.1/24", b"10.87.3.0", b"10.87.03.0/24",
                                  b"fd00::/64", b"x"])
def test_bad_subnet_keys_are_refused(tail: bytes) -> None:
    with pytest.raises(RecordError):
        c.subnet_of_key(c.subnets_prefix(P) + tail, P)


def test_record_round_trip() -> None:
    assert c.decode_network(KEY, c.encode_network(RECORD), "shop/back", P) == RECORD
    assert RECORD.gateway == IPv4Address("10.87.3.1")


def _body(**change: object) -> bytes:
    body: dict[str, object] = {"v": 1, "id": "shop/back", "subnet": "10.87.3.0/24",
                               "vni": 4242, "creator": "db1"}
    body.update(change)
    return json.dumps(body).encode()


@pytest.mark.parametrize("value,match", [
    (b"x" * 2000, "at most 1024 bytes"),
    (b"[1]", "JSON object"),
    (b"\xff", "not JSON"),
    (b"[" * 1000, "not JSON|JSON object"),
    (_body(v=2), "layout"),
    (_body(id="shop/front"), "id: expected shop/back"),
    (_body(subnet="10.87.3.1/24"), "subnet"),
    (_body(subnet="10.87.3.0/31"), "subnet"),
    (_body(subnet=["10.87.3.0/24"]), "subnet"),
    (_body(vni=0), "vni"),
    (_body(vni=VNI_MAX + 1), "vni"),
    (_body(vni=True), "vni"),
    (_body(vni="5"), "vni"),
    (_body(creator="Not A Host!"), "creator"),
    (_body(creator="\x1b[2J"), "creator"),
])
def test_hostile_records_are_refused(value: bytes, match: str) -> None:
    with pytest.raises(RecordError, match=match) as caught:
        c.decode_network(KEY, value, "shop/back", P)
    assert len(str(caught.value)) < 400 and "\n" not in str(caught.value)


def test_a_record_under_another_networks_key_is_refused() -> None:
    with pytest.raises(RecordError, match="not the key"):
        c.decode_network(c.network_key("shop/front", P), c.encode_network(RECORD),
                         "shop/back", P)


@pytest.mark.parametrize("value", [b"", b"a", b"a/b/c", b"\xff/x", b"a/" + b"x" * 400])
def test_hostile_index_and_owner_values_are_refused(value: bytes) -> None:
    with pytest.raises(RecordError):
        c.decode_pair(value, "owner", b"k")


@pytest.mark.parametrize("value", [b"", b"10.87.3.256", b"10.87.3.02", b"::1",
                                   b"1" * 100, b"\xff"])
def test_hostile_lease_values_are_refused(value: bytes) -> None:
    with pytest.raises(RecordError):
        c.decode_address(value, b"k")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1500))
def test_any_bytes_decode_or_are_refused(value: bytes) -> None:
    for decode in (lambda: c.decode_network(KEY, value, "shop/back", P),
                   lambda: c.decode_pair(value, "owner", KEY),
                   lambda: c.decode_address(value, KEY)):
        try:
            decode()
        except RecordError as exc:
            assert len(str(exc)) < 600


names = st.from_regex(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,20}", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(names, names, st.integers(0, 255), st.integers(8, 30),
       st.integers(1, VNI_MAX), st.from_regex(r"[a-z0-9]{1,10}", fullmatch=True))
def test_records_round_trip(stack: str, net: str, octet: int, bits: int, vni: int,
                            creator: str) -> None:
    network_id = f"{stack}/{net}"
    subnet = IPv4Network((f"10.{octet}.0.0", bits), strict=False)
    record = NetworkRecord(network_id, subnet, vni, creator)
    key = c.network_key(network_id, P)
    assert c.decode_network(key, c.encode_network(record), network_id, P) == record
    assert c.decode_pair(network_id.encode(), "network id", key) == network_id
    address = subnet.network_address + 1
    assert c.address_of_key(c.address_key(network_id, address, P), network_id, P) == address
    assert c.decode_address(str(address).encode(), key) == address


# -- candidates -------------------------------------------------------------------------


def ip(last: int) -> IPv4Address:
    return IPv4Address(f"10.87.3.{last}")


def test_a_fresh_owner_gets_the_lowest_free_address_after_the_gateway() -> None:
    assert c.pick_address(RECORD, "s/a", set(), None) == ip(2)
    assert c.pick_address(RECORD, "s/a", {ip(2), ip(3)}, None) == ip(4)


def test_the_sticky_address_comes_first_when_free() -> None:
    assert c.pick_address(RECORD, "s/a", {ip(2)}, ip(9)) == ip(9)
    assert c.pick_address(RECORD, "s/a", {ip(9)}, ip(9)) == ip(2)  # taken: the lowest


def test_a_sticky_address_outside_the_subnet_or_on_its_edges_is_not_used() -> None:
    for sticky in (IPv4Address("10.87.4.9"), ip(0), ip(255)):
        assert c.pick_address(RECORD, "s/a", set(), sticky) == ip(2)


def test_others_sticky_addresses_are_avoided_while_others_are_free() -> None:
    assert c.pick_address(RECORD, "s/a", {ip(2)}, None, {ip(3), ip(4)}) == ip(5)
    small = NetworkRecord("s/n", IPv4Network("10.87.3.0/29"), 1, "n")  # .2 to .6
    taken = {ip(2), ip(3), ip(4)}
    assert c.pick_address(small, "s/a", taken, None, {ip(5), ip(6)}) == ip(5)
    with pytest.raises(ConflictError, match="no free address"):
        c.pick_address(small, "s/a", taken | {ip(5), ip(6)}, None)


@settings(max_examples=200, deadline=None)
@given(st.sets(st.integers(0, 255), max_size=260), st.one_of(st.none(), st.integers(0, 255)),
       st.sets(st.integers(0, 255), max_size=40))
def test_candidates_are_free_hosts_never_an_edge(taken: set[int], sticky: int | None,
                                                 others: set[int]) -> None:
    held = {ip(n) for n in taken}
    try:
        got = c.pick_address(RECORD, "s/a", held, ip(sticky) if sticky is not None else None,
                             {ip(n) for n in others})
    except ConflictError:
        assert set(range(2, 255)) <= taken
        return
    assert got not in held and got not in (ip(0), ip(1), ip(255))
    if sticky is not None and 2 <= sticky <= 254 and sticky not in taken:
        assert got == ip(sticky)
    elif not set(range(2, 255)) - taken - others <= {sticky}:
        assert got not in {ip(n) for n in others}
        free = sorted(set(range(2, 255)) - taken - others)
        assert got == ip(free[0])


def test_subnets_come_from_linkds_pool_first_fit() -> None:
    assert c.pick_subnet("s/n", [], prefix=24) == IPv4Network("10.87.0.0/24")
    taken = [IPv4Network("10.87.0.0/24"), IPv4Network("10.87.1.0/24")]
    assert c.pick_subnet("s/n", taken, prefix=24) == IPv4Network("10.87.2.0/24")
    avoid = [(IPv4Network("10.87.2.0/23"), "route via eth1")]
    assert c.pick_subnet("s/n", taken, avoid, prefix=24) == IPv4Network("10.87.4.0/24")
    full = [IPv4Network("10.87.0.0/16")]
    with pytest.raises(ConflictError, match="no free /24"):
        c.pick_subnet("s/n", full, prefix=24)


def test_an_overlay_network_gets_a_22_room_for_every_node_s_containers() -> None:
    assert c.pick_subnet("s/n", []) == IPv4Network("10.87.0.0/22")
    local = [(IPv4Network("10.87.1.0/24"), "stack shop network front")]
    assert c.pick_subnet("s/n", [IPv4Network("10.87.4.0/22")], local) == IPv4Network(
        "10.87.8.0/22")
