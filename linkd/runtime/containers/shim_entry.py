"""Entering a running container: ``shim.py exec INIT_PID SPEC`` (``linkd exec``), and
the functions health probes take the same way in (``health_agent.py``). Standalone like
the shim (see ``shim_base``).

``open_entry`` opens the container's cgroups and namespaces while /proc is the host's
(under runc those of runc's command, whose mount namespace is the image's root),
``enter_namespaces`` joins its ipc, uts, net, pid and mount namespaces, then a fork
(joining a PID namespace, like creating one, only applies to children), and the child
(``exec_child``) joins the container's cgroups and cgroup namespace and does what the
container's command does (``shim_command``), confinement included: under runc, runc
confines its command and the shim confines only what enters by exec.

stdio is inherited; the parent mirrors the exit code. The command runs in a process group
of its own, the group id its host pid, which the parent knows: the signals the parent
gets are forwarded to that group, as a terminal's ^C reaches the whole foreground job.
On a terminal the group also gets the terminal's foreground (so ^C, ^Z and job control
inside an interactive shell work; our group id is a host pid, invisible in the container's
PID namespace, so a shell there could not have taken it), and its ^Z stops are mirrored
so the user's shell sees a stopped job.

**Killing ``linkd exec`` ends the command's whole tree.** The child gets PDEATHSIG, but
that only reaches the child: ``sh -c 'sleep 30'``'s sleep would live on, reparented in
the container, and hold the caller's pipes. So the parent first forks a **guard**, a
process of the host (forked before the namespaces are entered) in a session of its own,
holding no stdio, that the caller's ^C or group kill does not reach and whose signals stay
blocked. It reads the command's group id from a pipe whose write end only the parent
holds; at EOF, unless the parent said ``exit`` first (the command ended by itself: what
it left running stays, as after ``docker exec``), the parent was killed, and the guard
SIGKILLs the command's process group. (A group id is free again only once every process
of the group is gone; for the kill to reach another group, a new process would have to
get that very pid in the moment between, and pids are handed out round the whole range
first.) A process that leaves the group (``setsid``, a daemon) is out of its reach, as it
is out of a terminal's.
"""

import os

TYPE_CHECKING = False
if TYPE_CHECKING or __package__:  # imported as part of linkd (the type checker, tests)
    import signal
    from typing import Any, NoReturn

    from . import shim_base as base
    from . import shim_command as command
else:  # the shim: its directory is on sys.path (and no `signal` enums: see shim_base)
    import _signal as signal

    import shim_base as base
    import shim_command as command


class Entry:
    """What entering one running container takes, all opened while this process still
    sees the host's /proc and /sys (see `open_entry`)."""

    __slots__ = ("cgroup_procs", "cgroupns", "name", "namespaces")

    def __init__(self, name: str, cgroup_procs: list[tuple[str, int]], cgroupns: int,
                 namespaces: list[tuple[str, int]]) -> None:
        self.name = name
        self.cgroup_procs = cgroup_procs  # (directory, write end of its cgroup.procs)
        self.cgroupns = cgroupns
        self.namespaces = namespaces  # (path, fd): ipc, uts, net, pid, mnt, in that order


def open_entry(init_pid: int, name: str) -> Entry:
    """Open the way into the running container whose PID 1 is `init_pid` (host pid).

    Under runc the namespaces and cgroups are those of runc's command (its mount
    namespace is the image's root; init's is not), else init's. Everything is opened
    here, before any setns: after joining the mount namespace /proc is the container's,
    where these pids mean nothing, and /sys may be the container's read-only view.
    """
    target = _runc_command(init_pid) or init_pid
    opened: list[int] = []

    def open_ns(kind: str) -> tuple[str, int]:
        path = f"/proc/{target}/ns/{kind}"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise base.SetupError(f"opening {path}: {e.strerror}",
                                  base.EXIT_SETUP_FAILED) from None
        opened.append(fd)
        return path, fd

    try:
        procs = _open_cgroups_of(target, opened)
        cgroupns = open_ns("cgroup")[1]
        namespaces = [open_ns(kind) for kind in ("ipc", "uts", "net", "pid", "mnt")]
    except BaseException:
        for fd in opened:
            os.close(fd)
        raise
    return Entry(name, procs, cgroupns, namespaces)


def enter_namespaces(entry: Entry) -> None:
    """Join the container's ipc, uts, net, pid and mount namespaces (the pid namespace
    only takes effect for children: fork next). Done once by `linkd exec` and once by a
    health agent for all its probes; the mount namespace last, as /proc changes with it."""
    try:
        for path, fd in entry.namespaces:
            base.check(base.libc.setns(fd, 0), f"entering {path}")
    finally:
        for _, fd in entry.namespaces:
            os.close(fd)
        entry.namespaces = []


def close_entry(entry: Entry) -> None:
    """Close what `exec_child` would have used (in a parent that does not run it)."""
    for fd in [fd for _, fd in entry.cgroup_procs] + [entry.cgroupns] + [
            fd for _, fd in entry.namespaces]:
        try:  # noqa: SIM105  (no contextlib: start-up time)
            os.close(fd)
        except OSError:
            pass


def exec_child(spec: "dict[str, Any]", entry: Entry, alive_fd: int) -> "NoReturn":
    """The forked child that becomes `linkd exec`'s command or a health probe.

    It joins the container's cgroups (so its limits hold for what runs in it, as under
    `docker exec`) and then its cgroup namespace (its cgroup is then `/`, as for the
    container's own processes; joined in this order, as runc's exec does, since with
    cgroup v2's nsdelegate a process may only be moved within its cgroup namespace),
    and becomes the spec's command (`shim_command.exec_command`). Per process, not in the
    parent: a long-lived health agent must not sit in the container's cgroups, where it
    would count against the container's memory and pids and keep the cgroup from being
    removed. Never returns: a failure is reported on stderr and exits with 127/126/125.
    """
    try:
        for directory, fd in entry.cgroup_procs:
            try:
                os.write(fd, b"0")  # 0: the writing process
            except OSError as e:
                raise base.SetupError(f"joining cgroup {directory}: {e.strerror}",
                                      base.EXIT_SETUP_FAILED) from None
        base.check(base.libc.setns(entry.cgroupns, base.CLONE_NEWCGROUP),
                   "entering the cgroup namespace")
        close_entry(entry)
        command.exec_command(spec, alive_fd)
    except base.SetupError as e:
        base.report(None, entry.name, str(e))
        os._exit(e.code)
    except BaseException as e:  # the child must never return into its parent's code
        base.report(None, entry.name, f"starting the command failed: {e!r}")
        os._exit(base.EXIT_SETUP_FAILED)


def exec_in(init_pid: int, spec_path: str, remove_spec: bool = False) -> "NoReturn":
    """Run a command inside the running container whose PID 1 is `init_pid` (host pid).
    `remove_spec`: the spec was written for this run alone (`linkd exec`, which becomes
    this process): removed once read."""
    spec = base.load_spec(spec_path)  # its confinement too: exec'd commands get the same
    if remove_spec:
        try:  # noqa: SIM105  (no contextlib: start-up time)
            os.unlink(spec_path)
        except OSError:
            pass
    name = spec.get("name") or f"with init pid {init_pid}"
    signal.pthread_sigmask(signal.SIG_BLOCK, base.FORWARDED_SIGNALS)
    try:
        entry = open_entry(init_pid, name)
        guard_w = _start_guard(entry)  # before the namespaces: the guard stays on the host
        enter_namespaces(entry)
        alive_r, alive_w = os.pipe()
        child = os.fork()
    except (base.SetupError, OSError) as e:
        base.fail(None, name, e)
    if child == 0:
        os.close(alive_w)
        os.close(guard_w)
        # Killing `linkd exec` must not leave its command running in the container.
        exec_child(spec, entry, alive_r)
    close_entry(entry)
    os.close(alive_r)
    try:  # noqa: SIM105  (no contextlib: start-up time)
        os.setpgid(child, child)  # before its "go": the command starts in its group
    except OSError:
        pass  # it failed already (and said why): its exit status follows
    _tell(guard_w, b"%d\n" % child)
    base.forward_to(-child)  # the group: os.kill's negative pid
    tty = _in_terminal_foreground()
    if tty:
        # The terminal then sends ^C, ^Z and SIGWINCH to the command's group alone.
        signal.signal(signal.SIGTTOU, signal.SIG_IGN)  # to take the terminal back later
        os.tcsetpgrp(0, child)
    os.write(alive_w, b"g")  # go: the child waits for this before exec
    # Job-control signals aimed at us are about us (the user's shell stopping this job);
    # the command's own stops are mirrored in _wait_exec_child.
    job_control = (signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU)
    base.install_forwarding([s for s in base.FORWARDED_SIGNALS if s not in job_control])
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    code = _wait_exec_child(child, tty)
    _tell(guard_w, b"exit\n")  # ended by itself: the guard leaves its group alone
    os._exit(code)


def _tell(guard_w: int, what: bytes) -> None:
    try:  # noqa: SIM105  (no contextlib: start-up time)
        os.write(guard_w, what)
    except OSError:
        pass  # the guard was killed: the command goes on unguarded, as it used to


def _start_guard(entry: Entry) -> int:
    """Fork the guard (see the module's docstring); the write end of its pipe."""
    guard_r, guard_w = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(guard_r)
        os.close(guard_w)
        raise
    if pid == 0:
        try:
            os.close(guard_w)
            close_entry(entry)
            _guard(guard_r)
        finally:
            os._exit(0)
    os.close(guard_r)
    return guard_w


def _guard(guard_r: int) -> None:
    """The guard's life: what the parent says, until EOF; then the kill if it is due.
    Every catchable signal stays blocked (the parent blocked them before the fork)."""
    os.setsid()  # out of the caller's process group, and of its terminal
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)  # none of the caller's pipes: its reader must see their EOF
    os.close(null)
    base.set_comm(b"linkd-guard")
    said = b""
    while chunk := os.read(guard_r, 64):
        said += chunk
    group, *rest = said.split(b"\n")
    if group.isdigit() and b"exit" not in rest:
        try:  # noqa: SIM105  (no contextlib: start-up time)
            os.killpg(int(group), signal.SIGKILL)
        except OSError:
            pass  # nothing of it is left


def _wait_exec_child(child: int, tty: bool) -> int:
    """Wait for exec's command; with a terminal, mirror its ^Z stops as our own."""
    while True:
        _, status = os.waitpid(child, os.WUNTRACED if tty else 0)
        if os.WIFSTOPPED(status):
            # Stop too, so the user's shell sees a stopped job, and resume the command when
            # that shell continues us (`fg` also gives the terminal back to our group).
            os.tcsetpgrp(0, os.getpgrp())
            os.kill(os.getpid(), signal.SIGSTOP)
            if os.tcgetpgrp(0) == os.getpgrp():
                os.tcsetpgrp(0, child)
            os.killpg(child, signal.SIGCONT)
        elif os.WIFEXITED(status) or os.WIFSIGNALED(status):
            if tty:
                try:  # noqa: SIM105  (no contextlib: start-up time)
                    os.tcsetpgrp(0, os.getpgrp())
                except OSError:
                    pass  # the terminal is gone
            return base.exit_code(status)


def _in_terminal_foreground() -> bool:
    try:
        return os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp()
    except OSError:
        return False


# --- finding the container's processes and cgroups in the host's /proc ---------------------


def _first_child(pid: int) -> int | None:
    """A child of `pid`, whichever of its threads forked it (runc is a Go program)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                children = f.read().split()
        except OSError:
            continue
        if children:
            return int(children[0])
    return None


def _runc_command(init_pid: int) -> int | None:
    """For a container run by runc (init -> runc run -> command), the command's pid: its
    mount namespace is the image's root, which init's is not. None when init's child is
    not runc (linkd's own launcher, a host command).

    Raises NotStartedYet while runc is still creating the container (no child yet, or
    still `runc init`): init's namespaces must not be taken for the container's then.
    """
    runc = _first_child(init_pid)
    if runc is None or os.path.basename(_argv(runc)[0]) != b"runc":
        return None
    command = _first_child(runc)
    argv = _argv(command) if command is not None else []
    if command is None or (os.path.basename(argv[0]) == b"runc" and argv[1:2] == [b"init"]):
        raise base.NotStartedYet("runc has not started the container's command yet",
                                 base.EXIT_SETUP_FAILED)
    return command


def _argv(pid: int) -> list[bytes]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return [b""]


def _open_cgroups_of(pid: int, opened: list[int]) -> list[tuple[str, int]]:
    """The cgroup.procs files (opened for writing; each fd also appended to `opened`) of
    the cgroups linkd made for the container of `pid`: the lines of /proc/PID/cgroup whose
    path has a /linkd/ component, as `docker exec` joins the container's."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "/linkd/" not in path:
            continue
        if controllers:
            top = controllers.split(",")[0].removeprefix("name=")
        else:  # the v2 hierarchy: all of /sys/fs/cgroup, or its `unified` part (hybrid)
            top = "unified" if os.path.isdir("/sys/fs/cgroup/unified") else ""
        directory = os.path.join("/sys/fs/cgroup", top, path.lstrip("/"))
        try:
            fd = os.open(os.path.join(directory, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # removed meanwhile: the container is on its way out
        except OSError as e:
            raise base.SetupError(f"joining cgroup {directory}: {e.strerror}",
                                  base.EXIT_SETUP_FAILED) from None
        opened.append(fd)
        found.append((directory, fd))
    return found
