"""The host's routes, read with one RTM_GETROUTE dump on a plain NETLINK_ROUTE socket.

IPAM needs every route (so no stack shadows one) and the firewall the devices of the
default routes (the uplinks); both are read on every `up` and every periodic check. A
pyroute2 dump decodes each message into objects (8-16 ms for a few dozen routes here);
this reads the four fields needed straight from the bytes, well under a millisecond.
The socket belongs to the caller's network namespace: the host's, as linkd never
switches namespace.

Kernel structures: include/uapi/linux/netlink.h (nlmsghdr), rtnetlink.h (rtmsg, rtattr,
rtnexthop, RTA_*).
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import sys
from dataclasses import dataclass

NETLINK_ROUTE = 0
RTM_GETROUTE, RTM_NEWROUTE = 26, 24
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
RTA_DST, RTA_OIF, RTA_MULTIPATH, RTA_TABLE = 1, 4, 9, 15
_ORDER = "<" if sys.byteorder == "little" else ">"
_HEADER = struct.Struct(_ORDER + "IHHII")  # nlmsghdr
_RTMSG = struct.Struct(_ORDER + "BBBBBBBBI")  # family, dst_len, src_len, tos, table, ...
_RTATTR = struct.Struct(_ORDER + "HH")
_NEXTHOP = struct.Struct(_ORDER + "HBBi")  # rtnh_len, flags, hops, ifindex


@dataclass(frozen=True, slots=True)
class Route:
    destination: ipaddress.IPv4Network | ipaddress.IPv6Network
    device: str  # "?" when the route names none (blackhole, unreachable)


def _align(n: int) -> int:
    return (n + 3) & ~3


def _attributes(data: bytes, offset: int, end: int) -> dict[int, bytes]:
    found = {}
    while offset + 4 <= end:
        length, kind = _RTATTR.unpack_from(data, offset)
        if length < 4:
            break
        found[kind & 0x3FFF] = data[offset + 4:offset + length]
        offset += _align(length)
    return found


def _devices(attrs: dict[int, bytes]) -> list[int]:
    if RTA_OIF in attrs:
        return [int.from_bytes(attrs[RTA_OIF][:4], sys.byteorder)]
    hops, data, offset = [], attrs.get(RTA_MULTIPATH, b""), 0
    while offset + _NEXTHOP.size <= len(data):
        length, _, _, index = _NEXTHOP.unpack_from(data, offset)
        if length < _NEXTHOP.size:
            break
        hops.append(index)
        offset += _align(length)
    return hops or [0]


def _parse(data: bytes, names: dict[int, str], defaults_only: bool = False
           ) -> tuple[list[Route], bool]:
    """The routes in one read of the dump (only the default routes if `defaults_only`),
    and whether the dump is done."""
    routes: list[Route] = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _, _, _ = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size:
            break
        if kind == NLMSG_DONE:
            return routes, True
        if kind == NLMSG_ERROR:
            error = -struct.unpack_from(_ORDER + "i", data, offset + _HEADER.size)[0]
            raise OSError(error, "route dump failed")
        if kind == RTM_NEWROUTE:
            body = offset + _HEADER.size
            family, dst_len = _RTMSG.unpack_from(data, body)[:2]
            if defaults_only and dst_len != 0:
                offset += _align(length)
                continue
            attrs = _attributes(data, body + _RTMSG.size, offset + length)
            zero = bytes(4 if family == socket.AF_INET else 16)
            network = ipaddress.ip_network(
                (ipaddress.ip_address(attrs.get(RTA_DST, zero)), dst_len), strict=False)
            for index in _devices(attrs):
                routes.append(Route(network, _name(index, names)))
        offset += _align(length)
    return routes, False


def _name(index: int, names: dict[int, str]) -> str:
    if index not in names:
        try:
            names[index] = socket.if_indextoname(index) if index else "?"
        except OSError:
            names[index] = "?"
    return names[index]


def host_routes(defaults_only: bool = False) -> list[Route]:
    """Every IPv4 and IPv6 route of this namespace, of every table; only the default
    routes if `defaults_only` (the others are skipped unread: each veth of the host has
    IPv6 routes of its own, and a dump of a busy host holds thousands)."""
    routes: list[Route] = []
    names: dict[int, str] = {}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                       NETLINK_ROUTE) as sock:
        for seq, family in enumerate((socket.AF_INET, socket.AF_INET6), start=1):
            request = _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)
            sock.send(_HEADER.pack(_HEADER.size + len(request), RTM_GETROUTE,
                                   NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + request)
            done = False
            while not done:
                found, done = _parse(sock.recv(1 << 16), names, defaults_only)
                routes += found
    return routes
