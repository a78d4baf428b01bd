"""Who may send VXLAN to this node: the node's nftables table that drops the rest.

A VXLAN device takes any UDP datagram that reaches port 4789 of the node and whose VNI it
knows, and hands the Ethernet frame inside to the overlay network's bridge: anyone on the
underlay could put frames into an overlay network (a container's address as the source,
past the isolation of linkd's stack tables, which see the frame only once it is inside).
Only the cluster's nodes send VXLAN to a node, so this table drops VXLAN from any other
source (issue 18, "isolation holds across nodes").

One table per node, not per stack: `inet linkd-_overlay` in the host's namespace (the
`_` makes it a name no stack has: `firewall.stack_of_table` says None), holding

- two named sets, `peers4` and `peers6`, of the other nodes' underlay addresses (what
  the cluster's membership lists; this node's own may be among them, harmlessly): as
  nodes come and go, the runtime changes their elements in one transaction, without
  touching the chain, so no packet ever meets a half-made table;
- one chain at the input hook, policy accept, whose only rules drop UDP to the VXLAN
  port from an address in neither set. Nothing is accepted here, so the table adds no
  way in: every other packet goes on to the stacks' tables and the host's own rules, and
  a drop here only ever removes VXLAN packets.

The input hook, because the VXLAN device's socket is a local socket of the node: the
kernel reassembles fragments before this hook, so a fragmented datagram is judged whole;
traffic routed through the node (a published port 4789 DNATed to a container) never
passes here. Priority -10, before the stacks' filter chains (0): an injected packet is
dropped before any other rule looks at it, and before conntrack confirms an entry for
it (at the end of this hook), so a flood of forged sources fills no conntrack table.
An empty set lets none of its IP version in: with no known peer, no VXLAN is taken.

This stops what does not come from a node's address, not a sender that forges one:
VXLAN carries no authentication and no encryption (docs/security.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv6Address
from typing import Literal

from linkd.core import firewall
from linkd.core import nftables as nft
from linkd.core.nftables import rule
from linkd.core.overlay import VXLAN_PORT, IPAddress

TABLE = firewall.node_table_name("overlay")
FAMILY = firewall.FAMILY
CHAIN = "input"
PRIORITY = -10  # before the stacks' filter chains (0); see the module docstring
SETS: dict[Literal[4, 6], str] = {4: "peers4", 6: "peers6"}


def _canonical(address: IPAddress) -> IPAddress:
    """The address as the kernel sees a packet's source: an IPv4-mapped IPv6 address is
    the IPv4 address (an IPv4 packet carries no IPv6 header), and a scope is no part of
    an address on the wire."""
    if isinstance(address, IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        return IPv6Address(address.packed)
    return address


def peer_sets(peers: Iterable[IPAddress]) -> tuple[nft.AddressSet, nft.AddressSet]:
    """The two sets (IPv4, IPv6) of the addresses allowed to send VXLAN here."""
    found = {_canonical(a) for a in peers}
    v4 = frozenset(a for a in found if isinstance(a, IPv4Address))
    v6 = frozenset(a for a in found if isinstance(a, IPv6Address))
    return nft.AddressSet(SETS[4], 4, v4), nft.AddressSet(SETS[6], 6, v6)


def table(peers: Iterable[IPAddress], port: int = VXLAN_PORT) -> nft.Table:
    """The node's VXLAN table, as data: only `peers` may send to UDP `port`."""
    if not 0 < port < 65536:
        raise ValueError(f"VXLAN port {port} is not a UDP port (1-65535)")
    rules = tuple(
        rule(nft.Port("udp", port, port), nft.InSet("saddr", name, version, negate=True),
             nft.Drop())
        for version, name in SETS.items()
    )
    return nft.Table(FAMILY, TABLE, (nft.Chain(CHAIN, nft.Hook("filter", "input", PRIORITY),
                                               rules),),
                     sets=peer_sets(peers))


def ruleset(peers: Iterable[IPAddress], port: int = VXLAN_PORT) -> str:
    """The table as `nft -f` reads it (the docs, the golden test, the tests' oracle)."""
    return table(peers, port).text()
