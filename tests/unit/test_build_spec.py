"""`build:` and `pull_policy:` of a service (linkd.spec.build): the short and long forms,
args with `${VAR}`, the image name a build goes under, every build key's answer (passed
to buildah, warned about, or refused), and `linkd config` accepting a service that only
builds, without building."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from linkd.core.model import Build, Stack
from linkd.errors import SpecError
from linkd.spec import build as build_spec
from linkd.spec.dump import stack_to_dict
from linkd.spec.stack_file import parse_stack

REPO = Path(__file__).resolve().parents[2]


STACK_DIR = "/srv/stack"  # where the stack file is


def parse(text: str, env: dict[str, str] | None = None, project: str = "proj") -> Stack:
    return parse_stack(textwrap.dedent(text), source="s.yaml", project_name=project,
                       host_env=env or {}, directory=STACK_DIR)


def problems(text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(SpecError) as info:
        parse(text, env)
    return str(info.value)


def round_trip(stack: Stack) -> Stack:
    return parse_stack(yaml.safe_dump(stack_to_dict(stack), sort_keys=False), source="d")


# --- forms and the image name -----------------------------------------------------------


def test_the_short_form_is_the_context_and_the_image_gets_composes_default_name() -> None:
    stack = parse("services:\n  app:\n    build: ./app\n")
    app = stack.service("app")
    assert app.build == Build(context="/srv/stack/app")  # from the stack's directory
    assert app.image == "proj-app"  # Compose: <project>-<service>, stored as :latest
    assert app.command is None and stack.warnings == ()


def test_a_service_that_only_builds_is_accepted_and_its_command_runs_in_the_image() -> None:
    stack = parse("""
        services:
          app: {build: ., command: ./serve --port 80}
          Worker: {build: {context: worker}}
    """)
    assert stack.service("app").image == "proj-app"
    assert stack.service("app").command == ("./serve", "--port", "80")
    assert stack.service("Worker").image == "proj-worker"  # image names are lower-case
    assert stack.service("Worker").build == Build(context="/srv/stack/worker")


def test_the_services_image_names_the_build() -> None:
    stack = parse("services:\n  app:\n    build: .\n    image: example/app:2\n")
    assert stack.service("app").image == "example/app:2"


def test_a_registrys_name_names_the_build() -> None:
    stack = parse("services:\n  app:\n    build: .\n    image: registry:5000/app\n")
    assert stack.service("app").image == "registry:5000/app"


@pytest.mark.parametrize("image", ["./app.tar", "Example/App", "registry:x/app"])
def test_an_image_the_store_cannot_name_is_refused_for_a_build(image: str) -> None:
    said = problems(f"services:\n  app:\n    build: .\n    image: {image}\n")
    assert "services.app.build" in said and f'"{image}"' in said and "set image:" in said


def test_the_long_form_passes_each_key_on() -> None:
    stack = parse("""
        services:
          app:
            build:
              context: ./src
              dockerfile: docker/Dockerfile.prod
              args: {VERSION: "1.2", DEBUG: false, EMPTY: ""}
              target: runtime
              labels: [com.example.team=web, bare]
              tags: [example/app:1, example/app]
              network: none
              no_cache: true
              pull: true
              extra_hosts: ["mirror:10.0.0.5", "v6=[fd00::1]"]
              shm_size: 2gb
              ulimits: {nofile: {soft: 1024, hard: 2048}, nproc: 512}
    """)
    assert stack.warnings == ()
    assert stack.service("app").build == Build(
        context="/srv/stack/src", dockerfile="docker/Dockerfile.prod",
        args=(("VERSION", "1.2"), ("DEBUG", "false"), ("EMPTY", "")), target="runtime",
        labels=(("com.example.team", "web"), ("bare", "")),
        tags=("example/app:1", "example/app:latest"),
        extra_hosts=(("mirror", "10.0.0.5"), ("v6", "fd00::1")), shm_size=2 << 30,
        ulimits=(("nofile", 1024, 2048), ("nproc", 512, 512)), no_network=True,
        no_cache=True, pull=True,
    )


def test_a_long_form_without_context_builds_the_stack_directory() -> None:
    stack = parse("""
        services:
          app:
            build:
              dockerfile_inline: |
                FROM scratch
                COPY app /app
    """)
    build = stack.service("app").build
    assert build is not None and build.context == STACK_DIR
    assert build.dockerfile_inline == "FROM scratch\nCOPY app /app\n"


def test_args_as_a_list_or_mapping_with_interpolation_and_values_from_the_shell() -> None:
    env = {"TAG": "v7", "FROM_SHELL": "shell-value"}
    stack = parse("""
        services:
          listed:
            build:
              args: ["VERSION=${TAG}", "LITERAL=$$HOME", FROM_SHELL, NOT_SET]
          mapped:
            build:
              args: {VERSION: "${TAG:-dev}", FROM_SHELL: , NOT_SET: , "N": 3}
    """, env)
    listed, mapped = (stack.service(n).build for n in ("listed", "mapped"))
    assert listed is not None and mapped is not None
    # A bare name takes the shell's value, or is left out (the Dockerfile's default).
    assert listed.args == (("VERSION", "v7"), ("LITERAL", "$HOME"),
                           ("FROM_SHELL", "shell-value"))
    assert mapped.args == (("VERSION", "v7"), ("FROM_SHELL", "shell-value"), ("N", "3"))


def test_a_context_in_the_home_directory_or_an_absolute_one() -> None:
    stack = parse("services:\n  app:\n    build: ~/src/app\n", {"HOME": "/home/me"})
    assert stack.service("app").build == Build(context="/home/me/src/app")
    assert "HOME is not set" in problems("services:\n  app:\n    build: ~/app\n")
    stack = parse("services:\n  app:\n    build: /opt/app/../src\n")
    assert stack.service("app").build == Build(context="/opt/src")


# --- what is refused, and what is warned --------------------------------------------------


@pytest.mark.parametrize("context", [
    "https://github.com/example/app.git", "https://github.com/example/app.git#main:sub",
    "git@github.com:example/app.git", "github.com/example/app", "ssh://host/repo",
    "git://host/repo", "../repo.git",
])
def test_a_remote_context_is_refused(context: str) -> None:
    for text in (f"build: {context!r}", f"build: {{context: {context!r}}}"):
        said = problems(f"services:\n  app:\n    {text}\n")
        assert "remote build context" in said and "clone the repository" in said


def test_dockerfile_and_dockerfile_inline_together_are_refused() -> None:
    said = problems("""
        services:
          app:
            build: {dockerfile: Dockerfile, dockerfile_inline: "FROM scratch"}
    """)
    assert "services.app.build.dockerfile_inline" in said and "keep one" in said


@pytest.mark.parametrize(("network", "none"), [("none", True), ("host", False),
                                               ("default", False)])
def test_the_build_network_is_the_hosts_or_none(network: str, none: bool) -> None:
    stack = parse(f"services:\n  app:\n    build: {{network: {network}}}\n")
    build = stack.service("app").build
    assert build is not None and build.no_network is none


def test_a_named_build_network_is_refused() -> None:
    said = problems("services:\n  app:\n    build: {network: backend}\n")
    assert 'build network "backend" is not supported' in said and "network: none" in said


def test_additional_contexts_are_refused() -> None:
    said = problems("services:\n  app:\n    build: {additional_contexts: {base: ../base}}\n")
    assert "services.app.build.additional_contexts" in said and "one context" in said


def test_host_gateway_in_a_builds_extra_hosts_is_refused() -> None:
    said = problems("services:\n  app:\n    build: {extra_hosts: ['h:host-gateway']}\n")
    assert "host-gateway has no meaning in a build" in said


@pytest.mark.parametrize(("key", "value"), [
    ("shm_size", "lots"), ("tags", "['Not/Valid']"), ("no_cache", "maybe"),
    ("ulimits", "{nofiles: 1}"), ("args", "['=x']"), ("context", "{a: b}"),
])
def test_a_wrong_value_names_its_key(key: str, value: str) -> None:
    said = problems(f"services:\n  app:\n    build: {{{key}: {value}}}\n")
    assert f"services.app.build.{key}" in said


@pytest.mark.parametrize("key", sorted(build_spec._NOTES))
def test_each_build_key_linkd_does_not_use_gets_its_one_warning(key: str) -> None:
    stack = parse(f"services:\n  app:\n    build:\n      context: .\n      {key}: [x]\n")
    assert stack.warnings == (f"services.app.build.{key} (line 5): not supported by linkd, "
                              f"ignored: {build_spec._NOTES[key]}",)


def test_every_key_of_the_build_specification_has_an_answer() -> None:
    # compose-spec build.md (2025): each key is read, warned about, or refused.
    spec = {"context", "dockerfile", "dockerfile_inline", "args", "ssh", "cache_from",
            "cache_to", "additional_contexts", "entitlements", "extra_hosts", "isolation",
            "privileged", "labels", "no_cache", "pull", "network", "shm_size", "target",
            "secrets", "tags", "ulimits", "platforms", "provenance", "sbom"}
    answered = set(build_spec._KEYS) | set(build_spec._NOTES) | set(build_spec._REFUSED)
    assert answered == spec


def test_a_misspelt_build_key_is_warned_with_the_closest() -> None:
    stack = parse("services:\n  app:\n    build: {contxt: .}\n")
    assert stack.warnings == ('services.app.build.contxt (line 3): unknown key, ignored '
                              '(did you mean "context"?)',)


# --- pull_policy -----------------------------------------------------------------------


def test_pull_policy_build_builds_at_every_up() -> None:
    stack = parse("services:\n  app:\n    build: .\n    pull_policy: build\n")
    build = stack.service("app").build
    assert build is not None and build.always


@pytest.mark.parametrize("policy", ["missing", "if_not_present", "never"])
def test_the_policies_that_use_what_is_there_are_silent(policy: str) -> None:
    for service in ("build: .", "image: app:1"):
        stack = parse(f"services:\n  app:\n    {service}\n    pull_policy: {policy}\n")
        build = stack.service("app").build
        assert stack.warnings == () and (build is None or not build.always)


@pytest.mark.parametrize("policy", ["always", "daily", "weekly", "every_12h", "every_1d2h"])
def test_the_policies_that_would_pull_are_warned(policy: str) -> None:
    stack = parse(f"services:\n  app:\n    build: .\n    pull_policy: {policy}\n")
    assert len(stack.warnings) == 1
    assert "linkd pulls no built image" in stack.warnings[0]
    assert "built when missing" in stack.warnings[0]


@pytest.mark.parametrize(("policy", "kept", "every"), [
    ("always", "always", None), ("never", "never", None), ("missing", "", None),
    ("if_not_present", "", None), ("daily", "daily", 86400.0),
    ("weekly", "weekly", 604800.0), ("every_2h", "every_2h", 7200.0),
    ("every_1d2h30m", "every_1d2h30m", 95400.0), ("every_1w", "every_1w", 604800.0),
    ("every_90", "every_90", 90.0)])
def test_an_images_pull_policy(policy: str, kept: str, every: float | None) -> None:
    stack = parse(f"services:\n  app:\n    image: r.io/app:1\n    pull_policy: {policy}\n")
    assert stack.service("app").pull_policy == kept
    assert stack.warnings == ()
    assert build_spec.refresh_after(kept) == every
    dumped = stack_to_dict(stack)["services"]["app"]
    assert dumped.get("pull_policy", "") == kept


def test_pull_policy_build_without_a_build_and_an_unknown_policy_are_refused() -> None:
    said = problems("services:\n  app:\n    image: app:1\n    pull_policy: build\n")
    assert "needs a build: section" in said
    said = problems("services:\n  app:\n    build: .\n    pull_policy: sometimes\n")
    assert 'got "sometimes"' in said


# --- linkd config ------------------------------------------------------------------------


def test_the_normalized_form_reads_back_the_same() -> None:
    stack = parse("""
        services:
          app:
            build:
              context: ./src
              dockerfile_inline: "FROM scratch\\nCOPY $$X /x\\n"
              args: {A: "cost $$5", B: ""}
              labels: {k: v}
              tags: [example/app:1]
              network: none
              no_cache: true
              extra_hosts: ["h=10.0.0.1"]
              shm_size: 64m
              ulimits: {nofile: 10}
            pull_policy: build
          plain: {build: .}
    """)
    again = round_trip(stack)
    assert again.services == stack.services and again.warnings == ()


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True),
                       st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=20),
                       max_size=6))
def test_any_args_read_back_the_same(args: dict[str, str]) -> None:
    doc = {"services": {"app": {"build": {"args": {k: v.replace("$", "$$")
                                                   for k, v in args.items()}}}}}
    stack = parse_stack(json.dumps(doc, ensure_ascii=False), source="s", project_name="p")
    build = stack.service("app").build
    assert build is not None and dict(build.args) == args
    assert round_trip(stack).services == stack.services


def test_linkd_config_accepts_a_build_and_does_not_build(tmp_path: Path) -> None:
    """Without buildah on PATH, with no context directory: config reads, never builds."""
    (tmp_path / "linkd.yaml").write_text("services:\n  app:\n    build: ./nowhere\n")
    result = subprocess.run(
        [sys.executable, "-m", "linkd", "config", "-p", "proj"], cwd=tmp_path,
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO), "PATH": "/nonexistent",
             "LINKD_RUN_DIR": str(tmp_path / "run")},
    )
    assert result.returncode == 0, result.stderr
    app = yaml.safe_load(result.stdout)["services"]["app"]
    assert app["image"] == "proj-app"
    assert app["build"] == {"context": str(tmp_path / "nowhere")}


# --- what buildah is asked, and what `up` builds (linkd.runtime.images.build) -------------


def test_buildah_is_asked_for_every_key() -> None:
    from linkd.runtime.images.build import build_options

    build = parse("""
        services:
          app:
            build:
              target: prod
              args: [A=1, B=two words]
              labels: {k: v}
              extra_hosts: ["h:10.0.0.1"]
              shm_size: 64m
              ulimits: {nofile: {soft: 10, hard: 20}}
              network: none
              no_cache: true
              pull: true
    """).service("app").build
    assert build is not None
    assert build_options(build, Path("/ctx/Dockerfile.x"), Path("/work/image.tar")) == [
        "--layers", "--force-rm", "--pull=always", "--network", "none",
        "-t", "oci-archive:/work/image.tar", "-f", "/ctx/Dockerfile.x", "--no-cache",
        "--target", "prod", "--build-arg", "A=1", "--build-arg", "B=two words",
        "--label", "k=v", "--add-host", "h:10.0.0.1", "--shm-size", f"{64 << 20}b",
        "--ulimit", "nofile=10:20",
    ]
    # The defaults: the host's network, FROM images pulled only when missing, buildah
    # finds Dockerfile or Containerfile itself.
    assert build_options(Build(), None, Path("/w/i.tar")) == [
        "--layers", "--force-rm", "--pull=false", "--network", "host",
        "-t", "oci-archive:/w/i.tar"]


def test_up_builds_what_is_missing_once_per_image(tmp_path: Path) -> None:
    from linkd.errors import NotFoundError
    from linkd.runtime.images.build import to_build
    from linkd.runtime.images.image_store import ImageStore

    stack = parse("""
        services:
          app: {build: ., image: shared:1}
          worker: {build: ., image: shared:1, command: work}
          always: {build: ., pull_policy: build}
          named: {image: elsewhere:1}
    """)
    store = ImageStore(tmp_path / "store")  # empty: every image is missing
    assert [s.name for s in to_build(stack, store)] == ["app", "always"]
    assert [s.name for s in to_build(stack, store, services=["worker"])] == ["worker"]
    with pytest.raises(NotFoundError, match="no service nosuch"):
        to_build(stack, store, services=["nosuch"])
