"""YAML text to nodes within bounds: nesting depth, size once aliases expand, and time.

A stack file comes from strangers (the API, a repository someone runs `linkd up` in), so
reading it must finish quickly whatever it holds. Three things stood in the way with
`yaml.compose`:

- **Depth.** PyYAML's composer recurses once per nesting level, so `[` x 1000 raised
  RecursionError (libyaml's composer, through Cython, would recurse on the C stack).
  Here libyaml (PyYAML's pure-Python parser when libyaml is missing) turns the text into
  events and one loop builds the nodes with an explicit stack of open collections; a
  collection nested deeper than `MAX_DEPTH` is refused where it opens.
- **Aliases.** An alias (`*name`) is the anchored node itself, so the nodes form a graph,
  and anything that walks them as a tree (the schema reader, a merge key `<<`) does the
  work of the tree they expand to: nine aliases a level, eight levels deep, is 9^8 nodes
  from 457 bytes (it took 163 s in the reader's merge step). `check_expansion` measures
  that tree once per distinct node (memoised: linear in the text) and refuses it above
  `MAX_NODES` nodes or `MAX_TEXT` characters of values, naming the node where it is
  first exceeded; an alias inside the node it names (a recursive document) is refused
  too, as Compose's YAML library does. Everything after this walks at most that tree.
- **Speed.** PyYAML's pure-Python scanner reads about 70 KB/s; libyaml ten times that.

Errors are `Limit` (a message and a 1-based line), which the parser files as a problem of
the whole file. `check`, when given, is called as the work goes on; the caller raises from
it to stop (the daemon's time budget: this module keeps no clock).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import yaml

MAX_DEPTH = 64  # nested collections; Compose files need about 8 (deploy.resources.limits)
MAX_NODES = 100_000  # keys, values, lists and mappings, counting aliases where used
MAX_TEXT = 8_000_000  # characters of values, counting aliases where used

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # events and tag resolution
_STRUCTURE_HINT = (
    "; aliases (*name) and merge keys (<<) count once for every place they are used, so "
    "write the repeated parts out, or use fewer aliases of large blocks"
)


class Limit(Exception):
    """The document breaks one of this module's bounds; `line` is 1-based or None."""

    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.line = line


def _nothing() -> None:
    return None


def compose(text: str, check: Callable[[], None] | None = None) -> yaml.Node | None:
    """The document's root node (None for an empty stream), its size checked.

    Raises `Limit`, or PyYAML's `YAMLError` for text that is not YAML, or `UnicodeError`
    for text that cannot be encoded (a lone surrogate from a JSON `\\ud800`).
    """
    loader = _Loader(text)
    try:
        root = _compose(loader, check or _nothing)
    finally:
        loader.dispose()
    if root is not None:
        check_expansion(root, check)
    return root


def _compose(loader: Any, check: Callable[[], None]) -> yaml.Node | None:
    """Build the node graph from the events, the way PyYAML's Composer does, iteratively.

    YAML (and PyYAML) details kept: an anchor names its node from the node's start, so
    an alias inside it refers to it (found later by `check_expansion`); an anchor given
    twice and an alias to no anchor are errors; a tag that is absent or `!` is resolved
    from the value (`yes` is a boolean, `<<` a merge key); one document at most.
    """
    loader.get_event()  # StreamStart
    if loader.check_event(yaml.StreamEndEvent):
        loader.get_event()
        return None
    document = loader.get_event()  # DocumentStart
    anchors: dict[str, yaml.Node] = {}
    # Open collections, each with the key node waiting for its value (mappings only).
    open_: list[tuple[yaml.CollectionNode, list[yaml.Node]]] = []
    root: yaml.Node | None = None
    count = 0
    while True:
        count += 1
        if count % 256 == 0:
            check()
            if count > MAX_NODES:
                where: Any = loader.peek_event().start_mark
                raise Limit(_too_many(MAX_NODES, "the document has"), where.line + 1)
        event: Any = loader.get_event()
        if isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            closed, _ = open_.pop()
            closed.end_mark = event.end_mark
            if not open_:
                break
            continue
        node = _node(loader, event, anchors)
        if root is None:
            root = node
        else:
            parent, pending = open_[-1]
            if isinstance(parent, yaml.SequenceNode):
                parent.value.append(node)
            elif pending:
                parent.value.append((pending.pop(), node))
            else:
                pending.append(node)
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            assert isinstance(node, yaml.CollectionNode)
            if len(open_) >= MAX_DEPTH:
                start: Any = event.start_mark
                raise Limit(
                    f"the document nests deeper than {MAX_DEPTH} levels of lists and "
                    "mappings (linkd's limit; a stack file needs about 8)",
                    start.line + 1,
                )
            open_.append((node, []))
        elif not open_:
            break  # the root is a scalar or an alias
    loader.get_event()  # DocumentEnd
    if not loader.check_event(yaml.StreamEndEvent):
        extra = loader.get_event()
        raise yaml.composer.ComposerError(
            "expected a single document in the stream",
            document.start_mark,
            "but found another document",
            extra.start_mark,
        )
    loader.get_event()  # StreamEnd
    return root


def _node(loader: Any, event: Any, anchors: dict[str, yaml.Node]) -> yaml.Node:
    start: Any = event.start_mark
    end: Any = event.end_mark
    if isinstance(event, yaml.AliasEvent):
        found = anchors.get(str(event.anchor))
        if found is None:
            raise yaml.composer.ComposerError(
                None, None, f"found undefined alias {event.anchor!r}", start
            )
        return found
    anchor = getattr(event, "anchor", None)
    if anchor is not None and anchor in anchors:
        raise yaml.composer.ComposerError(
            f"found duplicate anchor {anchor!r}; first occurrence",
            anchors[anchor].start_mark,
            "second occurrence",
            start,
        )
    node: yaml.Node
    if isinstance(event, yaml.ScalarEvent):
        tag = event.tag
        if tag is None or tag == "!":
            tag = loader.resolve(yaml.ScalarNode, event.value, event.implicit)
        node = yaml.ScalarNode(tag, event.value, start, end, event.style)
    elif isinstance(event, yaml.SequenceStartEvent):
        tag = event.tag
        if tag is None or tag == "!":
            tag = loader.resolve(yaml.SequenceNode, None, event.implicit)
        node = yaml.SequenceNode(tag, [], start, None, flow_style=event.flow_style)
    elif isinstance(event, yaml.MappingStartEvent):
        tag = event.tag
        if tag is None or tag == "!":
            tag = loader.resolve(yaml.MappingNode, None, event.implicit)
        node = yaml.MappingNode(tag, [], start, None, flow_style=event.flow_style)
    else:  # the parser gives nothing else inside a document
        raise yaml.composer.ComposerError(None, None, f"unexpected {type(event).__name__}", start)
    if anchor is not None:
        anchors[anchor] = node
    return node


def check_expansion(root: yaml.Node, check: Callable[[], None] | None = None) -> None:
    """Refuse a document whose aliases expand past `MAX_NODES` nodes, `MAX_TEXT`
    characters or `MAX_DEPTH` levels, or refer to a node that contains them.

    One depth-first pass with an explicit stack; each distinct node is measured once
    (its size is the sum of its children's, memoised), so the cost is the size of the
    text, not of its expansion; it stops at the first node over a limit.
    """
    check = check or _nothing
    measured: dict[int, tuple[int, int, int]] = {}  # id -> (nodes, characters, depth)
    on_path: set[int] = set()  # collections whose children are still being measured
    work: list[tuple[yaml.Node, bool]] = [(root, False)]
    steps = 0
    while work:
        steps += 1
        if steps % 256 == 0:
            check()
        node, children_done = work.pop()
        key = id(node)
        if key in measured:
            continue
        if isinstance(node, yaml.ScalarNode):
            measured[key] = (1, len(node.value), 0)
            _refuse_if_over(node, 1, len(node.value), 0)
            continue
        children = (
            node.value
            if isinstance(node, yaml.SequenceNode)
            else [part for pair in node.value for part in pair]
        )
        if children_done:
            on_path.discard(key)
            nodes, chars, depth = 1, 0, 0
            for child in children:
                n, c, d = measured[id(child)]
                nodes, chars, depth = nodes + n, chars + c, max(depth, d)
            _refuse_if_over(node, nodes, chars, depth + 1)
            measured[key] = (nodes, chars, depth + 1)
            continue
        if key in on_path:
            raise Limit(
                "an alias refers to a node that contains it (a recursive document "
                "expands forever); linkd, like Compose, refuses it",
                node.start_mark.line + 1,
            )
        on_path.add(key)
        work.append((node, True))
        work.extend((child, False) for child in children if id(child) not in measured)


def _too_many(limit: int, verb: str) -> str:
    return (
        f"{verb} more than {limit} YAML nodes (keys, values, lists and mappings; linkd's "
        f"limit for a stack file){_STRUCTURE_HINT}"
    )


def _refuse_if_over(node: yaml.Node, nodes: int, chars: int, depth: int) -> None:
    line = node.start_mark.line + 1
    if nodes > MAX_NODES:
        raise Limit(_too_many(MAX_NODES, "this value expands to"), line)
    if chars > MAX_TEXT:
        raise Limit(
            f"this value expands to more than {MAX_TEXT} characters of text (linkd's "
            f"limit for a stack file){_STRUCTURE_HINT}",
            line,
        )
    if depth > MAX_DEPTH:
        raise Limit(
            f"this value nests deeper than {MAX_DEPTH} levels of lists and mappings once "
            f"its aliases are resolved (linkd's limit; a stack file needs about 8)",
            line,
        )
