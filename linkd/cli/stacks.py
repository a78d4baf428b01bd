"""The stack a command means, and what the command line knows of it: its stack file
found and loaded (linkd.loader), or its state as the daemon or the state file has it.

A stack is named by `-p NAME`, else by its stack files (`-f FILE`, repeatable: the files
are merged in order, as Compose merges them; else the first of `DEFAULT_FILES` in the
current directory, with the first of `OVERRIDE_FILES` there merged onto it, as Compose
does with `compose.override.yaml`), else it is the only stack that is up. `ps`
and the other reading commands name it without the parser where the file says its name
plainly (`_name_in`), and read the state as JSON where they only print it
(`plain_state`): the parser and the state codec are imported only by what needs them.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from linkd import paths
from linkd.client.api import ANSWER_TIMEOUT, Client, DaemonError
from linkd.errors import NotFoundError

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without the 3 ms import (see linkd/__init__)
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    from linkd.core.model import Stack
    from linkd.core.plan import StackPlan
    from linkd.core.state import StackState
    from linkd.loader import StackSource

    Files = str | Sequence[str] | None  # what -f gave: nothing, or one path or more

# linkd's own name first, then Compose's, in Compose's order of preference
DEFAULT_FILES = (
    "linkd.yaml",
    "compose.yaml",
    "compose.yml",
    "docker-compose.yml",
    "docker-compose.yaml",
)
OVERRIDE_FILES = (
    "linkd.override.yaml",
    "compose.override.yml",
    "compose.override.yaml",
    "docker-compose.override.yml",
    "docker-compose.override.yaml",
)


def find_files(paths: Files) -> list[Path]:
    """The stack files `-f` names, in order; else the first default file here and the
    first override file beside it, if any; else none."""
    if isinstance(paths, str):
        paths = [paths]
    if paths:
        return [Path(p) for p in paths]
    for name in DEFAULT_FILES:
        if Path(name).exists():
            found = [Path(name)]
            found += [Path(o) for o in OVERRIDE_FILES if Path(o).exists()][:1]
            return found
    return []


def find_file(paths: Files) -> Path | None:
    """The stack's (first) file, or None."""
    found = find_files(paths)
    return found[0] if found else None


def read_source(paths: Files, project: str | None,
                env_files: Sequence[str] | None = None,
                profiles: Sequence[str] | None = None) -> tuple[StackSource, Path]:
    """The stack files' source, as `load_stack` loads it and `up -d` sends it, and the
    first file; `env_files` (`--env-file`, relative to the current directory) replace the
    stack directory's `.env`."""
    from linkd import loader

    found = find_files(paths)
    if not found:
        raise NotFoundError(
            f"no stack file: pass -f FILE or create one of {', '.join(DEFAULT_FILES)}"
        )
    file = found[0]
    named = None if env_files is None else [str(Path(f).absolute()) for f in env_files]
    source = loader.read_files(found, project_name=project, env_files=named)
    if profiles:  # as Compose: the flags say which profiles, COMPOSE_PROFILES otherwise
        source.environment = {**source.environment, "COMPOSE_PROFILES": ",".join(profiles)}
    return source, file


def load_stack(path: Files, project: str | None,
               env_files: Sequence[str] | None = None,
               profiles: Sequence[str] | None = None) -> tuple[Stack, Path]:
    from linkd import loader

    source, file = read_source(path, project, env_files, profiles)
    stack = loader.load(source)
    print_warnings(file, stack.warnings)
    return stack, file


def print_warnings(file: Path, warnings: Sequence[str]) -> None:
    """What the stack file's parse warned of (its own, or the daemon's answer)."""
    for warning in warnings:
        print(f"linkd: warning: {file}: {warning}", file=sys.stderr)


def dry_plan(stack: Stack, file: Path) -> StackPlan:
    """The stack planned on subnets picked as if nothing else were up: it proves the
    links and conventions render (so `up -d` fails here, not in the background), and
    shows provisional addresses for a stack that is not up."""
    from linkd.core import ipam
    from linkd.core.plan import realize
    from linkd.runtime.stack.conventions import load_conventions

    base = file.resolve().parent
    subnets = ipam.pick_subnets(stack.networks, [])
    if any(s.image is not None for s in stack.services):  # else no image store to read
        from linkd.runtime.images import image_store

        stack = image_store.resolve_stack(stack, base, load=False)  # images already in the store
    return realize(
        stack, subnets, workdir=str(base), conventions=load_conventions(stack, base)
    )


def daemon_state(name: str) -> dict[str, Any] | None:
    """The stack's state as the daemon's API gives it (JSON), or None when no daemon
    runs the stack (its supervisor is a foreground `up`, or nothing answers in time)."""
    if not paths.supervised(name):
        return None
    try:
        plain: dict[str, Any] = Client().request("GET", f"/v1/stacks/{name}",
                                                 timeout=ANSWER_TIMEOUT)
    except OSError:
        return None
    except DaemonError as exc:
        if exc.status != 404:
            raise
        return None
    return plain


def load_state(name: str) -> StackState:
    """The stack's state: from the daemon when it runs the stack, else from its file."""
    from linkd.core import state as state_codec
    from linkd.runtime.stack import store

    plain = daemon_state(name)
    if plain is None:
        return store.load(name)
    return state_codec.from_plain(state_codec.StackState, plain)


def plain_state(name: str) -> dict[str, Any]:
    """`load_state` in the API's JSON form, decoded only when it comes from the file."""
    plain = daemon_state(name)
    if plain is None:
        if name not in paths.stacks():  # said without loading the state codec
            raise NotFoundError(f"stack {name} is not up; `linkd ps --all` lists the "
                                "stacks that are")
        from linkd.core.state import to_plain
        from linkd.runtime.stack import store

        plain = to_plain(store.load(name))
    return plain


def stack_name(args: argparse.Namespace) -> str:
    if args.project:
        return str(args.project).lower()
    found = find_files(args.file)
    if found:
        env_files, profiles = getattr(args, "env_file", None), getattr(args, "profile", None)
        return _name_of(found) or load_stack(args.file, None, env_files, profiles)[0].name
    up = paths.stacks()
    if len(up) == 1:
        return up[0]
    if not up:
        raise NotFoundError("no stack is up")
    raise NotFoundError(f"several stacks are up ({', '.join(up)}); name one with -p")


_TOP_NAME = re.compile(
    r"name:(?:[ \t]+(?P<value>[a-z0-9][a-z0-9_-]*))?(?:[ \t]+(#.*)?)?$")


def _name_in(file: Path) -> str | None:
    """The stack name of `file` without the parser, where the text says it plainly: a
    top-level `name: NAME`, or no top-level `name` at all (then the directory's name, as
    Compose normalizes it); None where only the parser can tell (a quoted or
    interpolated value, flow style, a merge key at the top)."""
    return _name_of([file])


def _name_of(found: Sequence[Path]) -> str | None:
    """`_name_in` for files merged in order: the last `name:` given, else the first
    file's directory's name."""
    name = None
    for file in found:
        said = _said_name(file)
        if said is None:
            return None
        name = said[0] or name
    if name is not None:
        return name
    base = re.sub(r"[^a-z0-9_-]", "", found[0].resolve().parent.name.lower()).lstrip("_-")
    return base if base and len(base) <= 24 else None  # else the parser says what is wrong


def _said_name(file: Path) -> tuple[str | None] | None:
    """(the top-level `name:` of `file`, or None when it has none), or None when only
    the parser can tell."""
    from linkd import files

    try:  # a regular file only: a pipe (-f /dev/stdin) is the parser's to read, once
        text = files.read_text(file)
    except (OSError, UnicodeError, files.FileProblem):
        return None
    found = None
    for line in text.splitlines():
        if line.startswith(("name:", "{", "<<", "? ", "---", "%", "'", '"')):
            match = _TOP_NAME.match(line) if line.startswith("name:") else None
            if match is None or match["value"] is None or found is not None:
                return None
            found = match["value"]
    return (found,)


def containers(state: StackState, target: str) -> list[str]:
    return containers_of(state.plan, target)


def containers_of(plan: StackPlan, target: str) -> list[str]:
    """The containers `target` names in `plan`: itself, or a service's replicas."""
    if any(c.name == target for c in plan.containers):
        return [target]
    found = [c.name for c in plan.of_service(target)]
    if not found:
        raise NotFoundError(
            f"stack {plan.stack} has no service or container {target}; "
            f"it has {', '.join(c.name for c in plan.containers)}"
        )
    return found
