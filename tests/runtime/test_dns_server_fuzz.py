"""Property tests against a live DnsServer: hypothesis sends random and mutated packets
over real loopback UDP and TCP; after every example the server must still answer a real
query correctly, and whatever it answered to the junk must be a well-formed response.

The server runs on its own event loop in a thread for the whole module, as it runs in
the supervisor; hypothesis drives it from the test thread with blocking sockets.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from dnslib import DNSRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from linkd.dns.zone import build_zone
from linkd.runtime.stack.dns_server import DnsServer
from tests.planning import realize
from tests.runtime.test_dns_server import SUBNETS, addr, stack, web_addresses

PLAN = realize(stack(3), SUBNETS)
VALID = DNSRecord.question("web", "A").pack()
WEB = web_addresses(PLAN)


@dataclass
class Live:
    server: DnsServer
    udp: tuple[str, int]
    tcp: tuple[str, int]


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    server = DnsServer(build_zone([PLAN]), upstreams=[], timeout=0.2)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    udp_addr, tcp_addr = udp.getsockname(), tcp.getsockname()
    me = addr(PLAN, "client-1")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    async def serve() -> None:
        await asyncio.gather(
            server.serve_udp(udp, requester_override=me),
            server.serve_tcp(tcp, requester_override=me),
        )

    async def start() -> asyncio.Task[None]:
        return asyncio.create_task(serve())

    async def stop(task: asyncio.Task[None]) -> None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)  # both sockets closed

    serving = asyncio.run_coroutine_threadsafe(start(), loop).result(5)
    try:
        yield Live(server, udp_addr, tcp_addr)
    finally:
        asyncio.run_coroutine_threadsafe(stop(serving), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
        assert udp.fileno() == -1 and tcp.fileno() == -1  # the server closed both


def well_formed_reply_to(packet: bytes, reply: bytes) -> None:
    assert len(reply) >= 12
    assert reply[:2] == packet[:2]  # the query's ID
    assert reply[2] & 0x80  # QR: a response, never something that could loop


def still_answers(live: Live) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(VALID, live.udp)
        reply = DNSRecord.parse(s.recv(4096))
    assert {str(r.rdata) for r in reply.rr} == WEB
    with socket.create_connection(live.tcp, timeout=2) as c:
        c.sendall(struct.pack("!H", len(VALID)) + VALID)
        size = struct.unpack("!H", _read(c, 2))[0]
        over_tcp = DNSRecord.parse(_read(c, size))
    assert {str(r.rdata) for r in over_tcp.rr} == WEB


def _read(c: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = c.recv(n - len(data))
        assert chunk, "the server closed the connection mid-reply"
        data += chunk
    return data


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid query with a few bytes changed, then cut somewhere."""
    packet = bytearray(VALID)
    for _ in range(draw(st.integers(1, 6))):
        packet[draw(st.integers(0, len(packet) - 1))] = draw(st.integers(0, 255))
    return bytes(packet[: draw(st.integers(0, len(packet)))])


PACKETS = st.one_of(
    st.binary(max_size=600),
    mutated(),
    # A valid header with a random body: the answering code gets past the first checks.
    st.binary(max_size=300).map(lambda body: VALID[:12] + body),
)


SETTINGS = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
}


@settings(max_examples=200, **SETTINGS)  # type: ignore[arg-type]
@given(packet=PACKETS)
def test_udp_junk_gets_a_well_formed_reply_or_none(live: Live, packet: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.02)
        s.sendto(packet, live.udp)
        try:
            reply = s.recv(65535)
        except TimeoutError:
            reply = None  # dropped (too short, or a response): allowed
    if reply is not None:
        well_formed_reply_to(packet, reply)
    still_answers(live)


@settings(max_examples=60, **SETTINGS)  # type: ignore[arg-type]
@given(packet=PACKETS, declared=st.integers(0, 65535))
def test_tcp_junk_never_stalls_the_server(live: Live, packet: bytes, declared: int) -> None:
    with socket.create_connection(live.tcp, timeout=2) as c:
        # A length prefix that may lie about the body, then the body, then we hang up.
        c.sendall(struct.pack("!H", declared) + packet)
        c.shutdown(socket.SHUT_WR)
        c.settimeout(0.5)
        # The server answers a complete message and closes on anything else; either way
        # the connection ends instead of hanging (the timeout would fail the test).
        while c.recv(4096):
            pass
    still_answers(live)
    assert live.server.inflight == 0
