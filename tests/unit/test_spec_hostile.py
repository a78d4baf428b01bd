"""Hostile stack files: bombs, deep nesting and odd text end in a `SpecError`, quickly
(and convention files, which a stack names, in a `ConventionError`).

Named cases first (each attack issue 14 found, and its neighbours), then property tests
that generate nested, aliased and merged YAML and interpolation strings and assert the
parser returns a stack or raises `SpecError` (never RecursionError, never anything else)
within a time bound; and one that checks the bounded composer builds the same nodes as
PyYAML's for the documents both accept.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from linkd.core.model import Stack
from linkd.errors import ConventionError, SpecError
from linkd.runtime.stack.conventions import read_convention
from linkd.spec import bounded_yaml
from linkd.spec.stack_file import parse_stack
from linkd.spec.values import INTERPOLATION_DEPTH, Bad, interpolate

BOUND = 5.0  # seconds any of these may take (they take milliseconds); the bomb took 163 s


def parse(text: str, **kw: Any) -> Stack:
    return parse_stack(text, source="t.yaml", default_project="p", **kw)


def refused(text: str, **kw: Any) -> SpecError:
    started = time.monotonic()
    with pytest.raises(SpecError) as info:
        parse(text, **kw)
    assert time.monotonic() - started < BOUND
    return info.value


def merge_bomb(levels: int = 8, width: int = 9) -> str:
    """Issue 14's bomb: each level merges `width` aliases of the level below."""
    lines = ["a: &a {k: v}"]
    previous = "a"
    for level in range(1, levels + 1):
        name = f"l{level}"
        refs = ",".join(f"*{previous}" for _ in range(width))
        lines.append(f"{name}: &{name} {{<<: [{refs}]}}")
        previous = name
    lines.append(f"services: {{w: {{<<: *{previous}, command: x}}}}")
    return "\n".join(lines) + "\n"


# --- bombs ---------------------------------------------------------------------------------


def test_the_merge_key_bomb_is_refused_at_once_naming_the_limit_and_the_fix() -> None:
    text = merge_bomb()
    assert len(text.encode()) < 500
    error = refused(text)
    ((path, line, message),) = error.problems
    assert path == "(file)"
    assert line is not None and text.splitlines()[line - 1].startswith("l")  # a level
    assert f"more than {bounded_yaml.MAX_NODES} YAML nodes" in message
    assert "write the repeated parts out" in message


def test_a_billion_laughs_of_lists_is_refused() -> None:
    lines = ['x-0: &l0 ["lol"]']
    for level in range(1, 10):
        refs = ", ".join(f"*l{level - 1}" for _ in range(10))
        lines.append(f"x-{level}: &l{level} [{refs}]")
    lines.append("services: {w: {command: *l9}}")
    error = refused("\n".join(lines) + "\n")
    assert "YAML nodes" in error.problems[0][2]


def test_an_alias_of_a_long_value_used_many_times_is_refused_by_characters() -> None:
    long = "x" * 100_000
    refs = ", ".join(["*big"] * 100)  # 10 MB of environment from 100 kB of text
    text = f"x-big: &big '{long}'\nservices: {{w: {{command: x, environment: [{refs}]}}}}\n"
    error = refused(text)
    assert f"more than {bounded_yaml.MAX_TEXT} characters" in error.problems[0][2]


def test_merges_within_the_limits_are_resolved_once_with_problems_reported_once() -> None:
    # 9 services each merging the same base 9 times over: fine, and the duplicate key in
    # the base is one problem, not 81.
    text = (
        "x-base: &base {command: x, restart: always, restart: 'no'}\n"
        "x-nine: &nine {<<: [*base, *base, *base, *base, *base, *base, *base, *base, *base]}\n"
        "services:\n" + "".join(f"  s{i}: *nine\n" for i in range(9))
    )
    error = refused(text)
    assert [p[2] for p in error.problems] == ['key "restart" is given twice (lines 1, 1)']


def test_recursive_aliases_are_refused() -> None:
    for text in (
        "x: &a [*a]\nservices: {w: {command: x}}\n",
        "x: &a {<<: *a, k: v}\nservices: {w: {command: x}}\n",
        "services: &s {w: {command: x, x-self: *s}}\n",
    ):
        error = refused(text)
        assert "refers to a node that contains it" in error.problems[0][2], text


def test_env_files_are_read_once_and_their_total_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reads: list[str] = []

    def read(name: str) -> str:
        reads.append(name)
        return "A=" + "x" * 1000 + "\n"

    services = "".join(f"  s{i}: {{command: x, env_file: [a.env, a.env]}}\n" for i in range(20))
    stack = parse("services:\n" + services, read_text=read)
    assert reads == ["a.env"]
    assert len(stack.services) == 20
    monkeypatch.setattr(bounded_yaml, "MAX_TEXT", 10_000)
    error = refused("services:\n" + services, read_text=read)
    assert len(error.problems) == 1
    assert "env files add more than 10000 characters" in error.problems[0][2]


# --- depth ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "[" * 1000 + "]" * 1000,
        "{a: " * 1000 + "b" + "}" * 1000,
        "".join("\n" + "  " * (i + 4) + "- " for i in range(200)) + "x",
        "[" * 100_000,  # unclosed too
    ],
    ids=["flow-lists", "flow-mappings", "block-lists", "unclosed"],
)
def test_deep_nesting_is_an_error_not_a_recursion_error(value: str) -> None:
    error = refused("services:\n  w:\n    command: " + value + "\n")
    message = error.problems[0][2]
    assert "nests deeper than 64 levels" in message or "nesting depth" in message, message


def test_nesting_up_to_the_limit_is_fine() -> None:
    depth = bounded_yaml.MAX_DEPTH - 3  # the root, services and w are levels too
    stack = parse("services: {w: {command: x, x-deep: " + "[" * depth + "]" * depth + "}}\n")
    assert stack.service("w").command == ("x",)


def test_aliases_that_nest_deeper_than_the_text_are_bounded_too() -> None:
    lines = ["x-0: &a0 [x]"] + [f"x-{i}: &a{i} [*a{i - 1}]" for i in range(1, 100)]
    error = refused("\n".join(lines) + "\nservices: {w: {command: x}}\n")
    assert "once its aliases are resolved" in error.problems[0][2]


def test_deep_interpolation_is_an_error_not_a_recursion_error() -> None:
    text = "${A:-" * 1000 + "x" + "}" * 1000
    with pytest.raises(Bad, match=f"nests deeper than {INTERPOLATION_DEPTH} levels"):
        interpolate(text, {}, lambda name: None)
    error = refused(f'services: {{w: {{command: "{text}"}}}}\n')
    assert error.problems[0][0] == "services.w.command"
    assert len(error.problems[0][2]) < 600  # the value is cut, not pasted whole
    fine = "${A:-" * INTERPOLATION_DEPTH + "x" + "}" * INTERPOLATION_DEPTH
    assert interpolate(fine, {}, lambda name: None) == "x"


# --- text ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('services: {w: {command: "\ud800"}}\n', "not valid Unicode"),
        ('services: {w: {command: "a\x00b"}}\n', "control characters"),
        ("a: 1\n---\nb: 2\n", "expected a single document"),
        ("a: *nothing\n", "undefined alias"),
        ("a: &x 1\nb: &x 2\n", "duplicate anchor"),
    ],
)
def test_odd_text_is_a_spec_error(text: str, fragment: str) -> None:
    error = refused(text)
    assert fragment in error.problems[0][2]


def test_the_check_callback_stops_a_parse() -> None:
    class Stop(Exception):
        pass

    calls = 0

    def check() -> None:
        nonlocal calls
        calls += 1
        if calls > 50:
            raise Stop

    services = "".join(f"  s{i}: {{command: x}}\n" for i in range(100))
    with pytest.raises(Stop):
        parse("services:\n" + services, check=check)


# --- the bounded composer builds PyYAML's nodes ----------------------------------------------


def shape(node: yaml.Node, seen: dict[int, int] | None = None) -> Any:
    """A node graph as plain data (aliases as back references), to compare two graphs."""
    seen = {} if seen is None else seen
    if id(node) in seen:
        return ("alias", seen[id(node)])
    seen[id(node)] = len(seen)
    here = (node.tag, node.start_mark.line, node.start_mark.column)
    if isinstance(node, yaml.ScalarNode):
        return (*here, node.value, node.style or None)  # libyaml writes plain as ""
    if isinstance(node, yaml.SequenceNode):
        return (*here, [shape(item, seen) for item in node.value])
    assert isinstance(node, yaml.MappingNode)
    return (*here, [(shape(k, seen), shape(v, seen)) for k, v in node.value])


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.floats(allow_nan=False),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(yaml_values, st.booleans())
def test_the_composer_matches_pyyaml(value: Any, flow: bool) -> None:
    shared = [value, value]  # yaml.dump writes the repeat as an anchor and an alias
    text = yaml.dump({"a": shared, "b": value}, default_flow_style=flow, allow_unicode=True)
    ours = bounded_yaml.compose(text)
    theirs = yaml.compose(text, Loader=yaml.SafeLoader)
    assert ours is not None and theirs is not None
    assert shape(ours) == shape(theirs)


# --- properties: generated attacks -------------------------------------------------------


def within_bound(run: Callable[[], object]) -> None:
    started = time.monotonic()
    try:
        run()
    except SpecError as exc:
        assert exc.problems
    assert time.monotonic() - started < BOUND


@st.composite
def aliased_documents(draw: st.DrawFn) -> str:
    """Anchored blocks, each made of aliases of earlier ones (as lists, as mappings of
    values, or as merge keys), then services that use them anywhere."""
    count = draw(st.integers(1, 14))
    lines = ["x-defs:"]
    for i in range(count):
        width = draw(st.integers(1, 12))
        refs = [f"*a{draw(st.integers(0, i - 1))}" for _ in range(width)] if i else []
        kind = draw(st.sampled_from(["list", "values", "merge", "scalar"]))
        if not refs or kind == "scalar":
            body = draw(st.sampled_from(["x", "'${A:-b}'", "{command: x}", "[a, b]", "{k: v}"]))
        elif kind == "list":
            body = "[" + ", ".join(refs) + "]"
        elif kind == "values":
            body = "{" + ", ".join(f"k{j}: {ref}" for j, ref in enumerate(refs)) + "}"
        else:
            body = "{<<: [" + ", ".join(refs) + "], k: v}"
        lines.append(f"  d{i}: &a{i} {body}")
    use = [f"*a{draw(st.integers(0, count - 1))}" for _ in range(6)]
    lines += [
        "services:",
        f"  s1: {{<<: [{use[0]}], command: x}}",
        f"  s2: {{command: x, environment: {use[1]}, x-any: {use[2]}}}",
        f"  s3: {use[3]}",
        f"  s4: {{command: {use[4]}, networks: {use[5]}}}",
    ]
    return "\n".join(lines) + "\n"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(aliased_documents())
def test_aliased_and_merged_documents_return_or_raise_spec_error_quickly(text: str) -> None:
    within_bound(lambda: parse(text))


_TOKENS = [
    "[", "]", "{", "}", "a: ", "<<: ", "- ", ", ", "\n", "  ", "&x ", "*x", "&y ", "*y",
    "services:", "command: ", "w: ", "x", "'", '"', "${A:-", "${", "}", "$", "$$", "? ",
    "!!str ", "! ", "#", "|\n", "---\n", "\t", "\\", ":", "&x [", "*x]", "\u00e9", "\ud800",
]  # fmt: skip


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(_TOKENS), max_size=120))
def test_token_soup_returns_or_raises_spec_error_quickly(tokens: list[str]) -> None:
    within_bound(lambda: parse("".join(tokens)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.sampled_from(["[", "]", "{a: ", "}", "- ", "\n  ", ", ", "x"]), max_size=400),
    st.integers(1, 30),
)
def test_nesting_soup_returns_or_raises_spec_error_quickly(tokens: list[str], repeat: int) -> None:
    value = "".join(tokens) * repeat
    within_bound(lambda: parse("services:\n  w:\n    command: " + value + "\n"))


_INTERPOLATION_TOKENS = ["${", "A", ":-", "-", ":?", "?", ":+", "+", "}", "$", "$$", "x", " "]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(_INTERPOLATION_TOKENS), max_size=200), st.integers(1, 20))
def test_interpolation_returns_or_raises_bad_quickly(tokens: list[str], repeat: int) -> None:
    text = "".join(tokens) * repeat
    started = time.monotonic()
    with contextlib.suppress(Bad):
        interpolate(text, {"A": "v"}, lambda name: None)
    assert time.monotonic() - started < BOUND
    within_bound(lambda: parse(f"services: {{w: {{command: x, environment: {{V: '{text}'}}}}}}\n"))


# --- convention files the stack names ----------------------------------------------------


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"name: x\nversion: 1\ndescription: caf\xe9\n", "not UTF-8 text (byte 0xe9)"),
        (b"name: x\nversion: 1\nx: " + b"[" * 1000 + b"]" * 1000 + b"\n", "nesting depth"),
        (b"name: x\nversion: 1\nx: " + b"{a: " * 100 + b"b" + b"}" * 100 + b"\n", "deeper than"),
        (merge_bomb().replace("services:", "x-s:").encode(), "YAML nodes"),
        (b"#" * (2 << 20), "larger than 1048576 bytes"),
    ],
    ids=["not-utf-8", "deep-flow", "deep-mapping", "merge-bomb", "too-big"],
)
def test_a_hostile_convention_file_is_a_convention_error(
    tmp_path: Path, content: bytes, fragment: str
) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    started = time.monotonic()
    with pytest.raises(ConventionError) as info:
        read_convention(path)
    assert time.monotonic() - started < BOUND
    assert any(fragment in message for _, _, message in info.value.problems), info.value
