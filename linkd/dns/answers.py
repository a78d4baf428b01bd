"""Answering DNS queries from a Zone: bytes in, a decision out; no sockets, no clock.

`answer(zone, query, requester)` returns `Answered(bytes)`, `Forward()` (the runtime
sends the query upstream) or `Drop()` (no reply at all). dnslib is used only as a codec.
The zone layout and the scoping by requester address are described in `linkd.dns.zone`.

Rules, in order:
- Garbage shorter than a header, or a message with QR set (a response: answering it
  could start a loop between two servers), is dropped. A header followed by garbage, or
  not exactly one question, gets FORMERR; an opcode other than QUERY gets NOTIMP
  (RFC 1035 4.1.1).
- What the one question means (records, NXDOMAIN, NODATA, SERVFAIL, REFUSED or forward)
  is `linkd.dns.resolve`'s; the reply echoes the question as sent.

Several addresses for one name (replicas, a shared alias) are served in rotated order:
each answer starts at another address, the DNS round robin that Docker does by shuffling.
With `shuffle_seed` the rotation is `seed % n`, for tests; without it a per-zone counter
advances. Above ROTATIONS addresses the order is a full random shuffle instead, and such
answers are not cached.

Size: `max_size` is the largest UDP reply we send (default 1232, the DNS flag day 2020
value, also what our OPT record advertises); None means TCP, no limit. Over UDP the limit
is min(max_size, max(512, the requester's advertised size)) when the query has an OPT
record, else 512. A reply over the limit is sent with TC set and only the question and
OPT record, so the client retries over TCP.

Cache (the hot path): a query whose wire form is simple (one question, no compression,
at most an OPT record) is keyed on (requester's view, lower-cased question name bytes,
type, class, RD/CD bits, OPT size, max_size). A hit copies the query's ID and question
bytes over a pre-encoded reply: a few slices instead of ~117 us of parse + build + pack
(measured; `bench/run dns`). Cached are all deterministic answers (one address,
NXDOMAIN, NODATA, PTR, SOA), forward decisions, and multi-address answers as the n
pre-encoded rotations. In front of it, per requester, `reply_table` maps the exact query
bytes after the ID to the finished reply after the ID: a repeated query costs one dict
lookup (the server's UDP loop does that lookup inline). Both live in the Zone, so a new
Zone starts empty and never serves old data; each stops growing at CACHE_LIMIT entries
(random names from one client).
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from dnslib import EDNS0, QTYPE, RR, DNSHeader, DNSRecord
from dnslib import RCODE as RCODE

from linkd.dns.explain import explain
from linkd.dns.resolve import Result, resolve
from linkd.dns.snapshot import CACHE_LIMIT, Address, Zone

UDP_MAX = 1232
UDP_MIN = 512
ROTATIONS = 16  # multi-address answers with more addresses are shuffled, not cached

_TYPE_OPT = 41
_RCODE_FORMERR = 1
_RCODE_NOTIMP = 4
_FLAG_QR = 0x8000
_FLAG_RD = 0x0100
_FLAG_CD = 0x0010


@dataclass(frozen=True, slots=True)
class Answered:
    data: bytes


@dataclass(frozen=True, slots=True)
class Forward:
    pass


@dataclass(frozen=True, slots=True)
class Drop:
    pass


Reply = Answered | Forward | Drop


@dataclass(frozen=True, slots=True)
class Lookup:
    """What the resolver answers a requester for a name, explained (`linkd dns`, the
    API's dns endpoint): `rcode` None when the name is not the stack's (`forwarded` to
    the upstream resolvers, or refused); `records` as (name, type, ttl, data)."""

    explain: tuple[str, ...]
    rcode: str | None
    records: tuple[tuple[str, str, int, str], ...]
    forwarded: bool


def lookup(zone: Zone, name: str, qtype: str, requester: IPv4Address | IPv6Address) -> Lookup:
    """Ask `zone` as `requester` would; ValueError for a record type dnslib does not know."""
    qtype = qtype.upper()
    if qtype not in QTYPE.reverse:
        raise ValueError(f"unknown record type {qtype}")
    reply = answer(zone, DNSRecord.question(name, qtype).pack(), requester, max_size=None)
    rcode: str | None = None
    records: tuple[tuple[str, str, int, str], ...] = ()
    if isinstance(reply, Answered):
        parsed = DNSRecord.parse(reply.data)
        rcode = RCODE[parsed.header.rcode]
        records = tuple((str(r.rname), QTYPE[r.rtype], r.ttl, str(r.rdata)) for r in parsed.rr)
    return Lookup(tuple(explain(zone, name, requester)), rcode, records,
                  isinstance(reply, Forward))


def reachable_names(zone: Zone, requester: IPv4Address | IPv6Address) -> tuple[str, ...]:
    """The names `requester` may look up in `zone`, in their short form: the services,
    containers and aliases of the networks in its view, its link aliases and its own
    extra names (what the page lists; each answers through `lookup`)."""
    names = set(zone.extra.get(requester, {}))
    view = zone.view_of(requester)
    for netid in view.networks if view is not None else ():
        names.update(n for n in zone.names.get(netid, {}) if "." not in n and n[:1] != "_")
    return tuple(sorted(names))


@dataclass(frozen=True, slots=True)
class _Question:
    """The question as read straight from simple wire bytes, for the cache key."""

    name: bytes  # wire form, lower-cased
    end: int  # offset just past qtype/qclass
    qtype: int
    qclass: int
    opt_size: int  # -1: no OPT record


# -- entry point ----------------------------------------------------------------------------


def answer(
    zone: Zone,
    query: bytes,
    requester: IPv4Address | IPv6Address,
    *,
    shuffle_seed: int | None = None,
    max_size: int | None = UDP_MAX,
) -> Reply:
    """The reply to `query` from `requester`; see the module docstring for the rules."""
    query = bytes(query)  # a bytearray would make an unhashable cache key
    if len(query) < 12 or query[2] & 0x80:
        return Drop()
    table = reply_table(zone, requester, max_size) if shuffle_seed is None else None
    if table is not None:
        tails = table.get(query[2:])
        if tails is not None:
            return Answered(query[:2] + pick_tail(zone, tails))
    question = _read_question(query)
    key: object = None
    if question is not None:
        flags = (query[2] << 8 | query[3]) & (_FLAG_RD | _FLAG_CD)
        view: object = requester if requester in zone.extra else _view_id(zone, requester)
        key = (
            view,
            question.name,
            question.qtype,
            question.qclass,
            flags,
            question.opt_size,
            max_size,
        )
        if key in zone.cache:
            variants = zone.cache[key]
            if variants is None:
                return Forward()
            end = question.end
            tails = tuple(v[2:12] + query[12:end] + v[end:] for v in variants)
            if table is not None:
                _remember_exact(table, query, tails)
            return Answered(query[:2] + tails[_pick(zone, len(tails), shuffle_seed)])
    return _slow(zone, query, requester, question, key, shuffle_seed, max_size, table)


def reply_table(
    zone: Zone, requester: Address, max_size: int | None
) -> dict[bytes, tuple[bytes, ...]] | None:
    """The exact-bytes reply table of one requester: query without its ID -> the reply
    variants without their ID (one, or the rotations of a multi-address answer).

    The fastest path: a server that sees the same query bytes again (a stub resolver
    asks the same few questions over and over) answers with one dict lookup and a
    concatenation, `query[:2] + pick_tail(zone, tails)`, without reading the question.
    Only requesters the zone knows get a table (an unknown source cannot grow memory
    without bound); None for the others. Like the rest of the cache it lives in the Zone.
    """
    key = (requester, max_size)
    table = zone.replies.get(key)
    if table is None:
        if requester not in zone.views and requester not in zone.extra:
            return None
        table = zone.replies[key] = {}
    return table


def pick_tail(zone: Zone, tails: tuple[bytes, ...]) -> bytes:
    """One variant from a reply table entry, rotating through multi-address answers."""
    return tails[0] if len(tails) == 1 else tails[next(zone.counter) % len(tails)]


def _remember_exact(
    table: dict[bytes, tuple[bytes, ...]], query: bytes, tails: tuple[bytes, ...]
) -> None:
    if len(table) < CACHE_LIMIT:
        table[query[2:]] = tails


def _view_id(zone: Zone, requester: Address) -> int:
    view = zone.view_of(requester)
    return -1 if view is None else view.id


def _pick(zone: Zone, n: int, seed: int | None) -> int:
    if n == 1:
        return 0
    return (seed if seed is not None else next(zone.counter)) % n


def _slow(
    zone: Zone,
    query: bytes,
    requester: Address,
    question: _Question | None,
    key: object,
    seed: int | None,
    max_size: int | None,
    table: dict[bytes, tuple[bytes, ...]] | None,
) -> Reply:
    flags = query[2] << 8 | query[3]
    opcode = (flags >> 11) & 0xF
    if opcode != 0:
        return Answered(_error(query, _RCODE_NOTIMP))
    try:
        parsed = DNSRecord.parse(query)
    except Exception:  # any failure to decode garbage is a format error
        return Answered(_error(query, _RCODE_FORMERR))
    opts = [rr for rr in parsed.ar if rr.rtype == _TYPE_OPT]
    if len(parsed.questions) != 1 or len(opts) > 1:
        return Answered(_error(query, _RCODE_FORMERR))
    q = parsed.q
    name = str(q.qname).lower().rstrip(".")
    result = resolve(zone, requester, name, q.qname, int(q.qtype), int(q.qclass))
    if result is None:
        if key is not None:
            _remember(zone, key, None)
        return Forward()
    opt_size = int(opts[0].rclass) if opts else -1
    limit = _limit(opt_size, max_size)
    n = result.rotate
    if n > ROTATIONS:
        shuffled = list(result.answers)
        random.Random(seed).shuffle(shuffled)
        return Answered(_build(parsed, result, tuple(shuffled), bool(opts), max_size, limit))
    count = max(n, 1)
    variants = tuple(
        _build(parsed, result, result.answers[i:] + result.answers[:i], bool(opts), max_size, limit)
        for i in range(count)
    )
    if (
        key is not None
        and question is not None
        and all(
            v[12 : question.end].lower() == question.name + query[question.end - 4 : question.end]
            for v in variants
        )
    ):
        _remember(zone, key, variants)
        if table is not None:
            end = question.end
            tails = tuple(v[2:12] + query[12:end] + v[end:] for v in variants)
            _remember_exact(table, query, tails)
    chosen = variants[_pick(zone, count, seed)]
    return Answered(chosen)


def _remember(zone: Zone, key: object, value: tuple[bytes, ...] | None) -> None:
    if len(zone.cache) < CACHE_LIMIT:
        zone.cache[key] = value


def _limit(opt_size: int, max_size: int | None) -> int | None:
    if max_size is None:
        return None
    if opt_size < 0:
        return UDP_MIN
    return min(max_size, max(UDP_MIN, opt_size))


# -- encoding -------------------------------------------------------------------------------


def _build(
    query: DNSRecord,
    result: Result,
    answers: tuple[RR, ...],
    edns: bool,
    max_size: int | None,
    limit: int | None,
) -> bytes:
    header = DNSHeader(
        id=query.header.id,
        qr=1,
        aa=1,
        ra=1,
        rd=query.header.rd,
        cd=query.header.cd,
        rcode=result.rcode,
    )
    reply = DNSRecord(header, q=query.q)
    for rr in answers:
        reply.add_answer(rr)
    for rr in result.authority:
        reply.add_auth(rr)
    for rr in result.additional:
        reply.add_ar(rr)
    opt = EDNS0(udp_len=max_size or UDP_MAX) if edns else None
    if opt is not None:
        reply.add_ar(opt)
    data = bytes(reply.pack())
    if limit is None or len(data) <= limit:
        return data
    # The same header with TC set, over only the question (and the OPT record): the
    # client retries over TCP. pack() counts each section again.
    header.tc = 1
    truncated = DNSRecord(header, q=query.q)
    if opt is not None:
        truncated.add_ar(opt)
    return bytes(truncated.pack())


def _error(query: bytes, rcode: int) -> bytes:
    """A bare reply (header only) carrying `rcode`, for queries we will not read further."""
    flags = query[2] << 8 | query[3]
    reply_flags = _FLAG_QR | (flags & (0x7800 | _FLAG_RD | _FLAG_CD)) | rcode
    return query[:2] + struct.pack("!HHHHH", reply_flags, 0, 0, 0, 0)


def _read_question(query: bytes) -> _Question | None:
    """The question of a simple query (what the cache can key), else None."""
    if query[4:10] != b"\x00\x01\x00\x00\x00\x00" or query[2] & 0x78:
        return None  # not exactly one question, or answers/authority present, or opcode
    arcount = query[10] << 8 | query[11]
    i = 12
    size = len(query)
    while True:
        if i >= size:
            return None
        length = query[i]
        if length == 0:
            break
        if length & 0xC0:
            return None  # compression or extended label: the slow path decides
        i += length + 1
    i += 1
    if i > 12 + 255 or i + 4 > size:
        return None
    qtype, qclass = struct.unpack_from("!HH", query, i)
    end = i + 4
    name = query[12:i].lower()
    if arcount == 0:
        return _Question(name, end, qtype, qclass, -1) if end == size else None
    if arcount != 1 or end + 11 > size or query[end] != 0:
        return None
    rtype, udp, _rcode, version, _flags, rdlen = struct.unpack_from("!HHBBHH", query, end + 1)
    if rtype != _TYPE_OPT or version != 0 or end + 11 + rdlen != size:
        return None
    return _Question(name, end, qtype, qclass, udp)


