"""The stack's names for the host's own process: a resolver hook.

A test process on the host reaches containers at their addresses (the host routes to
linkd's bridges), but the host's resolver does not know `api` or `db.backend`, and
linkd never edits the host's /etc/resolv.conf. While `stack.names()` is active, this
process's `socket.getaddrinfo`, `gethostbyname` and `gethostbyname_ex` (so urllib,
http.client, asyncio, aiohttp and requests too) ask linkd's DNS first for names that
can be the stack's: one or two labels (`api`, `web-2`, `db.backend`) or under the
stack's zone (`api.STACK.linkd`). The answer is the one the first replica of a service
gets, asking the services in turn until every network of the stack is covered (so only
healthy instances of a service with a healthcheck, and the link aliases of those
services). Everything else, and a name linkd does not know, goes to the host's resolver
unchanged.

Lookups go to the daemon's API (a request each, ~1 ms): nothing is cached, so a
restart or a health change is never served stale.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from linkd.errors import LinkdError

if TYPE_CHECKING:
    from linkd.client.stacks import Stack

_original_getaddrinfo = socket.getaddrinfo
_original_gethostbyname = socket.gethostbyname
_original_gethostbyname_ex = socket.gethostbyname_ex

_lock = threading.Lock()
_active: list[Stack] = []  # newest last: it answers first


@contextlib.contextmanager
def active(stack: Stack) -> Iterator[None]:
    """Resolve `stack`'s names in this process for the duration of the block."""
    with _lock:
        _active.append(stack)
        if len(_active) == 1:
            socket.getaddrinfo = _getaddrinfo
            socket.gethostbyname = _gethostbyname
            socket.gethostbyname_ex = _gethostbyname_ex
    try:
        yield
    finally:
        with _lock:
            _active.remove(stack)
            if not _active:
                socket.getaddrinfo = _original_getaddrinfo
                socket.gethostbyname = _original_gethostbyname
                socket.gethostbyname_ex = _original_gethostbyname_ex


def lookup(host: str, family: int = socket.AF_UNSPEC) -> list[str]:
    """The addresses an active stack gives `host`; [] when it is none of theirs."""
    name = host.rstrip(".").lower()
    if not name or name == "localhost" or _is_address(name):
        return []
    with _lock:
        stacks = list(reversed(_active))
    for stack in stacks:
        if not _may_be_of(name, stack):
            continue
        try:
            found = stack.host_lookup(name, family)
        except (LinkdError, OSError):
            continue  # the stack is gone or its daemon is: the host's resolver decides
        if found:
            return found
    return []


def _may_be_of(name: str, stack: Stack) -> bool:
    return name.count(".") <= 1 or name.endswith("." + stack.dns_domain)


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _getaddrinfo(
    host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
) -> Any:
    if isinstance(host, bytes):
        host = host.decode("idna")
    if isinstance(host, str) and not flags & socket.AI_NUMERICHOST:
        addresses = lookup(host, family)
        if addresses:
            results: list[Any] = []
            for address in addresses:
                with contextlib.suppress(socket.gaierror):  # e.g. an AAAA for AF_INET
                    results += _original_getaddrinfo(
                        address, port, family, type, proto, flags | socket.AI_NUMERICHOST
                    )
            if results:
                return results
    return _original_getaddrinfo(host, port, family, type, proto, flags)


def _gethostbyname(host: str) -> str:
    addresses = lookup(host, socket.AF_INET)
    return addresses[0] if addresses else _original_gethostbyname(host)


def _gethostbyname_ex(host: str) -> tuple[str, list[str], list[str]]:
    addresses = lookup(host, socket.AF_INET)
    return (host, [], addresses) if addresses else _original_gethostbyname_ex(host)
