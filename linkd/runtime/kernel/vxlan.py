"""An overlay network's VXLAN device and its forwarding entries, in the kernel.

The numbers and the entries come from linkd.core.overlay; this module makes them so, in
the namespace of the `Kernel` given (the node's own), through linkd.runtime.kernel.netlink
(the only pyroute2 user), with its rules: every step is idempotent, an error is a
`KernelError` naming the device.

The device (`ensure_vxlan`): VNI, UDP port 4789, this node's underlay address as the
source, `nolearning` (remote MACs come from linkd's FDB entries only, never from
traffic), `proxy` (ARP requests and neighbour solicitations are answered from linkd's
neighbour entries on the device, never sent), no multicast group and no default
destination (an unknown destination is dropped, never flooded to other nodes), the
overlay MTU, a port of the network's bridge, up. One that exists with other settings is
made anew; its MTU, bridge and state are set in place. It goes with its bridge
(`Kernel.remove_bridge`) or alone (`remove_vxlan`).

The entries: `ensure_fdb`/`remove_fdb` (MAC -> remote node, on the device itself:
`bridge fdb … self permanent`), `ensure_neigh`/`remove_neigh` (address -> MAC, permanent),
`observe_forwarding` reads what the device holds, and `sync_forwarding` makes it hold
what is desired: removals first, then additions, as `overlay.apply` describes.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
from typing import Any

from linkd.core.overlay import (
    FdbEntry,
    ForwardingChanges,
    ForwardingState,
    IPAddress,
    NeighEntry,
    VxlanDevice,
    diff,
)
from linkd.errors import KernelError
from linkd.runtime.kernel import netlink
from linkd.runtime.kernel.netlink import Kernel

NTF_SELF = 0x02  # linux/neighbour.h: the device's own table, not its bridge's
NUD_NOARP, NUD_PERMANENT = 0x40, 0x80


def _family(address: IPAddress) -> int:
    return socket.AF_INET6 if address.version == 6 else socket.AF_INET


def _gone(exc: KernelError) -> bool:
    return exc.errno in netlink.GONE


# -- the device --------------------------------------------------------------------------


def _settings(device: VxlanDevice) -> dict[str, Any]:
    """The attributes that identify the device: one that differs in any is made anew."""
    local = "vxlan_local6" if device.local.version == 6 else "vxlan_local"
    return {"vxlan_id": device.vni, local: str(device.local), "vxlan_port": device.port,
            "vxlan_learning": 0, "vxlan_proxy": 1, "vxlan_l2miss": 0, "vxlan_l3miss": 0}


def _observed_settings(message: Any) -> tuple[object, ...]:
    data = message.get(("linkinfo", "data"))
    if data is None:
        return ()
    return (data.get("IFLA_VXLAN_ID"), data.get("IFLA_VXLAN_LOCAL"),
            data.get("IFLA_VXLAN_LOCAL6"), data.get("IFLA_VXLAN_PORT"),
            data.get("IFLA_VXLAN_LEARNING"), data.get("IFLA_VXLAN_PROXY"),
            data.get("IFLA_VXLAN_GROUP"), data.get("IFLA_VXLAN_GROUP6"),
            data.get("IFLA_VXLAN_COLLECT_METADATA"))


def _wanted_settings(device: VxlanDevice) -> tuple[object, ...]:
    v4 = device.local.version == 4
    return (device.vni, str(device.local) if v4 else None, None if v4 else str(device.local),
            device.port, 0, 1, None, None, 0)


def _normalised(settings: tuple[object, ...]) -> tuple[object, ...]:
    # The kernel reports an unset address as absent or as the zero address, depending
    # on the family; both mean "none".
    return tuple(None if s in ("0.0.0.0", "::") else
                 str(ipaddress.ip_address(s)) if isinstance(s, str) else s for s in settings)


async def ensure_vxlan(kernel: Kernel, device: VxlanDevice) -> bool:
    """Make the device as `device` says; True if it was created (or made anew)."""
    ipr = await kernel.host()
    what = f"VXLAN device {device.name} (VNI {device.vni}) on bridge {device.bridge}"
    bridge = await netlink.link_index(ipr, device.bridge, f"bridge {device.bridge} of {what}")
    spec = {"ifname": device.name, "kind": "vxlan", **_settings(device), "mtu": device.mtu,
            "master": bridge, "state": "up"}
    if await netlink.add_link(ipr, what, **spec):
        return True
    (existing,) = await netlink.call(f"look up {what}", ipr.link("get", ifname=device.name))
    if _normalised(_observed_settings(existing)) != _normalised(_wanted_settings(device)):
        # VNI, port, addresses and flags are fixed when a VXLAN device is made.
        await netlink.call(f"remove {what} to make it anew",
                           ipr.link("del", index=existing["index"]))
        await netlink.add_link(ipr, what, **spec)
        return True
    if (existing.get("IFLA_MTU") != device.mtu or existing.get("IFLA_MASTER") != bridge
            or existing.get("state") != "up"):
        await netlink.call(f"set up {what}", ipr.link(
            "set", index=existing["index"], mtu=device.mtu, master=bridge, state="up"))
    return False


async def remove_vxlan(kernel: Kernel, name: str) -> None:
    """Delete the device; one already gone is fine. (Its bridge's removal takes it too.)"""
    await kernel.remove_link(name)


async def underlay_mtu(kernel: Kernel, address: IPAddress) -> int:
    """The MTU of the link that holds this node's underlay `address`."""
    ipr = await kernel.host()
    found = [m async for m in await ipr.addr("dump", family=_family(address))
             if m.get("IFA_ADDRESS") == str(address) or m.get("IFA_LOCAL") == str(address)]
    if not found:
        raise KernelError(f"underlay address {address}: no link of this node holds it; "
                          "give the node an address it has (--node-address)", errno.EADDRNOTAVAIL)
    (link,) = await netlink.call(f"look up the link of {address}",
                                 ipr.link("get", index=found[0]["index"]))
    return int(link.get("IFLA_MTU"))


# -- forwarding entries ------------------------------------------------------------------


async def _device_index(kernel: Kernel, name: str) -> int:
    return netlink.host_link_index(name, f"VXLAN device {name}")


async def _add_fdb(kernel: Kernel, name: str, index: int, entry: FdbEntry) -> None:
    ipr = await kernel.host()
    # Replace: one destination per MAC (a container that moved to another node).
    await netlink.call(f"FDB entry {entry.mac} -> {entry.vtep} on {name}", ipr.fdb(
        "replace", ifindex=index, lladdr=entry.mac, dst=str(entry.vtep), flags=NTF_SELF,
        state=NUD_PERMANENT | NUD_NOARP))


async def _del_fdb(kernel: Kernel, name: str, index: int, entry: FdbEntry) -> None:
    ipr = await kernel.host()
    try:
        # With its destination: only that one goes, should the MAC have several.
        await netlink.call(f"remove FDB entry {entry.mac} -> {entry.vtep} on {name}", ipr.fdb(
            "del", ifindex=index, lladdr=entry.mac, dst=str(entry.vtep), flags=NTF_SELF))
    except KernelError as exc:
        if not _gone(exc):
            raise


async def _add_neigh(kernel: Kernel, name: str, index: int, entry: NeighEntry) -> None:
    ipr = await kernel.host()
    await netlink.call(f"neighbour entry {entry.address} -> {entry.mac} on {name}", ipr.neigh(
        "replace", ifindex=index, family=_family(entry.address), dst=str(entry.address),
        lladdr=entry.mac, state=NUD_PERMANENT))


async def _del_neigh(kernel: Kernel, name: str, index: int, entry: NeighEntry) -> None:
    ipr = await kernel.host()
    try:
        await netlink.call(f"remove neighbour entry {entry.address} on {name}", ipr.neigh(
            "del", ifindex=index, family=_family(entry.address), dst=str(entry.address)))
    except KernelError as exc:
        if not _gone(exc):
            raise


async def ensure_fdb(kernel: Kernel, name: str, entry: FdbEntry) -> None:
    await _add_fdb(kernel, name, await _device_index(kernel, name), entry)


async def _index_if_present(kernel: Kernel, name: str) -> int | None:
    """The device's index; None when it is gone (its entries went with it)."""
    try:
        return await _device_index(kernel, name)
    except KernelError as exc:
        if _gone(exc):
            return None
        raise


async def remove_fdb(kernel: Kernel, name: str, entry: FdbEntry) -> None:
    """Remove the entry; one already gone, or on a device already gone, is fine."""
    if (index := await _index_if_present(kernel, name)) is not None:
        await _del_fdb(kernel, name, index, entry)


async def ensure_neigh(kernel: Kernel, name: str, entry: NeighEntry) -> None:
    await _add_neigh(kernel, name, await _device_index(kernel, name), entry)


async def remove_neigh(kernel: Kernel, name: str, entry: NeighEntry) -> None:
    """Remove the entry for that address; one already gone is fine."""
    if (index := await _index_if_present(kernel, name)) is not None:
        await _del_neigh(kernel, name, index, entry)


async def _observe(kernel: Kernel, name: str, index: int) -> ForwardingState:
    ipr = await kernel.host()
    # One dump at a time: the kernel runs one per socket.
    fdb = set()
    async for m in await ipr.fdb("dump", ifindex=index):
        # The device's own entries (NTF_SELF, with a destination); the bridge's entries
        # for this port (its MAC, what the bridge learnt) are the bridge's business.
        if m.get("ifindex") != index or not m.get("flags", 0) & NTF_SELF:
            continue
        dst, mac = m.get("NDA_DST"), m.get("NDA_LLADDR")
        if dst is not None and mac is not None:
            fdb.add(FdbEntry(mac.lower(), ipaddress.ip_address(dst)))
    neigh = set()
    async for m in await ipr.neigh("dump", ifindex=index):
        # Permanent ones only: those are linkd's (the device holds no address, so the
        # kernel makes none of its own there).
        if m.get("ifindex") != index or not m.get("state", 0) & NUD_PERMANENT:
            continue
        dst, mac = m.get("NDA_DST"), m.get("NDA_LLADDR")
        if dst is not None and mac is not None:
            neigh.add(NeighEntry(ipaddress.ip_address(dst), mac.lower()))
    return ForwardingState(frozenset(fdb), frozenset(neigh))


async def observe_forwarding(kernel: Kernel, name: str) -> ForwardingState:
    """The FDB and neighbour entries the device holds (KernelError if it does not exist)."""
    return await _observe(kernel, name, await _device_index(kernel, name))


async def sync_forwarding(kernel: Kernel, name: str, desired: ForwardingState,
                          held: ForwardingState | None = None) -> ForwardingChanges:
    """Make the device hold exactly `desired`; returns what it changed (nothing, when it
    already did). `held`: what the caller knows the device holds (its last sync), which
    spares reading the device's entries back; None: they are read."""
    index = await _device_index(kernel, name)
    if held is None:
        held = await _observe(kernel, name, index)
    changes = diff(desired, held)
    await asyncio.gather(*(_del_fdb(kernel, name, index, e) for e in changes.remove_fdb),
                         *(_del_neigh(kernel, name, index, e) for e in changes.remove_neigh))
    await asyncio.gather(*(_add_fdb(kernel, name, index, e) for e in changes.add_fdb),
                         *(_add_neigh(kernel, name, index, e) for e in changes.add_neigh))
    return changes
