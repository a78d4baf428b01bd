"""Golden tables for the stack-file parser (`linkd.spec.stack_file` and its helper modules).

Each table row is a small stack (or one value) and what it must become: a model value, a
problem at an exact path and line, or a warning. Stacks are written without a leading
newline, so line 1 is the first line shown.
"""

from __future__ import annotations

import ast
import dataclasses
import ipaddress
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from linkd.core.model import (
    Attachment,
    Dependency,
    Healthcheck,
    Link,
    Network,
    PortSpec,
    RestartPolicy,
    Service,
    Stack,
)
from linkd.errors import SpecError
from linkd.spec.stack_file import parse_stack, stack_to_dict
from linkd.spec.values import (
    Bad,
    format_duration,
    interpolate,
    parse_duration,
    parse_port,
    parse_signal,
)

STACKS = Path(__file__).parent / "stacks"
LINKD = Path(__file__).parents[2] / "linkd"


def y(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def files(mapping: dict[str, str]) -> Callable[[str], str]:
    """A fake `read_text`: a dict of file names, FileNotFoundError for the rest."""

    def read(path: str) -> str:
        if path not in mapping:
            raise FileNotFoundError(2, "No such file or directory", path)
        return mapping[path]

    return read


def parse(text: str, **kw: Any) -> Stack:
    kw.setdefault("default_project", "proj")
    return parse_stack(y(text), source="stack.yaml", **kw)


def problems(text: str, **kw: Any) -> SpecError:
    with pytest.raises(SpecError) as info:
        parse(text, **kw)
    return info.value


def web(body: str, *, extra: str = "", **kw: Any) -> Service:
    """Parse a one-service stack whose service `web` has `body` as its keys."""
    body = y(body).rstrip("\n") + "\n"
    text = "services:\n  web:\n" + textwrap.indent(body, "    ") + extra
    return parse(text, **kw).service("web")


def without_warnings(stack: Stack) -> Stack:
    return dataclasses.replace(stack, warnings=())


# --- each supported service key, in each of its forms -----------------------------------

SERVICE_VALUES: list[tuple[str, str, object]] = [
    # command / entrypoint
    ("command: echo 'a b' c", "command", ("echo", "a b", "c")),
    ("command: [echo, 'a b']", "command", ("echo", "a b")),
    ("command: [sleep, 10]", "command", ("sleep", "10")),
    ("entrypoint: /bin/run --x", "entrypoint", ("/bin/run", "--x")),
    ("entrypoint: [a]\ncommand: [b]", "argv", ("a", "b")),
    ("command: x", "entrypoint", None),
    ("image: alpine:3", "image", "alpine:3"),
    ("image: alpine\ncommand: []", "command", ()),
    # environment: map, list, null values from the host, raw scalars
    ("command: x\nenvironment: {A: 1, B: yes, C: '', D: 1.50}", "environment",
     (("A", "1"), ("B", "yes"), ("C", ""), ("D", "1.50"))),
    ("command: x\nenvironment: [A=1, B=x=y, C=]", "environment",
     (("A", "1"), ("B", "x=y"), ("C", ""))),
    ("command: x\nenvironment: [HOME, NOPE, A=1, A=2]", "environment",
     (("HOME", "/root"), ("A", "2"))),
    ("command: x\nenvironment: {HOME: , NOPE: ~, ON: off}", "environment",
     (("HOME", "/root"), ("ON", "off"))),
    # plain strings
    ("command: x\nworking_dir: /srv", "working_dir", "/srv"),
    ("command: x\nuser: 1000", "user", "1000"),
    ("command: x\nuser: 'app:app'", "user", "app:app"),
    ("command: x\nhostname: box", "hostname", "box"),
    # expose
    ("command: x\nexpose: [80, '81', 8000-8010, 53/udp, 9/SCTP]", "expose", (
        PortSpec(80, 80), PortSpec(81, 81), PortSpec(8000, 8010), PortSpec(53, 53, "udp"),
        PortSpec(9, 9, "sctp"),
    )),
    # ports: short syntax (22:22 unquoted is base 60 in YAML 1.1; we read the raw text)
    ("command: x\nports: [22:22, 8080:80, 80, '9000-9001']", "ports", (
        PortSpec(22, 22, host_start=22, host_end=22, published=True),
        PortSpec(80, 80, host_start=8080, host_end=8080, published=True),
        PortSpec(80, 80, published=True),
        PortSpec(9000, 9001, published=True),
    )),
    ("command: x\nports: ['127.0.0.1::80/udp', '[::1]:8000-8001:9000-9001']", "ports", (
        PortSpec(80, 80, "udp", "127.0.0.1", published=True),
        PortSpec(9000, 9001, "tcp", "::1", 8000, 8001, published=True),
    )),
    # ports: long syntax
    ("command: x\nports: [{target: 80, published: 8080, host_ip: 10.0.0.1, name: http}]",
     "ports", (PortSpec(80, 80, "tcp", "10.0.0.1", 8080, 8080, True, "http"),)),
    ("command: x\nports: [{target: '53', protocol: udp}]", "ports",
     (PortSpec(53, 53, "udp", published=True),)),
    ("command: x\nports: [{target: 7000-7001, published: '8000-8001'}]", "ports",
     (PortSpec(7000, 7001, "tcp", None, 8000, 8001, True),)),
    # restart
    ("command: x\nrestart: no", "restart", RestartPolicy("no")),
    ("command: x\nrestart: 'no'", "restart", RestartPolicy("no")),
    ("command: x\nrestart: always", "restart", RestartPolicy("always")),
    ("command: x\nrestart: on-failure", "restart", RestartPolicy("on-failure")),
    ("command: x\nrestart: on-failure:5", "restart", RestartPolicy("on-failure", 5)),
    ("command: x\nrestart: unless-stopped", "restart", RestartPolicy("unless-stopped")),
    ("command: x", "restart", RestartPolicy("no")),
    # replicas
    ("command: x", "replicas", 1),
    ("command: x\nscale: 3", "replicas", 3),
    ("command: x\ndeploy: {replicas: 2}", "replicas", 2),
    ("command: x\nscale: '4'\ndeploy: {replicas: 4}", "replicas", 4),
    # stop_signal / stop_grace_period
    ("command: x", "stop_signal", "SIGTERM"),
    ("command: x\nstop_signal: SIGINT", "stop_signal", "SIGINT"),
    ("command: x\nstop_signal: quit", "stop_signal", "SIGQUIT"),
    ("command: x\nstop_signal: 9", "stop_signal", "SIGKILL"),
    ("command: x\nstop_signal: RTMIN+3", "stop_signal", "SIGRTMIN+3"),
    ("command: x", "stop_grace_period", 10.0),
    ("command: x\nstop_grace_period: 1m30s", "stop_grace_period", 90.0),
    ("command: x\nstop_grace_period: 0", "stop_grace_period", 0.0),
    # links
    ("command: x\nlinks: [db, 'db:database']", "links", (Link("db", "db"), Link("db", "database"))),
    # depends_on
    ("command: x\ndepends_on: [db, db]", "depends_on", (Dependency("db"),)),
    ("command: x\ndepends_on: {db: }", "depends_on", (Dependency("db"),)),
    ("command: x\ndepends_on: {db: {condition: service_healthy, required: false, restart: true}}",
     "depends_on", (Dependency("db", "service_healthy", False, True),)),
    ("command: x\ndepends_on: {db: {condition: service_completed_successfully}}",
     "depends_on", (Dependency("db", "service_completed_successfully"),)),
    ("command: x\ndepends_on: {db: {restart: 'true'}}", "depends_on",
     (Dependency("db", restart=True),)),
    ("command: x\ndepends_on: {ghost: {required: false}}", "depends_on", ()),
    # networks
    ("command: x", "networks", (Attachment("default"),)),
    ("command: x\nnetworks: []", "networks", (Attachment("default"),)),
    ("command: x\nnetworks: [back, front]", "networks", (Attachment("back"), Attachment("front"))),
    ("command: x\nnetworks: {front: {aliases: [www, w.x]}, default: }", "networks",
     (Attachment("front", ("www", "w.x")), Attachment("default"))),
    ("command: x\nnetworks: {front: {ipv4_address: 10.1.0.5, ipv6_address: 'fd00::5'}}",
     "networks", (Attachment("front", (), ipaddress.IPv4Address("10.1.0.5"),
                             ipaddress.IPv6Address("fd00::5")),)),
]  # fmt: skip

_OTHERS = """\
  db:
    command: db
    healthcheck: {test: [CMD, ok]}
networks:
  front:
    enable_ipv6: true
    ipam: {config: [{subnet: 10.1.0.0/24}, {subnet: 'fd00::/64'}]}
  back:
"""


@pytest.mark.parametrize(("body", "attr", "expected"), SERVICE_VALUES)
def test_service_values(body: str, attr: str, expected: object) -> None:
    service = web(body, extra=_OTHERS, host_env={"HOME": "/root"})
    value = service.argv() if attr == "argv" else getattr(service, attr)
    assert value == expected


HEALTHCHECKS: list[tuple[str, Healthcheck]] = [
    ("test: [CMD, pg_isready, -q]", Healthcheck(("pg_isready", "-q"))),
    ("test: [CMD-SHELL, 'curl -f x || exit 1']",
     Healthcheck(("/bin/sh", "-c", "curl -f x || exit 1"))),
    ("test: curl -f x", Healthcheck(("/bin/sh", "-c", "curl -f x"))),
    ("test: NONE", Healthcheck((), disabled=True)),
    ("test: [NONE]", Healthcheck((), disabled=True)),
    ("disable: true", Healthcheck((), disabled=True)),
    ("{test: [CMD, ok], interval: 1m30s, timeout: 500ms, retries: 5, start_period: 2us,"
     " start_interval: 1h}", Healthcheck(("ok",), 90.0, 0.5, 5, 2e-6, 3600.0)),
]  # fmt: skip


@pytest.mark.parametrize(("body", "expected"), HEALTHCHECKS)
def test_healthcheck(body: str, expected: Healthcheck) -> None:
    body = body if body.startswith("{") else "{" + body + "}"
    assert web(f"command: x\nhealthcheck: {body}").healthcheck == expected


NETWORKS: list[tuple[str, Network]] = [
    ("n:", Network("n")),
    ("n: {driver: bridge, internal: true}", Network("n", internal=True)),
    ("n: {internal: 'false', enable_ipv6: true}", Network("n", enable_ipv6=True)),
    ("n: {ipam: {config: [{subnet: 10.9.0.0/16, gateway: 10.9.255.254}]}}",
     Network("n", subnet=ipaddress.IPv4Network("10.9.0.0/16"),
             gateway=ipaddress.IPv4Address("10.9.255.254"))),
    ("n: {enable_ipv6: true, ipam: {driver: default, config: [{subnet: 'fd00:1::/64',"
     " gateway: 'fd00:1::fe'}, {subnet: 192.168.7.0/29}]}}",
     Network("n", subnet=ipaddress.IPv4Network("192.168.7.0/29"), enable_ipv6=True,
             subnet6=ipaddress.IPv6Network("fd00:1::/64"),
             gateway6=ipaddress.IPv6Address("fd00:1::fe"))),
]  # fmt: skip


@pytest.mark.parametrize(("body", "expected"), NETWORKS)
def test_networks(body: str, expected: Network) -> None:
    stack = parse("services: {a: {command: x, networks: [n]}}\nnetworks:\n  " + body)
    assert stack.networks == (expected,)


def test_network_order_and_implicit_default() -> None:
    stack = parse("""
        services:
          a: {command: x}
          b: {command: x, networks: [z, y]}
        networks: {z: , y: }
    """)
    assert [n.name for n in stack.networks] == ["z", "y", "default"]
    assert stack.service("b").networks == (Attachment("z"), Attachment("y"))
    # Declared `default` configures it, in file order; no second one is added.
    stack = parse("""
        services: {a: {command: x}}
        networks:
          default: {internal: true}
          other:
    """)
    assert stack.networks == (Network("default", internal=True), Network("other"))
    # Every service on declared networks: no `default` at all.
    assert [
        n.name
        for n in parse("services: {a: {command: x, networks: [n]}}\nnetworks: {n: }").networks
    ] == ["n"]


def test_services_keep_file_order_and_version_is_silent() -> None:
    stack = parse("version: '3'\nservices: {b: {command: x}, a: {command: x}, C1: {command: x}}")
    assert [s.name for s in stack.services] == ["b", "a", "C1"]
    assert stack.warnings == ()


# --- stack name ------------------------------------------------------------------------

NAMES: list[tuple[dict[str, Any], str, str]] = [
    ({"default_project": "My Project!"}, "", "myproject"),
    ({"default_project": "__x.y-Z"}, "", "xy-z"),
    ({"default_project": "dir"}, "name: from-file\n", "from-file"),
    ({"default_project": "dir", "project_name": "cli"}, "name: from-file\n", "cli"),
    ({"default_project": "dir"}, "name: ${STACK:-fallback}\n", "fallback"),
    ({"default_project": "a" * 30, "project_name": "b" * 24}, "", "b" * 24),
]  # fmt: skip


@pytest.mark.parametrize(("kw", "header", "expected"), NAMES)
def test_stack_name(kw: dict[str, Any], header: str, expected: str) -> None:
    text = header + "services: {a: {command: x}}"
    assert parse_stack(text, source="s", **kw).name == expected


# --- problems: exact path, line and message ---------------------------------------------

# Prefixes: S opens service `a` (its next key is on line 4), N opens top-level networks
# (the next line is 3).
S = "services:\n  a:\n    command: x\n"
N = "services: {a: {command: x}}\nnetworks:\n"

ERRORS: list[tuple[str, str, str, int | None, str]] = [
    # id, stack, path, line, message fragment
    ("yaml-syntax", "services:\n  a: {command: x\n  b: 1\n", "(file)", 3, "invalid YAML"),
    ("empty", "", "(file)", None, 'needs "services:"'),
    ("comment-only", "# nothing\n", "(file)", None, 'needs "services:"'),
    ("top-list", "- a\n", "(file)", 1, "expected a mapping, got a list"),
    ("no-services", "networks: {}\n", "services", None, 'needs "services:"'),
    ("empty-services", "services: {}\n", "services", 1, "at least one service"),
    ("services-list", "services: [a]\n", "services", 1, "expected a mapping, got a list"),
    ("duplicate-key", "services:\n  a: {command: x}\n  a: {command: y}\n", "services.a", 3,
     'key "a" is given twice (lines 2, 3)'),
    ("bad-name", "name: My App\nservices: {a: {command: x}}\n", "name", 1,
     'got "My App"'),
    ("long-name", f"name: {'a' * 201}\nservices: {{a: {{command: x}}}}\n", "name", 1,
     "linkd limits stack names to 200"),
    ("service-name", "services:\n  _a: {command: x}\n", "services._a", 2,
     "(Compose's rule)"),
    ("service-dns", f"services:\n  a.{'b' * 64}: {{command: x}}\n", f"services.a.{'b' * 64}", 2,
     "is not a DNS name"),
    ("service-case", "services:\n  a: {command: x}\n  A: {command: x}\n", "services.A", 3,
     "only in case"),
    ("replica-clash", "services:\n  a: {command: x, scale: 2}\n  a-2: {command: x}\n",
     "services.a-2", 3, "replica 2 of service a"),
    ("nothing-to-run", "services:\n  a:\n    user: x\n", "services.a", 2, 'needs "command"'),
    ("null-service", "services:\n  a:\n", "services.a", 2, 'needs "command"'),
    ("container-name", S + "    container_name: -web\n",
     "services.a.container_name", 4, "(Docker's rule)"),
    ("container-name-replicas", S + "    container_name: web\n    scale: 2\n",
     "services.a.container_name", 4, "a name belongs to one container"),
    ("container-name-clash", "services:\n  a: {command: x, container_name: b-1}\n"
     "  b: {command: x}\n", "services.b", 3, "b-1 would name both"),
    ("command-type", "services:\n  a:\n    command: {x: 1}\n", "services.a.command", 3,
     "expected a string, got a mapping"),
    ("command-quote", "services:\n  a:\n    command: echo 'x\n", "services.a.command", 3,
     "No closing quotation"),
    ("command-item", "services:\n  a:\n    command: [a, [b]]\n", "services.a.command[1]", 3,
     "expected a string, got a list"),
    ("env-item", S + "    environment: ['=v']\n",
     "services.a.environment[0]", 4, 'expected KEY=VALUE or KEY, got "=v"'),
    ("env-value", S + "    environment:\n      A: [1]\n",
     "services.a.environment.A", 5, "expected a string, got a list"),
    ("port-short", S + "    ports: ['80', '80:x']\n",
     "services.a.ports[1]", 4,
     'expected a port like "8080:80", "127.0.0.1:8080:80/udp" or "80", got "80:x"'),
    ("port-range", S + "    ports:\n      - 70000:80\n",
     "services.a.ports[0]", 5, "out of range"),
    ("port-zero", S + "    ports: ['0:80']\n",
     "services.a.ports[0]", 4, "port 0"),
    ("port-lengths", S + "    ports: ['8000-8002:80-81']\n",
     "services.a.ports[0]", 4, "differ in length"),
    ("port-proto", S + "    ports: ['80/icmp']\n",
     "services.a.ports[0]", 4, "unknown protocol"),
    ("port-ipv6", S + "    ports: ['::1:80:80']\n",
     "services.a.ports[0]", 4, "in brackets"),
    ("port-host-ip", S + "    ports: ['localhost:80:80']\n",
     "services.a.ports[0]", 4, 'got "localhost"'),
    ("port-long-target", S + "    ports:\n      - {published: 80}\n",
     "services.a.ports[0]", 5, "needs a target"),
    ("port-long-lengths",
     S + "    ports:\n      - target: 80\n        published: 80-81\n",
     "services.a.ports[0].published", 6, "differ in length"),
    ("port-long-name", S + "    ports: [{target: 80, name: 'a b'}]\n",
     "services.a.ports[0].name", 4, "RFC 6335"),
    ("port-twice",
     "services:\n  a: {command: x, ports: ['8080:80']}\n"
     "  b: {command: x, ports: ['0.0.0.0:8080:81']}\n",
     "services.b.ports[0]", 3, "already published by services.a.ports[0] (line 2)"),
    ("port-range-overlap",
     "services:\n  a: {command: x, ports: ['8000-8010:8000-8010/udp']}\n"
     "  b: {command: x, ports: [{target: 53, published: 8010, protocol: udp}]}\n",
     "services.b.ports[0]", 3, "host port 8010/udp"),
    ("port-replicas", S + "    scale: 2\n    ports: ['8080:80']\n",
     "services.a.ports[0]", 5, "2 replicas"),
    ("expose", S + "    expose: ['80:80']\n",
     "services.a.expose[0]", 4, 'expected a port like "80", "8000-8010" or "53/udp"'),
    ("link-unknown", S + "    links: [b]\n",
     "services.a.links[0]", 4, 'unknown service "b"'),
    ("link-form", S + "    links: ['b:c:d']\n",
     "services.a.links[0]", 4, 'expected "service" or "service:alias"'),
    ("depends-unknown", S + "    depends_on: [b]\n",
     "services.a.depends_on[0]", 4, 'unknown service "b"'),
    ("depends-condition", S + "    depends_on:\n      a: {condition: up}\n",
     "services.a.depends_on.a.condition", 5, 'got "up"'),
    ("depends-self", S + "    depends_on: [a]\n",
     "services.a.depends_on[0]", 4, "service a depends on itself"),
    ("link-self", S + "    links: [a]\n",
     "services.a.links[0]", 4, "service a depends on itself"),
    ("cycle", "services:\n  web: {command: x, depends_on: [db]}\n"
     "  db: {command: x, depends_on: {web: }}\n",
     "services.web.depends_on[0]", 2, "dependency cycle: web -> db -> web"),
    ("cycle-via-link",
     "services:\n  a: {command: x, depends_on: [b]}\n  b: {command: x, links: ['c:cc']}\n"
     "  c: {command: x, depends_on: [a]}\n",
     "services.a.depends_on[0]", 2, "dependency cycle: a -> b -> c -> a"),
    ("healthy-needs-check",
     "services:\n  a: {command: x, depends_on: {b: {condition: service_healthy}}}\n"
     "  b: {command: x}\n",
     "services.a.depends_on.b", 2, "needs service b to have a healthcheck"),
    ("health-test", S + "    healthcheck:\n      test: [RUN, x]\n",
     "services.a.healthcheck.test", 5, '["CMD-SHELL", "command"]'),
    ("health-retries", S + "    healthcheck: {test: x, retries: 0}\n",
     "services.a.healthcheck.retries", 4, "expected an integer >= 1, got 0"),
    ("health-duration", S + "    healthcheck:\n      test: x\n      interval: 10\n",
     "services.a.healthcheck.interval", 6, '"1m30s"'),
    ("health-zero", S + "    healthcheck: {test: x, timeout: 0s}\n",
     "services.a.healthcheck.timeout", 4, "at least 1ms"),
    ("health-conflict", S + "    healthcheck: {test: x, disable: true}\n",
     "services.a.healthcheck.test", 4, "disable is true"),
    ("restart", S + "    restart: yes\n",
     "services.a.restart", 4, '"on-failure:N"'),
    ("restart-count", S + "    restart: on-failure:0\n",
     "services.a.restart", 4, "N >= 1"),
    ("scale-zero", S + "    scale: 0\n",
     "services.a.scale", 4, "expected an integer >= 1"),
    ("scale-type", S + "    scale: two\n",
     "services.a.scale", 4, 'expected an integer, got "two"'),
    ("scale-vs-replicas", S + "    scale: 2\n    deploy: {replicas: 3}\n",
     "services.a.scale", 4, "differs from deploy.replicas 3"),
    ("stop-signal", S + "    stop_signal: SIGNOPE\n",
     "services.a.stop_signal", 4, 'got "SIGNOPE"'),
    ("stop-signal-number", S + "    stop_signal: 32\n",
     "services.a.stop_signal", 4, "not a Linux signal number"),
    ("bool", S + "    depends_on: {a: {required: maybe}}\n",
     "services.a.depends_on.a.required", 4, 'expected true or false, got "maybe"'),
    ("interp-required", "services:\n  a:\n    command: ${CMD:?set CMD}\n",
     "services.a.command", 3, "variable CMD is unset: set CMD"),
    ("interp-unclosed", "services:\n  a:\n    command: echo ${X\n", "services.a.command", 3,
     'unclosed "${"'),
    # networks
    ("net-unknown", S + "    networks: [front]\n",
     "services.a.networks[0]", 4, 'unknown network "front"'),
    ("net-unknown-map", S + "    networks:\n      front:\n",
     "services.a.networks.front", 5, 'unknown network "front"'),
    ("net-twice", S + "    networks: [default, default]\n",
     "services.a.networks[1]", 4, "listed twice"),
    ("net-driver", N + "  n:\n    driver: macvlan\n",
     "networks.n.driver", 4, 'expected driver "bridge"'),
    ("net-internal", N + "  n: {internal: 1}\n",
     "networks.n.internal", 3, "expected true or false, got 1"),
    ("net-ipam-driver", N + "  n: {ipam: {driver: dhcp}}\n",
     "networks.n.ipam.driver", 3, 'expected ipam driver "default"'),
    ("subnet", N + "  front:\n    ipam:\n      config:\n"
     "        - subnet: 10.0.0.0/33\n", "networks.front.ipam.config[0].subnet", 6, "10.5.0.0/24"),
    ("subnet-host-bits", N + "  n: {ipam: {config: [{subnet: 10.0.0.1/24}]}}\n",
     "networks.n.ipam.config[0].subnet", 3, "did you mean 10.0.0.0/24?"),
    ("subnet-small", N + "  n: {ipam: {config: [{subnet: 10.0.0.0/30}]}}\n",
     "networks.n.ipam.config[0].subnet", 3, "from /8 to /29"),
    ("subnet-big", N + "  n: {ipam: {config: [{subnet: 10.0.0.0/7}]}}\n",
     "networks.n.ipam.config[0].subnet", 3, "from /8 to /29"),
    ("subnet-loopback", N + "  n: {ipam: {config: [{subnet: 127.1.0.0/16}]}}\n",
     "networks.n.ipam.config[0].subnet", 3, "loopback"),
    ("subnet-two-v4", N + "  n:\n    ipam:\n      config:\n"
     "        - subnet: 10.1.0.0/24\n        - subnet: 10.2.0.0/24\n",
     "networks.n.ipam.config[1].subnet", 7, "at most one"),
    ("subnet-v6-needs-flag", N + "  n:\n    ipam:\n      config:\n"
     "        - subnet: fd00::/64\n", "networks.n.ipam.config[0].subnet", 6, "enable_ipv6: true"),
    ("gateway-outside", N + "  n:\n    ipam:\n      config:\n"
     "        - subnet: 10.1.0.0/24\n          gateway: 10.2.0.1\n",
     "networks.n.ipam.config[0].gateway", 7, "outside subnet 10.1.0.0/24"),
    ("gateway-broadcast", N + "  n:\n    ipam:\n      config:\n"
     "        - subnet: 10.1.0.0/24\n          gateway: 10.1.0.255\n",
     "networks.n.ipam.config[0].gateway", 7, "broadcast"),
    ("gateway-family", N + "  n: {ipam: {config: [{subnet: 10.1.0.0/24, gateway: 'fd00::1'}]}}\n",
     "networks.n.ipam.config[0].gateway", 3, "expected an IPv4 address"),
    ("ipam-no-subnet", N + "  n: {ipam: {config: [{gateway: 10.0.0.1}]}}\n",
     "networks.n.ipam.config[0]", 3, "needs a subnet"),
    ("overlap", N + "  front: {ipam: {config: [{subnet: 10.0.0.0/16}]}}\n"
     "  back:\n    ipam: {config: [{subnet: 10.0.3.0/24}]}\n",
     "networks.back.ipam.config[0].subnet", 5,
     "subnet 10.0.3.0/24 of network back overlaps subnet 10.0.0.0/16 of network front (line 3)"),
    ("static-outside", S + "    networks:\n      n: {ipv4_address: 10.9.0.5}\n"
     "networks:\n  n: {ipam: {config: [{subnet: 10.1.0.0/24}]}}\n",
     "services.a.networks.n.ipv4_address", 5, "outside subnet 10.1.0.0/24 of network n"),
    ("static-gateway", S + "    networks:\n      n: {ipv4_address: 10.1.0.1}\n"
     "networks:\n  n: {ipam: {config: [{subnet: 10.1.0.0/24}]}}\n",
     "services.a.networks.n.ipv4_address", 5, "is the gateway of network n"),
    ("static-no-subnet", S + "    networks:\n      n: {ipv4_address: 10.1.0.9}\n"
     "networks:\n  n:\n", "services.a.networks.n.ipv4_address", 5, "to declare a subnet"),
    ("static-v6-no-subnet", S + "    networks:\n      default: {ipv6_address: 'fd00::9'}\n",
     "services.a.networks.default.ipv6_address", 5, "to declare a IPv6 subnet"),
    ("static-taken", "services:\n  a: {command: x, networks: {n: {ipv4_address: 10.1.0.9}}}\n"
     "  b: {command: x, networks: {n: {ipv4_address: 10.1.0.9}}}\n"
     "networks:\n  n: {ipam: {config: [{subnet: 10.1.0.0/24}]}}\n",
     "services.b.networks.n.ipv4_address", 3, "already taken by service a"),
    ("static-replicas",
     "services:\n  a: {command: x, scale: 2, networks: {n: {ipv4_address: 10.1.0.9}}}\n"
     "networks:\n  n: {ipam: {config: [{subnet: 10.1.0.0/24}]}}\n",
     "services.a.networks.n.ipv4_address", 2, "2 replicas"),
    ("alias", S + "    networks:\n      default: {aliases: ['a b']}\n",
     "services.a.networks.default.aliases[0]", 5, "expected a DNS name"),
    # env files
    ("env-file-missing", S + "    env_file: [nope.env]\n",
     "services.a.env_file[0]", 4, 'cannot read env file "nope.env": No such file or directory'),
    ("env-file-syntax", S + "    env_file: bad.env\n",
     "services.a.env_file", 4, 'env file "bad.env" line 2: expected KEY=VALUE'),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "path", "line", "fragment"),
    [case[1:] for case in ERRORS],
    ids=[case[0] for case in ERRORS],
)
def test_errors(text: str, path: str, line: int | None, fragment: str) -> None:
    error = problems(text, read_text=files({"bad.env": "A=1\nnot a line\n"}))
    matching = [m for p, n, m in error.problems if (p, n) == (path, line)]
    assert matching, f"no problem at {path} line {line}: {error.problems}"
    assert any(fragment in m for m in matching), matching
    at = f" (line {line})" if line is not None else ""
    assert f"stack.yaml: {path}{at}: " in str(error)


def test_all_problems_reported_at_once_in_file_order() -> None:
    error = problems("""
        services:
          a:
            command: x
            ports: ["x"]
            restart: sometimes
          b:
            stop_signal: NOPE
        networks:
          n: {driver: macvlan}
    """)
    assert [(path, line) for path, line, _ in error.problems] == [
        ("services.a.ports[0]", 4),
        ("services.a.restart", 5),
        ("services.b", 6),
        ("services.b.stop_signal", 7),
        ("networks.n.driver", 9),
    ]


def test_failed_command_is_not_also_reported_missing() -> None:
    error = problems("services:\n  a:\n    command: ${X:?no}\n")
    assert [p for p, _, _ in error.problems] == ["services.a.command"]


def test_explicit_project_name_error_has_no_line() -> None:
    error = problems("services: {a: {command: x}}", project_name="Bad Name")
    assert error.problems[0][:2] == ("name", None)
    error = problems("services: {a: {command: x}}", default_project="...")
    assert "set name:" in error.problems[0][2]


# --- warnings ----------------------------------------------------------------------------

WARNINGS: list[tuple[str, str, list[str]]] = [
    ("unknown-service-key",
     "services:\n  web:\n    command: x\n    gpus: all\n",
     ["services.web.gpus (line 4): not supported by linkd, ignored: no GPU access"]),
    ("typo-hint",
     "services:\n  web:\n    command: x\n    enviroment: {}\n",
     ['services.web.enviroment (line 4): unknown key, ignored (did you mean "environment"?)']),
    ("top-level", "services: {a: {command: x}}\nmodels:\n  llm: {}\n",
     ["models (line 2): not supported by linkd, ignored: no model runner"]),
    ("extensions-are-silent",
     "x-top: 1\nservices:\n  a:\n    command: x\n    x-mine: {}\n"
     "    networks: {n: {x-y: 1}}\nnetworks:\n  n: {x-z: 2}\n", []),
    ("network-unsupported",
     "services: {a: {command: x}}\nnetworks:\n  n:\n    attachable: true\n    labels: [a]\n",
     ["networks.n.attachable (line 4): not supported by linkd, ignored",
      "networks.n.labels (line 5): not supported by linkd, ignored"]),
    ("deploy-keys",
     "services:\n  a:\n    command: x\n    deploy:\n      replicas: 2\n      mode: global\n",
     ["services.a.deploy.mode (line 6): not supported by linkd, ignored"]),
    ("port-long-unknown",
     "services:\n  a:\n    command: x\n    ports:\n      - target: 80\n        modes: host\n",
     ['services.a.ports[0].modes (line 6): unknown key, ignored (did you mean "mode"?)']),
    ("unset-variable-once",
     "services:\n  a:\n    command: echo $NOPE ${NOPE}\n    user: ${NOPE}\n",
     ["services.a.command (line 3): variable NOPE is not set, using an empty string"]),
    ("health-without-test",  # Compose keeps the image's test
     "services:\n  a:\n    command: x\n    healthcheck: {retries: 2}\n",
     ["services.a.healthcheck (line 4): a healthcheck without a test: the image's "
      "HEALTHCHECK applies as the image gives it (retries not applied); write the test here "
      "to change them"]),
    ("port-mode-and-app-protocol-are-compose-keys",
     "services:\n  a:\n    command: x\n    ports:\n      - {target: 80, mode: host, "
     "app_protocol: http}\n", []),
    ("overlay-is-read-without-a-word",  # the runtime says what it does with it
     "services: {a: {command: x}}\nnetworks:\n  n: {driver: overlay}\n", []),
    ("optional-dependency",
     "services:\n  a:\n    command: x\n    depends_on:\n      b: {required: false}\n",
     ["services.a.depends_on.b (line 5): optional dependency on unknown service b, ignored"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "expected"), [c[1:] for c in WARNINGS], ids=[c[0] for c in WARNINGS]
)
def test_warnings(text: str, expected: list[str]) -> None:
    assert list(parse(text).warnings) == expected


# --- YAML details ------------------------------------------------------------------------


def test_merge_keys_and_anchors() -> None:
    stack = parse("""
        x-base: &base
          restart: always
          environment: &env {A: "1", B: "2"}
        x-more: &more
          restart: "no"
          stop_signal: INT
        services:
          a:
            <<: [*base, *more]
            command: x
            environment:
              <<: *env
              B: over
              C: "3"
    """)
    a = stack.service("a")
    assert a.restart == RestartPolicy("always")  # the first merge source wins
    assert a.stop_signal == "SIGINT"
    assert a.environment == (("A", "1"), ("B", "over"), ("C", "3"))


# --- interpolation -----------------------------------------------------------------------

ENV = {"SET": "v", "EMPTY": "", "PORT": "8080"}
INTERPOLATIONS: list[tuple[str, str]] = [
    ("plain", "plain"),
    ("$SET", "v"),
    ("${SET}", "v"),
    ("a${SET}b$SET.c", "avbv.c"),
    ("$$SET", "$SET"),
    ("$${SET}", "${SET}"),
    ("${UNSET:-d}", "d"),
    ("${EMPTY:-d}", "d"),
    ("${EMPTY-d}", ""),
    ("${UNSET-d}", "d"),
    ("${SET:-d}", "v"),
    ("${SET:+alt}", "alt"),
    ("${EMPTY:+alt}", ""),
    ("${EMPTY+alt}", "alt"),
    ("${UNSET+alt}", ""),
    ("${UNSET:-${SET}}", "v"),
    ("${UNSET:-${ALSO:-x}y}", "xy"),
    ("${UNSET:-a}}", "a}"),
    # A "$" that starts no name stays (Compose's rule): bcrypt hashes, prices.
    ("$", "$"),
    ("a$ b", "a$ b"),
    ("${UNSET:-$2a$14$.}", "$2a$14$."),
    ("5$-$", "5$-$"),
]


@pytest.mark.parametrize(("text", "expected"), INTERPOLATIONS)
def test_interpolate(text: str, expected: str) -> None:
    unset: list[str] = []
    assert interpolate(text, ENV, unset.append) == expected
    assert unset == []


@pytest.mark.parametrize("text", ["${", "${}", "${1A}", "${A:x}", "${EMPTY:?}"])
def test_interpolate_errors(text: str) -> None:
    with pytest.raises(Bad):
        interpolate(text, ENV, lambda name: None)


def test_interpolation_applies_before_typing() -> None:
    service = web(
        """
        command: ["serve", "${SET}"]
        ports: ["${PORT}"]
        deploy: {replicas: "${N}"}
        depends_on: {db: {required: "${FLAG}"}}
        environment: {LITERAL: "$$HOME", FROM: "${SET}"}
        """,
        extra="  db: {command: x}\n",
        host_env={**ENV, "N": "2", "FLAG": "false"},
    )
    assert service.command == ("serve", "v")
    assert service.ports[0].start == 8080
    assert service.replicas == 2
    assert service.depends_on == (Dependency("db", required=False),)
    assert service.environment == (("LITERAL", "$HOME"), ("FROM", "v"))


# --- env_file ----------------------------------------------------------------------------


def test_env_file() -> None:
    read = files({
        "a.env": "# comment\n\nA=1\nexport B = two \nC='single $x'\nD=\"dq\\n\\\"x\\\"\"\n"
                 "E=v # trailing comment\nF=a#b\nHOME\nNOPE\n",
        "b.env": "A=from-b\nG=7\n",
    })  # fmt: skip
    service = web(
        """
        command: x
        env_file: [a.env, {path: b.env}, {path: missing.env, required: false}]
        environment: {G: over}
        """,
        host_env={"HOME": "/root"},
        read_text=read,
    )
    assert service.environment == (
        ("A", "from-b"),
        ("B", "two"),
        ("C", "single $x"),
        ("D", 'dq\n"x"'),
        ("E", "v"),
        ("F", "a#b"),
        ("HOME", "/root"),
        ("G", "over"),
    )


def test_env_file_without_reader() -> None:
    error = problems("services:\n  a:\n    command: x\n    env_file: a.env\n")
    assert error.problems == [
        ("services.a.env_file", 4, 'cannot read env file "a.env": no file reader given')
    ]


# --- scalar syntaxes ---------------------------------------------------------------------

DURATIONS: list[tuple[str, float, str]] = [
    ("0", 0.0, "0s"),
    ("10s", 10.0, "10s"),
    ("1m30s", 90.0, "1m30s"),
    ("90m", 5400.0, "1h30m"),
    ("1h", 3600.0, "1h"),
    ("1.5s", 1.5, "1.5s"),
    ("500ms", 0.5, "500ms"),
    ("1500us", 0.0015, "1.5ms"),
    ("2us", 2e-6, "2us"),
    ("2µs", 2e-6, "2us"),
    ("7ns", 7e-9, "7ns"),
    ("1h2m3.25s", 3723.25, "1h2m3.25s"),
]


@pytest.mark.parametrize(("text", "seconds", "formatted"), DURATIONS)
def test_durations(text: str, seconds: float, formatted: str) -> None:
    assert parse_duration(text) == seconds
    assert format_duration(seconds) == formatted
    assert parse_duration(formatted) == seconds


@pytest.mark.parametrize("text", ["", "10", "1d", "-1s", "s", ".s", "1 s", "1m 30s"])
def test_duration_errors(text: str) -> None:
    with pytest.raises(Bad):
        parse_duration(text)


PORTS: list[tuple[str, PortSpec]] = [
    ("80", PortSpec(80, 80, published=True)),
    ("8080:80", PortSpec(80, 80, host_start=8080, host_end=8080, published=True)),
    ("127.0.0.1:8080:80", PortSpec(80, 80, "tcp", "127.0.0.1", 8080, 8080, True)),
    ("127.0.0.1::80", PortSpec(80, 80, "tcp", "127.0.0.1", published=True)),
    ("8000-8010:9000-9010", PortSpec(9000, 9010, "tcp", None, 8000, 8010, True)),
    ("53/udp", PortSpec(53, 53, "udp", published=True)),
    ("5000:5000/SCTP", PortSpec(5000, 5000, "sctp", None, 5000, 5000, True)),
    ("[::1]:8080:80", PortSpec(80, 80, "tcp", "::1", 8080, 8080, True)),
    ("[fd00::0001]::80/udp", PortSpec(80, 80, "udp", "fd00::1", published=True)),
]


@pytest.mark.parametrize(("text", "expected"), PORTS)
def test_ports(text: str, expected: PortSpec) -> None:
    assert parse_port(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", ":80", "x", "80:", "1:2:3:4", "[::1]80", "[::1]:80", "[::1:80:80", "80/", "8-7",
     "65536", "a.b.c.d:80:80", "80:80:80"],
)  # fmt: skip
def test_port_errors(text: str) -> None:
    with pytest.raises(Bad):
        parse_port(text)


SIGNALS = [("SIGTERM", "SIGTERM"), ("term", "SIGTERM"), ("15", "SIGTERM"), ("IOT", "SIGABRT"),
           ("SIGRTMIN", "SIGRTMIN"), ("RTMIN+15", "SIGRTMIN+15"), ("50", "SIGRTMAX-14"),
           ("rtmax", "SIGRTMAX")]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), SIGNALS)
def test_signals(text: str, expected: str) -> None:
    assert parse_signal(text) == expected
    assert parse_signal(expected) == expected


# --- stack_to_dict -----------------------------------------------------------------------


def read_fixture(path: str) -> str:
    return (STACKS / path).read_text()


def round_trip(stack: Stack) -> Stack:
    dumped = yaml.safe_dump(stack_to_dict(stack), sort_keys=False)
    return parse_stack(dumped, source="dumped.yaml")


@pytest.mark.parametrize("name", sorted(p.name for p in STACKS.glob("*.yaml")))
def test_fixture_round_trip(name: str) -> None:
    stack = parse_stack(
        read_fixture(name),
        source=name,
        default_project="fixture",
        host_env={"USER": "tester"},
        read_text=read_fixture,
    )
    again = round_trip(stack)
    assert without_warnings(again) == without_warnings(stack)
    assert again.warnings == ()  # the normalized form is all understood keys
    assert stack_to_dict(again) == stack_to_dict(stack)


def test_round_trip_escapes_dollars_and_keeps_order() -> None:
    stack = parse(
        """
        services:
          z:
            command: ["echo", "$$HOME", "${V}"]
            environment: {Z: "1", A: "$$2"}
            networks: [b, a]
          a: {command: x, healthcheck: {test: NONE, interval: 1s}}
        networks: {b: , a: }
        """,
        host_env={"V": "cost $5"},
    )
    assert stack.service("z").command == ("echo", "$HOME", "cost $5")
    assert without_warnings(round_trip(stack)) == without_warnings(stack)


def test_stack_to_dict_shape() -> None:
    stack = parse_stack(
        read_fixture("demo.yaml"), source="demo.yaml", host_env={}, read_text=read_fixture
    )
    d = stack_to_dict(stack)
    assert list(d) == ["name", "services", "networks"]
    assert d["name"] == "demo"
    web_ = d["services"]["web"]
    assert web_["ports"] == [{"target": 8000, "published": "8080", "protocol": "tcp"}]
    assert web_["depends_on"] == {
        "api": {"condition": "service_healthy", "required": True, "restart": False}
    }
    assert web_["networks"] == {"front": None}
    assert web_["stop_grace_period"] == "5s"
    api = d["services"]["api"]
    assert api["healthcheck"]["test"] == ["CMD", "/bin/sh", "-c", "curl -fs localhost:9000/health"]
    assert api["healthcheck"]["interval"] == "5s"
    assert api["networks"] == {"front": None, "back": {"aliases": ["backend"]}}
    assert api["environment"]["GREETING"] == "hello $$USER"  # literal from the env file
    assert d["networks"]["back"] == {"driver": "bridge", "internal": True, "enable_ipv6": False}
    full = stack_to_dict(
        parse_stack(read_fixture("full.yaml"), source="full.yaml", read_text=read_fixture)
    )
    assert full["networks"]["edge"]["ipam"] == {
        "driver": "default",
        "config": [
            {"subnet": "10.10.0.0/24", "gateway": "10.10.0.254"},
            {"subnet": "fd00:10::/64"},
        ],
    }
    assert full["services"]["worker"]["scale"] == 3
    assert full["services"]["oneshot"]["healthcheck"]["test"] == ["NONE"]
    assert yaml.safe_load(yaml.safe_dump(full)) == full  # plain types only


def test_fixture_models() -> None:
    demo = parse_stack(read_fixture("demo.yaml"), source="demo.yaml", read_text=read_fixture)
    api = demo.service("api")
    assert api.environment == (
        ("LOG_LEVEL", "debug"),
        ("GREETING", "hello $USER"),
        ("CACHE", "cache:6379"),
        ("DATABASE_URL", "postgres://db:5432/app"),
    )
    assert api.links == (Link("cache", "redis"),)
    assert demo.service("cache").argv() == ("redis-server", "--port", "6379")
    assert [n.name for n in demo.networks] == ["front", "back"]
    full = parse_stack(read_fixture("full.yaml"), source="full.yaml")
    assert full.name == "full-stack"
    assert [n.name for n in full.networks] == ["edge", "default"]
    gateway = full.service("gateway")
    assert gateway.ports[-1] == PortSpec(53, 53, "udp", "0.0.0.0", 5353, 5353, True, "dns")
    assert gateway.networks[0].ipv6_address == ipaddress.IPv6Address("fd00:10::10")
    assert full.service("migrate").stop_signal == "SIGUSR1"
    assert full.service("oneshot").healthcheck == Healthcheck((), disabled=True)


# --- purity ------------------------------------------------------------------------------

_IO_MODULES = {"os", "io", "socket", "time", "pathlib", "subprocess", "shutil", "asyncio"}


# The pure packages (the import-linter contracts keep asyncio, sockets and subprocesses out
# of them; this keeps files out too: no os, pathlib or open()).
PURE = sorted(
    p for pkg in ("spec", "core", "dns", "conventions") for p in LINKD.glob(f"{pkg}/*.py")
)


@pytest.mark.parametrize("path", PURE, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_pure_modules_do_no_io(path: Path) -> None:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert not {a.name.split(".")[0] for a in node.names} & _IO_MODULES
        elif isinstance(node, ast.ImportFrom):
            assert (node.module or "").split(".")[0] not in _IO_MODULES
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id != "open", f"{path.name}:{node.lineno} calls open()"


# --- robustness: any value of the wrong type is a problem, never a crash -----------------

_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_ODD_VALUES: list[object] = [None, True, -1, "$", [None], {"a": [1]}]


def _paths(value: object, prefix: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out += _paths(item, (*prefix, index))
    return out


def _replaced(doc: Any, path: tuple[object, ...], new: object) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(doc, dict):
        return {k: (_replaced(v, rest, new) if k == head else v) for k, v in doc.items()}
    return [(_replaced(v, rest, new) if i == head else v) for i, v in enumerate(doc)]


def test_every_value_replaced_by_odd_values() -> None:
    name = "full.yaml"  # it has every key
    doc = yaml.safe_load(read_fixture(name))
    for path in _paths(doc):
        for odd in _ODD_VALUES:
            text = yaml.dump(_replaced(doc, path, odd), Dumper=_DUMPER, sort_keys=False)
            try:
                parse_stack(text, source=name, default_project="p", read_text=read_fixture)
            except SpecError as exc:
                assert exc.problems, (path, odd)
                for where, line, _ in exc.problems:
                    assert line is not None or where == "name", (path, odd, exc.problems)
