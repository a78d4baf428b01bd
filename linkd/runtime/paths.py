"""Where linkd's files are, and whether a stack is up: names and one flock, nothing more.

The run directory's layout is described in `linkd.runtime.store`, which reads and writes
what lies there. This module only names the places, so that a command that merely asks
(`linkd ps`, the daemon client) imports neither the state codec nor asyncio: a CLI that
people type all day has to answer at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

STATE_FILE = "state.msgpack"
PREV_FILE = "state.msgpack.prev"


def root() -> Path:
    return Path(os.environ.get("LINKD_RUN_DIR", "/run/linkd"))


def socket_path() -> Path:
    """The API's unix socket: `$LINKD_SOCKET`, else `<root>/linkd.sock`."""
    return Path(os.environ.get("LINKD_SOCKET", str(root() / "linkd.sock")))


def stack_dir(stack: str) -> Path:
    return root() / "stacks" / stack


def container_dir(stack: str, container: str) -> Path:
    return stack_dir(stack) / "containers" / container


def log_path(stack: str, container: str) -> Path:
    return container_dir(stack, container) / "log"


def supervisor_lock(stack: str) -> Path:
    return stack_dir(stack) / "supervisor.lock"


def stacks() -> list[str]:
    """The stacks with a state file (or only a last good copy of one)."""
    base = root() / "stacks"
    try:
        return sorted(
            p.name for p in base.iterdir() if (p / STATE_FILE).exists() or (p / PREV_FILE).exists()
        )
    except FileNotFoundError:
        return []


@contextlib.contextmanager
def locked(path: Path, *, wait: bool = True) -> Iterator[int]:
    """Hold an exclusive flock on `path` (created if needed) for the block.

    Raises BlockingIOError at once if `wait` is False and someone else holds it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        yield fd
    finally:
        os.close(fd)


def supervised(stack: str) -> bool:
    """True while some process holds the stack's supervisor lock."""
    path = supervisor_lock(stack)
    if not path.exists():
        return False
    try:
        with locked(path, wait=False):
            return False
    except BlockingIOError:
        return True
