"""The health agent: `linkd exec`'s way into a container, kept open for repeated probes.

    python -I -S health_agent.py SHIM_PY INIT_PID SPEC

Standalone like the shim (standard library only, never ``import linkd``), and built from
the shim's exec mode (`shim.py exec`): it loads the shim from SHIM_PY and does what
``exec_in`` does once, joining the ipc, uts, net, pid and mount namespaces of the
container whose PID 1 is INIT_PID (host pid). Then, for every line ``TIMEOUT\\n`` on
stdin, it forks a probe, which joins the container's cgroups (their ``cgroup.procs``
were opened before the mount namespace changed), takes a session of its own and becomes
the SPEC's command the way the shim's exec child does (user, working directory,
environment, PATH lookup in the container, PR_SET_PDEATHSIG). stdout and stderr go to a
pipe; at TIMEOUT seconds the probe's whole session is SIGKILLed, and so is whatever the
probe left running once it exits. The reply on stdout is ``CODE LENGTH\\n`` and LENGTH
bytes of output (the first OUTPUT_LIMIT; the rest is read and dropped); CODE is the
shell-style exit code, -1 for a timeout.

Why: a `python -I -S shim.py exec` per probe costs ~15 ms of CPU before the test even
starts, which caps a 2-core machine near a hundred probes a second. A fork of this small
process costs well under a millisecond, so many containers can be probed every 100 ms.

The agent ends at EOF on stdin (linkd stopped probing, or died: the pipe closes with it)
and, through PR_SET_PDEATHSIG, when its starter dies.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

OUTPUT_LIMIT = 4096
TIMEOUT_CODE = -1
PR_SET_PDEATHSIG = 1

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn


def _cgroup_procs(init_pid: int) -> list[int]:
    """Write ends of the `cgroup.procs` of linkd's cgroups of the container (see
    `shim._join_cgroups_of`), opened while the host's /sys is still ours."""
    fds: list[int] = []
    try:
        with open(f"/proc/{init_pid}/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return fds
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "/linkd/" not in path:
            continue
        top = controllers.split(",")[0].removeprefix("name=") if controllers else ""
        procs = os.path.join("/sys/fs/cgroup", top, path.lstrip("/"), "cgroup.procs")
        try:  # noqa: SIM105  (no contextlib: start-up time)
            fds.append(os.open(procs, os.O_WRONLY | os.O_CLOEXEC))
        except OSError:
            pass
    return fds


def _enter(shim: Any, init_pid: int) -> None:
    fds = []
    for ns in ("ipc", "uts", "net", "pid", "mnt"):  # mnt last: /proc changes with it
        path = f"/proc/{init_pid}/ns/{ns}"
        fds.append((path, os.open(path, os.O_RDONLY | os.O_CLOEXEC)))
    try:
        for path, fd in fds:
            shim._check(shim._libc.setns(fd, 0), f"entering {path}")
    finally:
        for _, fd in fds:
            os.close(fd)


def _probe(
    shim: Any, spec: dict[str, Any], cgroups: list[int], timeout: float
) -> tuple[int, bytes]:
    out_r, out_w = os.pipe()
    alive_r, alive_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the probe
        try:
            os.close(out_r)
            os.close(alive_w)
            for fd in cgroups:
                os.write(fd, b"0")
            null = os.open("/dev/null", os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(out_w, 1)
            os.dup2(out_w, 2)
            os.setsid()  # one session: the timeout kills the probe and its children
            shim._exec_command(spec, alive_r)
        except shim.SetupError as e:
            os.write(2, f"linkd: {e}\n".encode(errors="replace"))
            os._exit(e.code)
        except BaseException as e:  # the child must never return
            os.write(2, f"linkd: starting the probe failed: {e!r}\n".encode(errors="replace"))
            os._exit(125)
    os.close(out_w)
    os.close(alive_r)
    os.write(alive_w, b"g")
    pidfd = os.pidfd_open(pid)
    poller = select.poll()
    poller.register(out_r, select.POLLIN)
    poller.register(pidfd, select.POLLIN)
    output = bytearray()
    deadline = time.monotonic() + timeout
    timed_out = exited = False
    while not exited:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        for fd, _ in poller.poll(left * 1000 + 1):
            if fd == pidfd:
                exited = True
            elif not _read(out_r, output):
                poller.unregister(out_r)
    try:  # noqa: SIM105  (no contextlib: start-up time)
        os.killpg(pid, signal.SIGKILL)  # not reaped yet: the group id is still ours
    except (ProcessLookupError, PermissionError):
        pass
    _, status = os.waitpid(pid, 0)
    os.set_blocking(out_r, False)
    try:  # noqa: SIM105
        _read(out_r, output)
    except BlockingIOError:
        pass
    for fd in (out_r, alive_w, pidfd):
        os.close(fd)
    return (TIMEOUT_CODE if timed_out else shim._exit_code(status)), bytes(output)


def _read(fd: int, output: bytearray) -> bool:
    """Read once into `output` (up to OUTPUT_LIMIT kept); False at EOF."""
    data = os.read(fd, 65536)
    if len(output) < OUTPUT_LIMIT:
        output += data[: OUTPUT_LIMIT - len(output)]
    return bool(data)


def main(argv: list[str]) -> NoReturn:
    if len(argv) != 4:
        sys.stderr.write("usage: health_agent.py SHIM_PY INIT_PID SPEC\n")
        sys.exit(2)
    shim_py, init_pid, spec_path = argv[1], int(argv[2]), argv[3]
    sys.path.insert(0, os.path.dirname(shim_py))
    shim: Any = __import__("shim")

    shim._libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    spec = shim.load_spec(spec_path)  # with the container's confinement, read before _enter
    try:
        cgroups = _cgroup_procs(init_pid)
        _enter(shim, init_pid)
    except (shim.SetupError, OSError) as e:
        sys.stderr.write(f"linkd health agent: container {spec.get('name')}: {e}\n")
        os._exit(125)
    requests = os.fdopen(0, "rb", buffering=0)
    while True:
        line = requests.readline()
        if not line:
            os._exit(0)
        code, output = _probe(shim, spec, cgroups, float(line))
        os.write(1, f"{code} {len(output)}\n".encode() + output)


if __name__ == "__main__":
    main(sys.argv)
