"""A service's `network_mode` and `networks`: which network namespace its containers have.

- no `network_mode`: a namespace of its own, on its `networks` (`default` if none);
  `default` and `bridge` (Docker's default bridge: warned) are the stack's `default`;
- `none`: a namespace of its own with loopback only;
- `service:X`: X's first container's namespace, shared, as a sidecar or a pod: the same
  addresses, the same resolver, `localhost` between them. X starts first (an implied
  `depends_on: X`, with `restart: true`, as Compose adds it);
- `container:NAME`: that container's namespace (a container of the stack by its name,
  else one of another stack that is up, found at `up`); no implied dependency, as in
  Compose;
- `host`: the host's namespace, with no linkd DNS (its resolv.conf and hosts file are the
  host's), warned.

What cannot go with a shared namespace is refused, as Compose (`networks`) and Docker
(the rest: "conflicting options ... and the network mode") refuse it: a service that
shares another's namespace has no interfaces, addresses, ports or links of its own, and
its hostname and hosts file are the other container's.
"""

from __future__ import annotations

import re

from linkd.core.model import Attachment, Dependency
from linkd.spec.networks import NetworkReader
from linkd.spec.nodes import At, Reader, given
from linkd.spec.values import quote

_CONTAINER_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")  # Docker's rule

# Keys a shared namespace leaves no room for, and why (Docker's words where it has them).
_NOT_WITH_SHARED = {
    "networks": "its networks are the other container's (Compose refuses it too)",
    "ports": "ports are published by the container that owns the namespace (Docker: "
             "conflicting options: port publishing and the container type network mode)",
    "expose": "ports are exposed by the container that owns the namespace (Docker: "
              "conflicting options: port exposing and the container type network mode)",
    "links": "links are the other container's (Docker refuses them with this mode)",
    "hostname": "its hostname is the other container's (Docker: conflicting options: "
                "hostname and the network mode)",
    "dns": "its resolver is the other container's (Docker: conflicting options: dns and "
           "the network mode)",
    "extra_hosts": "its hosts file is the other container's (Docker: conflicting options: "
                   "custom host-to-IP mapping and the network mode)",
    "mac_address": "it has no interface of its own (Docker: conflicting options: "
                   "mac-address and the network mode)",
}
_NOT_WITH_HOST = {
    "networks": "it is on the host's network (Compose refuses it too)",
    "links": "links need a network of the stack (Docker: conflicting options: host type "
             "networking can't be used with links)",
    "mac_address": "its interfaces are the host's (Docker: conflicting options: "
                   "mac-address and the network mode)",
}

Mode = tuple[str | None, tuple[Attachment, ...], Dependency | None]


def read_network_mode(
    r: Reader, f: dict[str, At], nets: NetworkReader, service: str, replicas: int,
    services: set[str], off: set[str],
) -> Mode:
    """(network_mode, networks, implied dependency) of one service; `network_mode` is
    None for a namespace of its own (`none` is one with no networks). `services`: the
    stack's services; `off`: those of profiles that are not active."""
    mode_at = given(f, "network_mode")
    if mode_at is None:
        return None, nets.attachments(f.get("networks"), service, replicas), None
    mode = r.text(mode_at)
    if mode is None:
        return None, (), None
    if mode == "none":
        if given(f, "networks") is not None:
            r.fail(mode_at, '"network_mode: none" and "networks" cannot be combined (Compose '
                            "refuses it too); keep one")
        return None, (), None
    if mode in ("bridge", "default"):
        if given(f, "networks") is not None:
            r.fail(mode_at, f'"network_mode: {mode}" and "networks" cannot be combined '
                            "(Compose refuses it too); keep one")
            return None, (), None
        if mode == "bridge":
            r.warn(mode_at, "network_mode bridge (Docker's default bridge network): linkd "
                            "puts the container on the stack's default network")
        return None, (Attachment("default"),), None
    if mode == "host":
        _refuse(r, f, mode_at, mode, _NOT_WITH_HOST)
        if ports := given(f, "ports"):
            r.warn(ports, "ignored with network_mode host: the container's ports are the "
                          "host's own (Docker discards them too)")
        r.warn(mode_at, "network_mode host: the container is on the host's network, "
                        "without linkd's DNS (its resolv.conf and hosts file are the "
                        "host's) and without the stack's isolation")
        return mode, (), None
    kind, _, target = mode.partition(":")
    if kind == "service" and target:
        _refuse(r, f, mode_at, mode, _NOT_WITH_SHARED)
        if target == service:
            r.fail(mode_at, f"service {service} cannot share its own network namespace")
        elif target in off:
            r.fail(mode_at, f"service {quote(target)} is in a profile that is not active; "
                            "activate it with --profile (or COMPOSE_PROFILES)")
        elif target not in services:
            r.fail(mode_at, f"unknown service {quote(target)}; the services are "
                            f"{', '.join(sorted(services))}")
        else:
            return mode, (), Dependency(target, restart=True)
        return None, (), None
    if kind == "container" and target:
        _refuse(r, f, mode_at, mode, _NOT_WITH_SHARED)
        if not _CONTAINER_NAME.fullmatch(target):
            r.fail(mode_at, f"expected container:NAME with a container name (Docker's "
                            f"rule), got {quote(mode)}")
            return None, (), None
        return mode, (), None
    r.fail(mode_at, f'expected network_mode "none", "host", "bridge", "service:NAME" or '
                    f'"container:NAME", got {quote(mode)}')
    return None, (), None


def _refuse(r: Reader, f: dict[str, At], mode_at: At, mode: str,
            keys: dict[str, str]) -> None:
    for key, why in keys.items():
        at = given(f, key)
        if at is not None:
            r.fail(at, f'"{key}" cannot go with network_mode {quote(mode)}: {why}; keep one')
