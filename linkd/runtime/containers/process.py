"""Container processes, the asyncio side: start, watch, signal, stop and enter containers.

A container here is "a Mininet host with its own hostname, PIDs and /proc": a command from
the host filesystem, run in new UTS, IPC, PID and mount namespaces inside a network
namespace that the network code created and wired beforehand (``/run/netns/<name>``).

The daemon never changes its own namespaces (DESIGN principle 6), so the namespace work
happens in a small standalone program, ``shim.py`` (its docstring has the details)::

    runtime (this module) ── pidfd ──▶ A  shim        our direct child; mirrors B's exit
                                        └─ B  init     PID 1: forwards signals, reaps zombies
                                            └─ C  command

How this side talks to it, and why:

* **Status pipe.**  A gets the write end of a pipe as STATUS_FD.  A writes
  ``pid <B's host pid>``; C marks its copy close-on-exec, so EOF on the read end means
  "the command has been exec'd".  If a step failed first, one ``error: ...`` line arrives
  before EOF and ``start`` raises it as a :class:`ContainerError`.  No polling, no sleeps,
  and ``start`` only returns once the command really runs.  The pipe is read with
  ``loop.add_reader``, so hundreds of containers start concurrently on one thread.
* **pidfd instead of asyncio's child watchers.**  The default watcher in 3.11 parks a thread
  in ``waitpid`` per child (500 containers = 500 threads), and the SIGCHLD-based ones reap
  children they do not own.  ``os.pidfd_open(A)`` becomes readable when A exits; the
  callback then reaps exactly A with ``Popen.poll()``.  Signals go through
  ``pidfd_send_signal``, so a recycled PID can never be hit.
* **B's pidfd.**  B is not our child, but we need it for SIGKILL when the grace period
  expires, and its exit is what guarantees the container is empty: the kernel only lets a
  PID-namespace init finish exiting once every other process in it is gone.  ``wait()``
  therefore resolves when A has exited *and* B has.  PID reuse is excluded by checking,
  after opening the pidfd, that the process's parent is A (A only ever forks B).
* **Exit codes** follow Docker: the command's own code, or 128+N when a signal N killed it
  (143 for SIGTERM, 137 for SIGKILL); if A itself is SIGKILLed, the same rule applies to A.

Surviving the starter, and adoption (what a daemon restarted after ``kill -9`` builds on):

* By default the container dies with the process that called :func:`start`: A arms
  PR_SET_PDEATHSIG(SIGKILL), B follows A.  PDEATHSIG fires when the *thread* that forked A
  exits, so call ``start`` from a thread that lives as long as the process (the event
  loop's).  ``ProcessSpec.survive_parent`` turns that off for A (B still follows A: without
  A nobody could learn the exit code).  A is started in a session of its own, with no
  controlling terminal, in both cases: a terminal closing on the starter sends its SIGHUP
  to the starter's process group and session, never to a container.
* **The exit file**, ``<run_dir>/exit``: A writes it just before it exits, atomically
  (temporary file + rename), as two lines: the exit code as above, then ``shim <A's pid>``.
  :func:`start` removes a stale one first.  Only a SIGKILLed (or crashed) A leaves none;
  an adopter then reports 137.
* :func:`adopt` rebuilds a :class:`ContainerProcess` for a container started by another
  (dead) process, from the pids it recorded.  A is not our child, so nothing can reap it or
  read its status; the pidfds still say when A and B exit (pidfds work for any process) and
  the exit file gives the code.  It checks first that the pid still runs linkd's shim for
  *this* spec (its command line names the spec file) and that the init pid is that shim's
  child, both after the pidfds are open, so a recycled pid is never taken for ours.

Nothing here uses ``preexec_fn``: it is unsafe with threads and forces the slow fork path.
The shim is run with ``-I -S``, which skips site-packages, so it starts in ~15 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import marshal
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from linkd.errors import ContainerError

SHIM_PATH = str(Path(__file__).with_name("shim.py"))
# Runs the shim as an imported module, from its cached bytecode: `python shim.py` would
# compile its thousand lines on every start (~7 ms of a ~14 ms start). Its directory goes
# last on sys.path, so no module beside it can stand in for one of the standard
# library's. SHIM_PATH stays an argument of its own, followed by the mode: that is how
# the shim's processes are recognised in /proc (`_is_shim_for`, `running_shims`).
SHIM_LOADER = (
    "import sys; sys.path.append(sys.argv[1].rpartition('/')[0]); del sys.argv[0]; "
    "import shim; shim.main(sys.argv)"
)


def shim_argv(*args: str) -> list[str]:
    """The command line that runs the shim with `args` (`run ...` or `exec ...`)."""
    return [sys.executable, "-I", "-S", "-c", SHIM_LOADER, SHIM_PATH, *args]

SPEC_FILE = "spec.marshal"
EXIT_FILE = "exit"  # in run_dir: "CODE\nshim PID\n", written by the shim as it exits
# The exit code reported for an adopted container whose shim left no exit file: it was
# SIGKILLed (or crashed), as 137 says for a shim that is our child.
EXIT_KILLED = 128 + signal.SIGKILL
# After init is SIGKILLed the shim normally reaps it and exits within a millisecond; this
# only bounds a shim that does not (stopped, say).  Not shorter: init's exit legitimately
# waits until every process of its namespace has been reaped, including an `exec` command
# orphaned to the host's PID 1, and killing the shim then would orphan init there too.
SHIM_KILL_DELAY = 5.0


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    """Everything needed to run one container's command."""

    name: str
    netns: str  # an existing /run/netns/<netns>, already wired
    hostname: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]  # exactly the command's environment, nothing added
    working_dir: str | None
    user: str | None  # "uid", "uid:gid", "name" or "name:group"; None = root
    bind_files: tuple[tuple[str, str], ...]  # (host source, target), mounted read-only
    log_path: str  # stdout+stderr of the container are appended here
    run_dir: str  # per-container directory; the spec JSON is written here
    keep_dirs: tuple[str, ...] = ()  # host directories under /tmp that stay visible
    # (host directory, target directory), mounted read-only: unlike a bound file, a
    # bound directory shows files replaced in it by rename (the live bindings)
    bind_dirs: tuple[tuple[str, str], ...] = ()
    # Keep running when the process that called start() dies, even by SIGKILL; the
    # container can then be taken over with adopt().  False: it dies with that process.
    survive_parent: bool = False
    # An image's root filesystem (linkd.runtime.containers.rootfs): its layers, top first, and the
    # container's directory for the overlay's upper/work/merged; None: the host's root.
    rootfs_lower: tuple[str, ...] = ()
    rootfs_dir: str | None = None
    rootfs_pivot: bool = True  # False: mount the overlay only (runc pivots into it)
    cgroups: tuple[str, ...] = ()  # cgroup directories init joins (limits), one per controller


class ContainerProcess:
    """A running (or finished) container, watched without threads.

    Create with :func:`start` (or :func:`adopt`).  ``pid`` is the shim (A), our child
    unless adopted; ``init_pid`` is the container's PID 1 (B) as the host sees it.
    """

    def __init__(self, name: str, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        # A is our child and not yet reaped, so its pid cannot have been reused.
        self._watch(name, popen.pid, os.pidfd_open(popen.pid))

    def _watch(self, name: str, pid: int, pidfd: int | None) -> None:
        self.name = name
        self.pid = pid
        self.init_pid = 0
        self.started_at = 0.0
        self._loop = asyncio.get_running_loop()
        self._done: asyncio.Future[int] = self._loop.create_future()
        self._shim_code: int | None = None
        self._init_pidfd: int | None = None
        self._kill_timer: asyncio.TimerHandle | None = None
        self._pidfd: int | None = pidfd
        if pidfd is not None:
            self._loop.add_reader(pidfd, self._on_shim_exit)

    @property
    def returncode(self) -> int | None:
        """The exit code once :meth:`wait` would return, else None."""
        return self._done.result() if self._done.done() else None

    async def wait(self) -> int:
        """Wait until the container is gone and return its exit code.

        Safe to call many times and concurrently; cancelling one waiter affects no other.
        """
        return await asyncio.shield(self._done)

    def send_signal(self, sig: int) -> None:
        """Send `sig` to the shim, which passes it on to init and init to the command."""
        if self._pidfd is None:
            return  # already exited and reaped
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self._pidfd, sig)

    async def stop(self, sig: int = signal.SIGTERM, grace: float = 10.0) -> int:
        """Send `sig`, wait up to `grace` seconds, then SIGKILL; return the exit code."""
        if self._done.done():
            return self._done.result()
        self.send_signal(sig)
        try:
            async with asyncio.timeout(grace):
                return await self.wait()
        except TimeoutError:
            pass
        self.kill()
        return await self.wait()

    def kill(self) -> None:
        """SIGKILL the container: init, which takes its whole PID namespace with it.

        The shim is SIGKILLed only if it has not exited SHIM_KILL_DELAY later (normally it
        reaps init and exits with 137 at once).  Killing both at once
        would orphan init to the host's PID 1 before the shim reaps it, leaving a zombie
        whose reaping is up to whatever the host runs as PID 1.  Without an init pid (a
        cancelled start), the shim is killed right away and PDEATHSIG takes init down.
        """
        if self._init_pidfd is None:
            self.send_signal(signal.SIGKILL)
            return
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self._init_pidfd, signal.SIGKILL)
        if self._kill_timer is None:
            self._kill_timer = self._loop.call_later(
                SHIM_KILL_DELAY, self.send_signal, signal.SIGKILL
            )

    def _attach_init(self, init_pid: int) -> None:
        self.init_pid = init_pid
        try:
            fd = os.pidfd_open(init_pid)
        except ProcessLookupError:
            return  # B already gone; A's exit alone then marks the end
        # The pid could in principle have been reaped and reused before pidfd_open; the
        # only process whose parent is A is B, so check that after opening.
        if _parent_pid(init_pid) != self.pid:
            os.close(fd)
            return
        self._watch_init(fd)

    def _watch_init(self, fd: int) -> None:
        self._init_pidfd = fd
        self._loop.add_reader(fd, self._on_init_exit)

    def _shim_exit_code(self) -> int | None:
        """A's exit code once it has exited, else None."""
        code = self._popen.poll()  # reaps exactly A: waitpid(A, WNOHANG)
        if code is None:
            return None
        return 128 - code if code < 0 else code

    def _on_shim_exit(self) -> None:
        if self._pidfd is None:
            return
        code = self._shim_exit_code()
        if code is None:
            return
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = None
        self._shim_code = code
        if self._kill_timer is not None:
            self._kill_timer.cancel()
        self._maybe_done()

    def _on_init_exit(self) -> None:
        if self._init_pidfd is None:
            return
        self._loop.remove_reader(self._init_pidfd)
        os.close(self._init_pidfd)
        self._init_pidfd = None
        self._maybe_done()

    def _maybe_done(self) -> None:
        if self._shim_code is not None and self._init_pidfd is None and not self._done.done():
            self._done.set_result(self._shim_code)

    def __repr__(self) -> str:
        state = "running" if self.returncode is None else f"exited {self.returncode}"
        kind = type(self).__name__
        return f"<{kind} {self.name} pid={self.pid} init={self.init_pid} {state}>"


class AdoptedProcess(ContainerProcess):
    """A container that another process started, taken over by :func:`adopt`.

    Same surface as ContainerProcess; A is not our child, so its exit code comes from
    the exit file instead of waitpid.
    """

    def __init__(self, name: str, pid: int, pidfd: int | None, exit_path: str) -> None:
        self._exit_path = exit_path
        self._watch(name, pid, pidfd)

    def _shim_exit_code(self) -> int:
        # Only called once the pidfd is readable: A has exited (a non-child's pidfd turns
        # readable when it exits), after renaming its exit file into place.
        code = _read_exit_file(self._exit_path, self.pid)
        return EXIT_KILLED if code is None else code

    def _finished(self, code: int) -> None:
        self._shim_code = code
        self._maybe_done()


@dataclass(eq=False)
class WarmShim:
    """A shim started ahead of its container (`warm`): its interpreter starts, and then
    waits at a gate (a pipe) for `start` to have written the spec, so Python's start-up
    (~10 ms) overlaps the runtime's network wiring instead of following it. As runc's
    create/start split, the command never runs before `start` says so. A warm shim the
    runtime drops (`discard`, or linkd dying) sees EOF at its gate and exits, having
    started nothing."""

    popen: subprocess.Popen[bytes]
    status_r: int
    gate_w: int | None
    spec_path: str

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
        self.popen.kill()  # at the gate, or still starting: nothing of a container yet
        self.popen.wait()


def warm(run_dir: str, log_path: str) -> WarmShim:
    """Start the shim of the container whose files are in `run_dir`, to wait at its gate."""
    os.makedirs(run_dir, mode=0o700, exist_ok=True)
    spec_path = os.path.join(run_dir, SPEC_FILE)
    popen, status_r, gate_w = _spawn(spec_path, log_path, gated=True)
    return WarmShim(popen, status_r, gate_w, spec_path)


def _spawn(spec_path: str, log_path: str, *, gated: bool
           ) -> tuple[subprocess.Popen[bytes], int, int | None]:
    """The shim for `spec_path`: its process, the read end of its status pipe, and the
    write end of its gate (`gated`: it waits there before reading the spec)."""
    status_r, status_w = os.pipe()  # both close-on-exec; pass_fds opens w to the shim only
    gate_r, gate_w = os.pipe() if gated else (None, None)
    args = ["run", spec_path, str(status_w)] + ([str(gate_r)] if gate_r is not None else [])
    try:
        os.set_blocking(status_r, False)
        log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            popen = subprocess.Popen(
                shim_argv(*args),
                pass_fds=(status_w,) if gate_r is None else (status_w, gate_r),
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # the daemon's terminal signals are not the container's
                close_fds=True,
            )
        finally:
            os.close(log_fd)
            os.close(status_w)  # ours must go, or EOF would never come
            if gate_r is not None:
                os.close(gate_r)
    except OSError as e:
        os.close(status_r)
        if gate_w is not None:
            os.close(gate_w)
        name = os.path.basename(os.path.dirname(spec_path))
        raise ContainerError(f"container {name}: cannot start the shim: {e}") from e
    return popen, status_r, gate_w


async def start(spec: ProcessSpec, warm: WarmShim | None = None) -> ContainerProcess:
    """Start the container's command; return once it has been exec'd.

    Raises ContainerError with the shim's message (naming the container and what failed)
    if the namespaces, mounts, user, working directory or command could not be set up; the
    shim has been reaped by then.  Cancelling kills whatever was started. `warm`: a
    shim started ahead for this container (see WarmShim), used instead of a new one.
    """
    loop = asyncio.get_running_loop()
    os.makedirs(spec.run_dir, mode=0o700, exist_ok=True)
    spec_path = os.path.join(spec.run_dir, SPEC_FILE)
    exit_path = os.path.join(spec.run_dir, EXIT_FILE)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(exit_path)  # an earlier run's: it must not be taken for this one's
    _write_spec(
        spec_path,
        {
            "name": spec.name,
            "survive_parent": spec.survive_parent,
            "parent": os.getpid(),
            "exit_path": exit_path,
            "netns": spec.netns,
            "hostname": spec.hostname,
            "argv": list(spec.argv),
            "env": [list(kv) for kv in spec.env],
            "working_dir": spec.working_dir,
            "user": spec.user,
            "bind_files": [list(b) for b in spec.bind_files],
            "keep_dirs": list(spec.keep_dirs),
            "bind_dirs": [list(b) for b in spec.bind_dirs],
            "rootfs_lower": list(spec.rootfs_lower),
            "rootfs_dir": spec.rootfs_dir,
            "rootfs_pivot": spec.rootfs_pivot,
            "cgroups": list(spec.cgroups),
        },
    )
    if warm is not None and warm.spec_path == spec_path:
        popen, status_r = warm.popen, warm.status_r
        warm.release()
    else:
        if warm is not None:
            warm.discard()
        popen, status_r, _ = _spawn(spec_path, spec.log_path, gated=False)
    proc = ContainerProcess(spec.name, popen)
    chunks: list[bytes] = []
    try:
        await _read_until_eof(loop, status_r, chunks)
    except BaseException:
        # Cancelled (or the pipe failed): leave nothing behind.  Init's pid may already be
        # in; killing it directly lets the shim reap it.  The pidfd watcher reaps the shim.
        _parse_status(b"".join(chunks), proc)
        proc.kill()
        raise
    finally:
        os.close(status_r)

    error = _parse_status(b"".join(chunks), proc)
    if error is None and proc.init_pid == 0:
        code = await proc.wait()
        error = (
            f"container {spec.name}: the shim exited with code {code} before starting "
            f"{spec.argv[0] if spec.argv else 'the command'!r}; its output is in {spec.log_path}"
        )
    if error is not None:
        code = await proc.wait()
        exc = ContainerError(error)
        exc.exit_code = code  # so a caller can exit 127/126/125 like `docker run`
        raise exc
    proc.started_at = time.time()
    return proc


async def adopt(spec: ProcessSpec, shim_pid: int, init_pid: int) -> ContainerProcess:
    """Take over the container of `spec` that another process started (and maybe died).

    `shim_pid` and `init_pid` are the ``pid`` and ``init_pid`` that :func:`start` gave it.
    The result behaves like start's: ``wait``, ``stop``, ``kill``, ``send_signal`` and
    ``returncode``.  A container that has already exited (its exit file names `shim_pid`)
    is returned finished, with the code from that file.

    Raises ContainerError if `shim_pid` is gone without leaving an exit code, or is not
    linkd's shim for this very spec, or if `init_pid` is not that shim's init.

    Meant for containers whose starter is gone: the shim is then some other process's
    child (the host's PID 1 or a subreaper), which reaps it.  A starter that is still alive
    keeps the ContainerProcess that start() gave it, which is what reaps the shim.
    """
    exit_path = os.path.join(spec.run_dir, EXIT_FILE)
    what = f"container {spec.name}"
    shim_fd = open_shim(shim_pid, spec.run_dir)
    if shim_fd is None:
        running = _pid_runs(shim_pid)
        code = _read_exit_file(exit_path, shim_pid)
        if code is not None:  # exited while nobody watched; the pid may be reused by now
            proc = AdoptedProcess(spec.name, shim_pid, None, exit_path)
            proc.init_pid = init_pid
            proc._finished(code)
            return proc
        if running:
            raise ContainerError(f"{what}: PID {shim_pid} is not linkd's shim for {spec.name}")
        raise ContainerError(f"{what}: shim {shim_pid} is no longer running")

    try:
        init_fd: int | None = os.pidfd_open(init_pid)
    except ProcessLookupError:
        init_fd = None  # B is gone and reaped: A exits in a moment, and the pidfd says so
    except OSError as e:
        os.close(shim_fd)
        raise ContainerError(f"{what}: cannot watch init {init_pid}: {e.strerror}") from e
    # B (even as a zombie) has A as its parent; a live process that has not is not B.
    if init_fd is not None and _parent_pid(init_pid) != shim_pid:
        exited = _has_exited(init_fd)
        os.close(init_fd)
        init_fd = None
        if not exited:
            os.close(shim_fd)
            raise ContainerError(
                f"{what}: PID {init_pid} is not the init of shim {shim_pid} for {spec.name}"
            )
    proc = AdoptedProcess(spec.name, shim_pid, shim_fd, exit_path)
    proc.init_pid = init_pid
    proc.started_at = _start_time(shim_pid)
    if init_fd is not None:
        proc._watch_init(init_fd)
    return proc


def running_shims() -> dict[str, tuple[int, int]]:
    """Every running linkd container on the host, by run directory: (shim PID, init
    PID). For containers whose PIDs nobody recorded (their starter died between
    starting them and saving the PIDs); one scan of /proc serves any number of them.
    Each shim is identified as :func:`open_shim` identifies it (its init, a fork with the
    same command line, is not taken for it); act on one through ``open_shim``."""
    found: dict[str, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        spec_path = _shim_spec(int(entry))
        if spec_path is None or not spec_path.endswith(os.sep + SPEC_FILE):
            continue
        if _shim_role(int(entry), spec_path) == "shim":
            children = _children(int(entry))
            if children:
                found[os.path.dirname(spec_path)] = (int(entry), children[0])
    return found


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def exec_argv(init_pid: int, spec_path: str) -> list[str]:
    """The command line that runs `spec_path`'s command inside the container of `init_pid`.

    Meant to be run with inherited stdio (interactive shells work); it exits with the
    command's exit code (127/126 if it could not be started, with a message on stderr).
    """
    return shim_argv("exec", str(init_pid), spec_path)


def write_exec_spec(
    path: str,
    argv: Sequence[str],
    env: Iterable[tuple[str, str]],
    working_dir: str | None,
    user: str | None,
    *,
    name: str | None = None,
    image: bool = False,
) -> None:
    """Write the spec that :func:`exec_argv`'s shim (and a health agent) reads.

    `env` is exactly the command's environment.  `name` (the container's) only improves
    error messages.  `image`: the container's root is an image, whose users are read
    from its /etc/passwd and /etc/group as files, never through its NSS configuration.
    """
    _write_spec(
        path,
        {
            "name": name,
            "argv": list(argv),
            "env": [[k, v] for k, v in env],
            "working_dir": working_dir,
            "user": user,
            "image_root": image,
        },
    )


def _write_spec(path: str, data: dict[str, Any]) -> None:
    # marshal, not JSON: the shim reads it with no import (`import json` alone is about a
    # quarter of a container's start), and both sides are the same interpreter.
    # 0600: the environment often carries credentials.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with open(fd, "wb") as f:
        marshal.dump(data, f)


async def _read_until_eof(loop: asyncio.AbstractEventLoop, fd: int, chunks: list[bytes]) -> None:
    """Append what is written to the non-blocking pipe `fd` to `chunks` until EOF.

    `chunks` belongs to the caller so that a cancelled caller still sees what arrived.
    """
    eof: asyncio.Future[None] = loop.create_future()

    def on_readable() -> None:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        except OSError as e:
            if not eof.done():
                eof.set_exception(e)
            return
        if data:
            chunks.append(data)
        elif not eof.done():
            eof.set_result(None)

    loop.add_reader(fd, on_readable)
    try:
        await eof
    finally:
        loop.remove_reader(fd)


def _parse_status(status: bytes, proc: ContainerProcess) -> str | None:
    """Attach init's pid to `proc`; return the shim's error message, if any."""
    error = None
    for line in status.decode(errors="replace").splitlines():
        key, _, value = line.partition(" ")
        if key == "pid" and value.isdigit() and not proc.init_pid:
            proc._attach_init(int(value))
        elif key == "error:":
            error = value
    return error


def open_shim(pid: int, run_dir: str, *, init: bool = False) -> int | None:
    """A pidfd for `pid` if it is linkd's shim (A) for the container whose directory is
    `run_dir`, or with `init` that shim's init (B); None if it is not (or is gone).

    The one identity check of a container's processes. The pidfd is opened first, the
    identity read second, and the process must not have exited after that read: so what
    was checked is the process the pidfd refers to, and a signal sent through it
    (``signal.pidfd_send_signal``) cannot reach a process that reused the PID.

    A runs ``shim.py run <run_dir>/spec.marshal``; B is a fork of A (same command line)
    whose parent is A. The shim's file may have moved with an upgraded linkd, so any
    ``shim.py`` counts; the spec path is what ties it to one container.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:  # gone (ESRCH), or not ours to see
        return None
    role = _shim_role(pid, os.path.join(run_dir, SPEC_FILE))
    if role == ("init" if init else "shim") and not _has_exited(pidfd):
        return pidfd
    os.close(pidfd)
    return None


def kill_shim(pid: int, run_dir: str, *, init: bool = False) -> bool:
    """SIGKILL `pid` through a pidfd if :func:`open_shim` identifies it; whether it did."""
    pidfd = open_shim(pid, run_dir, init=init)
    if pidfd is None:
        return False
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except ProcessLookupError:
        return False
    finally:
        os.close(pidfd)
    return True


def _shim_spec(pid: int) -> str | None:
    """The spec path if `pid` runs linkd's shim in run mode (shim or init), else None."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return None
    for i in range(len(argv) - 2):
        if argv[i].endswith(b"/shim.py") and argv[i + 1] == b"run":
            return os.fsdecode(argv[i + 2])
    return None


def _shim_role(pid: int, spec_path: str) -> str | None:
    """"shim" (A) or "init" (B, whose parent is A) if `pid` runs linkd's shim for
    `spec_path`, else None. An init whose shim is already gone counts as neither: it is
    being killed (PDEATHSIG)."""
    if _shim_spec(pid) != spec_path:
        return None
    parent = _parent_pid(pid)
    if parent is None or _shim_spec(parent) != spec_path:
        return "shim"
    return "init" if _shim_role(parent, spec_path) == "shim" else None


def _pid_runs(pid: int) -> bool:
    """Whether any process runs as `pid` (only to word an error message)."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return False
    try:
        return not _has_exited(pidfd)
    finally:
        os.close(pidfd)


def _has_exited(pidfd: int) -> bool:
    """Whether the process of `pidfd` has exited (readable pidfd), without blocking."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))


def _read_exit_file(path: str, shim_pid: int) -> int | None:
    """The exit code in the exit file at `path` if shim `shim_pid` wrote it, else None."""
    try:
        with open(path, encoding="ascii") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    if len(lines) != 2 or lines[1] != f"shim {shim_pid}":
        return None
    try:
        return int(lines[0])
    except ValueError:
        return None


def _start_time(pid: int) -> float:
    """When `pid` started, as a Unix time (0.0 if unknown)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            # Field 22, counted after the parenthesised command name, which may hold spaces.
            ticks = int(f.read().rpartition(")")[2].split()[19])
        with open("/proc/stat", encoding="utf-8") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return 0.0
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def _parent_pid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("PPid:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None
