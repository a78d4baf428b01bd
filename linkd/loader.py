"""Loading a stack: its source (the text, where it came from, the directory its relative
paths start from, the name asked for, the environment `${VAR}` reads) in, a validated
`linkd.core.model.Stack` out. The one place that does this for `linkd config` and `up`,
the Python API (`linkd.Stack.up`) and the daemon's API (`linkd up -d` sends a source,
the daemon loads it).

Two halves, because the commands that hand a stack to the daemon must start at once:

- `read_file` reads a stack file as every caller does (bounded, UTF-8, a regular file
  or a pipe, `linkd up -f /dev/stdin`) into a `StackSource`, and says "cannot read stack
  file ..." when it cannot; `read_files` reads several (`-f a.yml -f b.yml`, or a file
  and the override file beside it), merged in order, the first one's directory being the
  stack's; `local_source` is the same for text this process has. They import no parser:
  `linkd up -d` sends the source as it is (the texts of all the files given), to be
  loaded by the daemon.
- `load` turns a `StackSource` into a `Stack` with `linkd.spec.stack_file.parse_stack`,
  the files the stack names (env files, seccomp profiles, the files of `include:` and
  `extends: file:`) read relative to the source's directory through `linkd.files`;
  `check` lets the daemon stop a parse over its budget. A source from the daemon's API
  is `confined`: the files of `include:` and `extends:` it names are read only beneath
  its directory (`../common.yml` is refused, saying so), where the command line, reading
  files of its own user, follows Compose and reads them wherever they are.

Everything a stack's variables come from is decided in `load`, once, for every caller:
the environment given (the shell's, for the command line), over the project's `.env`
file in the stack's directory (or the files of `--env-file` instead), as Compose does:
the shell wins. How warnings are shown stays the caller's (the
command line prints them, the Python API warns, the daemon answers with them).

Shared ground: it may import `linkd.spec`, `linkd.files` and `linkd.errors`; every
package but the pure ones may import it (pyproject's import contracts).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from linkd import files
from linkd.errors import NotFoundError

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without the import (`linkd up -d` starts here)
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from linkd.core.model import Stack


class StackSource:
    """A stack file's text and what loading it needs besides.

    `source` names it in errors and warnings (the file as given, "stack built in
    Python", "request body"); `directory` is where its relative paths start;
    `project_name` overrides the file's `name:`, and `default_project` names a stack
    that gives neither (Compose: the directory's name); `environment` is what `${VAR}`
    reads, over the variables of `env_files` (None: the directory's `.env` if there is
    one, Compose's default; relative names start in the directory). `overrides` are the
    other files given, (name, text), merged onto this one in order; `confined`: the
    files the stack names are read only beneath `directory` (a stack from the API)."""

    __slots__ = ("confined", "default_project", "directory", "env_files", "environment",
                 "overrides", "project_name", "source", "text")  # fmt: skip

    def __init__(
        self,
        text: str,
        *,
        source: str,
        directory: Path,
        project_name: str | None = None,
        default_project: str = "",
        environment: Mapping[str, str] | None = None,
        env_files: Sequence[str] | None = None,
        overrides: Sequence[tuple[str, str]] = (),
        confined: bool = False,
    ) -> None:
        self.text = text
        self.overrides = tuple(overrides)
        self.confined = confined
        self.env_files = None if env_files is None else tuple(env_files)
        self.source = source
        self.directory = directory
        self.project_name = project_name
        self.default_project = default_project
        self.environment: Mapping[str, str] = {} if environment is None else environment

    def __repr__(self) -> str:
        return f"<StackSource {self.source} in {self.directory}>"


def read_file(
    file: Path,
    *,
    project_name: str | None = None,
    directory: str | os.PathLike[str] | None = None,
    env_files: Sequence[str] | None = None,
) -> StackSource:
    """The stack file `file` as a `local_source`; its relative paths start in
    `directory` (default: the file's own directory)."""
    try:  # bounded, UTF-8, a regular file or a pipe (-f /dev/stdin, -f <(...))
        text = files.read_text(file, pipes=True)
    except OSError as exc:
        raise NotFoundError(f"cannot read stack file {file}: {exc.strerror}") from exc
    base = Path(directory).resolve() if directory is not None else file.resolve().parent
    return local_source(text, source=str(file), directory=base, project_name=project_name,
                        env_files=env_files)


def read_files(
    paths: Sequence[Path],
    *,
    project_name: str | None = None,
    env_files: Sequence[str] | None = None,
) -> StackSource:
    """The stack files `paths` (at least one) as one `local_source`: the first one's, its
    directory the stack's, with the others to merge onto it in order (Compose's `-f a.yml
    -f b.yml`: their relative paths start in the first one's directory too)."""
    source = read_file(paths[0], project_name=project_name, env_files=env_files)
    overrides = []
    for path in paths[1:]:
        try:
            overrides.append((str(path), files.read_text(path, pipes=True)))
        except OSError as exc:
            raise NotFoundError(f"cannot read stack file {path}: {exc.strerror}") from exc
    source.overrides = tuple(overrides)
    return source


def local_source(
    text: str, *, source: str, directory: Path, project_name: str | None = None,
    env_files: Sequence[str] | None = None,
) -> StackSource:
    """A stack this process hands in (a file it read, a stack built in Python): `${VAR}`
    reads this process's environment, and a stack that gives no name takes its
    directory's, as Compose does. (A source from the daemon's API says both itself.)"""
    return StackSource(
        text,
        source=source,
        directory=directory,
        project_name=project_name,
        default_project=directory.name,
        environment=dict(os.environ),
        env_files=env_files,
    )


def load(source: StackSource, *, check: Callable[[], None] | None = None) -> Stack:
    """The stack `source` describes, validated; `SpecError` lists every problem.

    `check`, when given, is called as the parse goes on: it raises to stop a parse that
    takes too long."""
    from linkd.spec import stack_file  # here: reading a file must not import the parser

    return stack_file.parse_stack(
        source.text,
        source=source.source,
        project_name=source.project_name,
        default_project=source.default_project,
        host_env=variables(source),
        read_text=files.env_file_reader(source.directory),  # regular files, bounded
        check=check,
        directory=str(source.directory),
        home=os.path.expanduser("~"),  # `~` in a bind source, when the environment has no HOME
        overrides=source.overrides,
        read_file=stack_file_reader(source.directory, confined=source.confined),
    )


def stack_file_reader(base: Path, *, confined: bool) -> Callable[[str], str]:
    """How a stack's `include:` and `extends: file:` files (and an include's env files)
    are read: bounded regular files, by names relative to the stack's directory `base`.
    `confined`, only beneath it: a name that is absolute, climbs out with `..` or leads
    out through a symlink is refused (the daemon's API)."""
    root = base.resolve() if confined else base

    def read(name: str) -> str:
        path = base / name
        if confined and not path.resolve().is_relative_to(root):
            raise files.FileProblem(
                errno.EACCES,
                f"is outside the stack's directory {base}, and a stack sent to the daemon "
                "is read only beneath its directory; move the file there (or run `linkd "
                "up` in the foreground)",
                name,
            )
        return files.read_text(path)

    return read


def variables(source: StackSource) -> dict[str, str]:
    """What `${VAR}` reads: the source's environment over its env files' variables
    (Compose's precedence). A missing `.env` is nothing; a missing `--env-file` is an
    error naming it."""
    from linkd.errors import SpecError
    from linkd.spec.values import Bad, parse_env_file

    names = source.env_files if source.env_files is not None else (".env",)
    found: dict[str, str] = {}
    for name in names:
        path = source.directory / name
        try:
            text = files.read_text(path)
        except OSError as exc:
            if exc.errno == errno.ENOENT and source.env_files is None:
                continue  # no .env: Compose's default file is optional
            raise SpecError([("env file", None, f"cannot read {path}: {exc.strerror}")],
                            source.source) from None
        try:
            found.update(parse_env_file(text, str(path), source.environment,
                                        interpolation=True))
        except Bad as exc:
            raise SpecError([("env file", None, str(exc))], source.source) from None
    return {**found, **source.environment}
