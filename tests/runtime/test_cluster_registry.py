"""Overlay networks' VNIs, subnets and addresses claimed cluster-wide, against a real
three-member etcd (tests/etcd.py): two registries on two clients of their own stand
for two nodes racing each other.

One etcd cluster serves every test, each under a prefix of its own.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections.abc import AsyncIterator
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest

from linkd.core import cluster, cluster_ipam, overlay
from linkd.errors import ConflictError
from linkd.runtime.cluster.etcd import Etcd, Put, resolve
from linkd.runtime.cluster.registry import Registry
from tests.etcd import EtcdCluster


@pytest.fixture
async def nodes(shared_etcd: EtcdCluster) -> AsyncIterator[tuple[Registry, Registry]]:
    """Two registries, as two nodes: each its own etcd client, one prefix for the test."""
    prefix = f"/t{secrets.token_hex(4)}/"
    endpoints = resolve(cluster.parse_endpoints(shared_etcd.cluster_flag))
    clients = [Etcd(endpoints, 3.0), Etcd(endpoints, 3.0)]
    try:
        yield Registry(clients[0], "node-a", prefix), Registry(clients[1], "node-b", prefix)
    finally:
        for client in clients:
            await client.close()


async def test_addresses_claimed_at_once_by_two_nodes_are_never_the_same(
        nodes: tuple[Registry, Registry]) -> None:
    a, b = nodes
    record = await a.claim_network("shop/back")
    # each node its own owners, racing for the same lowest addresses; and some owners
    # claimed from both nodes at once
    claims = [(a, f"shop/a{i}") for i in range(30)] + [(b, f"shop/b{i}") for i in range(30)]
    claims += [(r, f"shop/both{i}") for i in range(10) for r in (a, b)]
    got = await asyncio.gather(*(r.claim_address("shop/back", o) for r, o in claims))
    by_owner: dict[str, set[IPv4Address]] = {}
    for (_, owner), address in zip(claims, got, strict=True):
        by_owner.setdefault(owner, set()).add(address)
    assert all(len(addresses) == 1 for addresses in by_owner.values()), by_owner
    assigned = {next(iter(v)): k for k, v in by_owner.items()}
    owners = by_owner
    assert len(assigned) == len(owners) == 70  # no two owners share one
    assert await b.addresses("shop/back") == assigned
    assert all(ip in record.subnet and ip not in (record.gateway, record.subnet.network_address,
                                                 record.subnet.broadcast_address)
               for ip in assigned)
    # the lowest addresses, none skipped: .2 (after the gateway) upwards
    first = int(record.subnet.network_address)
    assert sorted(assigned) == [IPv4Address(first + 2 + i) for i in range(len(owners))]


async def test_a_released_owner_gets_its_address_back(nodes: tuple[Registry, Registry]
                                                      ) -> None:
    a, b = nodes
    await a.claim_network("shop/front")
    web = await a.claim_address("shop/front", "shop/web")
    assert await a.claim_address("shop/front", "shop/web") == web  # idempotent
    api = await b.claim_address("shop/front", "shop/api")
    assert await a.release_address("shop/front", "shop/web") == web
    assert await a.release_address("shop/front", "shop/web") is None  # idempotent
    assert web not in await a.addresses("shop/front")
    # a newcomer does not take web's sticky address while another is free
    db = await b.claim_address("shop/front", "shop/db")
    assert db not in (web, api)
    assert await b.claim_address("shop/front", "shop/web") == web  # from the other node
    assert (await a.leases("shop/front"))["shop/web"] == web


async def test_a_sticky_address_taken_meanwhile_is_not_shared(
        nodes: tuple[Registry, Registry]) -> None:
    a, b = nodes
    record = await a.claim_network("s/n", prefix=24)
    # newcomers fill a /24: the last one, finding no other, takes web's sticky address;
    # web, coming back, gets none, then the one a newcomer leaves
    web = await a.claim_address("s/n", "s/web")
    await a.release_address("s/n", "s/web")
    hosts = len(list(record.subnet.hosts())) - 1  # without the gateway
    await asyncio.gather(*(b.claim_address("s/n", f"s/x{i}") for i in range(hosts)))
    held = await a.addresses("s/n")
    assert web in held and held[web] != "s/web"
    with pytest.raises(ConflictError, match="no free address"):
        await a.claim_address("s/n", "s/web")
    await b.release_address("s/n", "s/x0")
    back = await a.claim_address("s/n", "s/web")
    assert back != web and (await a.addresses("s/n"))[back] == "s/web"


async def test_a_network_claimed_by_two_nodes_at_once_gets_one_record(
        nodes: tuple[Registry, Registry]) -> None:
    a, b = nodes
    first, second = await asyncio.gather(a.claim_network("shop/x"), b.claim_network("shop/x"))
    assert first == second
    assert first.vni == overlay.vni_for("shop/x")
    vnis, _ = await a.etcd.read_prefix(cluster_ipam.vnis_prefix(a.prefix))
    subnets, _ = await a.etcd.read_prefix(cluster_ipam.subnets_prefix(a.prefix))
    assert vnis == [(cluster_ipam.vni_key(first.vni, a.prefix), b"shop/x")]
    assert subnets == [(cluster_ipam.subnet_key(first.subnet, a.prefix), b"shop/x")]
    assert await b.claim_network("shop/x") == first  # idempotent


def colliding_ids() -> tuple[str, str]:
    """Two network ids whose hashed VNIs are the same (24 bits: a few thousand tries)."""
    seen: dict[int, str] = {}
    for i in itertools.count():
        network_id = f"s{i}/net"
        vni = overlay.vni_for(network_id)
        if vni in seen:
            return seen[vni], network_id
        seen[vni] = network_id
    raise AssertionError("unreachable")


async def test_networks_whose_vnis_collide_get_different_ones(
        nodes: tuple[Registry, Registry]) -> None:
    a, b = nodes
    one, two = colliding_ids()
    wanted = overlay.vni_for(one)
    first, second = await asyncio.gather(a.claim_network(one), b.claim_network(two))
    assert {first.vni, second.vni} == {wanted, overlay.allocate_vni(two, [wanted])}
    assert first.vni != second.vni
    # a VNI held by something else (another tool's key, or a network of another layout)
    # is skipped too
    taken = overlay.vni_for("s/third")
    await a.etcd.txn([], [Put(cluster_ipam.vni_key(taken, a.prefix), b"other/net")])
    third = await b.claim_network("s/third")
    assert third.vni != taken


async def test_subnets_never_overlap(nodes: tuple[Registry, Registry]) -> None:
    a, b = nodes
    ids = [f"st{i}/n" for i in range(12)]
    records = await asyncio.gather(*(r.claim_network(i) for i in ids for r in (a, b)))
    unique = {r.id: r for r in records}
    assert len(unique) == len(ids)
    assert all(r == unique[r.id] for r in records)  # both nodes got the same record
    subnets = [r.subnet for r in unique.values()]
    for one, two in itertools.combinations(subnets, 2):
        assert not one.overlaps(two)
    assert len({r.vni for r in unique.values()}) == len(ids)
    # what a node has of its own (a route, a local network) is avoided too
    avoided = IPv4Network("10.87.12.0/24")
    assert (await a.claim_network("late/n", [(avoided, "route via eth1")])).subnet != avoided


async def test_a_network_is_released_only_when_empty(nodes: tuple[Registry, Registry]
                                                     ) -> None:
    a, b = nodes
    record = await a.claim_network("gone/n")
    await b.claim_address("gone/n", "gone/c")
    with pytest.raises(ConflictError, match="still has 1 address"):
        await a.release_network("gone/n")
    await b.release_address("gone/n", "gone/c")
    assert await a.release_network("gone/n") is True
    assert await a.release_network("gone/n") is False  # idempotent
    assert await b.network("gone/n") is None
    for head in (cluster_ipam.vnis_prefix(a.prefix), cluster_ipam.subnets_prefix(a.prefix),
                 cluster_ipam.network_children("gone/n", a.prefix)):
        assert (await a.etcd.read_prefix(head))[0] == []
    with pytest.raises(ConflictError, match="claim the network first"):
        await a.claim_address("gone/n", "gone/c")
    again = await b.claim_network("gone/n")
    assert again.subnet == record.subnet and again.creator == "node-b"


class PausedEtcd(Etcd):
    """A client whose next transaction waits for `go`: a node slowed between reading
    and claiming, so another can act in between."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.paused = asyncio.Event()
        self.go = asyncio.Event()
        self.armed = False

    async def txn(self, *args: Any, **kwargs: Any) -> Any:
        if self.armed:
            self.armed = False
            self.paused.set()
            await self.go.wait()
        return await super().txn(*args, **kwargs)


async def test_an_owner_never_holds_two_addresses(shared_etcd: EtcdCluster,
                                                  nodes: tuple[Registry, Registry]) -> None:
    """A picks .2 for o and is held up; meanwhile z takes .2, o gets .3 from B and z
    leaves .2: A's claim, whose address is free again, must still not give o a second
    address (o's lease changed since A read it)."""
    _, b = nodes
    slow = PausedEtcd(resolve(cluster.parse_endpoints(shared_etcd.cluster_flag)), 3.0)
    try:
        a = Registry(slow, "node-a", b.prefix)
        record = await b.claim_network("s/n")
        slow.armed = True
        claim = asyncio.create_task(a.claim_address("s/n", "s/o"))
        await slow.paused.wait()
        z = await b.claim_address("s/n", "s/z")
        o = await b.claim_address("s/n", "s/o")
        assert (z, o) == (record.gateway + 1, record.gateway + 2)
        await b.release_address("s/n", "s/z")
        slow.go.set()
        assert await claim == o
        assert await b.addresses("s/n") == {o: "s/o"}
    finally:
        await slow.close()


async def test_a_network_s_name_is_claimed_with_it_and_found_from_any_node(
        nodes: tuple[Registry, Registry]) -> None:
    a, b = nodes
    made = await a.claim_network("shop/back", name="shop_back")
    assert made.name == "shop_back"
    assert await b.find("shop_back") == made  # another node joins it by name
    assert await b.find("nothing_here") is None
    # Another network of that name, from either node, is refused and makes nothing.
    with pytest.raises(ConflictError, match="network shop_back exists in the cluster"):
        await b.claim_network("other/back", name="shop_back")
    assert await b.network("other/back") is None
    assert len((await a.etcd.read_prefix(cluster_ipam.vnis_prefix(a.prefix)))[0]) == 1
    # The name goes with the network, and is free again.
    assert await b.release_network("shop/back") is True
    assert await a.find("shop_back") is None
    assert (await a.claim_network("other/back", name="shop_back")).name == "shop_back"
