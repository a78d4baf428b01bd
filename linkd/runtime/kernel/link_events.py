"""Links of linkd's that the kernel removes, as it removes them.

The daemon repairs a stack when a bridge or veth of it disappears (deleted by hand, or a
namespace gone with its veth). A periodic check finds it within seconds; this finds it at
once: a NETLINK_ROUTE socket subscribed to the link multicast group delivers every
RTM_DELLINK, and only names with linkd's prefix are passed on. Linkd's own deletions
arrive too; the supervisor ignores them (a stack being changed or taken down is not
repaired), so reacting costs one comparison of plan and kernel.

Raw netlink, not pyroute2: one socket, and the only field read is the link's name.
Kernel constants: include/uapi/linux/rtnetlink.h, if_link.h, netlink.h.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import Callable

from linkd.core.names import LINK_PREFIX

RTMGRP_LINK = 0x1
RTM_DELLINK = 17
IFLA_IFNAME = 3
NLMSG_HDRLEN = 16
IFINFOMSG_LEN = 16
_NATIVE = sys.byteorder


def removed_links(data: bytes) -> list[str]:
    """The names in the RTM_DELLINK messages of one netlink datagram."""
    names: list[str] = []
    offset = 0
    while offset + NLMSG_HDRLEN <= len(data):
        length = int.from_bytes(data[offset:offset + 4], _NATIVE)
        kind = int.from_bytes(data[offset + 4:offset + 6], _NATIVE)
        if length < NLMSG_HDRLEN or offset + length > len(data):
            break
        if kind == RTM_DELLINK:
            name = _ifname(data[offset + NLMSG_HDRLEN + IFINFOMSG_LEN:offset + length])
            if name is not None:
                names.append(name)
        offset += (length + 3) & ~3
    return names


def _ifname(attrs: bytes) -> str | None:
    offset = 0
    while offset + 4 <= len(attrs):
        length = int.from_bytes(attrs[offset:offset + 2], _NATIVE)
        kind = int.from_bytes(attrs[offset + 2:offset + 4], _NATIVE) & 0x3FFF
        if length < 4:
            return None
        if kind == IFLA_IFNAME:
            return attrs[offset + 4:offset + length].split(b"\0", 1)[0].decode(errors="replace")
        offset += (length + 3) & ~3
    return None


class LinkWatch:
    """Calls `on_removed(name)` for each removed link of linkd's, from the event loop."""

    def __init__(self, on_removed: Callable[[str], None]) -> None:
        self.on_removed = on_removed
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                             socket.NETLINK_ROUTE)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.bind((0, RTMGRP_LINK))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        assert self._sock is not None
        for _ in range(64):
            try:
                data = self._sock.recv(65536)
            except BlockingIOError:
                return
            except OSError:
                # ENOBUFS: events were dropped; a removal may be among them, so report
                # one, and the repair it starts compares the whole stack anyway.
                self.on_removed("")
                return
            for name in removed_links(data):
                if name.startswith(LINK_PREFIX):
                    self.on_removed(name)

    def close(self) -> None:
        if self._sock is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
