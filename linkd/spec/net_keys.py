"""A service's per-container network keys: `dns`, `dns_search`, `dns_opt`, `sysctls`,
`domainname`, `mac_address`, and the check of `hostname`, read into `NetSettings`.

- `dns`: IP addresses. linkd's DNS stays the container's resolver (127.0.0.11, which
  answers the stack's names); the names outside its zone are forwarded to these servers
  instead of the stack's upstreams. On the host's network (no linkd DNS) they are the
  resolv.conf's nameservers, as Docker writes them.
- `dns_search`, `dns_opt`: resolv.conf's `search` domains and `options`, as Docker writes
  them (`dns_search: .` is no search line). An option given replaces linkd's of the same
  name (`ndots:2` replaces `ndots:0`).
- `sysctls` (a mapping, or a list of `KEY=VALUE`): only those the kernel keeps per
  namespace, set in the container's own: `net.*` (its network namespace; refused where
  the namespace is the host's or shared with another container), `kernel.shm*`,
  `kernel.msg*`, `kernel.sem` and `fs.mqueue.*` (its IPC namespace). Any other would
  change the host, and is refused naming it, as Docker refuses it.
- `domainname`: its UTS domain name (and its hosts file's `HOSTNAME.DOMAIN`).
- `mac_address` (the service's: its first network's interface; or a network's, under
  `networks.N.mac_address` in linkd.spec.networks): a unicast MAC, one container's.
- `hostname`: what the kernel takes for a host name, at most 64 bytes.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

from linkd.core.model import NetSettings
from linkd.spec.nodes import At, Reader, given
from linkd.spec.values import Bad, quote

KEYS = ("dns", "dns_search", "dns_opt", "sysctls", "domainname", "mac_address")

_SYSCTL_PART = re.compile(r"[A-Za-z0-9_-]+")
_IPC_SYSCTLS = ("kernel.sem",)
_IPC_PREFIXES = ("kernel.shm", "kernel.msg", "fs.mqueue.")
_MAC = re.compile(r"[0-9a-fA-F]{2}([:-][0-9a-fA-F]{2}){5}")
_HOSTNAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?")
_UTS_MAX = 64  # bytes of a host or domain name (the kernel's __NEW_UTS_LEN)
_SEARCH = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_.])?")
_OPTION = re.compile(r"[a-z][a-z0-9-]*(:[0-9]+)?")


def read_net_settings(
    r: Reader, f: dict[str, At], service: str, replicas: int, mode: str | None
) -> NetSettings:
    """The keys of one service; `mode` its network_mode (None: a namespace of its own)."""
    return NetSettings(
        dns=tuple(_list(r, given(f, "dns"), _server)),
        dns_search=tuple(s for s in _list(r, given(f, "dns_search"), _search)
                         if s not in (".", "")),
        dns_opt=tuple(_list(r, given(f, "dns_opt"), _option)),
        sysctls=_sysctls(r, given(f, "sysctls"), mode),
        domainname=_uts_name(r, given(f, "domainname"), "domain name"),
        mac_address=_service_mac(r, given(f, "mac_address"), service, replicas),
    )


def check_hostname(r: Reader, at: At | None) -> str | None:
    return _uts_name(r, at, "host name")


def parse_mac(text: str) -> str:
    """A unicast MAC address, as the kernel shows it: six lower-case pairs with colons."""
    if not _MAC.fullmatch(text):
        raise Bad(f'expected a MAC address like "02:42:ac:11:00:02", got {quote(text)}')
    mac = text.replace("-", ":").lower()
    if int(mac[:2], 16) & 1:
        raise Bad(f"{mac} is a multicast address; an interface needs a unicast one (the "
                  "first byte even)")
    if mac == "00:00:00:00:00:00":
        raise Bad("00:00:00:00:00:00 is no interface's address")
    return mac


def _list(r: Reader, at: At | None, parse: Callable[[str], str]) -> list[str]:
    """A string or a list of strings (Compose takes both), each through `parse`."""
    if at is None or at.is_null:
        return []
    items = (r.items(at) or []) if at.is_sequence else [at]
    found = []
    for item in items:
        value = r.parsed(item, parse)
        if value is not None:
            found.append(value)
    return found


def _server(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise Bad(f"expected a DNS server's IP address, got {quote(text)}") from None


def _search(text: str) -> str:
    if text in (".", ""):  # no search domain ("" as Compose files write it too)
        return text
    if len(text) > 253 or not _SEARCH.fullmatch(text) or ".." in text:
        raise Bad(f"expected a search domain like example.com, got {quote(text)}")
    return text


def _option(text: str) -> str:
    if not _OPTION.fullmatch(text):
        raise Bad(f'expected a resolv.conf option like "ndots:2" or "edns0", got '
                  f"{quote(text)}")
    return text


def _uts_name(r: Reader, at: At | None, what: str) -> str | None:
    if at is None or at.is_null:
        return None
    text = r.text(at)
    if not text:  # empty (an unset ${VAR}, say): the default, as Docker takes it
        return None
    if len(text.encode()) > _UTS_MAX or not _HOSTNAME.fullmatch(text) or ".." in text:
        r.fail(at, f"expected a {what} of letters, digits, '-', '_' and '.', at most "
                   f"{_UTS_MAX} characters (the kernel's limit), got {quote(text)}")
        return None
    return text


def _service_mac(r: Reader, at: At | None, service: str, replicas: int) -> str | None:
    if at is None or at.is_null:
        return None
    mac = r.parsed(at, parse_mac)
    if mac is not None and replicas > 1:
        r.fail(at, f"service {service} has {replicas} replicas and one MAC address; an "
                   "address fits one container")
        return None
    return mac


def _sysctls(r: Reader, at: At | None, mode: str | None) -> tuple[tuple[str, str], ...]:
    if at is None or at.is_null:
        return ()
    entries: list[tuple[str, str, At]] = []
    if at.is_mapping:
        for key, child in r.pairs(at) or []:
            value = "" if child.is_null else r.raw(child)
            if value is not None:
                entries.append((key, value, child))
    else:
        for item in r.items(at) or []:
            if (text := r.text(item)) is None:
                continue
            key, eq, value = text.partition("=")
            if not eq or not key:
                r.fail(item, f"expected KEY=VALUE, like net.core.somaxconn=1024, got "
                             f"{quote(text)}")
                continue
            entries.append((key, value, item))
    found: dict[str, str] = {}
    for key, value, item in entries:
        try:
            name = _sysctl(key.strip(), mode)
        except Bad as exc:
            r.fail(item, str(exc))
            continue
        found[name] = value.strip()
    return tuple(found.items())


def _sysctl(key: str, mode: str | None) -> str:
    """A sysctl's name, dotted; Bad unless the kernel keeps it per namespace and the
    container has that namespace to itself."""
    parts = re.split(r"[./]", key)
    if not all(_SYSCTL_PART.fullmatch(p) for p in parts):
        raise Bad(f"expected a sysctl name like net.core.somaxconn, got {quote(key)}")
    name = ".".join(parts)
    if name.startswith("net."):
        if mode == "host":
            raise Bad(f"sysctl {name} would change the host's network (network_mode host); "
                      "Docker refuses it too")
        if mode is not None:
            raise Bad(f"sysctl {name} would change the network namespace of the container "
                      f"it shares ({mode}); set it there")
        return name
    if name in _IPC_SYSCTLS or name.startswith(_IPC_PREFIXES):
        return name
    raise Bad(f"sysctl {name} is not namespaced: setting it would change the host (Docker "
              "refuses it too); linkd sets net.*, kernel.shm*, kernel.msg*, kernel.sem and "
              "fs.mqueue.* in the container's namespaces")
