"""Answering DNS queries from a Zone: bytes in, a decision out; no sockets, no clock.

`answer(zone, query, requester)` returns `Answered(bytes)`, `Forward()` (the runtime
sends the query upstream) or `Drop()` (no reply at all). dnslib is used only as a codec.
The zone layout and the scoping by requester address are described in `linkd.dns.zone`.

Rules, in order:
- Garbage shorter than a header, or a message with QR set (a response: answering it
  could start a loop between two servers), is dropped. A header followed by garbage, or
  not exactly one question, gets FORMERR; an opcode other than QUERY gets NOTIMP
  (RFC 1035 4.1.1).
- Names are compared case-insensitively (ASCII, RFC 4343); the question is echoed as
  sent (resolvers using 0x20 randomisation check it).
- The apex `linkd.` answers SOA; names in the zone or with a single label are never
  forwarded: unknown ones are NXDOMAIN, known ones without the asked type (AAAA on an
  IPv4-only network, MX, ...) are NODATA; both carry the SOA in authority for negative
  caching (RFC 2308).
- A name whose records are all held back because their containers are not healthy
  yet (`linkd.dns.zone`, health) answers SERVFAIL: stub resolvers report that as a
  temporary failure (glibc's getaddrinfo: EAI_AGAIN, "Temporary failure in name
  resolution") and clients retry, where NXDOMAIN ("Name or service not known") makes
  them give up. No SOA: a SERVFAIL is not negatively cached (RFC 2308 section 7.1).
- Reverse names of container addresses the requester can see answer PTR; other
  addresses inside a linkd subnet are NXDOMAIN; every other reverse name is forwarded,
  as is every other multi-label name that is not one of the requester's names.

TTL: 1 second, for records and for the SOA minimum (negative answers). A container that
restarts, or a replica that goes away, may come back on another address at once; with
Docker's 600 s clients hold a dead address for ten minutes, and aardvark-dns went to
TTL 0 for that reason. 1 s keeps a burst of lookups cached in the client's stub while a
change is never served stale for longer than a second. (0 is legal but some caches treat
it oddly.)

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
from ipaddress import IPv4Address, IPv6Address, ip_address

from dnslib import (
    AAAA,
    EDNS0,
    PTR,
    QTYPE,
    RR,
    SOA,
    SRV,
    A,
    DNSHeader,
    DNSLabel,
    DNSRecord,
)
from dnslib import RCODE as RCODE

from linkd.dns.zone import CACHE_LIMIT, Address, Entry, Zone

TTL = 1
UDP_MAX = 1232
UDP_MIN = 512
ROTATIONS = 16  # multi-address answers with more addresses are shuffled, not cached
SOA_TIMES = (60, 10, 600, TTL)  # refresh, retry, expire, minimum (negative TTL)

_TYPE_A = 1
_TYPE_SOA = 6
_TYPE_PTR = 12
_TYPE_AAAA = 28
_TYPE_SRV = 33
_TYPE_OPT = 41
_TYPE_ANY = 255
_CLASS_IN = 1
_CLASS_ANY = 255
_RCODE_FORMERR = 1
_RCODE_SERVFAIL = 2
_RCODE_NXDOMAIN = 3
_RCODE_NOTIMP = 4
_RCODE_REFUSED = 5
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


@dataclass(frozen=True, slots=True)
class _Question:
    """The question as read straight from simple wire bytes, for the cache key."""

    name: bytes  # wire form, lower-cased
    end: int  # offset just past qtype/qclass
    qtype: int
    qclass: int
    opt_size: int  # -1: no OPT record


@dataclass(frozen=True, slots=True)
class _Result:
    rcode: int
    answers: tuple[RR, ...] = ()
    authority: tuple[RR, ...] = ()
    rotate: int = 0  # > 1: answers are that many addresses, served rotated
    additional: tuple[RR, ...] = ()  # SRV targets' addresses


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
    result = _resolve(zone, requester, name, q.qname, int(q.qtype), int(q.qclass))
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


# -- resolution -----------------------------------------------------------------------------


def _resolve(
    zone: Zone, requester: Address, name: str, qname: DNSLabel, qtype: int, qclass: int
) -> _Result | None:
    """The records for one question, or None to forward it."""
    in_zone = zone.in_zone(name)
    single = name != "" and "." not in name
    reverse = name.endswith(".in-addr.arpa") or name.endswith(".ip6.arpa")
    if qclass not in (_CLASS_IN, _CLASS_ANY):
        return _Result(_RCODE_REFUSED) if in_zone or single else None
    if name == zone.domain:
        if qtype in (_TYPE_SOA, _TYPE_ANY):
            return _Result(0, answers=(_soa(zone),))
        return _Result(0, authority=(_soa(zone),))
    if reverse:
        return _resolve_reverse(zone, requester, name, qname, qtype)
    entries = _lookup(zone, requester, name)
    if any(e.held for e in entries) and not any(e.records for e in entries):
        return _Result(_RCODE_SERVFAIL)  # no healthy instance yet: try again
    if not entries:
        if in_zone or single:
            return _Result(_RCODE_NXDOMAIN, authority=(_soa(zone),))
        return None
    records: list[RR] = []
    if qtype in (_TYPE_A, _TYPE_ANY):
        v4 = next((e.v4 for e in entries if e.v4), ())
        records += [RR(qname, QTYPE.A, ttl=TTL, rdata=A(str(a))) for a in v4]
    if qtype in (_TYPE_AAAA, _TYPE_ANY):
        v6 = next((e.v6 for e in entries if e.v6), ())
        records += [RR(qname, QTYPE.AAAA, ttl=TTL, rdata=AAAA(str(a))) for a in v6]
    additional: list[RR] = []
    if qtype in (_TYPE_SRV, _TYPE_ANY):
        targets = next((e.srv for e in entries if e.srv), ())
        for t in targets:
            # Weights are all equal: clients spread load over targets themselves.
            records.append(RR(qname, QTYPE.SRV, ttl=TTL,
                              rdata=SRV(priority=0, weight=10, port=t.port, target=t.target)))
            if t.v4 is not None:
                additional.append(RR(t.target, QTYPE.A, ttl=TTL, rdata=A(str(t.v4))))
            if t.v6 is not None:
                additional.append(RR(t.target, QTYPE.AAAA, ttl=TTL, rdata=AAAA(str(t.v6))))
    if not records:
        return _Result(0, authority=(_soa(zone),))
    rotate = len(records) if qtype != _TYPE_ANY else 1
    return _Result(0, answers=tuple(records), rotate=rotate, additional=tuple(additional))


def _lookup(zone: Zone, requester: Address, name: str) -> list[Entry]:
    """The entries for `name` the requester sees, requester-scoped ones first."""
    found: list[Entry] = []
    extra = zone.extra.get(requester)
    if extra is not None and name in extra:
        found.append(extra[name])
    view = zone.view_of(requester)
    if view is not None:
        for netid in view.networks:
            entry = zone.names.get(netid, {}).get(name)
            if entry is not None:
                found.append(entry)
    return found


def _resolve_reverse(
    zone: Zone, requester: Address, name: str, qname: DNSLabel, qtype: int
) -> _Result | None:
    view = zone.view_of(requester)
    pointer = zone.reverse.get(name)
    if pointer is not None and view is not None and pointer.network in view.networks:
        if qtype in (_TYPE_PTR, _TYPE_ANY):
            return _Result(0, answers=(RR(qname, QTYPE.PTR, ttl=TTL, rdata=PTR(pointer.target)),))
        return _Result(0)
    address = _reverse_address(name)
    if address is not None and any(address in net for net in zone.subnets):
        # No SOA: linkd. is not the zone of this name, and a 1 s TTL gains nothing.
        return _Result(_RCODE_NXDOMAIN)
    return None


def _reverse_address(name: str) -> Address | None:
    """The address of a full-length reverse name, None for anything else."""
    labels = name.split(".")
    try:
        if name.endswith(".in-addr.arpa") and len(labels) == 6:
            return ip_address(".".join(reversed(labels[:4])))
        if name.endswith(".ip6.arpa") and len(labels) == 34:
            nibbles = "".join(reversed(labels[:32]))
            if len(nibbles) != 32:
                return None
            return ip_address(":".join(nibbles[i : i + 4] for i in range(0, 32, 4)))
    except ValueError:
        return None
    return None


def _soa(zone: Zone) -> RR:
    apex = zone.domain + "."
    return RR(
        apex,
        QTYPE.SOA,
        ttl=TTL,
        rdata=SOA(f"ns.{apex}", f"hostmaster.{apex}", (zone.serial, *SOA_TIMES)),
    )


# -- encoding -------------------------------------------------------------------------------


def _build(
    query: DNSRecord,
    result: _Result,
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
    truncated = DNSRecord(
        DNSHeader(
            id=query.header.id,
            qr=1,
            aa=1,
            ra=1,
            tc=1,
            rd=query.header.rd,
            cd=query.header.cd,
            rcode=result.rcode,
        ),
        q=query.q,
    )
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


# -- explain --------------------------------------------------------------------------------


def explain(zone: Zone, name: str, requester: IPv4Address | IPv6Address) -> list[str]:
    """Human-readable lines: which network or alias gives `name` which records."""
    key = name.lower().rstrip(".")
    view = zone.view_of(requester)
    lines: list[str] = []
    if view is None and requester in zone.extra:
        lines.append(f"{requester} is a container with no network: it sees only its own names")
    elif view is None:
        lines.append(f"{requester} is no container linkd knows: it sees no names")
    else:
        nets = ", ".join(f"{s}/{n}" for s, n in view.networks)
        lines.append(f"{requester} is {view.who}, on networks {nets}")
    extra = zone.extra.get(requester, {}).get(key)
    if extra is not None:
        lines.append(f"{name}: link alias of this container only -> {_addresses(extra)}")
    seen = set(view.networks) if view is not None else set()
    used_v4 = used_v6 = False
    for netid in view.networks if view is not None else ():
        entry = zone.names.get(netid, {}).get(key)
        if entry is None:
            continue
        for record in entry.records:
            lines.append(
                f"{name} on {netid[0]}/{netid[1]}: {record.container} "
                f"({record.via}) {_record_addresses(record.v4, record.v6)}"
            )
        for record in entry.held:
            lines.append(
                f"{name} on {netid[0]}/{netid[1]}: {record.container} ({record.via}) "
                f"{_record_addresses(record.v4, record.v6)} held back: not healthy"
            )
        if entry.held and not entry.records:
            lines.append(f"{name} on {netid[0]}/{netid[1]}: no healthy instance (SERVFAIL)")
        elif not entry.records:
            lines.append(f"{name} on {netid[0]}/{netid[1]}: exists, no records")
        if entry.v4 and not used_v4:
            lines.append(f"  A answered from {netid[0]}/{netid[1]}")
            used_v4 = True
        if entry.v6 and not used_v6:
            lines.append(f"  AAAA answered from {netid[0]}/{netid[1]}")
            used_v6 = True
    for netid, table in sorted(zone.names.items()):
        if netid not in seen and key in table and table[key].records:
            lines.append(
                f"{name} exists on {netid[0]}/{netid[1]}, which the requester "
                "is not on: not visible"
            )
    pointer = zone.reverse.get(key)
    if pointer is not None:
        visible = pointer.network in seen
        lines.append(f"{name}: PTR {pointer.target}" + ("" if visible else " (not visible)"))
    if len(lines) == 1:
        if zone.in_zone(key) or "." not in key:
            lines.append(f"{name}: no such name for this requester (NXDOMAIN)")
        else:
            lines.append(f"{name}: not a linkd name; forwarded upstream")
    return lines


def _addresses(entry: Entry) -> str:
    return ", ".join(str(a) for a in (*entry.v4, *entry.v6)) or "no addresses"


def _record_addresses(v4: IPv4Address | None, v6: IPv6Address | None) -> str:
    return " ".join(str(a) for a in (v4, v6) if a is not None)
