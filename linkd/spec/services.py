"""A stack's `networks:` and `services:` sections, read into the model's `Network`s and
`Service`s (linkd.spec.stack_file reads the document around them).

`ServiceReader` reads the networks first, since a service's attachments are checked
against them, then each service: its command, image, ports, links and dependencies
here, its environment in linkd.spec.environment, and the keys that have a module of
their own (healthcheck, limits, security, `x-linkd`) there. A problem is recorded on
the `Reader` with its path and line, and the reading goes on; `linkd.spec.checks` then
looks across the services (cycles, port clashes).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import shlex
from collections.abc import Callable, Mapping

from linkd.core.model import (
    Dependency,
    DependsCondition,
    Link,
    Network,
    PortSpec,
    RestartPolicy,
    Service,
)
from linkd.core.placement import Constraint, PlacementError, parse_constraint
from linkd.core.plan import HOST_GATEWAY
from linkd.spec import compose_keys
from linkd.spec.build import default_image, pull_policy_of, read_build, read_pull_policy
from linkd.spec.checks import Origins, check_stack, check_subnets
from linkd.spec.environment import Environment
from linkd.spec.health import read_healthcheck
from linkd.spec.limits import KEYS as LIMIT_KEYS
from linkd.spec.limits import read_limits, read_runtime
from linkd.spec.net_keys import KEYS as NET_KEYS
from linkd.spec.net_keys import check_hostname, read_net_settings
from linkd.spec.network_mode import read_network_mode
from linkd.spec.networks import NetworkReader
from linkd.spec.nodes import At, Reader, given
from linkd.spec.secrets import FileReader
from linkd.spec.security import KEYS as SECURITY_KEYS
from linkd.spec.security import read_security
from linkd.spec.values import (
    PORT_HINT,
    Bad,
    check_alias,
    check_port_name,
    check_range_lengths,
    check_service_name,
    parse_env_file,
    parse_expose,
    parse_host_ip,
    parse_platform,
    parse_port,
    parse_port_range,
    parse_protocol,
    parse_restart,
    parse_signal,
    quote,
)
from linkd.spec.volumes import VolumeReader
from linkd.spec.x_linkd import read_service_x_linkd

_CONTAINER_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")  # Docker's rule

_SERVICE_KEYS = (
    "command", "entrypoint", "environment", "env_file", "working_dir", "user", "hostname",
    "expose", "ports", "links", "networks", "depends_on", "healthcheck", "restart", "scale",
    "deploy", "stop_signal", "stop_grace_period", "image", "container_name", "network_mode",
    "init", "extra_hosts", "labels", "profiles", "tmpfs", "volumes", "volumes_from", "secrets",
    "configs", "group_add", "platform", "build", "pull_policy", "label_file", "x-linkd",
    *LIMIT_KEYS, *SECURITY_KEYS, *NET_KEYS,
)  # fmt: skip
_SERVICE_IGNORED = compose_keys.ignored(compose_keys.SERVICE)
_DEPLOY_UNSUPPORTED = (
    "mode", "endpoint_mode", "labels", "restart_policy",
    "rollback_config", "update_config",
)  # fmt: skip
_CONDITIONS: dict[str, DependsCondition] = {
    "service_started": "service_started",
    "service_healthy": "service_healthy",
    "service_completed_successfully": "service_completed_successfully",
}


class ServiceReader:
    """Reads `services:` once `networks:` is known (attachments check against it)."""

    def __init__(
        self, r: Reader, host_env: Mapping[str, str], read_text: Callable[[str], str] | None,
        volumes: VolumeReader | None = None, files: FileReader | None = None,
        project: str = "",
    ) -> None:
        self.r = r
        self.volumes = volumes or VolumeReader(r, "", "/", host_env.get("HOME"))
        self.files = files or FileReader(r, host_env, "/")
        self.project = project  # the stack's name: a built image's default name
        self.env = Environment(r, host_env, read_text)
        self.nets = NetworkReader(r)
        self.names: set[str] = set()
        self.off: set[str] = set()  # services of profiles that are not active

    def networks(self, at: At | None) -> tuple[Network, ...]:
        pairs = self.r.pairs(at) if at is not None else []
        parsed = [self.nets.network(name, child) for name, child in pairs or []]
        done = [p for p in parsed if p is not None]
        check_subnets(self.r, done)
        return tuple(network for network, _ in done)

    def services(self, at: At | None) -> tuple[Service, ...]:
        if at is None or at.is_null:
            self.r.problems.append(("services", at.line if at else None, _NO_SERVICES))
            return ()
        pairs = self.r.pairs(at)
        if pairs is None:
            return ()
        if not pairs:
            self.r.fail(at, _NO_SERVICES)
        active = {p.strip() for p in self.env.host_env.get("COMPOSE_PROFILES", "").split(",")}
        wanted = [(name, child) for name, child in pairs if self._enabled(child, active)]
        self.off = {name for name, _ in pairs} - {name for name, _ in wanted}
        self.names = {name for name, _ in wanted}
        parsed = [self.service(name, child) for name, child in wanted]
        done = [p for p in parsed if p is not None]
        shared = self.volumes.with_volumes_from([service for service, _ in done])
        done = [(service, origins) for service, (_, origins) in zip(shared, done, strict=True)]
        check_stack(self.r, done)
        return tuple(service for service, _ in done)

    def service(self, name: str, at: At) -> tuple[Service, Origins] | None:
        r = self.r
        try:
            check_service_name(name)
        except Bad as exc:
            r.fail(at, str(exc))
        if at.is_null:
            r.fail(at, 'a service needs "command" (or "entrypoint", or "image", or "build")')
            return None
        f = r.fields(at, _SERVICE_KEYS, _SERVICE_IGNORED)
        if f is None:
            return None
        origins = Origins(at)
        if init := given(f, "init"):
            r.boolean(init)  # linkd's init is always PID 1: true or false, checked only
        replicas, placement = self._replicas(f)
        container_name = self._container_name(given(f, "container_name"), name, replicas)
        before = len(r.problems)
        command, entrypoint = self._argv(f.get("command")), self._argv(f.get("entrypoint"))
        image = self._text(f.get("image"))
        build = None
        if build_at := given(f, "build"):  # its image: the service's command runs in it
            image = image or default_image(self.project, name)
            build = read_build(r, build_at, image=image, env=self.env, labels=self._labels,
                               extra_hosts=self._extra_hosts, directory=self.volumes.directory,
                               home=self.volumes.home)
            if build is not None and read_pull_policy(r, given(f, "pull_policy"),
                                                      True) == "build":
                build = dataclasses.replace(build, always=True)
            pull_policy = ""
        else:
            pull_policy = pull_policy_of(read_pull_policy(r, given(f, "pull_policy"), False))
        # Only when nothing was given: a command that failed to parse is reported already.
        if image is None and not (command or entrypoint) and len(r.problems) == before:
            r.fail(at, 'a service needs "command" (or "entrypoint", or "image", or "build")')
        healthcheck = None
        if health := given(f, "healthcheck"):
            healthcheck = read_healthcheck(self.r, health)
        links = self._links(f.get("links"), origins)
        self.volumes.read_from(name, given(f, "volumes_from"))
        mode, networks, implied = read_network_mode(r, f, self.nets, name, replicas,
                                                    self.names, self.off)
        depends_on = self._depends(f.get("depends_on"), origins)
        if implied is not None and all(d.service != implied.service for d in depends_on):
            depends_on += (implied,)  # network_mode: service:X starts after X, as in Compose
            origins.edges.setdefault(implied.service, f["network_mode"])
        conventions, link_settings = read_service_x_linkd(r, given(f, "x-linkd"), links)
        return Service(
            name=name,
            command=command,
            entrypoint=entrypoint,
            image=image,
            environment=self.env.of(f),
            working_dir=self._text(f.get("working_dir")),
            user=self._text(f.get("user")),
            group_add=self._group_add(given(f, "group_add")),
            platform=self._value(f.get("platform"), parse_platform),
            pull_policy=pull_policy,
            hostname=check_hostname(r, given(f, "hostname")),
            container_name=container_name,
            extra_hosts=self._extra_hosts(given(f, "extra_hosts")),
            labels=tuple({**dict(self._label_files(given(f, "label_file"))),
                          **dict(self._labels(given(f, "labels")))}.items()),
            tmpfs=self._tmpfs(given(f, "tmpfs")),
            volumes=self.volumes.mounts(name, given(f, "volumes")),
            files=self.files.mounts("secrets", given(f, "secrets"))
            + self.files.mounts("configs", given(f, "configs")),
            expose=self._expose(f.get("expose")),
            ports=self._ports(f.get("ports"), origins),
            links=links,
            networks=networks,
            network_mode=mode,
            net=read_net_settings(r, f, name, replicas, mode),
            depends_on=depends_on,
            healthcheck=healthcheck,
            restart=self._restart(f.get("restart")),
            replicas=replicas,
            placement=placement,
            stop_signal=self._value(f.get("stop_signal"), parse_signal) or "SIGTERM",
            stop_grace_period=self.r.duration(given(f, "stop_grace_period"), 10.0, 0.0),
            conventions=conventions,
            link_settings=link_settings,
            limits=read_limits(r, f),
            runtime=read_runtime(r, given(f, "x-linkd")),
            security=read_security(r, f, image is not None, self.env.read),
            build=build,
        ), origins

    def _container_name(self, at: At | None, service: str, replicas: int) -> str | None:
        """Docker's rule for container names (a leading "/" dropped, as Docker does);
        a DNS name too, since linkd resolves containers by name."""
        text = self._text(at)
        if at is None or text is None:
            return None
        name = text.removeprefix("/")
        if not _CONTAINER_NAME.fullmatch(name) or not all(
                len(label) <= 63 for label in name.split(".")):
            self.r.fail(at, "expected a container name of letters, digits, \"_\", \".\" and "
                            "\"-\" that starts with a letter or digit (Docker's rule), each "
                            f"part between dots at most 63 characters, got {quote(text)}")
            return None
        if replicas > 1:
            self.r.fail(at, f"service {service} has {replicas} replicas and one container "
                            "name: a name belongs to one container (Compose refuses it "
                            "too); drop container_name or scale to 1")
            return None
        return name

    def _group_add(self, at: At | None) -> tuple[str, ...]:
        """Group names or gids (Compose: `[mail, 42]`)."""
        if at is None or at.is_null:
            return ()
        groups = []
        for item in self.r.items(at) or []:
            text = self.r.text(item)
            if text is None:
                continue
            if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\$?", text):
                self.r.fail(item, f"expected a group name or number, got {quote(text)}")
                continue
            groups.append(text)
        return tuple(groups)

    def _tmpfs(self, at: At | None) -> tuple[tuple[str, tuple[str, ...], str], ...]:
        """Compose's `tmpfs: /run` or a list of `TARGET[:OPTIONS]`; OPTIONS are mount
        flags (ro, exec, ...) and size=, mode=, uid=, gid=, nr_inodes= (Docker's
        default: noexec, nosuid, nodev)."""
        if at is None or at.is_null:
            return ()
        items = (self.r.items(at) or []) if at.is_sequence else [at]
        mounts: list[tuple[str, tuple[str, ...], str]] = []
        for item in items:
            text = self.r.text(item)
            if text is None:
                continue
            try:
                mounts.append(parse_tmpfs(text))
            except Bad as exc:
                self.r.fail(item, str(exc))
        return tuple(mounts)

    def _label_files(self, at: At | None) -> tuple[tuple[str, str], ...]:
        """Compose's `label_file`: one file or a list, KEY=VALUE lines as in an env file,
        relative to the stack file's directory; `labels:` wins over them."""
        if at is None or at.is_null:
            return ()
        labels: dict[str, str] = {}
        for item in (self.r.items(at) or []) if at.is_sequence else [at]:
            name = self.r.text(item)
            if name is None:
                continue
            text = self.env.read(name)
            if isinstance(text, Exception):
                why = text.strerror if isinstance(text, OSError) else str(text)
                self.r.fail(item, f"cannot read label file {quote(name)}: {why}")
                continue
            try:
                labels.update(parse_env_file(text, name, {}, raw=True))
            except Bad as exc:
                self.r.fail(item, str(exc))
        return tuple(labels.items())

    def _labels(self, at: At | None) -> tuple[tuple[str, str], ...]:
        """Compose's forms: {KEY: VALUE} or ["KEY=VALUE", "KEY"] (a bare KEY: "")."""
        if at is None or at.is_null:
            return ()
        labels: dict[str, str] = {}
        if at.is_mapping:
            for key, child in self.r.pairs(at) or []:
                value = "" if child.is_null else self.r.raw(child)
                if value is not None:
                    labels[key] = value
        else:
            for item in self.r.items(at) or []:
                if (text := self.r.text(item)) is not None:
                    key, _, value = text.partition("=")
                    if not key:
                        self.r.fail(item, f"expected KEY=VALUE or KEY, got {quote(text)}")
                        continue
                    labels[key] = value
        return tuple(labels.items())

    def _extra_hosts(self, at: At | None) -> tuple[tuple[str, str], ...]:
        """Compose's forms: ["name:ADDR", "name=ADDR", "name:[v6]"] or {name: ADDR} (or
        a list of addresses); ADDR an IP address or host-gateway."""
        if at is None or at.is_null:
            return ()
        entries: list[tuple[str, str, At]] = []
        if at.is_mapping:
            for host, child in self.r.pairs(at) or []:
                for item in (self.r.items(child) or []) if child.is_sequence else [child]:
                    if (address := self.r.text(item)) is not None:
                        entries.append((host, address, item))
        else:
            for item in self.r.items(at) or []:
                if (text := self.r.text(item)) is None:
                    continue
                separator = "=" if "=" in text else ":"
                host, found, address = text.partition(separator)
                if not found:
                    self.r.fail(item, f'expected "NAME:ADDRESS" or "NAME=ADDRESS", got '
                                      f"{quote(text)}")
                    continue
                entries.append((host, address, item))
        hosts: list[tuple[str, str]] = []
        for host, address, item in entries:
            address = address.strip()
            if address.startswith("[") and address.endswith("]"):
                address = address[1:-1]
            try:
                check_alias(host)
                if address != HOST_GATEWAY:
                    address = str(ipaddress.ip_address(address))
            except Bad as exc:
                self.r.fail(item, str(exc))
                continue
            except ValueError:
                self.r.fail(item, f"expected an IP address or host-gateway for {host}, got "
                                  f"{quote(address)}")
                continue
            hosts.append((host, address))
        return tuple(hosts)

    # --- simple values ---

    def _text(self, at: At | None) -> str | None:
        return None if at is None or at.is_null else self.r.text(at)

    def _value(self, at: At | None, parse: Callable[[str], str]) -> str | None:
        return None if at is None or at.is_null else self.r.parsed(at, parse)

    def _argv(self, at: At | None) -> tuple[str, ...] | None:
        if at is None or at.is_null:
            return None
        if at.is_sequence:
            texts = self.r.texts(at)
            return None if texts is None else tuple(texts)
        split = self.r.parsed(at, _shell_split)
        return None if split is None else tuple(split)

    def _restart(self, at: At | None) -> RestartPolicy:
        if at is None or at.is_null:
            return RestartPolicy()
        if at.is_bool:  # YAML 1.1 reads a bare `no` as false
            if self.r.boolean(at) is False:
                return RestartPolicy()
            self.r.fail(at, f"{_RESTART_HINT}, got {at.node.value} (a YAML boolean)")
            return RestartPolicy()
        return self.r.parsed(at, parse_restart) or RestartPolicy()

    def _replicas(self, f: dict[str, At]) -> tuple[int, tuple[Constraint, ...]]:
        """How many containers, and `deploy.placement`'s constraints."""
        why = " (linkd runs at least one container per service; remove a service to stop it)"
        scale_at = given(f, "scale")
        scale = self.r.integer(scale_at, 1, why) if scale_at else None
        replicas = None
        placement: tuple[Constraint, ...] = ()
        if deploy := given(f, "deploy"):
            d = self.r.fields(deploy, ("replicas", "resources", "placement"),
                              _DEPLOY_UNSUPPORTED) or {}
            if replicas_at := given(d, "replicas"):
                replicas = self.r.integer(replicas_at, 1, why)
            if placement_at := given(d, "placement"):
                placement = self._placement(placement_at)
        if scale_at and scale is not None and replicas is not None and scale != replicas:
            self.r.fail(scale_at, f"scale {scale} differs from deploy.replicas {replicas}; set one")
        return scale or replicas or 1, placement

    def _placement(self, at: At) -> tuple[Constraint, ...]:
        p = self.r.fields(at, ("constraints",), {
            "preferences": "placement preferences are not read: replicas are spread over "
                           "the nodes their constraints allow, in turn",
            "max_replicas_per_node": "not read: replicas are spread over the nodes their "
                                     "constraints allow, in turn"}) or {}
        items = self.r.items(p["constraints"]) or [] if "constraints" in p else []
        # Acted on by a cluster daemon; elsewhere `up` says every service runs here.
        return tuple(c for c in (self.r.parsed(item, _constraint) for item in items) if c)

    # --- environment ---

    # --- ports ---

    def _expose(self, at: At | None) -> tuple[PortSpec, ...]:
        items = self.r.items(at) if at is not None and not at.is_null else []
        specs = (self.r.parsed(item, parse_expose) for item in items or [])
        return tuple(spec for spec in specs if spec is not None)

    def _ports(self, at: At | None, origins: Origins) -> tuple[PortSpec, ...]:
        specs: list[PortSpec] = []
        items = self.r.items(at) if at is not None and not at.is_null else []
        for item in items or []:
            spec = self._long_port(item) if item.is_mapping else self.r.parsed(item, parse_port)
            if spec is not None:
                specs.append(spec)
                origins.ports.append((spec, item))
        return tuple(specs)

    def _long_port(self, at: At) -> PortSpec | None:
        """Long syntax `{target, published, host_ip, protocol, name}`; `target` may be a
        range ("8000-8010") so that `stack_to_dict` can write a range back in one entry.
        """
        r = self.r
        f = r.fields(at, ("target", "published", "host_ip", "protocol", "name", "mode",
                          "app_protocol"))
        if (mode := given(f or {}, "mode")) and r.text(mode) not in ("host", "ingress"):
            r.fail(mode, 'expected mode "host" or "ingress" (a Swarm mode; linkd publishes '
                         "on this host either way)")
        if f is None:
            return None
        target_at = given(f, "target")
        if target_at is None:
            r.fail(at, f"a port needs a target (the container port), like {PORT_HINT}")
            return None
        hint = "a port like 80 or a range like 8000-8010"
        target = r.parsed(target_at, lambda t: parse_port_range(t, t, hint))
        published = host_ip = None
        if pub_at := given(f, "published"):
            published = r.parsed(pub_at, lambda t: parse_port_range(t, t, hint))
            if published is None:
                return None
            if target is not None:
                try:
                    check_range_lengths(*published, *target, "/".join(map(str, published)))
                except Bad as exc:
                    r.fail(pub_at, str(exc))
                    return None
        if ip_at := given(f, "host_ip"):
            host_ip = r.parsed(ip_at, lambda t: parse_host_ip(t, t))
        protocol_at, name_at = given(f, "protocol"), given(f, "name")
        protocol = r.parsed(protocol_at, parse_protocol) if protocol_at else "tcp"
        name = r.parsed(name_at, check_port_name) if name_at else None
        if target is None or protocol is None or (ip_at and host_ip is None):
            return None
        host_start, host_end = published or (None, None)
        return PortSpec(*target, protocol, host_ip, host_start, host_end, True, name)

    # --- dependencies ---

    def _links(self, at: At | None, origins: Origins) -> tuple[Link, ...]:
        links: list[Link] = []
        items = self.r.items(at) if at is not None and not at.is_null else []
        for item in items or []:
            text = self.r.text(item)
            if text is None:
                continue
            service, colon, alias = text.partition(":")
            if not service or (colon and not alias) or ":" in alias:
                self.r.fail(item, f'expected "service" or "service:alias", got {quote(text)}')
            elif self._known_service(item, service) and self._alias_ok(item, alias or service):
                links.append(Link(service, alias or service))
                origins.edges.setdefault(service, item)
        return tuple(links)

    def _alias_ok(self, at: At, alias: str) -> bool:
        try:
            check_alias(alias)
        except Bad as exc:
            self.r.fail(at, str(exc))
            return False
        return True

    def _enabled(self, at: At, active: set[str]) -> bool:
        """Compose's profiles: a service that names some starts only when one of them is
        active (`--profile`, COMPOSE_PROFILES; `*` is every profile)."""
        if not at.is_mapping:
            return True
        profiles_at = next((child for key, child in self.r.pairs(at) or []
                            if key == "profiles"), None)
        if profiles_at is None:
            return True
        profiles = self.r.texts(profiles_at) or []
        return not profiles or "*" in active or bool(active & set(profiles))

    def _known_service(self, at: At, service: str) -> bool:
        if service in self.off:
            self.r.fail(at, f"service {quote(service)} is in a profile that is not active; "
                            "activate it with --profile (or COMPOSE_PROFILES)")
            return False
        if service not in self.names:
            known = ", ".join(sorted(self.names))
            self.r.fail(at, f"unknown service {quote(service)}; the services are {known}")
        return service in self.names

    def _depends(self, at: At | None, origins: Origins) -> tuple[Dependency, ...]:
        if at is None or at.is_null:
            return ()
        deps: dict[str, Dependency] = {}
        if at.is_sequence:
            for item in self.r.items(at) or []:
                name = self.r.text(item)
                if name is not None and self._known_service(item, name):
                    deps.setdefault(name, Dependency(name))
                    origins.edges.setdefault(name, item)
                    origins.depends.setdefault(name, item)
            return tuple(deps.values())
        for name, child in self.r.pairs(at) or []:
            dep = self._dependency(name, child)
            if dep is None:
                continue
            if name not in self.names and not dep.required:
                # Compose: an optional dependency may be absent (say, another profile).
                self.r.warn(child, f"optional dependency on unknown service {name}, ignored")
            elif self._known_service(child, name):
                deps[name] = dep
                origins.edges.setdefault(name, child)
                origins.depends[name] = child
        return tuple(deps.values())

    def _dependency(self, name: str, at: At) -> Dependency | None:
        if at.is_null:
            return Dependency(name)
        f = self.r.fields(at, ("condition", "required", "restart"))
        if f is None:
            return None
        condition: DependsCondition | None = "service_started"
        if cond_at := given(f, "condition"):
            text = self.r.text(cond_at)
            condition = _CONDITIONS.get(text or "")
            if text is not None and condition is None:
                self.r.fail(cond_at, f"expected one of {', '.join(_CONDITIONS)}, got {quote(text)}")
        required = self.r.boolean(f["required"]) if given(f, "required") else True
        restart = self.r.boolean(f["restart"]) if given(f, "restart") else False
        if condition is None or required is None or restart is None:
            return None
        return Dependency(name, condition, required, restart)


_RESTART_HINT = 'expected "no", "always", "on-failure", "on-failure:N" or "unless-stopped"'
_NO_SERVICES = 'a stack needs "services:", a mapping of at least one service'


def _shell_split(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise Bad(f"cannot split {quote(text)} into arguments: {exc}") from None


_TMPFS_FLAGS = {"ro", "rw", "exec", "noexec", "suid", "nosuid", "dev", "nodev"}
_TMPFS_DATA = ("size", "mode", "uid", "gid", "nr_inodes")
_TMPFS_OFF_LIMITS = ("/proc", "/sys", "/dev")


def parse_tmpfs(text: str) -> tuple[str, tuple[str, ...], str]:
    """`TARGET[:OPTIONS]` as (target, flags, data)."""
    target, _, options = text.partition(":")
    target = target.rstrip("/") or "/"
    if not target.startswith("/") or target == "/" or "/../" in f"{target}/":
        raise Bad(f"expected an absolute path other than / for a tmpfs, got {quote(target)}")
    if any(target == p or target.startswith(p + "/") for p in _TMPFS_OFF_LIMITS):
        raise Bad(f"a tmpfs at {target} would hide what linkd mounts there (/proc, /sys, "
                  "/dev are the container's own); pick another path")
    flags = {"noexec", "nosuid", "nodev"}
    data: list[str] = []
    for option in filter(None, options.split(",")):
        key, eq, value = option.partition("=")
        if eq and key in _TMPFS_DATA and value:
            data.append(f"{key}={value}")
        elif not eq and option in ("ro", "rw"):
            flags.discard("ro")
            if option == "ro":
                flags.add("ro")
        elif not eq and option in _TMPFS_FLAGS:
            flags.discard(option[2:] if option.startswith("no") else "no" + option)
            flags.add(option)
        else:
            raise Bad(f"unknown tmpfs option {quote(option)} in {quote(text)}; linkd takes "
                      f"{', '.join(sorted(_TMPFS_FLAGS))} and {', '.join(_TMPFS_DATA)}=")
    return target, tuple(sorted(flags)), ",".join(data)


def _constraint(text: str) -> Constraint:
    try:
        return parse_constraint(text)
    except PlacementError as exc:
        raise Bad(str(exc)) from None
