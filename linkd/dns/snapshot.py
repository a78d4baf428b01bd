"""The DNS zone's snapshot: what a Zone holds, and the records behind each name.

A Zone is immutable: `linkd.dns.zone` builds a new one on every change (a container
starts, a stack goes down) and the runtime swaps it in. Nothing in it is ever updated in
place except the answer cache (`linkd.dns.answers`), which is a memo of this snapshot
and dies with it.

Tables, all keyed by lower-case names without the trailing dot: `names` per network
(a name on one network is an `Entry`: its records, and the addresses and SRV targets
they give, deduplicated and sorted; `held` are records of not-yet-healthy containers,
kept for `explain` and not answered), `reverse` (PTR names), `views` (what each
requester address sees: its networks in interface order), `extra` (names only one
requester sees: `linkd.dns.requesters`). The layout of names is described in
`linkd.dns.zone`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

Address = IPv4Address | IPv6Address
NetId = tuple[str, str]  # (stack, network key)
AliasKey = tuple[str, str, str]  # (stack, service, network key)

DEFAULT_DOMAIN = "linkd."
CACHE_LIMIT = 20_000  # entries; beyond it answers are built each time (random names)


@dataclass(frozen=True, slots=True)
class Record:
    """One container behind a name, and why it is there (for `explain`)."""

    container: str
    via: str  # "service name", "container name", "alias", "link alias", ...
    v4: IPv4Address | None
    v6: IPv6Address | None
    srv: SrvTarget | None = None  # set on SRV names, whose A/AAAA are the target's


@dataclass(frozen=True, slots=True)
class SrvTarget:
    """An SRV target: a container's port, and the addresses for the additional section."""

    port: int
    target: str  # CONTAINER.NETWORK.STACK.linkd.
    v4: IPv4Address | None
    v6: IPv6Address | None


@dataclass(frozen=True, slots=True)
class Entry:
    """A name on one network: its records and their addresses, deduplicated, sorted.

    `held`: records of not-yet-healthy containers, not answered (module docstring)."""

    records: tuple[Record, ...]
    v4: tuple[IPv4Address, ...]
    v6: tuple[IPv6Address, ...]
    srv: tuple[SrvTarget, ...] = ()
    held: tuple[Record, ...] = ()


@dataclass(frozen=True, slots=True)
class View:
    """What one requester sees: its networks in interface order."""

    id: int
    who: str  # "stack/container"
    networks: tuple[NetId, ...]


@dataclass(frozen=True, slots=True)
class Pointer:
    """A reverse name: the address, the network it is on, and the PTR target."""

    address: Address
    network: NetId
    target: str  # absolute, with trailing dot


@dataclass(frozen=True)
class Zone:
    domain: str  # lower-case, without trailing dot ("linkd")
    serial: int
    names: Mapping[NetId, Mapping[str, Entry]]  # names lower-case, no trailing dot
    reverse: Mapping[str, Pointer]  # "2.0.87.10.in-addr.arpa" -> Pointer
    views: Mapping[Address, View]
    subnets: tuple[IPv4Network | IPv6Network, ...]
    extra: Mapping[Address, Mapping[str, Entry]]
    pending: frozenset[tuple[str, str]] = frozenset()  # (stack, container) not healthy
    # The answer cache (see linkd.dns.answers): a memo of this snapshot, never part of its value.
    cache: dict[object, tuple[bytes, ...] | None] = field(
        default_factory=dict, compare=False, repr=False
    )
    counter: itertools.count[int] = field(
        default_factory=itertools.count, compare=False, repr=False
    )
    # Exact-bytes reply tables (see linkd.dns.answers.reply_table), per (requester, max_size).
    replies: dict[object, dict[bytes, tuple[bytes, ...]]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def view_of(self, requester: Address) -> View | None:
        return self.views.get(requester)

    def in_zone(self, name: str) -> bool:
        return name == self.domain or name.endswith("." + self.domain)


def make_entry(records: Iterable[Record], held: Iterable[Record] = ()) -> Entry:
    """The Entry of a name: its records, with their addresses and SRV targets
    deduplicated and sorted (so equal zones are equal), and those `held` back."""
    recs = tuple(records)
    v4 = sorted({r.v4 for r in recs if r.v4 is not None})
    v6 = sorted({r.v6 for r in recs if r.v6 is not None})
    srv = sorted({r.srv for r in recs if r.srv is not None}, key=lambda t: (t.target, t.port))
    return Entry(recs, tuple(v4), tuple(v6), tuple(srv), tuple(held))
