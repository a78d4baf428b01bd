"""Overlay networks' subnets, VNIs and addresses, claimed cluster-wide in etcd.

Used by the daemon's overlay networks (linkd.runtime.cluster.overlay_networks): every
claim is one etcd transaction that puts its keys only if the keys it depends on are as
they were read (absent, or unchanged), so two nodes claiming at once never both win; the
loser tries its next candidate (linkd.core.cluster_ipam says which). Everything is idempotent: a
claim of what is already held returns it, a release of what is gone does nothing.

Within one registry (one node's daemon) claims on the same network wait for each other
rather than race: the races that remain are between nodes, one claim in flight each.

Invariants the transactions keep: a network's record, its `vnis/<n>` and its
`subnets/<cidr>` keys are made together and removed together; an address key is made
only while the network's record is the one read, and with the owner's lease unchanged
since it was read, so an owner never holds two addresses on one network.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from ipaddress import IPv4Address, IPv4Network
from typing import TypeVar

from linkd.core import cluster_ipam as layout
from linkd.core.cluster import DEFAULT_PREFIX, RecordError
from linkd.core.cluster_ipam import NetworkRecord
from linkd.core.ipam import IPNetwork
from linkd.core.overlay import allocate_vni
from linkd.errors import ConflictError
from linkd.runtime.cluster.etcd import (
    Absent,
    Delete,
    Etcd,
    Get,
    Holds,
    NoneUnder,
    Put,
    Unchanged,
)

log = logging.getLogger(__name__)

_T = TypeVar("_T")

ATTEMPTS = 64  # lost races before a claim gives up (each loss rules one candidate out)


class Registry:
    """One node's view of the cluster's overlay networks, on its etcd client."""

    def __init__(self, etcd: Etcd, node: str, prefix: str = DEFAULT_PREFIX) -> None:
        self.etcd = etcd
        self.node = node
        self.prefix = prefix
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    # -- networks ---------------------------------------------------------------------

    async def network(self, network_id: str) -> NetworkRecord | None:
        found = await self._record(network_id)
        return found[0] if found else None

    async def _record(self, network_id: str) -> tuple[NetworkRecord, int] | None:
        key = layout.network_key(network_id, self.prefix)
        found = await self.etcd.get(key)
        if found is None:
            return None
        value, revision = found
        return layout.decode_network(key, value, network_id, self.prefix), revision

    async def find(self, name: str) -> NetworkRecord | None:
        """The network named `name` (see claim_network), wherever it was made."""
        found = await self.etcd.get(layout.name_key(name, self.prefix))
        if found is None:
            return None
        network_id = found[0].decode(errors="replace")
        if layout.pair_problem(network_id, "network id") is not None:
            raise RecordError(f"the name index of network {name} holds no network id")
        return await self.network(network_id)

    async def claim_network(self, network_id: str,
                            avoid: Iterable[tuple[IPNetwork, str]] = (),
                            name: str = "", prefix: int = layout.OVERLAY_PREFIX
                            ) -> NetworkRecord:
        """The network's record: the one etcd holds, or one made now with the first free
        VNI (from its hash upwards) and the first free subnet of linkd's pool that
        overlaps nothing in `avoid` (this node's routes and local networks). `name`, if
        given, is claimed with it: ConflictError when another network has it."""
        avoid = list(avoid)
        async with self._locks[network_id]:
            existing = await self.network(network_id)
            if existing is not None:
                return existing
            vnis = await self._taken_vnis()
            subnets = await self.taken_subnets()
            key = layout.network_key(network_id, self.prefix)
            named = [layout.name_key(name, self.prefix)] if name else []
            for _ in range(ATTEMPTS):
                subnet = layout.pick_subnet(network_id, subnets, avoid, prefix)
                record = NetworkRecord(network_id, subnet, allocate_vni(network_id, vnis),
                                       self.node, name)
                vni_key = layout.vni_key(record.vni, self.prefix)
                subnet_key = layout.subnet_key(record.subnet, self.prefix)
                owner = network_id.encode()
                done, found = await self.etcd.txn(
                    [Absent(key), Absent(vni_key), Absent(subnet_key),
                     *(Absent(k) for k in named)],
                    [Put(key, layout.encode_network(record)), Put(vni_key, owner),
                     Put(subnet_key, owner), *(Put(k, owner) for k in named)],
                    [Get(key), Get(vni_key), Get(subnet_key), *(Get(k) for k in named)])
                if done:
                    log.info("overlay network %s: VNI %d, subnet %s", network_id,
                             record.vni, record.subnet)
                    return record
                held, vni_held, subnet_held, *name_held = found
                if held is not None:  # another node made it meanwhile
                    return layout.decode_network(key, held[0], network_id, self.prefix)
                if name_held and name_held[0] is not None:
                    other = name_held[0][0].decode(errors="replace")[:200]
                    raise ConflictError(
                        f"network {name} exists in the cluster already (network {other}); "
                        "to join it, declare it external: true, or give this one another "
                        "name")
                if vni_held is not None:
                    vnis.append(record.vni)
                if subnet_held is not None:
                    subnets.append(record.subnet)
            raise ConflictError(f"overlay network {network_id}: lost {ATTEMPTS} races for "
                                "a VNI and a subnet in a row; try again")

    async def release_network(self, network_id: str) -> bool:
        """Remove the network's record, its VNI and subnet, and its sticky leases, if no
        address is held on it: whether there was a record. ConflictError while addresses
        are held (release them first)."""
        key = layout.network_key(network_id, self.prefix)
        async with self._locks[network_id]:
            for _ in range(ATTEMPTS):
                found = await self.etcd.get(key)
                if found is None:
                    return False
                value, revision = found
                deletes = [Delete(key),
                           Delete(layout.network_children(network_id, self.prefix), prefix=True)]
                try:
                    record = layout.decode_network(key, value, network_id, self.prefix)
                except RecordError as exc:
                    log.warning("releasing overlay network %s: %s", network_id, exc)
                else:  # the indexes are made and removed with the record: they are its
                    deletes += [Delete(layout.vni_key(record.vni, self.prefix)),
                                Delete(layout.subnet_key(record.subnet, self.prefix))]
                    if record.name:
                        deletes.append(Delete(layout.name_key(record.name, self.prefix)))
                addresses = layout.addresses_prefix(network_id, self.prefix)
                done, _ = await self.etcd.txn(
                    [Unchanged(key, revision), NoneUnder(addresses)], deletes)
                if done:
                    return True
                held = await self.addresses(network_id)
                if held:
                    shown = ", ".join(f"{ip} ({who})" for ip, who in sorted(held.items())[:5])
                    raise ConflictError(
                        f"overlay network {network_id} still has {len(held)} address(es) "
                        f"held: {shown}; release them first")
                # else the record changed meanwhile (made anew by another node): again
            raise ConflictError(f"overlay network {network_id}: changed under {ATTEMPTS} "
                                "releases in a row; try again")

    # -- addresses --------------------------------------------------------------------

    async def addresses(self, network_id: str) -> dict[IPv4Address, str]:
        """Who holds which address on the network now (what etcd holds that is not an
        address of linkd's is left out, and logged)."""
        head = layout.addresses_prefix(network_id, self.prefix)
        items, _ = await self.etcd.read_prefix(head)
        held: dict[IPv4Address, str] = {}
        for key, value in items:
            try:
                held[layout.address_of_key(key, network_id, self.prefix)] = \
                    layout.decode_pair(value, "owner", key)
            except RecordError as exc:
                log.warning("overlay network %s: %s", network_id, exc)
        return held

    async def leases(self, network_id: str) -> dict[str, IPv4Address]:
        """The sticky address of every owner that ever held one on the network."""
        head = layout.leases_prefix(network_id, self.prefix)
        items, _ = await self.etcd.read_prefix(head)
        found: dict[str, IPv4Address] = {}
        for key, value in items:
            try:
                owner = layout.decode_pair(key[len(head):], "owner", key)
                found[owner] = layout.decode_address(value, key)
            except RecordError as exc:
                log.warning("overlay network %s: %s", network_id, exc)
        return found

    async def claim_address(self, network_id: str, owner: str) -> IPv4Address:
        """`owner`'s address on the network: the one it holds, else its sticky one if
        free, else the lowest free one nobody else had (then any free one). Never one
        another owner holds. ConflictError if the network is not claimed or full."""
        lease_key = layout.lease_key(network_id, owner, self.prefix)
        taken: set[IPv4Address] = set()
        async with self._locks[network_id]:
            held_now = await self.addresses(network_id)
            taken.update(ip for ip, who in held_now.items() if who != owner)
            others = {ip for who, ip in (await self.leases(network_id)).items() if who != owner}
            for _ in range(ATTEMPTS):
                found = await self._record(network_id)
                if found is None:
                    raise ConflictError(f"overlay network {network_id} is not in the "
                                        "cluster's registry: claim the network first")
                record, record_revision = found
                lease = await self.etcd.get(lease_key)
                sticky = self._sticky(lease, lease_key)
                if sticky is not None:
                    mine = await self.etcd.get(
                        layout.address_key(network_id, sticky, self.prefix))
                    if mine is not None and mine[0] == owner.encode():
                        return sticky  # held already: claimed twice, or by a racing claim
                address = layout.pick_address(record, owner, taken, sticky, others)
                key = layout.address_key(network_id, address, self.prefix)
                done, read = await self.etcd.txn(
                    [Unchanged(layout.network_key(network_id, self.prefix), record_revision),
                     Absent(key), Unchanged(lease_key, lease[1] if lease else 0)],
                    [Put(key, owner.encode()), Put(lease_key, str(address).encode())],
                    [Get(key)])
                if done:
                    return address
                (by,) = read
                if by is not None and by[0] != owner.encode():
                    taken.add(address)
                # else the record or the lease changed meanwhile: read them again
            raise ConflictError(f"overlay network {network_id}: {owner} lost {ATTEMPTS} "
                                "races for an address in a row; try again")

    def _sticky(self, lease: tuple[bytes, int] | None, key: bytes) -> IPv4Address | None:
        if lease is None:
            return None
        try:
            return layout.decode_address(lease[0], key)
        except RecordError as exc:
            log.warning("%s; a new address is picked", exc)
            return None

    async def release_address(self, network_id: str, owner: str) -> IPv4Address | None:
        """Free `owner`'s address on the network, keeping its lease so that its next
        claim gets the same address back if nobody took it: the address, or None if it
        held none."""
        lease_key = layout.lease_key(network_id, owner, self.prefix)
        lease = await self.etcd.get(lease_key)
        address = self._sticky(lease, lease_key)
        if address is None:
            return None
        key = layout.address_key(network_id, address, self.prefix)
        done, _ = await self.etcd.txn([Holds(key, owner.encode())], [Delete(key)])
        return address if done else None

    # -- indexes ----------------------------------------------------------------------

    async def _taken_vnis(self) -> list[int]:
        return await self._indexed(layout.vnis_prefix(self.prefix), layout.vni_of_key)

    async def taken_subnets(self) -> list[IPv4Network]:
        """Every overlay network's subnet."""
        return await self._indexed(layout.subnets_prefix(self.prefix), layout.subnet_of_key)

    async def _indexed(self, head: bytes, parse: Callable[[bytes, str], _T]) -> list[_T]:
        """What the keys of an index under `head` say (a key that does not parse is
        logged and left out)."""
        items, _ = await self.etcd.read_prefix(head)
        found = []
        for key, _value in items:
            try:
                found.append(parse(key, self.prefix))
            except RecordError as exc:
                log.warning("%s", exc)
        return found
