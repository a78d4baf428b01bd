"""What a question means in a Zone: the records of an answer, or None to forward it.

`resolve(zone, requester, name, ...)` is the decision at the heart of the DNS server,
taken on a cache miss of `linkd.dns.answers` (which parses the query, and encodes,
rotates, truncates and caches what this returns). The zone layout and the scoping by
requester address are described in `linkd.dns.zone`.

Rules, in order:
- Names are compared case-insensitively (ASCII, RFC 4343): the caller hands the name in
  lower case, and the question's own spelling (`qname`) for the records, so the answer
  echoes it (resolvers using 0x20 randomisation check it).
- A class other than IN (or ANY) is REFUSED for names in the zone and single labels,
  and forwarded for the others.
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
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import ip_address

from dnslib import AAAA, PTR, QTYPE, RR, SOA, SRV, A, DNSLabel

from linkd.dns.snapshot import Address, Entry, Zone

TTL = 1
SOA_TIMES = (60, 10, 600, TTL)  # refresh, retry, expire, minimum (negative TTL)

_TYPE_A = 1
_TYPE_SOA = 6
_TYPE_PTR = 12
_TYPE_AAAA = 28
_TYPE_SRV = 33
_TYPE_ANY = 255
_CLASS_IN = 1
_CLASS_ANY = 255
_RCODE_SERVFAIL = 2
_RCODE_NXDOMAIN = 3
_RCODE_REFUSED = 5


@dataclass(frozen=True, slots=True)
class Result:
    """The records of one answer, before encoding: `linkd.dns.answers` packs them."""

    rcode: int
    answers: tuple[RR, ...] = ()
    authority: tuple[RR, ...] = ()
    rotate: int = 0  # > 1: answers are that many addresses, served rotated
    additional: tuple[RR, ...] = ()  # SRV targets' addresses



# -- resolution -----------------------------------------------------------------------------


def resolve(
    zone: Zone, requester: Address, name: str, qname: DNSLabel, qtype: int, qclass: int
) -> Result | None:
    """The records for one question, or None to forward it."""
    in_zone = zone.in_zone(name)
    single = name != "" and "." not in name
    reverse = name.endswith(".in-addr.arpa") or name.endswith(".ip6.arpa")
    if qclass not in (_CLASS_IN, _CLASS_ANY):
        return Result(_RCODE_REFUSED) if in_zone or single else None
    if name == zone.domain:
        if qtype in (_TYPE_SOA, _TYPE_ANY):
            return Result(0, answers=(_soa(zone),))
        return Result(0, authority=(_soa(zone),))
    if reverse:
        return _resolve_reverse(zone, requester, name, qname, qtype)
    entries = _lookup(zone, requester, name)
    if any(e.held for e in entries) and not any(e.records for e in entries):
        return Result(_RCODE_SERVFAIL)  # no healthy instance yet: try again
    if not entries:
        if in_zone or single:
            return Result(_RCODE_NXDOMAIN, authority=(_soa(zone),))
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
        return Result(0, authority=(_soa(zone),))
    rotate = len(records) if qtype != _TYPE_ANY else 1
    return Result(0, answers=tuple(records), rotate=rotate, additional=tuple(additional))


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
) -> Result | None:
    view = zone.view_of(requester)
    pointer = zone.reverse.get(name)
    if pointer is not None and view is not None and pointer.network in view.networks:
        if qtype in (_TYPE_PTR, _TYPE_ANY):
            return Result(0, answers=(RR(qname, QTYPE.PTR, ttl=TTL, rdata=PTR(pointer.target)),))
        return Result(0)
    address = _reverse_address(name)
    if address is not None and any(address in net for net in zone.subnets):
        # No SOA: linkd. is not the zone of this name, and a 1 s TTL gains nothing.
        return Result(_RCODE_NXDOMAIN)
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
