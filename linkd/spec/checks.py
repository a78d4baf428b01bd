"""Checks across a whole stack, run after every service and network has been read.

Each check looks at several entries at once (two services publishing one host port, a
dependency cycle, two networks with overlapping subnets), so it needs to know where each
entry was written: `Origins` keeps, for one service, the `At` of every entry a check may
point at. Problems go to the same `Reader` as the per-value ones.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field

from linkd.core.model import Network, PortSpec, Service
from linkd.spec.nodes import At, Reader


@dataclass(slots=True)
class Origins:
    """Where one service's entries are in the file."""

    at: At
    ports: list[tuple[PortSpec, At]] = field(default_factory=list)
    edges: dict[str, At] = field(default_factory=dict)  # start dependency -> first entry
    depends: dict[str, At] = field(default_factory=dict)  # depends_on entries only


Parsed = Sequence[tuple[Service, Origins]]


def check_stack(r: Reader, services: Parsed) -> None:
    check_names(r, services)
    check_cycles(r, services)
    check_ports(r, services)
    check_healthy_deps(r, services)


def check_names(r: Reader, services: Parsed) -> None:
    """Every name linkd resolves is one thing: a service (all its replicas) or one
    container (`<service>-<n>`, or its `container_name`); DNS names are case-insensitive."""
    seen: dict[str, Service] = {}
    for service, origins in services:
        lower = service.name.lower()
        if lower in seen:
            r.fail(
                origins.at,
                f"service {service.name} differs from service {seen[lower].name} only in "
                "case; DNS names are case-insensitive",
            )
        seen.setdefault(lower, service)
    # In file order, each service's name before its containers': a clash is reported
    # where the later of the two is written.
    owners: dict[str, str] = {}
    for service, origins in services:
        names = [(service.name, f"service {service.name}")]
        for replica in range(1, service.replicas + 1):
            container = service.container(replica)
            if len(container.rpartition(".")[2]) > 63:
                r.fail(origins.at, f"container name {container} has a part longer than 63 "
                                   "characters, the limit of a DNS label; shorten it")
            names.append((container, f"the container_name of service {service.name}"
                          if service.container_name
                          else f"replica {replica} of service {service.name}"))
        for name, what in names:
            other = owners.setdefault(name.lower(), what)
            if other != what and not other.endswith(f"service {service.name}"):
                r.fail(origins.at, f"{name} would name both {other} and {what} (linkd "
                                   "resolves services and containers by name); rename one")


def check_cycles(r: Reader, services: Parsed) -> None:
    """Start-order cycles through `depends_on` and `links` (Compose treats links as
    dependencies too); each cycle is reported once, from its first service in the file.
    """
    order = {service.name: i for i, (service, _) in enumerate(services)}
    edges = {service.name: origins.edges for service, origins in services}
    reported: set[tuple[str, ...]] = set()
    for name, targets in edges.items():
        if name in targets:
            r.fail(targets[name], f"service {name} depends on itself")
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        path.append(name)
        for target in edges.get(name, {}):
            if target == name or target not in edges:
                continue
            if state.get(target) == 1:
                cycle = path[path.index(target) :]
                first = min(range(len(cycle)), key=lambda i: order[cycle[i]])
                cycle = cycle[first:] + cycle[:first]
                if tuple(cycle) not in reported:
                    reported.add(tuple(cycle))
                    at = edges[cycle[0]][cycle[1 % len(cycle)]]
                    shown = " -> ".join([*cycle, cycle[0]])
                    r.fail(at, f"dependency cycle: {shown}")
            elif target not in state:
                visit(target, path)
        path.pop()
        state[name] = 2

    for name in edges:
        if name not in state:
            visit(name, [])


def _ips_overlap(a: str | None, b: str | None) -> bool:
    if a is None or b is None or a == b:
        return True  # no host_ip publishes on every address
    ip_a, ip_b = ipaddress.ip_address(a), ipaddress.ip_address(b)
    return ip_a.version == ip_b.version and (ip_a.is_unspecified or ip_b.is_unspecified)


def check_ports(r: Reader, services: Parsed) -> None:
    """A host port can be published once; every replica of a service would publish it."""
    published: list[tuple[PortSpec, At]] = []
    for service, origins in services:
        for spec, at in origins.ports:
            if spec.host_start is None or spec.host_end is None:
                continue
            if service.replicas > 1:
                r.fail(
                    at,
                    f"host port {spec.host_start} is fixed but service {service.name} has "
                    f"{service.replicas} replicas, which cannot all publish it; leave the "
                    f'host port out (like "{spec.start}") to get one per replica',
                )
            for other, other_at in published:
                if (
                    other.protocol == spec.protocol
                    and other.host_start is not None
                    and other.host_end is not None
                    and spec.host_start <= other.host_end
                    and other.host_start <= spec.host_end
                    and _ips_overlap(spec.host_ip, other.host_ip)
                ):
                    where = spec.host_ip or "all addresses"
                    r.fail(
                        at,
                        f"host port {max(spec.host_start, other.host_start)}/{spec.protocol} "
                        f"on {where} is already published by {other_at.path} "
                        f"(line {other_at.line})",
                    )
                    break
            published.append((spec, at))


def check_healthy_deps(r: Reader, services: Parsed) -> None:
    """`condition: service_healthy` waits forever on a service without a healthcheck;
    Compose only finds out when starting. (An image may bring its own, so those pass.)
    """
    by_name = {service.name: service for service, _ in services}
    for service, origins in services:
        for dep in service.depends_on:
            target = by_name.get(dep.service)
            if dep.condition != "service_healthy" or target is None or target.image:
                continue
            if target.healthcheck is None or target.healthcheck.disabled:
                r.fail(
                    origins.depends[dep.service],
                    f"condition service_healthy needs service {dep.service} to have a "
                    "healthcheck, and it has none",
                )


def check_subnets(r: Reader, networks: Sequence[tuple[Network, dict[int, At]]]) -> None:
    """Declared subnets must not overlap: linkd routes each one to its own bridge.

    `networks` pairs each network with the `At` of its subnets, by IP version.
    """
    seen: list[tuple[Network, ipaddress.IPv4Network | ipaddress.IPv6Network, At]] = []
    for network, where in networks:
        for subnet in (network.subnet, network.subnet6):
            if subnet is None:
                continue
            for other, other_subnet, other_at in seen:
                if other_subnet.version == subnet.version and subnet.overlaps(other_subnet):
                    r.fail(
                        where[subnet.version],
                        f"subnet {subnet} of network {network.name} overlaps subnet "
                        f"{other_subnet} of network {other.name} (line {other_at.line})",
                    )
            seen.append((network, subnet, where[subnet.version]))
