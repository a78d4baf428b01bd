"""The conventions a stack names, read from their files: the shell's half of conventions.

`linkd.conventions` parses and renders conventions and reads no files; the planner
(`linkd.core.plan.realize`) takes every convention it needs as data. This module reads
them: built-ins by name from the package's `builtin_conventions/` directory (a symlink to
the repository's top-level `conventions/` in a checkout; a real directory of package data
in a wheel or sdist: setuptools copies through the link), a stack's own files by path,
relative to the stack file's directory. `load_conventions(stack, base)` is what the
supervisor and `linkd config` hand to the planner.
"""

from __future__ import annotations

import functools
from pathlib import Path

from linkd.conventions.render import references
from linkd.conventions.schema import Convention, parse_convention
from linkd.core.model import Stack
from linkd.errors import ConventionError

__all__ = ["BUILTIN_DIR", "builtin", "builtin_names", "load_conventions", "read_convention"]

# linkd/runtime/stack/conventions.py -> linkd/builtin_conventions
BUILTIN_DIR = Path(__file__).resolve().parents[2] / "builtin_conventions"
_MAX_BYTES = 1 << 20  # as for stack and env files (linkd.files)

Problem = tuple[str, int | None, str]


def read_convention(path: Path) -> Convention:
    """The convention in the file at `path` (bounded, UTF-8). Raises `ConventionError`
    listing every problem, named by the path."""
    origin = str(path)
    try:  # the caller (load_conventions) has checked it is a regular file
        with path.open("rb") as file:
            data = file.read(_MAX_BYTES + 1)
        if len(data) > _MAX_BYTES:
            raise ConventionError(
                [("(file)", None, f"larger than {_MAX_BYTES} bytes, linkd's limit")], origin
            )
        text = data.decode("utf-8")
    except OSError as exc:
        problem: Problem = ("(file)", None, f"cannot read: {exc.strerror}")
        raise ConventionError([problem], origin) from None
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        problem = ("(file)", line, f"not UTF-8 text (byte 0x{data[exc.start]:02x})")
        raise ConventionError([problem], origin) from None
    return parse_convention(text, origin)


def builtin_names(directory: Path = BUILTIN_DIR) -> tuple[str, ...]:
    if not directory.is_dir():
        raise _no_directory(directory)
    return tuple(sorted(p.stem for p in directory.glob("*.yaml")))


@functools.cache
def builtin(name: str, directory: Path = BUILTIN_DIR) -> Convention:
    """The built-in convention `name` (cached: the files ship with linkd)."""
    known = builtin_names(directory)
    if name not in known:
        raise ConventionError(
            [("(file)", None, f"no built-in convention {name!r} (built in: "
              f"{', '.join(known)}); to use your own, give the path of its file")],
            str(directory),
        )  # fmt: skip
    convention = read_convention(directory / f"{name}.yaml")
    if convention.name != name:
        raise ConventionError(
            [("name", None, f"is {convention.name!r}, but the file is {name}.yaml")],
            convention.source,
        )
    return convention


def load_conventions(stack: Stack, base: Path) -> dict[str, Convention]:
    """Every convention the stack names, loaded and checked: files relative to `base`
    (the stack file's directory), built-ins by name. One error lists every problem."""
    loaded: dict[str, Convention] = {}
    problems: list[Problem] = []
    for ref in references(stack):
        try:
            if ref.endswith((".yaml", ".yml")):
                path = Path(ref) if Path(ref).is_absolute() else base / ref
                if not path.is_file():
                    message = f"no convention file {ref} (looked for {path})"
                    problems.append(("x-linkd.conventions", None, message))
                    continue
                loaded[ref] = read_convention(path)
            else:
                loaded[ref] = builtin(ref)
        except ConventionError as exc:
            problems += [(f"{exc.source or ref}: {k}", line, m) for k, line, m in exc.problems]
    if problems:
        raise ConventionError(problems)
    return loaded


def _no_directory(directory: Path) -> ConventionError:
    return ConventionError(
        [("(file)", None, "the built-in conventions directory is missing from the linkd "
          "package (linkd/builtin_conventions): reinstall linkd from a wheel or sdist; or "
          "give a convention file's path")],
        str(directory),
    )  # fmt: skip
