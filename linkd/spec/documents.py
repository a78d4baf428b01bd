"""The YAML documents a stack is made of, read within bounds, and each made to mean in the
stack what it meant where it was written (linkd.spec.project puts them together).

- `compose` is `bounded_yaml.compose` with its failures said as sentences (`Unreadable`).
- `Files` reads the files a stack names (`include:`, `extends: file:`) through the
  caller's `read_text`, each once, within `MAX_FILES` files and `MAX_TEXT` characters for
  the whole stack, and marks every node of such a file with its name
  (`linkd.spec.nodes.Origin`), so a problem in it says which file its line is in.
- `localize` makes a document's relative paths relative to the stack's directory (an
  included file's paths start in its own directory; Compose resolves them there), and
  interpolates it with variables of its own (an included project's `.env`): the values
  it changes are written back with `$` doubled, so the stack's own interpolation, later,
  leaves them as they are.

Names of files are relative to the stack's directory (or absolute), `/`-separated and
normalized (`a/../b` is `b`); the caller's `read_text` decides what it may read (the
daemon reads only beneath the stack's directory, linkd.loader).
"""

from __future__ import annotations

import errno
import posixpath
from collections.abc import Callable, Mapping

import yaml

from linkd.spec import bounded_yaml
from linkd.spec.merge import OVERRIDE, STR, Pattern, Work, child_pattern, strip
from linkd.spec.nodes import At, Origin, Reader
from linkd.spec.values import Bad, interpolate

MAX_FILES = 32  # files of one stack: -f files and the ones include and extends name
MAX_DEPTH = 16  # include within include, extends of extends
MAX_TEXT = bounded_yaml.MAX_TEXT  # characters of all the stack's files together
_MERGE_KEY = "tag:yaml.org,2002:merge"


class Unreadable(Exception):
    """A file that cannot be used: the message says why, naming it; `line` is 1-based."""

    def __init__(self, message: str, line: int | None = None, *, missing: bool = False
                 ) -> None:
        super().__init__(message)
        self.line = line
        self.missing = missing  # the file does not exist


def compose(text: str, check: Callable[[], None] | None = None) -> yaml.Node | None:
    """The document's root node (None when empty), or `Unreadable`."""
    try:
        return bounded_yaml.compose(text, check)
    except bounded_yaml.Limit as exc:
        raise Unreadable(str(exc), exc.line) from None
    except UnicodeError as exc:
        raise Unreadable(f"the text is not valid Unicode ({exc}); save the file as UTF-8"
                         ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        context = f" ({exc.context})" if exc.context else ""
        raise Unreadable(f"invalid YAML: {exc.problem}{context}",
                         mark.line + 1 if mark else None) from None
    except yaml.YAMLError as exc:
        raise Unreadable(f"invalid YAML: {exc}") from None


def mark(root: yaml.Node, name: str) -> yaml.Node:
    """Every node of `root` marked as read from the file `name` (in place: the nodes are
    this document's own, nobody else holds them yet)."""
    file = Origin(name)
    seen: set[int] = set()
    work = [root]
    while work:
        node = work.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        start, end = node.start_mark, node.end_mark
        node.start_mark = yaml.Mark(file, start.index, start.line, start.column, None, 0)
        if end is not None:
            node.end_mark = yaml.Mark(file, end.index, end.line, end.column, None, 0)
        if isinstance(node, yaml.SequenceNode):
            work.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            work.extend(part for pair in node.value for part in pair)
    return root


def join(base: str, name: str) -> str:
    """`name` (relative to the directory `base`, or absolute), relative to the stack's
    directory and normalized."""
    return posixpath.normpath(posixpath.join(base, name)) if name else base or "."


def relative(base: str, name: str) -> str:
    """A path of a stack file (`./data`, `config/.env`) that meant `name` in the directory
    `base`, written to mean the same from the stack's directory: still starting with `.`
    (Compose reads a volume source that does not as a volume's name)."""
    joined = join(base, name)
    if joined.startswith(("/", "../")) or joined == "..":
        return joined
    return "./" + joined if joined != "." else "."


class Files:
    """The files a stack names, read once each, within the stack's bounds."""

    def __init__(self, read_text: Callable[[str], str] | None,
                 check: Callable[[], None] | None) -> None:
        self.read_text = read_text
        self.check = check
        self.count = 0
        self.chars = 0
        self.nodes: dict[str, yaml.Node | None] = {}
        self.texts: dict[str, str] = {}
        self.work = Work()  # the stack's merging, counted in one place

    def count_text(self, text: str, name: str) -> None:
        """Count a file of the stack against its bounds (`Unreadable` over them)."""
        self.count += 1
        self.chars += len(text)
        if self.count > MAX_FILES:
            raise Unreadable(f"{name}: a stack is made of at most {MAX_FILES} files "
                             "(linkd's limit), counting the ones include and extends name")
        if self.chars > MAX_TEXT:
            raise Unreadable(f"{name}: the stack's files hold more than {MAX_TEXT} "
                             "characters together (linkd's limit)")

    def text(self, name: str) -> str:
        """The text of the file `name`; `Unreadable` saying why it cannot be had."""
        if name in self.texts:
            return self.texts[name]
        if self.read_text is None:
            raise Unreadable(f"cannot read {name}: this stack has no directory to read "
                             "files from")
        try:
            text = self.read_text(name)
        except OSError as exc:
            raise Unreadable(f"cannot read {name}: {exc.strerror or exc}",
                             missing=exc.errno == errno.ENOENT) from None
        except UnicodeError as exc:
            raise Unreadable(f"cannot read {name}: {exc}") from None
        self.count_text(text, name)
        self.texts[name] = text
        return text

    def document(self, name: str) -> yaml.Node | None:
        """The file `name` as nodes marked with its name (None: it is empty)."""
        if name not in self.nodes:
            text = self.text(name)
            try:
                root = compose(text, self.check)
            except Unreadable as exc:
                line = f", line {exc.line}" if exc.line is not None else ""
                raise Unreadable(f"{name}{line}: {exc}") from None
            self.nodes[name] = None if root is None else mark(root, name)
        return self.nodes[name]


# Where a document names a file or directory, by pattern (sequence items as "[]"):
# "path" a path; "volume" a volume's short form, whose source may be one; "context" a
# build context (a URL stays); "convention" a convention file (a name stays).
_S = ("services", "*")
_PATHS: dict[Pattern, str] = {
    (*_S, "env_file"): "path", (*_S, "env_file", "[]"): "path",
    (*_S, "env_file", "[]", "path"): "path",
    (*_S, "label_file"): "path", (*_S, "label_file", "[]"): "path",
    (*_S, "build"): "context", (*_S, "build", "context"): "context",
    (*_S, "extends", "file"): "path",
    (*_S, "volumes", "[]"): "volume",
    (*_S, "x-linkd", "conventions", "[]"): "convention",
    (*_S, "x-linkd", "links", "*", "conventions", "[]"): "convention",
    ("secrets", "*", "file"): "path", ("configs", "*", "file"): "path",
    ("include", "[]"): "path", ("include", "[]", "path"): "path",
    ("include", "[]", "path", "[]"): "path", ("include", "[]", "project_directory"): "path",
    ("include", "[]", "env_file"): "path", ("include", "[]", "env_file", "[]"): "path",
}  # fmt: skip
_BIND = (*_S, "volumes", "[]")  # a long-form volume: its source is a path if type: bind


def localize(r: Reader, root: yaml.Node, base: str, env: Mapping[str, str]) -> yaml.Node:
    """The document `root`, written in the directory `base` (relative to the stack's) and
    meant to be interpolated with `env`, as the stack reads it: its relative paths made
    relative to the stack's directory, and, when `env` is not the stack's own variables,
    every value interpolated (with `$` doubled back). `root` itself when nothing changes."""
    everything = dict(env) != dict(r.host_env)
    if not everything and base in ("", "."):
        return root
    done: dict[tuple[int, Pattern, str], yaml.Node] = {}

    def text(at: At) -> str | None:
        """The value interpolated with `env`, None when that fails (said once)."""
        try:
            return interpolate(str(at.node.value), env,
                               lambda name: r._warn_unset(at, name))
        except Bad as exc:
            r.fail(at, str(exc))
            return None

    def scalar(at: At, kind: str | None) -> yaml.Node:
        node = at.node
        assert isinstance(node, yaml.ScalarNode)
        if not (node.tag == STR or (node.tag == OVERRIDE and strip(node).tag == STR)):
            return node
        if kind is None and not everything:
            return node
        if not everything and "$" not in node.value:
            value: str | None = node.value
        else:
            value = text(at)
            if value is None:
                return node
        assert value is not None
        if kind is not None and base not in ("", "."):
            value = _rebase(kind, value, base)
        if value == node.value and not everything:
            return node
        if everything or "$" in node.value:
            value = value.replace("$", "$$")
        return yaml.ScalarNode(node.tag, value, node.start_mark, node.end_mark, node.style)

    def walk(at: At, pattern: Pattern, kind: str | None) -> yaml.Node:
        node = at.node
        key = (id(node), pattern, kind or "")
        if key in done:
            return done[key]
        r.check()
        out: yaml.Node = node
        if isinstance(node, yaml.ScalarNode):
            out = scalar(at, kind)
        elif isinstance(node, yaml.SequenceNode):
            items = [walk(at.item(i, item), (*pattern, "[]"), _PATHS.get((*pattern, "[]")))
                     for i, item in enumerate(node.value)]
            if any(new is not old for new, old in zip(items, node.value, strict=True)):
                out = yaml.SequenceNode(node.tag, items, node.start_mark, node.end_mark,
                                        flow_style=node.flow_style)
        elif isinstance(node, yaml.MappingNode):
            bind = pattern == _BIND and _plain(node, "type") == "bind"
            pairs: list[tuple[yaml.Node, yaml.Node]] = []
            for k, v in node.value:
                if k.tag == _MERGE_KEY:  # `<<: *base` merges in at this same place
                    merged = v.value if isinstance(v, yaml.SequenceNode) else [v]
                    new = [walk(At(m, at.path, at.line), pattern, None) for m in merged]
                    value = (yaml.SequenceNode(v.tag, new, v.start_mark, v.end_mark)
                             if isinstance(v, yaml.SequenceNode) else new[0])
                    pairs.append((k, value))
                    continue
                if not isinstance(k, yaml.ScalarNode):
                    pairs.append((k, v))
                    continue
                name = str(k.value)
                below = child_pattern(pattern, name)
                child_kind = "path" if bind and name == "source" else _PATHS.get(below)
                path = f"{at.path}.{name}" if at.path else name
                pairs.append((k, walk(At(v, path, k.start_mark.line + 1), below, child_kind)))
            if any(new is not old for (_, new), (_, old) in zip(pairs, node.value, strict=True)):
                out = yaml.MappingNode(node.tag, pairs, node.start_mark, node.end_mark,
                                       flow_style=node.flow_style)
        done[key] = out
        return out

    return walk(At.root(root), (), None)


def _plain(node: yaml.MappingNode, key: str) -> str | None:
    for k, v in node.value:
        if isinstance(k, yaml.ScalarNode) and k.value == key and isinstance(v, yaml.ScalarNode):
            return str(v.value)
    return None


def _rebase(kind: str, value: str, base: str) -> str:
    if kind == "volume":
        source, colon, rest = value.partition(":")
        if colon and source.startswith("."):
            return f"{relative(base, source)}:{rest}"
        return value
    if not value or value.startswith(("/", "~")):
        return value
    if kind == "context" and ("://" in value or value.startswith("git@")):
        return value
    if kind == "convention" and not value.endswith((".yaml", ".yml")):
        return value
    return relative(base, value)
