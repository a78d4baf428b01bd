"""Endpoint records published and watched, against a real three-member etcd
(tests/etcd.py): nodes are a Membership (a lease kept alive) and an Endpoints each, on
clients of their own, as two daemons would be.

A node cut off from etcd while etcd lives goes through `Cuttable`, TCP forwarders the
test resets and refuses at will (a network cut, with etcd and the other node left
alone). One etcd serves the tests that leave it running, each under a prefix of its
own; the tests that kill members get one of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from ipaddress import IPv4Address

import pytest

from linkd.core import cluster
from linkd.core.cluster_endpoints import (
    EndpointRecord,
    encode_endpoint,
    endpoint_key_of,
    endpoints_prefix,
)
from linkd.runtime.cluster import etcd as etcd_module
from linkd.runtime.cluster.endpoints import Endpoints, for_member
from linkd.runtime.cluster.etcd import Etcd, WatchCompacted, resolve
from linkd.runtime.cluster.membership import Membership, join
from tests.etcd import EtcdCluster

TTL = 2
LINKD = "linkd"


@pytest.fixture
def prefix() -> str:
    return f"/t{secrets.token_hex(4)}/"


def record(node: str, container: str, n: int, network: str = "shop/back",
           ready: bool = True) -> EndpointRecord:
    return EndpointRecord(
        network=network, node=node, underlay=IPv4Address("127.0.0.1"), stack="shop",
        container=container, service="web", replica=1, hostname=container, aliases=("api",),
        address=IPv4Address(f"10.87.{n // 250}.{n % 250 + 2}"), address6=None,
        mac=f"02:42:0a:57:{n // 256:02x}:{n % 256:02x}", ready=ready,
        ports=((80, "tcp", "http"),))


@contextlib.asynccontextmanager
async def node(flag: str, name: str, prefix: str, *, keep_alive: bool = True
               ) -> AsyncIterator[tuple[Membership, Endpoints]]:
    """A node: its membership (kept alive unless told) and its endpoint records, started;
    stopped and gone afterwards."""
    base = cluster.config(flag, name, "127.0.0.1", [], TTL)
    member = await join(cluster.ClusterConfig(base.endpoints, name, "127.0.0.1", {}, TTL,
                                              prefix))
    task = asyncio.create_task(member.run()) if keep_alive else None
    endpoints = for_member(member)
    endpoints.start()
    try:
        yield member, endpoints
    finally:
        await endpoints.stop()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await member.leave()


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until `predicate()` holds."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


def holds(endpoints: Endpoints, *records: EndpointRecord) -> Callable[[], bool]:
    """Whether `endpoints` believes exactly `records`."""
    wanted = sorted(records, key=lambda r: endpoint_key_of(r, endpoints.prefix))
    return lambda: endpoints.records() == wanted


def client(flag: str) -> Etcd:
    return Etcd(resolve(cluster.parse_endpoints(flag)), 2.0)


class Cuttable:
    """A TCP forwarder in front of each etcd member: `cut()` resets every connection and
    refuses new ones until `heal()`."""

    def __init__(self, etcd: EtcdCluster) -> None:
        self.targets = [m.client_port for m in etcd.members]
        self.cut_off = False
        self._servers: list[asyncio.Server] = []
        self._links: set[asyncio.StreamWriter] = set()

    @property
    def flag(self) -> str:
        return ",".join(f"http://127.0.0.1:{s.sockets[0].getsockname()[1]}"
                        for s in self._servers)

    async def start(self) -> None:
        for port in self.targets:
            self._servers.append(await asyncio.start_server(
                lambda r, w, port=port: self._serve(port, r, w), "127.0.0.1", 0))

    async def _serve(self, port: int, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        if self.cut_off:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            writer.transport.abort()
            return
        self._links |= {writer, up_writer}
        try:
            await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                self._links.discard(w)
                w.transport.abort()

    def cut(self) -> None:
        self.cut_off = True
        for writer in list(self._links):
            writer.transport.abort()

    def heal(self) -> None:
        self.cut_off = False

    async def close(self) -> None:
        self.cut()
        for server in self._servers:
            server.close()
            await server.wait_closed()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.transport.abort()


@contextlib.asynccontextmanager
async def cuttable(etcd: EtcdCluster) -> AsyncIterator[Cuttable]:
    proxy = Cuttable(etcd)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


# -- two nodes -------------------------------------------------------------------------


async def test_two_nodes_see_each_others_records(shared_etcd: EtcdCluster, prefix: str
                                                 ) -> None:
    flag = shared_etcd.cluster_flag
    async with node(flag, "a", prefix) as (_, a), node(flag, "b", prefix) as (_, b):
        mine = [record("a", f"web-{i}", i) for i in range(3)]
        theirs = [record("b", "db-1", 10, "shop/front", ready=False),
                  record("b", "db-1", 11)]  # one container on two networks
        for r in mine:
            a.want(r)
        for r in theirs:
            b.want(r)
        everything = mine + theirs
        await until(holds(a, *everything), 5, "a to see every record")
        await until(holds(b, *everything), 5, "b to see every record")
        assert a.state == b.state == "watching" and not a.invalid()

        # from a's want to b's cache, 30 times
        changed = asyncio.Event()
        b.on_change(changed.set)
        took = []
        for i in range(30):
            new = record("a", f"lat-{i}", 100 + i)
            start = time.perf_counter()
            a.want(new)
            while new not in b.records():
                changed.clear()
                if new in b.records():
                    break
                await asyncio.wait_for(changed.wait(), 2)
            took.append(time.perf_counter() - start)
        took.sort()
        p50, worst = took[len(took) // 2], took[-1]
        print(f"want -> the other node's cache: p50 {p50 * 1000:.1f} ms, "
              f"max {worst * 1000:.1f} ms")
        assert worst < 0.5


async def test_unwant_deletes_everywhere(shared_etcd: EtcdCluster, prefix: str) -> None:
    flag = shared_etcd.cluster_flag
    async with node(flag, "a", prefix) as (_, a), node(flag, "b", prefix) as (_, b):
        web, api = record("a", "web-1", 1), record("a", "api-1", 2)
        a.want(web)
        a.want(api)
        await until(holds(b, api, web), 5, "b to see both")
        a.unwant("shop/back", "shop", "web-1")
        a.unwant("shop/back", "shop", "never-there")  # no error
        await until(holds(b, api), 5, "web to go from b")
        await until(holds(a, api), 5, "web to go from a")
        etcd = client(flag)
        try:
            got = await etcd.snapshot(endpoints_prefix(prefix))
            assert [kv.key for kv in got.items] == [endpoint_key_of(api, prefix)]
        finally:
            await etcd.close()
        # a changed record is put again, and seen changed
        a.want(record("a", "api-1", 2, ready=False))
        await until(holds(b, record("a", "api-1", 2, ready=False)), 5, "api not ready")


async def test_withdraw_all_and_stop(shared_etcd: EtcdCluster, prefix: str) -> None:
    """`stop` deletes nothing (the lease's end does); `withdraw_all` deletes at once."""
    flag = shared_etcd.cluster_flag
    async with node(flag, "b", prefix) as (_, b), node(flag, "a", prefix) as (member, a):
        ours = [record("a", f"web-{i}", i) for i in range(4)]
        for r in ours:
            a.want(r)
        await until(holds(b, *ours), 5, "b to see a's records")
        await a.stop()
        await asyncio.sleep(0.3)
        assert b.records() == sorted(ours, key=lambda r: endpoint_key_of(r, prefix))
        a.start()
        await a.withdraw_all()
        took = await until(holds(b), 2, "a's records to go")
        assert a.wanted() == 0
        assert member.state == "ready"  # the node itself is still there
        print(f"withdrawn from the other node's cache in {took * 1000:.0f} ms")


async def test_a_leaving_or_dead_nodes_records_go(shared_etcd: EtcdCluster, prefix: str
                                                  ) -> None:
    """Revoked (a node that stops): at once. Expired (a node killed, no keep-alive):
    within the TTL, + 1 s."""
    flag = shared_etcd.cluster_flag
    async with node(flag, "b", prefix) as (_, b):
        async with node(flag, "a", prefix) as (member, a):
            a.want(record("a", "web-1", 1))
            await until(holds(b, record("a", "web-1", 1)), 5, "a's record")
            await member.leave()
            took = await until(holds(b), 1, "a's records to go with its lease")
            print(f"revoked: gone from the other node in {took * 1000:.0f} ms")

        registered = time.monotonic()
        async with node(flag, "dead", prefix, keep_alive=False) as (_, dead):
            dead.want(record("dead", "web-1", 1))
            await until(holds(b, record("dead", "web-1", 1)), TTL / 2, "dead's record")
            await until(holds(b), TTL + 1.5, "dead's records to expire")
            took = time.monotonic() - registered
            print(f"expired: gone from the other node {took:.2f} s after the lease began")
            assert took <= TTL + 1
            # its publisher stopped trying with the lease gone: nothing came back
            await asyncio.sleep(0.5)
            assert b.records() == []


async def test_records_are_put_again_under_a_new_lease(shared_etcd: EtcdCluster,
                                                       prefix: str) -> None:
    """The node's lease ends (expired while etcd was away, say); the node registers
    under a new one, and its records come back under it."""
    flag = shared_etcd.cluster_flag
    async with node(flag, "b", prefix) as (_, b), node(flag, "a", prefix) as (member, a):
        ours = [record("a", "web-1", 1), record("a", "web-2", 2)]
        for r in ours:
            a.want(r)
        await until(holds(b, *ours), 5, "a's records")
        old = member.lease
        assert old is not None
        etcd = client(flag)
        try:
            await etcd.revoke(old)  # as if it expired
            await until(holds(b), 2, "a's records to go with the lease")
            took = await until(holds(b, *ours), TTL + 1, "a's records under a new lease")
            assert member.lease not in (None, old)
            got = await etcd.snapshot(endpoints_prefix(prefix))
            assert {kv.lease for kv in got.items} == {member.lease}
            print(f"put again {took:.2f} s after the lease ended")
        finally:
            await etcd.close()


async def test_hostile_records_are_left_out(shared_etcd: EtcdCluster, prefix: str,
                                            caplog: pytest.LogCaptureFixture) -> None:
    flag = shared_etcd.cluster_flag
    good = record("z", "web-1", 1)
    head = endpoints_prefix(prefix)
    hostile = [  # key, value, why it is left out
        (endpoint_key_of(record("z", "bad-json", 2), prefix), b'{"v": 1, "network": ',
         "not JSON"),
        (endpoint_key_of(record("z", "huge", 3), prefix), b"x" * (1 << 20),
         "at most 4096 bytes"),
        # a body that is not its key's: z's record under node y's key
        (endpoint_key_of(record("y", "web-1", 1), prefix), encode_endpoint(good),
         "not the key's"),
        (head + b"shop/back/z/shop", encode_endpoint(good), "not an endpoint's key"),
    ]
    etcd = client(flag)
    caplog.set_level(logging.WARNING, logger=LINKD)
    try:
        await etcd.put(endpoint_key_of(good, prefix), encode_endpoint(good), 0)
        for key, value, _ in hostile[:2]:  # in etcd before the watcher starts
            await etcd.put(key, value, 0)
        async with node(flag, "b", prefix) as (_, b):
            mine = record("b", "db-1", 5)
            b.want(mine)
            await until(holds(b, mine, good), 5, "the good records")
            for key, value, _ in hostile[2:]:  # while it watches
                await etcd.put(key, value, 0)
            await until(lambda: len(b.invalid()) == 4, 5, "4 records left out")
            assert b.records() == sorted([mine, good], key=lambda r: endpoint_key_of(r, prefix))
            problems = b.invalid()
            assert set(problems) == {key for key, _, _ in hostile}
            for key, _, why in hostile:
                assert why in problems[key]
            # a good record overwritten with garbage is no longer believed; made good
            # again, it is
            await etcd.put(endpoint_key_of(good, prefix), b"[]", 0)
            await until(holds(b, mine), 5, "the garbled record to be left out")
            await etcd.put(endpoint_key_of(good, prefix), encode_endpoint(good), 0)
            await until(holds(b, mine, good), 5, "the record made good again")
            # each said once, in a line that does not carry the value
            said = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
            assert len(said) == 5, said
            assert all(len(line) < 600 and "\n" not in line for line in said)
            assert b.state == "watching"
    finally:
        await etcd.close()


async def test_a_watcher_cut_off_catches_up(shared_etcd: EtcdCluster, prefix: str,
                                            caplog: pytest.LogCaptureFixture) -> None:
    """b loses etcd (the network cut, etcd and a alive): b's cache is kept as it was;
    what a deleted and added meanwhile shows once b is back, from where its watch
    stopped (no full read)."""
    caplog.set_level(logging.INFO, logger=LINKD)
    flag = shared_etcd.cluster_flag
    async with cuttable(shared_etcd) as proxy, node(flag, "a", prefix) as (_, a), \
            node(proxy.flag, "b", prefix) as (_, b):
        one, two, three = (record("a", f"web-{i}", i) for i in (1, 2, 3))
        a.want(one)
        a.want(two)
        await until(holds(b, one, two), 5, "b to see a's records")
        proxy.cut()
        await until(lambda: b.state == "disconnected", 3, "b to lose its watch")
        a.unwant("shop/back", "shop", "web-1")
        a.want(three)
        await until(holds(a, two, three), 5, "a's own view")
        await asyncio.sleep(0.5)
        assert b.records() == [one, two]  # kept, as last seen
        proxy.heal()
        took = await until(holds(b, two, three), 5, "b to catch up")
        print(f"caught up {took:.2f} s after the network came back")
        said = " ".join(r.getMessage() for r in caplog.records)
        assert "watching endpoint records again" in said
        assert "reading every endpoint record again" not in said


async def test_a_watcher_back_after_a_compaction_reads_everything(
        shared_etcd: EtcdCluster, prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LINKD)
    flag = shared_etcd.cluster_flag
    async with cuttable(shared_etcd) as proxy, node(flag, "a", prefix) as (_, a), \
            node(proxy.flag, "b", prefix) as (_, b):
        one, two = record("a", "web-1", 1), record("a", "web-2", 2)
        a.want(one)
        await until(holds(b, one), 5, "b to see a's record")
        watched = b.revision
        proxy.cut()
        await until(lambda: b.state == "disconnected", 3, "b to lose its watch")
        a.unwant("shop/back", "shop", "web-1")
        a.want(two)
        await until(holds(a, two), 5, "a's own view")
        etcd = client(flag)
        try:
            now = await etcd.put(f"{prefix}other".encode(), b"x", 0)
            compact(shared_etcd, now)
            with pytest.raises(WatchCompacted):  # said apart from a broken stream
                async with contextlib.aclosing(etcd.watch(endpoints_prefix(prefix),
                                                          watched + 1)) as batches:
                    async for _ in batches:
                        pass
        finally:
            await etcd.close()
        proxy.heal()
        await until(holds(b, two), 5, "b to read everything again")
        said = " ".join(r.getMessage() for r in caplog.records)
        assert "reading every endpoint record again" in said and "compacted" in said


def compact(etcd: EtcdCluster, revision: int) -> None:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    subprocess.run(["/usr/bin/etcdctl", "--endpoints", etcd.cluster_flag, "compact",
                    str(revision)], check=True, capture_output=True, env=env, timeout=10)


async def test_snapshots_read_page_by_page(shared_etcd: EtcdCluster, prefix: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Small pages, and values too big for one answer: everything read, at one
    revision; beyond the limit, said."""
    etcd = client(shared_etcd.cluster_flag)
    head = prefix.encode()
    try:
        big = {head + b"big%d" % i: bytes([65 + i]) * (1 << 20) for i in range(5)}
        small = {head + b"k%03d" % i: b"v%d" % i for i in range(23)}
        for key, value in (big | small).items():
            await etcd.put(key, value, 0)
        monkeypatch.setattr(etcd_module, "PAGE", 4)
        got = await etcd.snapshot(head)
        assert {kv.key: kv.value for kv in got.items} == big | small
        assert [kv.key for kv in got.items] == sorted(big | small)
        assert not got.truncated and got.revision >= max(kv.revision for kv in got.items)
        monkeypatch.setattr(etcd_module, "PAGE", 512)  # five of a megabyte: over 4 MB
        assert len((await etcd.snapshot(head)).items) == 28
        limited = await etcd.snapshot(head, limit=10)
        assert len(limited.items) == 10 and limited.truncated
        cut = await etcd.snapshot(head, max_value=100)  # what is too long is not held
        assert {kv.key: kv.value for kv in cut.items} == {
            k: v[:101] for k, v in (big | small).items()}
    finally:
        await etcd.close()


# -- etcd's members die ----------------------------------------------------------------


async def test_each_member_killed_in_turn_loses_no_record(own_etcd: EtcdCluster) -> None:
    """Whichever member b's watch was on dies at some point: b goes on, and sees what
    a publishes meanwhile."""
    prefix, flag = "/linkd/", own_etcd.cluster_flag
    async with node(flag, "a", prefix) as (_, a), node(flag, "b", prefix) as (_, b):
        published = [record("a", "web-0", 0)]
        a.want(published[0])
        await until(holds(b, *published), 5, "the first record")
        for i in range(3):
            own_etcd.kill(i)
            new = record("a", f"web-{i + 1}", i + 1)
            a.want(new)
            published.append(new)
            took = await until(holds(b, *published), 5, f"a record with member {i} dead")
            print(f"member {i} dead: a new record seen in {took * 1000:.0f} ms")
            await asyncio.to_thread(own_etcd.restart)
        assert a.records() == b.records()


async def test_without_etcd_the_cache_is_kept_and_resyncs_after(own_etcd: EtcdCluster
                                                                ) -> None:
    """etcd loses its majority (b's only member lives on, without a leader), then stops
    altogether: both nodes keep what they saw; when etcd is back they catch up, and
    their records, moved to their new leases, outlive the old ones."""
    prefix, flag = "/linkd/", own_etcd.cluster_flag
    only_first = f"http://127.0.0.1:{own_etcd.members[0].client_port}"
    async with node(flag, "a", prefix) as (ma, a), node(only_first, "b", prefix) as (mb, b):
        ours = [record("a", "web-1", 1), record("a", "web-2", 2)]
        theirs = [record("b", "db-1", 3)]
        for r in ours:
            a.want(r)
        b.want(theirs[0])
        await until(holds(b, *ours, *theirs), 5, "every record on b")
        await until(holds(a, *ours, *theirs), 5, "every record on a")
        own_etcd.kill(1)
        own_etcd.kill(2)
        took = await until(lambda: a.state == b.state == "disconnected", 6,
                           "both watches to end with the leader gone")
        print(f"watches ended {took:.2f} s after etcd lost its majority")
        own_etcd.stop()
        await asyncio.sleep(TTL)  # longer than the leases
        assert a.records() == b.records() == sorted(
            ours + theirs, key=lambda r: endpoint_key_of(r, prefix))
        a.unwant("shop/back", "shop", "web-2")  # while etcd is away
        seen: list[list[EndpointRecord]] = []  # b's cache at every change from now on
        b.on_change(lambda: seen.append(b.records()))
        await asyncio.to_thread(own_etcd.restart)
        took = await until(holds(b, ours[0], *theirs), 10, "b to see web-2 gone")
        print(f"resynced {took:.2f} s after etcd came back")
        await until(lambda: a.state == b.state == "watching", 5, "both watching")
        await until(lambda: ma.state == mb.state == "ready", 10, "both registered")
        # the leases of before end: the records were moved to the new ones and stay
        await asyncio.sleep(TTL + 1)
        assert b.records() == a.records() == [ours[0], *theirs]
        # never gone meanwhile: moved to the new lease before the old one ended
        assert seen and all(ours[0] in records and theirs[0] in records for records in seen)
        etcd = client(flag)
        try:
            leases = {kv.key: kv.lease for kv in
                      (await etcd.snapshot(endpoints_prefix(prefix))).items}
        finally:
            await etcd.close()
        assert leases == {endpoint_key_of(ours[0], prefix): ma.lease,
                          endpoint_key_of(theirs[0], prefix): mb.lease}
