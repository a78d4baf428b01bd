"""A stack made of several files, as one document: Compose's `-f a.yml -f b.yml` (and the
override file found beside the stack file), `include:` and `extends:`.

`assemble` takes the documents of the files given, in order, the first one the stack's
own (the stack's directory is its directory, and every relative path in the files given
starts there, as in Compose). Each document, as Compose does, has its `include:`
resolved, then its services' `extends:` (linkd.spec.extends, which may then extend an
included service), and is merged onto the ones before it (linkd.spec.merge); `!reset`
and `!override` are applied, and the result is bounded like one file
(`bounded_yaml.check_expansion`).

`include:` (compose-spec `14-include.md`): each entry, `PATH` or `{path: PATH or [PATHS],
project_directory: DIR, env_file: FILE or [FILES]}`, is a project of its own, read as
the stack is (its files merged, its own `include:` and `extends:` resolved): its
relative paths start in `project_directory` (by default the first file's directory), and
its variables are the stack's over those of its `env_file` (by default the `.env` of
that directory). Its services, networks, volumes, secrets and configs join the
document's; one that the document (or another included project) defines already is an
error unless both are the same, as in Compose. Include chains are at most
`MAX_DEPTH` deep; a file including itself, however far down, is an error naming the
chain.

Files are read through `read_text` (linkd.spec.documents.Files), problems go to the
`Reader`, each naming the key and the file it is in.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import yaml

from linkd.spec import bounded_yaml
from linkd.spec.documents import MAX_DEPTH, Files, Unreadable, join, localize
from linkd.spec.extends import Extends
from linkd.spec.merge import Merger, clean, mapping, merge
from linkd.spec.nodes import At, Reader, given
from linkd.spec.values import Bad, parse_env_file

# What an included project brings into the stack (Compose's resources).
RESOURCES = ("services", "networks", "volumes", "secrets", "configs", "models")


@dataclass(frozen=True, slots=True)
class Place:
    """Where a document was written: the directory its relative paths start in (relative
    to the stack's, "" for it) and the variables it is interpolated with."""

    base: str
    env: Mapping[str, str]


def assemble(
    r: Reader,
    documents: Sequence[tuple[str, yaml.Node | None]],
    files: Files,
) -> yaml.Node | None:
    """The stack the documents (name, root) make together; None when all are empty."""
    place = Place("", r.host_env)
    model: yaml.Node | None = None
    merger = Merger(r, files.work)
    for name, root in documents:
        if root is None:
            continue  # an empty file adds nothing (Compose)
        doc = _document(r, root, place, files, (name,))
        model = doc if model is None else merger.merge(At.root(model), At.root(doc), ())
    if model is None:
        return None
    model = clean(model)
    bounded_yaml.check_expansion(model, r.check)
    return model


def _document(r: Reader, root: yaml.Node, place: Place, files: Files,
              chain: tuple[str, ...]) -> yaml.Node:
    """One file's document with its includes and extends resolved, its paths relative
    to the stack's directory."""
    root = localize(r, root, place.base, place.env)
    if not isinstance(root, yaml.MappingNode):
        return root  # the Reader says what is wrong with it
    top = r.pairs(At.root(root)) or []
    fields = dict(top)
    resources: dict[str, dict[str, tuple[int, yaml.Node]]] = {}
    for key in RESOURCES:
        at = given(fields, key)
        if at is not None and at.is_mapping:
            resources[key] = {name: (c.line, c.node) for name, c in r.pairs(at) or []}
    if (include := given(fields, "include")) is not None:
        for entry in r.items(include) or []:
            included = _include(r, entry, place, files, chain)
            if included is not None:
                _import(r, entry, included, resources)
    entries: list[tuple[str, int, yaml.Node]] = []
    for key, child in top:
        if key == "include":
            continue
        node = child.node
        if key in resources and (child.is_mapping or child.is_null):  # else the Reader says
            found = resources.pop(key)
            node = mapping(child.node, ((n, line, v) for n, (line, v) in found.items()))
        entries.append((key, child.line, node))
    for key, found in resources.items():  # only included projects define them
        if key in fields:
            continue  # not a mapping here: the Reader says so
        entries.append((key, include.line if include else 1,
                        mapping(root, ((n, line, v) for n, (line, v) in found.items()))))
    services = next((i for i, (key, _, _) in enumerate(entries) if key == "services"), None)
    if services is not None:
        key, line, node = entries[services]
        load = _extends_loader(r, place, files)
        entries[services] = (key, line, Extends(r, load, files.work).resolve(At(node, key, line)))
    return mapping(root, entries)


def _extends_loader(r: Reader, place: Place, files: Files
                    ) -> Callable[[str], yaml.Node | None]:
    """How `extends: file:` reads a file: its paths start in its own directory, and it
    has the variables of the document naming it."""

    def load(name: str) -> yaml.Node | None:
        root = files.document(name)
        return None if root is None else localize(r, root, posixpath.dirname(name), place.env)

    return load


def _include(r: Reader, entry: At, place: Place, files: Files,
             chain: tuple[str, ...]) -> yaml.Node | None:
    """The project an `include:` entry names, as one mapping; None (said) when it cannot
    be had."""
    paths: list[str] = []
    directory: str | None = None
    env_files: list[str] | None = None
    if entry.is_mapping:
        fields = r.fields(entry, ("path", "project_directory", "env_file")) or {}
        if (at := given(fields, "path")) is None:
            r.fail(entry, 'an include needs "path:", the file (or files) to include')
            return None
        paths = _texts(r, at)
        if (at := given(fields, "project_directory")) is not None:
            directory = r.text(at)
        if (at := given(fields, "env_file")) is not None:
            env_files = _texts(r, at)
    else:
        paths = _texts(r, entry)
    if not paths:
        return None
    names = [join("", p) for p in paths]
    roots: list[tuple[str, yaml.Node]] = []
    for name in names:
        if name in chain:
            r.fail(entry, "include makes a cycle: " + " -> ".join([*chain, name]))
            return None
        if len(chain) > MAX_DEPTH:
            r.fail(entry, f"includes go more than {MAX_DEPTH} files deep (linkd's limit)")
            return None
        try:
            root = files.document(name)
        except Unreadable as exc:
            r.fail(entry, str(exc))
            return None
        if root is not None:
            roots.append((name, root))
    base = join("", directory) if directory is not None else posixpath.dirname(names[0])
    env = _variables(r, entry, files, base, env_files, place.env)
    if env is None:
        return None
    inner = Place(base, env)
    merger = Merger(r, files.work)
    model: yaml.Node | None = None
    for name, root in roots:
        doc = _document(r, root, inner, files, (*chain, name))
        model = doc if model is None else merger.merge(At.root(model), At.root(doc), ())
    return None if model is None else clean(model)


def _texts(r: Reader, at: At) -> list[str]:
    """A string, or a list of strings, as a list."""
    if at.is_sequence:
        return r.texts(at) or []
    text = r.text(at)
    return [] if text is None else [text]


def _variables(r: Reader, entry: At, files: Files, base: str, env_files: list[str] | None,
               env: Mapping[str, str]) -> dict[str, str] | None:
    """An included project's variables: the including one's over those of its env files
    (by default, its directory's `.env` if there is one)."""
    found: dict[str, str] = {}
    names = [join("", f) for f in env_files] if env_files is not None else [join(base, ".env")]
    for name in names:
        if name == "/dev/null":
            continue
        try:
            text = files.text(name)
        except Unreadable as exc:
            if env_files is None and exc.missing:
                continue  # no .env: Compose's default file is optional
            r.fail(entry, str(exc))
            return None
        try:
            found.update(parse_env_file(text, name, {**found, **env}, interpolation=True))
        except Bad as exc:
            r.fail(entry, str(exc))
            return None
    return {**found, **env}


def _import(r: Reader, entry: At, included: yaml.Node,
             resources: dict[str, dict[str, tuple[int, yaml.Node]]]) -> None:
    """The included project's resources added to the document's. A name both define is
    the included definition with the document's merged onto it, as Compose does now
    (compose-go 2.x): the including file completes or tweaks what it includes."""
    if not isinstance(included, yaml.MappingNode):
        return
    for key, child in r.pairs(At.root(included)) or []:
        if key not in RESOURCES or not child.is_mapping:
            continue
        have = resources.setdefault(key, {})
        for name, item in r.pairs(child) or []:
            if name in have:
                line, mine = have[name]
                if _plain(r, mine) != _plain(r, item.node):
                    have[name] = (line, merge(r, item.node, mine, (key, "*")))
                continue
            have[name] = (item.line, item.node)


def _plain(r: Reader, node: yaml.Node) -> object:
    """A node as plain data, to compare two definitions."""
    if isinstance(node, yaml.MappingNode):
        return {k: _plain(r, c.node) for k, c in r.pairs(At.root(node)) or []}
    if isinstance(node, yaml.SequenceNode):
        return [_plain(r, item) for item in node.value]
    return (node.tag, node.value)

