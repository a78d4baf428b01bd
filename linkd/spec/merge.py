"""Compose's merge rules, over YAML nodes: one file's tree merged onto another's.

`linkd config -f a.yml -f b.yml`, a `compose.override.yaml`, `extends:` and `include:`
(linkd.spec.project) all combine documents this way (compose-spec `13-merge.md`, and
`05-services.md#extends` for a service merged onto the one it extends):

- a mapping merges key by key, recursively; a scalar is replaced; a null leaves what was
  there (write `!reset` to remove it);
- a sequence is appended to, except where Compose keeps one entry per key: `ports` by
  (host address, published, target, protocol), `volumes` and `devices` by their target,
  `secrets` and `configs` by their mount point, `expose`, `cap_add`, `cap_drop`, `links`,
  `profiles`, `dns*` and network `aliases` by their text: a later entry with the key of
  an earlier one takes its place;
- `environment`, `labels`, `annotations`, `sysctls`, `build.args`, `build.labels` and
  `deploy.labels` merge by key, whether written as a mapping or as `KEY=VALUE` items;
  `depends_on` and a service's `networks` by name (a list turns into the mapping form);
  `env_file`, `label_file`, `tmpfs`, `dns*` and `extra_hosts` as lists, a single string
  being a list of one; `build: DIR` as `build: {context: DIR}`;
- `command`, `entrypoint`, `healthcheck.test` and each of `ulimits` are replaced whole;
  `logging` merges only when both name the same driver (or one names none); network
  `ipam.config` entries merge by subnet;
- `!reset` removes what the files before gave (the value written with it is ignored);
  `!override` replaces it without merging.

The nodes are not changed: a merge builds new mappings and lists along the paths both
trees have, and shares the rest. The tags stay on the result (a `!reset` as a tombstone,
an `!override` as written), because the result may itself be merged onto the files
before it (a service's `extends:` is resolved inside its file, and the file then merged
onto the earlier ones); `clean` drops them once everything is merged. On the left of a
merge a tombstone is nothing and an `!override` is a plain value.

Keys are read with the `Reader` (its `<<` merge keys, its problems); the identity of an
entry (the target of a volume...) is read from its text interpolated with the stack's
variables, as Compose merges after interpolating. The entries merged for one stack are
counted (`Work`): a file within its own bounds can still ask for much merging (a
thousand services extending one with a thousand variables), and that is refused before
it is done, not after.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterable
from typing import Any

import yaml

from linkd.spec import bounded_yaml
from linkd.spec.nodes import At, Reader, describe, origin
from linkd.spec.values import Bad, interpolate, parse_port

RESET = "!reset"
OVERRIDE = "!override"
_TAG = "tag:yaml.org,2002:"
STR, NULL, SEQ, MAP = _TAG + "str", _TAG + "null", _TAG + "seq", _TAG + "map"

Pattern = tuple[str, ...]  # a path with each user-chosen name as "*"

# Mappings whose keys are names: their children share one pattern.
_NAMED = {
    ("services",), ("networks",), ("volumes",), ("secrets",), ("configs",), ("models",),
    ("services", "*", "networks"), ("services", "*", "ulimits"),
    ("services", "*", "depends_on"), ("services", "*", "models"),
}  # fmt: skip


MAX_WORK = 4 * bounded_yaml.MAX_NODES  # entries merged for one stack


class Work:
    """The entries merged so far for one stack, within `MAX_WORK`."""

    def __init__(self) -> None:
        self.done = 0

    def spend(self, entries: int, at: At) -> None:
        self.done += entries
        if self.done > MAX_WORK:
            raise bounded_yaml.Limit(
                f"merging the stack's files (-f, include, extends) takes more than "
                f"{MAX_WORK} entries (linkd's limit); extend smaller services, or fewer",
                None if origin(at.node) else at.line)


def child_pattern(pattern: Pattern, key: str) -> Pattern:
    return (*pattern, "*" if pattern in _NAMED else key)


def strip(node: yaml.Node) -> yaml.Node:
    """`node` without its `!override` tag (its own, not its children's): the tag its
    form gives it, as the YAML resolver would have."""
    if node.tag != OVERRIDE:
        return node
    if isinstance(node, yaml.MappingNode):
        return yaml.MappingNode(MAP, node.value, node.start_mark, node.end_mark,
                                flow_style=node.flow_style)
    if isinstance(node, yaml.SequenceNode):
        return yaml.SequenceNode(SEQ, node.value, node.start_mark, node.end_mark,
                                 flow_style=node.flow_style)
    assert isinstance(node, yaml.ScalarNode)
    resolver: Any = yaml.resolver.Resolver()
    tag = STR if node.style else resolver.resolve(yaml.ScalarNode, node.value, (True, False))
    return yaml.ScalarNode(tag, node.value, node.start_mark, node.end_mark, node.style)


def clean(node: yaml.Node) -> yaml.Node:
    """`node` with every `!reset` entry removed and every `!override` tag dropped; the
    node itself when it has neither (a document without them is not copied)."""
    done: dict[int, yaml.Node] = {}

    def walk(n: yaml.Node) -> yaml.Node:
        key = id(n)
        if key in done:
            return done[key]
        out = strip(n)
        if isinstance(n, yaml.MappingNode):
            pairs = [(k, walk(v)) for k, v in n.value if v.tag != RESET]
            if len(pairs) != len(n.value) or any(
                    v is not old for (_, v), (_, old) in zip(pairs, n.value, strict=False)):
                out = yaml.MappingNode(out.tag, pairs,
                                       n.start_mark, n.end_mark, flow_style=n.flow_style)
        elif isinstance(n, yaml.SequenceNode):
            items = [walk(v) for v in n.value if v.tag != RESET]
            if len(items) != len(n.value) or any(
                    v is not old for v, old in zip(items, n.value, strict=False)):
                out = yaml.SequenceNode(out.tag, items, n.start_mark, n.end_mark,
                                        flow_style=n.flow_style)
        done[key] = out
        return out

    return walk(node)


def key_node(key: str, line: int, value: yaml.Node) -> yaml.ScalarNode:
    """A key for `value` at 1-based `line` of the file `value` comes from."""
    mark = yaml.Mark(value.start_mark.name, 0, line - 1, 0, None, 0)
    return yaml.ScalarNode(STR, key, mark, mark)


def mapping(like: yaml.Node, entries: Iterable[tuple[str, int, yaml.Node]]) -> yaml.MappingNode:
    """A mapping of (key, line, value), where `like` was."""
    pairs = [(key_node(k, line, v), v) for k, line, v in entries]
    return yaml.MappingNode(MAP, pairs, like.start_mark, like.end_mark)


def sequence(like: yaml.Node, items: list[yaml.Node]) -> yaml.SequenceNode:
    return yaml.SequenceNode(SEQ, items, like.start_mark, like.end_mark)


def scalar(text: str, like: yaml.Node) -> yaml.ScalarNode:
    return yaml.ScalarNode(STR, text, like.start_mark, like.end_mark)


def _null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == NULL


class Merger:
    """Merges nodes by Compose's rules; problems (two forms that cannot merge) go to `r`."""

    def __init__(self, r: Reader, work: Work | None = None) -> None:
        self.r = r
        self.work = work or Work()

    def merge(self, base: At, over: At, pattern: Pattern) -> yaml.Node:
        """`over` merged onto `base`, both at `pattern` (see the module's docstring)."""
        self.work.spend(1, over)
        b, o = base.node, over.node
        if o.tag in (RESET, OVERRIDE) or b.tag == RESET:
            return o
        b = strip(b)
        base = At(b, base.path, base.line)
        rule = _RULES.get(pattern)
        if rule is _replace:
            return o
        if _null(o):
            return b  # Compose: a null leaves the value (`!reset` removes it)
        if _null(b):
            return o
        if rule is not None:
            return rule(self, base, over, pattern)
        if isinstance(b, yaml.MappingNode) and isinstance(o, yaml.MappingNode):
            return self.mappings(base, over, pattern)
        if isinstance(b, yaml.SequenceNode) and isinstance(o, yaml.SequenceNode):
            self.work.spend(len(b.value) + len(o.value), over)
            return sequence(b, [*b.value, *o.value])
        if isinstance(b, (yaml.MappingNode, yaml.SequenceNode)) or isinstance(
                o, (yaml.MappingNode, yaml.SequenceNode)):
            return self.mismatch(base, over)
        return o

    def mismatch(self, base: At, over: At) -> yaml.Node:
        """Said: `over` cannot merge onto `base`; the stack keeps `base` (the one problem
        said is this one)."""
        file = origin(base.node)
        where = f"{file}, line {base.line}" if file else f"line {base.line}"
        self.r.fail(over, f"cannot merge {describe(over.node)} onto {describe(base.node)} "
                          f"({where}); write the same form, or !override to replace it")
        return base.node

    def pairs(self, at: At) -> list[tuple[str, At]]:
        if not at.is_mapping:
            return []
        return self.r.pairs(at) or []

    def mappings(self, base: At, over: At, pattern: Pattern) -> yaml.MappingNode:
        out: dict[str, tuple[int, yaml.Node]] = {k: (c.line, c.node) for k, c in self.pairs(base)}
        pairs = self.pairs(over)
        self.work.spend(len(out) + len(pairs), over)
        for key, child in pairs:
            if key in out:
                line, node = out[key]
                merged = self.merge(At(node, child.path, line), child,
                                    child_pattern(pattern, key))
                out[key] = (child.line if merged is child.node else line, merged)
            else:
                out[key] = (child.line, child.node)
        return mapping(base.node, ((k, line, v) for k, (line, v) in out.items()))

    # --- what an entry's identity is, for the sequences Compose keeps unique ---

    def text(self, node: yaml.Node) -> str | None:
        """A scalar's text as Compose compares it (interpolated), None for a collection."""
        if not isinstance(node, yaml.ScalarNode):
            return None
        if node.tag != STR or "$" not in node.value:
            return str(node.value)
        try:
            return interpolate(node.value, self.r.host_env, lambda name: None)
        except Bad:
            return str(node.value)

    def field(self, node: yaml.Node, name: str) -> str | None:
        for key, child in self.pairs(At.root(node)):
            if key == name:
                return self.text(child.node)
        return None

    def unique(self, items: list[yaml.Node], identity: Callable[[yaml.Node], str | None]
               ) -> list[yaml.Node]:
        """`items` with a later entry in the place of an earlier one of the same identity
        (None: no identity, kept)."""
        if items:
            self.work.spend(len(items), At.root(items[0]))
        out: list[yaml.Node] = []
        index: dict[str, int] = {}
        for item in items:
            key = None if item.tag == RESET else identity(item)
            if key is None:
                out.append(item)
            elif key in index:
                out[index[key]] = item
            else:
                index[key] = len(out)
                out.append(item)
        return out


# --- the rules (each takes the merger, base, over and pattern; neither side is null) ---

Rule = Callable[[Merger, At, At, Pattern], yaml.Node]


def _replace(m: Merger, base: At, over: At, pattern: Pattern) -> yaml.Node:
    return over.node


def _items(m: Merger, at: At, pairs_as: Callable[[str, yaml.Node], list[yaml.Node]] | None
           ) -> list[yaml.Node] | None:
    """A list's items, a single scalar as a list of one, or a mapping's entries turned
    into items by `pairs_as` (None: a mapping is not expected)."""
    node = at.node
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.ScalarNode):
        return [node]
    if pairs_as is None:
        return None
    return [item for key, child in m.pairs(at) for item in pairs_as(key, child.node)]


def _key_value_items(key: str, value: yaml.Node) -> list[yaml.Node]:
    """A mapping entry as the `KEY=VALUE` item it stands for (`KEY` for a null)."""
    if value.tag == RESET:
        return [value]
    if _null(value):
        return [scalar(key, value)]
    if isinstance(value, yaml.ScalarNode):
        return [scalar(f"{key}={value.value}", value)]
    return [scalar(f"{key}={item.value}", item) for item in getattr(value, "value", [])
            if isinstance(item, yaml.ScalarNode)]  # extra_hosts: {host: [a, b]}


def _by_key(m: Merger, base: At, over: At, pattern: Pattern) -> yaml.Node:
    """environment, labels...: by key, a mapping or `KEY=VALUE` items; the later wins,
    a null too (a bare KEY)."""
    if base.is_mapping and over.is_mapping:
        out = {k: (c.line, c.node) for k, c in m.pairs(base)}
        pairs = m.pairs(over)
        m.work.spend(len(out) + len(pairs), over)
        for key, child in pairs:
            line = out[key][0] if key in out and child.node.tag != RESET else child.line
            out[key] = (line, child.node)
        return mapping(base.node, ((k, line, v) for k, (line, v) in out.items()))
    items = [_items(m, side, _key_value_items) for side in (base, over)]
    if items[0] is None or items[1] is None:
        return m.mismatch(base, over)

    def identity(item: yaml.Node) -> str | None:
        text = m.text(item)
        return None if text is None else text.partition("=")[0]

    return sequence(base.node, m.unique([*items[0], *items[1]], identity))


def _listed(identity: Callable[[Merger, yaml.Node], str | None],
            pairs_as: Callable[[str, yaml.Node], list[yaml.Node]] | None = None) -> Rule:
    """A list (a single string being a list of one) appended to, kept unique by
    `identity`."""

    def rule(m: Merger, base: At, over: At, pattern: Pattern) -> yaml.Node:
        items = [_items(m, side, pairs_as) for side in (base, over)]
        if items[0] is None or items[1] is None:
            return m.mismatch(base, over)
        return sequence(base.node, m.unique([*items[0], *items[1]],
                                            lambda item: identity(m, item)))

    return rule


def _unique(identity: Callable[[Merger, yaml.Node], str | None]) -> Rule:
    """A list Compose keeps one entry per identity in."""

    def rule(m: Merger, base: At, over: At, pattern: Pattern) -> yaml.Node:
        if not (base.is_sequence and over.is_sequence):
            return m.mismatch(base, over)
        return sequence(base.node, m.unique([*base.node.value, *over.node.value],
                                            lambda item: identity(m, item)))

    return rule


def _text(m: Merger, item: yaml.Node) -> str | None:
    return m.text(item)


def _before_colon(m: Merger, item: yaml.Node) -> str | None:
    text = m.text(item)
    return None if text is None else text.split(":", 1)[0]


def _env_file(m: Merger, item: yaml.Node) -> str | None:
    return m.text(item) if isinstance(item, yaml.ScalarNode) else m.field(item, "path")


def _target(m: Merger, item: yaml.Node) -> str | None:
    """A volume's or device's target: `SOURCE:TARGET[:MODE]`, a lone `TARGET`, or the
    long form's `target`."""
    if not isinstance(item, yaml.ScalarNode):
        found = m.field(item, "target")
        return None if found is None else posixpath.normpath(found)
    text = m.text(item) or ""
    parts = text.split(":")
    return posixpath.normpath(parts[1] if len(parts) > 1 else parts[0])


def _mount(directory: str) -> Callable[[Merger, yaml.Node], str | None]:
    """A secret's or config's mount point: its `target`, else `directory/source`."""

    def identity(m: Merger, item: yaml.Node) -> str | None:
        if isinstance(item, yaml.ScalarNode):
            return f"{directory}/{m.text(item)}"
        target = m.field(item, "target")
        return target if target is not None else f"{directory}/{m.field(item, 'source')}"

    return identity


def _port(m: Merger, item: yaml.Node) -> str | None:
    """(host address, published, target, protocol), as Compose compares ports."""
    if isinstance(item, yaml.ScalarNode):
        text = m.text(item) or ""
        try:
            spec = parse_port(text)
        except Bad:
            return text
        published = "" if spec.host_start is None else f"{spec.host_start}-{spec.host_end}"
        return f"{spec.host_ip or ''}|{published}|{spec.start}-{spec.end}|{spec.protocol}"
    fields = {key: m.text(child.node) for key, child in m.pairs(At.root(item))}
    published, target = fields.get("published") or "", fields.get("target") or ""
    if published and "-" not in published:
        published = f"{published}-{published}"
    if target and "-" not in target:
        target = f"{target}-{target}"
    return f"{fields.get('host_ip') or ''}|{published}|{target}|{fields.get('protocol') or 'tcp'}"


def _as_mapping(value: Callable[[yaml.Node], yaml.Node]) -> Rule:
    """`depends_on`, a service's `networks`: names, as a list or a mapping; two lists
    stay a list, else the list turns into the mapping form (each name with `value`)."""

    def rule(m: Merger, base: At, over: At, pattern: Pattern) -> yaml.Node:
        if base.is_sequence and over.is_sequence:
            return _unique(_text)(m, base, over, pattern)
        sides = []
        for side in (base, over):
            if side.is_sequence:
                entries = [(m.text(item) or "", item.start_mark.line + 1, value(item))
                           for item in side.node.value]
                side = At(mapping(side.node, entries), side.path, side.line)
            sides.append(side)
        if not (sides[0].is_mapping and sides[1].is_mapping):
            return m.mismatch(base, over)
        return m.mappings(sides[0], sides[1], pattern)

    return rule


def _depends_entry(item: yaml.Node) -> yaml.Node:
    return mapping(item, [("condition", item.start_mark.line + 1, scalar("service_started", item)),
                          ("required", item.start_mark.line + 1,
                           yaml.ScalarNode(_TAG + "bool", "true", item.start_mark,
                                           item.end_mark))])


def _null_entry(item: yaml.Node) -> yaml.Node:
    return yaml.ScalarNode(NULL, "", item.start_mark, item.end_mark)


def _build(m: Merger, base: At, over: At, pattern: Pattern) -> yaml.Node:
    """`build: DIR` is `build: {context: DIR}`."""
    sides = [
        At(mapping(side.node, [("context", side.line, side.node)]), side.path, side.line)
        if isinstance(side.node, yaml.ScalarNode) else side
        for side in (base, over)
    ]
    if not (sides[0].is_mapping and sides[1].is_mapping):
        return m.mismatch(base, over)
    return m.mappings(sides[0], sides[1], pattern)


def _logging(m: Merger, base: At, over: At, pattern: Pattern) -> yaml.Node:
    """Options merge only for one driver: another driver's options mean nothing."""
    if base.is_mapping and over.is_mapping:
        drivers = (m.field(base.node, "driver"), m.field(over.node, "driver"))
        if None in drivers or drivers[0] == drivers[1]:
            return m.mappings(base, over, pattern)
    return over.node


def _ipam_config(m: Merger, base: At, over: At, pattern: Pattern) -> yaml.Node:
    """Entries merge by subnet; an entry of a new subnet is added."""
    if not (base.is_sequence and over.is_sequence):
        return m.mismatch(base, over)
    out: list[yaml.Node] = list(base.node.value)
    for item in over.node.value:
        subnet = m.field(item, "subnet") if isinstance(item, yaml.MappingNode) else None
        same = [i for i, old in enumerate(out) if subnet is not None
                and isinstance(old, yaml.MappingNode) and m.field(old, "subnet") == subnet]
        if same:
            old = out[same[0]]
            out[same[0]] = m.mappings(At.root(old, over.path), At.root(item, over.path),
                                      (*pattern, "*"))
        else:
            out.append(item)
    return sequence(base.node, out)


_S = ("services", "*")
_RULES: dict[Pattern, Rule] = {
    (*_S, "command"): _replace,
    (*_S, "entrypoint"): _replace,
    (*_S, "healthcheck", "test"): _replace,
    (*_S, "ulimits", "*"): _replace,
    (*_S, "build"): _build,
    (*_S, "logging"): _logging,
    (*_S, "depends_on"): _as_mapping(_depends_entry),
    (*_S, "networks"): _as_mapping(_null_entry),
    (*_S, "models"): _as_mapping(_null_entry),
    ("networks", "*", "ipam", "config"): _ipam_config,
    **{(*_S, *key): _by_key for key in (
        ("environment",), ("labels",), ("annotations",), ("sysctls",), ("build", "args"),
        ("build", "labels"), ("build", "additional_contexts"), ("deploy", "labels"))},
    ("networks", "*", "labels"): _by_key,
    ("volumes", "*", "labels"): _by_key,
    (*_S, "dns"): _listed(_text),
    (*_S, "dns_opt"): _listed(_text),
    (*_S, "dns_search"): _listed(_text),
    (*_S, "env_file"): _listed(_env_file),
    (*_S, "label_file"): _listed(_text),
    (*_S, "tmpfs"): _listed(_before_colon),
    (*_S, "extra_hosts"): _listed(_text, _key_value_items),
    (*_S, "build", "extra_hosts"): _listed(_text, _key_value_items),
    (*_S, "ports"): _unique(_port),
    (*_S, "volumes"): _unique(_target),
    (*_S, "devices"): _unique(_target),
    (*_S, "secrets"): _unique(_mount("/run/secrets")),
    (*_S, "configs"): _unique(_mount("")),
    **{(*_S, key): _unique(_text) for key in (
        "expose", "cap_add", "cap_drop", "links", "profiles", "external_links")},
    (*_S, "networks", "*", "aliases"): _unique(_text),
    (*_S, "networks", "*", "link_local_ips"): _unique(_text),
    (*_S, "build", "tags"): _unique(_text),
    (*_S, "build", "platforms"): _unique(_text),
}


def merge(r: Reader, base: yaml.Node, over: yaml.Node, pattern: Pattern = (),
          work: Work | None = None) -> yaml.Node:
    """`over` merged onto `base` (two documents, or two nodes at `pattern`)."""
    return Merger(r, work).merge(At.root(base), At.root(over), pattern)
