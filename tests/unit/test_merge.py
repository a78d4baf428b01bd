"""Several files as one stack (issue 16 §4): Compose's merge rules (linkd.spec.merge),
`extends:`, `include:` (linkd.spec.project), the files found without `-f`, `linkd config
-f a -f b`, and the daemon's API reading only beneath the stack's directory."""

from __future__ import annotations

import contextlib
import os
import posixpath
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from linkd import loader
from linkd.cli import stacks
from linkd.cli.main import main
from linkd.core.api_schema import ApiError, parse_create
from linkd.errors import SpecError
from linkd.spec import documents, project
from linkd.spec.dump import stack_to_dict
from linkd.spec.nodes import Reader
from linkd.spec.stack_file import parse_stack


def reader_of(files: dict[str, str]) -> Any:
    def read(name: str) -> str:
        name = posixpath.normpath(name)
        if name not in files:
            raise FileNotFoundError(2, "No such file or directory", name)
        return files[name]

    return read


def merged(*texts: str, env: dict[str, str] | None = None,
           files: dict[str, str] | None = None) -> Any:
    """The document the texts make, merged in order, as plain data (no problems)."""
    r = Reader(env or {})
    roots = []
    for i, text in enumerate(texts):
        root = documents.compose(text)
        name = "a.yml" if i == 0 else f"f{i}.yml"
        if root is not None and i:
            documents.mark(root, name)
        roots.append((name, root))
    node = project.assemble(r, roots, documents.Files(reader_of(files or {}), None))
    assert r.problems == []
    return yaml.safe_load(yaml.serialize(node)) if node is not None else None


def web(*texts: str, **kwargs: Any) -> Any:
    return merged(*(f"services:\n  web:\n{_indent(t)}" for t in texts), **kwargs)["services"][
        "web"]


def _indent(text: str) -> str:
    return "".join(f"    {line}\n" for line in text.strip("\n").splitlines())


def stack(*texts: str, env: dict[str, str] | None = None,
          files: dict[str, str] | None = None) -> Any:
    """The stack the files make, as `linkd config` prints it."""
    overrides = [(f"f{i}.yml", t) for i, t in enumerate(texts[1:], 1)]
    read = reader_of(files or {})
    return stack_to_dict(parse_stack(texts[0], source="a.yml", project_name="t",
                                     host_env=env or {}, overrides=overrides,
                                     read_text=read))


def problems(*texts: str, files: dict[str, str] | None = None) -> str:
    with pytest.raises(SpecError) as info:
        stack(*texts, files=files)
    return str(info.value)


# --- the merge rules, one by one -----------------------------------------------------------


def test_mappings_merge_key_by_key_and_scalars_are_replaced() -> None:
    assert web("image: a\nuser: root\nhealthcheck: {interval: 5s, retries: 3}",
               "image: b\nworking_dir: /w\nhealthcheck: {retries: 5}") == {
        "image": "b", "user": "root", "working_dir": "/w",
        "healthcheck": {"interval": "5s", "retries": 5}}


def test_sequences_are_appended() -> None:
    assert web("security_opt: [a]", "security_opt: [b, a]")["security_opt"] == ["a", "b", "a"]
    assert merged("x-list: [1]", "x-list: [2]")["x-list"] == [1, 2]


def test_shell_commands_are_replaced_not_appended() -> None:
    got = web("command: [echo, foo]\nentrypoint: [sh, -c]\nhealthcheck: {test: [CMD, a]}",
              "command: [echo, bar]\nentrypoint: [bash]\nhealthcheck: {test: [CMD, b]}")
    assert got["command"] == ["echo", "bar"] and got["entrypoint"] == ["bash"]
    assert got["healthcheck"]["test"] == ["CMD", "b"]


def test_a_null_leaves_the_value_and_reset_removes_it() -> None:
    assert web("image: a\nuser: root", "user:")["user"] == "root"
    assert "user" not in web("image: a\nuser: root", "user: !reset null")


@pytest.mark.parametrize(("base", "over", "expected"), [
    (["8080:80"], ["8080:80/tcp"], ["8080:80/tcp"]),  # the same port, said twice
    (["8080:80"], [{"target": 80, "published": 8080}], [{"target": 80, "published": 8080}]),
    (["8080:80"], ["127.0.0.1:8080:80"], ["8080:80", "127.0.0.1:8080:80"]),
    (["8080:80"], ["8080:80/udp", "9090:90"], ["8080:80", "8080:80/udp", "9090:90"]),
    (["80"], ["80"], ["80"]),
])
def test_ports_are_unique_by_address_published_target_and_protocol(
        base: list[Any], over: list[Any], expected: list[Any]) -> None:
    assert web(f"ports: {base}", f"ports: {over}")["ports"] == expected


def test_volumes_and_devices_are_unique_by_target() -> None:
    assert web("volumes: ['foo:/work', '/a:/b']",
               "volumes: ['bar:/work:ro', {type: bind, source: /c, target: /b/}]")[
        "volumes"] == ["bar:/work:ro", {"type": "bind", "source": "/c", "target": "/b/"}]
    assert web("devices: ['/dev/a:/dev/x']", "devices: ['/dev/b:/dev/x:r']")["devices"] == [
        "/dev/b:/dev/x:r"]


def test_secrets_and_configs_are_unique_by_mount_point() -> None:
    got = web("secrets: [a, b]\nconfigs: [c]",
              "secrets: [{source: z, target: /run/secrets/a}]\nconfigs: [{source: c, mode: 1}]")
    assert got["secrets"] == [{"source": "z", "target": "/run/secrets/a"}, "b"]
    assert got["configs"] == [{"source": "c", "mode": 1}]


def test_key_value_collections_merge_by_key_in_either_form() -> None:
    assert web("environment: {A: '1', B: '2'}", "environment: {B: '3', C: null}")[
        "environment"] == {"A": "1", "B": "3", "C": None}
    assert web("environment: {A: '1', B: '2'}", "environment: [B=3, C]")["environment"] == [
        "A=1", "B=3", "C"]
    assert web("labels: [x=1, y=2]", "labels: {x: '9'}")["labels"] == ["x=9", "y=2"]
    assert web("sysctls: {a: 1}", "sysctls: {b: 2}")["sysctls"] == {"a": 1, "b": 2}


def test_names_merge_into_the_mapping_form() -> None:
    got = web("depends_on: [db]\nnetworks: [front]",
              "depends_on: {cache: {condition: service_healthy}}\nnetworks: {back: {}}")
    assert got["depends_on"] == {
        "db": {"condition": "service_started", "required": True},
        "cache": {"condition": "service_healthy"}}
    assert got["networks"] == {"front": None, "back": {}}
    assert web("depends_on: [db]", "depends_on: [cache, db]")["depends_on"] == ["db", "cache"]


def test_build_short_form_is_a_context() -> None:
    assert web("build: ./app", "build: {dockerfile: Dev}")["build"] == {
        "context": "./app", "dockerfile": "Dev"}


def test_logging_options_merge_for_one_driver_only() -> None:
    same = web("logging: {driver: syslog, options: {a: 1}}", "logging: {options: {b: 2}}")
    assert same["logging"] == {"driver": "syslog", "options": {"a": 1, "b": 2}}
    other = web("logging: {driver: syslog, options: {a: 1}}",
                "logging: {driver: json-file, options: {b: 2}}")
    assert other["logging"] == {"driver": "json-file", "options": {"b": 2}}


def test_each_ulimit_is_replaced_whole() -> None:
    assert web("ulimits: {nofile: {soft: 1, hard: 2}, nproc: 5}",
               "ulimits: {nofile: 9}")["ulimits"] == {"nofile": 9, "nproc": 5}


def test_single_strings_are_lists_of_one() -> None:
    got = web("env_file: a.env\ndns: 1.1.1.1\ntmpfs: /run",
              "env_file: [b.env, a.env]\ndns: [8.8.8.8]\ntmpfs: ['/run:size=1m', /tmp]")
    assert got["env_file"] == ["a.env", "b.env"]
    assert got["dns"] == ["1.1.1.1", "8.8.8.8"]
    assert got["tmpfs"] == ["/run:size=1m", "/tmp"]
    assert web("extra_hosts: {a: 1.1.1.1}", "extra_hosts: ['b:2.2.2.2']")["extra_hosts"] == [
        "a=1.1.1.1", "b:2.2.2.2"]


def test_ipam_config_merges_by_subnet() -> None:
    got = merged(
        "networks: {n: {ipam: {config: [{subnet: 10.1.0.0/24, gateway: 10.1.0.1}]}}}",
        "networks: {n: {ipam: {config: [{subnet: 10.1.0.0/24, gateway: 10.1.0.9}, "
        "{subnet: 10.2.0.0/24}]}}}")
    assert got["networks"]["n"]["ipam"]["config"] == [
        {"subnet": "10.1.0.0/24", "gateway": "10.1.0.9"}, {"subnet": "10.2.0.0/24"}]


def test_reset_and_override_tags() -> None:
    got = web("image: a\nports: ['8080:80']\nenvironment: {FOO: bar, KEEP: '1'}",
              "ports: !reset []\nenvironment: {FOO: !reset null}")
    assert got == {"image": "a", "environment": {"KEEP": "1"}}
    assert web("ports: ['8080:80']", "ports: !override ['8443:443']")["ports"] == ["8443:443"]
    # a later file adds to what !override left, and gives back what !reset took
    assert web("ports: ['1:1']", "ports: !override ['2:2']", "ports: ['3:3']")["ports"] == [
        "2:2", "3:3"]
    assert web("ports: ['1:1']", "ports: !reset []", "ports: ['3:3']")["ports"] == ["3:3"]
    # alone, a file's !reset is nothing and !override a plain value
    assert merged("services: {a: {image: x, user: !reset u, ports: !override ['1:1']}}") == {
        "services": {"a": {"image": "x", "ports": ["1:1"]}}}


def test_an_empty_file_adds_nothing() -> None:
    assert merged("services: {a: {image: x}}", "") == {"services": {"a": {"image": "x"}}}


def test_merged_values_reach_the_stack_interpolated() -> None:
    got = stack("services:\n  web:\n    image: x\n    ports: ['${P}:80']\n"
                "    environment: {A: '1'}\n",
                "services:\n  web:\n    ports: ['8080:80']\n    environment: ['A=${A2}']\n",
                env={"P": "8080", "A2": "two"})["services"]["web"]
    assert [p["published"] for p in got["ports"]] == ["8080"]  # one port: the same, once
    assert got["environment"] == {"A": "two"}


def test_forms_that_cannot_merge_name_the_file_and_both_lines() -> None:
    message = problems("services:\n  web:\n    image: x\n    ports: ['1:1']\n",
                       "services:\n  web:\n    ports: {a: 1}\n")
    assert "a.yml: services.web.ports: in f1.yml, line 3: cannot merge a mapping onto a " \
           "list (line 4)" in message


def test_a_problem_in_a_later_file_names_that_file_and_its_line() -> None:
    message = problems("services:\n  web:\n    image: x\n",
                       "services:\n  web:\n    restart: sometimes\n")
    assert "services.web.restart: in f1.yml, line 3:" in message
    broken = problems("services:\n  web:\n    image: x\n", "services:\n  web: [\n")
    assert "in f1.yml, line 3: invalid YAML" in broken


# --- properties --------------------------------------------------------------------------

_scalars = st.one_of(st.integers(-5, 5), st.sampled_from(["a", "b", "x y", ""]), st.booleans())


def _trees(depth: int) -> st.SearchStrategy[dict[str, Any]]:
    """Mappings whose keys say what their values are (`s*` a scalar, `l*` a list, `m*` a
    mapping), as a Compose file's keys do: two of them always merge."""
    fields: dict[str, st.SearchStrategy[Any]] = {
        "s1": _scalars, "s2": _scalars, "l1": st.lists(_scalars, max_size=3)}
    if depth:
        fields |= {"m1": _trees(depth - 1), "m2": _trees(depth - 1)}
    return st.fixed_dictionaries({}, optional=fields)


def _as_yaml(data: Any) -> str:
    return yaml.safe_dump(data, default_flow_style=True)


@settings(max_examples=150, deadline=None)
@given(_trees(3), _trees(3), _trees(3))
def test_merging_mappings_is_associative(a: dict[str, Any], b: dict[str, Any],
                                         c: dict[str, Any]) -> None:
    """((a + b) + c) == (a + (b + c)), where the values merge (under an `x-` key, with
    no rule of Compose's but the plain ones)."""
    def doc(data: dict[str, Any]) -> str:
        return _as_yaml({"x-data": data})

    left = merged(_as_yaml(merged(doc(a), doc(b))), doc(c))
    right = merged(doc(a), _as_yaml(merged(doc(b), doc(c))))
    assert left == right


_service = st.fixed_dictionaries({"image": st.sampled_from(["a", "b"])}, optional={
    "ports": st.lists(st.sampled_from(["80", "8080:80", "9000:90/udp"]), max_size=3,
                      unique=True),
    "environment": st.dictionaries(st.sampled_from(["A", "B"]), st.sampled_from(["1", "2"])),
    "command": st.lists(st.sampled_from(["run", "-v"]), min_size=1, max_size=2),
    "depends_on": st.lists(st.sampled_from(["db"]), max_size=1),
})


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.sampled_from(["web", "app"]), _service, min_size=1),
       st.sampled_from(["", "services: {}\n", "x-nothing: 1\n"]))
def test_an_empty_override_leaves_the_stack_as_it_was(services: dict[str, Any],
                                                      empty: str) -> None:
    text = _as_yaml({"services": {**services, "db": {"image": "d"}}})
    assert outcome(text, empty) == outcome(text)


def outcome(*texts: str) -> tuple[str, Any]:
    """The stack the files make, or what is wrong with them."""
    try:
        return "stack", stack(*texts)
    except SpecError as exc:
        return "invalid", str(exc)


@settings(max_examples=100, deadline=None)
@given(_service)
def test_a_service_merged_onto_itself_keeps_its_unique_entries(service: dict[str, Any]) -> None:
    once = merged(_as_yaml({"services": {"s": service}}))["services"]["s"]
    twice = merged(*[_as_yaml({"services": {"s": service}})] * 2)["services"]["s"]
    for key in ("ports", "environment", "command", "image", "depends_on"):
        assert twice.get(key) == once.get(key)


_names = st.sampled_from(["a.yml", "b.yml", "sub/c.yml", "../d.yml", "/abs.yml", "gone.yml"])
_refs = st.one_of(
    st.sampled_from(["s1", "s2", "s3", "nope"]),
    st.fixed_dictionaries({"service": st.sampled_from(["s1", "s2", "s3"])},
                          optional={"file": _names}),
)
_fuzz_service = st.fixed_dictionaries({}, optional={
    "image": st.just("x"),
    "extends": _refs,
    "ports": st.lists(st.sampled_from(["80", "8080:80", "${P}:80"]), max_size=2),
    "environment": st.one_of(st.dictionaries(st.sampled_from(["A", "B"]), st.just("v")),
                             st.lists(st.sampled_from(["A=1", "B"]), max_size=2)),
    "command": st.one_of(st.just("run"), st.lists(st.just("x"), max_size=2)),
    "env_file": st.sampled_from(["e.env", "./e.env", "../e.env"]),
    "volumes": st.lists(st.sampled_from(["./d:/d", "v:/d", "/h:/h:ro"]), max_size=2),
    "depends_on": st.one_of(st.lists(st.sampled_from(["s1", "s2"]), max_size=2),
                            st.just({"s1": {"condition": "service_started"}})),
})
_fuzz_doc = st.fixed_dictionaries({}, optional={
    "services": st.dictionaries(st.sampled_from(["s1", "s2", "s3"]), _fuzz_service,
                                max_size=3),
    "include": st.lists(st.one_of(_names, st.fixed_dictionaries(
        {"path": st.one_of(_names, st.lists(_names, max_size=2))},
        optional={"project_directory": st.sampled_from([".", "sub", ".."]),
                  "env_file": st.sampled_from([".env", "sub/x.env"])})), max_size=2),
})


@settings(max_examples=200, deadline=None)
@given(st.lists(_fuzz_doc, min_size=1, max_size=3),
       st.dictionaries(_names, _fuzz_doc, max_size=4),
       st.sampled_from(["", "ports: !reset []", "ports: !override ['1:1']", "image: !reset"]))
def test_any_files_give_a_stack_or_a_spec_error(given_docs: list[dict[str, Any]],
                                                named: dict[str, dict[str, Any]],
                                                tag: str) -> None:
    """Whatever the files say of each other (cycles, missing files and services, paths
    out of the directory), the parse ends with a stack or a `SpecError`."""
    texts = [_as_yaml(d) for d in given_docs]
    if tag:
        texts.append(f"services:\n  s1:\n    {tag}\n")
    files = {posixpath.normpath(n): _as_yaml(d) for n, d in named.items()}
    files |= {"e.env": "E=1\n", "sub/x.env": "P=9\n"}
    with contextlib.suppress(SpecError):
        stack(*texts, env={"P": "80"}, files=files)


# --- extends -----------------------------------------------------------------------------


def test_extends_a_service_of_the_same_file_in_both_forms() -> None:
    text = """
services:
  base:
    image: busybox
    environment: {TZ: utc, PORT: '80'}
    command: [serve]
    depends_on: [db]
  cli:
    extends: {service: base}
    environment: {PORT: '8080'}
  short:
    extends: base
    command: [other]
  db:
    image: d
"""
    got = stack(text)["services"]
    assert got["cli"]["image"] == "busybox"
    assert got["cli"]["environment"] == {"TZ": "utc", "PORT": "8080"}
    assert got["cli"]["depends_on"]["db"]["condition"] == "service_started"  # all merged
    assert got["short"]["command"] == ["other"]


def test_extends_chains_and_another_file_whose_paths_start_in_its_directory() -> None:
    text = """
services:
  cli:
    extends: {file: common/base.yml, service: common}
    command: [cli]
"""
    base = """
services:
  root:
    image: busybox
    user: root
    env_file: ./app.env
  common:
    extends: root
    environment: [FROM=common]
"""
    got = stack(text, files={"common/base.yml": base, "common/app.env": "FILE=yes\n"})
    cli = got["services"]["cli"]
    assert cli["user"] == "root" and cli["command"] == ["cli"]
    assert cli["environment"] == {"FILE": "yes", "FROM": "common"}
    assert list(got["services"]) == ["cli"]  # the other file's services stay there


def test_an_extends_cycle_names_its_services() -> None:
    message = problems("services:\n  a: {extends: b, image: x}\n  b: {extends: c}\n"
                       "  c: {extends: a}\n")
    assert "extends makes a cycle: a -> b -> c -> a" in message
    assert "extends makes a cycle: x -> x" in problems("services:\n  x: {extends: x}\n")


def test_extends_of_what_is_not_there_says_what_is() -> None:
    message = problems("services:\n  a: {extends: nope, image: x}\n")
    assert 'services.a.extends (line 2): no service "nope" to extend in this file (its ' \
           "services: a)" in message
    missing = problems("services:\n  a: {extends: {file: gone.yml, service: b}}\n")
    assert "services.a.extends.file (line 2): cannot read gone.yml: No such file" in missing
    other = problems("services:\n  a: {extends: {file: o.yml, service: b}}\n",
                     files={"o.yml": "services: {c: {image: x}}\n"})
    assert 'no service "b" to extend in o.yml (its services: c)' in other
    assert 'extends needs "service:"' in problems("services:\n  a: {extends: {file: o}}\n")


def test_extends_sees_included_services() -> None:
    got = stack("include: [lib/c.yml]\nservices:\n  app: {extends: lib, command: [x]}\n",
                files={"lib/c.yml": "services:\n  lib: {image: busybox, user: nobody}\n"})
    assert got["services"]["app"]["user"] == "nobody"


def test_reset_in_a_service_that_extends_resets_what_it_inherits() -> None:
    got = stack("services:\n  base: {image: x, ports: ['1:1']}\n"
                "  app: {extends: base, ports: !reset []}\n")
    assert "ports" not in got["services"]["app"] and got["services"]["base"]["ports"]


# --- include ----------------------------------------------------------------------------


def test_include_short_form_brings_services_with_paths_of_their_directory() -> None:
    files = {
        "lib/compose.yaml": "services:\n  db:\n    image: pg\n    env_file: db.env\n"
                            "networks:\n  back: {}\n",
        "lib/db.env": "DB=1\n",
    }
    got = stack("include:\n  - lib/compose.yaml\nservices:\n  web:\n    image: x\n"
                "    depends_on: [db]\n", files=files)
    assert got["services"]["db"]["environment"] == {"DB": "1"}
    assert "back" in got["networks"]


def test_include_long_form_merges_its_files_and_has_its_own_variables() -> None:
    files = {
        "lib/compose.yaml": "services:\n  db:\n    image: pg:${V}\n    environment:\n"
                            "      WHO: ${WHO}\n",
        "lib/override.yaml": "services:\n  db:\n    environment: {EXTRA: '1'}\n",
        "vars/lib.env": "V=16\nWHO=lib\n",
        "elsewhere/.env": "V=0\n",
    }
    got = stack("include:\n  - path: [lib/compose.yaml, lib/override.yaml]\n"
                "    env_file: vars/lib.env\n    project_directory: elsewhere\n"
                "services:\n  web: {image: x}\n", env={"WHO": "shell"}, files=files)
    db = got["services"]["db"]
    assert db["image"] == "pg:16"  # the include's env file, not the directory's .env
    assert db["environment"] == {"WHO": "shell", "EXTRA": "1"}  # the stack's own win


def test_an_included_projects_dotenv_is_read_and_values_keep_their_dollars() -> None:
    files = {"lib/c.yml": "services:\n  db:\n    image: pg:${V}\n"
                          "    command: [sh, -c, 'echo $$HOME']\n",
             "lib/.env": "V=15\n"}
    got = stack("include: [lib/c.yml]\nservices:\n  web: {image: x}\n", files=files)
    assert got["services"]["db"]["image"] == "pg:15"
    assert got["services"]["db"]["command"] == ["sh", "-c", "echo $$HOME"]  # dumped: $$


def test_an_included_resource_defined_here_too_is_completed_by_this_file() -> None:
    # Compose now (compose-go 2.x): the including file's definition merges onto the
    # included one, so a file can finish or tweak what it includes.
    files = {"lib/c.yml": "services:\n  web: {image: other, environment: {A: '1'}}\n"}
    got = stack("include: [lib/c.yml]\nservices:\n  web: {environment: {B: '2'}}\n",
                files=files)
    assert got["services"]["web"]["image"] == "other"
    assert got["services"]["web"]["environment"] == {"A": "1", "B": "2"}
    same = {"lib/c.yml": "services:\n  db: {image: pg}\n",
            "lib/d.yml": "services:\n  db: {image: pg}\n"}
    got = stack("include: [lib/c.yml, lib/d.yml]\nservices:\n  web: {image: x}\n", files=same)
    assert set(got["services"]) == {"web", "db"}


def test_an_include_cycle_names_the_files() -> None:
    files = {"b.yml": "include: [c.yml]\nservices: {b: {image: x}}\n",
             "c.yml": "include: [b.yml]\nservices: {c: {image: x}}\n"}
    message = problems("include: [b.yml]\nservices: {a: {image: x}}\n", files=files)
    assert "include makes a cycle: a.yml -> b.yml -> c.yml -> b.yml" in message


# --- bounds ------------------------------------------------------------------------------


def test_a_stack_reads_a_bounded_number_of_files() -> None:
    files = {f"f{i}.yml": f"services: {{s{i}: {{image: x}}}}\n" for i in range(40)}
    text = "include: [" + ", ".join(files) + "]\nservices: {a: {image: x}}\n"
    assert "a stack is made of at most 32 files" in problems(text, files=files)


def test_include_chains_are_bounded() -> None:
    files = {f"f{i}.yml": f"include: [f{i + 1}.yml]\nservices: {{s{i}: {{image: x}}}}\n"
             for i in range(30)}
    assert "includes go more than 16 files deep" in problems(
        "include: [f0.yml]\nservices: {a: {image: x}}\n", files=files)


def test_extends_cannot_multiply_a_large_service_past_the_documents_bounds() -> None:
    env = "".join(f"      V{i}: '{i}'\n" for i in range(3000))
    text = f"services:\n  base:\n    image: x\n    environment:\n{env}" + "".join(
        f"  s{i}: {{extends: base}}\n" for i in range(40))
    assert "more than 100000 YAML nodes" in problems(text)


def test_merging_is_bounded_before_it_is_done() -> None:
    """Two thousand services extending one with two thousand variables: a file well
    within its own bounds, asking for four million entries merged: refused when the
    count passes the bound (after it, the merged document would be refused for its size;
    this message says the merging itself stopped)."""
    env = "".join(f"      V{i}: '{i}'\n" for i in range(2000))
    text = f"services:\n  base:\n    image: x\n    environment:\n{env}" + "".join(
        f"  s{i}: {{extends: base, environment: {{V0: x}}}}\n" for i in range(2000))
    assert "merging the stack's files (-f, include, extends) takes more than" in problems(text)


# --- the files of the command line, and of the daemon's API ------------------------------


def test_default_files_with_the_override_file_beside_them(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    monkeypatch.chdir(tmp_path)
    assert stacks.find_files(None) == []
    (tmp_path / "docker-compose.yml").write_text("services: {a: {image: x}}\n")
    assert stacks.find_files(None) == [Path("docker-compose.yml")]
    (tmp_path / "compose.override.yaml").write_text("services: {a: {user: u}}\n")
    (tmp_path / "docker-compose.override.yml").write_text("services: {a: {user: v}}\n")
    assert stacks.find_files(None) == [Path("docker-compose.yml"),
                                       Path("compose.override.yaml")]
    assert stacks.find_files(["x.yml", "y.yml"]) == [Path("x.yml"), Path("y.yml")]


def config(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, Any, str]:
    with pytest.raises(SystemExit) as exited:
        main(["config", *args])
    out, err = capsys.readouterr()
    code = exited.value.code
    return int(code if isinstance(code, int) else 1), yaml.safe_load(out) if out else None, err


def test_linkd_config_merges_the_files_given_and_the_override_found(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.yml").write_text("name: demo\nservices:\n  web:\n    image: x\n"
                                    "    environment: {A: '1'}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.yml").write_text("services:\n  web:\n    env_file: b.env\n"
                                            "    environment: {B: '2'}\n")
    (tmp_path / "b.env").write_text("FROM_FILE=1\n")  # beside a.yml: the stack's directory
    code, out, err = config(["-f", "a.yml", "-f", "sub/b.yml"], capsys)
    assert code == 0, err
    assert out["services"]["web"]["environment"] == {"FROM_FILE": "1", "A": "1", "B": "2"}
    (tmp_path / "compose.yaml").write_text("services:\n  app:\n    image: x\n")
    (tmp_path / "compose.override.yaml").write_text("services:\n  app:\n    user: me\n")
    code, out, err = config([], capsys)
    assert code == 0, err
    assert out["name"] == tmp_path.name.lower() and out["services"]["app"]["user"] == "me"
    (tmp_path / "compose.override.yaml").write_text("services:\n  app:\n    restart: bad\n")
    code, _, err = config([], capsys)
    assert code == 2 and "in compose.override.yaml, line 3" in err


def test_the_quick_stack_name_reads_every_file(tmp_path: Path) -> None:
    (tmp_path / "a.yml").write_text("name: first\nservices: {}\n")
    (tmp_path / "b.yml").write_text("services: {}\n")
    (tmp_path / "c.yml").write_text("name: last\nservices: {}\n")
    assert stacks._name_of([tmp_path / "a.yml", tmp_path / "b.yml"]) == "first"
    assert stacks._name_of([tmp_path / "a.yml", tmp_path / "c.yml"]) == "last"
    (tmp_path / "d.yml").write_text("name: '${X}'\nservices: {}\n")
    assert stacks._name_of([tmp_path / "a.yml", tmp_path / "d.yml"]) is None  # the parser's


def test_the_api_takes_more_files_and_refuses_a_bad_list() -> None:
    body = {"yaml": "services: {}", "directory": "/srv",
            "overrides": [{"source": "b.yml", "yaml": "services: {}"}]}
    assert parse_create(body).overrides == (("b.yml", "services: {}"),)
    for bad in ("b.yml", [{"source": "b.yml"}], [{"source": 1, "yaml": ""}],
                [{"source": "x", "yaml": ""}] * 40):
        with pytest.raises(ApiError) as info:
            parse_create({**body, "overrides": bad})
        assert info.value.problems[0][0] == "body.overrides"


def _project(tmp_path: Path) -> Path:
    app = tmp_path / "app"
    (app / "lib").mkdir(parents=True)
    (tmp_path / "common.yml").write_text("services:\n  base: {image: busybox, user: u}\n")
    (app / "lib" / "c.yml").write_text("services:\n  db: {image: pg}\n")
    return app


def test_the_api_reads_include_and_extends_files_only_beneath_the_directory(
        tmp_path: Path) -> None:
    app = _project(tmp_path)
    text = ("include: [lib/c.yml]\nservices:\n"
            "  web: {extends: {file: ../common.yml, service: base}}\n")
    local = loader.local_source(text, source="compose.yaml", directory=app, project_name="t")
    assert loader.load(local).service("web").user == "u"  # the command line: as Compose
    sent = loader.StackSource(text, source="compose.yaml", directory=app, project_name="t",
                              confined=True)
    with pytest.raises(SpecError) as info:
        loader.load(sent)
    assert "services.web.extends.file (line 3): cannot read ../common.yml: is outside the " \
           "stack's directory" in str(info.value)
    (app / "lib" / "link.yml").symlink_to(tmp_path / "common.yml")
    through = text.replace("../common.yml", "lib/link.yml")
    with pytest.raises(SpecError, match=r"lib/link\.yml: is outside"):
        loader.load(loader.StackSource(through, source="s", directory=app, project_name="t",
                                       confined=True))
    inside = text.replace("../common.yml", "lib/c.yml").replace("base}", "db}")
    sent = loader.StackSource(inside, source="s", directory=app, project_name="t",
                              confined=True)
    assert loader.load(sent).service("web").image == "pg"


def test_read_files_reads_the_overrides_and_names_one_it_cannot_read(tmp_path: Path) -> None:
    (tmp_path / "a.yml").write_text("services: {a: {image: x}}\n")
    (tmp_path / "b.yml").write_text("services: {a: {user: me}}\n")
    source = loader.read_files([tmp_path / "a.yml", tmp_path / "b.yml"], project_name="t")
    assert source.overrides == ((str(tmp_path / "b.yml"), "services: {a: {user: me}}\n"),)
    assert loader.load(source).service("a").user == "me"
    with pytest.raises(Exception, match=r"cannot read stack file .*gone\.yml"):
        loader.read_files([tmp_path / "a.yml", tmp_path / "gone.yml"])


assert os.sep == "/"  # the names of a stack's files are /-separated
