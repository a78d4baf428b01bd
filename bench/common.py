"""What the benchmark scripts share: root, the machine-wide kernel lock and a simulated
host to run in, saving a table, a linkd of the benchmark's own (private run directory,
its own daemon), a dockerd in a network namespace of its own, timing a command.

The host's own addresses, routes, sysctls and firewall are never touched: every script
runs in a simulated host (tests/simhost.py: a network namespace and a mount table of its
own), where linkd may turn forwarding on and dockerd writes its iptables rules. Everything
these helpers start is stopped by PID and everything they create removed by path.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

KERNEL_LOCK = "/run/lock/linkd-kernel.lock"
REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
DOCKER = "/usr/bin/docker"  # Debian's client, the same release as its dockerd


class BenchError(Exception):
    """A part of the benchmark that could not be measured: it is reported as failed."""


def root_and_lock(script: str) -> bool:
    """False (after saying why) when not root; else the lock is held until exit (one
    benchmark or integration test run at a time, since each sees the other's objects) and
    this process runs in a simulated host (`enter_simulated_host`)."""
    if os.geteuid() != 0:
        print(f"bench/{script}: run as root", file=sys.stderr)
        return False
    if not os.environ.get("LINKD_KERNEL_LOCK_FD"):  # bench/run holds it already
        lock = os.open(KERNEL_LOCK, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"bench/{script}: waiting for {KERNEL_LOCK} (a test or benchmark run holds "
                  "it)", file=sys.stderr, flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
    unwind_on_sigterm()
    enter_simulated_host()
    return True


def unwind_on_sigterm() -> None:
    """SIGTERM (a `timeout`, a kill) unwinds like Ctrl-C, so that every `finally` stops
    what the script started; a forked child that has not exec'd yet just exits."""
    main = os.getpid()

    def on_term(signum: int, frame: object) -> None:
        if os.getpid() != main:
            os._exit(128 + signum)
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)


def enter_simulated_host() -> None:
    """Move this process (still single-threaded), and all it will start, into a fresh
    simulated host: the test suite's (tests/simhost.py), so that what linkd and dockerd do
    to "the host" (forwarding on, firewall rules, bridges) never reaches the real one. A
    process that inherited one stays in it."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    # Its holders and the commands it runs start as `python -m tests.simhost`.
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if str(REPO) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, paths)])
    from tests.simhost import enter_session_host

    enter_session_host()


def part(name: str, doc: str, body: Callable[[argparse.Namespace, Path, contextlib.ExitStack], str],
         runs: int = 20, options: Callable[[argparse.ArgumentParser], None] | None = None
         ) -> int:
    """A benchmark script's `main`: `--runs` (and its `options`), root, the lock and a
    simulated host, a work directory; `body(args, work, cleanup)` measures and returns
    the table, registering in `cleanup` what stops what it started (run in reverse,
    whatever happens). A BenchError is reported as the part failing (exit 1)."""
    parser = argparse.ArgumentParser(prog=f"bench/{name}.py", description=doc.splitlines()[0])
    parser.add_argument("--runs", type=int, default=runs, help=f"default {runs}")
    if options is not None:
        options(parser)
    args = parser.parse_args()
    if not root_and_lock(f"{name}.py"):
        return 2
    try:
        with contextlib.ExitStack() as cleanup:
            work = Path(tempfile.mkdtemp(prefix=f"lkbench-{name}-", dir="/var/tmp"))
            cleanup.callback(shutil.rmtree, work, ignore_errors=True)
            text = body(args, work, cleanup)
    except BenchError as exc:
        print(f"bench/{name}.py: FAILED: {exc}", file=sys.stderr)
        return 1
    save_table(name, text)
    return 0


def save_table(name: str, text: str) -> None:
    """Print a table and keep it as bench/results/NAME.md."""
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text(text + "\n")


def dpkg_version(package: str) -> str:
    got = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package],
                         capture_output=True, text=True, check=False)
    return got.stdout.strip() or "?"


def ms(seconds: float) -> str:
    value = seconds * 1000
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def median_ms(samples: Sequence[float]) -> str:
    return ms(statistics.median(samples))


def range_ms(samples: Sequence[float]) -> str:
    return f"{ms(min(samples))}-{ms(max(samples))}"


def run(argv: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
        input: bytes | None = None, timeout: float = 300) -> str:
    """The command's output; BenchError with what it said if it fails."""
    done = subprocess.run(list(argv), env=env, cwd=cwd, input=input, capture_output=True,
                          timeout=timeout, check=False)
    if done.returncode != 0:
        said = (done.stderr or done.stdout).decode(errors="replace").strip()
        raise BenchError(f"{' '.join(argv[:4])} ... exited {done.returncode}: {said[-800:]}")
    return done.stdout.decode(errors="replace")


def timed(argv: Sequence[str], *, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> float:
    """Wall seconds from starting the command to its exit (output thrown away)."""
    started = time.perf_counter()
    done = subprocess.run(list(argv), env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, check=False)
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise BenchError(f"{' '.join(argv)} exited {done.returncode}: "
                         f"{done.stderr.decode(errors='replace').strip()[-800:]}")
    return took


def stop_pid(pid: int, timeout: float = 60) -> None:
    """SIGTERM a process that is not our child, then SIGKILL after `timeout`; waits until
    it is gone (or a zombie, left to its parent)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def stop_child(proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- linkd of the benchmark's own ------------------------------------------------------------


class Linkd:
    """The `linkd` command line with a run directory (state, socket, daemon, images) of
    the benchmark's own; `up -d` starts its daemon, `stop` ends it and removes it all."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "LINKD_RUN_DIR": str(run_dir),
                    "LINKD_SOCKET": str(run_dir / "linkd.sock"),
                    "LINKD_IMAGES": str(run_dir / "images")}
        # Bytecode is written and read, as from a package pip installed (which compiles
        # it); a machine that sets PYTHONDONTWRITEBYTECODE would recompile every command.
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)
        script = Path(sys.executable).parent / "linkd"  # the command users type
        self.command = [str(script)] if script.exists() else [sys.executable, "-m", "linkd"]

    def start_daemon(self) -> Path:
        """Its daemon, started as `up -d` starts one, once it answers; its socket."""
        from linkd.client.api import Client

        self.run_dir.mkdir(parents=True, exist_ok=True)
        with (self.run_dir / "daemon.log").open("ab") as log:
            subprocess.Popen([sys.executable, "-m", "linkd", "daemon"], env=self.env,
                             stdout=log, stderr=log, start_new_session=True, cwd="/")
        socket = self.run_dir / "linkd.sock"
        deadline = time.monotonic() + 30
        while not Client(socket).available():
            if time.monotonic() > deadline:
                raise BenchError(f"the linkd daemon did not start; see {log.name}")
            time.sleep(0.01)
        return socket

    def compile(self) -> None:
        run([sys.executable, "-m", "compileall", "-q", str(REPO / "linkd")], env=self.env)

    def argv(self, *args: str) -> list[str]:
        return [*self.command, *args]

    def __call__(self, *args: str, cwd: Path | None = None) -> str:
        try:
            return run(self.argv(*args), env=self.env, cwd=cwd)
        except BenchError as exc:
            with contextlib.suppress(OSError):
                log = (self.run_dir / "daemon.log").read_text().splitlines()[-15:]
                raise BenchError(f"{exc}\ndaemon.log:\n" + "\n".join(log)) from None
            raise

    def stop(self) -> None:
        """End the daemon (by the PID its lock names, checked to be linkd's; SIGTERM
        takes its stacks down in order) and remove the run directory."""
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((self.run_dir / "daemon.lock").read_text().split()[0])
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if argv[1:4] == [b"-m", b"linkd", b"daemon"]:
                stop_pid(pid, timeout=120)
        shutil.rmtree(self.run_dir, ignore_errors=True)


# -- container engines in simulated hosts ---------------------------------------------------


class Machine:
    """A simulated host of the benchmark's own (tests/simhost.SimulatedHost: a network
    namespace and a mount table) with no way out, and a fresh tmpfs over each directory
    in `scratch` there: an engine keeps its state and images in them, and whatever it
    writes vanishes with the machine. `enter(argv)` runs a command on it (nsenter, no
    interpreter in between); `stop` ends everything that runs there and removes it all,
    with the cgroups named in `cgroups` (below each hierarchy's root)."""

    def __init__(self, scratch: Sequence[str], cgroups: Sequence[str]) -> None:
        self.scratch = [Path(d) for d in scratch]
        self.cgroups = [name for name in cgroups if not _cgroup_dirs(name)]  # not ours else
        self.made: list[Path] = []  # mount points that did not exist before
        self.host: Any = None

    def start(self) -> None:
        from tests.simhost import SimulatedHost

        self.host = SimulatedHost()
        self.host.create()
        # No way out: a resolver's forward of a name it does not know fails at once
        # (network unreachable) instead of waiting for an answer that cannot come.
        run(["ip", "-n", self.host.netns, "route", "del", "default"])
        for directory in self.scratch:
            if not directory.exists():
                directory.mkdir(parents=True)
                self.made.append(directory)
            run(self.enter(["mount", "-t", "tmpfs", "tmpfs", str(directory)]))

    def enter(self, argv: Sequence[str]) -> list[str]:
        holder = f"/proc/{self.host.holder.pid}/ns"
        return ["nsenter", f"--net={holder}/net", f"--mount={holder}/mnt", *argv]

    def stop(self) -> None:
        if self.host is not None:
            try:
                self.host.destroy()  # its processes; its mounts go with its mount namespace
            except (OSError, AssertionError) as exc:  # a holder that never started
                print(f"bench: {self.host.netns}: {exc}", file=sys.stderr)
                subprocess.run(["ip", "netns", "del", self.host.netns], capture_output=True)
        for directory in reversed(self.made):
            with contextlib.suppress(OSError):
                directory.rmdir()
        for name in self.cgroups:
            for parent in _cgroup_dirs(name):
                for directory, _, _ in sorted(os.walk(parent), key=lambda w: -len(w[0])):
                    with contextlib.suppress(OSError):
                        os.rmdir(directory)


def _cgroup_dirs(name: str) -> list[Path]:
    root = Path("/sys/fs/cgroup")
    return [p for p in (root / name, *root.glob(f"*/{name}")) if p.is_dir()]


class Dockerd:
    """Debian's dockerd with its defaults (iptables rules, docker0, ip_forward=1) on a
    `Machine` of its own, its data, exec root, pidfile and /etc/docker in tmpfs there, its
    containers' cgroups under /NAME; the socket, outside, is /run/NAME.sock."""

    def __init__(self, name: str, extra: Sequence[str] = ()) -> None:
        self.machine = Machine(["/var/lib/docker", "/run/docker", "/etc/docker"], [name])
        self.name = name
        self.extra = list(extra)  # more of dockerd's options (--insecure-registry ...)
        self.socket = Path(f"/run/{name}.sock")
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{self.socket}"}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.machine.start()
        log = Path(f"/run/{self.name}.log")
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.machine.enter(["dockerd", "--iptables=true", "-H", f"unix://{self.socket}",
                                    "--pidfile", "/run/docker/docker.pid",
                                    "--cgroup-parent", f"/{self.name}", *self.extra]),
                stdout=out, stderr=out, start_new_session=True,
            )
        deadline = time.monotonic() + 90
        while subprocess.run(self.argv("version"), env=self.env, capture_output=True,
                             check=False).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"dockerd did not start: {log.read_text()[-800:]}")
            time.sleep(0.1)
        log.unlink()

    def argv(self, *args: str) -> list[str]:
        return [DOCKER, *args]

    def __call__(self, *args: str, input: bytes | None = None) -> str:
        return run(self.argv(*args), env=self.env, input=input)

    def version(self) -> str:
        return f"docker {self('version', '--format', '{{.Server.Version}}').strip()}"

    def run_options(self) -> list[str]:
        return []  # Docker's defaults work here

    def stop(self) -> None:
        """Containers, dockerd, then the machine (its containerd and shims with it)."""
        if self.proc is not None and self.proc.poll() is None:
            ids = subprocess.run(self.argv("ps", "-aq"), env=self.env, capture_output=True,
                                 text=True, check=False).stdout.split()
            if ids:
                subprocess.run(self.argv("rm", "-f", *ids), env=self.env, capture_output=True,
                               check=False)
            stop_child(self.proc)
        self.machine.stop()
        self.socket.unlink(missing_ok=True)
        Path(f"/run/{self.name}.log").unlink(missing_ok=True)


class Podman:
    """Debian's podman (netavark, aardvark-dns, conmon, runc) on a `Machine` of its own,
    its storage, run files, network configurations and shared-memory locks in tmpfs
    there, its containers' cgroups under /NAME (conmon's under /libpod_parent)."""

    def __init__(self, name: str) -> None:
        self.machine = Machine(["/var/lib/containers", "/run/containers", "/dev/shm"],
                               [name, "libpod_parent"])
        self.name = name

    def start(self) -> None:
        self.machine.start()

    def argv(self, *args: str) -> list[str]:
        return self.machine.enter([
            "podman", "--cgroup-manager", "cgroupfs", "--runtime", "/usr/sbin/runc",
            "--events-backend", "file", "--tmpdir", "/run/containers/libpod",
            "--network-config-dir", "/var/lib/containers/networks", *args])

    def __call__(self, *args: str) -> str:
        return run(self.argv(*args))

    def run_options(self) -> list[str]:
        """For `podman run`: its default raises RLIMIT_NOFILE and RLIMIT_NPROC to the
        kernel's maximum, which root here may not (no CAP_SYS_RESOURCE)."""
        return ["--cgroup-parent", f"/{self.name}", "--ulimit", "nofile=1024:1024",
                "--ulimit", "nproc=1024:1024"]

    def version(self) -> str:
        return f"podman {self('version', '--format', '{{.Client.Version}}').strip()}"

    def stop(self) -> None:
        if self.machine.host is not None:
            subprocess.run(self.argv("rm", "-f", "-a", "-t", "0"), capture_output=True,
                           check=False)
        self.machine.stop()
