"""The API's TCP listener (`linkd daemon --tcp ADDR:PORT`): who may talk to it.

Whoever can use the API is root on this host: a stack runs any command, as root, with the
host's files. The unix socket is 0600 and root's, so only root reaches it; TCP is an
opt-in for clients that cannot speak to a unix socket, and is held to the same bar:

1. **Loopback only, checked first.** The address must be a loopback IP literal
   (127.0.0.0/8 or ::1); a name is refused (it could resolve anywhere). The port is
   bound here, before the daemon adopts or recovers a single stack, so a wrong `--tcp`
   (or a port in use) stops the daemon before it starts, instead of after recovery, when
   giving up would take every recovered stack down.
2. **A bearer token worth the name.** `--token-file FILE` must be a regular file of the
   daemon's user with no permission for group or others (ssh's rule for private keys),
   holding 32 to 4096 bytes of printable ASCII without spaces. Without `--token-file`,
   the daemon makes a 256-bit token (64 hex digits) and writes it to a new file
   `<run dir>/api.token`, 0600, on every start, and says where.
3. **`Host` is this listener.** A web page the user visits can make its own name resolve
   to 127.0.0.1 (DNS rebinding) and then talk to the port as if same-origin; its
   requests carry that name in `Host`. Only `ADDR:PORT` and `localhost:PORT` are
   answered.
4. **No cross-origin requests.** A browser sends `Origin` with cross-site requests (and a
   plain form POST needs no CORS preflight); any `Origin` other than this listener's own
   is refused, and no CORS header is ever sent. Programs (curl, linkd's client) send no
   `Origin`.

Refusals are `UsageError`s naming the option and the fix (start-up) or sentences for the
API's error shape (requests); `linkd.runtime.daemon.api` turns the latter into 403s.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import secrets
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from linkd import files, paths
from linkd.errors import UsageError

log = logging.getLogger("linkd")

TOKEN_MIN = 32  # bytes; the floor, and what a guess must not find
TOKEN_MAX = 4096
TOKEN_NAME = "api.token"  # under the run directory, when the daemon makes one

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass
class Listener:
    """A validated `--tcp`: its bound (not yet listening) socket and its token."""

    address: IPAddress
    port: int
    sock: socket.socket
    token: str
    token_file: Path | None  # where the token is, when it came from a file

    @property
    def literal(self) -> str:
        return f"[{self.address}]" if self.address.version == 6 else str(self.address)

    @property
    def hosts(self) -> frozenset[str]:
        """`Host` values that name this listener (lower case)."""
        names = {self.literal, "localhost"}
        forms = {f"{name}:{self.port}" for name in names}
        if self.port == 80:  # a client may leave the default port out
            forms |= names
        return frozenset(forms)

    @property
    def origins(self) -> frozenset[str]:
        return frozenset(f"http://{host}" for host in self.hosts)

    @property
    def url(self) -> str:
        return f"http://{self.literal}:{self.port}"


def parse_address(text: str) -> tuple[IPAddress, int]:
    """`127.0.0.1:8080` or `[::1]:8080` to (address, port); refuses anything else."""
    host, colon, port_text = text.rpartition(":")
    if not colon or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise UsageError(
            f"--tcp {text}: expected ADDR:PORT with a loopback address, like "
            "127.0.0.1:8080 or [::1]:8080"
        )
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        raise UsageError(
            f"--tcp {text}: {bare!r} is not an IP address; give a loopback address as "
            "digits (127.0.0.1 or [::1]): a name could resolve anywhere"
        ) from None
    if address.version == 6 and host == bare:
        raise UsageError(f"--tcp {text}: write an IPv6 address in brackets, like [::1]:8080")
    if not address.is_loopback:
        raise UsageError(
            f"--tcp {text}: {address} is not a loopback address; the API runs commands as "
            "root, so linkd listens on loopback only (127.0.0.1 or [::1])"
        )
    return address, int(port_text)


def bind(address: IPAddress, port: int) -> socket.socket:
    """A TCP socket bound to (address, port), not yet listening (the daemon listens once
    it has recovered its stacks). Port 0 picks a free port."""
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT, not a listener
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((str(address), port))
    except OSError as exc:
        sock.close()
        where = f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"
        if exc.errno == errno.EADDRINUSE:
            raise UsageError(
                f"--tcp {where}: the port is in use by another program; pick another port"
            ) from None
        raise UsageError(f"--tcp {where}: cannot listen there: {exc.strerror}") from None
    return sock


def read_token(path: str | os.PathLike[str]) -> str:
    """The token in `path`, refused unless only its owner (the daemon's user) can read
    or write it and it is long enough."""
    name = str(path)

    def vet(info: os.stat_result) -> None:  # the open file's status: no swap in between
        if info.st_uid != os.geteuid():
            raise UsageError(
                f"--token-file {name}: owned by uid {info.st_uid}, not by the daemon's user "
                f"(uid {os.geteuid()}), who alone may hold the token; chown it"
            )
        if info.st_mode & 0o077:
            raise UsageError(
                f"--token-file {name}: mode {stat.S_IMODE(info.st_mode):04o} lets group or "
                f"others at the token, and the token is root on this host; chmod 600 {name}"
            )

    try:
        data = files.read_bytes(name, limit=TOKEN_MAX + 2, vet=vet)
    except files.FileProblem as exc:
        raise UsageError(f"--token-file {exc}") from None
    return check_token(data.strip(), f"--token-file {name}")


def check_token(data: bytes | str, what: str) -> str:
    raw = data.encode("latin-1", "replace") if isinstance(data, str) else data
    if len(raw) < TOKEN_MIN:
        raise UsageError(
            f"{what}: the token has {len(raw)} bytes; it needs at least {TOKEN_MIN} (make "
            f"one with: openssl rand -hex 32), or leave --token-file out and linkd makes one"
        )
    if len(raw) > TOKEN_MAX or not all(0x21 <= b <= 0x7E for b in raw):
        raise UsageError(
            f"{what}: the token must be {TOKEN_MIN} to {TOKEN_MAX} printable ASCII characters "
            "without spaces (it travels in an HTTP header)"
        )
    return raw.decode("ascii")


def new_token() -> tuple[str, Path]:
    """A fresh 256-bit token in a new 0600 file under the run directory."""
    token = secrets.token_hex(32)
    path = paths.root() / TOKEN_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{TOKEN_NAME}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, f"{token}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)  # a new inode: an old file's wider mode or holders do not carry over
    return token, path


def prepare(tcp: str, token_file: str | os.PathLike[str] | None, token: str | None) -> Listener:
    """Check `--tcp` and the token, and bind the port: everything that can go wrong with
    the TCP listener goes wrong here, before the daemon touches any stack."""
    address, port = parse_address(tcp)
    if token is not None:
        token_text, where = check_token(token, "the API token"), None
    elif token_file is not None:
        token_text, where = read_token(token_file), Path(token_file)
    else:
        token_text, where = new_token()
    sock = bind(address, port)
    listener = Listener(address, sock.getsockname()[1], sock, token_text, where)
    if token is None and token_file is None:
        log.info("TCP API token (256 bits) written to %s (mode 0600)", where)
    return listener


def host_problem(listener: Listener, host: str | None) -> str | None:
    """Why a request's `Host` header does not name this listener, or None."""
    if host is not None and host.lower() in listener.hosts:
        return None
    allowed = f"{listener.literal}:{listener.port} or localhost:{listener.port}"
    given = "no Host header" if host is None else f"Host {host!r}"
    return (
        f"{given} does not name this listener: the TCP API answers to Host {allowed} "
        "only (a guard against DNS rebinding)"
    )


def origin_problem(listener: Listener, origin: str | None) -> str | None:
    """Why a request's `Origin` header makes it cross-origin, or None."""
    if origin is None or origin.lower() in listener.origins:
        return None
    return (
        f"cross-origin request from {origin!r} refused: the TCP API serves no web page, "
        f"so a request may come with no Origin header or with {listener.url}'s own"
    )
