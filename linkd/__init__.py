"""linkd: wire containers together by name.

The modules directly under `linkd/` are the pure core (parsing, planning, naming, state
encoding); `linkd.runtime` is the only package that touches the kernel, processes,
sockets, files and the clock.
"""

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from linkd.stacks import Stack

__all__ = ["Stack", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy: `linkd.Stack` pulls in the daemon client, which the shim, the namespace
    # helper and the pure core, all importing `linkd`, must not pay for.
    if name == "Stack":
        from linkd.stacks import Stack

        return Stack
    raise AttributeError(f"module 'linkd' has no attribute {name!r}")
