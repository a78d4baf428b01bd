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
  callback then reaps exactly A (``launch.ShimChild.poll``: ``waitpid(A, WNOHANG)``).
  Signals go through ``pidfd_send_signal``, so a recycled PID can never be hit.
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
  exits, so A is spawned by a thread that lives as long as the process (``launch``'s
  spawner).  ``ProcessSpec.survive_parent`` turns that off for A (B still follows A: without
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

The parts it stands on: ``launch`` starts the shim (its command line and spec files, the
spawn off the event loop, warm shims), ``identity`` recognises a container's shim and init
in /proc (``open_shim``, ``kill_shim``, ``running_shims``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from dataclasses import dataclass

from linkd.errors import ContainerError
from linkd.runtime.containers import identity, launch

# What the supervisor, the CLI and the health checks use of the parts this module stands
# on, by the names they have always had here.
from linkd.runtime.containers.identity import kill_shim as kill_shim
from linkd.runtime.containers.identity import open_shim as open_shim
from linkd.runtime.containers.identity import running_shims as running_shims
from linkd.runtime.containers.launch import SHIM_PATH as SHIM_PATH
from linkd.runtime.containers.launch import SPEC_FILE as SPEC_FILE
from linkd.runtime.containers.launch import WarmShim as WarmShim
from linkd.runtime.containers.launch import exec_argv as exec_argv
from linkd.runtime.containers.launch import warm as warm
from linkd.runtime.containers.launch import write_exec_spec as write_exec_spec

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
    rlimits: tuple[tuple[str, int, int], ...] = ()  # `ulimits`: set on the command (C)
    tmpfs: tuple[tuple[str, tuple[str, ...], str], ...] = ()  # (target, flags, data)
    # `volumes:` (linkd.runtime.volumes.mounts.HostMount.for_shim), by target depth
    mounts: tuple[tuple[str, str, str, bool, bool, str], ...] = ()
    group_add: tuple[str, ...] = ()  # supplementary groups beside the user's (names, gids)
    domainname: str | None = None  # the UTS domain name (Compose's domainname)
    sysctls: tuple[tuple[str, str], ...] = ()  # namespaced ones, set in its namespaces


class ContainerProcess:
    """A running (or finished) container, watched without threads.

    Create with :func:`start` (or :func:`adopt`).  ``pid`` is the shim (A), our child
    unless adopted; ``init_pid`` is the container's PID 1 (B) as the host sees it.
    """

    def __init__(self, name: str, child: launch.ShimChild) -> None:
        self._child = child
        # A is our child and not yet reaped, so its pid cannot have been reused.
        self._watch(name, child.pid, os.pidfd_open(child.pid))

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
        if identity.parent_pid(init_pid) != self.pid:
            os.close(fd)
            return
        self._watch_init(fd)

    def _watch_init(self, fd: int) -> None:
        self._init_pidfd = fd
        self._loop.add_reader(fd, self._on_init_exit)

    def _shim_exit_code(self) -> int | None:
        """A's exit code once it has exited, else None."""
        code = self._child.poll()  # reaps exactly A: waitpid(A, WNOHANG)
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
    launch.write_spec(
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
            "rlimits": [list(r) for r in spec.rlimits],
            "tmpfs": [[t, list(flags), data] for t, flags, data in spec.tmpfs],
            "mounts": [list(m) for m in spec.mounts],
            "group_add": list(spec.group_add),
            "domainname": spec.domainname,
            "sysctls": [list(kv) for kv in spec.sysctls],
        },
    )
    if warm is not None and warm.spec_path == spec_path:
        status_r = warm.status_r
        try:
            # Spawned long ago, as a rule: then without a round through the loop.
            child = (warm.child if warm.spawned.done()
                     else await asyncio.shield(asyncio.wrap_future(warm.spawned)))
        except BaseException:
            warm.discard()  # cancelled: waits for the spawn (milliseconds) and kills it
            raise
        warm.release()
    else:
        if warm is not None:
            warm.discard()
        child, status_r = await launch.spawn(spec_path, spec.log_path)
    proc = ContainerProcess(spec.name, child)
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
    shim_fd = identity.open_shim(shim_pid, spec.run_dir)
    if shim_fd is None:
        running = identity.pid_runs(shim_pid)
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
    if init_fd is not None and identity.parent_pid(init_pid) != shim_pid:
        exited = identity.has_exited(init_fd)
        os.close(init_fd)
        init_fd = None
        if not exited:
            os.close(shim_fd)
            raise ContainerError(
                f"{what}: PID {init_pid} is not the init of shim {shim_pid} for {spec.name}"
            )
    proc = AdoptedProcess(spec.name, shim_pid, shim_fd, exit_path)
    proc.init_pid = init_pid
    proc.started_at = identity.start_time(shim_pid)
    if init_fd is not None:
        proc._watch_init(init_fd)
    return proc


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


