"""Overlay networks as data: a network's VNI, its kernel objects, its MTU, and the
forwarding entries that carry its containers' traffic between nodes.

An overlay network spans nodes. On every node that has a container on it there is the
network's bridge (the one a local network has, `names.bridge_name`) and, as one more port
of that bridge, a VXLAN device `lkx-…` (`names.vxlan_name`) that wraps the frames for
containers on other nodes in UDP to port 4789 of that node's underlay address (RFC 7348).

Nothing is learnt and nothing is flooded. The device is made with learning off and
without a multicast group or default destination, so a frame reaches another node only
through an entry linkd programmed from the cluster's registry:

- an FDB entry per remote container, MAC -> the underlay address (VTEP) of its node,
  static, on the VXLAN device itself (`bridge fdb … self permanent`);
- a neighbour entry per remote container address, IP -> MAC, permanent, on the VXLAN
  device, which answers ARP requests and IPv6 neighbour solicitations for those
  addresses itself (its `proxy` option) instead of sending them anywhere.

`desired_forwarding` computes both from the list of endpoints (every container on the
network, wherever it runs), `diff` compares that with what the kernel holds, and
`apply` says what the kernel holds after the runtime (linkd.runtime.kernel.vxlan)
carried out the changes: removals first, then additions (which replace).

The VNI is deterministic from the network's cluster-wide id (`overlay_id`), so every
node agrees on it without talking; two networks whose hashes meet are told apart by
`allocate_vni`, given the VNIs already taken (the cluster allocates it in one etcd
transaction and retries with the new list when another node won the race).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from linkd.core import names
from linkd.core.hash_once import HashOnce
from linkd.errors import LinkdError

VNI_MIN, VNI_MAX = 1, (1 << 24) - 1  # 24 bits (RFC 7348 §5); 0 is left unused
VXLAN_PORT = 4789  # IANA's port for VXLAN (RFC 7348 §5), not Linux's historical 8472
# What VXLAN adds to every frame: outer IP header + UDP (8) + VXLAN (8) + the inner
# Ethernet header (14); the inner frame's own header does not count against its MTU.
OVERHEAD_IPV4 = 20 + 8 + 8 + 14
OVERHEAD_IPV6 = 40 + 8 + 8 + 14
MIN_MTU_IPV4 = 68  # RFC 791: every IPv4 link carries 68 bytes unfragmented
MIN_MTU_IPV6 = 1280  # RFC 8200 §5

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


class OverlayError(LinkdError):
    """An overlay network's numbers cannot be had: no VNI left, an underlay too small."""

    status = 409


# -- identity ----------------------------------------------------------------------------


def overlay_id(stack: str, network: str) -> str:
    """The cluster-wide id of a stack's network: `<stack>/<network>` (a stack name never
    holds a '/', so the first one separates them)."""
    return f"{stack}/{network}"


def vni_for(network_id: str) -> int:
    """The network's preferred VNI: 24 bits of a hash of its id, never 0."""
    digest = int.from_bytes(hashlib.sha256(f"vni\0{network_id}".encode()).digest()[:8], "big")
    return VNI_MIN + digest % (VNI_MAX - VNI_MIN + 1)


def allocate_vni(network_id: str, taken: Collection[int]) -> int:
    """The first VNI not in `taken`, from the preferred one upwards (wrapping round).

    Every node computes the same answer from the same list, so the etcd transaction that
    claims it fails only when another network claimed one meanwhile; the retry, with
    that one in `taken`, moves to the next free number.
    """
    size = VNI_MAX - VNI_MIN + 1
    used = {v for v in taken if VNI_MIN <= v <= VNI_MAX}
    if len(used) >= size:
        raise OverlayError(f"overlay network {network_id}: every VNI (1 to {VNI_MAX}) is "
                           "taken; remove overlay networks that are no longer used")
    start = vni_for(network_id) - VNI_MIN
    for step in range(size):
        candidate = VNI_MIN + (start + step) % size
        if candidate not in used:
            return candidate
    raise AssertionError("unreachable: a free VNI exists")


def overlay_mtu(underlay_mtu: int, *, ipv6_underlay: bool = False) -> int:
    """The MTU of an overlay network's devices (VXLAN device, bridge, containers' ends)
    over an underlay of `underlay_mtu`: a full frame, wrapped, must still fit in one
    underlay packet, since VXLAN packets are not to be fragmented (RFC 7348 §4.3)."""
    overhead = OVERHEAD_IPV6 if ipv6_underlay else OVERHEAD_IPV4
    mtu = underlay_mtu - overhead
    if mtu < MIN_MTU_IPV4:
        family = "IPv6" if ipv6_underlay else "IPv4"
        raise OverlayError(
            f"an underlay MTU of {underlay_mtu} leaves {mtu} bytes for an overlay network "
            f"(VXLAN over {family} takes {overhead}); give the underlay an MTU of at least "
            f"{MIN_MTU_IPV4 + overhead}")
    return mtu


@dataclass(frozen=True, slots=True)
class VxlanDevice:
    """What `ensure_vxlan` makes on one node for one overlay network."""

    name: str  # lkx-…
    bridge: str  # lkb-…, the network's bridge, whose port it is
    vni: int
    local: IPAddress  # this node's underlay address
    mtu: int
    port: int = VXLAN_PORT


def vxlan_device(stack: str, network: str, vni: int, local: IPAddress,
                 underlay_mtu: int) -> VxlanDevice:
    if not VNI_MIN <= vni <= VNI_MAX:
        raise OverlayError(f"overlay network {overlay_id(stack, network)}: VNI {vni} is "
                           f"outside {VNI_MIN}..{VNI_MAX}")
    return VxlanDevice(
        name=names.vxlan_name(stack, network),
        bridge=names.bridge_name(stack, network),
        vni=vni,
        local=local,
        mtu=overlay_mtu(underlay_mtu, ipv6_underlay=local.version == 6),
    )


# -- forwarding entries ------------------------------------------------------------------


def parse_mac(text: str) -> str:
    """`text` as a container's MAC, lower-case with colons; OverlayError when it is not a
    unicast Ethernet address (a multicast or all-zero one would make an FDB entry that
    floods, which an overlay network never does)."""
    mac = text.strip().lower().replace("-", ":")
    if not _MAC.fullmatch(mac):
        raise OverlayError(f"{text[:40]!r} is not a MAC address (six hex pairs: 02:42:0a:00:00:02)")
    if int(mac[:2], 16) & 1:
        raise OverlayError(f"{mac} is a multicast MAC address; a container's is unicast")
    if mac == "00:00:00:00:00:00":
        raise OverlayError("00:00:00:00:00:00 is not a container's MAC address")
    return mac


@dataclass(frozen=True, slots=True)
class FdbEntry(HashOnce):
    """`bridge fdb add MAC dev VXLAN dst VTEP self permanent`."""

    mac: str
    vtep: IPAddress

    __hash__ = HashOnce.__hash__


@dataclass(frozen=True, slots=True)
class NeighEntry(HashOnce):
    """`ip neigh replace ADDRESS lladdr MAC dev VXLAN nud permanent`."""

    address: IPAddress
    mac: str

    __hash__ = HashOnce.__hash__


@dataclass(frozen=True, slots=True)
class Endpoint(HashOnce):
    """One container's interface on an overlay network, wherever it runs."""

    mac: str  # as parse_mac gives it
    address: IPAddress  # the container's address on the network
    node: IPAddress  # the underlay address of the node it runs on
    # Its entries, made once (and hashed once) however many passes look at them, and its
    # addresses as bytes, which compare and hash in C (an ipaddress object does in Python).
    fdb: FdbEntry = field(init=False, repr=False, compare=False)
    neigh: NeighEntry = field(init=False, repr=False, compare=False)
    node_key: bytes = field(init=False, repr=False, compare=False)
    address_key: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fdb", FdbEntry(self.mac, self.node))
        object.__setattr__(self, "neigh", NeighEntry(self.address, self.mac))
        object.__setattr__(self, "node_key", self.node.packed)
        object.__setattr__(self, "address_key", self.address.packed)

    __hash__ = HashOnce.__hash__


@dataclass(frozen=True, slots=True)
class ForwardingState:
    """The entries of one VXLAN device, desired or observed."""

    fdb: frozenset[FdbEntry] = frozenset()
    neigh: frozenset[NeighEntry] = frozenset()


@dataclass(frozen=True, slots=True)
class Desired:
    state: ForwardingState
    problems: tuple[str, ...]  # endpoints left out, and why


def desired_forwarding(endpoints: Iterable[Endpoint], local: IPAddress) -> Desired:
    """The entries that reach every endpoint on another node than `local`.

    Endpoints come from the registry, written by every node: where two disagree (one MAC
    on two nodes, one address with two MACs: a container moving, or a stale record), the
    entries involved are left out and said, rather than sending its traffic to a node
    chosen by chance; the next registry change settles it.
    """
    here = local.packed
    remote = {e for e in endpoints if e.node_key != here}
    # By the addresses' bytes (Endpoint.node_key, address_key): this runs over every
    # container of the network on each change of any.
    node_of: dict[str, bytes] = {}
    mac_of: dict[bytes, str] = {}
    torn_macs: set[str] = set()
    torn_addresses: set[bytes] = set()
    for e in remote:
        if node_of.setdefault(e.mac, e.node_key) != e.node_key:
            torn_macs.add(e.mac)
        if mac_of.setdefault(e.address_key, e.mac) != e.mac:
            torn_addresses.add(e.address_key)
    problems = []
    for mac in sorted(torn_macs):
        on = ", ".join(sorted({str(e.node) for e in remote if e.mac == mac}))
        problems.append(f"MAC {mac} is claimed by containers on several nodes ({on})")
    for packed in sorted(torn_addresses, key=lambda p: (len(p), p)):
        address = ipaddress.ip_address(packed)
        macs = sorted({e.mac for e in remote if e.address == address})
        problems.append(f"address {address} is claimed by several MACs ({', '.join(macs)})")
    fdb = frozenset(e.fdb for e in remote if e.mac not in torn_macs)
    neigh = frozenset(e.neigh for e in remote
                      if e.mac not in torn_macs and e.address_key not in torn_addresses)
    return Desired(ForwardingState(fdb, neigh), tuple(problems))


@dataclass(frozen=True, slots=True)
class ForwardingChanges:
    """What to do to a device, in this order: remove, then add (an addition replaces the
    entry of the same MAC, or of the same address, that the kernel may still hold)."""

    remove_fdb: tuple[FdbEntry, ...] = ()
    remove_neigh: tuple[NeighEntry, ...] = ()
    add_fdb: tuple[FdbEntry, ...] = ()
    add_neigh: tuple[NeighEntry, ...] = ()

    def empty(self) -> bool:
        return not (self.remove_fdb or self.remove_neigh or self.add_fdb or self.add_neigh)


def _neigh_key(entry: NeighEntry) -> tuple[int, IPAddress]:
    return entry.address.version, entry.address


def diff(desired: ForwardingState, observed: ForwardingState) -> ForwardingChanges:
    """The changes that make `observed` into `desired`.

    FDB entries are removed exactly (MAC and destination: the kernel may hold several
    destinations for one MAC, and removing one leaves the others). A neighbour entry is
    one per address, so one whose MAC changes is simply replaced, never removed first:
    traffic to it is not cut for a moment.
    """
    wanted_addresses = {e.address for e in desired.neigh}
    return ForwardingChanges(
        remove_fdb=tuple(sorted(observed.fdb - desired.fdb, key=_fdb_key)),
        remove_neigh=tuple(sorted((e for e in observed.neigh if e.address not in wanted_addresses),
                                  key=_neigh_key)),
        add_fdb=tuple(sorted(desired.fdb - observed.fdb, key=_fdb_key)),
        add_neigh=tuple(sorted(desired.neigh - observed.neigh, key=_neigh_key)),
    )


def _fdb_key(entry: FdbEntry) -> tuple[str, int, IPAddress]:
    return entry.mac, entry.vtep.version, entry.vtep


def apply(observed: ForwardingState, changes: ForwardingChanges) -> ForwardingState:
    """What the device holds once `changes` are carried out on `observed`, as the kernel
    does them (the runtime's order; a neighbour entry is one per address)."""
    fdb = (observed.fdb - set(changes.remove_fdb)) | set(changes.add_fdb)
    neigh = {e.address: e for e in observed.neigh}
    for e in changes.remove_neigh:
        neigh.pop(e.address, None)
    for e in changes.add_neigh:
        neigh[e.address] = e
    return ForwardingState(frozenset(fdb), frozenset(neigh.values()))
