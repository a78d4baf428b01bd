"""Where linkd's files are, and whether a stack is up: names and one flock, nothing more.

The run directory's layout is described in `linkd.runtime.stack.store`, which reads and writes
what lies there. This module only names the places, so that a command that merely asks
(`linkd ps`, the daemon client) imports neither the state codec nor asyncio: a CLI that
people type all day has to answer at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
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


def private_dirs(directory: Path) -> None:
    """Make `directory` and its missing parents; under the run root they are 0700 (the
    root too: other local users reach nothing of linkd's), elsewhere as the umask says."""
    top = root()
    if directory.is_dir():
        # Made before, with its modes: two stats, not a resolve of every component of
        # both paths, as each container's start and each file written ask for one.
        chmod_dir(top, 0o700)
        return
    try:
        inside = directory.resolve().is_relative_to(top.resolve())
    except OSError:
        inside = False
    if not inside:
        directory.mkdir(parents=True, exist_ok=True)
        return
    missing = []
    here = directory
    while not here.exists() and here != here.parent:
        missing.append(here)
        here = here.parent
    for made in reversed(missing):
        with contextlib.suppress(FileExistsError):
            made.mkdir(mode=0o700)
    chmod_dir(top, 0o700)


def chmod_dir(directory: Path, mode: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        if stat.S_IMODE(directory.stat().st_mode) != mode:
            os.chmod(directory, mode)


def lease_path(stack: str) -> Path:
    return root() / "leases" / f"{stack}.msgpack"


def forget_lease(stack: str) -> None:
    lease_path(stack).unlink(missing_ok=True)
