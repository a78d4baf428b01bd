"""From a validated stack to concrete containers, networks and the order to start them.

`realize(stack, subnets)` is the desired state: every container with its namespace,
interfaces, addresses and environment, every network with its bridge. It is a pure
function of the stack and the subnets the runtime picked, so the same stack file always
gives the same names and addresses. A container's hosts file is derived from the plan
when it is written (`linkd.core.hosts`), and its DNS view likewise (`linkd.dns.zone`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any, Literal

from linkd.conventions.render import Convention, LinkTarget, combine, render
from linkd.core import ipam, names
from linkd.core.model import (
    Dependency,
    DnsSettings,
    FileMount,
    Healthcheck,
    HostAccess,
    Limits,
    LinkSettings,
    Mount,
    NetSettings,
    PortSpec,
    RestartPolicy,
    Security,
    Service,
    Stack,
    Volume,
)
from linkd.errors import ConventionError, SpecError

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HOST_GATEWAY = "host-gateway"  # extra_hosts: the host, as Docker spells it


@dataclass(frozen=True, slots=True)
class OverlayPlan:
    """What makes a network span the nodes of a cluster (linkd.core.overlay), as this
    node runs it: the cluster's numbers for it and this node's side of the tunnel."""

    id: str  # its cluster-wide id, `<owner stack>/<key>` (linkd.core.overlay.overlay_id)
    vni: int
    local: IPv4Address  # this node's underlay address: the VXLAN device's source
    mtu: int  # of the VXLAN device, the bridge and every container's veth on it
    vxlan: str  # the VXLAN device, a port of the network's bridge (lkx-...)


@dataclass(frozen=True, slots=True)
class NetworkPlan:
    key: str  # the name in the stack file
    name: str  # <stack>_<key>, as Compose names networks
    bridge: str
    bridge_mac: str
    subnet: IPv4Network
    gateway: IPv4Address
    internal: bool
    subnet6: IPv6Network | None = None
    gateway6: IPv6Address | None = None
    # An external network: (stack, key) of the network it joins, whose bridge and subnet
    # these are (linkd.core.shared_networks); None: the stack's own
    owner: tuple[str, str] | None = None
    overlay: OverlayPlan | None = None  # None: a bridge on this host alone

    @property
    def mtu(self) -> int | None:
        """Its devices' MTU; None: the kernel's default."""
        return self.overlay.mtu if self.overlay is not None else None


@dataclass(frozen=True, slots=True)
class InterfacePlan:
    network: str  # NetworkPlan.key
    ifname: str  # inside the container: eth0, eth1, ...
    host_ifname: str  # host end of the veth, enslaved to the bridge
    bridge: str
    address: IPv4Address
    prefixlen: int
    gateway: IPv4Address
    address6: IPv6Address | None = None
    prefixlen6: int = 64
    gateway6: IPv6Address | None = None
    default_route: bool = False  # the first non-internal network carries it
    aliases: tuple[str, ...] = ()  # the service's network aliases on this network
    mac_address: str | None = None  # its end's, inside; None: the kernel picks one
    mtu: int | None = None  # both ends' (an overlay network's); None: the kernel's default


@dataclass(frozen=True, slots=True)
class ContainerPlan:
    name: str  # <service>-<replica>
    service: str
    replica: int
    netns: str
    hostname: str
    interfaces: tuple[InterfacePlan, ...]
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    working_dir: str
    user: str | None
    restart: RestartPolicy
    stop_signal: str
    stop_grace_period: float
    healthcheck: Healthcheck | None
    image: str | None
    depends_on: tuple[Dependency, ...] = ()
    links: tuple[tuple[str, str], ...] = ()  # (alias, service): names for this one only
    ports: tuple[PortSpec, ...] = ()  # exposed and published, container side
    # (variable, convention, link alias) for every variable a convention gave, in order
    env_sources: tuple[tuple[str, str, str], ...] = ()
    extra_hosts: tuple[str, ...] = ()  # hosts-file lines the conventions asked for
    # Compose's extra_hosts, "host-gateway" resolved: (name, address), for the hosts
    # file and for linkd's DNS, which answers them to this container only
    added_hosts: tuple[tuple[str, str], ...] = ()
    labels: tuple[tuple[str, str], ...] = ()  # the service's, for `ps --filter label=`
    tmpfs: tuple[tuple[str, tuple[str, ...], str], ...] = ()  # the service's tmpfs mounts
    # `volumes:`, sources settled: a bind's host path, a volume's stored name (one of
    # the plan's `volumes`), sorted by target so a mount inside another goes after it
    mounts: tuple[Mount, ...] = ()
    files: tuple[FileMount, ...] = ()  # `secrets:` and `configs:`
    group_add: tuple[str, ...] = ()  # supplementary groups, beside the user's own
    limits: Limits = field(default_factory=Limits)  # memory, CPU and PID limits (cgroups)
    runtime: str | None = None  # what runs an image: "runc", "linkd", None: the default
    security: Security = field(default_factory=Security)  # departures from confinement
    # Compose's network_mode: "" a network namespace of its own (`netns`); "container"
    # another container's, shared (`netns` is that one's: service:X, container:NAME);
    # "host" the host's (`netns` is "")
    network_mode: Literal["", "container", "host"] = ""
    net: NetSettings = field(default_factory=NetSettings)  # dns, sysctls, domainname

    def owns_netns(self) -> bool:
        """Whether `netns` is its own: made, wired and served a resolver for it."""
        return self.network_mode == ""


@dataclass(frozen=True, slots=True)
class StackPlan:
    stack: str
    networks: tuple[NetworkPlan, ...]
    containers: tuple[ContainerPlan, ...]
    start_waves: tuple[tuple[str, ...], ...]  # services; each wave needs only earlier ones
    dns: DnsSettings = field(default_factory=DnsSettings)
    host_access: tuple[HostAccess, ...] = ()  # host ports its containers may reach
    # every volume its containers mount: the stack file's, and the anonymous ones (key "")
    volumes: tuple[Volume, ...] = ()

    def container(self, name: str) -> ContainerPlan:
        for container in self.containers:
            if container.name == name:
                return container
        raise KeyError(name)

    def of_service(self, service: str) -> tuple[ContainerPlan, ...]:
        return tuple(c for c in self.containers if c.service == service)

    def without(self, gone: Iterable[str]) -> StackPlan:
        """The plan less the named containers: what DNS serves once they have stopped."""
        drop = set(gone)
        if not drop:
            return self  # the same object: a zone skips a plan it has already (rezone)
        return replace(self, containers=tuple(c for c in self.containers if c.name not in drop))


def realize(
    stack: Stack,
    subnets: Mapping[str, IPv4Network],
    *,
    workdir: str = "/",
    conventions: Mapping[str, Convention] | None = None,
    lease: ipam.Lease | None = None,
    joined: Mapping[str, NetworkPlan] | None = None,
    held: Mapping[str, Collection[IPv4Address | IPv6Address]] | None = None,
    foreign: Mapping[str, str] | None = None,
    assigned: Mapping[tuple[str, str], IPv4Address] | None = None,
) -> StackPlan:
    """The desired state of `stack`, given the IPv4 subnet of each of its networks.

    `workdir` is where a container runs when its service names no `working_dir`: for
    commands from the host's filesystem, the stack file's directory, so that a command
    like `python3 api.py` finds its script as it would in a shell there.

    `conventions` are every convention the stack's links use, built-in ones by name and
    files by path, read by the caller (`linkd.runtime.stack.conventions.load_conventions`):
    planning reads no files.
    `lease` (the stack's last addresses) keeps containers at the addresses they had.
    `joined`: each external network's plan, the owner's as this stack joins it
    (`linkd.core.shared_networks.join`); one not given is planned like one of the stack's
    own, on `subnets` (a dry plan: `linkd config` does not look for the owner). `held`:
    by network, the addresses other stacks' containers have there (a network shared with
    them), which this stack's avoid. `foreign`: other stacks' containers by name, to
    their namespaces, for `network_mode: container:NAME` naming none of this stack's
    (None: a dry plan, which does not look). `assigned`: by (container, network key), the
    IPv4 address an overlay network's cluster-wide registry gave it (linkd.core.cluster_ipam),
    which it takes as if it were static.
    """
    joined = joined or {}
    networks = tuple(
        joined[n.name] if n.name in joined else _network_plan(stack, n.name, subnets[n.name])
        for n in stack.networks
    )
    by_key = {n.key: n for n in networks}
    addresses = _addresses(stack, by_key, lease or ipam.Lease(stack.name), held or {},
                           assigned or {})
    _check_links(stack)
    containers: list[ContainerPlan] = []
    for service in stack.services:
        for replica in range(1, service.replicas + 1):
            name = service.container(replica)
            interfaces = _interfaces(stack, service, name, by_key, addresses)
            containers.append(
                _container_plan(stack, service, replica, name, interfaces, workdir)
            )
    containers = _shared_namespaces(stack, containers, foreign)
    resolve = _resolver(conventions or {})
    linked = tuple(_with_links(stack, containers, c, resolve) for c in containers)
    return StackPlan(
        stack.name, networks, linked, start_waves(stack), stack.dns, stack.host_access,
        _volumes_used(stack, linked),
    )


def hide_secrets(plain: Any) -> Any:
    """A plan (or state, or container plan) as `to_plain` gives it, with the content of
    every secret replaced: what `linkd inspect` and the API show."""
    if isinstance(plain, dict):
        if plain.get("secret") is True and plain.get("content") is not None:
            return {**plain, "content": "(hidden: a secret)"}
        return {k: hide_secrets(v) for k, v in plain.items()}
    if isinstance(plain, list):
        return [hide_secrets(v) for v in plain]
    return plain


def anonymous_volume(stack: str, container: str, target: str) -> str:
    """An anonymous volume's name: 64 hex digits as Docker's, from what it belongs to, so
    the container finds it again after a restart, a crash of linkd, or `down` and `up`."""
    key = f"linkd-anonymous\0{stack}\0{container}\0{target}".encode()
    return hashlib.sha256(key).hexdigest()


def _mounts(stack: Stack, service: Service, container: str) -> tuple[Mount, ...]:
    """The service's mounts with each volume's stored name as its source, by target."""
    mounts = []
    for mount in service.volumes:
        if mount.kind == "volume":
            name = (stack.volume(mount.source).name if mount.source
                    else anonymous_volume(stack.name, mount.owner or container, mount.target))
            mount = replace(mount, source=name, owner="")
        mounts.append(mount)
    return tuple(sorted(mounts, key=lambda m: (m.target.count("/"), m.target)))


def _volumes_used(stack: Stack, containers: Sequence[ContainerPlan]) -> tuple[Volume, ...]:
    """The declared volumes (Compose makes each, used or not), then the anonymous ones."""
    used = {v.name: v for v in stack.volumes}
    for container in containers:
        for mount in container.mounts:
            if mount.kind == "volume" and mount.source not in used:
                used[mount.source] = Volume("", mount.source)
    return tuple(used.values())


def _network_plan(stack: Stack, key: str, subnet: IPv4Network) -> NetworkPlan:
    network = stack.network(key)
    gateway = network.gateway or IPv4Address(ipam.gateway_of(subnet))
    subnet6 = gateway6 = None
    if network.enable_ipv6:
        subnet6 = network.subnet6 or ipam.ula_subnet(stack.name, key)
        gateway6 = network.gateway6 or IPv6Address(ipam.gateway_of(subnet6))
    return NetworkPlan(
        key=key,
        name=network.real_name or f"{stack.name}_{key}",
        bridge=names.bridge_name(stack.name, key),
        bridge_mac=names.bridge_mac(stack.name, key),
        subnet=subnet,
        gateway=gateway,
        internal=network.internal,
        subnet6=subnet6,
        gateway6=gateway6,
    )


Addresses = dict[tuple[str, str], tuple[IPv4Address, IPv6Address | None]]


def _addresses(
    stack: Stack,
    networks: Mapping[str, NetworkPlan],
    lease: ipam.Lease,
    held: Mapping[str, Collection[IPv4Address | IPv6Address]],
    assigned: Mapping[tuple[str, str], IPv4Address],
) -> Addresses:
    """(container, network) -> addresses: static ones first (and those the cluster
    `assigned`), then leased, then in file order; none that another stack's container has
    (`held`)."""
    result: Addresses = {}
    _check_joined_statics(stack, networks)
    for key, net in networks.items():
        wanted4: list[tuple[str, IPv4Address | IPv6Address | None]] = []
        wanted6: list[tuple[str, IPv4Address | IPv6Address | None]] = []
        for service in stack.services:
            for attachment in service.networks:
                if attachment.network != key:
                    continue
                for replica in range(1, service.replicas + 1):
                    owner = service.container(replica)
                    # A static address can only belong to one replica.
                    static4 = assigned.get((owner, key)) or (
                        attachment.ipv4_address if replica == 1 else None)
                    static6 = attachment.ipv6_address if replica == 1 else None
                    wanted4.append((owner, static4))
                    wanted6.append((owner, static6))
        others = set(held.get(key, ()))
        got4 = ipam.assign(
            net.subnet, {net.gateway, *others}, wanted4, lease.addresses_on(key, 4))
        got6 = (
            ipam.assign(net.subnet6, {net.gateway6, *others}, wanted6,
                        lease.addresses_on(key, 6))
            if net.subnet6 is not None and net.gateway6 is not None
            else {}
        )
        for owner, address in got4.items():
            six = got6.get(owner)
            result[(owner, key)] = (
                IPv4Address(address),
                IPv6Address(six) if six is not None else None,
            )
    return result


def _check_joined_statics(stack: Stack, networks: Mapping[str, NetworkPlan]) -> None:
    """A static address on an external network lies in the owner's subnet: only known now
    (the parser checks the others against the subnets the file declares)."""
    problems: list[tuple[str, int | None, str]] = []
    for service in stack.services:
        for a in service.networks:
            net = networks[a.network]
            if net.owner is None:
                continue
            for address, subnet in ((a.ipv4_address, net.subnet), (a.ipv6_address, net.subnet6)):
                if address is None:
                    continue
                if subnet is None or address not in subnet or address in (
                    subnet.network_address, subnet.broadcast_address, net.gateway, net.gateway6
                ):
                    where = f"subnet {subnet}" if subnet is not None else "no such subnet"
                    problems.append((
                        f"services.{service.name}.networks.{a.network}", None,
                        f"{address} is not a free address of network {net.name} ({where}, "
                        f"gateway {net.gateway}, made by stack {net.owner[0]}); pick "
                        "another, or leave the address to linkd",
                    ))
    if problems:
        raise SpecError(problems)


def _interfaces(
    stack: Stack,
    service: Service,
    name: str,
    networks: Mapping[str, NetworkPlan],
    addresses: Addresses,
) -> tuple[InterfacePlan, ...]:
    interfaces: list[InterfacePlan] = []
    routed = False
    for index, attachment in enumerate(service.networks):
        net = networks[attachment.network]
        address, address6 = addresses[(name, net.key)]
        default_route = not net.internal and not routed
        routed = routed or default_route
        interfaces.append(
            InterfacePlan(
                network=net.key,
                ifname=f"eth{index}",
                host_ifname=names.host_veth_name(stack.name, name, net.key),
                bridge=net.bridge,
                address=address,
                prefixlen=net.subnet.prefixlen,
                gateway=net.gateway,
                address6=address6,
                prefixlen6=net.subnet6.prefixlen if net.subnet6 else 64,
                gateway6=net.gateway6,
                default_route=default_route,
                aliases=attachment.aliases,
                # The service's mac_address is its first network's (Docker: the one its
                # network mode names).
                mac_address=attachment.mac_address or (
                    service.net.mac_address if index == 0 else None) or (
                    names.address_mac(address) if net.overlay is not None else None),
                mtu=net.mtu,
            )
        )
    return tuple(interfaces)


def _container_plan(
    stack: Stack,
    service: Service,
    replica: int,
    name: str,
    interfaces: tuple[InterfacePlan, ...],
    workdir: str,
) -> ContainerPlan:
    hostname = service.hostname or name
    # host-gateway: the host's side of the container's first network (Docker: the
    # host's address); a container with loopback only has none, and gets no entry.
    gateway = str(interfaces[0].gateway) if interfaces else None
    added: list[tuple[str, str]] = []
    for host, address in service.extra_hosts:
        if address != HOST_GATEWAY:
            added.append((host, address))
        elif gateway is not None:
            added.append((host, gateway))
    base = {"PATH": DEFAULT_PATH, "HOSTNAME": hostname, "HOME": "/root"}
    env = dict(base)
    env.update(dict(service.environment))
    return ContainerPlan(
        name=name,
        service=service.name,
        replica=replica,
        netns=names.netns_name(stack.name, name),
        hostname=hostname,
        added_hosts=tuple(added),
        labels=service.labels,
        tmpfs=service.tmpfs,
        mounts=_mounts(stack, service, name),
        files=service.files,
        interfaces=interfaces,
        argv=service.argv(),
        env=tuple(env.items()),
        working_dir=service.working_dir or workdir,
        user=service.user,
        group_add=service.group_add,
        restart=service.restart,
        stop_signal=service.stop_signal,
        stop_grace_period=service.stop_grace_period,
        healthcheck=service.healthcheck,
        image=service.image,
        depends_on=service.depends_on,
        links=tuple((link.alias, link.service) for link in service.links),
        ports=service.expose + service.ports,
        limits=service.limits,
        runtime=service.runtime,
        security=service.security,
        net=service.net,
    )


def _shared_namespaces(
    stack: Stack, containers: list[ContainerPlan], foreign: Mapping[str, str] | None
) -> list[ContainerPlan]:
    """`network_mode` applied: a container sharing another's namespace takes that one's
    `netns` and hostname (the one it shares, followed to the container that owns it); on
    the host's, it has none. Ports it would publish on the host's network are dropped
    (Docker discards them too; the parser warned)."""
    by_name = {c.name: c for c in containers}
    targets: dict[str, str] = {}
    for service in stack.services:
        kind, _, target = (service.network_mode or "").partition(":")
        for replica in range(1, service.replicas + 1):
            name = service.container(replica)
            if kind == "service":
                targets[name] = stack.service(target).container(1)
            elif kind == "container":
                targets[name] = target
            elif kind == "host":
                by_name[name] = replace(
                    by_name[name], network_mode="host", netns="",
                    ports=tuple(p for p in by_name[name].ports if not p.published))
    mode: Literal["container", "host"]
    for name in targets:
        seen = [name]
        target = targets[name]
        while target in targets and target not in seen:  # service:X where X shares too
            seen.append(target)
            target = targets[target]
        owner = by_name.get(target)
        if owner is not None and owner.network_mode == "host":
            netns, hostname, mode = "", owner.hostname, "host"
        elif owner is not None and target not in targets:
            netns, hostname, mode = owner.netns, owner.hostname, "container"
        elif target in targets or (foreign is not None and target not in foreign):
            raise SpecError([(f"services.{by_name[name].service}.network_mode", None,
                              f"no container {target} to share a network namespace with, "
                              "in this stack or another stack that is up")])
        else:  # another stack's container, or (a dry plan) as if it were
            netns = (foreign or {}).get(target) or names.netns_name(stack.name, target)
            hostname, mode = by_name[name].hostname, "container"
        before = by_name[name].hostname
        env = tuple((k, hostname if k == "HOSTNAME" and v == before else v)
                    for k, v in by_name[name].env)
        by_name[name] = replace(by_name[name], network_mode=mode, netns=netns,
                                hostname=hostname, env=env)
    return [by_name[c.name] for c in containers]


def _check_links(stack: Stack) -> None:
    problems: list[tuple[str, int | None, str]] = []
    for service in stack.services:
        mine = {a.network for a in service.networks}
        for index, link in enumerate(service.links):
            theirs = {a.network for a in stack.service(link.service).networks}
            if not mine & theirs:
                problems.append(
                    (
                        f"services.{service.name}.links[{index}]",
                        None,
                        f"{service.name} and {link.service} share no network; "
                        f"put both on one network so the link can reach {link.service}",
                    )
                )
    if problems:
        raise SpecError(problems)


def lease_of(plan: StackPlan) -> ipam.Lease:
    """What `plan` holds, to be given back next time."""
    return ipam.Lease(
        plan.stack,
        # An external network's subnet is its owner's to hold, not this stack's.
        tuple((n.key, n.subnet) for n in plan.networks if n.owner is None),
        tuple(
            (i.network, c.name, i.address, i.address6)
            for c in plan.containers
            for i in c.interfaces
        ),
    )


def _resolver(loaded: Mapping[str, Convention]) -> Callable[[str], Convention]:
    def resolve(ref: str) -> Convention:
        if ref in loaded:
            return loaded[ref]
        kind = "file" if ref.endswith((".yaml", ".yml")) else "built-in"
        raise ConventionError(
            [("x-linkd", None, f"convention {kind} {ref} was not loaded before planning")]
        )

    return resolve


def _with_links(
    stack: Stack,
    containers: Sequence[ContainerPlan],
    me: ContainerPlan,
    resolve: Callable[[str], Convention],
) -> ContainerPlan:
    """`me` with the variables and hosts lines its links' conventions give it.

    A link reaches the peer service's first replica (there is no virtual IP to stand for
    all of them; DNS has every replica) at its address on the first network the two
    share, in `me`'s interface order, the address the hosts file gives too.
    """
    service = stack.service(me.service)
    if not service.links:
        return me
    settings = {x.alias: x for x in service.link_settings}
    groups: dict[str, list[LinkTarget]] = {}
    mine = [i.network for i in me.interfaces]
    for link in service.links:
        peer = next(c for c in containers if c.service == link.service)
        shared = [i for i in peer.interfaces if i.network in mine]
        if not shared:
            continue  # refused by _check_links; a lo-only linker shares nothing
        theirs = min(shared, key=lambda i: mine.index(i.network))
        peer_service = stack.service(link.service)
        chosen = settings.get(link.alias, LinkSettings(link.alias))
        names = chosen.conventions or service.conventions or stack.conventions
        if chosen.urls and "urls" not in names:
            names = (*names, "urls")
        target = LinkTarget(
            alias=link.alias,
            service=link.service,
            peer=peer.name,
            addr=theirs.address,
            addr6=theirs.address6,
            hostname=peer.hostname,
            ports=peer_service.expose + peer_service.ports,
            env=peer_service.environment,
            env_allow=chosen.env,
            templates=chosen.urls,
        )
        for name in names:
            groups.setdefault(name, []).append(target)
    rendered = combine(*(render(resolve(n), me.name, targets) for n, targets in groups.items()))
    explicit = dict(me.env)
    env = {**explicit, **{v.name: v.value for v in rendered.variables if v.name not in explicit}}
    return replace(
        me,
        env=tuple(env.items()),
        env_sources=tuple(
            (v.name, v.convention, v.alias) for v in rendered.variables if v.name not in explicit
        ),
        extra_hosts=rendered.hosts,
    )


def start_waves(stack: Stack) -> tuple[tuple[str, ...], ...]:
    """Services grouped so that each group depends only on earlier groups.

    `depends_on` and `links` both order start-up, as in Compose. The spec parser has
    already rejected cycles.
    """
    needs = {
        s.name: {d.service for d in s.depends_on} | {link.service for link in s.links}
        for s in stack.services
    }
    done: set[str] = set()
    waves: list[tuple[str, ...]] = []
    order = [s.name for s in stack.services]
    while len(done) < len(order):
        wave = tuple(n for n in order if n not in done and needs[n] <= done)
        if not wave:  # unreachable after spec validation; fail loudly rather than spin
            raise SpecError([("services", None, "dependency cycle")])
        waves.append(wave)
        done.update(wave)
    return tuple(waves)
