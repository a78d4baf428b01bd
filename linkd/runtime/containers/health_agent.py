"""The health agent: `linkd exec`'s way into a container, kept open for repeated probes.

    python -I -S health_agent.py SHIM_PY INIT_PID SPEC

Standalone like the shim (standard library only, never ``import linkd``), and made of
the shim's exec mode (`shim.py exec`), not a copy of it: it loads the shim's modules
from SHIM_PY's directory and does what ``shim_entry.exec_in`` does, with the same
functions. Once: ``open_entry`` (under
runc the container is runc's command, not INIT_PID, the container's PID 1 as the host
sees it; probed while runc is still creating the container, it waits up to
STARTING_WAIT for runc's command, never settling for init's namespaces) and
``enter_namespaces`` (ipc, uts, net, pid, mount). Then, for every line
``TIMEOUT\\n`` on stdin, it forks a probe, which takes a session of its own with stdout
and stderr on a pipe and goes on as exec's child does (``exec_child``): the container's
cgroups and cgroup namespace, confinement, user (an image's from its files), working
directory, environment, PATH lookup in the container, PR_SET_PDEATHSIG. At TIMEOUT
seconds the probe's whole session is SIGKILLed, and so is whatever the probe left
running once it exits. The reply on stdout is ``CODE LENGTH\\n`` and LENGTH bytes of
output (the first OUTPUT_LIMIT; the rest is read and dropped); CODE is the shell-style
exit code, -1 for a timeout.

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
# How long to wait for runc to start the container's command when probed before that
# (well within the probe's timeout + health.AGENT_GRACE, which the daemon waits).
STARTING_WAIT = 2.0
PR_SET_PDEATHSIG = 1

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn


def _probe(base: Any, entry_mod: Any, spec: dict[str, Any], entry: Any, timeout: float
           ) -> tuple[int, bytes]:
    out_r, out_w = os.pipe()
    alive_r, alive_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the probe
        try:
            os.close(out_r)
            os.close(alive_w)
            null = os.open("/dev/null", os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(out_w, 1)
            os.dup2(out_w, 2)
            os.setsid()  # one session: the timeout kills the probe and its children
        except BaseException as e:  # the child must never return
            os.write(2, f"linkd: starting the probe failed: {e!r}\n".encode(errors="replace"))
            os._exit(125)
        entry_mod.exec_child(spec, entry, alive_r)  # the cgroups, then `linkd exec`'s way
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
    return (TIMEOUT_CODE if timed_out else base.exit_code(status)), bytes(output)


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
    base: Any = __import__("shim_base")
    shim_entry: Any = __import__("shim_entry")

    base.libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    spec = base.load_spec(spec_path)  # with the container's confinement, read before entering
    name = spec.get("name") or f"with init pid {init_pid}"
    try:
        waited_until = time.monotonic() + STARTING_WAIT
        while True:
            try:
                entry = shim_entry.open_entry(init_pid, name)
                break
            except base.NotStartedYet:
                if time.monotonic() > waited_until:
                    raise
                time.sleep(0.01)
        shim_entry.enter_namespaces(entry)
    except (base.SetupError, OSError) as e:
        sys.stderr.write(f"linkd health agent: container {name}: {e}\n")
        os._exit(125)
    requests = os.fdopen(0, "rb", buffering=0)
    while True:
        line = requests.readline()
        if not line:
            os._exit(0)
        code, output = _probe(base, shim_entry, spec, entry, float(line))
        os.write(1, f"{code} {len(output)}\n".encode() + output)


if __name__ == "__main__":
    main(sys.argv)
