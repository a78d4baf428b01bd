"""Where linkd keeps its files, and how they are written.

Layout (the root is /run/linkd, or $LINKD_RUN_DIR; /run is a tmpfs, so nothing here
outlives a reboot, and neither do the namespaces and processes it describes):

    <root>/lock                         flock: held while a stack picks its subnets
    <root>/stacks/<stack>/state.msgpack the StackState (linkd.core.state: a checksummed
                                        header, then msgpack), replaced atomically
    <root>/stacks/<stack>/state.msgpack.prev
                                        the state before the last save: the last good
                                        copy, read when state.msgpack is missing or bad
    <root>/stacks/<stack>/supervisor.lock  flock held by the process supervising the stack
    <root>/stacks/<stack>/containers/<container>/
        hosts, hostname, resolv.conf    bind-mounted over /etc/... inside the container
        spec.marshal                    what the shim runs (linkd.runtime.containers.process)
        log                             the container's stdout and stderr
        bindings/links.env, links.json  bound at /run/linkd inside the container
    <root>/leases/<stack>.msgpack       the stack's last subnets and addresses
                                        (linkd.core.ipam.Lease, framed like the state); kept
                                        after `down`, so a re-created stack gets the
                                        same addresses
    .<name>.<pid>.<n>.tmp               a write in progress (or cut short by a crash;
                                        never read, removed with the stack directory)

`write_atomic` writes a temporary file in the same directory, fsyncs it, renames it over
the old file and fsyncs the directory, so a reader (or a crash, or a power cut) sees the
old content or the new, never half, and a rename that returned is on disk.

`save` (only ever called by the stack's supervisor, under its lock: one writer per
stack) also keeps the previous state: 1. the new state goes to a temporary file; 2. if
the current state.msgpack is whole (its checksums hold), it is hard-linked to a
temporary name that is renamed over state.msgpack.prev; 3. the temporary file is renamed
over state.msgpack. At every instant state.msgpack is a whole state (the old or the new),
and so is .prev once there has been a second save. State and leases are not fsynced:
what they describe (namespaces, links, processes) does not outlive the kernel, and their
home, /run, is a tmpfs that does not either; the renames are what protect them from a
crash of linkd itself, which is what recovery is for. (A run directory put on a disk and
cut by a power failure may hold a torn state; `load` says so and how to clear it, and
nothing it described is left to remove.) An fsync per state change, on a loaded disk,
was the largest single cost of starting a container.

`load` reads state.msgpack; if it is missing, torn or corrupt it reads .prev instead and
logs a warning on the "linkd" logger (the copy is one save behind: a container's status
may be stale, the plan, which `down` needs, is the same). If both are bad it raises a
StateError naming both files, both problems and the way out. It reads each file once and
never retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import itertools
import logging
import os
import shutil
import stat
from collections.abc import AsyncIterator
from pathlib import Path

from linkd.core import state as state_codec
from linkd.core.ipam import Lease
from linkd.core.plan import StackPlan
from linkd.core.state import StackState, StateError
from linkd.errors import LinkdError, NotFoundError

# The places are named in linkd.paths, which `linkd ps` imports without this
# module (and its state codec and asyncio); re-exported for this module's users.
from linkd.paths import PREV_FILE as PREV_FILE
from linkd.paths import STATE_FILE as STATE_FILE
from linkd.paths import chmod_dir
from linkd.paths import container_dir as container_dir
from linkd.paths import forget_lease as forget_lease
from linkd.paths import lease_path as lease_path
from linkd.paths import locked as locked
from linkd.paths import log_path as log_path
from linkd.paths import private_dirs as private_dirs
from linkd.paths import root as root
from linkd.paths import stack_dir as stack_dir
from linkd.paths import stacks as stacks
from linkd.paths import supervised as supervised
from linkd.paths import supervisor_lock as supervisor_lock

log = logging.getLogger("linkd")


def state_path(stack: str) -> Path:
    return stack_dir(stack) / STATE_FILE


def prev_path(stack: str) -> Path:
    return stack_dir(stack) / PREV_FILE


def write_atomic(path: Path, data: bytes, mode: int = 0o644, *, durable: bool = True) -> None:
    """Replace `path` with `data`. A new file gets `mode`; a file that is replaced keeps
    its owner and its mode (never wider than `mode`), so a file handed to a container's
    user (`protect_bindings`) stays that user's through every rewrite. Directories made
    under the run root are 0700, and so is the root (issue 14 §5).

    `durable=False` skips the fsyncs, for files derived from the state and rewritten
    whenever a container starts (hosts, resolv.conf, bindings): a reader never sees
    half a file either way (the rename), and what a power cut loses, the containers
    that read it lose too."""
    private_dirs(path.parent)
    tmp = _write_temp(path, data, mode, durable)
    try:
        with contextlib.suppress(FileNotFoundError):
            old = os.stat(path, follow_symlinks=False)
            os.chown(tmp, old.st_uid, old.st_gid)
            os.chmod(tmp, stat.S_IMODE(old.st_mode) & mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        _fsync_dir(path.parent)




def protect_container_dir(directory: Path, uid: int, gid: int) -> None:
    """A container's directory and those above it 0700 (root's alone); its `bindings`
    directory 0711, so the container's user can open the files in it once it is bound at
    /run/linkd, and links.env and links.json (peer variables and URLs, with their
    passwords) 0400 and that user's: readable by root on the host and by the container's
    own user inside it, by no one else."""
    top = root()
    here = directory
    while here.is_relative_to(top) and here != top:
        chmod_dir(here, 0o700)
        here = here.parent
    chmod_dir(top, 0o700)
    bindings_dir = directory / "bindings"
    chmod_dir(bindings_dir, 0o711)
    for name in ("links.env", "links.json"):
        path = bindings_dir / name
        with contextlib.suppress(FileNotFoundError):
            os.chown(path, uid, gid, follow_symlinks=False)
            os.chmod(path, 0o400)


_temp_names = itertools.count()


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{next(_temp_names)}.tmp")


def _write_temp(path: Path, data: bytes, mode: int, durable: bool = True) -> Path:
    """A temporary file next to `path` holding `data`, fsynced if `durable`."""
    tmp = _temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return tmp


def _fsync_dir(directory: Path) -> None:
    """Make the renames and links done in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):  # cannot sync a directory
            raise
    finally:
        os.close(fd)


def save(state: StackState) -> None:
    """Replace the stack's state, keeping the one it replaces as the last good copy
    (the steps, and why a crash between any two is safe, are in the module docstring)."""
    directory = stack_dir(state.plan.stack)
    path, prev = directory / STATE_FILE, directory / PREV_FILE
    data = state_codec.encode(state)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = _write_temp(path, data, 0o600, durable=False)
    try:
        _keep_previous(path, prev)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _saved[path] = _identity(os.stat(path))


# The state file each path last got from this process, by identity: a file that is
# still that one is whole (it was renamed into place complete), so the next save need
# not read and verify it again before keeping it (a stack of hundreds of containers is
# saved many times a second while it comes up).
_saved: dict[Path, tuple[int, int, int, int]] = {}


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def file_identity(path: Path) -> tuple[int, int, int, int] | None:
    """What changes when `path` is replaced or written (None: it is not there): files of
    this store are replaced whole, so a reader keeps what it decoded while this holds."""
    try:
        return _identity(os.stat(path))
    except OSError:
        return None


def _keep_previous(path: Path, prev: Path) -> None:
    """Make `prev` a copy of `path`, if `path` is a whole state; never leaves `prev`
    missing or half-written on the way."""
    try:
        ours = _identity(os.stat(path)) == _saved.get(path)
        current = b"" if ours else path.read_bytes()
    except FileNotFoundError:
        return
    if not ours:
        try:
            state_codec.verify(current)
        except StateError as exc:
            log.warning("%s: %s; overwriting it, and keeping %s as the last good copy",
                        path, exc, prev.name)
            return
    with contextlib.suppress(FileNotFoundError):
        if os.path.samefile(path, prev):  # a save that crashed after step 2
            return
    link = _temp_name(prev)
    try:
        os.link(path, link)
        os.replace(link, prev)
    except OSError:  # a file system without hard links: copy instead
        link.unlink(missing_ok=True)
        copy = _write_temp(prev, current or path.read_bytes(), 0o600, durable=False)
        try:
            os.replace(copy, prev)
        except BaseException:
            copy.unlink(missing_ok=True)
            raise


def load(stack: str) -> StackState:
    """The stack's state: state.msgpack, or its last good copy if that is missing or bad
    (with a warning on the "linkd" logger). NotFoundError if the stack has neither."""
    path, prev = state_path(stack), prev_path(stack)
    try:
        return _read(path)
    except FileNotFoundError:
        problem = "missing"
    except (OSError, StateError) as exc:
        problem = _problem(exc)
    try:
        state = _read(prev)
    except FileNotFoundError:
        if problem == "missing":
            raise NotFoundError(
                f"stack {stack} is not up (no {path}); `linkd ps --all` lists the stacks "
                "that are"
            ) from None
        raise StateError(
            f"stack {stack}: {path}: {problem}; there is no last good copy ({prev} does "
            f"not exist). {_way_out(stack)}"
        ) from None
    except (OSError, StateError) as exc:
        raise StateError(
            f"stack {stack}: both state files are unreadable: {path}: {problem}; "
            f"{prev} (the last good copy): {_problem(exc)}. {_way_out(stack)}"
        ) from None
    log.warning(
        "stack %s: %s: %s; using the last good copy, %s (one save older: container "
        "statuses may be stale)",
        stack,
        path,
        problem,
        prev,
    )
    return state


def plans() -> list[StackPlan]:
    """The plans of the stacks that are up (a state file that cannot be read is skipped):
    what uses an image or a volume now."""
    found = []
    for stack in stacks():
        try:
            found.append(load(stack).plan)
        except LinkdError:
            continue
    return found


def _read(path: Path) -> StackState:
    return state_codec.decode(path.read_bytes())


def _problem(exc: OSError | StateError) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


def _way_out(stack: str) -> str:
    return (
        f"`linkd down -p {stack}` removes what is left of the stack, finding its "
        "namespaces and links by name; if its supervisor still runs (the process holding "
        f"{supervisor_lock(stack)}), stopping it with SIGTERM removes the stack instead"
    )


def remove_stack_dir(stack: str) -> None:
    # The last good copy goes first, so that a reader racing this never falls back to it
    # as if the current state had been damaged.
    directory = stack_dir(stack)
    _saved.pop(directory / STATE_FILE, None)
    for name in (PREV_FILE, STATE_FILE):
        with contextlib.suppress(OSError):
            (directory / name).unlink()
    shutil.rmtree(directory, ignore_errors=True)


_in_process: dict[Path, asyncio.Lock] = {}


@contextlib.asynccontextmanager
async def locked_async(path: Path) -> AsyncIterator[int]:
    """`locked` for code on an event loop: waiting never blocks the loop.

    Inside one process an asyncio.Lock queues the tasks (a daemon prepares many stacks
    at once); the flock, taken in a thread, then excludes other processes. A blocking
    flock on the loop thread would deadlock: the holder could never run to release it.
    """
    guard = _in_process.setdefault(path, asyncio.Lock())
    async with guard:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)



def save_lease(lease: Lease) -> None:
    write_atomic(lease_path(lease.stack), state_codec.pack(lease), 0o600, durable=False)


def load_lease(stack: str) -> Lease | None:
    """The stack's lease; None if it has none, or one this linkd cannot read (a lease
    is only a preference, never worth refusing to start over; a bad one is logged)."""
    path = lease_path(stack)
    try:
        return state_codec.unpack(Lease, path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, StateError) as exc:
        log.warning("%s: %s; ignoring it (stack %s may get new addresses)", path,
                    _problem(exc), stack)
        return None


def leases() -> list[Lease]:
    try:
        files = sorted((root() / "leases").glob("*.msgpack"))
    except OSError:
        return []
    found = [load_lease(f.stem) for f in files]
    return [lease for lease in found if lease is not None]
