"""The stack-file parser: YAML text in, a validated `linkd.core.model.Stack` out, no I/O.

How it works, in three steps:

1. `linkd.spec.bounded_yaml.compose` turns the text into nodes, which keep line numbers, within
   bounds: nesting depth, and the size the document expands to once aliases (`*name`)
   and merge keys (`<<`) are resolved, so no text makes the parser slow or deep. A
   stack of several files (`overrides`, and the files `include:` and `extends:` name,
   read through `read_file`) becomes one document here (`linkd.spec.project`, with
   Compose's merge rules), held to the same bounds; its nodes keep the file they came
   from, so a problem names it.
2. `linkd.spec.nodes.Reader` walks the nodes the schema expects (the top level here,
   `networks:` and `services:` in `linkd.spec.services`) and turns each into a value
   (`linkd.spec.values` parses the scalar syntaxes: ports, durations, signals, `${VAR}`).
   Every value carries its dotted path (`services.web.ports[1]`) and line, so a wrong
   value becomes a problem `(path, line, message)` and parsing goes on; unknown keys
   become warnings (`x-*` keys are extensions and stay silent; `x-linkd`, linkd's own,
   is read by `linkd.spec.x_linkd`).
3. The values build the frozen `linkd.core.model` dataclasses, then `linkd.spec.checks` looks
   across the stack (cycles, port clashes, overlapping subnets). If anything was wrong,
   one `SpecError` lists every problem, so a user fixes the file in one pass.

The file format is the subset of Compose linkd implements, with Compose's semantics
(compose-spec `05-services.md`, `06-networks.md`). Files are read by the caller
(linkd.loader, the one place linkd loads a stack): env files through `read_text` (once per
file, whatever the number of services naming it; the characters they add to the stack are
bounded like the document's: `linkd.spec.environment`), host variables through
`host_env`. `check`, when given, is called as the work goes on: the caller raises from it
to stop a parse that takes too long (this module keeps no clock). `stack_to_dict` (in
`linkd.spec.dump`) writes a `Stack` back as a normalized Compose-shaped dict.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import yaml

from linkd.core.model import Network, Stack
from linkd.errors import SpecError
from linkd.spec import bounded_yaml, compose_keys, documents, project
from linkd.spec.documents import Files
from linkd.spec.dump import stack_to_dict
from linkd.spec.nodes import ROOT, At, Reader, given
from linkd.spec.secrets import FileReader
from linkd.spec.services import ServiceReader
from linkd.spec.values import Bad, check_stack_name, normalize_project_name, quote
from linkd.spec.volumes import VolumeReader
from linkd.spec.x_linkd import read_x_linkd

__all__ = ["parse_stack", "stack_to_dict"]

_TOP_KEYS = ("name", "services", "networks", "volumes", "secrets", "configs", "version",
             "x-linkd")


def parse_stack(
    text: str,
    *,
    source: str,
    project_name: str | None = None,
    default_project: str = "",
    host_env: Mapping[str, str] = {},  # read only, never mutated
    read_text: Callable[[str], str] | None = None,
    check: Callable[[], None] | None = None,
    directory: str = "/",
    home: str | None = None,
    overrides: Sequence[tuple[str, str]] = (),
    read_file: Callable[[str], str] | None = None,
) -> Stack:
    """Parse and validate a stack file; raise `SpecError` listing every problem.

    The stack name is `project_name`, else the file's `name:`, else `default_project`
    (the caller passes the stack directory's name) normalized as Compose does.
    `directory` is where relative bind-mount sources start (the stack file's); `~` in
    one is $HOME of `host_env`, else `home`.
    `read_text(name)` returns an env file's text or raises `OSError` (its `strerror` is
    reported) or `UnicodeError`. `overrides` are more files, (name, text), merged onto
    this one in order (`-f a.yml -f b.yml`); `read_file` reads the files `include:` and
    `extends:` name, as `read_text` does (by default, `read_text` itself).
    """
    r = Reader(host_env, check)
    root = _document(r, text, source, overrides, Files(read_file or read_text, check), check)
    top = r.fields(At.root(root), _TOP_KEYS, compose_keys.ignored(compose_keys.TOP_LEVEL))
    if top is None:
        raise SpecError(r.problems, source)
    name = _stack_name(r, top, project_name, default_project)
    volumes = VolumeReader(r, name or "", directory, host_env.get("HOME") or home)
    declared = volumes.volumes(given(top, "volumes"))
    files = FileReader(r, host_env, directory)
    files.top("secrets", given(top, "secrets"))
    files.top("configs", given(top, "configs"))
    parser = ServiceReader(r, host_env, read_text, volumes, files, name or "")
    networks = parser.networks(given(top, "networks"))
    services = parser.services(top.get("services"))
    extension = read_x_linkd(r, given(top, "x-linkd"))
    if r.problems:
        # In file order: checks across services run last but point anywhere.
        raise SpecError(sorted(r.problems, key=lambda p: p[1] or 0), source)
    uses_default = any(a.network == "default" for s in services for a in s.networks)
    if uses_default and not any(n.name == "default" for n in networks):
        networks += (Network("default"),)  # Compose's implicit default network, last
    return Stack(
        name or "",
        services,
        networks,
        tuple(r.warnings),
        extension.dns,
        extension.conventions,
        extension.host_access,
        declared,
    )


def _document(r: Reader, text: str, source: str, overrides: Sequence[tuple[str, str]],
              files: Files, check: Callable[[], None] | None) -> yaml.Node:
    """The stack's files read and put together (linkd.spec.project) as one document."""
    roots: list[tuple[str, yaml.Node | None]] = []
    for name, content in ((source, text), *overrides):
        try:
            files.count_text(content, name)
        except documents.Unreadable as exc:
            raise SpecError([(ROOT, None, str(exc))], source) from None
        try:
            root = documents.compose(content, check)
        except documents.Unreadable as exc:
            if not roots:  # the stack's own file: its lines are the ones errors give
                raise SpecError([(ROOT, exc.line, str(exc))], source) from None
            line = f", line {exc.line}" if exc.line is not None else ""
            raise SpecError([(ROOT, None, f"in {name}{line}: {exc}")], source) from None
        if root is not None and roots:
            documents.mark(root, name)
        empty = root is None or (isinstance(root, yaml.ScalarNode) and root.tag.endswith(":null"))
        roots.append((name, None if empty else root))
    try:
        model = project.assemble(r, roots, files)
    except bounded_yaml.Limit as exc:
        raise SpecError([(ROOT, exc.line, str(exc))], source) from None
    if model is None:
        raise SpecError([(ROOT, None, 'the file is empty; a stack needs "services:"')], source)
    return model


def _stack_name(
    r: Reader, top: dict[str, At], project_name: str | None, default_project: str
) -> str | None:
    if project_name is not None:
        try:
            return check_stack_name(project_name)
        except Bad as exc:
            r.problems.append(("name", None, f"{exc} (given as the stack name)"))
            return None
    if at := given(top, "name"):
        return r.parsed(at, check_stack_name)
    normalized = normalize_project_name(default_project)
    if not normalized:
        r.problems.append(
            ("name", None, f"cannot make a stack name of {quote(default_project)}; set name:")
        )
        return None
    try:
        return check_stack_name(normalized)
    except Bad as exc:
        r.problems.append(("name", None, f"{exc}; set a shorter name: in the file"))
        return None
