"""The DNS server: sockets around the pure `linkd.dns.answers.answer`.

How a query flows:

    datagram / TCP message ──▶ zone = server.zone (one read) ──▶ answer(zone, query, requester)
        Answered(bytes) ──▶ sent back as is
        Drop()          ──▶ nothing (garbage, or a response that could start a loop)
        Forward()       ──▶ a task sends the raw query to the upstreams (UDP query: over
                            UDP; TCP query: over TCP), from an ordinary socket of this
                            process, i.e. the host namespace; the reply is relayed with
                            the client's query ID; all upstreams failing -> SERVFAIL

The served sockets are created elsewhere (inside a container's network namespace, or on
loopback for the host) and handed in already bound: the server neither knows nor cares
where they live, and it owns them from then on (closing them when its coroutine ends).
The requester is the source address of the query, except on sockets served with
`requester_override`: a socket reached through loopback (a resolver address NATed to
127.0.0.x inside a container, as Docker does with 127.0.0.11) sees 127.0.0.1 as source,
so the runtime says which container's view the queries on it get.

Snapshot swap: `set_zone` is a plain attribute assignment and each query reads
`self.zone` exactly once, so a query in flight is answered from one consistent Zone
while the next one already sees the new one. No lock, no SIGHUP-style teardown that
drops packets during a reload (aardvark-dns#389, moby#41000); the old Zone, with its
answer cache, is garbage once the last query using it is done.

Limits, and why:
- Upstreams: at most 3 (resolv.conf's MAXNS, as Docker and aardvark-dns). They are tried
  in order within one total budget (default 4 s, Docker's per-upstream timeout, here for
  all together so a client's own 5 s resolver timeout does not fire first). Attempt i of
  n gets remaining / (n - i) of what is left: a dead first server cannot eat the budget
  of the others, and time a fast failure (ICMP port unreachable) did not use passes on.
  We fail over on timeout, network errors, an unusable reply, SERVFAIL and REFUSED, as
  Docker does; any other reply (NXDOMAIN included) is final.
- In-flight forwards (UDP and TCP together): default 1024, Docker's `maxConcurrent`.
  Beyond it the query is answered REFUSED at once, as Docker does: it costs nothing to
  keep, and tells the client to try its next server instead of waiting for a timeout.
  Local answers are computed synchronously in the socket's reader callback and hold no
  memory after it returns, so the forward tasks are the only thing a UDP flood could pile
  up; the limit bounds them. Replies are sent with a non-blocking sendto straight from
  that callback (no transport buffer): if the kernel cannot take one, it is dropped and
  counted, as the client will retry. It is UDP.
- UDP is read by the socket's own reader callback (`loop.add_reader`), which drains up
  to UDP_BATCH datagrams per wakeup: under load one event-loop turn answers many
  queries, where asyncio's datagram transport pays a loop turn and a 256 KiB receive
  buffer per datagram. That, and the exact-bytes reply table, is what makes a
  pure-Python server outrun dnsmasq (bench/dns.py).
- Each forward uses a fresh socket (a fresh source port) and a fresh random query ID,
  and only a reply from the connected upstream with that ID and QR set is accepted
  (RFC 5452 spoofing resistance); the client's ID is put back on the way out.
- TCP (RFC 1035 4.2.2, RFC 7766): 2-byte length-prefixed messages, several per
  connection answered in order, an idle timeout (TCP_IDLE, 10 s) between and within
  messages, at most TCP_CONNECTIONS open connections (newer ones are closed at once),
  and answers without a size limit (`max_size=None`). A UDP answer with TC set, ours or
  an upstream's, is relayed as is: the client retries over TCP itself.

Counters (`DnsStats`) are plain integers on the server, for `linkd dns` to show.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

from dnslib import DNSRecord

from linkd.dns.answers import UDP_MAX, Answered, Drop, answer, pick_tail, reply_table
from linkd.dns.snapshot import Zone
from linkd.runtime.tasks import cancel_all

IPAddress = IPv4Address | IPv6Address
Upstream = tuple[str, int]

MAX_UPSTREAMS = 3  # resolv.conf MAXNS
FORWARD_TIMEOUT = 4.0  # seconds, for all upstreams together
MAX_INFLIGHT = 1024  # forwards at once, UDP and TCP together (Docker's maxConcurrent)
TCP_IDLE = 10.0  # seconds a TCP connection may sit without a complete message
TCP_CONNECTIONS = 512
TCP_MAX_MESSAGE = 65535
UDP_BATCH = 64  # datagrams answered per wakeup before other work gets a turn
UDP_RECV = 65535  # the largest datagram; a larger one would be cut and answered FORMERR

RCODE_SERVFAIL = 2
RCODE_REFUSED = 5
_FAILOVER_RCODES = (RCODE_SERVFAIL, RCODE_REFUSED)


@dataclass(slots=True)
class DnsStats:
    """What the server did since it started; every received query counts once in
    `queries` and once in exactly one of the others (a forward counts in `forwarded`,
    and additionally in `servfail` if it failed)."""

    queries: int = 0
    answered: int = 0  # answered from the zone
    forwarded: int = 0  # sent upstream
    servfail: int = 0  # forwards that failed on every upstream
    refused: int = 0  # forwards refused over the in-flight limit
    dropped: int = 0  # garbage, responses, or no room to send


class DnsServer:
    """Serves a Zone on any number of handed-in UDP and TCP sockets."""

    def __init__(
        self,
        zone: Zone,
        upstreams: Sequence[Upstream] = (),
        *,
        timeout: float = FORWARD_TIMEOUT,
        max_inflight: int = MAX_INFLIGHT,
        tcp_idle: float = TCP_IDLE,
        udp_max_size: int = UDP_MAX,
    ) -> None:
        self.zone = zone
        self.upstreams: list[Upstream] = list(upstreams)[:MAX_UPSTREAMS]
        self.timeout = timeout
        self.max_inflight = max_inflight
        self.tcp_idle = tcp_idle
        self.udp_max_size = udp_max_size
        self.stats = DnsStats()
        self.inflight = 0

    def set_zone(self, zone: Zone) -> None:
        """Swap in a new snapshot; queries already running keep the one they read."""
        self.zone = zone

    def set_upstreams(self, upstreams: Sequence[Upstream]) -> None:
        self.upstreams = list(upstreams)[:MAX_UPSTREAMS]

    # -- UDP ----------------------------------------------------------------------------------

    async def serve_udp(
        self,
        sock: socket.socket,
        *,
        requester_override: IPAddress | None = None,
        forward: bool = True,
        upstreams: Sequence[Upstream] | None = None,
    ) -> None:
        """Serve queries arriving on the bound UDP `sock` until cancelled.

        `forward=False`: names outside the zone are REFUSED instead of forwarded (a
        container with no route out must not reach outside through linkd's resolver).
        `upstreams`: where this socket's names outside the zone go (a container's `dns:`),
        instead of the server's."""
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()
        sock.setblocking(False)
        fd = sock.fileno()
        tasks_or_none = tasks if forward else None
        loop.add_reader(fd, self._drain_udp, sock, requester_override, tasks_or_none,
                        upstreams)
        try:
            await loop.create_future()  # until cancelled
        finally:
            loop.remove_reader(fd)
            sock.close()
            await cancel_all(tasks)

    def _drain_udp(
        self,
        sock: socket.socket,
        override: IPAddress | None,
        tasks: set[asyncio.Task[None]] | None,
        upstreams: Sequence[Upstream] | None = None,
    ) -> None:
        """Answer what is queued on `sock`, up to UDP_BATCH datagrams per wakeup.

        The hot path: a query whose exact bytes were answered before for this requester
        costs one dict lookup and one sendto (see `linkd.dns.answers.reply_table`). The zone and
        its table are read once per batch: one consistent snapshot for the whole batch.
        """
        zone = self.zone
        table = None if override is None else reply_table(zone, override, self.udp_max_size)
        stats = self.stats
        recv, send = sock.recvfrom, sock.sendto
        for _ in range(UDP_BATCH):
            try:
                data, addr = recv(UDP_RECV)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # a pending socket error (ICMP for an earlier reply): nothing to read
            stats.queries += 1
            tails = None if table is None else table.get(data[2:])
            reply: bytes | None
            if tails is not None:
                reply = data[:2] + pick_tail(zone, tails)
                stats.answered += 1
            else:
                reply = self._answer_datagram(zone, data, addr, override, sock, tasks,
                                              upstreams)
                if reply is None:
                    continue
            try:
                send(reply, addr)
            except OSError:
                stats.dropped += 1  # the socket buffer is full: it is UDP

    def _answer_datagram(
        self,
        zone: Zone,
        data: bytes,
        addr: tuple[Any, ...],
        override: IPAddress | None,
        sock: socket.socket,
        tasks: set[asyncio.Task[None]] | None,
        upstreams: Sequence[Upstream] | None = None,
    ) -> bytes | None:
        """The reply to send at once, or None (dropped, or a forward task will reply).

        `tasks` is None where forwarding is off."""
        try:
            requester = override or _source(addr[0])
        except ValueError:
            self.stats.dropped += 1
            return None
        reply = answer(zone, data, requester, max_size=self.udp_max_size)
        if isinstance(reply, Answered):
            self.stats.answered += 1
            return reply.data
        if isinstance(reply, Drop):
            self.stats.dropped += 1
            return None
        if tasks is None or self.inflight >= self.max_inflight:
            self.stats.refused += 1
            return error_reply(data, RCODE_REFUSED)
        self.inflight += 1
        self.stats.forwarded += 1
        task = asyncio.get_running_loop().create_task(
            self._forward_udp_task(sock, data, addr, upstreams))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return None

    async def _forward_udp_task(
        self, sock: socket.socket, query: bytes, addr: tuple[Any, ...],
        upstreams: Sequence[Upstream] | None = None,
    ) -> None:
        try:
            reply = await self.forward(query, tcp=False, upstreams=upstreams)
        finally:
            self.inflight -= 1
        try:
            sock.sendto(reply, addr)
        except OSError:
            self.stats.dropped += 1

    # -- TCP ----------------------------------------------------------------------------------

    async def serve_tcp(
        self,
        sock: socket.socket,
        *,
        requester_override: IPAddress | None = None,
        forward: bool = True,
        upstreams: Sequence[Upstream] | None = None,
    ) -> None:
        """Serve TCP connections accepted on the bound (not yet listening) `sock`;
        `forward` and `upstreams` as for `serve_udp`."""
        connections: set[asyncio.Task[object]] = set()

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            if task is None or len(connections) >= TCP_CONNECTIONS:
                writer.close()
                return
            connections.add(task)
            try:
                await self._serve_connection(reader, writer, requester_override, forward,
                                             upstreams)
            except (OSError, ValueError, asyncio.IncompleteReadError, TimeoutError):
                pass  # the client went away or went quiet: nothing to answer
            finally:
                connections.discard(task)
                writer.close()

        server = await asyncio.start_server(on_connect, sock=sock)
        try:
            await server.serve_forever()
        finally:
            server.close()
            await cancel_all(connections)
            await server.wait_closed()

    async def _serve_connection(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        override: IPAddress | None,
        forward: bool,
        upstreams: Sequence[Upstream] | None = None,
    ) -> None:
        peer = writer.get_extra_info("peername")
        requester = override or _source(peer[0])
        while True:
            async with asyncio.timeout(self.tcp_idle):
                try:
                    prefix = await reader.readexactly(2)
                except asyncio.IncompleteReadError as e:
                    if not e.partial:
                        return  # clean close between messages
                    raise
                (size,) = struct.unpack("!H", prefix)
                query = await reader.readexactly(size)
            self.stats.queries += 1
            reply = await self._answer_tcp(query, requester, forward, upstreams)
            if reply is None:
                continue
            writer.write(struct.pack("!H", len(reply)) + reply)
            async with asyncio.timeout(self.tcp_idle):
                await writer.drain()

    async def _answer_tcp(
        self, query: bytes, requester: IPAddress, forward: bool,
        upstreams: Sequence[Upstream] | None = None,
    ) -> bytes | None:
        result = answer(self.zone, query, requester, max_size=None)
        if isinstance(result, Answered):
            self.stats.answered += 1
            data = result.data
        elif isinstance(result, Drop):
            self.stats.dropped += 1
            return None
        elif not forward or self.inflight >= self.max_inflight:
            self.stats.refused += 1
            return error_reply(query, RCODE_REFUSED)
        else:
            self.inflight += 1
            self.stats.forwarded += 1
            try:
                data = await self.forward(query, tcp=True, upstreams=upstreams)
            finally:
                self.inflight -= 1
        if len(data) > TCP_MAX_MESSAGE:
            return error_reply(query, RCODE_SERVFAIL)
        return data

    # -- forwarding ---------------------------------------------------------------------------

    async def forward(
        self, query: bytes, *, tcp: bool, upstreams: Sequence[Upstream] | None = None
    ) -> bytes:
        """The upstreams' reply to `query` with its own ID, or a SERVFAIL of ours; the
        server's upstreams unless others are given."""
        upstreams = list(self.upstreams if upstreams is None else upstreams)[:MAX_UPSTREAMS]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        for i, upstream in enumerate(upstreams):
            budget = (deadline - loop.time()) / (len(upstreams) - i)
            if budget <= 0:
                break
            qid = secrets.randbits(16)
            ours = struct.pack("!H", qid) + query[2:]
            try:
                async with asyncio.timeout(budget):
                    if tcp:
                        reply = await _ask_tcp(upstream, ours)
                    else:
                        reply = await _ask_udp(upstream, ours, qid)
            except (TimeoutError, OSError, asyncio.IncompleteReadError):
                continue
            if len(reply) < 12 or struct.unpack_from("!H", reply)[0] != qid:
                continue
            if reply[3] & 0x0F in _FAILOVER_RCODES:
                continue
            return query[:2] + reply[2:]
        self.stats.servfail += 1
        return error_reply(query, RCODE_SERVFAIL)


async def _ask_udp(upstream: Upstream, query: bytes, qid: int) -> bytes:
    loop = asyncio.get_running_loop()
    host, port = upstream
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, (host, port))
        await loop.sock_sendall(sock, query)
        while True:
            reply = await loop.sock_recv(sock, 65535)
            # A connected socket only receives from the upstream; still ignore stray
            # datagrams (a late reply, a spoofing attempt) until the right one arrives.
            if len(reply) >= 12 and reply[2] & 0x80 and struct.unpack_from("!H", reply)[0] == qid:
                return reply


async def _ask_tcp(upstream: Upstream, query: bytes) -> bytes:
    host, port = upstream
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(struct.pack("!H", len(query)) + query)
        await writer.drain()
        (size,) = struct.unpack("!H", await reader.readexactly(2))
        return await reader.readexactly(size)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def _source(host: str) -> IPAddress:
    """The requester address of a socket peer; IPv4-mapped IPv6 counts as IPv4."""
    address = ip_address(host.split("%", 1)[0])
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def error_reply(query: bytes, rcode: int) -> bytes:
    """A reply to `query` with only its question and `rcode` (SERVFAIL, REFUSED).

    Only used for queries `answer` already parsed (it returned Forward), so the question
    is echoed, which stub resolvers check; a header-only reply is the fallback."""
    try:
        parsed = DNSRecord.parse(query)
        reply = parsed.reply(ra=1, aa=0)
        reply.header.rcode = rcode
        data: bytes = reply.pack()
        return data
    except Exception:  # not decodable after all: answer with the header alone
        flags = (query[2] << 8 | query[3]) & 0x7910 | 0x8000 | 0x0080 | rcode
        return query[:2] + struct.pack("!HHHHH", flags, 0, 0, 0, 0)


def upstreams_from_resolv_conf(text: str) -> list[Upstream]:
    """The first three valid `nameserver` addresses of a resolv.conf, port 53.

    Loopback servers (127.0.0.53 of systemd-resolved) are kept: linkd forwards from the
    host namespace, where they are reachable (Docker strips them only for the copy it
    gives containers). An IPv6 zone index (`fe80::1%eth0`) is kept for connect."""
    found: list[Upstream] = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(words) < 2 or words[0] != "nameserver":
            continue
        try:
            ip_address(words[1].split("%", 1)[0])
        except ValueError:
            continue
        found.append((words[1], 53))
        if len(found) == MAX_UPSTREAMS:
            break
    return found
