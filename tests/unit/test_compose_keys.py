"""Every Compose key has one answer (linkd.spec.compose_keys), the parser gives it, and the
README and docs/compose-keys.md say it."""

from __future__ import annotations

import re
from ipaddress import IPv4Network
from pathlib import Path

import pytest
import yaml

from linkd.spec import compose_keys, services
from linkd.spec.dump import stack_to_dict
from linkd.spec.stack_file import parse_stack

REPO = Path(__file__).resolve().parents[2]

# The keys of a service and of the top level in the Compose specification
# (compose-spec/schema/compose-spec.json, 2025).
SPEC_SERVICE_KEYS = {
    "annotations", "attach", "blkio_config", "build", "cap_add", "cap_drop", "cgroup",
    "cgroup_parent", "command", "configs", "container_name", "cpu_count", "cpu_percent",
    "cpu_period", "cpu_quota", "cpu_rt_period", "cpu_rt_runtime", "cpu_shares", "cpus",
    "cpuset", "credential_spec", "depends_on", "deploy", "develop", "device_cgroup_rules",
    "devices", "dns", "dns_opt", "dns_search", "domainname", "driver_opts", "entrypoint",
    "env_file", "environment", "expose", "extends", "external_links", "extra_hosts", "gpus",
    "group_add", "healthcheck", "hostname", "image", "init", "ipc", "isolation",
    "label_file", "labels", "links", "logging", "mac_address", "mem_limit",
    "mem_reservation", "mem_swappiness", "memswap_limit", "models", "network_mode",
    "networks", "oom_kill_disable", "oom_score_adj", "pid", "pids_limit", "platform",
    "ports", "post_start", "pre_stop", "privileged", "profiles", "provider", "pull_policy",
    "pull_refresh_after", "read_only", "restart", "runtime", "scale", "secrets",
    "security_opt", "shm_size", "stdin_open", "stop_grace_period", "stop_signal",
    "storage_opt", "sysctls", "tmpfs", "tty", "ulimits", "use_api_socket", "user",
    "userns_mode", "uts", "volumes", "volumes_from", "working_dir",
}  # fmt: skip
SPEC_TOP_KEYS = {"version", "name", "include", "services", "networks", "volumes", "secrets",
                 "configs", "models"}


def test_every_key_of_the_specification_has_one_answer() -> None:
    assert set(compose_keys.SERVICE) == SPEC_SERVICE_KEYS
    assert set(compose_keys.TOP_LEVEL) == SPEC_TOP_KEYS


def test_what_the_table_calls_read_is_what_the_parser_reads() -> None:
    read = {k for k, (h, _) in compose_keys.SERVICE.items() if h in ("supported", "differs")}
    # `extends` is resolved before the services are read (linkd.spec.extends)
    assert read == set(services._SERVICE_KEYS) - {"x-linkd"} | {"extends"}


@pytest.mark.parametrize("key", sorted(compose_keys.ignored(compose_keys.SERVICE)))
def test_an_ignored_service_key_gets_its_one_warning(key: str) -> None:
    stack = parse_stack(f"services:\n  a:\n    image: x\n    {key}: 1\n", source="s",
                        project_name="t")
    note = compose_keys.SERVICE[key][1]
    assert stack.warnings == (f"services.a.{key} (line 4): not supported by linkd, "
                              f"ignored: {note}",)


@pytest.mark.parametrize("key", sorted(compose_keys.ignored(compose_keys.TOP_LEVEL)))
def test_an_ignored_top_level_key_gets_its_one_warning(key: str) -> None:
    stack = parse_stack(f"services: {{a: {{command: x}}}}\n{key}: {{}}\n", source="s",
                        project_name="t")
    assert len(stack.warnings) == 1 and compose_keys.TOP_LEVEL[key][1] in stack.warnings[0]


def reference_table() -> str:
    rows = ["| key | where | linkd | how, or what instead |", "|---|---|---|---|"]
    for where, table in (("top level", compose_keys.TOP_LEVEL),
                         ("service", compose_keys.SERVICE)):
        for key, (handling, note) in sorted(table.items()):
            rows.append(f"| `{key}` | {where} | {handling} | {note} |")
    return "\n".join(rows) + "\n"


def summary_table() -> str:
    rows = ["| linkd | Compose keys (a service's; `top:` the top level's) |", "|---|---|"]
    for handling in ("supported", "differs", "ignored", "refused"):
        keys = [f"`top:{k}`" for k, (h, _) in sorted(compose_keys.TOP_LEVEL.items())
                if h == handling]
        keys += [f"`{k}`" for k, (h, _) in sorted(compose_keys.SERVICE.items())
                 if h == handling]
        rows.append(f"| {handling} | {', '.join(keys) or '-'} |")
    return "\n".join(rows) + "\n"


def test_the_docs_and_the_readme_say_what_the_table_says() -> None:
    assert reference_table() in (REPO / "docs" / "compose-keys.md").read_text()
    assert summary_table() in (REPO / "README.md").read_text()


if __name__ == "__main__":  # print the tables, to paste after changing compose_keys
    print(summary_table())
    print(reference_table())


@pytest.mark.parametrize("extra", ["", "    command: ./serve\n"])
def test_a_service_to_build_runs_its_image_never_the_hosts_files(extra: str) -> None:
    """Its command is meant for the image it builds (tests/unit/test_build_spec.py has
    the rest of `build:`)."""
    stack = parse_stack(f"services:\n  app:\n    build: .\n{extra}", source="s",
                        project_name="t")
    assert stack.service("app").image == "t-app" and stack.service("app").build is not None
    with_image = parse_stack("services:\n  app:\n    build: .\n    image: app:1\n",
                             source="s", project_name="t")
    assert with_image.service("app").image == "app:1"


def test_extra_hosts_in_every_form_compose_takes() -> None:
    from linkd.core.hosts import hosts_file
    from tests.planning import realize

    text = """
services:
  app:
    command: x
    extra_hosts:
      - "somehost:162.242.195.82"
      - "otherhost=50.31.209.229"
      - "v6host:::1"
      - "bracketed:[fd00::5]"
      - "host.docker.internal:host-gateway"
  peer:
    command: x
    extra_hosts: {db.local: 10.1.2.3, multi: ["10.1.2.4", "fd00::6"]}
"""
    stack = parse_stack(text, source="s", project_name="t")
    assert stack.service("app").extra_hosts == (
        ("somehost", "162.242.195.82"), ("otherhost", "50.31.209.229"), ("v6host", "::1"),
        ("bracketed", "fd00::5"), ("host.docker.internal", "host-gateway"))
    assert stack.service("peer").extra_hosts == (
        ("db.local", "10.1.2.3"), ("multi", "10.1.2.4"), ("multi", "fd00::6"))
    plan = realize(stack, {"default": IPv4Network("10.87.7.0/24")})
    app = plan.container("app-1")
    gateway = str(app.interfaces[0].gateway)
    hosts = hosts_file(plan, app)
    assert "162.242.195.82\tsomehost\n" in hosts and "::1\tv6host\n" in hosts
    assert f"{gateway}\thost.docker.internal\n" in hosts  # the host, seen from the bridge
    assert "db.local" not in hosts  # peer's, not app's
    again = parse_stack(yaml.safe_dump(stack_to_dict(stack)), source="dumped",
                        project_name="t")
    assert again.service("app").extra_hosts == stack.service("app").extra_hosts


@pytest.mark.parametrize(("entry", "fragment"), [
    ('"nohost"', 'expected "NAME:ADDRESS"'),
    ('"db:not-an-ip"', "expected an IP address or host-gateway for db"),
    ('"bad host:1.2.3.4"', "expected a DNS name"),
])
def test_bad_extra_hosts_name_the_entry(entry: str, fragment: str) -> None:
    from linkd.errors import SpecError

    with pytest.raises(SpecError) as info:
        parse_stack(f"services:\n  a:\n    command: x\n    extra_hosts: [{entry}]\n",
                    source="s", project_name="t")
    assert any(p == "services.a.extra_hosts[0]" and fragment in m
               for p, _, m in info.value.problems), info.value.problems


def test_extra_hosts_are_answered_by_dns_to_their_container_only() -> None:
    from dnslib import DNSRecord

    from linkd.dns.answers import Answered, Forward, answer
    from linkd.dns.zone import build_zone
    from tests.planning import realize

    stack = parse_stack("services:\n  app:\n    command: x\n    extra_hosts: "
                        "['legacy.db:10.9.9.9']\n  other:\n    command: x\n",
                        source="s", project_name="t")
    plan = realize(stack, {"default": IPv4Network("10.87.7.0/24")})
    zone = build_zone([plan])

    def ask(container: str) -> object:
        query = DNSRecord.question("legacy.db").pack()
        return answer(zone, query, plan.container(container).interfaces[0].address)

    mine = ask("app-1")
    assert isinstance(mine, Answered)
    assert [str(r.rdata) for r in DNSRecord.parse(mine.data).rr] == ["10.9.9.9"]
    assert isinstance(ask("other-1"), Forward)  # not linkd's name for it: upstream's


def test_labels_in_both_forms_reach_the_plan_and_filter_ps() -> None:
    from linkd.cli.reading import table
    from linkd.core.state import ContainerState, StackState, to_plain
    from tests.planning import realize

    stack = parse_stack(
        "services:\n"
        "  web:\n    command: x\n    labels: {tier: front, com.example.owner: ops}\n"
        "  db:\n    command: x\n    labels: [tier=back, backup]\n",
        source="s", project_name="t")
    assert stack.service("db").labels == (("tier", "back"), ("backup", ""))
    plan = realize(stack, {"default": IPv4Network("10.87.7.0/24")})
    assert plan.container("web-1").labels == (("tier", "front"), ("com.example.owner", "ops"))
    state = to_plain(StackState(plan, "s", "up", 1, tuple(
        ContainerState(c.name, status="running") for c in plan.containers)))
    assert "web-1" in table(state) and "db-1" in table(state)
    front = table(state, [("tier", "front")])
    assert "web-1" in front and "db-1" not in front
    assert "db-1" in table(state, [("backup", None)]) and "web-1" not in table(
        state, [("backup", None)])
    assert "web-1" not in table(state, [("tier", "front"), ("backup", None)])


def test_ulimits_in_compose_forms() -> None:
    from linkd.errors import SpecError

    stack = parse_stack("services:\n  a:\n    command: x\n    ulimits:\n      nproc: 65535\n"
                        "      nofile: {soft: 20000, hard: 40000}\n      core: -1\n",
                        source="s", project_name="t")
    assert stack.service("a").limits.ulimits == (
        ("core", -1, -1), ("nofile", 20000, 40000), ("nproc", 65535, 65535))
    again = parse_stack(yaml.safe_dump(stack_to_dict(stack)), source="d", project_name="t")
    assert again.service("a").limits.ulimits == stack.service("a").limits.ulimits
    for bad, fragment in (("nofiles: 10", "unknown ulimit 'nofiles'"),
                          ("nofile: {soft: 10}", "needs both soft and hard"),
                          ("nofile: {soft: 20, hard: 10}", "soft 20 is above hard 10"),
                          ("nofile: -5", "0 or more, or -1")):
        with pytest.raises(SpecError, match=re.escape(fragment)):
            parse_stack(f"services:\n  a:\n    command: x\n    ulimits: {{{bad}}}\n",
                        source="s", project_name="t")


PROFILED = """
services:
  web: {command: x, depends_on: {db: {condition: service_started, required: false}}}
  db: {command: x, profiles: [storage]}
  debug: {command: x, profiles: [debug, tools]}
"""


@pytest.mark.parametrize(("active", "started"), [
    ("", {"web"}),
    ("storage", {"web", "db"}),
    ("tools,storage", {"web", "db", "debug"}),
    ("*", {"web", "db", "debug"}),
])
def test_profiles_start_only_the_active_ones(active: str, started: set[str]) -> None:
    stack = parse_stack(PROFILED, source="s", project_name="t",
                        host_env={"COMPOSE_PROFILES": active})
    assert {s.name for s in stack.services} == started


def test_a_needed_service_of_an_inactive_profile_is_named() -> None:
    from linkd.errors import SpecError

    text = PROFILED.replace(", required: false", "")
    with pytest.raises(SpecError, match="in a profile that is not active; activate it"):
        parse_stack(text, source="s", project_name="t")


def test_tmpfs_in_compose_forms() -> None:
    from linkd.errors import SpecError

    stack = parse_stack("services:\n  a:\n    command: x\n    tmpfs: [/run, "
                        "'/cache:size=64m,mode=1777,exec', '/ro:ro']\n  b:\n    command: x\n"
                        "    tmpfs: /scratch\n", source="s", project_name="t")
    assert stack.service("a").tmpfs == (
        ("/run", ("nodev", "noexec", "nosuid"), ""),
        ("/cache", ("exec", "nodev", "nosuid"), "size=64m,mode=1777"),
        ("/ro", ("nodev", "noexec", "nosuid", "ro"), ""))
    assert stack.service("b").tmpfs == (("/scratch", ("nodev", "noexec", "nosuid"), ""),)
    for bad, fragment in (("/proc/x", "would hide what linkd mounts"),
                          ("relative", "an absolute path"),
                          ("/run:size", "unknown tmpfs option")):
        with pytest.raises(SpecError, match=re.escape(fragment)):
            parse_stack(f"services:\n  a:\n    command: x\n    tmpfs: ['{bad}']\n",
                        source="s", project_name="t")
