"""Convention files: their schema, their template language, and the loader that checks them.

A convention says which environment variables and hosts-file lines a link produces. It is
data: adding one needs a YAML file, never code. The renderer
that applies a loaded `Convention` to links is `linkd.conventions.render`.

The schema (version 1), every key but `name` and `version` optional::

    name: docker-links          # letters, digits, '-', '_'; names the variables' origin
    version: 1                  # the schema version; only 1 exists
    description: ...            # free text
    reference: ...              # free text: where the rules come from
    ports:
      order: tcp-first          # declared (default): the stack file's order, deduplicated
                                # tcp-first: all TCP ports by number, then the other
                                #   protocols by name, each by number (Docker)
    names:                      # derived fields: a built-in field, transformed
      ALIAS:
        from: alias             # alias service peer hostname linker port_name var
        case: upper             # upper | lower | keep (default)
        replace:                # regular expression -> literal text, applied in order,
          - ["-", "_"]          #   after `case`; the text is literal (no \\1)
    variables:                  # blocks, rendered in order for each link
      - each: port              # link first_port port named_port range env template
        set:                    # variable-name template: value template
          "{ALIAS}_PORT_{port}_{PROTO}": "{proto}://{addr}:{port}"
    hosts:                      # hosts-file line templates, once per link
      - "{addr}\\t{alias} {hostname} {peer}"

What `each:` repeats over, and the fields its templates may use besides the link fields
(`alias service peer hostname linker addr addr6` and `env[NAME]`, `ports[NAME]`):

    link        once                               -
    first_port  the first port, if any             port proto PROTO
    port        every port (every number of a range)  port proto PROTO
    named_port  every port that has a name         port proto PROTO port_name
    range       every run of 2+ consecutive port numbers of one protocol, in port order
                                                   start end proto PROTO
    env         every peer variable on the link's allow-list (never HOME or PATH)
                                                   var value
    template    every variable the link declares (`LinkTarget.templates`), its value
                rendered with the link and first-port fields       name value

Templates are text with `{field}` placeholders, `{env[NAME]}` (the peer's variable NAME)
and `{ports[NAME]}` (the number of the peer's port named NAME); `{{` and `}}` are literal
braces. Nothing else: no expressions, no format specs, no eval. A variable or hosts line
whose template uses `{addr6}` is left out when the peer has no IPv6 address.

The loader reports every problem at once in a `ConventionError` naming the file, the key
(`variables[2].set."{ALIAS}_PORT"`), the line and the problem; an unknown key is an error,
not a warning, because a typo in a convention silently changes what programs receive.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import yaml

from linkd.errors import ConventionError
from linkd.spec import bounded_yaml

__all__ = [
    "EACH",
    "LINK_FIELDS",
    "Block",
    "Convention",
    "Field",
    "NameRule",
    "Template",
    "parse_convention",
    "parse_template",
]

Each = Literal["link", "first_port", "port", "named_port", "range", "env", "template"]
PortOrder = Literal["declared", "tcp-first"]
Case = Literal["upper", "lower", "keep"]
Problem = tuple[str, int | None, str]

LINK_FIELDS = frozenset({"alias", "service", "peer", "hostname", "linker", "addr", "addr6"})
_PORT_FIELDS = frozenset({"port", "proto", "PROTO"})
# The fields each kind of block offers on top of the link fields.
EACH: dict[str, frozenset[str]] = {
    "link": frozenset(),
    "first_port": _PORT_FIELDS,
    "port": _PORT_FIELDS,
    "named_port": _PORT_FIELDS | {"port_name"},
    "range": frozenset({"start", "end", "proto", "PROTO"}),
    "env": frozenset({"var", "value"}),
    "template": frozenset({"name", "value"}),
}
INDEXED = frozenset({"env", "ports"})
_BUILTIN_FIELDS = LINK_FIELDS.union(*EACH.values())
_SOURCES = ("alias", "service", "peer", "hostname", "linker", "port_name", "var")
_PORT_ORDERS: tuple[PortOrder, ...] = ("declared", "tcp-first")
_CASES: tuple[Case, ...] = ("upper", "lower", "keep")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PLACEHOLDER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:\[([^\[\]{}]*)\])?")
_CONVENTION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_TAG = "tag:yaml.org,2002:"


# --- templates ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Field:
    """`{name}`, or `{name[key]}` for the indexed fields `env` and `ports`."""

    name: str
    key: str | None = None


@dataclass(frozen=True, slots=True)
class Template:
    text: str
    parts: tuple[str | Field, ...]

    def fields(self) -> tuple[Field, ...]:
        return tuple(p for p in self.parts if isinstance(p, Field))


def parse_template(text: str) -> Template:
    """The parts of a template; ValueError with a message a user can act on."""
    parts: list[str | Field] = []
    literal: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char in "{}" and text[i + 1 : i + 2] == char:
            literal.append(char)
            i += 2
        elif char == "}":
            raise ValueError(f"a lone '}}' at column {i + 1}; write '}}}}' for a brace")
        elif char == "{":
            end = text.find("}", i)
            if end < 0:
                raise ValueError(f"the '{{' at column {i + 1} is never closed")
            parts.extend(["".join(literal)] if literal else [])
            literal = []
            parts.append(_placeholder(text[i + 1 : end]))
            i = end + 1
        else:
            literal.append(char)
            i += 1
    parts.extend(["".join(literal)] if literal else [])
    return Template(text, tuple(parts))


def _placeholder(inner: str) -> Field:
    match = _PLACEHOLDER.fullmatch(inner)
    if match is None:
        raise ValueError(f"{{{inner}}} is not a field; write {{name}} or {{env[NAME]}}")
    name, key = match.group(1), match.group(2)
    if key is not None and name not in INDEXED:
        raise ValueError(f"{{{inner}}}: only env[...] and ports[...] take a [key]")
    if name in INDEXED and not key:
        raise ValueError(f"{{{inner}}} needs a name in brackets, like {{{name}[NAME]}}")
    return Field(name, key)


# --- the loaded convention ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NameRule:
    """A derived field: a built-in field's value, case-mapped, then rewritten."""

    field: str
    source: str
    case: Case = "keep"
    replace: tuple[tuple[re.Pattern[str], str], ...] = ()

    def apply(self, text: str) -> str:
        if self.case == "upper":
            text = text.upper()
        elif self.case == "lower":
            text = text.lower()
        for pattern, replacement in self.replace:
            # Backslashes doubled: the replacement is literal text, no group references.
            text = pattern.sub(replacement.replace("\\", "\\\\"), text)
        return text


@dataclass(frozen=True, slots=True)
class Block:
    each: Each
    set: tuple[tuple[Template, Template], ...]  # (name template, value template)


@dataclass(frozen=True, slots=True)
class Convention:
    name: str
    source: str  # the file it came from, for messages
    port_order: PortOrder = "declared"
    names: tuple[NameRule, ...] = ()
    variables: tuple[Block, ...] = ()
    hosts: tuple[Template, ...] = ()
    description: str = ""


# --- parsing --------------------------------------------------------------------------------


def parse_convention(text: str, origin: str = "<text>") -> Convention:
    """A convention from its YAML text; `origin` (a file's path, say) names it in messages.

    Raises `ConventionError` listing every problem. Reading a convention's file is the
    shell's job (`linkd.runtime.stack.conventions`): this package reads no files.
    """
    loader = _Loader(origin)
    convention = loader.convention(text)
    if loader.problems or convention is None:
        raise ConventionError(loader.problems, origin)
    return convention


@dataclass(frozen=True, slots=True)
class _At:
    node: yaml.Node
    key: str

    @property
    def line(self) -> int:
        return int(self.node.start_mark.line) + 1

    def child(self, key: str, node: yaml.Node) -> _At:
        return _At(node, f"{self.key}.{key}" if self.key else key)

    def item(self, index: int, node: yaml.Node) -> _At:
        return _At(node, f"{self.key}[{index}]")


class _Loader:
    """Walks the composed YAML nodes (which keep line numbers), collecting problems."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.problems: list[Problem] = []
        self.derived: dict[str, str] = {}  # derived field -> its source, once `names` is read

    def fail(self, at: _At, message: str) -> None:
        self.problems.append((at.key or "(file)", at.line, message))

    def convention(self, text: str) -> Convention | None:
        try:  # bounded: nesting, aliases and merge keys (linkd.spec.bounded_yaml)
            root = bounded_yaml.compose(text)
        except bounded_yaml.Limit as exc:
            self.problems.append(("(file)", exc.line, str(exc)))
            return None
        except UnicodeError as exc:
            self.problems.append(("(file)", None, f"not valid Unicode: {exc}"))
            return None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark is not None else None
            self.problems.append(("(file)", line, f"not valid YAML: {exc}"))
            return None
        if root is None:
            self.problems.append(("(file)", None, "empty; a convention needs name and version"))
            return None
        top = self.mapping(_At(root, ""), _TOP, required=("name", "version"))
        if top is None:
            return None
        name = self.text(top["name"]) if "name" in top else None
        if name is not None and not _CONVENTION_NAME.fullmatch(name):
            self.fail(top["name"], f"expected letters, digits, '-' and '_', got {name!r}")
        if "version" in top:
            self.version(top["version"])
        names = self.names(top["names"]) if "names" in top else ()
        self.derived = derived = {rule.field: rule.source for rule in names}
        blocks = self.blocks(top["variables"], derived) if "variables" in top else ()
        hosts = self.hosts(top["hosts"], derived) if "hosts" in top else ()
        order = self.port_order(top["ports"]) if "ports" in top else "declared"
        description = self.text(top["description"]) if "description" in top else ""
        if "reference" in top:
            self.text(top["reference"])
        if name is None or self.problems:
            return None
        return Convention(name, self.origin, order, names, blocks, hosts, description or "")

    # --- sections ---

    def version(self, at: _At) -> None:
        node = at.node
        if not (isinstance(node, yaml.ScalarNode) and node.tag == _TAG + "int"):
            self.fail(at, f"expected the integer 1, got {_describe(node)}")
        elif node.value != "1":
            self.fail(at, f"unknown schema version {node.value}; this linkd reads version 1")

    def port_order(self, at: _At) -> PortOrder:
        fields = self.mapping(at, ("order",))
        order = self.text(fields["order"]) if fields and "order" in fields else None
        for known in _PORT_ORDERS:
            if order == known:
                return known
        if order is not None and fields is not None:
            self.fail(fields["order"], f"expected one of {', '.join(_PORT_ORDERS)}, got {order!r}")
        return "declared"

    def names(self, at: _At) -> tuple[NameRule, ...]:
        rules: list[NameRule] = []
        for field, rule_at in self.pairs(at) or []:
            if not _IDENT.fullmatch(field) or field in _BUILTIN_FIELDS | INDEXED:
                why = "is a built-in field" if _IDENT.fullmatch(field) else "is not an identifier"
                self.fail(rule_at, f"cannot define {field!r}: it {why}; pick another name")
                continue
            rule = self.name_rule(field, rule_at)
            if rule is not None:
                rules.append(rule)
        return tuple(rules)

    def name_rule(self, field: str, at: _At) -> NameRule | None:
        fields = self.mapping(at, ("from", "case", "replace"), required=("from",))
        if fields is None or "from" not in fields:
            return None
        source = self.text(fields["from"])
        if source is not None and source not in _SOURCES:
            self.fail(fields["from"], f"expected one of {', '.join(_SOURCES)}, got {source!r}")
            source = None
        case: Case = "keep"
        if "case" in fields:
            given = self.text(fields["case"])
            matched = [c for c in _CASES if c == given]
            if given is not None and not matched:
                self.fail(fields["case"], f"expected one of {', '.join(_CASES)}, got {given!r}")
            case = matched[0] if matched else "keep"
        replace = self.replacements(fields["replace"]) if "replace" in fields else ()
        return NameRule(field, source, case, replace) if source is not None else None

    def replacements(self, at: _At) -> tuple[tuple[re.Pattern[str], str], ...]:
        result: list[tuple[re.Pattern[str], str]] = []
        for item in self.items(at) or []:
            pair = self.items(item)
            if pair is None:
                continue
            texts = [self.text(p) for p in pair]
            if len(texts) != 2:
                self.fail(item, f"expected [pattern, replacement], got {len(texts)} items")
                continue
            pattern, replacement = texts
            if pattern is None or replacement is None:
                continue
            try:
                result.append((re.compile(pattern), replacement))
            except re.error as exc:
                self.fail(pair[0], f"bad regular expression {pattern!r}: {exc}")
        return tuple(result)

    def blocks(self, at: _At, derived: dict[str, str]) -> tuple[Block, ...]:
        blocks: list[Block] = []
        for item in self.items(at) or []:
            fields = self.mapping(item, ("each", "set"), required=("each", "set"))
            if fields is None or "each" not in fields or "set" not in fields:
                continue
            each = self.text(fields["each"])
            kind = next((k for k in _EACH_KINDS if k == each), None)
            if kind is None:
                if each is not None:
                    known = ", ".join(EACH)
                    self.fail(fields["each"], f"expected one of {known}, got {each!r}")
                continue
            scope = self.scope(kind, derived)
            pairs = []
            for name, value_at in self.pairs(fields["set"]) or []:
                name_t = self.template(value_at, name, scope, kind, what="the name")
                value_t = self.template(value_at, self.text(value_at), scope, kind)
                if name_t is not None and value_t is not None:
                    pairs.append((name_t, value_t))
            blocks.append(Block(kind, tuple(pairs)))
        return tuple(blocks)

    def hosts(self, at: _At, derived: dict[str, str]) -> tuple[Template, ...]:
        scope = self.scope("link", derived)
        lines = [self.template(i, self.text(i), scope, "hosts") for i in self.items(at) or []]
        return tuple(line for line in lines if line is not None)

    @staticmethod
    def scope(kind: str, derived: dict[str, str]) -> frozenset[str]:
        """The fields a block of this kind may use: built-in, then those derived from them."""
        base = LINK_FIELDS | EACH[kind] if kind in EACH else LINK_FIELDS
        return base | {field for field, source in derived.items() if source in base}

    def template(
        self, at: _At, text: str | None, scope: frozenset[str], kind: str, what: str = ""
    ) -> Template | None:
        if text is None:
            return None
        prefix = f"{what} {text!r}: " if what else ""
        try:
            template = parse_template(text)
        except ValueError as exc:
            self.fail(at, f"{prefix}{exc}")
            return None
        for field in template.fields():
            if field.key is None and field.name not in scope:
                self.fail(at, prefix + _unavailable(field.name, kind, scope, self.derived))
                return None
        return template

    # --- generic shapes ---

    def pairs(self, at: _At) -> list[tuple[str, _At]] | None:
        """A mapping's entries in order; a key given twice is an error (PyYAML keeps the
        last one silently)."""
        if not isinstance(at.node, yaml.MappingNode):
            self.fail(at, f"expected a mapping, got {_describe(at.node)}")
            return None
        result: dict[str, _At] = {}
        for key_node, value in at.node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self.fail(_At(key_node, at.key), "expected a plain key, got a complex one")
                continue
            key = str(key_node.value)
            if key in result:
                self.fail(at.child(key, value), f"key {key!r} is given twice")
                continue
            result[key] = at.child(key if _IDENT.fullmatch(key) else f'"{key}"', value)
        return list(result.items())

    def mapping(
        self, at: _At, known: tuple[str, ...], required: tuple[str, ...] = ()
    ) -> dict[str, _At] | None:
        pairs = self.pairs(at)
        if pairs is None:
            return None
        fields = dict(pairs)
        for key, child in pairs:
            if key not in known:
                self.fail(
                    child, f"unknown key{_did_you_mean(key, known)}; known: {', '.join(known)}"
                )
        for key in required:
            if key not in fields:
                self.fail(at, f"missing required key {key!r}")
        return {k: v for k, v in fields.items() if k in known}

    def items(self, at: _At) -> list[_At] | None:
        if not isinstance(at.node, yaml.SequenceNode):
            self.fail(at, f"expected a list, got {_describe(at.node)}")
            return None
        return [at.item(i, node) for i, node in enumerate(at.node.value)]

    def text(self, at: _At) -> str | None:
        node = at.node
        if isinstance(node, yaml.ScalarNode) and node.tag in (_TAG + "str", _TAG + "int"):
            return str(node.value)
        hint = (
            " (quote a template that starts with '{')" if isinstance(node, yaml.MappingNode) else ""
        )
        self.fail(at, f"expected a string, got {_describe(node)}{hint}")
        return None


_TOP = ("name", "version", "description", "reference", "ports", "names", "variables", "hosts")
_EACH_KINDS: tuple[Each, ...] = (
    "link", "first_port", "port", "named_port", "range", "env", "template",
)  # fmt: skip


def _unavailable(name: str, kind: str, scope: frozenset[str], derived: dict[str, str]) -> str:
    where = "hosts lines" if kind == "hosts" else f"each: {kind} blocks"
    source = derived.get(name, name)
    if source in _BUILTIN_FIELDS:
        offer = [k for k, extra in EACH.items() if source in extra]
        via = f" (derived from {source})" if source != name else ""
        return f"{{{name}}}{via} is not available in {where}; it is in each: {', '.join(offer)}"
    hint = _did_you_mean(name, scope)
    return f"unknown template field {{{name}}}{hint}; fields here: {', '.join(sorted(scope))}"


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _describe(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if node.tag == _TAG + "null":
        return "nothing (null)"
    return repr(node.value) if node.tag == _TAG + "str" else str(node.value)
