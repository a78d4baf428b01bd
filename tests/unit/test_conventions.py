"""Golden tables for conventions as data (`linkd.conventions.render`, `linkd.conventions.schema`).

Expected variables are written out by hand from the peers' own code: Docker legacy links
(moby daemon/links/links.go `ToEnv`, links_test.go) and Kubernetes
(pkg/kubelet/envvars/envvars.go). Nothing here is
computed by the code under test.
"""

from __future__ import annotations

import textwrap
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest

from linkd.conventions.render import LinkTarget, Rendered, Variable, apply, combine, render
from linkd.conventions.schema import parse_convention
from linkd.core.model import PortSpec, Protocol
from linkd.errors import ConventionError, LinkdError
from linkd.runtime.stack.conventions import BUILTIN_DIR, builtin, builtin_names, read_convention

ADDR = "172.17.0.2"


def port(
    number: int, protocol: Protocol = "tcp", name: str | None = None, end: int = 0
) -> PortSpec:
    return PortSpec(number, end or number, protocol, name=name)


def link(
    alias: str = "db",
    *ports: PortSpec,
    service: str | None = None,
    addr: str = ADDR,
    addr6: IPv6Address | None = None,
    env: tuple[tuple[str, str], ...] = (),
    env_allow: tuple[str, ...] = (),
    templates: tuple[tuple[str, str], ...] = (),
) -> LinkTarget:
    """A link to replica 1 of `service` (the alias when not given), at `addr`."""
    service = service or alias
    peer = f"{service}-1"
    return LinkTarget(
        alias, service, peer, IPv4Address(addr), addr6, None, ports, env, env_allow, templates
    )


def env_of(name: str, *links: LinkTarget, linker: str = "web-1") -> dict[str, str]:
    return render(builtin(name), linker, links).env


def y(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


# -- docker-links (moby links.go) -------------------------------------------------------------


def test_docker_single_port_as_observed_on_docker_20_10() -> None:
    # moby links_test.go: `--link db:db` with -e POSTGRES_PASSWORD=x --expose 5432.
    target = link("db", port(5432), env=(("POSTGRES_PASSWORD", "x"),), env_allow=("*",))
    rendered = render(builtin("docker-links"), "web-1", [target])
    assert list(rendered.env.items()) == [
        ("DB_PORT", "tcp://172.17.0.2:5432"),
        ("DB_PORT_5432_TCP", "tcp://172.17.0.2:5432"),
        ("DB_PORT_5432_TCP_ADDR", "172.17.0.2"),
        ("DB_PORT_5432_TCP_PORT", "5432"),
        ("DB_PORT_5432_TCP_PROTO", "tcp"),
        ("DB_NAME", "/web-1/db"),
        ("DB_ENV_POSTGRES_PASSWORD", "x"),
    ]
    # "<ip> <alias> <hostname> <name>", the name once when it equals the hostname.
    assert rendered.hosts == ("172.17.0.2\tdb db-1",)


def test_docker_hosts_line_lists_alias_hostname_and_name() -> None:
    target = LinkTarget("db", "postgres", "postgres-1", IPv4Address(ADDR), hostname="pg")
    assert render(builtin("docker-links"), "web-1", [target]).hosts == (
        "172.17.0.2\tdb pg postgres-1",
    )


def test_docker_several_protocols_tcp_first_not_lowest() -> None:
    # withTCPPriority: every TCP port before any other; then by protocol name, then number.
    # The lower UDP 53 does not become <ALIAS>_PORT (Docker 20.10 chose it; current code not).
    target = link("dns", port(53, "udp"), port(443), port(9, "sctp"), port(80), addr="10.0.0.5")
    a = "10.0.0.5"
    expected = [("DNS_PORT", f"tcp://{a}:80")]
    for number, proto in ((80, "tcp"), (443, "tcp"), (9, "sctp"), (53, "udp")):
        prefix = f"DNS_PORT_{number}_{proto.upper()}"
        expected += [
            (prefix, f"{proto}://{a}:{number}"),
            (f"{prefix}_ADDR", a),
            (f"{prefix}_PORT", str(number)),
            (f"{prefix}_PROTO", proto),
        ]
    expected.append(("DNS_NAME", "/web-1/dns"))
    assert list(env_of("docker-links", target).items()) == expected


def test_docker_port_ranges_get_start_and_end() -> None:
    # links_test.go TestLinkPortRangeEnv: 6379-6381 gives the per-port variables for every
    # port and _START/_END/_PORT_START/_PORT_END named after the first. Runs need one
    # protocol: udp 6382 does not extend tcp 6379-6381; udp 5000-5001 is a run of its own.
    target = link("docker", port(6379, end=6381), port(6382, "udp"), port(5000, "udp", end=5001))
    env = env_of("docker-links", target, linker="db")
    ranges = {k: v for k, v in env.items() if k.endswith(("_START", "_END"))}
    assert ranges == {
        "DOCKER_PORT_6379_TCP_START": "tcp://172.17.0.2:6379",
        "DOCKER_PORT_6379_TCP_PORT_START": "6379",
        "DOCKER_PORT_6379_TCP_END": "tcp://172.17.0.2:6381",
        "DOCKER_PORT_6379_TCP_PORT_END": "6381",
        "DOCKER_PORT_5000_UDP_START": "udp://172.17.0.2:5000",
        "DOCKER_PORT_5000_UDP_PORT_START": "5000",
        "DOCKER_PORT_5000_UDP_END": "udp://172.17.0.2:5001",
        "DOCKER_PORT_5000_UDP_PORT_END": "5001",
    }
    per_port = {k for k in env if k.endswith("_ADDR")}
    assert per_port == {
        f"DOCKER_PORT_{n}_{p}_ADDR"
        for n, p in ((6379, "TCP"), (6380, "TCP"), (6381, "TCP"), (6382, "UDP"),
                     (5000, "UDP"), (5001, "UDP"))
    }  # fmt: skip
    assert env["DOCKER_PORT"] == "tcp://172.17.0.2:6379"
    assert env["DOCKER_NAME"] == "/db/docker"
    assert len(env) == 1 + 6 * 4 + 8 + 1


def test_docker_two_separate_consecutive_ports_are_a_range_too() -> None:
    # Docker sees exposed ports, not how they were written: 80 and 81 are a run.
    env = env_of("docker-links", link("web", port(81), port(80)))
    assert env["WEB_PORT_80_TCP_END"] == "tcp://172.17.0.2:81"


def test_docker_port_exposed_and_published_counts_once() -> None:
    env = env_of("docker-links", link("db", port(5432), port(5432)))
    assert len(env) == 1 + 4 + 1


def test_docker_alias_upper_case_dash_to_underscore_dot_kept() -> None:
    # links.go: strings.ToUpper, "-" -> "_"; no "." rewrite, no leading-digit fix.
    env = env_of("docker-links", link("my-db.internal", port(5432), service="db"))
    assert env["MY_DB.INTERNAL_PORT_5432_TCP_ADDR"] == ADDR
    assert env["MY_DB.INTERNAL_NAME"] == "/web-1/my-db.internal"
    env = env_of("docker-links", link("2fa", port(1)))
    assert "2FA_PORT" in env


def test_docker_service_without_ports_gets_only_its_name() -> None:
    assert env_of("docker-links", link("db")) == {"DB_NAME": "/web-1/db"}


# -- env propagation ---------------------------------------------------------------------------

PEER_ENV = (
    ("HOME", "/root"),
    ("PATH", "/bin"),
    ("POSTGRES_USER", "app"),
    ("POSTGRES_PASSWORD", "s3cret"),
    ("SECRET_KEY", "k"),
)


def test_env_propagates_only_what_the_allow_list_names_never_home_or_path() -> None:
    allow = ("POSTGRES_*", "HOME", "PATH")
    target = link("db", env=PEER_ENV, env_allow=allow)
    env = env_of("docker-links", target)
    assert {k: v for k, v in env.items() if "_ENV_" in k} == {
        "DB_ENV_POSTGRES_USER": "app",
        "DB_ENV_POSTGRES_PASSWORD": "s3cret",
    }
    linkd = env_of("linkd", target)
    assert {k for k in linkd if "_ENV_" in k} == {
        "LINKD_DB_ENV_POSTGRES_USER",
        "LINKD_DB_ENV_POSTGRES_PASSWORD",
    }


def test_env_propagates_nothing_without_an_allow_list() -> None:
    env = env_of("docker-links", link("db", env=PEER_ENV))
    assert not [k for k in env if "_ENV_" in k]


def test_env_allow_list_is_exact_names_or_patterns_case_sensitive() -> None:
    env = env_of("docker-links", link("db", env=PEER_ENV, env_allow=("SECRET_KEY", "postgres_*")))
    assert [k for k in env if "_ENV_" in k] == ["DB_ENV_SECRET_KEY"]


# -- kubernetes (envvars.go) ------------------------------------------------------------------


def test_kubernetes_multi_port_named_service_in_declared_order() -> None:
    target = link(
        "api",
        port(8080, name="http"),
        port(9090, name="metrics-v2"),
        port(53, "udp", name="dns"),
        port(7000),
        addr="10.1.0.4",
    )
    a = "10.1.0.4"
    expected = [
        ("API_SERVICE_HOST", a),
        ("API_SERVICE_PORT", "8080"),
        ("API_SERVICE_PORT_HTTP", "8080"),
        ("API_SERVICE_PORT_METRICS_V2", "9090"),
        ("API_SERVICE_PORT_DNS", "53"),
        ("API_PORT", f"tcp://{a}:8080"),
    ]
    for number, proto in ((8080, "tcp"), (9090, "tcp"), (53, "udp"), (7000, "tcp")):
        prefix = f"API_PORT_{number}_{proto.upper()}"
        expected += [
            (prefix, f"{proto}://{a}:{number}"),
            (f"{prefix}_PROTO", proto),
            (f"{prefix}_PORT", str(number)),
            (f"{prefix}_ADDR", a),
        ]
    rendered = render(builtin("kubernetes"), "web-1", [target])
    assert list(rendered.env.items()) == expected
    assert rendered.hosts == ()


def test_kubernetes_first_port_is_the_first_declared_even_udp() -> None:
    # "First" = Ports[0], not the lowest and not TCP-first (contrast Docker).
    env = env_of("kubernetes", link("dns", port(53, "udp"), port(80)))
    assert env["DNS_SERVICE_PORT"] == "53"
    assert env["DNS_PORT"] == "udp://172.17.0.2:53"


def test_kubernetes_name_transform_dots_dashes_leading_digit() -> None:
    # makeEnvVariableName: upper-case, "." and "-" -> "_", leading digit -> "_" prefix.
    env = env_of("kubernetes", link("my-db.internal", port(5432, name="pg-main"), service="db"))
    assert env["MY_DB_INTERNAL_SERVICE_HOST"] == ADDR
    assert env["MY_DB_INTERNAL_SERVICE_PORT_PG_MAIN"] == "5432"
    assert env_of("kubernetes", link("9p", port(1)))["_9P_SERVICE_PORT"] == "1"


def test_kubernetes_has_no_name_env_or_range_variables() -> None:
    target = link("db", port(6379, end=6381), env=PEER_ENV, env_allow=("*",))
    env = env_of("kubernetes", target)
    assert not [k for k in env if k.endswith(("_NAME", "_START", "_END")) or "_ENV_" in k]


def test_kubernetes_service_without_ports_gets_its_host_only() -> None:
    assert env_of("kubernetes", link("db")) == {"DB_SERVICE_HOST": ADDR}


# -- linkd ---------------------------------------------------------------------------------------


def test_linkd_namespaced_variables() -> None:
    target = link(
        "db", port(5432, name="pg"), port(9187, name="metrics"), addr6=IPv6Address("fd00::2")
    )
    assert env_of("linkd", target) == {
        "LINKD_DB_HOST": ADDR,
        "LINKD_DB_HOST6": "fd00::2",
        "LINKD_DB_SERVICE": "db",
        "LINKD_DB_PORT": "5432",
        "LINKD_DB_PROTO": "tcp",
        "LINKD_DB_URL": "tcp://172.17.0.2:5432",
        "LINKD_DB_PORT_PG": "5432",
        "LINKD_DB_URL_PG": "tcp://172.17.0.2:5432",
        "LINKD_DB_PORT_METRICS": "9187",
        "LINKD_DB_URL_METRICS": "tcp://172.17.0.2:9187",
    }


def test_linkd_without_ipv6_or_ports_and_with_any_alias_gives_shell_names() -> None:
    env = env_of("linkd", link("my-db.internal", service="db"))
    assert env == {"LINKD_MY_DB_INTERNAL_HOST": ADDR, "LINKD_MY_DB_INTERNAL_SERVICE": "db"}


def test_linkd_is_the_default() -> None:
    from linkd.conventions.render import DEFAULT

    assert builtin(DEFAULT).name == "linkd"


# -- urls ----------------------------------------------------------------------------------------

PG_URL = "postgres://{env[POSTGRES_USER]}:{env[POSTGRES_PASSWORD]}@{addr}:{port}/{env[POSTGRES_DB]}"


def test_urls_from_per_link_templates() -> None:
    target = link(
        "db",
        port(5432),
        port(9187, name="metrics"),
        env=(*PEER_ENV, ("POSTGRES_DB", "shop")),
        templates=(
            ("DATABASE_URL", PG_URL),
            ("DB_METRICS", "http://{alias}:{ports[metrics]}/metrics"),
        ),
    )
    assert env_of("urls", target) == {
        "DATABASE_URL": "postgres://app:s3cret@172.17.0.2:5432/shop",
        "DB_METRICS": "http://db:9187/metrics",
    }


def test_urls_missing_peer_variable_names_link_variable_and_service() -> None:
    target = link("db", port(5432), env=PEER_ENV, templates=(("DATABASE_URL", PG_URL),))
    with pytest.raises(ConventionError) as caught:
        env_of("urls", target)
    message = str(caught.value)
    assert "links.db.templates.DATABASE_URL" in message
    assert "needs variable POSTGRES_DB from db's environment" in message
    assert str(BUILTIN_DIR / "urls.yaml") in message


@pytest.mark.parametrize(
    ("template", "fragment"),
    [
        ("tcp://{addr}:{port}", "{port} needs a port, but db exposes none"),
        ("{ports[http]}", "db has no port named http (it names no ports)"),
        ("{adress}", "unknown template field {adress}"),
        ("{addr", "never closed"),
    ],
)
def test_urls_bad_link_templates(template: str, fragment: str) -> None:
    with pytest.raises(ConventionError, match=r"links\.db\.templates\.X") as caught:
        env_of("urls", link("db", templates=(("X", template),)))
    assert fragment in str(caught.value)


# -- explicit environment, several links, several conventions -------------------------------


def test_apply_explicit_environment_wins_and_keeps_its_order() -> None:
    rendered = render(builtin("docker-links"), "web-1", [link("db", port(5432))])
    env = apply(rendered, [("PATH", "/bin"), ("DB_PORT", "5432")])
    assert env[:2] == (("PATH", "/bin"), ("DB_PORT", "5432"))
    assert dict(env)["DB_PORT"] == "5432"
    assert [k for k, _ in env].count("DB_PORT") == 1
    assert ("DB_PORT_5432_TCP_PORT", "5432") in env


def test_variables_remember_their_convention_and_link() -> None:
    rendered = render(builtin("linkd"), "web-1", [link("db"), link("cache")])
    assert rendered.variables[0] == Variable("LINKD_DB_HOST", ADDR, "linkd", "db")
    assert rendered.variables[-1].alias == "cache"


def test_two_links_that_collide_are_an_error_naming_both() -> None:
    links = [link("a-b", port(1), addr="10.0.0.1"), link("a_b", port(1), addr="10.0.0.2")]
    with pytest.raises(ConventionError) as caught:
        render(builtin("docker-links"), "web-1", links)
    message = str(caught.value)
    assert "A_B_PORT" in message and "link a-b" in message and "link a_b" in message


def test_combine_merges_equal_variables_and_refuses_different_ones() -> None:
    same = link("db", port(5432))
    docker = render(builtin("docker-links"), "web-1", [same])
    kube = render(builtin("kubernetes"), "web-1", [same])
    merged = combine(docker, kube)
    assert merged.env == docker.env | kube.env
    assert merged.hosts == docker.hosts
    udp_first = link("db", port(53, "udp"), port(80))
    with pytest.raises(ConventionError, match=r"DB_PORT.*docker-links.*kubernetes"):
        combine(*(render(builtin(n), "web-1", [udp_first]) for n in ("docker-links", "kubernetes")))


def test_empty_rendering() -> None:
    assert render(builtin("docker-links"), "web-1", []) == Rendered()


# -- built-ins and user files --------------------------------------------------------------------


def test_builtin_names() -> None:
    assert builtin_names() == ("docker-links", "kubernetes", "linkd", "urls")


def test_unknown_builtin_names_the_known_ones() -> None:
    with pytest.raises(ConventionError, match=r"no built-in convention 'k8s'.*kubernetes"):
        builtin("k8s")


def test_missing_builtin_directory_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConventionError, match="conventions directory is missing") as caught:
        builtin("linkd", tmp_path / "conventions")
    assert isinstance(caught.value, LinkdError) and caught.value.exit_code == 2


def test_a_new_convention_from_a_user_file_needs_no_code(tmp_path: Path) -> None:
    path = tmp_path / "spring.yaml"
    path.write_text(
        y(r"""
        name: spring
        version: 1
        names:
          Alias: {from: alias, case: lower, replace: [["[^a-z0-9]+", "."]]}
        variables:
          - each: first_port
            set:
              "SPRING_DATASOURCE_URL": "jdbc:postgresql://{addr}:{port}/{env[POSTGRES_DB]}"
          - each: named_port
            set:
              "APP_{PROTO}_{port_name}": "{{literal}} {Alias}:{port}"
        hosts:
          - "{addr}\t{Alias}.svc {alias}"
          - "{addr6}\t{Alias}.svc"
        """)
    )
    convention = read_convention(path)
    target = link("My_DB", port(5432, name="pg"), env=(("POSTGRES_DB", "shop"),))
    rendered = render(convention, "app-1", [target])
    assert rendered.env == {
        "SPRING_DATASOURCE_URL": "jdbc:postgresql://172.17.0.2:5432/shop",
        "APP_TCP_pg": "{literal} my.db:5432",
    }
    assert rendered.hosts == ("172.17.0.2\tmy.db.svc My_DB",)  # no IPv6 line without IPv6
    assert rendered.variables[0].convention == "spring"


@pytest.mark.parametrize("name", ["docker-links", "kubernetes", "linkd", "urls"])
def test_builtin_files_load_and_are_named_after_their_file(name: str) -> None:
    convention = read_convention(BUILTIN_DIR / f"{name}.yaml")
    assert convention.name == name and convention.description


# -- validation: every problem names the file, the key, the line and what is wrong ------------

GOOD_HEAD = "name: t\nversion: 1\n"


@pytest.mark.parametrize(
    ("body", "key", "line", "fragment"),
    [
        ("variable: []\n", "variable", 3, "unknown key (did you mean 'variables'?)"),
        ("variables: {}\n", "variables", 3, "expected a list, got a mapping"),
        ("hosts: [1.5]\n", "hosts[0]", 3, "expected a string, got 1.5"),
        (
            'variables:\n  - each: link\n    set:\n      X: "{adress}"\n',
            "variables[0].set.X",
            6,
            "unknown template field {adress} (did you mean 'addr'?)",
        ),
        (
            'variables:\n  - each: link\n    set:\n      X: "{port}"\n',
            "variables[0].set.X",
            6,
            "{port} is not available in each: link blocks; it is in each: first_port, port",
        ),
        (
            "names:\n  N: {from: port_name}\n"
            'variables:\n  - each: port\n    set:\n      "{N}": x\n',
            'variables[0].set."{N}"',
            8,
            "{N} (derived from port_name) is not available in each: port blocks",
        ),
        (
            'variables:\n  - each: link\n    set:\n      X: "{alias"\n',
            "variables[0].set.X",
            6,
            "the '{' at column 1 is never closed",
        ),
        (
            'variables:\n  - each: link\n    set:\n      X: "a}"\n',
            "variables[0].set.X",
            6,
            "a lone '}' at column 2",
        ),
        (
            'variables:\n  - each: link\n    set:\n      X: "{env}"\n',
            "variables[0].set.X",
            6,
            "{env} needs a name in brackets",
        ),
        (
            "variables:\n  - each: link\n    set:\n      X: {port}\n",
            "variables[0].set.X",
            6,
            "expected a string, got a mapping (quote a template that starts with '{')",
        ),
        (
            "variables:\n  - each: ports\n    set: {}\n",
            "variables[0].each",
            4,
            "expected one of link, first_port, port, named_port, range, env, template",
        ),
        ("variables:\n  - each: link\n", "variables[0]", 4, "missing required key 'set'"),
        (
            'names:\n  A:\n    from: alias\n    replace: [["(", "_"]]\n',
            "names.A.replace[0][0]",
            6,
            "bad regular expression '('",
        ),
        (
            'names:\n  A:\n    from: alias\n    replace: [["a"]]\n',
            "names.A.replace[0]",
            6,
            "expected [pattern, replacement], got 1 items",
        ),
        ("names:\n  A: {from: addr}\n", "names.A.from", 4, "expected one of alias, service"),
        ("names:\n  A: {from: alias, case: title}\n", "names.A.case", 4, "got 'title'"),
        ("names:\n  port: {from: alias}\n", "names.port", 4, "it is a built-in field"),
        ("ports:\n  order: lowest\n", "ports.order", 4, "expected one of declared, tcp-first"),
        ("hosts: []\nhosts: []\n", "hosts", 4, "key 'hosts' is given twice"),
    ],
)
def test_bad_convention_files(body: str, key: str, line: int, fragment: str) -> None:
    with pytest.raises(ConventionError) as caught:
        parse_convention(GOOD_HEAD + body, "bad.yaml")
    problems = caught.value.problems
    assert [(k, n) for k, n, _ in problems] == [(key, line)], problems
    assert fragment in problems[0][2]
    assert str(caught.value).startswith(f"bad.yaml: {key} (line {line}): ")


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        ("", "(file)", "empty; a convention needs name and version"),
        ("name: [t\n", "(file)", "not valid YAML"),
        ("version: 1\n", "(file)", "missing required key 'name'"),
        ("name: t\n", "(file)", "missing required key 'version'"),
        ("name: t\nversion: 2\n", "version", "unknown schema version 2"),
        ("name: t\nversion: one\n", "version", "expected the integer 1"),
        ("name: t t\nversion: 1\n", "name", "expected letters, digits"),
        ("- name: t\n", "(file)", "expected a mapping, got a list"),
    ],
)
def test_bad_convention_file_tops(text: str, key: str, fragment: str) -> None:
    with pytest.raises(ConventionError) as caught:
        parse_convention(text, "bad.yaml")
    assert caught.value.problems[0][0] == key
    assert fragment in caught.value.problems[0][2]


def test_every_problem_is_reported_at_once() -> None:
    text = GOOD_HEAD + "ports: {order: x}\nvariables:\n  - each: nope\n    set: {}\nextra: 1\n"
    with pytest.raises(ConventionError) as caught:
        parse_convention(text, "bad.yaml")
    assert {k for k, _, _ in caught.value.problems} == {"ports.order", "variables[0].each", "extra"}


def test_a_bad_file_is_named_by_its_path(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text('name: mine\nversion: 1\nhosts: ["{adr}"]\n')
    with pytest.raises(ConventionError, match=f"^{path}: hosts\\[0\\] \\(line 3\\): unknown"):
        read_convention(path)
    with pytest.raises(ConventionError, match="cannot read"):
        read_convention(tmp_path / "absent.yaml")


def test_planning_reads_no_conventions_it_was_not_given() -> None:
    from ipaddress import IPv4Network

    from linkd.core.model import Attachment, Link, Network, Service, Stack
    from linkd.core.plan import realize

    on = (Attachment("default"),)
    stack = Stack(
        name="s",
        services=(
            Service("db", command=("sleep", "1"), networks=on),
            Service("web", command=("sleep", "1"), networks=on, links=(Link("db", "db"),)),
        ),
        networks=(Network("default"),),
    )
    with pytest.raises(ConventionError, match="convention built-in linkd was not loaded"):
        realize(stack, {"default": IPv4Network("10.87.0.0/24")})
    subnets = {"default": IPv4Network("10.87.0.0/24")}
    plan = realize(stack, subnets, conventions={"linkd": builtin("linkd")})
    assert dict(plan.container("web-1").env)["LINKD_DB_HOST"] == "10.87.0.2"
