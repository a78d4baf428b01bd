"""A container's /etc/hosts and /etc/resolv.conf, computed from the plan when the files
are written.

It lists the container itself on each of its networks, then every peer on a network the
two share: container name, service name, `NAME.NETWORK` forms, the peer's network
aliases, the container's own link aliases for it, and the peer's hostname.

A peer whose service has a healthcheck is listed by its container name, `NAME.NETWORK`
and hostname only: the file is fixed at the container's start and resolvers read it
before DNS, so the service name and aliases, which should reach healthy instances only,
are left to linkd's DNS (`linkd.dns.zone`, health).

Kept out of the plan on purpose: every file lists the peers, so the files of N
containers hold N² lines. Stored in each ContainerPlan they made `realize` O(N²) (~300 ms
at 500 containers) and the state file, which is rewritten on every container state
change, grow to megabytes; computed per container here they cost O(N) each, once, when
that container's files are written.
"""

from __future__ import annotations

from linkd.core.health import enabled
from linkd.core.plan import ContainerPlan, StackPlan

_LOCAL = ("127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback")


def hosts_file(plan: StackPlan, me: ContainerPlan) -> str:
    lines = list(_LOCAL)
    # With a domainname, its full name first, as Docker writes it (getfqdn() finds it).
    own = f"{me.hostname}.{me.net.domainname} " if me.net.domainname else ""
    for iface in me.interfaces:
        lines.append(f"{iface.address}\t{own}{me.hostname} {me.name}.{iface.network}")
        if iface.address6 is not None:
            lines.append(f"{iface.address6}\t{own}{me.hostname} {me.name}.{iface.network}")
    for iface in me.interfaces:
        for peer in plan.containers:
            if peer.name == me.name:
                continue
            theirs = next((i for i in peer.interfaces if i.network == iface.network), None)
            if theirs is None:
                continue
            names = [peer.name, f"{peer.name}.{iface.network}"]
            if not enabled(peer.healthcheck):
                names[1:1] = [peer.service]
                names += [f"{peer.service}.{iface.network}", *theirs.aliases]
                names += [
                    alias
                    for alias, service in me.links
                    if service == peer.service and alias not in names
                ]
            if peer.hostname not in names:
                names.append(peer.hostname)
            lines.append(f"{theirs.address}\t{' '.join(names)}")
            if theirs.address6 is not None:
                lines.append(f"{theirs.address6}\t{' '.join(names)}")
    lines += me.extra_hosts  # what its links' conventions add (docker-links' own lines)
    lines += [f"{address}\t{host}" for host, address in me.added_hosts]  # extra_hosts
    return "\n".join(lines) + "\n"


LINKD_RESOLVER = "127.0.0.11"
_NDOTS = "ndots:0"  # every name is tried as written first: the stack's names are short


def resolv_conf(me: ContainerPlan, host: str = "") -> str:
    """Its /etc/resolv.conf: linkd's resolver with its `dns_search` and `dns_opt`; on the
    host's network (`host`: the host's resolv.conf), the host's file with `dns`,
    `dns_search` and `dns_opt` in place of its own lines, as Docker writes it."""
    net = me.net
    if me.network_mode == "host":
        kept = [line for line in host.splitlines()
                if not (net.dns and line.startswith("nameserver"))
                and not (net.dns_search and line.startswith(("search", "domain")))
                and not (net.dns_opt and line.startswith("options"))]
        lines = [*kept, *(f"nameserver {server}" for server in net.dns)]
        if net.dns_search:
            lines.append("search " + " ".join(net.dns_search))
        if net.dns_opt:
            lines.append("options " + " ".join(net.dns_opt))
        return "\n".join(lines) + "\n" if lines else ""
    upstream = ("the servers of its dns: key" if net.dns
                else "the stack's upstreams (the host's resolvers by default)")
    lines = [
        "# linkd's DNS server: the stack's names (also in /etc/hosts), others forwarded",
        f"# to {upstream}.",
        f"nameserver {LINKD_RESOLVER}",
    ]
    if net.dns_search:
        lines.append("search " + " ".join(net.dns_search))
    given = {option.split(":", 1)[0] for option in net.dns_opt}
    options = [o for o in (_NDOTS,) if o.split(":", 1)[0] not in given] + list(net.dns_opt)
    lines.append("options " + " ".join(options))
    return "\n".join(lines) + "\n"
