"""`linkd ps` and friends name the stack of the stack file without the parser where the
text says it plainly; wherever they do, they must name what the parser names."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linkd.cli.stacks import _name_in
from linkd.errors import SpecError
from linkd.spec.stack_file import parse_stack

SERVICES = "services:\n  a:\n    command: sleep 1\n"

TEXTS = [
    SERVICES,
    "name: shop\n" + SERVICES,
    "name: shop   # the shop\n" + SERVICES,
    SERVICES + "name: late\n",
    "name: 'quoted'\n" + SERVICES,
    'name: "Upper"\n' + SERVICES,
    "name: ${NAME:-env}\n" + SERVICES,
    "name: Shop\n" + SERVICES,
    "{name: flow, services: {a: {command: sleep}}}\n",
    "---\nname: doc\n" + SERVICES,
    "x-base: &b\n  name: merged\n" + SERVICES,
    "name:\n" + SERVICES,
    "name: a\nname: b\n" + SERVICES,
    "name:shop\n" + SERVICES,
    "name: 0#\n" + SERVICES,
]


def parsed_name(path: Path) -> str | None:
    try:
        return parse_stack(path.read_text(), source=str(path),
                           default_project=path.parent.name).name
    except SpecError:
        return None


def check(tmp_path: Path, directory: str, text: str) -> None:
    folder = tmp_path / directory
    folder.mkdir(exist_ok=True)
    path = folder / "linkd.yaml"
    path.write_text(text)
    quick = _name_in(path)
    if quick is not None:
        assert quick == parsed_name(path), text


@pytest.mark.parametrize("text", TEXTS)
def test_the_quick_name_is_the_parsers_or_none(tmp_path: Path, text: str) -> None:
    check(tmp_path, "My_Project-1", text)


def test_plain_names_need_no_parser(tmp_path: Path) -> None:
    (tmp_path / "Shop.Dir").mkdir()
    path = tmp_path / "Shop.Dir" / "linkd.yaml"
    path.write_text("name: shop\n" + SERVICES)
    assert _name_in(path) == "shop"
    path.write_text(SERVICES)
    assert _name_in(path) == "shopdir"  # the directory, as Compose normalizes it


@settings(max_examples=200, deadline=None)
@given(directory=st.text(st.characters(min_codepoint=45, max_codepoint=122,
                                       blacklist_characters="/\\:"), min_size=1, max_size=30),
       name=st.one_of(st.none(), st.text("abcXYZ019_-$'\" {}#:\t", max_size=12)))
def test_never_a_name_the_parser_would_not_give(
    tmp_path_factory: pytest.TempPathFactory, directory: str, name: str | None
) -> None:
    if directory in (".", ".."):
        return
    text = SERVICES if name is None else f"name:{name}\n" + SERVICES
    check(tmp_path_factory.mktemp("d"), directory, text)


def test_a_pipe_is_left_whole_for_the_parser(tmp_path: Path) -> None:
    """`-f /dev/stdin`, `-f <(...)`: the quick look must not read (and so empty) a pipe,
    nor wait for a writer that never comes."""
    import os

    fifo = tmp_path / "stack.yaml"
    os.mkfifo(fifo)
    assert _name_in(fifo) is None  # returns at once: no writer, nothing read
    read, write = os.pipe()
    os.write(write, b"name: piped\nservices: {a: {command: sleep 1}}\n")
    try:
        assert _name_in(Path(f"/proc/self/fd/{read}")) is None
        assert os.read(read, 100).startswith(b"name: piped")  # still all there
    finally:
        os.close(read)
        os.close(write)
