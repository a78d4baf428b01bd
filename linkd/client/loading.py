"""What a stack handed to the Python API becomes before it is sent to the daemon.

`Stack.up("stack.yaml")` and `Stack.up({"services": ...})` load the stack here, through
linkd.loader as `linkd up -d` does (a stack file read bounded, or a Compose-shaped dict
as its JSON text), with this process's environment for `${VAR}`; the daemon gets it
normalized (`linkd config`'s form), so what it runs is what this process read. The
file's warnings become `StackWarning`s. Each stack gets a name of its own unless given
one, so parallel test processes never collide.
"""

from __future__ import annotations

import json
import os
import secrets
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from linkd import loader
from linkd.spec.dump import stack_to_dict

Source = str | os.PathLike[str] | Mapping[str, Any]
Loaded = tuple[str, dict[str, Any], Path]  # what `load` returns


class StackWarning(UserWarning):
    """A warning of the stack file (an unknown key, say), as `linkd up` prints them."""


def unique_name(prefix: str = "t") -> str:
    """A stack name no other test process will pick: `prefix` and 8 hex digits."""
    return f"{prefix}{secrets.token_hex(4)}"


def load(
    source: Source, *, name: str | None = None, directory: str | os.PathLike[str] | None = None
) -> Loaded:
    """(name, normalized spec, directory) of a stack file or a Compose-shaped dict,
    parsed and normalized as `linkd up -d` does (`linkd config`'s form)."""
    project_name = name if name is not None else unique_name()
    if isinstance(source, Mapping):
        base = Path(directory if directory is not None else os.getcwd()).resolve()
        stack_source = loader.local_source(
            json.dumps(dict(source)),  # JSON is YAML: one parser, one set of errors
            source="stack built in Python",
            directory=base,
            project_name=project_name,
            env_files=(),  # its variables are this process's; no .env is looked for
        )
    else:
        stack_source = loader.read_file(Path(source), project_name=project_name,
                                        directory=directory)
    stack = loader.load(stack_source)
    for warning in stack.warnings:
        warnings.warn(f"linkd: {stack_source.source}: {warning}", StackWarning, stacklevel=3)
    return stack.name, stack_to_dict(stack), stack_source.directory
