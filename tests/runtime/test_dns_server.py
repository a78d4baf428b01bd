"""linkd.runtime.stack.dns_server over real loopback sockets, against an upstream of our own.

Nothing leaves 127.0.0.1: the "internet" is a small dnslib-speaking server run by the
test itself, or a UDP socket that never answers.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any, cast

import pytest
from dnslib import QTYPE, RCODE, RR, A, DNSRecord

from linkd.core.model import Attachment, Network, Service, Stack
from linkd.core.plan import StackPlan
from linkd.dns.snapshot import Zone
from linkd.dns.zone import build_zone
from linkd.runtime.stack.dns_server import (
    DnsServer,
    DnsStats,
    error_reply,
    upstreams_from_resolv_conf,
)
from tests.planning import realize

CMD = ("sleep", "60")
SUBNETS = {"front": IPv4Network("10.87.0.0/24")}
EXTERNAL = "ext.example."
EXTERNAL_ADDRESS = "192.0.2.1"


def stack(web_replicas: int) -> Stack:
    # The client comes first so its address stays the same whatever the replica count.
    return Stack(
        name="shop",
        services=(
            Service("client", command=CMD, networks=(Attachment("front"),)),
            Service("web", command=CMD, replicas=web_replicas, networks=(Attachment("front"),)),
        ),
        networks=(Network("front"),),
    )


def make(web_replicas: int) -> tuple[StackPlan, Zone]:
    plan = realize(stack(web_replicas), SUBNETS)
    return plan, build_zone([plan])


def addr(plan: StackPlan, container: str) -> IPv4Address:
    return plan.container(container).interfaces[0].address


def web_addresses(plan: StackPlan) -> set[str]:
    return {str(addr(plan, c.name)) for c in plan.containers if c.service == "web"}


def query(name: str, qtype: str = "A", qid: int = 4242) -> bytes:
    q = DNSRecord.question(name, qtype)
    q.header.id = qid
    data: bytes = q.pack()
    return data


# -- the test's own upstream ----------------------------------------------------------------


def upstream_reply(data: bytes) -> bytes:
    q = DNSRecord.parse(data)
    reply = q.reply()
    if str(q.q.qname).lower() == EXTERNAL and q.q.qtype == QTYPE.A:
        reply.add_answer(RR(q.q.qname, QTYPE.A, ttl=30, rdata=A(EXTERNAL_ADDRESS)))
    else:
        reply.header.rcode = RCODE.NXDOMAIN
    out: bytes = reply.pack()
    return out


class _Upstream(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.seen = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.seen += 1
        assert self.transport is not None
        self.transport.sendto(upstream_reply(data), addr)


@dataclass
class Upstream:
    port: int
    udp: _Upstream
    tcp_queries: list[int]


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    """A DNS server on 127.0.0.1 (UDP and TCP on one port) answering EXTERNAL."""
    loop = asyncio.get_running_loop()
    tcp_queries: list[int] = []

    async def on_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (size,) = struct.unpack("!H", await reader.readexactly(2))
                tcp_queries.append(size)
                reply = upstream_reply(await reader.readexactly(size))
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_tcp, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport, protocol = await loop.create_datagram_endpoint(
        _Upstream, local_addr=("127.0.0.1", port)
    )
    try:
        yield Upstream(port, protocol, tcp_queries)
    finally:
        transport.close()
        server.close()
        await server.wait_closed()


@pytest.fixture
def silent() -> Iterator[Callable[[], int]]:
    """Ports of UDP sockets that receive queries and never answer."""
    socks: list[socket.socket] = []

    def make_one() -> int:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        port: int = s.getsockname()[1]
        return port

    yield make_one
    for s in socks:
        s.close()


# -- the server under test ------------------------------------------------------------------


@dataclass
class Running:
    server: DnsServer
    plan: StackPlan
    udp: tuple[str, int]
    tcp: tuple[str, int]


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    """A DnsServer on 127.0.0.1 UDP and TCP, queries counted as from client-1."""
    plan, zone = make(2)
    server = DnsServer(zone, timeout=0.3)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("127.0.0.1", 0))
    udp_addr, tcp_addr = udp.getsockname(), tcp.getsockname()
    me = addr(plan, "client-1")
    tasks = [
        asyncio.create_task(server.serve_udp(udp, requester_override=me)),
        asyncio.create_task(server.serve_tcp(tcp, requester_override=me)),
    ]
    await asyncio.sleep(0)  # let both start listening
    try:
        yield Running(server, plan, udp_addr, tcp_addr)
    finally:
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results), results
        assert udp.fileno() == -1 and tcp.fileno() == -1  # the server closed them


async def ask_udp(target: tuple[str, int], data: bytes, timeout: float = 2.0) -> DNSRecord:
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        await loop.sock_connect(s, target)
        await loop.sock_sendall(s, data)
        async with asyncio.timeout(timeout):
            return DNSRecord.parse(await loop.sock_recv(s, 65535))


async def ask_tcp(target: tuple[str, int], *queries: bytes) -> list[DNSRecord]:
    """Send all queries on one connection, read one reply each."""
    reader, writer = await asyncio.open_connection(*target)
    try:
        replies = []
        for data in queries:
            writer.write(struct.pack("!H", len(data)) + data)
            await writer.drain()
            async with asyncio.timeout(2):
                (size,) = struct.unpack("!H", await reader.readexactly(2))
                replies.append(DNSRecord.parse(await reader.readexactly(size)))
        return replies
    finally:
        writer.close()
        await writer.wait_closed()


def a_records(reply: DNSRecord) -> set[str]:
    return {str(rr.rdata) for rr in reply.rr if rr.rtype == QTYPE.A}


# -- answers from the zone ------------------------------------------------------------------


async def test_udp_service_answers_all_replicas(running: Running) -> None:
    reply = await ask_udp(running.udp, query("web", qid=777))
    assert reply.header.id == 777
    assert reply.header.rcode == RCODE.NOERROR
    assert a_records(reply) == web_addresses(running.plan)
    assert len(a_records(reply)) == 2
    assert running.server.stats == DnsStats(queries=1, answered=1)


async def test_unknown_single_label_is_nxdomain_and_not_forwarded(
    running: Running, upstream: Upstream
) -> None:
    running.server.set_upstreams([("127.0.0.1", upstream.port)])
    reply = await ask_udp(running.udp, query("nosuchthing"))
    assert reply.header.rcode == RCODE.NXDOMAIN
    assert upstream.udp.seen == 0


async def test_tcp_two_queries_on_one_connection(running: Running) -> None:
    first, second = await ask_tcp(running.tcp, query("web", qid=1), query("client-1", qid=2))
    assert (first.header.id, second.header.id) == (1, 2)
    assert a_records(first) == web_addresses(running.plan)
    assert a_records(second) == {str(addr(running.plan, "client-1"))}


async def test_truncated_over_udp_complete_over_tcp() -> None:
    plan, zone = make(60)
    server = DnsServer(zone)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    udp_addr, tcp_addr = udp.getsockname(), tcp.getsockname()
    me = addr(plan, "client-1")
    with pytest.raises(ExceptionGroup) as done:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(server.serve_udp(udp, requester_override=me))
            tg.create_task(server.serve_tcp(tcp, requester_override=me))
            await asyncio.sleep(0)
            small = await ask_udp(udp_addr, query("web"))  # no EDNS: 512 bytes at most
            assert small.header.tc == 1
            assert a_records(small) == set()
            (full,) = await ask_tcp(tcp_addr, query("web"))
            assert full.header.tc == 0
            assert a_records(full) == web_addresses(plan)
            assert len(a_records(full)) == 60
            raise _Done
    assert done.group_contains(_Done)
    assert udp.fileno() == -1 and tcp.fileno() == -1


class _Done(Exception):
    """Leaves the TaskGroup, which cancels the servers (structured shutdown)."""


async def test_zone_swap_visible_to_next_query(running: Running) -> None:
    before = await ask_udp(running.udp, query("web"))
    plan3, zone3 = make(3)
    assert addr(plan3, "client-1") == addr(running.plan, "client-1")
    running.server.set_zone(zone3)
    after = await ask_udp(running.udp, query("web"))
    (over_tcp,) = await ask_tcp(running.tcp, query("web"))
    assert len(a_records(before)) == 2
    assert a_records(after) == a_records(over_tcp) == web_addresses(plan3)
    assert len(a_records(after)) == 3


async def test_garbage_is_ignored_and_server_keeps_answering(running: Running) -> None:
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        await loop.sock_connect(s, running.udp)
        await loop.sock_sendall(s, b"\x01\x02garbage")  # shorter than a header: dropped
        response = DNSRecord.parse(query("web")).reply().pack()
        await loop.sock_sendall(s, response)  # a response (QR set): dropped
        await loop.sock_sendall(s, query("web", qid=99))
        async with asyncio.timeout(2):
            reply = DNSRecord.parse(await loop.sock_recv(s, 65535))
    assert reply.header.id == 99  # the first datagram back answers the third query
    assert a_records(reply) == web_addresses(running.plan)
    assert running.server.stats.dropped == 2


async def test_tcp_garbage_length_closes_nothing_else(running: Running) -> None:
    reader, writer = await asyncio.open_connection(*running.tcp)
    writer.write(b"\x00\x03abc")  # a 3-byte "message": dropped, connection stays
    data = query("web", qid=5)
    writer.write(struct.pack("!H", len(data)) + data)
    await writer.drain()
    async with asyncio.timeout(2):
        (size,) = struct.unpack("!H", await reader.readexactly(2))
        reply = DNSRecord.parse(await reader.readexactly(size))
    writer.close()
    await writer.wait_closed()
    assert reply.header.id == 5


async def test_tcp_idle_connection_is_closed(running: Running) -> None:
    running.server.tcp_idle = 0.2
    reader, writer = await asyncio.open_connection(*running.tcp)
    async with asyncio.timeout(2):
        assert await reader.read() == b""  # closed by the server, nothing sent
    writer.close()
    await writer.wait_closed()


async def test_ipv6_loopback_source_is_the_requester() -> None:
    try:
        udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        udp.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    _, zone = make(2)
    server = DnsServer(zone)
    target = udp.getsockname()[:2]
    task = asyncio.create_task(server.serve_udp(udp))
    try:
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.setblocking(False)
            await loop.sock_connect(s, target)
            await loop.sock_sendall(s, query("web"))
            async with asyncio.timeout(2):
                reply = DNSRecord.parse(await loop.sock_recv(s, 65535))
        # ::1 is no container: it sees no names, and a single label is never forwarded.
        assert reply.header.rcode == RCODE.NXDOMAIN
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert udp.fileno() == -1


# -- forwarding -----------------------------------------------------------------------------


async def test_forwarded_over_udp(running: Running, upstream: Upstream) -> None:
    running.server.set_upstreams([("127.0.0.1", upstream.port)])
    reply = await ask_udp(running.udp, query(EXTERNAL, qid=31337))
    assert reply.header.id == 31337  # our random upstream ID is replaced
    assert reply.header.rcode == RCODE.NOERROR
    assert a_records(reply) == {EXTERNAL_ADDRESS}
    assert upstream.udp.seen == 1
    assert running.server.stats.forwarded == 1
    assert running.server.inflight == 0


async def test_forwarded_over_tcp(running: Running, upstream: Upstream) -> None:
    running.server.set_upstreams([("127.0.0.1", upstream.port)])
    ext, web = await ask_tcp(running.tcp, query(EXTERNAL, qid=8), query("web", qid=9))
    assert (ext.header.id, web.header.id) == (8, 9)
    assert a_records(ext) == {EXTERNAL_ADDRESS}
    assert len(upstream.tcp_queries) == 1 and upstream.udp.seen == 0


async def test_upstream_nxdomain_is_final(running: Running, upstream: Upstream) -> None:
    second = await _second_upstream()
    try:
        running.server.set_upstreams([("127.0.0.1", upstream.port), second.addr])
        reply = await ask_udp(running.udp, query("missing.example."))
        assert reply.header.rcode == RCODE.NXDOMAIN
        assert second.protocol.seen == 0
    finally:
        second.transport.close()


async def test_failover_to_next_upstream(
    running: Running, upstream: Upstream, silent: Callable[[], int]
) -> None:
    running.server.timeout = 1.0
    running.server.set_upstreams([("127.0.0.1", silent()), ("127.0.0.1", upstream.port)])
    reply = await ask_udp(running.udp, query(EXTERNAL))
    assert a_records(reply) == {EXTERNAL_ADDRESS}


async def test_servfail_when_upstream_never_answers(
    running: Running, silent: Callable[[], int]
) -> None:
    running.server.set_upstreams([("127.0.0.1", silent())])
    loop = asyncio.get_running_loop()
    start = loop.time()
    reply = await ask_udp(running.udp, query(EXTERNAL, qid=12))
    assert 0.25 < loop.time() - start < 1.5
    assert reply.header.id == 12
    assert reply.header.rcode == RCODE.SERVFAIL
    assert str(reply.q.qname) == EXTERNAL  # the question is echoed
    assert running.server.stats.servfail == 1


async def test_servfail_without_upstreams(running: Running) -> None:
    reply = await ask_udp(running.udp, query(EXTERNAL))
    assert reply.header.rcode == RCODE.SERVFAIL
    (over_tcp,) = await ask_tcp(running.tcp, query(EXTERNAL))
    assert over_tcp.header.rcode == RCODE.SERVFAIL


async def test_inflight_limit_refuses(running: Running, silent: Callable[[], int]) -> None:
    running.server.max_inflight = 1
    running.server.set_upstreams([("127.0.0.1", silent())])
    first = asyncio.create_task(ask_udp(running.udp, query(EXTERNAL, qid=1)))
    while running.server.inflight == 0:
        await asyncio.sleep(0.01)
    second = await ask_udp(running.udp, query(EXTERNAL, qid=2))
    assert second.header.id == 2
    assert second.header.rcode == RCODE.REFUSED
    assert (await first).header.rcode == RCODE.SERVFAIL
    assert running.server.inflight == 0
    stats = running.server.stats
    assert (stats.forwarded, stats.refused, stats.servfail) == (1, 1, 1)


@dataclass
class _Second:
    transport: asyncio.DatagramTransport
    protocol: _Upstream
    addr: tuple[str, int]


async def _second_upstream() -> _Second:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        _Upstream, local_addr=("127.0.0.1", 0)
    )
    port = transport.get_extra_info("sockname")[1]
    return _Second(transport, protocol, ("127.0.0.1", port))


# -- pure helpers ---------------------------------------------------------------------------


def test_upstreams_from_resolv_conf() -> None:
    text = """
# generated
nameserver 127.0.0.53   # systemd-resolved, reachable from the host namespace
nameserver not-an-address
search example.com
;nameserver 9.9.9.9
nameserver 2001:db8::1
nameserver fe80::1%eth0
nameserver 192.0.2.53
"""
    assert upstreams_from_resolv_conf(text) == [
        ("127.0.0.53", 53),
        ("2001:db8::1", 53),
        ("fe80::1%eth0", 53),
    ]
    assert upstreams_from_resolv_conf("") == []


def test_error_reply_keeps_id_and_question() -> None:
    reply = DNSRecord.parse(error_reply(query("x.example.", qid=4), 2))
    assert reply.header.id == 4 and reply.header.qr == 1 and reply.header.rcode == 2
    assert str(reply.q.qname) == "x.example."
    bare = error_reply(b"\x00\x07" + b"\x01\x00" + b"\xff" * 8 + b"junk", 5)
    assert bare[:2] == b"\x00\x07" and bare[3] & 0x0F == 5 and len(bare) == 12


async def test_a_live_server_survives_random_and_mutated_packets(running: Running) -> None:
    """Property-style: a seeded stream of garbage over UDP and TCP, then a real query."""
    import random

    rng = random.Random(20261128)
    valid = query("web")
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        for _ in range(300):
            if rng.random() < 0.5:
                packet = rng.randbytes(rng.randrange(0, 600))
            else:
                mutated = bytearray(valid)
                for _ in range(rng.randrange(1, 6)):
                    mutated[rng.randrange(len(mutated))] = rng.randrange(256)
                packet = bytes(mutated[: rng.randrange(len(mutated) + 1)])
            await loop.sock_sendto(s, packet, running.udp)
    for _ in range(20):  # TCP: random length prefixes and bodies, each on its own connection
        _, writer = await asyncio.open_connection(*running.tcp)
        writer.write(rng.randbytes(rng.randrange(0, 80)))
        await writer.drain()
        writer.close()
        await writer.wait_closed()
    # Still answering, correctly, on both transports.
    reply = await ask_udp(running.udp, valid)
    assert {str(r.rdata) for r in reply.rr} == web_addresses(running.plan)
    (over_tcp,) = await ask_tcp(running.tcp, valid)
    assert {str(r.rdata) for r in over_tcp.rr} == web_addresses(running.plan)
