"""A service that runs an image: the image config merged under the stack file, as Compose does.

`with_image(service, image_id, config)` is pure: it returns the service as if the stack
file had spelled out what the image config gives, with the stack file winning:

- argv: `entrypoint:` replaces the image's Entrypoint and drops its Cmd (Docker's
  `--entrypoint` does the same); `command:` replaces Cmd; otherwise Entrypoint + Cmd.
- environment: the image's Env first, the service's `environment:` over it.
- working_dir, user: the service's, else the image's, else `/` and root (never the
  stack file's directory, which is not in the image).
- ExposedPorts join `expose:` (ports the service already lists are not repeated), so
  they feed the link conventions as Docker's EXPOSE feeds link variables.
- StopSignal: the image's, unless the service names a signal other than SIGTERM (the
  parsed stack cannot tell an explicit `stop_signal: SIGTERM` from the default).
- Healthcheck: the service's, else the image's (Docker's defaults for missing times).
- Platform: the service's `platform:` must be the image's (os, architecture, and the
  variant when both say one); linkd runs images as they are, without emulation.
- Volumes: each VOLUME path the service mounts nothing at becomes an anonymous volume
  (Docker's rule), seeded with what the image has there.

`image` becomes the image id (`sha256:...`): the plan then names exactly the content the
container runs, whatever happens to the name in the store later.
"""

from __future__ import annotations

import posixpath
from dataclasses import replace

from linkd.core.image_format import ImageConfig, Platform
from linkd.core.model import Healthcheck, Mount, PortSpec, Protocol, Service, Stack
from linkd.errors import SpecError

_NS = 1e-9


def healthcheck_of(config: ImageConfig) -> Healthcheck | None:
    """The image's HEALTHCHECK as the stack file's model says it."""
    h = config.healthcheck
    if h is None or not h.test:
        return None
    head, *rest = h.test
    if head == "NONE":
        return Healthcheck((), disabled=True)
    if head == "CMD-SHELL" and rest:
        test: tuple[str, ...] = ("/bin/sh", "-c", " ".join(rest))
    elif head == "CMD" and rest:
        test = tuple(rest)
    else:
        return None
    return Healthcheck(
        test,
        interval=h.interval_ns * _NS or 30.0,
        timeout=h.timeout_ns * _NS or 30.0,
        retries=h.retries or 3,
        start_period=h.start_period_ns * _NS,
    )


def exposed_ports(image: str, config: ImageConfig) -> tuple[PortSpec, ...]:
    ports = []
    for item in config.exposed_ports:
        number, _, proto = item.partition("/")
        proto = proto or "tcp"
        if not number.isdigit() or proto not in ("tcp", "udp", "sctp"):
            raise SpecError([(f"image {image}", None,
                              f"the image exposes {item!r}, not PORT[/tcp|udp|sctp]")])
        port = int(number)
        protocol: Protocol = "tcp" if proto == "tcp" else "udp" if proto == "udp" else "sctp"
        ports.append(PortSpec(port, port, protocol))
    return tuple(ports)


def with_image(service: Service, image_id: str, config: ImageConfig) -> Service:
    if service.platform is not None:
        wanted = Platform(*[*service.platform.split("/"), ""][:3])
        if not config.platform.runs_on(wanted):
            raise SpecError([(f"services.{service.name}.platform", None,
                              f"the service asks for {service.platform}, and its image is "
                              f"{config.platform}: load the image built for "
                              f"{service.platform}, or drop platform")])
    entrypoint: tuple[str, ...] | None
    command: tuple[str, ...] | None
    if service.entrypoint is not None:
        entrypoint, command = service.entrypoint, service.command
    else:
        entrypoint = config.entrypoint
        command = service.command if service.command is not None else config.cmd
    env = dict(e.partition("=")[::2] for e in config.env)
    env.update(dict(service.environment))
    listed = {(n, p.protocol) for p in service.expose + service.ports for n in p.numbers()}
    extra = tuple(p for p in exposed_ports(service.name, config)
                  if (p.start, p.protocol) not in listed)
    stop_signal = service.stop_signal
    image_signal = config.stop_signal.upper()
    if stop_signal == "SIGTERM" and image_signal and not image_signal.isdigit():
        # A number would need the machine's signal table; linkd keeps its default then.
        stop_signal = image_signal if image_signal.startswith("SIG") else "SIG" + image_signal
    return replace(
        service,
        image=image_id,
        entrypoint=entrypoint,
        command=command or (),
        environment=tuple(env.items()),
        working_dir=service.working_dir or config.working_dir or "/",
        user=service.user or config.user or None,
        expose=service.expose + extra,
        stop_signal=stop_signal,
        healthcheck=service.healthcheck or healthcheck_of(config),
        volumes=service.volumes + image_volumes(service, config),
    )


def image_volumes(service: Service, config: ImageConfig) -> tuple[Mount, ...]:
    taken = {m.target for m in service.volumes} | {t for t, _, _ in service.tmpfs}
    extra = []
    for target in config.volumes:
        path = posixpath.normpath(target)
        if not path.startswith("/") or path == "/" or path.startswith(("/proc", "/sys")):
            continue  # not a place a volume can go; Docker would fail the start instead
        if path not in taken:
            taken.add(path)
            extra.append(Mount("volume", path))
    return tuple(extra)


def with_images(stack: Stack, resolved: dict[str, tuple[str, ImageConfig]]) -> Stack:
    """`stack` with every service whose `image:` is in `resolved` (ref -> (id, config))
    merged with its image."""
    services = tuple(
        with_image(s, *resolved[s.image]) if s.image is not None and s.image in resolved
        else s
        for s in stack.services
    )
    return replace(stack, services=services)
