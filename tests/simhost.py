"""Simulated hosts: network namespaces that stand in for a machine, so that no test
depends on, or changes, the real host's sysctls, firewall or routes.

The whole test session runs in one (`enter_session_host`, called by tests/conftest.py
before pytest starts a thread): a fresh network namespace (loopback only, forwarding
off, no firewall: a new machine) and a private mount namespace in which `/sys` shows
that network namespace, the cgroup hierarchies stay where they are, and `/run/netns` is a
tmpfs of its own. Every process the session starts (linkd, its daemon, containers)
inherits both, so what linkd does to "the host" (forwarding, nftables, bridges) happens
there, and the real host sees none of it.

A test that needs a host of another kind (forwarding off, a dockerd with its iptables
rules, br_netfilter on or off, no nft tool) makes a `SimulatedHost` of its own: a
network namespace joined to the session's by an uplink veth, and a mount namespace of its
own (its `/sys`, its `/run/netns`), both held by a holder process; every command of that
host enters both (`python -m tests.simhost exec HOLDER -- COMMAND`), as processes of one
machine share its mount table. Its linkd gets a run directory of its own.

Everything made here carries the `lkt` prefix (network namespaces `lkt-...`, links
`lkt...`, directories `lkt-...`) and is removed by whoever made it, in `finally`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_BIND, MS_REC, MS_PRIVATE, MS_MOVE = 0x1000, 0x4000, 1 << 18, 0x2000

ENTERED = "LINKD_TEST_SIMULATED_HOST"  # set once the session runs in its simulated host
SESSION_RUN_DIR = "/run/linkd-tests"  # never a real linkd's /run/linkd

_libc = ctypes.CDLL(None, use_errno=True)
_real_netns: int | None = None


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str, target: str, fstype: str | None, flags: int) -> None:
    _check(
        _libc.mount(source.encode(), target.encode(),
                    fstype.encode() if fstype else None, flags, None),
        f"mount {source} on {target}",
    )


def _own_mounts() -> None:
    """A private mount namespace whose /sys shows the current network namespace and whose
    /run/netns is its own."""
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _mount("none", "/", None, MS_REC | MS_PRIVATE)  # nothing propagates to the host
    # sysfs shows the network namespace of whoever mounts it: mount it anew, keeping the
    # cgroup hierarchies (linkd's limits, runc and dockerd need them) where they were.
    keep = tempfile.mkdtemp(prefix="lkt-cgroup-")
    try:
        _mount("/sys/fs/cgroup", keep, None, MS_BIND | MS_REC)
        _mount("sysfs", "/sys", "sysfs", 0)
        _mount(keep, "/sys/fs/cgroup", None, MS_MOVE)
    finally:
        os.rmdir(keep)
    os.makedirs("/run/netns", exist_ok=True)
    _mount("tmpfs", "/run/netns", "tmpfs", 0)


def enter_session_host() -> None:
    """Move this (single-threaded) process into a fresh simulated host; nothing to do in
    a process that inherited one, or that is not root (unit tests only)."""
    global _real_netns
    if os.environ.get(ENTERED) or os.geteuid() != 0:
        return
    _real_netns = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
    _own_mounts()
    forwarding_off()
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    os.makedirs(SESSION_RUN_DIR, mode=0o700, exist_ok=True)
    # A run directory of the session's own, so that two sessions at once (or a crashed
    # one's leftovers) never share a daemon socket or state.
    _mount("tmpfs", SESSION_RUN_DIR, "tmpfs", 0)
    os.chmod(SESSION_RUN_DIR, 0o700)
    os.environ.setdefault("LINKD_RUN_DIR", SESSION_RUN_DIR)
    # Volumes too: what the session's stacks keep goes with the session.
    os.environ.setdefault("LINKD_VOLUMES", SESSION_RUN_DIR + "/volumes")
    # Registry credentials: the session's own Docker config (none until a test writes
    # one), never root's ~/.docker; the daemon `up -d` starts inherits it.
    os.environ["DOCKER_CONFIG"] = SESSION_RUN_DIR + "/docker"
    os.environ[ENTERED] = "session"


def forwarding_off() -> None:
    """Forwarding off in this process's network namespace, as on a new machine: a new
    namespace copies its IPv4 settings from the real host's (Linux's default, for
    net.core.devconf_inherit_init_net=0), so a host with forwarding on (any Docker host)
    would hand it on."""
    for name in ("net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding",
                 "net/ipv6/conf/default/forwarding"):
        with contextlib.suppress(FileNotFoundError):  # no IPv6 on this host
            Path("/proc/sys", name).write_text("0\n")


def on_real_host() -> None:
    """A `preexec_fn`: run the child in the real host's network namespace (only for
    what needs the network itself: pip reaching the package index)."""
    if _real_netns is not None:
        _check(_libc.setns(_real_netns, CLONE_NEWNET), "setns to the real host")


def ip(*args: str, netns: str | None = None) -> str:
    prefix = ["-n", netns] if netns else []
    done = subprocess.run(["ip", *prefix, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def wait_for(predicate: Callable[[], object], timeout: float = 10,
             what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class SimulatedHost:
    """A machine of the test's own: network namespace `lkt-h<tag>`, uplink veth
    `lkt<tag>u` (its end in the session, 198.18.<x>.1/30, is "the outside") to `eth0`
    inside (198.18.<x>.2/30, default route via the outside), forwarding off as on a new
    machine, a mount table of its own, and a run directory for the linkd running there.
    198.18.0.0/15 is RFC 2544's benchmarking range: nothing real lives there."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.netns = f"lkt-h{tag}"
        self.uplink = f"lkt{tag}u"
        x = int(tag[:2], 16)
        self.outside_address = f"198.18.{x}.1"
        self.address = f"198.18.{x}.2"
        self.run_dir = Path(tempfile.mkdtemp(prefix="lkt-run-", dir="/run"))
        self.holder: subprocess.Popen[bytes] | None = None

    def create(self) -> None:
        ip("netns", "add", self.netns)
        ip("link", "add", self.uplink, "type", "veth", "peer", "name", "eth0",
           "netns", self.netns)
        ip("addr", "add", f"{self.outside_address}/30", "dev", self.uplink)
        ip("link", "set", self.uplink, "up")
        ip("addr", "add", f"{self.address}/30", "dev", "eth0", netns=self.netns)
        ip("link", "set", "eth0", "up", netns=self.netns)
        ip("link", "set", "lo", "up", netns=self.netns)
        ip("route", "add", "default", "via", self.outside_address, netns=self.netns)
        self.holder = subprocess.Popen(
            [sys.executable, "-m", "tests.simhost", "hold", self.netns],
            stdout=subprocess.PIPE,
        )
        assert self.holder.stdout is not None
        if self.holder.stdout.readline() != b"ready\n":
            raise AssertionError(f"the holder of {self.netns} did not start")

    def command(self, argv: Sequence[str]) -> list[str]:
        assert self.holder is not None
        return [sys.executable, "-m", "tests.simhost", "exec", str(self.holder.pid), "--",
                *argv]

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "LINKD_RUN_DIR": str(self.run_dir), "PYTHONPATH": str(REPO),
                **extra}

    def run(self, *argv: str, check: bool = True, timeout: float = 120,
            env: dict[str, str] | None = None, cwd: Path | None = None,
            ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(self.command(argv), capture_output=True, text=True,
                              env=env or self.env(), timeout=timeout, cwd=cwd or self.run_dir)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} in {self.netns} exited "
                                 f"{done.returncode}:\n{done.stdout}{done.stderr}")
        return done

    def linkd(self, *args: str, check: bool = True, cwd: Path | None = None,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return self.run(sys.executable, "-m", "linkd", *args, check=check, cwd=cwd, env=env)

    def popen(self, *argv: str, env: dict[str, str] | None = None,
              stdout: int | None = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.command(argv), env=env or self.env(), stdout=stdout,
                                stderr=subprocess.STDOUT, cwd=self.run_dir)

    def sysctl(self, name: str) -> str:
        return self.run("cat", f"/proc/sys/{name.replace('.', '/')}").stdout.strip()

    def set_sysctl(self, name: str, value: str) -> None:
        self.run("sh", "-c", f"echo {value} > /proc/sys/{name.replace('.', '/')}")

    def processes(self) -> list[int]:
        """Every process living in this host's mount namespace but its holder: all of
        them started by the test, directly or through linkd."""
        if self.holder is None:
            return []
        mine = os.readlink(f"/proc/{self.holder.pid}/ns/mnt")
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != self.holder.pid:
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{entry}/ns/mnt") == mine:
                        found.append(int(entry))
        return found

    def destroy(self) -> None:
        for pid in self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not self.processes(), timeout=10, what=f"{self.netns}'s processes")
        if self.holder is not None:
            self.holder.kill()
            self.holder.wait()
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.uplink], capture_output=True)
        shutil.rmtree(self.run_dir, ignore_errors=True)


@contextlib.contextmanager
def simulated_host() -> Iterator[SimulatedHost]:
    host = SimulatedHost()
    try:
        host.create()
        yield host
    finally:
        host.destroy()


def _hold(netns: str) -> None:
    """The holder: enter the host's network namespace, make its mount table, then wait
    to be killed; commands of the host join its namespaces."""
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
    _check(_libc.setns(fd, CLONE_NEWNET), f"setns {netns}")
    os.close(fd)
    forwarding_off()
    _own_mounts()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        signal.pause()


def _exec_in(holder: int, argv: list[str]) -> None:
    cwd = os.getcwd()
    for kind, flag in (("net", CLONE_NEWNET), ("mnt", CLONE_NEWNS)):
        fd = os.open(f"/proc/{holder}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
        _check(_libc.setns(fd, flag), f"setns {kind} of {holder}")
        os.close(fd)
    os.chdir(cwd)  # entering a mount namespace moves to its root
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    if sys.argv[1:2] == ["hold"] and len(sys.argv) == 3:
        _hold(sys.argv[2])
    elif sys.argv[1:2] == ["exec"] and len(sys.argv) > 4 and sys.argv[3] == "--":
        _exec_in(int(sys.argv[2]), sys.argv[4:])
    else:
        sys.exit("usage: python -m tests.simhost hold NETNS | exec HOLDER_PID -- COMMAND...")
