"""Image references: Docker's grammar and normalization (linkd.core.reference)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from linkd.core import reference
from linkd.core.reference import Reference
from linkd.errors import ReferenceFormatError as ReferenceError

D = "sha256:" + "0123456789abcdef" * 4

GOOD = [
    # (as written, normalized, familiar)
    ("busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("busybox:1.36", "docker.io/library/busybox:1.36", "busybox:1.36"),
    ("redis:7-alpine", "docker.io/library/redis:7-alpine", "redis:7-alpine"),
    ("library/redis", "docker.io/library/redis:latest", "redis:latest"),
    ("bitnami/redis:7.2", "docker.io/bitnami/redis:7.2", "bitnami/redis:7.2"),
    ("docker.io/redis", "docker.io/library/redis:latest", "redis:latest"),
    ("index.docker.io/library/redis", "docker.io/library/redis:latest", "redis:latest"),
    ("index.docker.io/bitnami/redis", "docker.io/bitnami/redis:latest", "bitnami/redis:latest"),
    ("docker.io/library/a/b", "docker.io/library/a/b:latest", "library/a/b:latest"),
    ("ghcr.io/org/app:v1", "ghcr.io/org/app:v1", "ghcr.io/org/app:v1"),
    (f"ghcr.io/org/app@{D}", f"ghcr.io/org/app@{D}", f"ghcr.io/org/app@{D}"),
    (f"ghcr.io/org/app:v1@{D}", f"ghcr.io/org/app:v1@{D}", f"ghcr.io/org/app:v1@{D}"),
    (f"busybox@{D}", f"docker.io/library/busybox@{D}", f"busybox@{D}"),
    ("127.0.0.1:5000/test/bb:1", "127.0.0.1:5000/test/bb:1", "127.0.0.1:5000/test/bb:1"),
    ("localhost/bb", "localhost/bb:latest", "localhost/bb:latest"),
    ("localhost:5000/a/b/c", "localhost:5000/a/b/c:latest", "localhost:5000/a/b/c:latest"),
    ("[::1]:5000/bb:x", "[::1]:5000/bb:x", "[::1]:5000/bb:x"),
    ("Registry/bb", "Registry/bb:latest", "Registry/bb:latest"),  # upper case: a host
    ("a__b/c-d/e..x", None, None),  # ".." is not one separator: refused below instead
    ("a__b/c---d/e.f_g", "docker.io/a__b/c---d/e.f_g:latest", "a__b/c---d/e.f_g:latest"),
    ("x:_tag", "docker.io/library/x:_tag", "x:_tag"),
    ("x:" + "T" * 128, "docker.io/library/x:" + "T" * 128, "x:" + "T" * 128),
]


@pytest.mark.parametrize(("text", "normal", "familiar"),
                         [g for g in GOOD if g[1] is not None])
def test_references_normalize_as_docker_does(text: str, normal: str, familiar: str) -> None:
    ref = reference.parse(text)
    assert str(ref) == normal
    assert ref.familiar == familiar
    assert reference.parse(normal) == ref  # normal form is a fixed point


BAD = [
    # (as written, the rule named)
    ("", "empty"),
    ("0123456789abcdef" * 4, "identifier"),
    ("Busybox", "lower case"),
    ("docker.io/Library/redis", "lower case"),
    ("bb:", "tag"),
    ("bb:.x", "tag"),
    ("bb:" + "t" * 129, "tag"),
    ("bb:a b", "tag"),
    ("bb@sha256:abc", "digest"),
    ("bb@" + D.upper().replace("SHA256", "sha256"), "digest"),
    ("bb@md5:" + "0" * 32, "digest"),
    ("bb@", "digest"),
    ("a__b/c-d/e..x", "component"),
    ("-bb", "component"),
    ("bb-", "component"),
    ("a//b", "component"),
    ("a/b/", "component"),
    ("bb_/x", "component"),
    ("host-.io/x", "domain"),
    ("host.io:port/x", "domain"),
    ("[zz]:5000/x", "domain"),
    ("x/" + "a" * 255, "length"),
]


@pytest.mark.parametrize(("text", "rule"), BAD)
def test_bad_references_name_the_rule(text: str, rule: str) -> None:
    with pytest.raises(ReferenceError) as info:
        reference.parse(text)
    assert info.value.rule == rule, str(info.value)
    assert repr(text) in str(info.value)


def test_api_host_and_ref() -> None:
    assert reference.parse("redis").api_host == "registry-1.docker.io"
    assert reference.parse("127.0.0.1:5000/bb").api_host == "127.0.0.1:5000"
    assert reference.parse("bb:1").ref == "1"
    assert reference.parse(f"bb:1@{D}").ref == D


def test_has_domain() -> None:
    assert reference.has_domain("127.0.0.1:5000/test/bb:1")
    assert reference.has_domain("localhost/x")
    assert reference.has_domain("ghcr.io/a/b")
    assert not reference.has_domain("bitnami/redis:7")
    assert not reference.has_domain("redis:7")
    assert not reference.has_domain("bb.tar")


# -- properties ------------------------------------------------------------------------

alnum = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=6)
separator = st.sampled_from([".", "_", "__", "-", "--"])
component = st.builds(lambda a, rest: a + "".join(s + b for s, b in rest),
                      alnum, st.lists(st.tuples(separator, alnum), max_size=2))
path = st.lists(component, min_size=1, max_size=4).map("/".join)
label = st.from_regex(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,5}[a-zA-Z0-9])?", fullmatch=True)
domain = st.builds(lambda labels, port: ".".join(labels) + port,
                   st.lists(label, min_size=2, max_size=3),
                   st.sampled_from(["", ":5000", ":1"]))
tag = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)
digest = st.binary(min_size=32, max_size=32).map(lambda b: "sha256:" + b.hex())


@given(domain, path, st.none() | tag, st.none() | digest)
def test_generated_references_round_trip(dom: str, p: str, t: str | None,
                                         d: str | None) -> None:
    text = f"{dom}/{p}" + (f":{t}" if t else "") + (f"@{d}" if d else "")
    ref = reference.parse(text)
    assert ref == Reference(dom, p, t or ("" if d else "latest"), d or "")
    assert reference.parse(str(ref)) == ref
    assert reference.parse(ref.familiar) == ref


@given(path, st.none() | tag)
def test_names_without_a_registry_are_docker_hub(p: str, t: str | None) -> None:
    text = p + (f":{t}" if t else "")
    first = p.partition("/")[0]
    if "." in first and "/" in p:
        return  # a first component with "." is a registry
    ref = reference.parse(text)
    assert ref.domain == "docker.io"
    assert ref.path == (p if "/" in p else f"library/{p}")
    assert reference.parse(ref.familiar) == ref


@given(st.text(max_size=40))
def test_any_text_parses_or_names_a_rule(text: str) -> None:
    try:
        ref = reference.parse(text)
    except ReferenceError as exc:
        assert exc.rule in {"empty", "identifier", "lower case", "tag", "digest",
                            "component", "domain", "length"}
    else:
        assert reference.parse(str(ref)) == ref
