"""Which registries linkd may speak plain HTTP to, which mirrors stand in for docker.io,
and in what order a pull tries them: the registries file and its environment, parsed.

The file (`/etc/linkd/registries.json`, or the one `$LINKD_REGISTRIES_CONFIG` names) is
JSON with two of the keys of Docker's daemon.json, meaning what they mean there:

    {"insecure-registries": ["reg.lan:5000", "10.0.0.0/8"],
     "registry-mirrors": ["https://mirror.lan", "http://127.0.0.1:5001"]}

- `insecure-registries`: `host[:port]` (an entry without a port covers every port of
  the host; Docker matches the string exactly) or a CIDR (matched against registries
  named by an IP address; Docker also resolves host names for it, linkd does not). An
  `http://` or `https://` in front is dropped, as Docker drops it.
- `registry-mirrors`: `http://` or `https://` URLs, with an optional path prefix, no
  query, fragment or user; used for docker.io images only. A plain-HTTP mirror must be
  on loopback or listed insecure (issue 17: `http://` only for insecure registries;
  Docker takes any `http://` mirror).

`LINKD_INSECURE_REGISTRIES` and `LINKD_REGISTRY_MIRRORS` (comma-separated, same forms)
add to the file's lists, after them. Loopback registries (127.0.0.0/8, ::1,
`localhost`) may always be spoken to over plain HTTP, as Docker's built-in 127.0.0.0/8.

`endpoints` is the order a pull tries, as Docker's registry service builds it:
docker.io: each mirror in order, then registry-1.docker.io over verified HTTPS; another
registry: HTTPS, then (only if it may be plain HTTP) HTTP. A registry listed insecure is
tried over HTTPS without verifying its certificate, as Docker does. One difference: a
registry on loopback that is *not* listed has its HTTPS certificate verified (with its
certs.d directory); Docker skips verification for all of 127.0.0.0/8.

Pure: text and an environment in, a frozen `RegistryConfig` out, or a `UsageError`
naming the file (or variable), the key, the entry and the fix. The runtime reads the
file (linkd.runtime.images.transport).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from linkd.core import reference
from linkd.errors import UsageError

CONFIG_ENV = "LINKD_REGISTRIES_CONFIG"
DEFAULT_CONFIG = "/etc/linkd/registries.json"
INSECURE_ENV = "LINKD_INSECURE_REGISTRIES"
MIRRORS_ENV = "LINKD_REGISTRY_MIRRORS"
INSECURE_KEY = "insecure-registries"
MIRRORS_KEY = "registry-mirrors"
_KEYS = (INSECURE_KEY, MIRRORS_KEY)

_LABEL = "(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[a-fA-F0-9:.]+\])(?::([0-9]{{1,5}}))?")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Mirror:
    """A docker.io mirror: `scheme://host[prefix]`."""

    scheme: str
    host: str
    prefix: str = ""

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}{self.prefix}"


@dataclass(frozen=True)
class Endpoint:
    """One place a pull may fetch a repository from. `verify`: check the server's
    certificate (HTTPS); `mirror`: a docker.io mirror, left for the next endpoint when
    it fails."""

    scheme: str
    host: str
    prefix: str = ""
    verify: bool = True
    mirror: bool = False

    def base(self, path: str) -> str:
        """The URL of repository `path`'s API on this endpoint (no trailing slash)."""
        return f"{self.scheme}://{self.host}{self.prefix}/v2/{path}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}{self.prefix}"


@dataclass(frozen=True)
class RegistryConfig:
    insecure_hosts: frozenset[str] = frozenset()  # lower-case host[:port] or host
    insecure_nets: tuple[Network, ...] = ()
    mirrors: tuple[Mirror, ...] = ()
    source: str = DEFAULT_CONFIG  # the file, for messages
    warnings: tuple[str, ...] = field(default=(), compare=False)

    def listed(self, host: str) -> bool:
        """Whether `host[:port]` is listed insecure (by name, or by a CIDR holding its
        address)."""
        host = host.lower()
        name = host_name(host)
        if host in self.insecure_hosts or name in self.insecure_hosts:
            return True
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            return False
        return any(address in net for net in self.insecure_nets)

    def plain_http(self, host: str) -> bool:
        """Whether `host[:port]` may be spoken to over plain HTTP."""
        return is_loopback(host) or self.listed(host)


def host_name(host: str) -> str:
    """`host[:port]` without the port (an IPv6 address without its brackets)."""
    if host.startswith("["):
        return host[1:host.index("]")] if "]" in host else host
    return host.rpartition(":")[0] if ":" in host else host


def is_loopback(host: str) -> bool:
    name = host_name(host).lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def endpoints(domain: str, config: RegistryConfig) -> tuple[Endpoint, ...]:
    """Where a pull of a repository on `domain` (a reference's registry: `docker.io`
    or `host[:port]`) is tried, in order."""
    if domain in (reference.DEFAULT_DOMAIN, reference.LEGACY_DOMAIN):
        mirrors = tuple(Endpoint(m.scheme, m.host, m.prefix, verify=not config.listed(m.host),
                                 mirror=True) for m in config.mirrors)
        return (*mirrors, Endpoint("https", reference.DOCKER_HUB_API))
    listed = config.listed(domain)
    secure = Endpoint("https", domain, verify=not listed)
    return (secure, Endpoint("http", domain)) if config.plain_http(domain) else (secure,)


# -- parsing -------------------------------------------------------------------------


class _Problems:
    def __init__(self) -> None:
        self.found: list[str] = []
        self.warnings: list[str] = []

    def add(self, where: str, entry: object, detail: str) -> None:
        self.found.append(f"{where}: {entry!r}: {detail}")


def parse(text: str | None, env: Mapping[str, str], source: str = DEFAULT_CONFIG
          ) -> RegistryConfig:
    """The registries file's `text` (None: there is none) from `source`, with the
    environment's lists added."""
    problems = _Problems()
    doc: dict[str, Any] = {}
    if text is not None:
        doc = _document(text, source, problems)
    hosts: set[str] = set()
    nets: list[Network] = []
    mirrors: list[Mirror] = []
    for where, entries in (
            (f"{source}: {INSECURE_KEY}", _list(doc, INSECURE_KEY, source, problems)),
            (INSECURE_ENV, _env_list(env, INSECURE_ENV))):
        for n, entry in entries:
            at = f"{where}[{n}]" if where != INSECURE_ENV else where
            _insecure(at, entry, hosts, nets, problems)
    for where, entries in (
            (f"{source}: {MIRRORS_KEY}", _list(doc, MIRRORS_KEY, source, problems)),
            (MIRRORS_ENV, _env_list(env, MIRRORS_ENV))):
        for n, entry in entries:
            at = f"{where}[{n}]" if where != MIRRORS_ENV else where
            mirror = _mirror(at, entry, problems)
            if mirror is not None and mirror not in mirrors:
                mirrors.append(mirror)
    config = RegistryConfig(frozenset(hosts), tuple(dict.fromkeys(nets)), tuple(mirrors),
                            source, tuple(problems.warnings))
    for mirror in config.mirrors:
        if mirror.scheme == "http" and not config.plain_http(mirror.host):
            problems.found.append(
                f"{MIRRORS_KEY}: {str(mirror)!r} is plain HTTP, which linkd speaks only to "
                f"registries listed insecure: add {mirror.host!r} to {INSECURE_KEY} in "
                f"{source} (or to {INSECURE_ENV}), or use https://")
    if problems.found:
        raise UsageError("registry configuration: " + "; ".join(problems.found))
    return config


def _document(text: str, source: str, problems: _Problems) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except ValueError as exc:
        problems.found.append(f"{source}: not JSON: {exc} (write an object such as "
                              f'{{"{INSECURE_KEY}": ["reg.lan:5000"]}})')
        return {}
    if not isinstance(doc, dict):
        problems.found.append(f"{source}: a JSON object is expected, with the keys "
                              f"{' and '.join(_KEYS)}, not {type(doc).__name__}")
        return {}
    for key in doc:
        if key not in _KEYS:
            problems.found.append(f"{source}: {key!r}: unknown key (the keys are "
                                  f"{' and '.join(_KEYS)}; other daemon.json keys do not "
                                  "belong here)")
    return doc


def _list(doc: Mapping[str, Any], key: str, source: str, problems: _Problems
          ) -> list[tuple[int, str]]:
    value = doc.get(key, [])
    if not isinstance(value, list):
        problems.found.append(f"{source}: {key}: a list of strings is expected, not "
                              f"{type(value).__name__}")
        return []
    found = []
    for n, entry in enumerate(value):
        if isinstance(entry, str):
            found.append((n, entry.strip()))
        else:
            problems.add(f"{source}: {key}[{n}]", entry, "a string is expected")
    return found


def _env_list(env: Mapping[str, str], name: str) -> list[tuple[int, str]]:
    return [(n, part.strip()) for n, part in enumerate(env.get(name, "").split(","))
            if part.strip()]


def _insecure(where: str, entry: str, hosts: set[str], nets: list[Network],
              problems: _Problems) -> None:
    lowered = entry.lower()
    for prefix in ("http://", "https://"):
        if lowered.startswith(prefix):
            problems.warnings.append(f"{where}: {entry!r}: the {prefix} in front is "
                                     "dropped (an insecure registry is host[:port])")
            entry, lowered = entry[len(prefix):], lowered[len(prefix):]
            break
    if "://" in entry:
        problems.add(where, entry, "a scheme other than http:// or https:// (write "
                     "host[:port] or a CIDR such as 10.0.0.0/8)")
        return
    if "/" in entry:
        try:
            nets.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            problems.add(where, entry, "not a CIDR (write one such as 10.0.0.0/8 or "
                         "fd00::/8, or a host[:port])")
        return
    if lowered == reference.LEGACY_DOMAIN:
        lowered = reference.DEFAULT_DOMAIN
    problem = _host_problem(lowered)
    if problem:
        problems.add(where, entry, f"{problem} (write host[:port], such as reg.lan:5000, "
                     "or a CIDR)")
        return
    hosts.add(lowered.strip("[]") if lowered.startswith("[") and "]:" not in lowered
              else lowered)


def _host_problem(host: str) -> str:
    """What is wrong with `host[:port]` as a registry's name, or ""."""
    if not host:
        return "empty"
    try:
        ipaddress.ip_address(host)  # an IPv6 address without brackets, as Docker takes
        return ""
    except ValueError:
        pass
    m = _HOST.fullmatch(host)
    if m is None:
        return "not a host name, IP address or [IPv6 address], with an optional :PORT"
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host_name(host))
        except ValueError:
            return "not an IPv6 address between the brackets"
    if m.group(1) is not None and not 0 < int(m.group(1)) <= 65535:
        return f"port {m.group(1)} is not between 1 and 65535"
    return ""


def _mirror(where: str, entry: str, problems: _Problems) -> Mirror | None:
    scheme, sep, _ = entry.partition("://")
    if not sep or not scheme:
        problems.add(where, entry, "no scheme: write https://HOST[:PORT] (or http:// for a "
                     "mirror on loopback or listed in insecure-registries)")
        return None
    try:
        url = urlsplit(entry)
        _ = url.port  # raises for a port out of range
    except ValueError as exc:
        problems.add(where, entry, f"not a URL: {exc}")
        return None
    if url.scheme.lower() not in ("http", "https"):
        problems.add(where, entry, f"scheme {url.scheme!r}: a mirror is http:// or https://")
        return None
    if url.query or url.fragment or entry.endswith(("?", "#")):
        problems.add(where, entry, "a query or fragment: a mirror is SCHEME://HOST[:PORT]"
                     "[/PATH]")
        return None
    if url.username is not None or url.password is not None:
        problems.add(where, entry, "a user name or password in the URL: mirrors take none "
                     "(credentials are docker.io's)")
        return None
    host = url.netloc.lower()
    problem = _host_problem(host)
    if problem:
        problems.add(where, entry, f"the host {host!r}: {problem}")
        return None
    return Mirror(url.scheme.lower(), host, url.path.rstrip("/"))

