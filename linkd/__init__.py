"""linkd: wire containers together by name.

The modules directly under `linkd/` are the pure core (parsing, planning, naming, state
encoding); `linkd.runtime` is the only package that touches the kernel, processes,
sockets, files and the clock.
"""

from __future__ import annotations

__version__ = "0.1.0"

# typing.TYPE_CHECKING without importing typing (mypy knows the name): every linkd
# process imports this package, and `linkd ps` should not spend 3 ms on typing.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from linkd.stacks import AsyncStack, Stack

__all__ = ["AsyncStack", "Stack", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy: `linkd.Stack` pulls in the daemon client, which the shim, the namespace
    # helper and the pure core, all importing `linkd`, must not pay for.
    if name in ("Stack", "AsyncStack"):
        from linkd import stacks

        return getattr(stacks, name)
    raise AttributeError(f"module 'linkd' has no attribute {name!r}")
