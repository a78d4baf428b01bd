"""`x-linkd:`, the stack file's extension key for what is linkd's own.

Compose ignores `x-*` keys, so a stack file with `x-linkd:` still works with Compose.
Today it holds the DNS settings of the stack:

    x-linkd:
      dns:
        domain: shop.internal        # the zone; default "linkd"
        upstreams: ["127.0.0.1:5353", "192.0.2.53"]   # default: the host's resolv.conf

`upstreams: []` means no forwarding: names outside the zone get SERVFAIL at once, for a
stack that must not leak lookups. At most three upstreams (resolv.conf's MAXNS, the
number Docker and aardvark-dns use too).
"""

from __future__ import annotations

import re
from ipaddress import ip_address

from linkd.model import DEFAULT_DNS_DOMAIN, DnsSettings, Upstream
from linkd.spec_nodes import At, Reader, given
from linkd.spec_values import Bad, quote

MAX_UPSTREAMS = 3
# Room left for NAME.NETWORK.STACK. in front of the domain within DNS's 253 characters.
DOMAIN_MAX = 100
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_RESERVED = ("in-addr.arpa", "ip6.arpa", "localhost")


def read_x_linkd(r: Reader, at: At | None) -> DnsSettings:
    if at is None:
        return DnsSettings()
    fields = r.fields(at, ("dns",))
    dns = None if fields is None else given(fields, "dns")
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
