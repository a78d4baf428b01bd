"""`x-linkd:`, the stack file's extension key for what is linkd's own.

Compose ignores `x-*` keys, so a stack file with `x-linkd:` still works with Compose.
At the top level it holds the stack's DNS settings and default conventions; in a
service, the conventions of its links and per-link choices:

    x-linkd:
      conventions: [linkd]           # default for every link; names or paths to files
      host: ["5432", "53/udp"]       # the host's services its containers may reach
      dns:
        domain: shop.internal        # the zone; default "linkd"
        upstreams: ["127.0.0.1:5353", "192.0.2.53"]   # default: the host's resolv.conf
    services:
      web:
        links: [db]
        x-linkd:
          conventions: [docker-links, linkd]     # this service's links
          links:
            db:                                  # a link, by its alias
              conventions: [kubernetes]          # this link only
              env: [POSTGRES_DB, "PG*"]          # may pass as DB_ENV_* (docker-links)
              urls:                              # implies the urls convention
                DATABASE_URL: "postgres://{env[POSTGRES_USER]}@{addr}:{port}/{env[POSTGRES_DB]}"

A convention is a built-in name (`linkd`, `docker-links`, `kubernetes`, `urls`) or the
path of a convention file (ending in .yaml or .yml, relative to the stack file); the
files are read and checked when the stack is brought up or shown (`linkd config`).

`upstreams: []` means no forwarding: names outside the zone get SERVFAIL at once, for a
stack that must not leak lookups. At most three upstreams (resolv.conf's MAXNS, the
number Docker and aardvark-dns use too).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from ipaddress import ip_address

from linkd.core.model import (
    DEFAULT_CONVENTIONS,
    DEFAULT_DNS_DOMAIN,
    DnsSettings,
    HostAccess,
    Link,
    LinkSettings,
    Upstream,
)
from linkd.spec.nodes import At, Reader, given
from linkd.spec.values import Bad, quote

MAX_UPSTREAMS = 3
# Room left for NAME.NETWORK.STACK. in front of the domain within DNS's 253 characters.
DOMAIN_MAX = 100
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_RESERVED = ("in-addr.arpa", "ip6.arpa", "localhost")
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True, slots=True)
class StackExtension:
    dns: DnsSettings = field(default_factory=DnsSettings)
    conventions: tuple[str, ...] = DEFAULT_CONVENTIONS
    host_access: tuple[HostAccess, ...] = ()


def read_x_linkd(r: Reader, at: At | None) -> StackExtension:
    if at is None:
        return StackExtension()
    fields = r.fields(at, ("dns", "conventions", "host"))
    if fields is None:
        return StackExtension()
    conventions = _conventions(r, given(fields, "conventions"))
    if conventions is None:
        conventions = DEFAULT_CONVENTIONS
    return StackExtension(
        _dns(r, given(fields, "dns")), conventions, _host_access(r, given(fields, "host"))
    )


_HOST_ACCESS = re.compile(
    r"(?:(?P<address>[0-9.]+):)?(?P<start>[0-9]+)(?:-(?P<end>[0-9]+))?(?:/(?P<protocol>\w+))?"
)


def _host_access(r: Reader, at: At | None) -> tuple[HostAccess, ...]:
    """`host: ["5432", "6379/tcp", "53/udp", "192.0.2.2:8000-8010"]`: the host's
    services the stack's containers may reach (by default none)."""
    if at is None:
        return ()
    found: list[HostAccess] = []
    for child in r.items(at) or []:
        text = r.text(child)
        if text is None:
            continue
        match = _HOST_ACCESS.fullmatch(text.strip())
        problem = None
        if match is None:
            problem = "expected [ADDRESS:]PORT[-PORT][/tcp|udp], e.g. 5432 or 192.0.2.2:53/udp"
        else:
            start = int(match["start"])
            end = int(match["end"] or start)
            protocol = match["protocol"] or "tcp"
            address = match["address"]
            if not 1 <= start <= end <= 65535:
                problem = "ports are 1-65535, the first of a range not above the last"
            elif protocol not in ("tcp", "udp"):
                problem = f"protocol {quote(protocol)}: tcp or udp"
            elif address is not None:
                try:
                    parsed = ip_address(address)
                except ValueError:
                    parsed = None
                if parsed is None or parsed.version != 4:
                    problem = f"{quote(address)} is no IPv4 address"
                elif parsed.is_loopback or parsed.is_unspecified:
                    problem = (f"{address}: containers never reach the host's loopback; "
                               "leave the address out to allow every host address")
        if problem is not None or match is None:
            r.fail(child, f"host access {quote(text)}: {problem}")
            continue
        found.append(HostAccess(start, end, protocol, address))  # type: ignore[arg-type]
    return tuple(found)


def read_service_x_linkd(
    r: Reader, at: At | None, links: tuple[Link, ...]
) -> tuple[tuple[str, ...] | None, tuple[LinkSettings, ...]]:
    """A service's `x-linkd:`: its links' conventions, and settings per link alias."""
    if at is None:
        return None, ()
    fields = r.fields(at, ("conventions", "links", "runtime"))  # runtime: linkd.spec.limits
    if fields is None:
        return None, ()
    conventions = _conventions(r, given(fields, "conventions"))
    settings: list[LinkSettings] = []
    if (node := given(fields, "links")) is not None:
        aliases = [link.alias for link in links]
        for alias, child in r.pairs(node) or []:
            if alias not in aliases:
                known = ", ".join(aliases) if aliases else "none (add links: first)"
                r.fail(child, f"no link with alias {quote(alias)}; this service's links: {known}")
                continue
            settings.append(_link_settings(r, alias, child))
    return conventions, tuple(settings)


def _link_settings(r: Reader, alias: str, at: At) -> LinkSettings:
    fields = r.fields(at, ("conventions", "env", "urls"))
    if fields is None:
        return LinkSettings(alias)
    env: tuple[str, ...] = ()
    if (node := given(fields, "env")) is not None:
        env = tuple(r.texts(node) or ())
    urls: list[tuple[str, str]] = []
    if (node := given(fields, "urls")) is not None:
        for name, child in r.pairs(node) or []:
            if not _VARIABLE.fullmatch(name):
                r.fail(child, f"expected a variable name (letters, digits, _), got {quote(name)}")
                continue
            template = r.text(child)
            if template is not None:
                urls.append((name, template))
    # A link with urls gets the urls convention on top of its others (the planner adds it).
    return LinkSettings(alias, _conventions(r, given(fields, "conventions")), env, tuple(urls))


def _conventions(r: Reader, at: At | None) -> tuple[str, ...] | None:
    if at is None:
        return None
    items = r.items(at)
    if items is None:
        return None
    found = [r.parsed(item, check_convention_ref) for item in items]
    names = tuple(f for f in found if f is not None)
    if len(set(names)) != len(names):
        r.fail(at, "a convention is listed twice")
    return names


def check_convention_ref(text: str) -> str:
    """A built-in convention's name, or the path of a convention file."""
    ref = text.strip()
    if ref.endswith((".yaml", ".yml")) or _NAME.fullmatch(ref):
        return ref
    raise Bad(
        f"expected a convention name (linkd, docker-links, kubernetes, urls) or a file "
        f"path ending in .yaml, got {quote(text)}"
    )


def _dns(r: Reader, dns: At | None) -> DnsSettings:
    if dns is None:
        return DnsSettings()
    settings = r.fields(dns, ("domain", "upstreams"))
    if settings is None:
        return DnsSettings()
    domain = DEFAULT_DNS_DOMAIN
    if (node := given(settings, "domain")) is not None:
        domain = r.parsed(node, check_domain) or DEFAULT_DNS_DOMAIN
    upstreams: tuple[Upstream, ...] | None = None
    if (node := given(settings, "upstreams")) is not None:
        upstreams = _upstreams(r, node)
    return DnsSettings(domain, upstreams)


def _upstreams(r: Reader, at: At) -> tuple[Upstream, ...] | None:
    items = r.items(at)
    if items is None:
        return None
    if len(items) > MAX_UPSTREAMS:
        r.fail(at, f"at most {MAX_UPSTREAMS} upstreams (resolv.conf's limit), got {len(items)}")
        return None
    found = [r.parsed(item, parse_upstream) for item in items]
    return tuple(u for u in found if u is not None)


def check_domain(text: str) -> str:
    """A zone name: DNS labels, lower-cased, without the trailing dot."""
    domain = text.strip().rstrip(".").lower()
    if not domain:
        raise Bad('expected a domain such as "linkd" or "shop.internal", got an empty one')
    if len(domain) > DOMAIN_MAX:
        raise Bad(f"expected a domain of at most {DOMAIN_MAX} characters, got {len(domain)}")
    bad = [label for label in domain.split(".") if not _LABEL.fullmatch(label)]
    if bad:
        raise Bad(
            f"expected a domain of DNS labels (letters, digits, inner '-'), got {quote(text)}: "
            f"{quote(bad[0])} is not a label"
        )
    if any(domain == r or domain.endswith("." + r) for r in _RESERVED):
        raise Bad(f"{quote(text)} is reserved (reverse lookups or localhost); pick another domain")
    return domain


def parse_upstream(text: str) -> Upstream:
    """`IP`, `IP:PORT`, `[IPv6]:PORT` or a bare IPv6 address; port 53 by default."""
    host, port = text.strip(), "53"
    if host.startswith("["):
        close = host.find("]")
        if close < 0 or host[close + 1 : close + 2] not in ("", ":"):
            raise Bad(f'expected "[IPv6]:PORT", got {quote(text)}')
        host, port = host[1:close], host[close + 2 :] or "53"
    elif host.count(":") == 1:
        host, port = host.split(":")
    try:
        ip_address(host.split("%", 1)[0])
    except ValueError:
        raise Bad(
            f"expected an upstream as an IP address with an optional port (names would need "
            f"a resolver to find the resolver), got {quote(text)}"
        ) from None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise Bad(f"expected a port between 1 and 65535 in {quote(text)}")
    return Upstream(host, int(port))
