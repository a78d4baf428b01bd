"""The shim's ground: libc, kernel constants, the shim's errors and exit codes, its spec,
and signal forwarding, shared by every process of the shim (``shim.py`` has the tree).

Standalone like the shim (standard library only, never ``import linkd``): the shim's
modules import each other by plain name from their directory, which the loader puts last
on sys.path (``process.SHIM_LOADER``); hence the ``shim_`` prefix, which no standard
module has.
"""

import ctypes
import marshal
import os

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

# <asm-generic/errno-base.h>: not `import errno`, whose module builds ~130 names, ~80 us of
# every container's start, for the four the shim tells apart.
EPERM, ENOENT, EACCES, ENOTDIR = 1, 2, 13, 20

EXIT_SETUP_FAILED = 125
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127

libc = ctypes.CDLL(None, use_errno=True)
_char_p, _ulong = ctypes.c_char_p, ctypes.c_ulong
libc.mount.argtypes = (_char_p, _char_p, _char_p, _ulong, _char_p)
libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
libc.setns.argtypes = (ctypes.c_int, ctypes.c_int)
libc.unshare.argtypes = (ctypes.c_int,)
libc.sethostname.argtypes = (ctypes.c_char_p, ctypes.c_size_t)
libc.prctl.argtypes = (ctypes.c_int, _ulong, _ulong, _ulong, _ulong)
libc.capset.argtypes = (ctypes.c_void_p, ctypes.c_void_p)
libc.capget.argtypes = (ctypes.c_void_p, ctypes.c_void_p)

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


def check(result: int, what: str) -> None:
    """Raise a SetupError (exit 125) for a failed libc call (`result` -1, errno set)."""
    if result != 0:
        raise SetupError(f"{what}: {os.strerror(ctypes.get_errno())}", EXIT_SETUP_FAILED)


def prctl(option: int, arg: int, what: str, arg2: int = 0) -> None:
    check(libc.prctl(option, arg, arg2, 0, 0), what)


def code_for_errno(err: int, default: int) -> int:
    return EXIT_CANNOT_EXECUTE if err in (EACCES, EPERM) else default


def mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: str | None
) -> None:
    def enc(s: str | None) -> bytes | None:
        return None if s is None else os.fsencode(s)

    rc = int(libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)))
    what = f"mounting {fstype or source or 'flags'} on {target}"
    check(rc, what)


def set_comm(name: bytes) -> None:
    # Only cosmetic (what `ps -o comm` and `top` show), so failures are ignored.
    buf = ctypes.create_string_buffer(name)
    libc.prctl(PR_SET_NAME, ctypes.addressof(buf), 0, 0, 0)


def report(status_fd: int | None, name: str, message: str) -> None:
    """Write the one `error:` line the runtime turns into a ContainerError."""
    line = f"error: container {name}: {message}".replace("\n", " ") + "\n"
    try:
        if status_fd is None:
            os.write(2, ("linkd " + line).encode(errors="replace"))
        else:
            os.write(status_fd, line.encode(errors="replace"))
    except OSError:
        pass


def fail(status_fd: int | None, name: str, error: Exception) -> "NoReturn":
    """Report `error` (`report`) and exit: with a SetupError's own code, else 125."""
    report(status_fd, name, str(error))
    os._exit(error.code if isinstance(error, SetupError) else EXIT_SETUP_FAILED)


def exit_code(status: int) -> int:
    """A wait status as a shell-style exit code: 128+N for death by signal N."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


def load_spec(spec_path: str) -> "dict[str, Any]":
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


# --- parent-death safety -----------------------------------------------------------------


def die_with_parent(alive_fd: int, wait_for_go: bool = False) -> None:
    """Arrange SIGKILL on parent death, then close the race with a parent already dead.

    `alive_fd` is the read end of a pipe whose write end only the parent holds: EOF means
    the parent is gone.  With `wait_for_go`, block until the parent writes a byte (its "go",
    once it has handed over the terminal) instead of only peeking.
    """
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    parent_gone = False
    if wait_for_go:
        os.set_blocking(alive_fd, True)
        parent_gone = os.read(alive_fd, 1) == b""
    if not parent_gone:
        # Once more, without waiting: a parent that wrote its "go" and died before the
        # prctl above sent no PDEATHSIG, and its end of the pipe is closed now.
        os.set_blocking(alive_fd, False)
        try:
            parent_gone = os.read(alive_fd, 1) == b""
        except BlockingIOError:
            parent_gone = False
    os.close(alive_fd)
    if parent_gone:
        os._exit(EXIT_SETUP_FAILED)


# --- signal forwarding ---------------------------------------------------------------------

_forward_to = 0  # pid the handlers forward to; 0 = nobody yet (signals are blocked then)


def forward_to(pid: int) -> None:
    """Make the handlers `install_forwarding` installs pass signals on to `pid`."""
    global _forward_to
    _forward_to = pid


def _forward(signum: int, _frame: object) -> None:
    if _forward_to:
        # Not contextlib.suppress: one import less at start-up.
        try:  # noqa: SIM105
            os.kill(_forward_to, signum)
        except ProcessLookupError:
            pass


def install_forwarding(signals: list[int]) -> None:
    for sig in signals:
        signal.signal(sig, _forward)


def wait_child(pid: int) -> int:
    while True:
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            return EXIT_SETUP_FAILED
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            return exit_code(status)
