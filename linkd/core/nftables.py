"""nftables rules as data: the vocabulary linkd's tables are written in.

A `Table` holds `Chain`s, a chain holds `Rule`s, and a rule is a sequence of matches
(every one must hold) followed by one statement. All of it is frozen data, so a table
can be compared, hashed and golden-tested. `linkd.core.firewall` builds the stack's table
from its plan; `Table.text()` prints it as `nft -f` reads it (for the docs, the golden
tests, and as the oracle the integration tests load with the nft tool to compare the
kernel's listings); `linkd.runtime.kernel.firewall` hands it to `linkd.runtime.kernel.nft`, the one
encoder of nf_tables expressions, which sends it to the kernel over netlink.

The vocabulary is what a rule means, not nft's bytecode: `Address("daddr",
10.0.0.0/24)` says "the destination is in 10.0.0.0/24"; the encoder adds what nft adds
to make that safe to evaluate (a `meta nfproto ipv4` check before an IPv4 address in an
`inet` table, a `meta l4proto tcp` check before a TCP port), so the kernel holds the
same objects whichever way the table arrived. Only what linkd's rules need is here: named
sets of addresses (`AddressSet`, tested with `InSet`: their elements change in one
transaction without touching a rule), no maps, counters or logging. Where nft would use
an anonymous set (`icmpv6 type { a, b }`), linkd writes one rule per element: the same
packets match.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Literal

Direction = Literal["iif", "oif"]
Field = Literal["saddr", "daddr"]
L4Protocol = Literal["tcp", "udp", "sctp"]
HookName = Literal["prerouting", "input", "forward", "output", "postrouting"]

# RFC 4443/4861 type numbers, by nft's names for them.
ICMPV6_TYPES = {"nd-neighbor-solicit": 135, "nd-neighbor-advert": 136}
# Conntrack states as nft names them; their bits are the kernel's (nf_conntrack_common.h:
# 1 << (ip_conntrack_info + 1), invalid being bit 0).
CT_STATES = {"invalid": 1, "established": 2, "related": 4, "new": 8, "untracked": 64}
# IPS_DST_NAT: the connection's destination was rewritten (a DNAT rule matched it).
CT_STATUS = {"dnat": 1 << 5}


# -- matches ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Interface:
    """`iifname "NAME"` / `oifname != "NAME"`; a name ending in `*` matches a prefix."""

    direction: Direction
    name: str
    negate: bool = False

    def text(self) -> str:
        return f'{self.direction}name {"!= " if self.negate else ""}"{self.name}"'


@dataclass(frozen=True, slots=True)
class Family:
    """`meta nfproto ipv4`: only packets of that IP version (in an `inet` table)."""

    version: Literal[4, 6]

    def text(self) -> str:
        return f"meta nfproto ipv{self.version}"


@dataclass(frozen=True, slots=True)
class Address:
    """`ip daddr 10.0.0.0/24`, `ip6 saddr fd00::/64`, `ip daddr != 10.0.0.1`."""

    field: Field
    network: IPv4Network | IPv6Network
    negate: bool = False

    def text(self) -> str:
        net = self.network
        value = (str(net.network_address) if net.prefixlen == net.max_prefixlen
                 else str(net))
        proto = "ip" if net.version == 4 else "ip6"
        return f'{proto} {self.field} {"!= " if self.negate else ""}{value}'


@dataclass(frozen=True, slots=True)
class Port:
    """`tcp dport 80`, `udp dport 8000-8010`: a destination port or an inclusive range."""

    protocol: L4Protocol
    first: int
    last: int

    def text(self) -> str:
        ports = str(self.first) if self.first == self.last else f"{self.first}-{self.last}"
        return f"{self.protocol} dport {ports}"


@dataclass(frozen=True, slots=True)
class Icmpv6Type:
    """`icmpv6 type nd-neighbor-solicit` (a name of ICMPV6_TYPES)."""

    name: str

    def text(self) -> str:
        return f"icmpv6 type {self.name}"


@dataclass(frozen=True, slots=True)
class ConntrackState:
    """`ct state established,related`: the connection is in any of these states."""

    states: tuple[str, ...]  # names of CT_STATES

    def text(self) -> str:
        return "ct state " + ",".join(self.states)


@dataclass(frozen=True, slots=True)
class ConntrackStatus:
    """`ct status dnat`: the connection has this status bit (a name of CT_STATUS)."""

    status: str

    def text(self) -> str:
        return f"ct status {self.status}"


@dataclass(frozen=True, slots=True)
class LocalDestination:
    """`fib daddr type local`: the destination is an address of this host."""

    def text(self) -> str:
        return "fib daddr type local"


@dataclass(frozen=True, slots=True)
class InterfaceKind:
    """`meta oifkind "bridge"`: the device's kind, as `ip -d link` names it (a physical
    device has none, and never matches)."""

    direction: Direction
    kind: str

    def text(self) -> str:
        return f'meta {self.direction}kind "{self.kind}"'


@dataclass(frozen=True, slots=True)
class InSet:
    """`ip saddr @peers4`, `ip6 saddr != @peers6`: the address is (not) an element of the
    table's `AddressSet` named `name`, of IP `version`."""

    field: Field
    name: str
    version: Literal[4, 6]
    negate: bool = False

    def text(self) -> str:
        proto = "ip" if self.version == 4 else "ip6"
        return f'{proto} {self.field} {"!= " if self.negate else ""}@{self.name}'


Match = (Interface | Family | Address | Port | Icmpv6Type | ConntrackState
         | ConntrackStatus | LocalDestination | InterfaceKind | InSet)


# -- statements ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Accept:
    def text(self) -> str:
        return "accept"


@dataclass(frozen=True, slots=True)
class Drop:
    def text(self) -> str:
        return "drop"


@dataclass(frozen=True, slots=True)
class Jump:
    """`jump CHAIN`: evaluate a regular chain of the same table, then come back."""

    chain: str

    def text(self) -> str:
        return f"jump {self.chain}"


@dataclass(frozen=True, slots=True)
class Notrack:
    """`notrack`: conntrack skips the packet (a raw-priority prerouting/output chain)."""

    def text(self) -> str:
        return "notrack"


@dataclass(frozen=True, slots=True)
class Masquerade:
    """`masquerade`: source NAT to the outgoing interface's address."""

    def text(self) -> str:
        return "masquerade"


@dataclass(frozen=True, slots=True)
class Dnat:
    """`dnat ip to ADDRESS[:PORT]`; without a port the destination port stays."""

    address: IPv4Address
    port: int | None = None

    def text(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"dnat ip to {self.address}{port}"


Statement = Accept | Drop | Jump | Notrack | Masquerade | Dnat


# -- rules, chains, tables ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rule:
    matches: tuple[Match, ...]
    statement: Statement

    def text(self) -> str:
        return " ".join([*(m.text() for m in self.matches), self.statement.text()])


def rule(*parts: Match | Statement) -> Rule:
    """`rule(Interface("iif", "x"), Drop())`: matches first, the statement last."""
    *matches, statement = parts
    assert not isinstance(statement, Match), "a rule ends with its statement"
    assert all(isinstance(m, Match) for m in matches), "one statement, at the end"
    return Rule(tuple(m for m in matches if isinstance(m, Match)), statement)


@dataclass(frozen=True, slots=True)
class Hook:
    """What makes a chain a base chain: the kernel calls it at `hook` of every packet."""

    type: Literal["filter", "nat"]
    hook: HookName
    priority: int
    policy: Literal["accept", "drop"] = "accept"

    def text(self) -> str:
        return (f"type {self.type} hook {self.hook} priority {self._priority()}; "
                f"policy {self.policy};")

    def _priority(self) -> str:
        # nft's names for the standard priorities, where it takes them (dstnat and
        # srcnat only at their own hooks in an inet table; nft 1.0.6 refuses others).
        named = {-300: "raw", 0: "filter"}
        if self.hook == "prerouting":
            named[-100] = "dstnat"
        if self.hook == "postrouting":
            named[100] = "srcnat"
        return named.get(self.priority, str(self.priority))


@dataclass(frozen=True, slots=True)
class Chain:
    name: str
    hook: Hook | None  # None: a regular chain, reached only by a jump
    rules: tuple[Rule, ...] = ()

    def text(self) -> str:
        lines = [f"\tchain {self.name} {{"]
        if self.hook is not None:
            lines.append(f"\t\t{self.hook.text()}")
        lines += [f"\t\t{r.text()}" for r in self.rules]
        lines.append("\t}")
        return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class AddressSet:
    """A named set of addresses of one IP version (`type ipv4_addr` / `ipv6_addr`)."""

    name: str
    version: Literal[4, 6]
    elements: frozenset[IPv4Address | IPv6Address] = frozenset()

    def __post_init__(self) -> None:
        if any(e.version != self.version for e in self.elements):
            raise ValueError(f"set {self.name} holds IPv{self.version} addresses only")

    @property
    def type(self) -> Literal["ipv4_addr", "ipv6_addr"]:
        return "ipv4_addr" if self.version == 4 else "ipv6_addr"

    def sorted(self) -> list[IPv4Address | IPv6Address]:
        return sorted(self.elements, key=int)

    def text(self) -> str:
        lines = [f"\tset {self.name} {{", f"\t\ttype {self.type}"]
        if self.elements:  # nft refuses an empty `elements = { }`
            lines.append(f"\t\telements = {{ {', '.join(map(str, self.sorted()))} }}")
        lines.append("\t}")
        return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class Table:
    family: Literal["inet", "ip"]
    name: str
    chains: tuple[Chain, ...]
    sets: tuple[AddressSet, ...] = ()  # before the chains: a rule names a set that exists

    def text(self) -> str:
        """The table as `nft -f` reads it."""
        return (f"table {self.family} {self.name} {{\n"
                + "".join(s.text() for s in self.sets)
                + "".join(c.text() for c in self.chains) + "}\n")
