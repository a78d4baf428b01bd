"""Starting the shim: its command line, the spec files it reads, and its spawn, off the
event loop; warm shims, started ahead of their container.

**The command line.** ``python -I -S -c SHIM_LOADER SHIM_PATH MODE ...``: the shim runs
as an imported module, from its cached bytecode (``python shim.py`` would compile its
modules on every start), with site-packages skipped, so it starts in ~10 ms. SHIM_PATH
stays an argument of its own, followed by the mode: that is how the shim's processes are
recognised in /proc (``identity``).

**The spawn** (``spawn``). A fork of the daemon, or even subprocess's vfork, holds the
event loop until the child has exec'd: Python's ``_posixsubprocess`` keeps the GIL
while vfork waits, and on a machine busy starting other shims the child waits for a CPU
first (3-6 ms a container under ``linkd up``, measured). So the shim is spawned by
glibc's posix_spawn (a vfork too) called through ctypes, which releases the GIL, from one
thread of its own (``_SPAWNER``) that lives as long as the process: PR_SET_PDEATHSIG,
which the shim arms, fires when the *thread* that spawned it ends. The loop only builds
the spawn's attributes and awaits the result. What the shim gets is what
``subprocess.Popen(start_new_session=True, close_fds=True, pass_fds=...)`` gave it: a
session of its own (``POSIX_SPAWN_SETSID``), stdin /dev/null, stdout and stderr on the
container's log, the status pipe as fd 3 and a warm shim's gate as fd 4, every other fd
closed (``posix_spawn_file_actions_addclosefrom_np``), SIGPIPE and SIGXFSZ back to their
defaults, no signal blocked, the daemon's environment. Where glibc lacks closefrom (before
2.34), subprocess spawns it, on the loop, as before.

The shim is our child (:class:`ShimChild`): reaped with ``waitpid`` on its pid only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import fcntl
import marshal
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from linkd.errors import ContainerError

SHIM_PATH = str(Path(__file__).with_name("shim.py"))
# Its directory goes last on sys.path, so no module beside it can stand in for one of the
# standard library's (the shim's own modules are named shim_*, which none is).
SHIM_LOADER = (
    "import sys; sys.path.append(sys.argv[1].rpartition('/')[0]); del sys.argv[0]; "
    "import shim; shim.main(sys.argv)"
)
SPEC_FILE = "spec.marshal"
STATUS_FD = 3  # the shim's status pipe, in the shim
GATE_FD = 4  # a warm shim's gate, in the shim


def shim_argv(*args: str) -> list[str]:
    """The command line that runs the shim with `args` (`run ...` or `exec ...`)."""
    return [sys.executable, "-I", "-S", "-c", SHIM_LOADER, SHIM_PATH, *args]


def exec_argv(init_pid: int, spec_path: str, *, remove_spec: bool = False) -> list[str]:
    """The command line that runs `spec_path`'s command inside the container of `init_pid`.

    Meant to be run with inherited stdio (interactive shells work); it exits with the
    command's exit code (127/126 if it could not be started, with a message on stderr).
    Killed, it takes the command's process group with it (``shim_entry``). `remove_spec`:
    the spec is for this run only, and removed once read.
    """
    return shim_argv("exec", str(init_pid), spec_path, *(["--remove-spec"] if remove_spec
                                                         else []))


def write_exec_spec(
    path: str,
    argv: Sequence[str],
    env: Iterable[tuple[str, str]],
    working_dir: str | None,
    user: str | None,
    *,
    name: str | None = None,
    image: bool = False,
    group_add: Sequence[str] = (),
) -> None:
    """Write the spec that :func:`exec_argv`'s shim (and a health agent) reads.

    `env` is exactly the command's environment.  `name` (the container's) only improves
    error messages.  `image`: the container's root is an image, whose users are read
    from its /etc/passwd and /etc/group as files, never through its NSS configuration.
    """
    write_spec(
        path,
        {
            "name": name,
            "argv": list(argv),
            "env": [[k, v] for k, v in env],
            "working_dir": working_dir,
            "user": user,
            "group_add": list(group_add),
            "image_root": image,
        },
    )


def write_spec(path: str, data: dict[str, Any]) -> None:
    # marshal, not JSON: the shim reads it with no import (`import json` alone is about a
    # quarter of a container's start), and both sides are the same interpreter.
    # 0600: the environment often carries credentials.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with open(fd, "wb") as f:
        marshal.dump(data, f)


class ShimChild:
    """A shim process we spawned: reaped exactly once, by waitpid on its own pid, with
    `subprocess.Popen`'s conventions (`returncode` -N for death by signal N)."""

    __slots__ = ("pid", "returncode")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """The exit code once it has exited (reaping it), else None; never blocks."""
        if self.returncode is None:
            self._reap(os.WNOHANG)
        return self.returncode

    def wait(self) -> int:
        while self.returncode is None:
            self._reap(0)
        return self.returncode

    def kill(self) -> None:
        # Only while unreaped: until then its pid cannot have been reused.
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def _reap(self, options: int) -> None:
        try:
            pid, status = os.waitpid(self.pid, options)
        except ChildProcessError:
            self.returncode = 0  # reaped by someone else: its code is lost (as Popen says)
            return
        if pid == self.pid:
            self.returncode = os.waitstatus_to_exitcode(status)


@dataclass(eq=False)
class WarmShim:
    """A shim started ahead of its container (`warm`): its interpreter starts, and then
    waits at a gate (a pipe) for `start` to have written the spec, so Python's start-up
    (~10 ms) overlaps the runtime's network wiring instead of following it. As runc's
    create/start split, the command never runs before `start` says so. A warm shim the
    runtime drops (`discard`, or linkd dying) sees EOF at its gate and exits, having
    started nothing."""

    spawned: concurrent.futures.Future[ShimChild]
    status_r: int
    gate_w: int | None
    spec_path: str

    @property
    def child(self) -> ShimChild:
        """The shim, once spawned (waits for the spawn, a few milliseconds at most);
        raises ContainerError if it could not be."""
        return self.spawned.result()

    def release(self) -> None:
        """Let it go on: the spec is written."""
        if self.gate_w is None:
            return
        with contextlib.suppress(OSError):  # it died: its status pipe will say so
            os.write(self.gate_w, b"go")
        os.close(self.gate_w)
        self.gate_w = None

    def discard(self) -> None:
        if self.gate_w is not None:
            os.close(self.gate_w)
            self.gate_w = None
        os.close(self.status_r)
        try:
            child = self.child
        except ContainerError:
            return  # never started
        child.kill()  # at the gate, or still starting: nothing of a container yet
        child.wait()


def warm(run_dir: str, log_path: str) -> WarmShim:
    """Start the shim of the container whose files are in `run_dir`, to wait at its gate."""
    os.makedirs(run_dir, mode=0o700, exist_ok=True)
    spec_path = os.path.join(run_dir, SPEC_FILE)
    spawned, status_r, gate_w = _submit(spec_path, log_path, gated=True)
    return WarmShim(spawned, status_r, gate_w, spec_path)


async def spawn(spec_path: str, log_path: str) -> tuple[ShimChild, int]:
    """The shim for `spec_path`, and the read end of its status pipe (non-blocking).

    Raises ContainerError if it cannot be started. Cancelled while the spawn is under
    way, it waits for the spawn to finish and kills the shim (which has done nothing
    yet that outlives it) before re-raising.
    """
    spawned, status_r, _ = _submit(spec_path, log_path, gated=False)
    try:
        child = await asyncio.shield(asyncio.wrap_future(spawned))
    except asyncio.CancelledError:
        with contextlib.suppress(ContainerError):
            child = spawned.result()
            child.kill()
            child.wait()
        os.close(status_r)
        raise
    except ContainerError:
        os.close(status_r)
        raise
    return child, status_r


# --- the spawn ------------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
# glibc's spawn.h; posix_spawnattr_t and posix_spawn_file_actions_t are opaque structures
# (336 and 80 bytes on 64-bit glibc), given room to spare here.
POSIX_SPAWN_SETSIGDEF = 0x04
POSIX_SPAWN_SETSIGMASK = 0x08
POSIX_SPAWN_SETSID = 0x80
_OPAQUE_SIZE = 1024
_SIGSET_SIZE = 128
_HAS_CLOSEFROM = hasattr(_libc, "posix_spawn_file_actions_addclosefrom_np")


class _Spawner:
    """One thread for every spawn, for the life of the process (PDEATHSIG: see the module's
    docstring): a daemon thread, never joined, where an executor's worker would be ended
    at the interpreter's exit, before the process's, and would not follow a fork."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[tuple[Callable[[], ShimChild],
                                             concurrent.futures.Future[ShimChild]]]
        self._pid = 0  # the process the thread runs in

    def submit(self, fn: Callable[[], ShimChild]) -> concurrent.futures.Future[ShimChild]:
        with self._lock:
            if self._pid != os.getpid():  # the first spawn, or a forked child's first
                self._queue = queue.SimpleQueue()
                threading.Thread(target=self._serve, args=(self._queue,), daemon=True,
                                 name="linkd-shim-spawner").start()
                self._pid = os.getpid()
            future: concurrent.futures.Future[ShimChild] = concurrent.futures.Future()
            self._queue.put((fn, future))
        return future

    @staticmethod
    def _serve(requests: queue.SimpleQueue[tuple[Callable[[], ShimChild],
                                                 concurrent.futures.Future[ShimChild]]]
               ) -> None:
        while True:
            fn, future = requests.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as e:  # the caller's to see
                future.set_exception(e)


_SPAWNER = _Spawner()


def _submit(spec_path: str, log_path: str, *, gated: bool
            ) -> tuple[concurrent.futures.Future[ShimChild], int, int | None]:
    """Start spawning the shim for `spec_path`: the spawn's future, the read end of its
    status pipe, and the write end of its gate (`gated`: it waits there before reading
    the spec). What fails before the spawn raises ContainerError here."""
    status_r, status_w = os.pipe()  # both close-on-exec: the shim gets its own copy of w
    gate_r, gate_w = os.pipe() if gated else (None, None)
    # The shim's copies of these, closed here once it is spawned: ours must go, or EOF
    # would never come on the status pipe.
    ours = [status_w] + ([gate_r] if gate_r is not None else [])
    try:
        os.set_blocking(status_r, False)
        ours.append(os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                            0o640))
        if not _HAS_CLOSEFROM:
            return _popen(spec_path, ours), status_r, gate_w
        for i, fd in enumerate(ours):
            # Above every fd the shim gets (0-4), so that no file action overwrites the
            # source of another before it is used.
            if fd <= GATE_FD:
                ours[i] = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, GATE_FD + 1)
                os.close(fd)
        args = ["run", spec_path, str(STATUS_FD)] + ([str(GATE_FD)] if gated else [])
        spawn_args = _SpawnArgs(shim_argv(*args), ours[0], ours[1] if gated else None, ours[-1])
    except OSError as e:
        for fd in ours:
            os.close(fd)
        os.close(status_r)
        if gate_w is not None:
            os.close(gate_w)
        raise _cannot_start(spec_path, e) from e

    def run() -> ShimChild:
        try:
            return ShimChild(spawn_args.spawn())
        except OSError as e:
            raise _cannot_start(spec_path, e) from e
        finally:
            spawn_args.destroy()
            for fd in ours:
                os.close(fd)

    return _SPAWNER.submit(run), status_r, gate_w


def _cannot_start(spec_path: str, e: OSError) -> ContainerError:
    name = os.path.basename(os.path.dirname(spec_path))
    return ContainerError(f"container {name}: cannot start the shim: {e}")


class _SpawnArgs:
    """posix_spawn's arguments for one shim, built on the caller's thread; `spawn` (on
    the spawner's) only calls it."""

    def __init__(self, argv: list[str], status_w: int, gate_r: int | None, log: int) -> None:
        self.argv = (ctypes.c_char_p * (len(argv) + 1))(*(os.fsencode(a) for a in argv), None)
        self.path = os.fsencode(argv[0])
        self.actions = ctypes.create_string_buffer(_OPAQUE_SIZE)
        self.attr = ctypes.create_string_buffer(_OPAQUE_SIZE)
        _check(_libc.posix_spawn_file_actions_init(self.actions))
        _check(_libc.posix_spawnattr_init(self.attr))
        try:
            self._fill(status_w, gate_r, log)
        except OSError:
            self.destroy()
            raise

    def _fill(self, status_w: int, gate_r: int | None, log: int) -> None:
        actions = self.actions
        _check(_libc.posix_spawn_file_actions_addopen(actions, 0, b"/dev/null", os.O_RDONLY, 0))
        for fd, target in ((log, 1), (log, 2), (status_w, STATUS_FD), (gate_r, GATE_FD)):
            if fd is not None:
                _check(_libc.posix_spawn_file_actions_adddup2(actions, fd, target))
        lowest_closed = (GATE_FD if gate_r is not None else STATUS_FD) + 1
        _check(_libc.posix_spawn_file_actions_addclosefrom_np(actions, lowest_closed))
        # As subprocess's restore_signals: what Python ignores goes back to the default.
        defaults = ctypes.create_string_buffer(_SIGSET_SIZE)
        _libc.sigemptyset(defaults)
        for sig in (signal.SIGPIPE, signal.SIGXFSZ):
            _libc.sigaddset(defaults, int(sig))
        nothing = ctypes.create_string_buffer(_SIGSET_SIZE)
        _libc.sigemptyset(nothing)
        _check(_libc.posix_spawnattr_setsigdefault(self.attr, defaults))
        _check(_libc.posix_spawnattr_setsigmask(self.attr, nothing))
        flags = POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK
        _check(_libc.posix_spawnattr_setflags(self.attr, ctypes.c_short(flags)))

    def spawn(self) -> int:
        pid = ctypes.c_int()
        environ = ctypes.c_void_p.in_dll(_libc, "environ")  # os.environ writes through
        _check(_libc.posix_spawn(ctypes.byref(pid), self.path, self.actions, self.attr,
                                 self.argv, environ))
        return pid.value

    def destroy(self) -> None:
        _libc.posix_spawn_file_actions_destroy(self.actions)
        _libc.posix_spawnattr_destroy(self.attr)


def _check(err: int) -> None:
    """posix_spawn and its helpers return an errno value (0: done)."""
    if err:
        raise OSError(err, os.strerror(err))


def _popen(spec_path: str, ours: list[int]) -> concurrent.futures.Future[ShimChild]:
    """The spawn where glibc has no closefrom (before 2.34): subprocess's, on the
    caller's thread, with the shim's fds at the numbers they have here. Closes `ours`;
    raises OSError."""
    status_w, gate, log = ours[0], ours[1:-1], ours[-1]
    args = ["run", spec_path, str(status_w), *(str(fd) for fd in gate)]
    try:
        popen = subprocess.Popen(
            shim_argv(*args), pass_fds=(status_w, *gate), stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
        )
    finally:
        for fd in ours:
            os.close(fd)
        ours.clear()  # closed: nothing for the caller to close if this raised
    # ShimChild reaps it. Marked done, so that the Popen's finalizer does not hand it to
    # subprocess's own reaping of abandoned children, which would take its exit status.
    popen.returncode = 0
    spawned: concurrent.futures.Future[ShimChild] = concurrent.futures.Future()
    spawned.set_result(ShimChild(popen.pid))
    return spawned
