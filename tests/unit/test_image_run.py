"""Image configs merged under the stack file (Compose's rules), and resource limits."""

from __future__ import annotations

import pytest
import yaml

from linkd.core.image_config import healthcheck_of, with_image, with_images
from linkd.core.image_format import Healthcheck as ImageHealth
from linkd.core.image_format import ImageConfig
from linkd.core.model import Healthcheck, Limits, PortSpec, Service
from linkd.errors import SpecError
from linkd.spec.stack_file import parse_stack, stack_to_dict

ID = "sha256:" + "ab" * 32
CONFIG = ImageConfig(
    architecture="amd64", os="linux", diff_ids=(),
    entrypoint=("/entry.sh",), cmd=("serve", "-v"),
    env=("PATH=/usr/bin:/bin", "MODE=image", "EMPTY="), working_dir="/srv", user="app",
    exposed_ports=("53/udp", "80/tcp"), stop_signal="SIGQUIT",
    healthcheck=ImageHealth(("CMD-SHELL", "wget -q localhost"), 5_000_000_000, 0, 0, 2),
)


def test_the_image_fills_what_the_service_leaves_out() -> None:
    s = with_image(Service("web", image="web:1"), ID, CONFIG)
    assert s.image == ID
    assert s.argv() == ("/entry.sh", "serve", "-v")
    assert dict(s.environment) == {"PATH": "/usr/bin:/bin", "MODE": "image", "EMPTY": ""}
    assert (s.working_dir, s.user, s.stop_signal) == ("/srv", "app", "SIGQUIT")
    assert s.expose == (PortSpec(53, 53, "udp"), PortSpec(80, 80, "tcp"))
    assert s.healthcheck == Healthcheck(("/bin/sh", "-c", "wget -q localhost"), interval=5.0,
                                        timeout=30.0, retries=2)


def test_the_stack_file_wins_as_in_compose() -> None:
    service = Service(
        "web", image="web:1", command=("other",), environment=(("MODE", "stack"),),
        working_dir="/", user="0", expose=(PortSpec(80, 80),), stop_signal="SIGINT",
        healthcheck=Healthcheck((), disabled=True),
    )
    s = with_image(service, ID, CONFIG)
    assert s.argv() == ("/entry.sh", "other")  # command replaces Cmd only
    assert dict(s.environment)["MODE"] == "stack"
    assert (s.working_dir, s.user, s.stop_signal) == ("/", "0", "SIGINT")
    assert s.expose == (PortSpec(80, 80), PortSpec(53, 53, "udp"))  # 80/tcp not repeated
    assert s.healthcheck == Healthcheck((), disabled=True)
    # An entrypoint drops the image's Cmd too (docker run --entrypoint).
    assert with_image(Service("w", entrypoint=("sh",)), ID, CONFIG).argv() == ("sh",)


def test_bare_images_and_odd_configs() -> None:
    bare = ImageConfig("amd64", "linux", ())
    s = with_image(Service("x", image="x"), ID, bare)
    assert s.argv() == () and s.working_dir == "/" and s.user is None
    assert s.stop_signal == "SIGTERM" and s.healthcheck is None
    numeric = ImageConfig("amd64", "linux", (), stop_signal="9")
    assert with_image(Service("x"), ID, numeric).stop_signal == "SIGTERM"
    short = ImageConfig("amd64", "linux", (), stop_signal="int")
    assert with_image(Service("x"), ID, short).stop_signal == "SIGINT"
    assert healthcheck_of(ImageConfig("amd64", "linux", (), healthcheck=ImageHealth(
        ("NONE",)))) == Healthcheck((), disabled=True)
    assert healthcheck_of(ImageConfig("amd64", "linux", (), healthcheck=ImageHealth(
        ("CMD", "true")))) == Healthcheck(("true",))
    with pytest.raises(SpecError, match="not PORT"):
        with_image(Service("x"), ID, ImageConfig("amd64", "linux", (),
                                                 exposed_ports=("http/tcp",)))


def _stack(body: str):  # type: ignore[no-untyped-def]
    return parse_stack(body, source="t.yaml", default_project="t")


def test_with_images_touches_only_resolved_services() -> None:
    stack = _stack("services:\n  a: {image: web:1}\n  b: {command: [x]}\n")
    merged = with_images(stack, {"web:1": (ID, CONFIG)})
    assert merged.service("a").image == ID and merged.service("b") == stack.service("b")


@pytest.mark.parametrize(("body", "expected"), [
    ("mem_limit: 512m\n    cpus: 1.5\n    pids_limit: 100", Limits(512 << 20, 1.5, 100)),
    ("mem_limit: 1g", Limits(1 << 30)),
    ("mem_limit: 6291456", Limits(6 << 20)),
    ("mem_limit: 2GB", Limits(2 << 30)),
    ("cpus: '0.25'\n    pids_limit: -1", Limits(None, 0.25, None)),
    ("deploy:\n      resources:\n        limits: {memory: 64m, cpus: '2', pids: 7}",
     Limits(64 << 20, 2.0, 7)),
    ("mem_limit: 64m\n    deploy: {resources: {limits: {memory: 64M}}}", Limits(64 << 20)),
    ("", Limits()),
])
def test_limits_are_parsed(body: str, expected: Limits) -> None:
    stack = _stack(f"services:\n  a:\n    command: [x]\n    {body}\n")
    assert stack.service("a").limits == expected
    assert not stack.warnings
    again = _stack(yaml.safe_dump(stack_to_dict(stack), sort_keys=False))
    assert again.service("a").limits == expected


@pytest.mark.parametrize(("body", "message"), [
    ("mem_limit: 1m", "at least 6m"),
    ("mem_limit: lots", "expected a size like 512m"),
    ("cpus: 0", "above 0"),
    ("cpus: many", "above 0"),
    ("pids_limit: x", "expected an integer"),
    ("mem_limit: 64m\n    deploy: {resources: {limits: {memory: 128m}}}",
     "deploy.resources.limits.memory differs from mem_limit"),
])
def test_bad_limits_are_refused(body: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        _stack(f"services:\n  a:\n    command: [x]\n    {body}\n")


def test_reservations_are_warned_about() -> None:
    stack = _stack("services:\n  a:\n    command: [x]\n    deploy:\n      resources:\n"
                   "        reservations: {memory: 1g}\n")
    assert stack.warnings == (
        "services.a.deploy.resources.reservations (line 6): not supported by linkd, ignored",)
