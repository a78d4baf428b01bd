"""Which processes are a container's: its shim (A) and its init (B), recognised in /proc
with pidfds, so that a signal never reaches a process that reused a PID.

A runs ``shim.py run <run_dir>/spec.marshal`` (``launch.shim_argv``: the shim's path is
an argument of its own, followed by the mode); B is a fork of A, with A's very command
line, whose parent is A. The spec path is what ties a shim to one container.
"""

from __future__ import annotations

import os
import select
import signal

from linkd.runtime.containers.launch import SPEC_FILE


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
    if role == ("init" if init else "shim") and not has_exited(pidfd):
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
    parent = parent_pid(pid)
    if parent is None or _shim_spec(parent) != spec_path:
        return "shim"
    return "init" if _shim_role(parent, spec_path) == "shim" else None


def pid_runs(pid: int) -> bool:
    """Whether any process runs as `pid` (only to word an error message)."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return False
    try:
        return not has_exited(pidfd)
    finally:
        os.close(pidfd)


def has_exited(pidfd: int) -> bool:
    """Whether the process of `pidfd` has exited (readable pidfd), without blocking."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))


def start_time(pid: int) -> float:
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


def parent_pid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("PPid:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None
