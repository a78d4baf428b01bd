"""Where linkd keeps its files, and how they are written.

Layout (the root is /run/linkd, or $LINKD_RUN_DIR; /run is a tmpfs, so nothing here
outlives a reboot, and neither do the namespaces and processes it describes):

    <root>/lock                         flock: held while a stack picks its subnets
    <root>/stacks/<stack>/state.msgpack the StackState (linkd.state), replaced atomically
    <root>/stacks/<stack>/supervisor.lock  flock held by the process supervising the stack
    <root>/stacks/<stack>/containers/<container>/
        hosts, hostname, resolv.conf    bind-mounted over /etc/... inside the container
        spec.marshal                    what the shim runs (linkd.runtime.process)
        log                             the container's stdout and stderr
        bindings/links.env, links.json  bound at /run/linkd inside the container
    <root>/leases/<stack>.msgpack       the stack's last subnets and addresses
                                        (linkd.ipam.Lease); kept after `down`, so a
                                        re-created stack gets the same addresses

Writes go to a temporary file in the same directory, are fsynced, then renamed over the
old file, so a reader (or a crash) sees the old state or the new one, never half.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from linkd import state as state_codec
from linkd.errors import NotFoundError
from linkd.ipam import Lease
from linkd.state import StackState, StateError


def root() -> Path:
    return Path(os.environ.get("LINKD_RUN_DIR", "/run/linkd"))


def stack_dir(stack: str) -> Path:
    return root() / "stacks" / stack


def container_dir(stack: str, container: str) -> Path:
    return stack_dir(stack) / "containers" / container


def log_path(stack: str, container: str) -> Path:
    return container_dir(stack, container) / "log"


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def save(state: StackState) -> None:
    write_atomic(stack_dir(state.plan.stack) / "state.msgpack", state_codec.encode(state),
                 0o600)


def load(stack: str) -> StackState:
    path = stack_dir(stack) / "state.msgpack"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise NotFoundError(
            f"stack {stack} is not up (no {path}); `linkd ps --all` lists the stacks that are"
        ) from None
    return state_codec.decode(data)


def stacks() -> list[str]:
    base = root() / "stacks"
    try:
        return sorted(p.name for p in base.iterdir() if (p / "state.msgpack").exists())
    except FileNotFoundError:
        return []


def remove_stack_dir(stack: str) -> None:
    shutil.rmtree(stack_dir(stack), ignore_errors=True)


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


def supervisor_lock(stack: str) -> Path:
    return stack_dir(stack) / "supervisor.lock"


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


def lease_path(stack: str) -> Path:
    return root() / "leases" / f"{stack}.msgpack"


def save_lease(lease: Lease) -> None:
    write_atomic(lease_path(lease.stack), state_codec.pack(lease), 0o600)


def load_lease(stack: str) -> Lease | None:
    """The stack's lease; None if it has none, or one this linkd cannot read (a lease
    is only a preference, never worth refusing to start over)."""
    try:
        return state_codec.unpack(Lease, lease_path(stack).read_bytes())
    except (OSError, StateError):
        return None


def leases() -> list[Lease]:
    try:
        files = sorted((root() / "leases").glob("*.msgpack"))
    except OSError:
        return []
    found = [load_lease(f.stem) for f in files]
    return [lease for lease in found if lease is not None]


def forget_lease(stack: str) -> None:
    lease_path(stack).unlink(missing_ok=True)
