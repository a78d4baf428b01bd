"""Address management: subnets for networks, addresses for containers.

Pure functions over what is already taken. The caller (the runtime) gathers `taken` from
the host's routing table and from the other stacks linkd runs, so two stacks never get
the same subnet and no stack shadows a route the host already has.

Pool: networks without a declared subnet get the first free /24 of 10.87.0.0/16
(Docker takes 172.17.0.0/16 upwards, Podman 10.88/10.89; 10.87 clashes with neither).
IPv6 networks without a declared subnet get a /64 from a unique local /48 derived from
the stack and network names (RFC 4193 asks for a random global ID; a hash of the names
is as unlikely to collide and stays stable across runs).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from linkd.core.model import Network
from linkd.errors import ConflictError


@dataclass(frozen=True, slots=True)
class Lease:
    """The subnets and addresses a stack had last time: what it gets again if it can.

    Kept by the runtime when the stack goes down, so a re-created container comes back
    at its old address and the link variables others had for it stay true.
    """

    stack: str
    subnets: tuple[tuple[str, IPv4Network], ...] = ()  # (network key, subnet)
    # (network key, container, IPv4 address, IPv6 address)
    addresses: tuple[tuple[str, str, IPv4Address, IPv6Address | None], ...] = ()

    def subnet_map(self) -> dict[str, IPv4Network]:
        return dict(self.subnets)

    def addresses_on(self, network: str, version: int) -> dict[str, IPv4Address | IPv6Address]:
        found: dict[str, IPv4Address | IPv6Address] = {}
        for key, owner, v4, v6 in self.addresses:
            address = v4 if version == 4 else v6
            if key == network and address is not None:
                found[owner] = address
        return found


DEFAULT_POOL = IPv4Network("10.87.0.0/16")
DEFAULT_PREFIX = 24

IPNetwork = IPv4Network | IPv6Network


def pick_subnets(
    networks: Sequence[Network],
    taken: Iterable[tuple[IPNetwork, str]],
    *,
    pool: IPv4Network = DEFAULT_POOL,
    prefix: int = DEFAULT_PREFIX,
    previous: Mapping[str, IPv4Network] | None = None,
    reserved: Iterable[IPv4Network] = (),
) -> dict[str, IPv4Network]:
    """Give every network an IPv4 subnet that overlaps nothing in `taken`.

    `taken` pairs each used subnet with what uses it ("host route via eth0", "stack
    shop network front"), so a clash can be explained. Declared subnets are checked,
    the others are picked first-fit from `pool`.

    Sticky subnets: a network gets its `previous` subnet (from the stack's lease) when
    it is still free; new picks avoid the `reserved` subnets (other stacks' leases, held
    while those stacks are down) as long as the pool has others.

    Raises:
        ConflictError: a declared subnet overlaps something taken, or the pool is full.
    """
    used: list[tuple[IPNetwork, str]] = [
        (net, who) for net, who in taken if net.prefixlen > 0  # a default route is no clash
    ]
    chosen: dict[str, IPv4Network] = {}
    for network in networks:
        if network.subnet is None:
            continue
        for net, who in used:
            if net.version == 4 and network.subnet.overlaps(net):
                raise ConflictError(
                    f"networks.{network.name}: subnet {network.subnet} overlaps {net} "
                    f"({who}); choose another subnet in networks.{network.name}.ipam.config"
                )
        chosen[network.name] = network.subnet
        used.append((network.subnet, f"network {network.name}"))
    # Overlap tests on integer spans: ipaddress's own cost ~1 us each, and first-fit
    # over a /16 pool against every route and lease made them most of a stack's `up`.
    spans = [_span(net) for net, _ in used if net.version == 4]
    held = [_span(net) for net in reserved if net.version == 4]
    for network in networks:
        if network.subnet is not None:
            continue
        before = (previous or {}).get(network.name)
        if before is not None and before.subnet_of(pool) and _clear(_span(before), spans):
            pick: IPv4Network | None = before
        else:
            size = 1 << (32 - prefix)
            first = int(pool.network_address)
            free = [(start, start + size - 1)
                    for start in range(first, first + pool.num_addresses, size)
                    if _clear((start, start + size - 1), spans)]
            span = next((f for f in free if _clear(f, held)), free[0] if free else None)
            pick = IPv4Network((span[0], prefix)) if span is not None else None
        if pick is not None:
            chosen[network.name] = pick
            used.append((pick, f"network {network.name}"))
            spans.append(_span(pick))
        else:
            in_pool = sorted({who for net, who in used if net.version == 4 and net.overlaps(pool)})
            raise ConflictError(
                f"networks.{network.name}: no free /{prefix} left in linkd's pool {pool} "
                f"(in use: {', '.join(in_pool[:5])}{', ...' if len(in_pool) > 5 else ''}); "
                "bring other stacks down or declare a subnet under ipam.config"
            )
    return chosen


def _span(net: IPNetwork) -> tuple[int, int]:
    first = int(net.network_address)
    return first, first + net.num_addresses - 1


def _clear(span: tuple[int, int], taken: Iterable[tuple[int, int]]) -> bool:
    """`span` overlaps none of `taken`."""
    first, last = span
    return all(last < start or first > end for start, end in taken)


def ula_subnet(stack: str, network: str) -> IPv6Network:
    """A stable /64 inside fd00::/8 for a network that enabled IPv6 without a subnet."""
    digest = hashlib.sha256(f"ula\0{stack}\0{network}".encode()).digest()
    global_id = int.from_bytes(digest[:5], "big")  # 40 bits, RFC 4193 section 3.2
    value = (0xFD << 120) | (global_id << 80)
    return IPv6Network((value, 64))


def gateway_of(subnet: IPv4Network | IPv6Network) -> IPv4Address | IPv6Address:
    """The conventional gateway: the first usable address of the subnet."""
    return subnet.network_address + 1


def assign(
    subnet: IPv4Network | IPv6Network,
    reserved: Iterable[IPv4Address | IPv6Address],
    wanted: Sequence[tuple[str, IPv4Address | IPv6Address | None]],
    previous: Mapping[str, IPv4Address | IPv6Address] | None = None,
) -> dict[str, IPv4Address | IPv6Address]:
    """Addresses for each `(owner, static_address_or_None)` in order.

    Static addresses are honoured first, then each owner's `previous` address (its
    lease) if it is still in the subnet and free, then the others take the lowest free
    address, so the same stack file always gives the same addresses and a container
    keeps its address when other services are added or removed.

    Raises:
        ConflictError: two owners want the same static address, or the subnet is full.
    """
    taken = set(reserved)
    result: dict[str, IPv4Address | IPv6Address] = {}
    leased: set[str] = set()
    for owner, static in wanted:
        if static is None:
            continue
        if static in taken:
            clash = next((o for o, a in result.items() if a == static),
                         "the gateway, or another stack's container on the network")
            raise ConflictError(f"{owner}: address {static} is already used by {clash}")
        taken.add(static)
        result[owner] = static
    for owner, static in wanted:
        before = (previous or {}).get(owner)
        if static is None and before is not None and _usable(before, subnet, taken):
            taken.add(before)
            result[owner] = before
            leased.add(owner)
    hosts = subnet.hosts()
    for owner, static in wanted:
        if static is not None or owner in leased:
            continue
        for address in hosts:
            if address not in taken:
                taken.add(address)
                result[owner] = address
                break
        else:
            raise ConflictError(f"{owner}: subnet {subnet} has no free address left")
    return result


def _usable(
    address: IPv4Address | IPv6Address,
    subnet: IPv4Network | IPv6Network,
    taken: set[IPv4Address | IPv6Address],
) -> bool:
    edges = (subnet.network_address, subnet.broadcast_address)
    return address in subnet and address not in taken and address not in edges

