"""A stack's wiring as a picture's parts: networks, containers on them (with their
addresses, state, health and restarts), links between containers (alias and the
conventions that gave variables for it) and the host ports published to them.

`topology(state)` derives it from a stack's state alone (what `linkd inspect` shows);
linkd.core.graph_formats draws it as DOT, Mermaid or SVG (`linkd graph`).
"""

from __future__ import annotations

from dataclasses import dataclass

from linkd.core.state import StackState

# What a container's colour says, from its state and health.
Condition = str  # "healthy", "starting", "unhealthy", "running", "restarting", "stopped"


@dataclass(frozen=True, slots=True)
class Network:
    key: str  # the name in the stack file
    subnet: str
    internal: bool
    joined: str | None  # "stack/network" of the network it joins; None: its own
    overlay: bool  # spans a cluster's nodes


@dataclass(frozen=True, slots=True)
class Container:
    name: str
    service: str
    condition: Condition
    restarts: int
    addresses: tuple[tuple[str, str], ...]  # (network key, address)
    exit_code: int | None = None  # of a stopped container, when it ran


@dataclass(frozen=True, slots=True)
class Link:
    source: str  # the linking container
    target: str  # a container of the linked service
    alias: str
    conventions: tuple[str, ...]  # those that gave its variables


@dataclass(frozen=True, slots=True)
class Port:
    container: str
    host: str  # "0.0.0.0:8080", "127.0.0.1:9000-9001"
    target: str  # "80/tcp"


@dataclass(frozen=True, slots=True)
class Topology:
    stack: str
    networks: tuple[Network, ...]
    containers: tuple[Container, ...]
    links: tuple[Link, ...]
    ports: tuple[Port, ...]


def condition(status: str, health: str | None) -> Condition:
    if status in ("exited", "failed", "created"):
        return "stopped"
    if status == "restarting":
        return "restarting"
    return health if health is not None else "running"


def topology(state: StackState) -> Topology:
    plan = state.plan
    states = {c.name: c for c in state.containers}
    networks = tuple(
        Network(n.key, str(n.subnet), n.internal,
                f"{n.owner[0]}/{n.owner[1]}" if n.owner is not None else None,
                n.overlay is not None)
        for n in plan.networks)
    containers = []
    links = []
    ports = []
    for c in plan.containers:
        now = states.get(c.name)
        containers.append(Container(
            c.name, c.service,
            condition(now.status if now else "created", now.health if now else None),
            now.restarts if now else 0,
            tuple((i.network, str(i.address)) for i in c.interfaces),
            now.exit_code if now and now.status in ("exited", "failed") else None))
        for alias, service in c.links:
            conventions = tuple(sorted({conv for _, conv, a in c.env_sources if a == alias}))
            links += [Link(c.name, peer.name, alias, conventions)
                      for peer in plan.of_service(service)]
        for p in c.ports:
            if not p.published or p.host_start is None:
                continue
            host_end = p.host_end if p.host_end is not None else p.host_start
            span = str(p.host_start) if host_end == p.host_start else f"{p.host_start}-{host_end}"
            inner = str(p.start) if p.end == p.start else f"{p.start}-{p.end}"
            ports.append(Port(c.name, f"{p.host_ip or '0.0.0.0'}:{span}",
                              f"{inner}/{p.protocol}"))
    return Topology(plan.stack, networks, tuple(containers), tuple(links), tuple(ports))
