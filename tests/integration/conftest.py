"""Root tier: real namespaces, veths, bridges and processes.

A whole run holds KERNEL_LOCK: another test run or a benchmark on the same machine
(bench/run takes the same lock) would create objects that look like leaks to the
snapshots below, and the cleanup would remove them from under it.

Every test runs between two snapshots of the machine (network namespaces, links,
mounts and processes that look like linkd's); anything of ours that appears during a
test and is still there after it fails that test, and is then removed so the next test
starts clean.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import secrets
import select
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from linkd.runtime.kernel.netlink import Kernel
from tests.simhost import SESSION_RUN_DIR

REPO = Path(__file__).resolve().parents[2]
KERNEL_LOCK = "/run/lock/linkd-kernel.lock"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.geteuid() != 0:
        raise pytest.UsageError(
            "the integration tests create namespaces and bridges: run them as root "
            "(scripts/dev test does)"
        )


OUTCOME = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Each phase's report, kept on the test: a fixture's teardown can see that its test
    failed (the browser tests save a screenshot then)."""
    report: pytest.TestReport = yield
    item.stash.setdefault(OUTCOME, {})[report.when] = report
    return report


def failed(item: pytest.Item) -> bool:
    return any(r.failed for r in item.stash.get(OUTCOME, {}).values())


@dataclass(frozen=True)
class Snapshot:
    netns: frozenset[str]
    links: frozenset[str]
    mounts: frozenset[str]
    processes: frozenset[int]
    leases: frozenset[str] = frozenset()  # /run/linkd/leases: a test forgets its own

    def __sub__(self, other: Snapshot) -> Snapshot:
        return Snapshot(
            self.netns - other.netns,
            self.links - other.links,
            self.mounts - other.mounts,
            self.processes - other.processes,
            self.leases - other.leases,
        )

    def kernel(self) -> Snapshot:
        """Only what lives in the kernel and process table (a stack's lease outlives
        `down` on purpose; the fixture forgets it when the test is done)."""
        return Snapshot(self.netns, self.links, self.mounts, self.processes)

    def empty(self) -> bool:
        return not (self.netns or self.links or self.mounts or self.processes or self.leases)


def snapshot() -> Snapshot:
    try:
        netns = frozenset(n for n in os.listdir("/run/netns") if n.startswith("linkd-"))
    except FileNotFoundError:
        netns = frozenset()
    links = frozenset(n for n in os.listdir("/sys/class/net") if n.startswith("lk"))
    mounts = frozenset(
        line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
        if "linkd" in line and line.split()[1] != SESSION_RUN_DIR  # the session's own
    )
    shim = str(REPO / "linkd" / "runtime" / "containers" / "shim.py").encode()
    processes = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if shim in cmdline:
            processes.add(int(entry))
    leases_dir = Path(os.environ.get("LINKD_RUN_DIR", "/run/linkd")) / "leases"
    leases = frozenset(p.name for p in leases_dir.glob("*.msgpack"))
    return Snapshot(netns, links, mounts, frozenset(processes), leases)


def remove_leftovers(left: Snapshot) -> None:
    for pid in left.processes:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)  # ours: it runs linkd's shim or supervisor
    for netns in left.netns:
        subprocess.run(["ip", "netns", "del", netns], check=False, capture_output=True)
    for link in sorted(left.links):
        subprocess.run(["ip", "link", "del", link], check=False, capture_output=True)
    leases_dir = Path(os.environ.get("LINKD_RUN_DIR", "/run/linkd")) / "leases"
    for lease in left.leases:
        (leases_dir / lease).unlink(missing_ok=True)


@pytest.fixture(scope="session", autouse=True)
def kernel_lock() -> Iterator[None]:
    """One suite or benchmark at a time creates linkd-looking kernel objects.

    A pytest run started by a test of this run (test_cleanup) inherits the lock through
    the environment instead of waiting for its own parent."""
    if os.environ.get("LINKD_KERNEL_LOCK_HELD"):
        yield
        return
    fd = os.open(KERNEL_LOCK, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # waits while another run holds it
        os.environ["LINKD_KERNEL_LOCK_HELD"] = str(os.getpid())
        yield
    finally:
        os.environ.pop("LINKD_KERNEL_LOCK_HELD", None)
        os.close(fd)


def daemon_pids() -> set[int]:
    """`linkd daemon` processes of this session (started by `up -d` through the CLI): in
    the session's own network namespace, so a test never touches the daemon of another
    session (or of a benchmark) running on the machine at the same time."""
    ours = os.readlink("/proc/self/ns/net")
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                if cmdline[1:4] != [b"-m", b"linkd", b"daemon"]:
                    continue
                if os.readlink(f"/proc/{entry}/ns/net") != ours:
                    continue
            except OSError:
                continue
            found.add(int(entry))
    return found


_PREEXISTING_DAEMONS: set[int] = set()


def stop_session_daemons() -> None:
    """End the daemons this run's `up -d` started (by PID, SIGTERM: each takes its
    stacks down in order), and wait for them to exit."""
    import time

    for pid in daemon_pids() - _PREEXISTING_DAEMONS:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 15)
    deadline = time.monotonic() + 30
    while daemon_pids() - _PREEXISTING_DAEMONS and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.fixture(scope="session", autouse=True)
def session_daemon(kernel_lock: None) -> Iterator[None]:
    """The daemon `linkd up -d` starts lives for the whole run; it ends with the run."""
    _PREEXISTING_DAEMONS.update(daemon_pids())
    try:
        yield
    finally:
        stop_session_daemons()


@pytest.fixture(autouse=True)
def leaves_nothing_behind() -> Iterator[None]:
    before = snapshot()
    yield
    left = settled(before)
    if not left.empty():
        remove_leftovers(left)
        pytest.fail(f"the test left linkd objects behind: {left}")


def settled(before: Snapshot) -> Snapshot:
    # The kernel removes a deleted namespace's veths from a work queue, a moment later.
    import time

    deadline = time.monotonic() + 5
    while True:
        left = snapshot() - before
        if left.empty() or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


@dataclass
class Linkd:
    """Runs the real `linkd` command line against one stack file of a test."""

    directory: Path
    project: str

    def write(self, stack_yaml: str, name: str = "linkd.yaml") -> Path:
        path = self.directory / name
        path.write_text(textwrap.dedent(stack_yaml))
        return path

    def run(self, *args: str, check: bool = True, timeout: float = 60,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "linkd", *args],
            cwd=self.directory,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"linkd {' '.join(args)} exited {result.returncode}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result

    def run_on_terminal(self, *args: str, timeout: float = 60) -> tuple[int, str]:
        """`linkd ARGS` with its stdout and stderr a terminal (a pty): its exit code and
        everything it wrote there, escape sequences and all."""
        main, side = pty.openpty()
        try:
            proc = subprocess.Popen([sys.executable, "-m", "linkd", *args], cwd=self.directory,
                                    stdin=subprocess.DEVNULL, stdout=side, stderr=side,
                                    env={**os.environ, "PYTHONPATH": str(REPO)})
            os.close(side)
            side = -1
            out = bytearray()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                ready, _, _ = select.select([main], [], [], 0.5)
                try:
                    chunk = os.read(main, 65536) if ready else b""
                except OSError:  # EIO: the command has ended and closed its side
                    break
                if ready and not chunk:
                    break
                out += chunk
            try:
                code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise
            return code, out.decode(errors="replace")
        finally:
            os.close(main)
            if side >= 0:
                os.close(side)

    def up(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.run("up", "-d", "-p", self.project, *extra)

    def wait_for_log(self, service: str, text: str, timeout: float = 15) -> str:
        """`linkd logs SERVICE` once it holds `text` (or when `timeout` is up)."""
        deadline = time.monotonic() + timeout
        while True:
            out = self.run("logs", "-p", self.project, service, check=False).stdout
            if text in out or time.monotonic() > deadline:
                return out
            time.sleep(0.05)

    def down(self) -> subprocess.CompletedProcess[str]:
        return self.run("down", "-p", self.project)

    def exec(self, service: str, *argv: str, check: bool = True
             ) -> subprocess.CompletedProcess[str]:
        return self.run("exec", "-p", self.project, service, "--", *argv, check=check)

    def py(self, service: str, code: str, check: bool = True
           ) -> subprocess.CompletedProcess[str]:
        return self.exec(service, "/usr/bin/python3", "-c", textwrap.dedent(code), check=check)

    def wait_listening(self, service: str, port: int) -> None:
        """Until something in `service` accepts TCP connections on `port` (10 s)."""
        self.py(service, f"""
            import socket, time
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", {port}), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline: raise
                    time.sleep(0.05)
        """)


@contextlib.contextmanager
def fresh_linkd() -> Iterator[Linkd]:
    """A stack name and a directory of its own; both gone afterwards, whatever happened."""
    # Not under /tmp: containers have a private /tmp, and run in the stack file's directory.
    directory = Path(tempfile.mkdtemp(prefix="linkd-test-", dir="/var/tmp"))
    runner = Linkd(directory, "t" + secrets.token_hex(4))
    try:
        yield runner
    finally:
        runner.run("down", "--forget", "-p", runner.project, check=False)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def linkd() -> Iterator[Linkd]:
    with fresh_linkd() as runner:
        yield runner


@pytest.fixture
async def kernel() -> AsyncIterator[Kernel]:
    """linkd's netlink steps, closed (its namespace helper ended) after the test."""
    k = Kernel()
    try:
        yield k
    finally:
        k.close()
