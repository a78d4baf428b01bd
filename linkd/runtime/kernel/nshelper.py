"""Creates network namespaces and hands back netlink sockets that live inside them.

Runs in a child process forked once by `linkd.runtime.kernel.netlink.NamespaceHelper`. Why a
process of its own: a socket belongs to the network namespace of the thread that created
it, so making one inside a container's namespace needs a thread that enters it. The
runtime never switches namespace; pyroute2 forks a child for every such socket (~6-8 ms
each, most of a container's network setup). This helper is forked once (~1 ms: no exec,
no imports) and then serves each request in well under a millisecond:

    request  "create NAME"  unshare a new netns, pin it at /run/netns/NAME (a bind mount,
                            as `ip netns add` does), open a netlink socket in it
    request  "open NAME"    enter the existing /run/netns/NAME, open a netlink socket
    request  "dns NAME"     inside NAME: a UDP and a listening TCP socket on
                            127.0.0.11, ephemeral ports, and nftables rules that send
                            127.0.0.11:53 there (see `dns_sockets`; sent over netlink,
                            `linkd.runtime.kernel.nft`)
    reply    "ok" + the sockets' fds (SCM_RIGHTS), or "err ERRNO MESSAGE"

After each request it returns to the namespace it started in, so a failure half-way can
never leave the next request in the wrong place. It exits when the runtime closes its
end of the socket pair, or dies (PR_SET_PDEATHSIG).

The child of a fork inherits the whole runtime: its event loop, signal handlers and
open files. `serve_forked` drops all of that first: it closes every inherited descriptor
but its channel (an inherited socket inside a container's namespace would keep that
namespace and its veths alive), turns off the cyclic garbage collector (a finalizer of
an inherited object could close a descriptor number the helper has since reused), and
never returns into the runtime's code (`os._exit`).
"""

from __future__ import annotations

# The low-level modules, not `socket` and `signal`: those import `enum`, which would
# double the helper's start-up time (paid once per `linkd up`).
import _signal  # type: ignore[import-not-found]  # no stub; same functions as signal
import _socket
import ctypes
import gc
import os
import sys
from typing import NoReturn

from linkd.runtime.kernel import nft

CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
PR_SET_PDEATHSIG = 1
SIGINT, SIGTERM, SIGKILL = 2, 15, 9
NETNS_DIR = "/run/netns"

_libc = ctypes.CDLL(None, use_errno=True)


def netns_names(prefix: str) -> frozenset[str]:
    """The named network namespaces whose names start with `prefix` (here, not in
    netlink: `linkd down` of a stack that is not up asks, without importing pyroute2)."""
    try:
        return frozenset(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return frozenset()


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _netlink_socket() -> _socket.socket:
    return _socket.socket(_socket.AF_NETLINK, _socket.SOCK_DGRAM, _socket.NETLINK_ROUTE)


def create(name: str, home: int) -> _socket.socket:
    path = os.path.join(NETNS_DIR, name)
    os.makedirs(NETNS_DIR, exist_ok=True)
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o444))
    try:
        _check(_libc.unshare(CLONE_NEWNET), f"unshare a network namespace for {name}")
        _check(
            _libc.mount(b"/proc/self/ns/net", path.encode(), None, MS_BIND, None),
            f"pin namespace {name} at {path}",
        )
        return _netlink_socket()
    except BaseException:
        _libc.umount2(path.encode(), 2)  # MNT_DETACH; harmless if never mounted
        os.unlink(path)
        raise
    finally:
        _check(_libc.setns(home, CLONE_NEWNET), "return to the host namespace")


def open_in(name: str, home: int) -> _socket.socket:
    fd = os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc.setns(fd, CLONE_NEWNET), f"enter namespace {name}")
        return _netlink_socket()
    finally:
        os.close(fd)
        _check(_libc.setns(home, CLONE_NEWNET), "return to the host namespace")


DNS_ADDRESS = "127.0.0.11"
NFT_TABLE = "linkd_dns"


def dns_sockets(
    name: str, home: int, ports: tuple[int, int] | None = None
) -> list[_socket.socket]:
    """linkd's resolver address inside a container, without taking port 53 from it.

    As Docker does: the sockets listen on ephemeral ports and a DNAT rule in the
    namespace's own nftables sends 127.0.0.11:53 to them, so a program in the container
    can still bind port 53 itself (on 0.0.0.0 or its own address). The rules live and
    die with the namespace; nothing touches the host's firewall.

    `ports` are the ports an earlier linkd process served this namespace on (a daemon
    that was killed): if both are free again, the sockets take them and the rules that
    send port 53 there stay as they are, so no rules are written at all (what makes a
    restarted daemon serve hundreds of containers in well under a second). Otherwise: new
    ports, new rules.
    """
    fd = os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc.setns(fd, CLONE_NEWNET), f"enter namespace {name}")
        if ports is not None:
            reused = _bound(ports)
            if reused is not None:
                return reused
        fresh = _bound((0, 0))
        assert fresh is not None  # (0, 0) raises rather than returning None
        udp, tcp = fresh
        try:
            _redirect_dns(udp.getsockname()[1], tcp.getsockname()[1], name)
        except BaseException:
            udp.close()
            tcp.close()
            raise
        return [udp, tcp]
    finally:
        os.close(fd)
        _check(_libc.setns(home, CLONE_NEWNET), "return to the host namespace")


def _bound(ports: tuple[int, int]) -> list[_socket.socket] | None:
    """A UDP and a listening TCP socket on DNS_ADDRESS at `ports` (0: any), or None
    if a wanted port is taken."""
    udp = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    tcp = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    try:
        udp.bind((DNS_ADDRESS, ports[0]))
        tcp.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        tcp.bind((DNS_ADDRESS, ports[1]))
        tcp.listen(128)
    except OSError:
        udp.close()
        tcp.close()
        if ports == (0, 0):
            raise
        return None
    return [udp, tcp]


def _redirect_dns(udp_port: int, tcp_port: int, name: str) -> None:
    """Send 127.0.0.11:53 to the sockets' ports: an nftables table in the current
    namespace, written over netlink (~0.1 ms in a new namespace; no nft tool runs)."""
    try:
        nft.replace_dns_redirect(NFT_TABLE, DNS_ADDRESS, udp_port, tcp_port)
    except OSError as exc:
        raise OSError(exc.errno, f"nftables rules for DNS in namespace {name}: "
                                 f"{exc.strerror or exc}") from None


def serve(channel: _socket.socket) -> None:
    home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    while True:
        request = channel.recv(4096)
        if not request:
            return  # the runtime closed its end
        verb, _, name = request.decode().partition(" ")
        try:
            if "/" in name or name in ("", ".", ".."):
                raise OSError(22, f"bad namespace name {name!r}")
            if verb == "create":
                socks = [create(name, home)]
            elif verb == "open":
                socks = [open_in(name, home)]
            elif verb == "dns":
                socks = dns_sockets(name, home)
            elif verb == "dns-at":  # "NETNS:UDP:TCP": the ports served before
                name, udp_port, tcp_port = [*name.rsplit(":", 2), "", ""][:3]
                if not (udp_port.isdigit() and tcp_port.isdigit()):
                    raise OSError(22, f"bad dns-at request {request!r}")
                socks = dns_sockets(name, home, (int(udp_port), int(tcp_port)))
            else:
                raise OSError(22, f"unknown request {verb!r}")
        except OSError as exc:
            channel.send(f"err {exc.errno or 0} {exc.strerror or exc}".encode())
            continue
        try:
            rights = b"".join(s.fileno().to_bytes(4, sys.byteorder) for s in socks)
            channel.sendmsg([b"ok"], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, rights)])
        finally:
            for sock in socks:
                sock.close()


def serve_forked(channel_fd: int, parent: int) -> NoReturn:
    """The body of the forked helper; never returns."""
    code = 0
    try:
        gc.disable()
        _signal.set_wakeup_fd(-1)  # the runtime's event loop is not ours to wake
        _signal.signal(SIGINT, _signal.SIG_IGN)  # Ctrl-C is the runtime's to handle
        _signal.signal(SIGTERM, _signal.SIG_DFL)
        _libc.prctl(PR_SET_PDEATHSIG, SIGKILL)
        if os.getppid() != parent:  # the runtime died before PDEATHSIG was armed
            os._exit(0)
        os.closerange(3, channel_fd)
        os.closerange(channel_fd + 1, 1 << 20)
        serve(_socket.socket(fileno=channel_fd))
    except BaseException:
        code = 1
    finally:
        os._exit(code)
