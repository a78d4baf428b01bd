"""The kernel's network objects, through pyroute2's asyncio API. The only pyroute2 user.

One `AsyncIPRoute` for the host namespace and one per container namespace, cached for
the namespace's life. The sockets inside container namespaces come from a small helper
process (`linkd.runtime.kernel.nshelper`) that creates the namespace and the socket in one
request and passes the socket back; pyroute2 would fork a child for each (~6-8 ms, the
largest part of a container's network setup). The runtime process itself never switches
namespace.

Every operation is an idempotent `ensure_*`/`remove_*` step: EEXIST on add means "check
that what exists is the right kind", ENODEV/ENOENT on delete means "already gone".
Errors come out as `KernelError` naming the object and the namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import socket
import sys
from collections.abc import Awaitable, Iterable
from typing import Any, TypeVar

from pyroute2 import AsyncIPRoute, NetlinkError
from pyroute2 import netns as pyroute2_netns

from linkd.core import names
from linkd.core.plan import ContainerPlan, InterfacePlan, NetworkPlan
from linkd.core.reconcile import ObservedLink
from linkd.errors import KernelError
from linkd.runtime.kernel import nshelper
from linkd.runtime.kernel.routes import host_routes

SYS_NET = "/sys/class/net"
NETNS_DIR = "/run/netns"
IFA_F_NODAD = 0x02  # linux/if_addr.h: our addresses are unique by construction
GONE = {errno.ENODEV, errno.ENOENT, errno.ESRCH, errno.EADDRNOTAVAIL}

T = TypeVar("T")
log = logging.getLogger("linkd")


class NamespaceHelper:
    """The runtime's end of `nshelper`: namespaces and netlink sockets inside them."""

    def __init__(self) -> None:
        self._channel: socket.socket | None = None
        self._pid: int | None = None
        self._lock = asyncio.Lock()

    def start(self) -> socket.socket:
        if self._channel is not None:
            return self._channel
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        parent = os.getpid()
        if _fork_is_unsafe():
            pid = _spawn_helper(theirs, parent)
        else:
            pid = os.fork()
            if pid == 0:
                nshelper.serve_forked(theirs.fileno(), parent)  # never returns
        theirs.close()
        ours.setblocking(False)
        self._channel, self._pid = ours, pid
        return ours

    async def request(self, verb: str, netns: str) -> int:
        """Send `verb netns`; return the fd of a netlink socket inside that namespace."""
        (fd,) = await self.request_fds(verb, netns, 1)
        return fd

    async def request_fds(self, verb: str, netns: str, count: int) -> list[int]:
        """Send `verb netns`; return the `count` descriptors the helper passes back."""
        async with self._lock:
            try:
                reply, fds = await self._exchange(verb, netns, count)
            except (BrokenPipeError, ConnectionResetError):
                # The helper is gone (killed, or it failed) and never saw the request: a
                # fresh one takes it, so one lost helper never fails every later stack.
                status = self.close()
                log.warning("the namespace helper had exited (%s); started anew", status)
                reply, fds = await self._exchange(verb, netns, count)
        if reply == b"ok" and len(fds) == count:
            return fds
        for fd in fds:
            os.close(fd)
        if not reply:
            status = self.close()  # the next request starts a fresh one
            raise KernelError(f"{verb} netns {netns}: the namespace helper exited ({status})")
        _, code, message = reply.decode().split(" ", 2)
        raise KernelError(f"{verb} netns {netns}: {message}", int(code) or None)

    async def _exchange(self, verb: str, netns: str, count: int) -> tuple[bytes, list[int]]:
        channel = self.start()
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(channel, f"{verb} {netns}".encode())
        readable: asyncio.Future[None] = loop.create_future()
        fd = channel.fileno()
        loop.add_reader(fd, readable.set_result, None)
        try:
            await readable
        except asyncio.CancelledError:
            # The reply is still coming and would answer the next request: start
            # over with a fresh helper instead. A namespace it made meanwhile is
            # on disk, where teardown finds it.
            loop.remove_reader(fd)
            self.close()
            raise
        loop.remove_reader(fd)
        reply, fds, _, _ = socket.recv_fds(channel, 4096, count)
        return reply, fds

    def close(self) -> str:
        """Close our end; the helper sees EOF and exits on its own, and is reaped. Says
        how it ended, where it already has."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        status = "still running"
        if self._pid is not None:
            status = _reap(self._pid)
            self._pid = None
        return status


_fork_unsafe = False  # see `grpc_runs_here`


def grpc_runs_here() -> None:
    """Said by linkd.runtime.cluster.etcd as it opens its gRPC channel: from then on this
    process does not fork its namespace helper. gRPC's threads have fork handlers that can
    abort the child (SIGABRT), so the helper is a new interpreter instead (~40 ms, once
    per helper)."""
    global _fork_unsafe
    _fork_unsafe = True


def _fork_is_unsafe() -> bool:
    return _fork_unsafe


def _spawn_helper(theirs: socket.socket, parent: int) -> int:
    """The helper as a new interpreter, given our channel's other end; the same body as
    a forked one (`nshelper.serve_forked`: PDEATHSIG, no other descriptors)."""
    os.set_inheritable(theirs.fileno(), True)
    code = ("from linkd.runtime.kernel import nshelper; "
            f"nshelper.serve_forked({theirs.fileno()}, {parent})")
    return os.posix_spawn(sys.executable, [sys.executable, "-c", code], os.environ)


def _reap(pid: int) -> str:
    """Reap the child `pid`, which is exiting, without ever waiting for it on the event
    loop: the daemon's loop answers DNS, and a helper slow to exit (a busy machine) would
    stall every answer. When it has not exited yet, a pidfd registered with the running
    loop reaps it once it has; without a running loop nothing else waits, so this does.
    Returns how it ended, as far as known now."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return "already reaped"
    if done:
        if os.WIFSIGNALED(status):
            return f"killed by signal {os.WTERMSIG(status)}"
        return f"exit code {os.waitstatus_to_exitcode(status)}"
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        return "exited"
    pidfd = os.pidfd_open(pid)

    def exited() -> None:
        loop.remove_reader(pidfd)
        os.close(pidfd)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)

    loop.add_reader(pidfd, exited)
    return "exiting"


class Kernel:
    """Cached netlink sockets and the idempotent steps the reconciler's actions map to."""

    def __init__(self) -> None:
        self._host: AsyncIPRoute | None = None
        self._netns: dict[str, AsyncIPRoute] = {}
        self._helper = NamespaceHelper()
        self._helper.start()  # its interpreter starts while the caller plans and observes
        self._bridges: dict[str, int] = {}  # name -> ifindex, for enslaving veths
        self._pending: dict[str, asyncio.Future[None]] = {}  # see prefetch_netns

    async def host(self) -> AsyncIPRoute:
        if self._host is None:
            self._host = AsyncIPRoute()
        return self._host

    async def inside(self, netns: str) -> AsyncIPRoute:
        ipr = self._netns.get(netns)
        if ipr is None:
            ipr = await self._adopt(await self._helper.request("open", netns), netns)
        return ipr

    async def _adopt(self, fd: int, netns: str) -> AsyncIPRoute:
        ipr = AsyncIPRoute(fileno=fd)
        # pyroute2 wraps the fd lazily; wrap it now, so close() closes it even if it was
        # never used: an open socket would keep a removed namespace (and its veths) alive.
        await ipr.setup_endpoint()
        self._netns[netns] = ipr
        return ipr

    def forget(self, netns: str) -> None:
        ipr = self._netns.pop(netns, None)
        if ipr is not None:
            ipr.close()

    async def settle(self, netns_prefix: str) -> None:
        """Let the namespace creations started for one stack (`prefetch_netns`) finish,
        whatever `up` did meanwhile: teardown looks for namespaces after this, so none
        of them can appear once it has looked (and be left behind)."""
        pending = [self._pending.pop(n) for n in list(self._pending)
                   if n.startswith(netns_prefix)]
        await asyncio.gather(*pending, return_exceptions=True)

    def forget_stack(self, netns_prefix: str) -> None:
        """Drop what is cached for one stack's namespaces (a Kernel shared by the
        daemon's stacks outlives each of them)."""
        for name in [n for n in self._pending if n.startswith(netns_prefix)]:
            self._pending.pop(name).cancel()
        for netns in [n for n in self._netns if n.startswith(netns_prefix)]:
            self.forget(netns)

    def close(self) -> None:
        for task in self._pending.values():
            task.cancel()
        self._pending.clear()
        for netns in list(self._netns):
            self.forget(netns)
        if self._host is not None:
            self._host.close()
            self._host = None
        self._helper.close()

    # -- observation ---------------------------------------------------------------

    async def links(self) -> dict[str, ObservedLink]:
        """Host-namespace links whose names carry linkd's prefix.

        Read from sysfs, not a netlink dump: a dump makes pyroute2 decode every link of
        the host (~0.15 s at 1000 links), while the few files of our own links cost
        microseconds, and the daemon observes every stack every couple of seconds.
        This process's sysfs is the host namespace's: it never enters another.
        """
        found: dict[str, ObservedLink] = {}
        try:
            entries = os.listdir(SYS_NET)
        except FileNotFoundError:
            return found
        for name in entries:
            if not name.startswith(names.LINK_PREFIX):
                continue
            base = os.path.join(SYS_NET, name)
            kind = "bridge" if os.path.isdir(os.path.join(base, "bridge")) else (
                "vxlan" if name.startswith(names.VXLAN_PREFIX) else "veth")
            try:
                master: str | None = os.path.basename(os.readlink(os.path.join(base, "master")))
            except FileNotFoundError:
                master = None
            except OSError:
                continue  # removed while we looked
            found[name] = ObservedLink(name, kind, master)
        return found

    async def routes(self) -> list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]]:
        """Every route of the host, as (destination, "host route via DEV") pairs."""
        return [(r.destination, f"host route via {r.device}") for r in host_routes()
                if r.destination.prefixlen > 0]

    async def default_route_devices(self) -> frozenset[str]:
        """The devices the host's default routes (IPv4 and IPv6) leave through: its
        uplinks, which containers may leave through even when they are bridges."""
        return frozenset(r.device for r in host_routes(defaults_only=True)
                         if r.device != "?")

    netns_names = staticmethod(nshelper.netns_names)

    # -- namespaces ----------------------------------------------------------------

    def prefetch_netns(self, netns: Iterable[str]) -> None:
        """Start creating these namespaces now, in order, while the caller works on.

        The helper is a process of its own, so it makes the next containers' namespaces
        while this process creates bridges and veths and configures the previous ones;
        `ensure_netns` then finds its namespace ready, or waits for it.
        """
        for name in netns:
            if name not in self._pending and name not in self._netns:
                self._pending[name] = asyncio.ensure_future(self._create_netns(name))

    async def ensure_netns(self, netns: str) -> None:
        pending = self._pending.pop(netns, None)
        if pending is not None:
            await pending
        else:
            await self._create_netns(netns)

    async def _create_netns(self, netns: str) -> None:
        if netns in self._netns or os.path.exists(os.path.join(NETNS_DIR, netns)):
            return
        # Created together with the socket the configuration steps will use.
        await self._adopt(await self._helper.request("create", netns), netns)

    async def dns_sockets(
        self, netns: str, reuse: tuple[int, int] | None = None
    ) -> tuple[socket.socket, socket.socket]:
        """A UDP and a listening TCP socket answering 127.0.0.11:53 inside `netns`;
        on the ports `reuse` (what an earlier process served there) when they are free."""
        if reuse is None:
            udp, tcp = await self._helper.request_fds("dns", netns, 2)
        else:
            request = f"{netns}:{reuse[0]}:{reuse[1]}"
            udp, tcp = await self._helper.request_fds("dns-at", request, 2)
        return socket.socket(fileno=udp), socket.socket(fileno=tcp)

    def remove_netns(self, netns: str) -> None:
        """Unmount and unlink; the kernel then removes the veths inside in bulk."""
        self.forget(netns)
        try:
            pyroute2_netns.remove(netns)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno not in GONE | {errno.EINVAL}:
                raise KernelError(f"remove netns {netns}: {exc.strerror}", exc.errno) from exc

    # -- links ---------------------------------------------------------------------

    async def ensure_bridge(self, network: NetworkPlan) -> None:
        ipr = await self.host()
        what = f"bridge {network.bridge} for network {network.name}"
        mtu = {"mtu": network.mtu} if network.mtu is not None else {}
        created = await _add_link(ipr, what, ifname=network.bridge, kind="bridge",
                                  address=network.bridge_mac, state="up", **mtu)
        index = await _index(ipr, network.bridge, what)
        self._bridges[network.bridge] = index
        steps = [_call(f"address {network.gateway} on {what}", ipr.addr(
            "replace", index=index, address=str(network.gateway),
            prefixlen=network.subnet.prefixlen))]
        if network.gateway6 is not None and network.subnet6 is not None:
            steps.append(_call(f"address {network.gateway6} on {what}", ipr.addr(
                "replace", index=index, address=str(network.gateway6),
                prefixlen=network.subnet6.prefixlen, flags=IFA_F_NODAD)))
        if not created:  # a leftover of ours: make it as a new one would be
            steps.append(_call(f"set up {what}", ipr.link(
                "set", index=index, address=network.bridge_mac, state="up", **mtu)))
        await asyncio.gather(*steps)

    async def ensure_veth(self, netns: str, interface: InterfacePlan) -> None:
        ipr = await self.host()
        what = f"veth {interface.host_ifname} ({interface.ifname} in netns {netns})"
        bridge = self._bridges.get(interface.bridge) or await _index(
            ipr, interface.bridge, f"bridge {interface.bridge}")
        # Enslaved and up in the same request that creates it: one round trip, not three.
        peer: dict[str, object] = {"ifname": interface.ifname, "net_ns_fd": netns}
        if interface.mac_address is not None:  # Compose's mac_address: the container's end
            peer["address"] = interface.mac_address
        mtu = {"mtu": interface.mtu} if interface.mtu is not None else {}
        if mtu:  # an overlay network's: the container's end must not send bigger frames
            peer.update(mtu)
        created = await _add_link(ipr, what, ifname=interface.host_ifname, kind="veth",
                                  peer=peer, master=bridge, state="up", **mtu)
        if not created:
            index = await _index(ipr, interface.host_ifname, what)
            await _call(f"attach {what} to bridge {interface.bridge}",
                        ipr.link("set", index=index, master=bridge, state="up", **mtu))

    async def configure_netns(self, container: ContainerPlan) -> None:
        """lo up; each interface's addresses, up; the default route.

        Requests that do not depend on each other go out together (the kernel handles a
        socket's requests in order), which saves a round trip each: a route needs its
        interface up and addressed, so it waits for the first group.
        """
        ipr = await self.inside(container.netns)
        where = f"netns {container.netns}"
        lo_up = _call(f"bring up lo in {where}", ipr.link("set", index=1, state="up"))
        found = await asyncio.gather(
            lo_up, *(_index(ipr, i.ifname, f"{i.ifname} in {where}") for i in container.interfaces)
        )
        first: list[Awaitable[Any]] = []
        routes: list[Awaitable[Any]] = []
        for iface, index in zip(container.interfaces, found[1:], strict=True):
            what = f"{iface.ifname} in {where}"
            first.append(_call(f"address {iface.address} on {what}", ipr.addr(
                "replace", index=index, address=str(iface.address), prefixlen=iface.prefixlen)))
            if iface.address6 is not None:
                first.append(_call(f"address {iface.address6} on {what}", ipr.addr(
                    "replace", index=index, address=str(iface.address6),
                    prefixlen=iface.prefixlen6, flags=IFA_F_NODAD)))
            first.append(_call(f"bring up {what}", ipr.link("set", index=index, state="up")))
            if iface.default_route:
                routes.append(_call(f"default route via {iface.gateway} in {where}", ipr.route(
                    "replace", dst="0.0.0.0/0", gateway=str(iface.gateway))))
                if iface.gateway6 is not None:
                    routes.append(_call(f"default route via {iface.gateway6} in {where}",
                                        ipr.route("replace", dst="::/0",
                                                  gateway=str(iface.gateway6), family=10)))
        await asyncio.gather(*first)
        await asyncio.gather(*routes)

    async def remove_link(self, name: str) -> None:
        self._bridges.pop(name, None)
        ipr = await self.host()
        try:
            await ipr.link("del", ifname=name)
        except NetlinkError as exc:
            if exc.code not in GONE:
                raise KernelError(f"delete link {name}: {exc}", exc.code) from exc

    async def remove_bridge(self, name: str, *, settle: float = 3.0) -> None:
        """Delete a bridge of ours once only linkd's veths (on their way out) remain.

        Deleting a namespace hands its veths to the kernel's cleanup work queue, so the
        host ends can linger on the bridge for a moment; a foreign port is never ours to
        detach, and then the bridge stays. An overlay network's VXLAN device (`lkx-`)
        goes with its bridge.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settle
        while True:
            ports = await self.ports(name)
            if ports is None:
                return
            for vxlan in [p for p in ports if p.startswith(names.VXLAN_PREFIX)]:
                await self.remove_link(vxlan)
                ports.remove(vxlan)
            foreign = [p for p in ports if not p.startswith(names.VETH_PREFIX)]
            if foreign:
                raise KernelError(
                    f"bridge {name} still has ports linkd did not create ({', '.join(foreign)});"
                    " detach them, then run `linkd down` again")
            if not ports or loop.time() > deadline:
                break
            await asyncio.sleep(0.02)
        await self.remove_link(name)

    async def ports(self, bridge: str) -> list[str] | None:
        """Names of the links enslaved to `bridge`, or None when it does not exist.

        Read from sysfs (its brif/ directory), not a netlink dump: the daemon's stacks
        share one host socket, the kernel runs one dump per socket at a time (EBUSY for
        the others: concurrent `down`s failed), and a dump decodes every link of the
        host.
        """
        base = os.path.join(SYS_NET, bridge)
        try:
            return sorted(os.listdir(os.path.join(base, "brif")))
        except FileNotFoundError:
            return [] if os.path.exists(base) else None


async def _call(what: str, request: Awaitable[T]) -> T:
    try:
        return await request
    except NetlinkError as exc:
        raise KernelError(f"{what}: {os.strerror(exc.code)}", exc.code) from exc
    except FileNotFoundError as exc:
        raise KernelError(f"{what}: the namespace does not exist", errno.ENOENT) from exc


def host_link_index(ifname: str, what: str) -> int:
    """The index of link `ifname` in the daemon's own namespace (the one `Kernel.host`
    works in): one ioctl, where a netlink `get` decodes the whole link in Python."""
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        raise KernelError(f"{what}: link {ifname} does not exist", errno.ENODEV) from None


async def _index(ipr: AsyncIPRoute, ifname: str, what: str) -> int:
    found = await ipr.link_lookup(ifname=ifname)
    if not found:
        raise KernelError(f"{what}: link {ifname} does not exist", errno.ENODEV)
    return int(found[0])


async def _add_link(ipr: AsyncIPRoute, what: str, **spec: Any) -> bool:
    """Create a link; False if one of that name and kind already exists."""
    ifname, kind = spec["ifname"], spec["kind"]
    try:
        await ipr.link("add", **spec)
        return True
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise KernelError(f"create {what}: {os.strerror(exc.code)}", exc.code) from exc
    # It exists: fine if it is the right kind (a leftover of ours), an error otherwise.
    (existing,) = await _call(f"look up {ifname}", ipr.link("get", ifname=ifname))
    found = existing.get(("linkinfo", "kind"))
    if found != kind:
        raise KernelError(
            f"create {what}: a {found or 'non-' + kind} link named {ifname} already "
            "exists; it is not linkd's, remove or rename it", errno.EEXIST)
    return False



# The steps other kernel modules build from these (linkd.runtime.kernel.vxlan) reach
# pyroute2 only through them: its errors come out as KernelError with the errno.
call = _call
link_index = _index
add_link = _add_link
