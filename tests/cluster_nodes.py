"""Simulated cluster nodes for the integration tests: simulated hosts (tests/simhost.py),
an underlay that joins them, and a linkd daemon on each, a node of one etcd cluster
(tests/etcd.py).

The underlay is a bridge in the session's namespace (`lkt<tag>b`) with one veth per
host (`eth1` inside, 198.19.<x>.<n>/24; RFC 2544's range, like the uplinks): nodes
reach each other on one link, as machines on one LAN do, without the session having to
forward. Everything goes in teardown, whatever happened.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.etcd import EtcdCluster, etcd_cluster
from tests.simhost import SimulatedHost, ip

TTL = 2  # the nodes' leases, in seconds: short, so that a killed node leaves quickly


@contextlib.contextmanager
def hosts(count: int) -> Iterator[list[SimulatedHost]]:
    """`count` simulated hosts on distinct uplink subnets (simhost draws one of 256)."""
    made: list[SimulatedHost] = []
    try:
        while len(made) < count:
            host = SimulatedHost()
            if any(h.outside_address == host.outside_address for h in made):
                host.run_dir.rmdir()  # drawn twice: nothing of it exists but its directory
                continue
            made.append(host)
            host.create()
        yield made
    finally:
        for host in made:
            host.destroy()


@contextlib.contextmanager
def underlay(machines: Sequence[SimulatedHost], mtu: int = 1500) -> Iterator[list[str]]:
    """One L2 segment joining `machines` (their `eth1`); yields each one's address on it."""
    tag = secrets.token_hex(2)
    bridge = f"lkt{tag}b"
    third = int(tag[:2], 16)
    addresses = [f"198.19.{third}.{i + 1}" for i in range(len(machines))]
    ends: list[str] = []
    try:
        ip("link", "add", bridge, "type", "bridge")
        ip("link", "set", bridge, "mtu", str(mtu), "up")
        for i, (machine, address) in enumerate(zip(machines, addresses, strict=True)):
            end = f"lkt{tag}{i}"
            ip("link", "add", end, "mtu", str(mtu), "type", "veth", "peer", "name", "eth1",
               "mtu", str(mtu), "netns", machine.netns)
            ends.append(end)
            ip("link", "set", end, "master", bridge, "up")
            ip("addr", "add", f"{address}/24", "dev", "eth1", netns=machine.netns)
            ip("link", "set", "eth1", "up", netns=machine.netns)
        yield addresses
    finally:
        for end in ends:
            subprocess.run(["ip", "link", "del", end], capture_output=True)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)


class Node:
    """A linkd daemon on a simulated host, a node of `etcd`'s cluster."""

    def __init__(self, host: SimulatedHost, name: str, etcd: EtcdCluster,
                 address: str | None = None) -> None:
        self.host, self.name = host, name
        self.env = host.env(LINKD_SOCKET=str(host.run_dir / "linkd.sock"))
        self.log = host.run_dir / "daemon.log"
        extra = ["--node-address", address] if address is not None else []
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                host.command([sys.executable, "-m", "linkd", "daemon", "--cluster",
                              etcd.cluster_flag, "--node-name", name, "--node-label",
                              f"rack={name[-1]}", "--cluster-ttl", str(TTL), *extra]),
                env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=host.run_dir)

    def linkd(self, *args: str, check: bool = True, cwd: Path | None = None
              ) -> subprocess.CompletedProcess[str]:
        return self.host.run(sys.executable, "-m", "linkd", *args, env=self.env,
                             check=check, timeout=60, cwd=cwd)

    def node_ls(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.linkd("node", "ls", *args, check=False)

    def listed(self) -> dict[str, dict[str, object]]:
        done = self.node_ls("--format", "json")
        if done.returncode != 0:
            return {}
        return {n["name"]: n for n in json.loads(done.stdout)["nodes"]}

    def up(self, project: str, text: str) -> Path:
        """Write `text` as the stack file of `project` and bring it up on this node."""
        directory = self.host.run_dir / project
        directory.mkdir(exist_ok=True)
        (directory / "linkd.yaml").write_text(text)
        self.linkd("up", "-d", "-p", project, cwd=directory)
        return directory

    def daemon_log(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        """SIGTERM (the daemon takes its stacks down: their containers live in namespaces
        of their own, which the host's teardown would not find), SIGKILL if it hangs."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextlib.contextmanager
def daemons(nodes: list[Node]) -> Iterator[list[Node]]:
    """`nodes`, each daemon killed in teardown (its host's destruction takes the rest)."""
    try:
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def wait_until(predicate: Callable[[], object], timeout: float, what: str,
               nodes: Sequence[Node]) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            logs = "\n".join(f"--- {n.name}:\n{n.daemon_log()}" for n in nodes)
            raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{logs}")
        time.sleep(0.1)
    return time.monotonic() - start


@dataclass
class Cluster:
    machines: list[SimulatedHost]
    addresses: list[str]  # each machine's on the underlay
    etcd: EtcdCluster
    nodes: list[Node]  # node1, node2, ...: replace one in place to have it stopped too


@contextlib.contextmanager
def cluster(count: int, underlay_mtu: int = 1500) -> Iterator[Cluster]:
    """`count` nodes on one underlay, a three-member etcd on the first one's uplink, a
    daemon on each, every one listing all; everything gone afterwards."""
    with hosts(count) as machines, underlay(machines, underlay_mtu) as addresses, \
            etcd_cluster(machines[0].outside_address) as etcd:
        nodes = [Node(m, f"node{i + 1}", etcd, a)
                 for i, (m, a) in enumerate(zip(machines, addresses, strict=True))]
        with daemons(nodes):
            for node in nodes:
                wait_until(lambda n=node: len(n.listed()) == count,  # type: ignore[misc]
                           30, f"{node.name} to list every node", nodes)
            yield Cluster(machines, addresses, etcd, nodes)
