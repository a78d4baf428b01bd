"""`stack_to_dict`: a `Stack` back as a normalized, Compose-shaped dict (`linkd config`).

Every value is written in its long form with defaults filled in, so a user sees what linkd
understood: ports as `{target, published, host_ip, protocol}`, `depends_on` as a map with
conditions, `environment` as a map, durations as Go strings ("1m30s"), healthcheck tests as
`["CMD", ...]`. Reading the result with `parse_stack` gives the same stack back, which the
tests check; two choices serve that:

- `$` in strings is written `$$`, since `parse_stack` interpolates (Compose's `config`
  does the same);
- a port range stays one entry with `target: "8000-8010"` (Compose's long syntax would
  need one entry per port, and the model keeps a range as one `PortSpec`).

Order means something (environment order, a service's networks give eth0, eth1, ...), so
dump the dict with `yaml.safe_dump(..., sort_keys=False)`.
"""

from __future__ import annotations

from typing import Any

from linkd.core.model import (
    DEFAULT_CONVENTIONS,
    Attachment,
    DnsSettings,
    Healthcheck,
    LinkSettings,
    Network,
    PortSpec,
    Service,
    Stack,
)
from linkd.spec.build import dump_build
from linkd.spec.limits import dump_limits
from linkd.spec.security import dump_security
from linkd.spec.values import format_duration


def stack_to_dict(stack: Stack) -> dict[str, Any]:
    out = {
        "name": stack.name,
        "services": {s.name: _service(s) for s in stack.services},
        "networks": {n.name: _network(n) for n in stack.networks},
    }
    extension: dict[str, Any] = {}
    if stack.conventions != DEFAULT_CONVENTIONS:
        extension["conventions"] = list(stack.conventions)
    if stack.dns != DnsSettings():
        extension["dns"] = _dns(stack.dns)
    if stack.host_access:
        extension["host"] = [h.text() for h in stack.host_access]
    if extension:
        out["x-linkd"] = extension
    escaped: dict[str, Any] = _escape(out)
    return escaped


def _dns(dns: DnsSettings) -> dict[str, Any]:
    out: dict[str, Any] = {"domain": dns.domain}
    if dns.upstreams is not None:
        out["upstreams"] = [
            f"[{u.host}]:{u.port}" if ":" in u.host else f"{u.host}:{u.port}"
            for u in dns.upstreams
        ]
    return out


def _escape(value: Any) -> Any:
    """Double every `$` in string values (not keys): they are literal after parsing."""
    if isinstance(value, str):
        return value.replace("$", "$$")
    if isinstance(value, dict):
        return {key: _escape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_escape(item) for item in value]
    return value


def _range(start: int, end: int) -> str:
    return str(start) if start == end else f"{start}-{end}"


def _port(spec: PortSpec) -> dict[str, Any]:
    out: dict[str, Any] = {
        "target": spec.start if spec.start == spec.end else _range(spec.start, spec.end)
    }
    if spec.host_start is not None:
        out["published"] = _range(spec.host_start, spec.host_end or spec.host_start)
    if spec.host_ip is not None:
        out["host_ip"] = spec.host_ip
    out["protocol"] = spec.protocol
    if spec.name is not None:
        out["name"] = spec.name
    return out


def _expose(spec: PortSpec) -> str:
    text = _range(spec.start, spec.end)
    return text if spec.protocol == "tcp" else f"{text}/{spec.protocol}"


def _healthcheck(check: Healthcheck) -> dict[str, Any]:
    return {
        "test": ["NONE"] if check.disabled else ["CMD", *check.test],
        "interval": format_duration(check.interval),
        "timeout": format_duration(check.timeout),
        "retries": check.retries,
        "start_period": format_duration(check.start_period),
        "start_interval": format_duration(check.start_interval),
    }


def _attachment(a: Attachment) -> dict[str, Any] | None:
    out: dict[str, Any] = {}
    if a.aliases:
        out["aliases"] = list(a.aliases)
    if a.ipv4_address is not None:
        out["ipv4_address"] = str(a.ipv4_address)
    if a.ipv6_address is not None:
        out["ipv6_address"] = str(a.ipv6_address)
    if a.mac_address is not None:
        out["mac_address"] = a.mac_address
    return out or None  # Compose writes a plain attachment as `name: null`


def _service(s: Service) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if s.image is not None:
        out["image"] = s.image
    if s.entrypoint is not None:
        out["entrypoint"] = list(s.entrypoint)
    if s.command is not None:
        out["command"] = list(s.command)
    for key, value in (("working_dir", s.working_dir), ("user", s.user)):
        if value is not None:
            out[key] = value
    if s.hostname is not None:
        out["hostname"] = s.hostname
    if s.container_name is not None:
        out["container_name"] = s.container_name
    if s.labels:
        out["labels"] = dict(s.labels)
    if s.extra_hosts:
        out["extra_hosts"] = [f"{host}={address}" for host, address in s.extra_hosts]
    out.update(dump_limits(s.limits))
    out.update(dump_security(s.security))
    out.update(dump_build(s.build))
    if s.pull_policy:
        out["pull_policy"] = s.pull_policy
    if s.environment:
        out["environment"] = dict(s.environment)
    if s.expose:
        out["expose"] = [_expose(p) for p in s.expose]
    if s.ports:
        out["ports"] = [_port(p) for p in s.ports]
    if s.links:
        out["links"] = [f"{x.service}:{x.alias}" for x in s.links]
    if s.networks:
        out["networks"] = {a.network: _attachment(a) for a in s.networks}
    else:
        out["network_mode"] = s.network_mode or "none"
    net = s.net
    for key, items in (("dns", net.dns), ("dns_search", net.dns_search),
                       ("dns_opt", net.dns_opt)):
        if items:
            out[key] = list(items)
    if net.sysctls:
        out["sysctls"] = dict(net.sysctls)
    if net.domainname is not None:
        out["domainname"] = net.domainname
    if net.mac_address is not None:
        out["mac_address"] = net.mac_address
    if s.depends_on:
        out["depends_on"] = {
            d.service: {"condition": d.condition, "required": d.required, "restart": d.restart}
            for d in s.depends_on
        }
    if s.healthcheck is not None:
        out["healthcheck"] = _healthcheck(s.healthcheck)
    restart: str = s.restart.mode
    if s.restart.max_retries is not None:
        restart += f":{s.restart.max_retries}"
    out["restart"] = restart
    out["scale"] = s.replicas
    if s.placement:
        out["deploy"] = {"placement": {"constraints": [str(c) for c in s.placement]}}
    out["stop_signal"] = s.stop_signal
    out["stop_grace_period"] = format_duration(s.stop_grace_period)
    extension: dict[str, Any] = {}
    if s.conventions is not None:
        extension["conventions"] = list(s.conventions)
    if s.link_settings:
        extension["links"] = {x.alias: _link_settings(x) for x in s.link_settings}
    if s.runtime is not None:
        extension["runtime"] = s.runtime
    if extension:
        out["x-linkd"] = extension
    return out


def _link_settings(settings: LinkSettings) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if settings.conventions is not None:
        out["conventions"] = list(settings.conventions)
    if settings.env:
        out["env"] = list(settings.env)
    if settings.urls:
        out["urls"] = dict(settings.urls)
    return out


def _network(n: Network) -> dict[str, Any]:
    named = {"name": n.real_name} if n.real_name is not None else {}
    if n.external:
        return {"external": True, **named}
    out: dict[str, Any] = {
        **named,
        "driver": n.driver,
        "internal": n.internal,
        "enable_ipv6": n.enable_ipv6,
    }
    config = []
    for subnet, gateway in ((n.subnet, n.gateway), (n.subnet6, n.gateway6)):
        if subnet is not None:
            entry = {"subnet": str(subnet)}
            if gateway is not None:
                entry["gateway"] = str(gateway)
            config.append(entry)
    if config:
        out["ipam"] = {"driver": "default", "config": config}
    return out
