"""The validated stack: what a stack file means once `linkd.spec.stack_file` has checked it.

Everything here is a frozen dataclass over plain values, so a `Stack` can be compared,
hashed, encoded and handed to the planner without defensive copies. `linkd.spec.stack_file` is the
only producer; nothing here validates again.

Times are float seconds. Ports are `PortSpec` ranges (a single port has start == end).
Order is kept wherever the user's order means something: services and networks in file
order, environment in the order it was written (env_file first, then `environment`), a
service's networks in the order that gives it `eth0`, `eth1`, ...
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal

from linkd.core.placement import Constraint
from linkd.core.seccomp_profile import SeccompProfile

Protocol = Literal["tcp", "udp", "sctp"]
RestartMode = Literal["no", "always", "on-failure", "unless-stopped"]
DependsCondition = Literal[
    "service_started", "service_healthy", "service_completed_successfully"
]


@dataclass(frozen=True, slots=True)
class PortSpec:
    """One entry of `ports:` or `expose:`; a range when `end > start`."""

    start: int
    end: int
    protocol: Protocol = "tcp"
    host_ip: str | None = None
    host_start: int | None = None  # None: not published (expose) or a random host port
    host_end: int | None = None
    published: bool = False  # True for `ports:`, False for `expose:`
    name: str | None = None

    def numbers(self) -> range:
        return range(self.start, self.end + 1)


@dataclass(frozen=True, slots=True)
class Healthcheck:
    """Compose `healthcheck`; `test` is the argv to run, () when disabled (NONE)."""

    test: tuple[str, ...]
    interval: float = 30.0
    timeout: float = 30.0
    retries: int = 3
    start_period: float = 0.0
    start_interval: float = 5.0
    disabled: bool = False


@dataclass(frozen=True, slots=True)
class Dependency:
    service: str
    condition: DependsCondition = "service_started"
    required: bool = True
    restart: bool = False


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    mode: RestartMode = "no"
    max_retries: int | None = None  # only for on-failure[:N]


@dataclass(frozen=True, slots=True)
class Link:
    """`links: [svc]` or `[svc:alias]`; alias == service when none was given."""

    service: str
    alias: str


@dataclass(frozen=True, slots=True)
class Attachment:
    """A service's membership of one network (`services.X.networks`)."""

    network: str
    aliases: tuple[str, ...] = ()
    ipv4_address: ipaddress.IPv4Address | None = None
    ipv6_address: ipaddress.IPv6Address | None = None
    mac_address: str | None = None  # its interface's, "02:42:ac:11:00:02" (lower case)


@dataclass(frozen=True, slots=True)
class NetSettings:
    """A service's `dns`, `dns_search`, `dns_opt`, `sysctls`, `domainname` and
    `mac_address` (linkd.spec.net_keys)."""

    dns: tuple[str, ...] = ()  # servers its names outside linkd's zone are forwarded to
    dns_search: tuple[str, ...] = ()  # resolv.conf's search line
    dns_opt: tuple[str, ...] = ()  # resolv.conf's options
    sysctls: tuple[tuple[str, str], ...] = ()  # namespaced ones only, set in its namespaces
    domainname: str | None = None  # its UTS domain name
    mac_address: str | None = None  # its first network's interface's


@dataclass(frozen=True, slots=True)
class LinkSettings:
    """`x-linkd: links: ALIAS:` of a service: how one of its links is presented."""

    alias: str
    conventions: tuple[str, ...] | None = None  # None: the service's, else the stack's
    env: tuple[str, ...] = ()  # names or patterns the peer may pass as <ALIAS>_ENV_*
    urls: tuple[tuple[str, str], ...] = ()  # variable -> template (the urls convention)


@dataclass(frozen=True, slots=True)
class Limits:
    """`mem_limit`, `cpus`, `pids_limit` or `deploy.resources.limits`; None: no limit."""

    memory: int | None = None  # bytes
    cpus: float | None = None
    pids: int | None = None
    # `ulimits`: (Docker's name, soft, hard), -1 for unlimited; set by the shim (or runc)
    # on the container's command, as setrlimit does
    ulimits: tuple[tuple[str, int, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Device:
    """One entry of `devices:`: the host's device node `source`, shown at `target`."""

    source: str
    target: str
    permissions: str = "rwm"  # what the devices cgroup allows: read, write, mknod


@dataclass(frozen=True, slots=True)
class Security:
    """`privileged`, `cap_add`, `cap_drop`, `security_opt`, `read_only` and `devices` of a
    service: how it departs from the default confinement (`linkd.core.confinement`)."""

    privileged: bool = False
    cap_add: tuple[str, ...] = ()  # CAP_* names, or "ALL"
    cap_drop: tuple[str, ...] = ()
    no_new_privileges: bool | None = None  # None: on, unless privileged
    seccomp: Literal["default", "unconfined", "file"] = "default"
    seccomp_file: str | None = None  # as written in security_opt (for `linkd config`)
    seccomp_profile: SeccompProfile | None = None  # the file's profile, parsed
    system_paths: bool = True  # False: `systempaths=unconfined` (no masked/read-only paths)
    read_only: bool = False  # the image's root filesystem is mounted read-only
    devices: tuple[Device, ...] = ()


@dataclass(frozen=True, slots=True)
class Build:
    """Compose's `build:` of a service (linkd.spec.build), built by buildah
    (linkd.runtime.images.build) into the store under the service's `image`."""

    context: str = "."  # absolute: a relative one started in the stack file's directory
    dockerfile: str | None = None  # relative to the context; None: Dockerfile/Containerfile
    dockerfile_inline: str | None = None
    args: tuple[tuple[str, str], ...] = ()
    target: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    tags: tuple[str, ...] = ()  # more names for the image in the store
    extra_hosts: tuple[tuple[str, str], ...] = ()
    shm_size: int | None = None  # bytes
    ulimits: tuple[tuple[str, int, int], ...] = ()
    no_network: bool = False  # `network: none`; else RUN steps use the host's network
    no_cache: bool = False
    pull: bool = False
    always: bool = False  # `pull_policy: build`: built at every `up`, not only when missing


DEFAULT_CONVENTIONS = ("linkd",)


MountKind = Literal["bind", "volume", "tmpfs"]


@dataclass(frozen=True, slots=True)
class Mount:
    """One entry of a service's `volumes:` (or one its `volumes_from:` or its image's
    VOLUME gave it), targets absolute and normalized.

    - bind: `source` is an absolute host path (a relative one started in the stack
      file's directory); `create_host_path` makes a missing directory there (the short
      form's rule);
    - volume: `source` is the volume's key in the top-level `volumes:` (the stack's
      `Volume`), or "" for an anonymous volume, which belongs to the container named by
      `owner` ("": the one mounting it; `volumes_from` shares another's);
    - tmpfs: `data` is the tmpfs options ("size=..,mode=..").
    """

    kind: MountKind
    target: str
    source: str = ""
    read_only: bool = False
    create_host_path: bool = False
    nocopy: bool = False  # volume: not seeded with what the image has at `target`
    owner: str = ""
    data: str = ""


@dataclass(frozen=True, slots=True)
class FileMount:
    """A secret or config given to a container as a read-only file at `target`: a host
    file's (`source`, an absolute path), or `content` (an `environment:` variable's value
    or a config's `content:`). With `uid`, `gid` or `mode` the container gets a copy with
    them; otherwise a file source is bound as it is, and edits show through."""

    target: str
    source: str = ""
    content: str | None = None
    uid: int | None = None
    gid: int | None = None
    mode: int | None = None
    secret: bool = False  # its content is not shown by `linkd inspect`
    unset: str = ""  # its `environment:` variable, which was not set: `up` refuses it


@dataclass(frozen=True, slots=True)
class Volume:
    """One entry of the top-level `volumes:`: `key` as the file names it, `name` as it
    is stored (Compose's `<stack>_<key>`, or `name:`, or an external volume's own)."""

    key: str
    name: str
    external: bool = False
    device: str | None = None  # driver_opts {type: none, o: bind, device: PATH}
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    command: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    image: str | None = None
    environment: tuple[tuple[str, str], ...] = ()
    working_dir: str | None = None
    user: str | None = None
    group_add: tuple[str, ...] = ()  # supplementary groups: names (of the image's) or gids
    platform: str | None = None  # "os/arch[/variant]": the image must be of it
    # deploy.placement.constraints: where a cluster may run it (linkd.core.placement);
    # a single daemon runs every service itself
    placement: tuple[Constraint, ...] = ()
    # Compose's pull_policy for an image from a registry: "always" (pulled at every
    # `up`), "never" (the store's or an error), "daily", "weekly", "every_<duration>"
    # (pulled again once its last pull is that old), "" (pulled when missing)
    pull_policy: str = ""
    hostname: str | None = None
    container_name: str | None = None  # Compose's: its one container's name
    # Compose's extra_hosts: (name, address or "host-gateway"), in the file's order
    extra_hosts: tuple[tuple[str, str], ...] = ()
    labels: tuple[tuple[str, str], ...] = ()  # Compose's: metadata, shown and filtered
    # Compose's tmpfs: (target, mount flags, tmpfs data "size=..,mode=.."), in file order
    tmpfs: tuple[tuple[str, tuple[str, ...], str], ...] = ()
    volumes: tuple[Mount, ...] = ()  # `volumes:` and `volumes_from:`, in file order
    files: tuple[FileMount, ...] = ()  # `secrets:` and `configs:`
    expose: tuple[PortSpec, ...] = ()
    ports: tuple[PortSpec, ...] = ()
    links: tuple[Link, ...] = ()
    networks: tuple[Attachment, ...] = ()
    depends_on: tuple[Dependency, ...] = ()
    healthcheck: Healthcheck | None = None
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    replicas: int = 1
    stop_signal: str = "SIGTERM"
    stop_grace_period: float = 10.0
    conventions: tuple[str, ...] | None = None  # x-linkd; None: the stack's
    link_settings: tuple[LinkSettings, ...] = ()  # x-linkd: links:
    limits: Limits = field(default_factory=Limits)  # cgroups (linkd.runtime.kernel.cgroups)
    runtime: str | None = None  # x-linkd: runtime: runc | linkd; None: $LINKD_RUNTIME
    security: Security = field(default_factory=Security)  # linkd.core.confinement
    build: Build | None = None  # `build:`; `image` is the name it is built under
    # Compose's network_mode other than `none` (which is `networks=()`): "host",
    # "service:X" or "container:NAME", whose network namespace it shares (no networks)
    network_mode: str | None = None
    net: NetSettings = field(default_factory=NetSettings)

    def container(self, replica: int) -> str:
        """The name of its container `replica`: `container_name`, else `<service>-<n>`."""
        return self.container_name or f"{self.name}-{replica}"

    def argv(self) -> tuple[str, ...]:
        """The process to run: entrypoint followed by command, as Compose joins them."""
        return (self.entrypoint or ()) + (self.command or ())


@dataclass(frozen=True, slots=True)
class Network:
    name: str
    # overlay: spans the nodes of a cluster daemon (linkd.core.overlay); elsewhere, and
    # for `linkd config`, a bridge on this host like the other
    driver: Literal["bridge", "overlay"] = "bridge"
    internal: bool = False
    subnet: ipaddress.IPv4Network | None = None  # None: linkd picks one from its pool
    gateway: ipaddress.IPv4Address | None = None  # None: the subnet's first address
    enable_ipv6: bool = False
    subnet6: ipaddress.IPv6Network | None = None
    gateway6: ipaddress.IPv6Address | None = None
    # Compose's `name:`: the network's own name (None: `<stack>_<name>`); with
    # `external`, the name of another stack's network this one joins (None: `name`)
    real_name: str | None = None
    external: bool = False  # another stack's network (linkd.core.shared_networks)


@dataclass(frozen=True, slots=True)
class Upstream:
    """A DNS server linkd forwards names outside its zone to, from the host namespace."""

    host: str  # an IP address; IPv6 may carry a zone index (fe80::1%eth0)
    port: int = 53


DEFAULT_DNS_DOMAIN = "linkd"


@dataclass(frozen=True, slots=True)
class HostAccess:
    """One entry of `x-linkd: host:`: host ports the stack's containers may reach."""

    start: int
    end: int
    protocol: Protocol = "tcp"
    address: str | None = None  # None: any address of the host

    def text(self) -> str:
        ports = str(self.start) if self.start == self.end else f"{self.start}-{self.end}"
        where = f"{self.address}:" if self.address else ""
        return f"{where}{ports}/{self.protocol}"


@dataclass(frozen=True, slots=True)
class DnsSettings:
    """`x-linkd: dns:` of a stack file."""

    domain: str = DEFAULT_DNS_DOMAIN  # lower-case, no trailing dot
    upstreams: tuple[Upstream, ...] | None = None  # None: the host's resolv.conf


@dataclass(frozen=True, slots=True)
class Stack:
    name: str
    services: tuple[Service, ...]
    networks: tuple[Network, ...]
    warnings: tuple[str, ...] = ()
    dns: DnsSettings = field(default_factory=DnsSettings)
    conventions: tuple[str, ...] = DEFAULT_CONVENTIONS  # x-linkd: conventions:
    host_access: tuple[HostAccess, ...] = ()  # x-linkd: host:
    volumes: tuple[Volume, ...] = ()  # the top-level `volumes:`

    def volume(self, key: str) -> Volume:
        for volume in self.volumes:
            if volume.key == key:
                return volume
        raise KeyError(key)

    def service(self, name: str) -> Service:
        for service in self.services:
            if service.name == name:
                return service
        raise KeyError(name)

    def network(self, name: str) -> Network:
        for network in self.networks:
            if network.name == name:
                return network
        raise KeyError(name)
