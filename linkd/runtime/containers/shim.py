"""The container shim: turns a command from the host filesystem into a container.

Standalone on purpose: standard library only, never ``import linkd``, so that it starts in
~10 ms (no site-packages scan, no package imports; run as an imported module from its
cached bytecode by ``linkd.runtime.containers.process.shim_argv``, and without the ``signal``
module's enums).

``run SPEC_JSON STATUS_FD`` (spawned by ``process.start``) builds this tree::

    linkd runtime            never changes its own namespaces (DESIGN principle 6)
     └─ A  shim              host PID ns; inside the container's net/uts/ipc/mount ns
         └─ B  init          PID 1 of the new PID namespace: forwards signals, reaps zombies
             └─ C  command   PID 2: setsid, user, cwd, default signals, then execvpe

Why each piece exists:

* **A** enters the named network namespace (``setns``) and ``unshare``s UTS, IPC, mount and
  PID.  ``unshare(CLONE_NEWPID)`` never moves the caller, only its future children, so a fork
  is unavoidable; A stays behind as the runtime's direct child, so the runtime can watch it
  with a pidfd and learn the exit code, and as B's parent, the only process that can collect
  B's exit status.  A forwards the runtime's signals to B.
* **B** is needed because the kernel treats PID 1 specially: orphans are reparented to it
  (a plain command would leave zombies), and signals whose disposition is the default are
  dropped for it (a plain ``sleep`` as PID 1 would ignore SIGTERM).  B installs a handler for
  every catchable signal and forwards it to C, reaps every child, and exits with C's exit
  code (128+N for a signal death, Docker's convention).  When B exits the kernel SIGKILLs
  everything left in the namespace, so no process can outlive its container.
* **PR_SET_PDEATHSIG(SIGKILL)** in B: if A dies (SIGKILLed by a crashing daemon's cleanup,
  the OOM killer), B is killed and with it the whole namespace.  The prctl only covers deaths
  after the call, so B then checks A is still there.  ``getppid()`` cannot tell (A lives
  outside B's PID namespace, so it always reads 0), hence a pipe whose write end only A
  holds: EOF on it means A is gone.
* **STATUS_FD** tells the runtime when the command is running without any polling: A writes
  ``pid <B's host pid>``; C marks the fd close-on-exec, so a successful ``execve`` closes the
  last copy and the runtime sees EOF.  If anything fails first, the failing process writes one
  ``error: container NAME: ...`` line before exiting, and the runtime raises it.
* **Parent death.**  By default A dies with the process that started it: it arms
  PR_SET_PDEATHSIG(SIGKILL) first thing and then checks that ``getppid()`` is still the
  starter named in the spec (``parent``), which closes the race with a starter that died
  before the prctl; B then follows A as above.  With ``survive_parent`` in the spec A skips
  both, so the container outlives its starter, even a SIGKILLed one.  Either way A runs in
  its own session without a controlling terminal (the runtime starts it with ``setsid``),
  so a closing terminal's SIGHUP to the starter's process group never reaches it.
* **Exit file.**  A records the container's exit code (the command's, or 128+N) in the
  spec's ``exit_path`` just before it exits, so that a process that is not A's parent (a
  restarted daemon that adopted the container) can learn it.  Written as a temporary file
  renamed over ``exit``, so a reader sees all of it or nothing; the content is
  ``CODE\nshim PID\n`` (PID is A's, so a file left by an earlier run cannot be taken for
  this one's).  A opens the directory before creating the namespaces: in the container's
  mount namespace, which A shares, /tmp and /run/linkd are other file systems.  There is no
  file when A itself was killed (SIGKILL, the OOM killer).

Exit codes of the shim when the command never ran: 127 command not found, 126 found but not
executable (or the user/cwd could not be applied with EACCES/EPERM), 125 the namespace or
mount setup failed (Docker uses the same three).

**Images** (``rootfs_dir`` in the spec; ``rootfs`` has the layout).  B joins the
container's cgroups (``cgroups``) first, then mounts the overlay root; for linkd's own
launcher it binds the files, a minimal /dev, /sys and the cgroup directories into it,
resolving every mount point inside the root (``_in_root``: the image's symlinks cannot
point a mount outside it), and pivot_roots; for runc (``rootfs_pivot`` false) C is
``runc run`` on a bundle, which does the rest in a mount namespace of its own, and
``exec`` then joins the namespaces of runc's command instead of B's.

**Confinement** (``confine.marshal`` beside the spec, written by ``confine``, read
by ``load_spec``): C, exec's child and health probes drop the bounding set, switch user
with PR_SET_KEEPCAPS, set effective = permitted = the container's capabilities (nothing
inheritable or ambient), set no_new_privs and install the seccomp filter (BPF compiled by
libseccomp in the runtime, so nothing here imports more than ctypes), in runc's order
(``_confine_*``). B masks /proc and /sys paths and, for images, makes a cgroup namespace;
linkd's launcher mounts the root, /dev, /tmp and /dev/shm nodev (no devices cgroup).
Under runc, runc confines its command and the shim confines only what enters by exec.

``exec INIT_PID SPEC_JSON`` (``linkd exec``) joins a running container instead, the one
way in that health probes take too (``health_agent.py`` calls the same functions):
``open_entry`` opens the container's cgroups and namespaces while /proc is the host's
(under runc those of runc's command, whose mount namespace is the image's root),
``enter_namespaces`` joins its ipc, uts, net, pid and mount namespaces, then a fork
(joining a PID namespace, like creating one, only applies to children), and the child
(``exec_child``) joins the container's cgroups and cgroup namespace and does what C does.
stdio is inherited; the parent forwards signals and mirrors the exit code, and the child
gets PDEATHSIG so that killing ``linkd exec`` cannot leave its command behind.  On a
terminal the child gets its own process group and the terminal's foreground (so ^C, ^Z and
job control inside an interactive shell work), and its ^Z stops are mirrored so the user's
shell sees a stopped job.
"""

from __future__ import annotations

import ctypes
import errno
import grp
import marshal
import os
import pwd
import sys

# Not `from typing import ...` at run time: importing typing costs start-up time and the
# names are only needed by the type checker (mypy treats any TYPE_CHECKING as true).
# Likewise `signal`: the C module under it has the same functions and constants, as
# plain ints, without the enums that cost ~3 ms of every container start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
    from typing import Any, NoReturn
else:
    import _signal as signal

# <linux/sched.h>
CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWCGROUP = 0x02000000
# <linux/mount.h>
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MNT_DETACH = 0x2
# <linux/prctl.h>
PR_SET_PDEATHSIG = 1
PR_SET_KEEPCAPS = 8
PR_SET_NAME = 15
PR_SET_SECCOMP = 22
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
SECCOMP_MODE_FILTER = 2
LINUX_CAPABILITY_VERSION_3 = 0x20080522
CONFINE_FILE = "confine.marshal"  # beside the spec (linkd.runtime.containers.confine)

EXIT_SETUP_FAILED = 125
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = (
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
_libc.setns.argtypes = (ctypes.c_int, ctypes.c_int)
_libc.unshare.argtypes = (ctypes.c_int,)
_libc.sethostname.argtypes = (ctypes.c_char_p, ctypes.c_size_t)
_libc.prctl.argtypes = (
    ctypes.c_int,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
)
_libc.capset.argtypes = (ctypes.c_void_p, ctypes.c_void_p)
_libc.capget.argtypes = (ctypes.c_void_p, ctypes.c_void_p)

# Every signal a process may catch.  SIGCHLD is B's own business (reaping), and glibc keeps
# two real-time signals for itself, which valid_signals() already leaves out.
FORWARDED_SIGNALS = sorted(
    int(s) for s in signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD}
)


class SetupError(Exception):
    """A step before exec failed; `code` is the exit status to report it with."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class NotStartedYet(SetupError):
    """The container's command is not running yet (runc is still creating it)."""


def _check(result: int, what: str) -> None:
    """Raise a SetupError (exit 125) for a failed libc call (`result` -1, errno set)."""
    if result != 0:
        raise SetupError(f"{what}: {os.strerror(ctypes.get_errno())}", EXIT_SETUP_FAILED)


def _code_for_errno(err: int, default: int) -> int:
    return EXIT_CANNOT_EXECUTE if err in (errno.EACCES, errno.EPERM) else default


def _mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: str | None
) -> None:
    def enc(s: str | None) -> bytes | None:
        return None if s is None else os.fsencode(s)

    rc = int(_libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)))
    what = f"mounting {fstype or source or 'flags'} on {target}"
    _check(rc, what)


def _set_comm(name: bytes) -> None:
    # Only cosmetic (what `ps -o comm` and `top` show), so failures are ignored.
    buf = ctypes.create_string_buffer(name)
    _libc.prctl(PR_SET_NAME, ctypes.addressof(buf), 0, 0, 0)


def _report(status_fd: int | None, name: str, message: str) -> None:
    """Write the one `error:` line the runtime turns into a ContainerError."""
    line = f"error: container {name}: {message}".replace("\n", " ") + "\n"
    try:
        if status_fd is None:
            os.write(2, ("linkd " + line).encode(errors="replace"))
        else:
            os.write(status_fd, line.encode(errors="replace"))
    except OSError:
        pass


def _exit_code(status: int) -> int:
    """A wait status as a shell-style exit code: 128+N for death by signal N."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


# --- user, working directory, exec (shared by C and the exec mode's child) ------------------


def _lookup_user(spec: str, files_only: bool = False) -> tuple[int, int, list[int]]:
    """Resolve "uid", "uid:gid", "name" or "name:group" to (uid, gid, supplementary groups).

    As Docker does: a uid without a passwd entry runs with gid 0 and no extra groups; a named
    or known user gets its primary group and the groups /etc/group lists it in.

    `files_only` (an image's root): /etc/passwd and /etc/group are read as files, never
    through glibc's NSS, which follows the image's nsswitch.conf and would load an
    image's libnss_*.so into this process before its confinement is complete.
    """
    user_part, _, group_part = spec.partition(":")
    users, groups_db = (_files_db() if files_only else (None, None))
    entry: tuple[str, int, int] | None
    try:
        if users is not None:
            entry = next(u for u in users if (str(u[1]) if user_part.isdigit() else u[0])
                         == user_part)
        else:
            found = (pwd.getpwuid(int(user_part)) if user_part.isdigit()
                     else pwd.getpwnam(user_part))
            entry = (found.pw_name, found.pw_uid, found.pw_gid)
    except (KeyError, StopIteration):
        if not user_part.isdigit():
            raise SetupError(
                f"user {user_part!r} not found in /etc/passwd", EXIT_NOT_FOUND
            ) from None
        entry = None
    uid = entry[1] if entry else int(user_part)
    gid = entry[2] if entry else 0
    if group_part:
        if group_part.isdigit():
            gid = int(group_part)
        else:
            try:
                gid = (next(g[1] for g in groups_db if g[0] == group_part)
                       if groups_db is not None else grp.getgrnam(group_part).gr_gid)
            except (KeyError, StopIteration):
                raise SetupError(
                    f"group {group_part!r} not found in /etc/group", EXIT_NOT_FOUND
                ) from None
    if entry is None:
        return uid, gid, [gid]
    if groups_db is not None:
        extra = [g[1] for g in groups_db if entry[0] in g[2] and g[1] != gid]
        return uid, gid, [gid, *extra]
    return uid, gid, os.getgrouplist(entry[0], gid)


def _files_db() -> tuple[list[tuple[str, int, int]], list[tuple[str, int, list[str]]]]:
    """(name, uid, gid) of /etc/passwd and (name, gid, members) of /etc/group, as files."""
    def lines(path: str) -> list[list[str]]:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read(1 << 20)
        except OSError:
            return []
        return [line.split(":") for line in text.splitlines() if line and line[0] != "#"]

    users = [(p[0], int(p[2]), int(p[3])) for p in lines("/etc/passwd")
             if len(p) >= 4 and p[2].isdigit() and p[3].isdigit()]
    groups = [(p[0], int(p[2]), [m for m in p[3].split(",") if m])
              for p in lines("/etc/group") if len(p) >= 4 and p[2].isdigit()]
    return users, groups


def _become(user: str | None, working_dir: str | None, files_only: bool = False) -> None:
    if user is not None:
        uid, gid, groups = _lookup_user(user, files_only)
        try:
            # Groups first: once the uid is not 0 they can no longer be changed.
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
        except OSError as e:
            raise SetupError(
                f"switching to user {user!r}: {e.strerror}", EXIT_CANNOT_EXECUTE
            ) from None
    if working_dir is not None:
        try:
            os.chdir(working_dir)
        except OSError as e:
            code = _code_for_errno(e.errno or 0, EXIT_NOT_FOUND)
            raise SetupError(f"working directory {working_dir!r}: {e.strerror}", code) from None


def _default_signals() -> None:
    """Give the command the signal state a fresh process expects.

    Python ignores SIGPIPE and SIGXFSZ and the shim has handlers everywhere; ignored signals
    survive execve, so without this `yes | head` inside the container would never end.
    """
    for sig in FORWARDED_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _execvpe(argv: list[str], env: dict[str, str]) -> NoReturn:
    """execve argv[0], searched in the *container's* PATH; errors name the command.

    Written out instead of os.execvpe so that "not found" and "found but not executable"
    can be told apart and reported with the PATH that was searched.
    """
    if not argv:
        raise SetupError("empty command", EXIT_NOT_FOUND)
    cmd = argv[0]
    search = env.get("PATH", os.defpath)
    if "/" in cmd:
        candidates = [cmd]
    else:
        candidates = [os.path.join(d or ".", cmd) for d in search.split(os.pathsep)]
    absent = (errno.ENOENT, errno.ENOTDIR)
    saved: OSError | None = None
    for candidate in candidates:
        try:
            os.execve(candidate, argv, env)
        except OSError as e:
            # As execvp does: keep searching, but a file that exists and cannot be run
            # (EACCES) is a better explanation than "not here".
            if saved is None or (saved.errno in absent and e.errno not in absent):
                saved = e
    assert saved is not None
    if saved.errno in absent:
        where = "" if "/" in cmd else f" in PATH ({search})"
        raise SetupError(f"command {cmd!r} not found{where}", EXIT_NOT_FOUND)
    code = _code_for_errno(saved.errno or 0, EXIT_CANNOT_EXECUTE)
    raise SetupError(f"cannot execute {cmd!r}: {saved.strerror}", code)


def _exec_command(spec: dict[str, Any], alive_fd: int | None = None) -> NoReturn:
    """Apply confinement, user and working directory, then become the command (C, or
    exec's child, or a health probe)."""
    conf = spec.get("confine") if spec.get("confine_command", True) else None
    if conf is not None:
        _confine_before_user(conf)
    # An image's users come from its files (`_lookup_user`): the container's own spec says
    # so by its rootfs_dir, an exec spec (`linkd exec`, health probes) by image_root.
    files_only = bool(spec.get("rootfs_dir") or spec.get("image_root"))
    _become(spec.get("user"), spec.get("working_dir"), files_only)
    if conf is not None:
        _confine_after_user(conf)
    if alive_fd is not None:
        # After _become: changing uid/gid clears PR_SET_PDEATHSIG.
        _die_with_parent(alive_fd, wait_for_go=True)
    env = {str(k): str(v) for k, v in spec.get("env", [])}
    _default_signals()
    if conf is not None:
        _confine_last(conf)
    _execvpe([str(a) for a in spec["argv"]], env)


# --- confinement of the command (confine.py beside this file writes what to apply) -------------
#
# The order is runc's: the bounding set first (that needs CAP_SETPCAP, which root still
# has); without no_new_privs the seccomp filter next, while CAP_SYS_ADMIN still allows
# loading it; then the user, with PR_SET_KEEPCAPS so that a switch away from root keeps
# the permitted set until capset sets effective = permitted = the container's set and
# inheritable and ambient empty. exec then gives root the bounding set and any other user
# nothing (no file capabilities, no ambient ones), as under Docker. With no_new_privs the
# filter is loaded last, right before execve, so it only needs to allow execve.


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32))


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


def _prctl(option: int, arg: int, what: str, arg2: int = 0) -> None:
    if _libc.prctl(option, arg, arg2, 0, 0) != 0:
        raise SetupError(f"{what}: {os.strerror(ctypes.get_errno())}", EXIT_SETUP_FAILED)


def _confine_before_user(conf: dict[str, Any]) -> None:
    keep = set(conf["caps"])
    for cap in range(conf["last_cap"] + 1):
        if cap not in keep:
            _prctl(PR_CAPBSET_DROP, cap, f"dropping capability {cap} from the bounding set")
    if conf.get("seccomp") and not conf["nnp"]:
        _load_seccomp(conf["seccomp"])
    _prctl(PR_SET_KEEPCAPS, 1, "keeping capabilities across the user switch")


def _confine_after_user(conf: dict[str, Any]) -> None:
    _prctl(PR_SET_KEEPCAPS, 0, "clearing PR_SET_KEEPCAPS")
    mask = 0
    for cap in conf["caps"]:
        mask |= 1 << cap
    header = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    # Never more than we hold (privileged asks for every capability the kernel knows; the
    # daemon itself may run without some, and capset refuses to add any).
    if _libc.capget(ctypes.addressof(header), ctypes.addressof(data)) == 0:
        mask &= data[0].permitted | (data[1].permitted << 32)
    header = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    for i in (0, 1):
        word = (mask >> (32 * i)) & 0xFFFFFFFF
        data[i].effective = data[i].permitted = word
        data[i].inheritable = 0
    if _libc.capset(ctypes.addressof(header), ctypes.addressof(data)) != 0:
        raise SetupError(f"setting capabilities: {os.strerror(ctypes.get_errno())}",
                         EXIT_SETUP_FAILED)
    # Ambient capabilities: none (EINVAL on kernels before 4.3, which have none).
    _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)


def _confine_last(conf: dict[str, Any]) -> None:
    if conf["nnp"]:
        _prctl(PR_SET_NO_NEW_PRIVS, 1, "setting no_new_privs")
        if conf.get("seccomp"):
            _load_seccomp(conf["seccomp"])


def _load_seccomp(program: bytes) -> None:
    """Install a seccomp filter compiled by libseccomp (struct sock_filter[], 8 bytes each)."""
    buf = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // 8, ctypes.addressof(buf))
    _prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, "loading the seccomp filter",
           ctypes.addressof(prog))


# --- parent-death safety -----------------------------------------------------------------


def _die_with_parent(alive_fd: int, wait_for_go: bool = False) -> None:
    """Arrange SIGKILL on parent death, then close the race with a parent already dead.

    `alive_fd` is the read end of a pipe whose write end only the parent holds: EOF means
    the parent is gone.  With `wait_for_go`, block until the parent writes a byte (its "go",
    once it has handed over the terminal) instead of only peeking.
    """
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    os.set_blocking(alive_fd, wait_for_go)
    try:
        parent_gone = os.read(alive_fd, 1) == b""
    except BlockingIOError:
        parent_gone = False
    os.close(alive_fd)
    if parent_gone:
        os._exit(EXIT_SETUP_FAILED)


# --- signal forwarding ---------------------------------------------------------------------

_forward_to = 0  # pid the handlers forward to; 0 = nobody yet (signals are blocked then)


def _forward(signum: int, _frame: object) -> None:
    if _forward_to:
        # Not contextlib.suppress: one import less at start-up.
        try:  # noqa: SIM105
            os.kill(_forward_to, signum)
        except ProcessLookupError:
            pass


def _install_forwarding(signals: list[int]) -> None:
    for sig in signals:
        signal.signal(sig, _forward)


def _wait_child(pid: int) -> int:
    while True:
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            return EXIT_SETUP_FAILED
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            return _exit_code(status)


# --- run mode ------------------------------------------------------------------------------


def _hide_namespace_mounts(keep: bytes = b"") -> None:
    """Detach nsfs mounts (/run/netns/*) from the container's copy of the mount table.

    The new mount namespace starts as a copy of the host's, including every `ip netns`
    bind mount.  `ip netns` makes /run/netns shared so a later `ip netns del` propagates, but
    making our copy private cuts that link: each copy would keep those network namespaces
    (and their veths) alive until this container exits.  Nothing in a container needs them.
    """
    with open("/proc/self/mountinfo", "rb") as f:
        lines = f.read().splitlines()
    targets = []
    for line in lines:
        fields = line.split()
        if fields[fields.index(b"-") + 1] == b"nsfs":
            targets.append(_unescape_mountinfo(fields[4]))
    for target in reversed(targets):  # later (possibly stacked) mounts first
        if target != keep:
            _libc.umount2(target, MNT_DETACH)


def _unescape_mountinfo(field: bytes) -> bytes:
    # The kernel writes space, tab, newline and backslash as \ooo (octal), and only those.
    head, *rest = field.split(b"\\")
    return head + b"".join(bytes([int(p[:3], 8)]) + p[3:] for p in rest)


def _check_bind(source: str, target: str) -> None:
    # mount(2) says ENOENT for either path; say which one, and why the target must exist:
    # the root filesystem is the host's, and creating a mount point there would leak a
    # file onto the host.
    if not os.path.isfile(source):
        raise SetupError(f"bind file source {source} is not a file", EXIT_SETUP_FAILED)
    if not os.path.isfile(target):
        raise SetupError(
            f"cannot bind {source} onto {target}: {target} is not an existing file on the "
            "host (containers share the host's root filesystem, so only existing files can "
            "be replaced)",
            EXIT_SETUP_FAILED,
        )


def _check_bind_dir(source: str, target: str) -> None:
    if not os.path.isdir(source):
        raise SetupError(f"bind directory source {source} is not a directory", EXIT_SETUP_FAILED)
    if not os.path.isdir(target):
        raise SetupError(
            f"cannot bind {source} onto {target}: {target} is not an existing directory on "
            "the host",
            EXIT_SETUP_FAILED,
        )


# --- image roots (rootfs.py beside this file prepares the directories) -------------------------

SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")


def _join_cgroup(directory: str) -> None:
    """Move B (and so all it forks) into a cgroup linkd created with the limits set."""
    try:
        with open(os.path.join(directory, "cgroup.procs"), "w") as f:
            f.write("0")  # 0: the writing process
    except OSError as e:
        raise SetupError(f"joining cgroup {directory}: {e.strerror}", EXIT_SETUP_FAILED) from None


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
        raise NotStartedYet("runc has not started the container's command yet",
                            EXIT_SETUP_FAILED)
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
            raise SetupError(f"joining cgroup {directory}: {e.strerror}",
                             EXIT_SETUP_FAILED) from None
        opened.append(fd)
        found.append((directory, fd))
    return found


def _in_root(root: str, path: str) -> str:
    """`path` as the container will see it, as a host path under `root`: the image's
    symlinks are followed the way the container would follow them (an absolute target
    starts again at the root, `..` stops there), so no mount point leaves the root."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    done: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        here = root + "/" + "/".join([*done, part])
        if os.path.islink(here):
            hops += 1
            if hops > 40:
                raise SetupError(f"too many symlinks in the image at {path}", EXIT_SETUP_FAILED)
            link = os.readlink(here)
            if link.startswith("/"):
                done = []
            parts = [p for p in link.split("/") if p not in ("", ".")] + parts
            continue
        done.append(part)
    return root + "".join("/" + p for p in done)


def _mount_point(root: str, path: str, is_dir: bool) -> str:
    """Create the mount point for `path` inside the image root (in the container's upper
    layer) and return its host path."""
    real = _in_root(root, path)
    if is_dir:
        os.makedirs(real, exist_ok=True)
    elif not os.path.isfile(real):
        os.makedirs(os.path.dirname(real), exist_ok=True)
        fd = os.open(real, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        os.close(fd)
    return real


def _bind_ro(source: str, target: str, read_only: bool = True) -> None:
    _mount(source, target, None, MS_BIND, None)
    if read_only:
        _mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID, None)


def _mask_paths(masked: list[str], readonly: list[str]) -> None:
    """runc's maskedPaths and readonlyPaths, in the container's /proc and /sys: a masked
    file reads as /dev/null, a masked directory as an empty read-only tmpfs, a read-only
    path is bound onto itself read-only. Paths this kernel does not have are skipped."""
    for path in masked:
        try:
            is_dir = os.path.isdir(path) and not os.path.islink(path)
            if not os.path.lexists(path):
                continue
        except OSError:
            continue
        if is_dir:
            _mount("tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                   "size=0")
        else:
            _mount("/dev/null", path, None, MS_BIND, None)
    for path in readonly:
        if not os.path.lexists(path):
            continue
        _mount(path, path, None, MS_BIND | MS_REC, None)
        _mount(None, path, None,
               MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, None)


def _image_root(spec: dict[str, Any]) -> None:
    """B: make the image's overlay the root. Everything bound from the host (the hosts,
    hostname and resolv.conf files, the bindings directory, device nodes, the cgroup
    directories) is mounted into the new root before pivot_root hides the host's.

    The overlay mount lives only in this mount namespace: it goes when the container's
    last process does, and nothing of it shows in the host's mount table.
    """
    base = spec["rootfs_dir"]
    upper, work, root = (os.path.join(base, d) for d in ("upper", "work", "merged"))
    for d in (upper, work, root):
        os.makedirs(d, exist_ok=True)
    lower = ":".join(spec["rootfs_lower"])
    conf = spec.get("confine") or {}
    privileged = bool(conf.get("privileged"))
    # nodev unless privileged: the own launcher has no devices cgroup, so a node container
    # root makes with mknod must not open anywhere (EACCES); the devices it may use are
    # bound in from the host's /dev, mounts that nodev here does not reach.
    runc = not spec.get("rootfs_pivot", True)  # runc has a devices cgroup instead
    nodev = 0 if privileged or runc else MS_NODEV
    _mount("overlay", root, "overlay", nodev,
           f"lowerdir={lower},upperdir={upper},workdir={work}")
    if not spec.get("rootfs_pivot", True):
        # runc: the command (runc run) binds what its bundle lists and pivots itself.
        spec["bind_files"], spec["bind_dirs"], spec["keep_dirs"] = [], [], []
        return
    for source, target in spec.get("bind_files", []):
        if not os.path.isfile(source):
            raise SetupError(f"bind file source {source} is not a file", EXIT_SETUP_FAILED)
        _bind_ro(source, _mount_point(root, target, False))
    for source, target in spec.get("bind_dirs", []):
        _bind_ro(source, _mount_point(root, target, True))
    dev = _mount_point(root, "/dev", True)
    _image_dev(dev, privileged)
    for source, target, _permissions in conf.get("devices") or []:
        # `devices:` (their permissions are for runc's devices cgroup; here a bound node
        # is readable and writable as its mode says).
        if not os.path.exists(source):
            raise SetupError(f"device {source} does not exist on the host", EXIT_SETUP_FAILED)
        _mount(source, _mount_point(root, target, False), None, MS_BIND, None)
    sys_dir = _mount_point(root, "/sys", True)
    sys_ro = 0 if privileged else MS_RDONLY
    _mount("sysfs", sys_dir, "sysfs", sys_ro | MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
    cgroups = spec.get("cgroups") or []
    if len(cgroups) == 1 and os.path.exists(cgroups[0] + "/cgroup.controllers"):
        # cgroup v2: one directory holds every limit; it is the container's whole
        # /sys/fs/cgroup, as under Docker with a cgroup namespace.
        _bind_ro(cgroups[0], sys_dir + "/fs/cgroup", not privileged)
    elif cgroups:
        # cgroup v1: the container sees its own limits where v1 tools look for them.
        cgroot = sys_dir + "/fs/cgroup"
        _mount("tmpfs", cgroot, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=755")
        for directory in cgroups:
            controller = directory.split("/")[4]  # /sys/fs/cgroup/<controller>/...
            os.makedirs(f"{cgroot}/{controller}")
            _bind_ro(directory, f"{cgroot}/{controller}", not privileged)
    for d in ("/proc", "/tmp"):
        _mount_point(root, d, True)
    if conf.get("read_only"):
        # read_only: the image's root, with every mount point made above; /tmp, /dev and
        # the bound files are mounts of their own and keep their modes.
        _mount(None, root, None, MS_BIND | MS_REMOUNT | MS_RDONLY | nodev, None)
    # pivot_root(".", "."): the old root ends up stacked on the new one, and the lazy
    # unmount takes it away (pivot_root(2), "NOTES"); no put_old directory needed.
    os.chdir(root)
    number = SYS_PIVOT_ROOT.get(os.uname().machine)
    if number is None:
        raise SetupError(f"pivot_root: unknown syscall on {os.uname().machine}",
                         EXIT_SETUP_FAILED)
    _check(int(_libc.syscall(number, b".", b".")), f"pivot_root into {root}")
    _check(int(_libc.umount2(b".", MNT_DETACH)), "detaching the host's root")
    os.chdir("/")
    # Done here; what _init does next for host roots would reach for host paths.
    spec["bind_files"], spec["bind_dirs"], spec["keep_dirs"] = [], [], []


def _image_dev(dev: str, privileged: bool) -> None:
    """The container's /dev: a tmpfs (nosuid, noexec, nodev) with the standard devices
    bound from the host's, a private devpts for ptmx, shm and mqueue; privileged: the
    host's devices (its /dev, recursively), with its own pts, shm and mqueue over them."""
    if privileged:
        _mount("/dev", dev, None, MS_BIND | MS_REC, None)
        # Not the host's terminals, shared memory or queues.
        _mount("devpts", dev + "/pts", "devpts", MS_NOSUID | MS_NOEXEC,
               "newinstance,ptmxmode=0666,mode=0620")
        _mount("tmpfs", dev + "/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777")
        if os.path.isdir(dev + "/mqueue"):
            _mount("mqueue", dev + "/mqueue", "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
        return
    _mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC | MS_NODEV, "mode=755,size=64k")
    for name in _DEVICES:  # a fresh tmpfs: nothing of the image's here
        os.close(os.open(f"{dev}/{name}", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
        _mount(f"/dev/{name}", f"{dev}/{name}", None, MS_BIND, None)
    for sub in ("shm", "pts", "mqueue"):
        os.makedirs(f"{dev}/{sub}")
    _mount("tmpfs", dev + "/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777")
    _mount("devpts", dev + "/pts", "devpts", MS_NOSUID | MS_NOEXEC,
           "newinstance,ptmxmode=0666,mode=0620")
    _mount("mqueue", dev + "/mqueue", "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
    for link, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"),
                         ("ptmx", "pts/ptmx")):
        os.symlink(target, f"{dev}/{link}")


def _init(spec: dict[str, Any], status_fd: int, alive_fd: int) -> NoReturn:
    """B: PID 1 of the container."""
    global _forward_to
    name = spec["name"]
    try:
        _die_with_parent(alive_fd)
        _set_comm(b"linkd-init")
        # Private, recursively, before mounting anything: no mount of ours may propagate to
        # the host (on systemd hosts / is shared).
        _mount(None, "/", None, MS_REC | MS_PRIVATE, None)
        # runc joins the container's network namespace by its /run/netns path: keep it.
        runc = spec.get("rootfs_dir") and not spec.get("rootfs_pivot", True)
        _hide_namespace_mounts(os.fsencode("/run/netns/" + spec["netns"]) if runc else b"")
        for cgroup in spec.get("cgroups") or []:  # limits: before anything is allocated
            _join_cgroup(cgroup)
        conf = spec.get("confine") or {}
        if runc:
            spec["confine_command"] = False  # C is `runc run`: runc confines its command
        elif conf.get("cgroupns"):
            # The container's cgroup is the root of what it sees (/proc/self/cgroup says /).
            _check(_libc.unshare(CLONE_NEWCGROUP), "creating a cgroup namespace")
        if spec.get("rootfs_dir"):
            # An image: overlay root, files bound in, pivot_root; /proc and /tmp below.
            _image_root(spec)
        # Bind files first: their sources are host paths, possibly under /tmp or /proc,
        # which the mounts below hide.
        for source, target in spec.get("bind_files", []):
            _check_bind(source, target)
            _mount(source, target, None, MS_BIND, None)
            # A bind mount ignores MS_RDONLY; read-only takes a remount of the bind.
            _mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID, None)
        for source, target in spec.get("bind_dirs", []):
            _check_bind_dir(source, target)
            _mount(source, target, None, MS_BIND, None)
            _mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID, None)
        # A proc instance belongs to the PID namespace of the process that mounts it, which
        # is why B (not A) mounts it.
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
        if not runc:
            _mask_paths(conf.get("masked") or [], conf.get("readonly") or [])
        # Host directories under /tmp the container must still see (a stack file's
        # directory there): held open before the private /tmp hides them, then bound
        # back at the same path inside it. The rest of /tmp stays private.
        kept = [(path, os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
                for path in spec.get("keep_dirs", [])]
        _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
        for path, fd in kept:
            os.makedirs(path, exist_ok=True)
            _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC, None)
            os.close(fd)
    except (SetupError, OSError) as e:
        _report(status_fd, name, str(e))
        os._exit(e.code if isinstance(e, SetupError) else EXIT_SETUP_FAILED)

    _install_forwarding(FORWARDED_SIGNALS)
    try:
        child = os.fork()
    except OSError as e:
        _report(status_fd, name, f"fork of the command failed: {e.strerror}")
        os._exit(EXIT_SETUP_FAILED)
    if child == 0:
        _command(spec, status_fd)
    os.close(status_fd)  # C holds the last copy; its exec closes it -> runtime sees EOF
    _forward_to = child
    # Signals that arrived since A blocked them are delivered here, and now reach C.
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:  # cannot happen while C lives; be safe anyway
            os._exit(EXIT_SETUP_FAILED)
        if pid == child and (os.WIFEXITED(status) or os.WIFSIGNALED(status)):
            # Exiting as PID 1 makes the kernel SIGKILL whatever is left in the namespace.
            os._exit(_exit_code(status))


def _command(spec: dict[str, Any], status_fd: int) -> NoReturn:
    """C: becomes the container's command."""
    try:
        os.setsid()
        os.set_inheritable(status_fd, False)  # closes at exec: that EOF means "running"
        _exec_command(spec)
    except SetupError as e:
        _report(status_fd, spec["name"], str(e))
        os._exit(e.code)
    except BaseException as e:  # anything else still must not return into B's code
        _report(status_fd, spec["name"], f"starting the command failed: {e!r}")
        os._exit(EXIT_SETUP_FAILED)


def load_spec(spec_path: str) -> dict[str, Any]:
    """The spec, with the container's confinement (``confine``: the CONFINE_FILE beside it,
    written by linkd.runtime.containers.confine; None when there is none)."""
    with open(spec_path, "rb") as f:
        spec: dict[str, Any] = marshal.load(f)
    try:
        with open(os.path.join(os.path.dirname(spec_path), CONFINE_FILE), "rb") as f:
            spec["confine"] = marshal.load(f)
    except FileNotFoundError:
        spec["confine"] = None
    return spec


def run(spec_path: str, status_fd: int, gate_fd: int | None = None) -> NoReturn:
    """A: enter the netns, create the other namespaces, start init, mirror its exit.

    With `gate_fd` (a shim started ahead of its container: process.WarmShim), first wait
    there for "go", which says the spec is written; EOF instead (the runtime dropped the
    start, or died) ends the shim before it has done anything."""
    global _forward_to
    if gate_fd is not None:
        said = os.read(gate_fd, 2)  # "go" arrives whole: a pipe write under PIPE_BUF
        os.close(gate_fd)
        if said != b"go":
            os._exit(0)
    spec = load_spec(spec_path)
    name = spec["name"]
    if not spec.get("survive_parent"):
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != spec.get("parent", os.getppid()):  # the starter died first
            os._exit(EXIT_SETUP_FAILED)
    # Opened while A still sees the host's mounts (see "Exit file" above).
    exit_dir_fd = _open_exit_dir(spec.get("exit_path"))
    # Blocked until each process has its handlers and someone to forward to; a signal sent
    # earlier stays pending instead of being lost (an init with a default disposition drops
    # it).
    signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED_SIGNALS)
    _set_comm(b"linkd-shim")
    netns_path = os.path.join("/run/netns", spec["netns"])
    try:
        try:
            ns_fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise SetupError(
                f"network namespace {spec['netns']!r} ({netns_path}): {e.strerror}",
                EXIT_SETUP_FAILED,
            ) from None
        try:
            _check(_libc.setns(ns_fd, CLONE_NEWNET), f"entering network namespace {netns_path}")
        finally:
            os.close(ns_fd)
        _check(
            _libc.unshare(CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNS | CLONE_NEWPID),
            "creating uts/ipc/mount/pid namespaces",
        )
        hostname = os.fsencode(spec["hostname"])
        _check(_libc.sethostname(hostname, len(hostname)), f"setting hostname {spec['hostname']!r}")
        alive_r, alive_w = os.pipe()  # both ends close-on-exec: C never holds them
        child = os.fork()
    except (SetupError, OSError) as e:
        _report(status_fd, name, str(e))
        os._exit(e.code if isinstance(e, SetupError) else EXIT_SETUP_FAILED)
    if child == 0:
        os.close(alive_w)
        if exit_dir_fd is not None:
            os.close(exit_dir_fd)
        _init(spec, status_fd, alive_r)
    os.close(alive_r)
    try:
        os.write(status_fd, f"pid {child}\n".encode())
    except OSError:
        # The starter is gone before it could learn about this container: nobody could
        # ever adopt or stop it, so it must not run.  B follows A (PDEATHSIG).
        os._exit(EXIT_SETUP_FAILED)
    os.close(status_fd)
    _forward_to = child
    _install_forwarding(FORWARDED_SIGNALS)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    # alive_w stays open until A exits: its closing is B's "parent gone" signal.
    code = _wait_child(child)
    if exit_dir_fd is not None:
        _write_exit_file(exit_dir_fd, os.path.basename(spec["exit_path"]), code)
    os._exit(code)


def _open_exit_dir(exit_path: str | None) -> int | None:
    if not exit_path:
        return None
    try:
        return os.open(
            os.path.dirname(exit_path) or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
        )
    except OSError:
        return None  # no exit file then; an adopter reports the exit as a kill


def _write_exit_file(dir_fd: int, name: str, code: int) -> None:
    """Write `code` to `name` in `dir_fd`, atomically: a temporary file renamed over it."""
    tmp = f".{name}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644,
                     dir_fd=dir_fd)
        try:
            os.write(fd, f"{code}\nshim {os.getpid()}\n".encode())
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError:
        # Best effort: the directory may have been removed meanwhile (`linkd down`).
        try:  # noqa: SIM105  (no contextlib: start-up time)
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass


# --- exec mode -----------------------------------------------------------------------------


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
            raise SetupError(f"opening {path}: {e.strerror}", EXIT_SETUP_FAILED) from None
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
            _check(_libc.setns(fd, 0), f"entering {path}")
    finally:
        for _, fd in entry.namespaces:
            os.close(fd)
        entry.namespaces = []


def close_entry(entry: Entry) -> None:
    """Close what `enter_command` would have used (in a parent that does not run it)."""
    for fd in [fd for _, fd in entry.cgroup_procs] + [entry.cgroupns] + [
            fd for _, fd in entry.namespaces]:
        try:  # noqa: SIM105  (no contextlib: start-up time)
            os.close(fd)
        except OSError:
            pass


def exec_child(spec: dict[str, Any], entry: Entry, alive_fd: int) -> NoReturn:
    """The forked child that becomes `linkd exec`'s command or a health probe.

    It joins the container's cgroups (so its limits hold for what runs in it, as under
    `docker exec`) and then its cgroup namespace (its cgroup is then `/`, as for the
    container's own processes; joined in this order, as runc's exec does, since with
    cgroup v2's nsdelegate a process may only be moved within its cgroup namespace),
    and becomes the spec's command (`_exec_command`). Per process, not in the parent: a
    long-lived health agent must not sit in the container's cgroups, where it would count
    against the container's memory and pids and keep the cgroup from being removed.
    Never returns: a failure is reported on stderr and exits with 127/126/125.
    """
    try:
        for directory, fd in entry.cgroup_procs:
            try:
                os.write(fd, b"0")  # 0: the writing process
            except OSError as e:
                raise SetupError(f"joining cgroup {directory}: {e.strerror}",
                                 EXIT_SETUP_FAILED) from None
        _check(_libc.setns(entry.cgroupns, CLONE_NEWCGROUP), "entering the cgroup namespace")
        close_entry(entry)
        _exec_command(spec, alive_fd)
    except SetupError as e:
        _report(None, entry.name, str(e))
        os._exit(e.code)
    except BaseException as e:  # the child must never return into its parent's code
        _report(None, entry.name, f"starting the command failed: {e!r}")
        os._exit(EXIT_SETUP_FAILED)


def exec_in(init_pid: int, spec_path: str) -> NoReturn:
    """Run a command inside the running container whose PID 1 is `init_pid` (host pid)."""
    global _forward_to
    spec = load_spec(spec_path)  # its confinement too: exec'd commands get the same
    name = spec.get("name") or f"with init pid {init_pid}"
    signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED_SIGNALS)
    try:
        entry = open_entry(init_pid, name)
        enter_namespaces(entry)
        alive_r, alive_w = os.pipe()
        child = os.fork()
    except (SetupError, OSError) as e:
        _report(None, name, str(e))
        os._exit(e.code if isinstance(e, SetupError) else EXIT_SETUP_FAILED)
    if child == 0:
        os.close(alive_w)
        # Killing `linkd exec` must not leave its command running in the container.
        exec_child(spec, entry, alive_r)
    close_entry(entry)
    os.close(alive_r)
    _forward_to = child
    tty = _in_terminal_foreground()
    if tty:
        # An interactive command needs the terminal's foreground to itself, in a process
        # group it can see: our group id is a host pid, invisible in the container's PID
        # namespace, so a shell there could neither check nor restore it ("Cannot set tty
        # process group").  The terminal then sends ^C, ^Z and SIGWINCH to the command alone.
        signal.signal(signal.SIGTTOU, signal.SIG_IGN)  # to take the terminal back later
        os.setpgid(child, child)
        os.tcsetpgrp(0, child)
    os.write(alive_w, b"g")  # go: the child waits for this before exec
    # Job-control signals aimed at us are about us (the user's shell stopping this job);
    # the command's own stops are mirrored in _wait_exec_child.
    job_control = (signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU)
    _install_forwarding([s for s in FORWARDED_SIGNALS if s not in job_control])
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    os._exit(_wait_exec_child(child, tty))


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
            return _exit_code(status)


def _in_terminal_foreground() -> bool:
    try:
        return os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp()
    except OSError:
        return False


def main(argv: list[str]) -> NoReturn:
    if len(argv) in (4, 5) and argv[1] == "run":
        run(argv[2], int(argv[3]), int(argv[4]) if len(argv) == 5 else None)
    if len(argv) == 4 and argv[1] == "exec":
        exec_in(int(argv[2]), argv[3])
    sys.stderr.write(
        "usage: shim.py run SPEC STATUS_FD [GATE_FD] | shim.py exec INIT_PID SPEC\n")
    sys.exit(2)


if __name__ == "__main__":
    main(sys.argv)
