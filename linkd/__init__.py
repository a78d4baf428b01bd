"""linkd: wire containers together by name.

The package is laid out by job (the README's "Architecture" section has the picture):

- pure packages, data in and data out, no sockets, processes, event loop or files:
  `linkd.spec` (the stack file), `linkd.core` (planning, state codec, rules),
  `linkd.dns` (the zone and DNS answering), `linkd.conventions` (rendering conventions);
- `linkd.runtime`: the I/O shell, the only code that touches the kernel, processes,
  the image store and the daemon's sockets;
- `linkd.client`: the daemon's client side (API client, Python API, waits, pytest
  plugin), which talks HTTP to the daemon and imports no runtime;
- `linkd.cli`: the `linkd` command;
- shared by all: `linkd.errors`, `linkd.paths` (where the run directory and the socket
  are) and `linkd.files` (bounded reads of user files), standard library only; and,
  on them and `linkd.spec`, `linkd.loader` (a stack file's source to a `Stack`, the one
  loader of the CLI, the client and the daemon).

The import-linter contracts in pyproject.toml hold these rules.
"""

from __future__ import annotations

__version__ = "0.1.0"

# typing.TYPE_CHECKING without importing typing (mypy knows the name): every linkd
# process imports this package, and `linkd ps` should not spend 3 ms on typing.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from linkd.client.stacks import AsyncStack, Stack

__all__ = ["AsyncStack", "Stack", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy: `linkd.Stack` pulls in the daemon client, which the shim, the namespace
    # helper and the pure core, all importing `linkd`, must not pay for.
    if name in ("Stack", "AsyncStack"):
        from linkd.client import stacks

        return getattr(stacks, name)
    raise AttributeError(f"module 'linkd' has no attribute {name!r}")
