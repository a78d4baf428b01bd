"""A node's membership against a real three-member etcd (tests/etcd.py): registration
under a lease, keep-alive, expiry, a name held by a live node, a member killed, all of
etcd stopped and back.

One cluster serves the tests that leave etcd running, each under a prefix of its own;
the tests that kill members get a cluster of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator

import pytest

from linkd.core import cluster
from linkd.errors import ConflictError
from linkd.runtime.cluster.etcd import Etcd, resolve
from linkd.runtime.cluster.membership import Membership, join
from tests.etcd import EtcdCluster

TTL = 2


def config_for(etcd: EtcdCluster, name: str, prefix: str, **labels: str
               ) -> cluster.ClusterConfig:
    base = cluster.config(etcd.cluster_flag, name, "127.0.0.1",
                          [f"{k}={v}" for k, v in labels.items()], TTL)
    return cluster.ClusterConfig(base.endpoints, base.name, base.address, base.labels,
                                 base.ttl, prefix)


@pytest.fixture
def prefix() -> str:
    return f"/t{secrets.token_hex(4)}/"


@contextlib.asynccontextmanager
async def running(member: Membership) -> AsyncIterator[asyncio.Task[None]]:
    """`member` keeping its lease alive; it leaves afterwards."""
    task = asyncio.create_task(member.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await member.leave()


async def names_in(etcd: EtcdCluster, prefix: str) -> list[str]:
    """The node names etcd holds under `prefix`, read by a client of the test's own."""
    endpoints = cluster.parse_endpoints(etcd.cluster_flag)
    client = Etcd(resolve(endpoints), 2.0)
    try:
        items, _ = await client.read_prefix(cluster.nodes_prefix(prefix))
    finally:
        await client.close()
    return [cluster.name_of_key(key, prefix) for key, _ in items]


async def until(predicate: object, timeout: float, what: str) -> float:
    """Seconds until `predicate()` (a coroutine function or function) holds."""
    start = time.monotonic()
    while True:
        got = predicate()  # type: ignore[operator]
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


async def test_a_node_registers_and_sees_itself(shared_etcd: EtcdCluster, prefix: str
                                                ) -> None:
    member = await join(config_for(shared_etcd, "db1", prefix, zone="a"))
    async with running(member):
        assert member.state == "ready"
        assert await names_in(shared_etcd, prefix) == ["db1"]
        view = await member.view()
        assert view["state"] == "ready" and view["node"] == "db1"
        (node,) = view["nodes"]
        assert node["self"] is True and node["state"] == "ready"
        assert node["address"] == "127.0.0.1" and node["labels"] == {"zone": "a"}


async def test_keep_alive_holds_the_record_beyond_the_ttl(shared_etcd: EtcdCluster,
                                                          prefix: str) -> None:
    member = await join(config_for(shared_etcd, "web1", prefix))
    async with running(member):
        await asyncio.sleep(TTL * 2 + 0.5)
        assert await names_in(shared_etcd, prefix) == ["web1"]
        assert member.state == "ready"


async def test_a_node_whose_keep_alive_stopped_expires(shared_etcd: EtcdCluster,
                                                       prefix: str) -> None:
    """Joined, never kept alive (a daemon killed with -9): gone within the TTL, and the
    other nodes stop listing it."""
    watcher = await join(config_for(shared_etcd, "watcher", prefix))
    async with running(watcher):
        dead = await join(config_for(shared_etcd, "dead", prefix))
        assert {n["name"] for n in (await watcher.view())["nodes"]} == {"watcher", "dead"}
        start = time.monotonic()
        await until(lambda: _listed(watcher, "dead", False), TTL + 1.5, "dead to expire")
        assert time.monotonic() - start <= TTL + 1.5
        assert await names_in(shared_etcd, prefix) == ["watcher"]
        await dead._close()  # its client only: its lease is long gone


async def _listed(member: Membership, name: str, wanted: bool) -> bool:
    names = {n["name"] for n in (await member.view())["nodes"]}
    return (name in names) == wanted


async def test_a_name_held_by_a_live_node_is_refused(shared_etcd: EtcdCluster,
                                                     prefix: str) -> None:
    first = await join(config_for(shared_etcd, "db1", prefix))
    async with running(first):
        second_config = cluster.ClusterConfig(
            first.config.endpoints, "db1", "127.0.0.2", {}, TTL, prefix)
        with pytest.raises(ConflictError) as caught:
            await join(second_config)
        assert "node name db1 is held by a live node at 127.0.0.1" in str(caught.value)
        assert "--node-name" in str(caught.value)
        assert await names_in(shared_etcd, prefix) == ["db1"]
        assert (await first.view())["nodes"][0]["address"] == "127.0.0.1"


async def test_leaving_removes_the_record_at_once(shared_etcd: EtcdCluster, prefix: str
                                                  ) -> None:
    member = await join(config_for(shared_etcd, "api1", prefix))
    assert await names_in(shared_etcd, prefix) == ["api1"]
    await member.leave()
    assert await names_in(shared_etcd, prefix) == []


async def test_a_garbled_record_is_set_aside(shared_etcd: EtcdCluster, prefix: str) -> None:
    member = await join(config_for(shared_etcd, "n1", prefix))
    async with running(member):
        client = member._client()
        lease = await client.grant(TTL)
        key = cluster.nodes_prefix(prefix) + b"evil"
        await client.create(key, b'{"v": 1, "name": "evil", "address": "x"' * 500, lease)
        view = await member.view()
        assert [n["name"] for n in view["nodes"]] == ["n1"]
        (bad,) = view["invalid"]
        assert bad["key"].endswith("nodes/evil") and "node record evil" in bad["error"]
        await client.revoke(lease)


async def test_one_member_killed_registration_and_reads_go_on(own_etcd: EtcdCluster) -> None:
    prefix = "/linkd/"
    member = await join(config_for(own_etcd, "a", prefix))
    async with running(member):
        own_etcd.kill(0)  # the first endpoint, the one the address was routed to
        other = await join(config_for(own_etcd, "b", prefix))
        async with running(other):
            await asyncio.sleep(TTL + 0.5)  # keep-alives across the loss
            assert member.state == "ready" and other.state == "ready"
            assert {n["name"] for n in (await member.view())["nodes"]} == {"a", "b"}
            assert {n["name"] for n in (await other.view())["nodes"]} == {"a", "b"}


async def test_without_etcd_the_node_is_disconnected_then_registers_again(
        own_etcd: EtcdCluster) -> None:
    prefix = "/linkd/"
    member = await join(config_for(own_etcd, "a", prefix))
    other = await join(config_for(own_etcd, "b", prefix))
    first_lease = member._lease
    async with running(member), running(other):
        assert len((await member.view())["nodes"]) == 2  # seen while connected
        own_etcd.stop()
        took = await until(lambda: member.state == "disconnected", TTL + 3, "disconnected")
        view = await member.view()  # answers from what it last saw, without raising
        assert view["state"] == "disconnected" and view["error"]
        states = {n["name"]: n["state"] for n in view["nodes"]}
        assert states == {"a": "disconnected", "b": "unknown"}
        await asyncio.sleep(TTL)  # longer than the lease: etcd's own expiry cannot help
        await asyncio.to_thread(own_etcd.restart)
        back = await until(lambda: member.state == "ready", 10, "ready again")
        assert member._lease is not None and member._lease != first_lease
        await until(lambda: other.state == "ready", 10, "the other ready again")
        assert sorted(await names_in(own_etcd, prefix)) == ["a", "b"]
        print(f"disconnected after {took:.2f} s; back {back:.2f} s after etcd")


async def test_a_node_started_without_etcd_runs_disconnected() -> None:
    from tests.etcd import free_ports

    (port,) = free_ports("127.0.0.1", 1)
    config = cluster.config(f"http://127.0.0.1:{port}", "lonely", None, [], TTL)
    member = await join(config, wait=0.5)
    try:
        assert member.state == "disconnected" and member.record.address == "127.0.0.1"
        view = await member.view()
        assert [n["name"] for n in view["nodes"]] == ["lonely"]
        assert view["nodes"][0]["state"] == "disconnected"
        assert await member.tick() <= 1.0  # tries again soon, without raising
    finally:
        await member.leave()


async def test_the_api_lists_nodes_or_says_how_to_join(shared_etcd: EtcdCluster,
                                                       prefix: str) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from linkd.runtime.daemon import api
    from linkd.runtime.daemon.daemon import Daemon

    daemon = Daemon()
    async with TestClient(TestServer(api.make_app(daemon))) as client:
        response = await client.get("/v1/nodes")
        assert response.status == 409
        message = (await response.json())["error"]["message"]
        assert "not in a cluster" in message and "linkd daemon --cluster" in message
        daemon.cluster = await join(config_for(shared_etcd, "n1", prefix, zone="b"))
        async with running(daemon.cluster):
            other = await join(config_for(shared_etcd, "n2", prefix))
            async with running(other):
                response = await client.get("/v1/nodes")
                assert response.status == 200
                body = await response.json()
                assert body["node"] == "n1" and body["state"] == "ready"
                assert [(n["name"], n["self"], n["labels"]) for n in body["nodes"]] == [
                    ("n1", True, {"zone": "b"}), ("n2", False, {})]


async def test_a_name_taken_while_away_is_a_conflict_until_it_is_free(
        shared_etcd: EtcdCluster, prefix: str) -> None:
    """The node's lease ends (as after a long loss), another node takes its name: the
    node says `conflict`, keeps its stacks, and registers once the name is free."""
    member = await join(config_for(shared_etcd, "a", prefix))
    try:
        assert member._lease is not None
        await member._client().revoke(member._lease)  # its lease gone, as if expired
        taker = await join(cluster.ClusterConfig(
            member.config.endpoints, "a", "127.0.0.9", {}, TTL, prefix))
        assert await member.tick() == 0  # the keep-alive finds the lease gone
        await member.tick()
        assert member.state == "conflict" and "held by a live node at 127.0.0.9" in str(
            member.error)
        view = await member.view()
        assert sorted((n["address"], n["self"], n["state"]) for n in view["nodes"]) == [
            ("127.0.0.1", True, "conflict"), ("127.0.0.9", False, "ready")]
        await taker.leave()
        await member.tick()
        assert member.state == "ready"
        (node,) = (await member.view())["nodes"]
        assert node["address"] == "127.0.0.1" and node["self"]
    finally:
        await member.leave()
