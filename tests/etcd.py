"""A real etcd cluster for tests: Debian's `etcd` (etcd-server), N members on one
address with ports of their own and data directories in a temporary directory.

`EtcdCluster(host).start()` starts every member with one `--initial-cluster` and waits
until each says it is healthy (which needs a leader: the first election can take a
couple of seconds). `kill(i)` SIGKILLs one member, `stop()` every member, `restart()`
starts the stopped ones again on their data directories (a member that comes back
rejoins in a fraction of a second). `close()` SIGKILLs whatever still runs, by PID (a
SIGTERM'd etcd takes seconds to stop), and removes the data. The address is loopback
for a test of the session, or the session's side of a simulated host's uplink
(tests/simhost.py) for etcd that simulated hosts reach.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ETCD = Path("/usr/bin/etcd")
READY_TIMEOUT = 20.0  # seconds for a cluster to elect a leader on a busy 2-CPU machine
# Faster heartbeats and elections than etcd's defaults (100 ms, 1 s): a loopback cluster
# needs no slack for the network, but a busy test machine needs some for the CPU.
HEARTBEAT_MS, ELECTION_MS = 50, 500

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    metrics_port: int
    data_dir: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None


def free_ports(host: str, count: int) -> list[int]:
    """`count` ports nothing listens on at `host` (bound together, then released)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
            sock.bind((host, 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


class EtcdCluster:
    def __init__(self, host: str = "127.0.0.1", size: int = 3) -> None:
        self.host = host
        self.directory = Path(tempfile.mkdtemp(prefix="lkt-etcd-"))
        ports = free_ports(host, 3 * size)
        self.token = "lkt-" + os.urandom(4).hex()
        self.members = [
            Member(f"m{i}", ports[3 * i], ports[3 * i + 1], ports[3 * i + 2],
                   self.directory / f"m{i}", self.directory / f"m{i}.log")
            for i in range(size)
        ]

    @property
    def endpoints(self) -> list[str]:
        return [self._url(m.client_port) for m in self.members]

    @property
    def cluster_flag(self) -> str:
        """What `linkd daemon --cluster` takes."""
        return ",".join(self.endpoints)

    def _url(self, port: int) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{port}"

    def start(self) -> None:
        for member in self.members:
            self._start(member)
        self.wait_ready()

    def _start(self, member: Member) -> None:
        initial = ",".join(f"{m.name}={self._url(m.peer_port)}" for m in self.members)
        argv = [
            str(ETCD), "--name", member.name, "--data-dir", str(member.data_dir),
            "--listen-client-urls", self._url(member.client_port),
            "--advertise-client-urls", self._url(member.client_port),
            "--listen-peer-urls", self._url(member.peer_port),
            "--initial-advertise-peer-urls", self._url(member.peer_port),
            "--listen-metrics-urls", self._url(member.metrics_port),
            "--initial-cluster", initial, "--initial-cluster-token", self.token,
            "--initial-cluster-state", "new",
            f"--heartbeat-interval={HEARTBEAT_MS}", f"--election-timeout={ELECTION_MS}",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        with member.log.open("ab") as out:
            member.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                              stderr=out, env=env)

    def keys(self, prefix: str) -> list[str]:
        """The keys under `prefix`, read through a running member's JSON gateway."""
        member = next(m for m in self.members if self.running(m))
        end = bytearray(prefix.encode())
        end[-1] += 1
        body = json.dumps({"key": base64.b64encode(prefix.encode()).decode(),
                           "range_end": base64.b64encode(bytes(end)).decode(),
                           "keys_only": True}).encode()
        request = urllib.request.Request(f"{self._url(member.client_port)}/v3/kv/range",
                                         data=body, method="POST")
        with _NO_PROXY.open(request, timeout=5) as r:
            found = json.loads(r.read()).get("kvs", [])
        return sorted(base64.b64decode(kv["key"]).decode() for kv in found)

    def healthy(self, member: Member) -> bool:
        try:
            with _NO_PROXY.open(f"{self._url(member.metrics_port)}/health", timeout=1) as r:
                return bool(json.loads(r.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Until every running member is healthy (there is a leader)."""
        deadline = time.monotonic() + timeout
        running = [m for m in self.members if self.running(m)]
        while not all(self.healthy(m) for m in running):
            for m in running:
                assert m.process is not None
                if m.process.poll() is not None:
                    raise AssertionError(f"etcd {m.name} exited {m.process.returncode}:\n"
                                         f"{self.log_tail(m)}")
            if time.monotonic() > deadline:
                raise AssertionError("etcd did not elect a leader in time:\n" + "\n".join(
                    f"{m.name}: {self.log_tail(m)}" for m in running))
            time.sleep(0.05)

    def running(self, member: Member) -> bool:
        return member.process is not None and member.process.poll() is None

    def kill(self, index: int) -> None:
        """SIGKILL member `index` and reap it."""
        member = self.members[index]
        if member.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(member.process.pid, signal.SIGKILL)
            member.process.wait()

    def stop(self) -> None:
        """Every member killed (the data stays, for `restart`)."""
        for index in range(len(self.members)):
            self.kill(index)

    def restart(self) -> None:
        """The members that are not running, started again on their data."""
        for member in self.members:
            if not self.running(member):
                self._start(member)
        self.wait_ready()

    def log_tail(self, member: Member, lines: int = 15) -> str:
        try:
            return "\n".join(member.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


@contextlib.contextmanager
def etcd_cluster(host: str = "127.0.0.1", size: int = 3) -> Iterator[EtcdCluster]:
    """A running cluster; every member killed and its data removed afterwards, whatever
    happened."""
    cluster = EtcdCluster(host, size)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()
