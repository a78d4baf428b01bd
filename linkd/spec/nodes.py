"""Reading YAML nodes into plain values, each with its path and line.

`yaml.compose` gives a tree of nodes that still carry their line numbers; PyYAML's
constructor would drop them, and would also read `no` as `False`, `22:22` as the base-60
integer 1342 and `010` as 8. So `Reader` works on the nodes and the raw text of scalars:
a node's resolved tag says what kind of value it is, its raw text is the value.

An `At` is a node with its dotted path (`services.web.ports[1]`) and line. `Reader` turns
an `At` into a value or, when the value is wrong, records a problem under that path and
returns None, so the caller skips that value and parsing goes on to find every problem in
one pass. Unknown keys become warnings. String values are interpolated from the host
environment here, before anything reads them, as Compose does.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import TypeVar

import yaml

from linkd.spec.values import Bad, format_duration, interpolate, parse_duration, quote

T = TypeVar("T")
ROOT = "(file)"  # the path of problems about the whole file
Problem = tuple[str, int | None, str]

_TAG = "tag:yaml.org,2002:"
_STR, _NULL, _BOOL, _INT, _FLOAT = (_TAG + x for x in ("str", "null", "bool", "int", "float"))
_MERGE = _TAG + "merge"
_TIMESTAMP = _TAG + "timestamp"
_INTEGER = re.compile(r"[-+]?\d+")


@dataclass(frozen=True, slots=True)
class At:
    """A node, where it is (dotted path) and the line a user should look at."""

    node: yaml.Node
    path: str
    line: int

    @staticmethod
    def root(node: yaml.Node, path: str = "") -> At:
        return At(node, path, node.start_mark.line + 1)

    def item(self, index: int, node: yaml.Node) -> At:
        return At(node, f"{self.path}[{index}]", node.start_mark.line + 1)

    @property
    def is_null(self) -> bool:
        return isinstance(self.node, yaml.ScalarNode) and self.node.tag == _NULL

    @property
    def is_bool(self) -> bool:
        return isinstance(self.node, yaml.ScalarNode) and self.node.tag == _BOOL

    @property
    def is_mapping(self) -> bool:
        return isinstance(self.node, yaml.MappingNode)

    @property
    def is_sequence(self) -> bool:
        return isinstance(self.node, yaml.SequenceNode)


class Origin(str):
    """The file a node was read from, as its marks' `name`, when that is not the stack's
    first file (linkd.spec.documents marks the others): problems name it."""


def origin(node: yaml.Node) -> str | None:
    name = node.start_mark.name
    return name if isinstance(name, Origin) else None


def _nothing() -> None:
    return None


def given(fields: Mapping[str, At], key: str) -> At | None:
    """A field's node, or None when it is missing or null (Compose treats both as unset)."""
    at = fields.get(key)
    return None if at is None or at.is_null else at


def describe(node: yaml.Node) -> str:
    """What a node is, for the "got ..." part of a message."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if node.tag == _NULL:
        return "nothing (null)"
    if node.tag == _STR:
        return quote(node.value)
    return str(node.value)


class Reader:
    """Turns nodes into values, collecting problems and warnings instead of stopping."""

    def __init__(
        self, host_env: Mapping[str, str], check: Callable[[], None] | None = None
    ) -> None:
        self.host_env = host_env
        self.check = check or _nothing  # raises to stop (the daemon's time budget)
        self.problems: list[Problem] = []
        self.warnings: list[str] = []
        self._unset: set[str] = set()
        # id -> (the node, its entries): holding the node keeps its id from being reused
        # by a node made later (linkd.spec.merge makes and drops nodes as it goes)
        self._merges: dict[int, tuple[yaml.Node, list[tuple[str, int, yaml.Node]]]] = {}

    # --- reporting ---

    def fail(self, at: At, message: str) -> None:
        if (file := origin(at.node)) is not None:  # its line is that file's
            self.problems.append((at.path or ROOT, None, f"in {file}, line {at.line}: {message}"))
        else:
            self.problems.append((at.path or ROOT, at.line, message))

    def warn(self, at: At, message: str) -> None:
        file = origin(at.node)
        where = f"{file}, line {at.line}" if file is not None else f"line {at.line}"
        self.warnings.append(f"{at.path} ({where}): {message}")

    def parsed(self, at: At, parse: Callable[[str], T]) -> T | None:
        """The node's text run through `parse`; a `Bad` from it becomes a problem."""
        text = self.text(at)
        if text is None:
            return None
        try:
            return parse(text)
        except Bad as exc:
            self.fail(at, str(exc))
            return None

    # --- collections ---

    def pairs(self, at: At) -> list[tuple[str, At]] | None:
        """A mapping's entries in order, with YAML merge keys (`<<: *base`) applied.

        Explicit keys override merged ones (YAML merge spec); a key written twice is an
        error, as in Compose (PyYAML would silently keep the last).
        """
        self.check()
        if not isinstance(at.node, yaml.MappingNode):
            self.fail(at, f"expected a mapping, got {describe(at.node)}")
            return None
        return [
            (key, At(child, f"{at.path}.{key}" if at.path else key, line))
            for key, line, child in self._merged(at, at.node)
        ]

    def _merged(self, at: At, node: yaml.MappingNode) -> list[tuple[str, int, yaml.Node]]:
        """`node`'s entries as (key, line, value) with merge keys applied, worked out once
        per node: a mapping merged from many places (the shape of a merge-key bomb) costs
        its size once, not once per path to it. Problems are reported the first time,
        under the first path. `linkd.spec.bounded_yaml` has refused recursive documents already.
        """
        done = self._merges.get(id(node))
        if done is not None:
            return done[1]
        merged: dict[str, tuple[int, yaml.Node]] = {}
        explicit: dict[str, tuple[int, yaml.Node]] = {}
        for key_node, value in node.value:
            if key_node.tag == _MERGE:
                sources = value.value if isinstance(value, yaml.SequenceNode) else [value]
                for source in sources:
                    if not isinstance(source, yaml.MappingNode):
                        self.fail(At.root(key_node, at.path), "a merge key (<<) needs a mapping")
                        continue
                    for key, line, child in self._merged(at, source):
                        merged.setdefault(key, (line, child))  # the first source wins
                continue
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode) or key_node.value == "":
                self.fail(At(key_node, at.path, line), "expected a plain key, got a complex one")
                continue
            key = str(key_node.value)
            if key in explicit:
                path = f"{at.path}.{key}" if at.path else key
                first = explicit[key][0]
                message = f"key {quote(key)} is given twice (lines {first}, {line})"
                self.fail(At(value, path, line), message)
                continue
            explicit[key] = (line, value)
        # Explicit keys override merged ones in place: the order and values PyYAML's own
        # merge gives.
        entries = [(key, line, child) for key, (line, child) in (merged | explicit).items()]
        self._merges[id(node)] = (node, entries)
        return entries

    def fields(
        self, at: At, known: Collection[str],
        unsupported: Collection[str] | Mapping[str, str] = (),
    ) -> dict[str, At] | None:
        """A mapping of field names; unknown ones are warned about, `x-*` ones skipped.

        `unsupported` names Compose keys linkd knows but does not implement, so the
        warning can say so instead of suggesting a typo; a mapping gives each its warning
        (linkd.spec.compose_keys).
        """
        pairs = self.pairs(at)
        if pairs is None:
            return None
        fields: dict[str, At] = {}
        for key, child in pairs:
            if key in known:
                fields[key] = child
            elif key in unsupported:
                self.warn(child, unsupported[key] if isinstance(unsupported, Mapping)
                          else "not supported by linkd, ignored")
            elif not key.startswith("x-"):
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean {quote(close[0])}?)" if close else ""
                self.warn(child, f"unknown key, ignored{hint}")
        return fields

    def items(self, at: At) -> list[At] | None:
        if not isinstance(at.node, yaml.SequenceNode):
            self.fail(at, f"expected a list, got {describe(at.node)}")
            return None
        return [at.item(i, node) for i, node in enumerate(at.node.value)]

    def texts(self, at: At) -> list[str] | None:
        """A list of strings; None if it is not a list or any item is not a string."""
        items = self.items(at)
        if items is None:
            return None
        texts = [self.text(item) for item in items]
        return [t for t in texts if t is not None] if None not in texts else None

    # --- scalars ---

    def text(self, at: At) -> str | None:
        """A scalar as a string. Strings are interpolated; numbers keep their written form
        (`user: 1000`); booleans and null are refused, a string field never wants them.
        """
        self.check()
        node = at.node
        if not isinstance(node, yaml.ScalarNode) or node.tag in (_NULL, _BOOL):
            self.fail(at, f"expected a string, got {describe(node)}")
            return None
        if node.tag in (_INT, _FLOAT, _TIMESTAMP):
            return str(node.value)
        if node.tag != _STR:
            self.fail(at, f"unsupported YAML tag {node.tag}")
            return None
        try:
            return interpolate(node.value, self.host_env, lambda name: self._warn_unset(at, name))
        except Bad as exc:
            self.fail(at, str(exc))
            return None

    def raw(self, at: At) -> str | None:
        """A scalar's text whatever its kind (environment values: `DEBUG: yes` is "yes")."""
        if isinstance(at.node, yaml.ScalarNode) and at.node.tag in (_BOOL, _INT, _FLOAT):
            return str(at.node.value)
        return self.text(at)

    def _warn_unset(self, at: At, name: str) -> None:
        if name not in self._unset:  # once per variable, as Compose does
            self._unset.add(name)
            self.warn(at, f"variable {name} is not set, using an empty string")

    def boolean(self, at: At) -> bool | None:
        """A YAML boolean, or the string "true"/"false" (what `${FLAG}` interpolates to)."""
        node = at.node
        if isinstance(node, yaml.ScalarNode) and node.tag == _BOOL:
            return str(node.value).lower() in ("true", "yes", "on")
        got = describe(node)
        if isinstance(node, yaml.ScalarNode) and node.tag == _STR:
            text = self.text(at)
            if text is None or text in ("true", "false"):
                return None if text is None else text == "true"
            got = quote(text)
        self.fail(at, f"expected true or false, got {got}")
        return None

    def duration(self, at: At | None, default: float, minimum: float) -> float:
        """A Go-style duration in seconds; `default` when missing, null or wrong."""
        if at is None or at.is_null:
            return default
        value = self.parsed(at, parse_duration)
        if value is not None and value < minimum:
            least = format_duration(minimum)
            self.fail(at, f"expected a duration of at least {least}, got {format_duration(value)}")
            return default
        return default if value is None else value

    def integer(self, at: At, minimum: int | None = None, why: str = "") -> int | None:
        """An integer, or a string of digits (Compose allows both, for `${N}`)."""
        node = at.node
        text: str | None = None
        if isinstance(node, yaml.ScalarNode) and node.tag in (_INT, _STR):
            text = self.text(at) if node.tag == _STR else str(node.value)
            if text is None:
                return None
        if text is None or not _INTEGER.fullmatch(text):
            got = quote(text) if text is not None and node.tag == _STR else describe(node)
            self.fail(at, f"expected an integer, got {got}")
            return None
        value = int(text)
        if minimum is not None and value < minimum:
            self.fail(at, f"expected an integer >= {minimum}{why}, got {value}")
            return None
        return value
