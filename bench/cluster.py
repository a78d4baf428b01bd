"""A cluster of nodes: names across nodes, VXLAN throughput, up of many containers, and a
dead node's withdrawal, beside their floors in the same run.

    bench/run cluster [--starts 200] [--per-node 100] [--seconds 3] [--runs 5]

Three nodes on this machine (tests/cluster_nodes.py: simulated hosts joined by an underlay
bridge, each with its own linkd daemon) and a three-member etcd (tests/etcd.py, Debian's
etcd-server). Node 1 makes an overlay network; every node runs `--per-node` containers
on it (one stack each, brought up on the three nodes at once: the "up" row).

- **Name across nodes**: `--starts` times, a new one-container stack joins the network
  on node 1 (and goes again after); a probe inside a container on node 3 resolves its
  name through the system resolver (node 3's linkd DNS) every ~0.5 ms. Latency: from
  the container's start (its `started_at`) to the probe's first answer; also from
  `linkd up` being run. Beside it, the floor: etcd's own put-to-watch delay between two
  clients, same run: once on the idle cluster, and once measured all along the starts
  (a put every 50 ms, in a thread): what etcd alone takes when the machine is as busy.
- **VXLAN throughput**: iperf3, one TCP stream, container on node 1 to container on node 2
  over the overlay network, beside the same between the two nodes' own addresses on the
  underlay (the path VXLAN's packets take), interleaved, median of `--runs`.
- **Withdrawal**: node 2's daemon is killed (-9); the time until its containers' names
  no longer answer on node 3, against the nodes' lease TTL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import common

from tests.cluster_nodes import TTL, Node, hosts, underlay, wait_until
from tests.etcd import etcd_cluster

PROBE = r"""
import socket, sys, time
for line in sys.stdin:
    name = line.strip()
    while True:
        try:
            socket.getaddrinfo(name, None, socket.AF_INET)
            break
        except socket.gaierror:
            time.sleep(0.0005)
    print(name, repr(time.time()), flush=True)
"""


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def stack_file(service: str, replicas: int, command: str, own: bool) -> str:
    net = {"driver": "overlay"} if own else {"external": True, "name": "base_net"}
    return json.dumps({"services": {service: {"command": command, "networks": ["net"],
                                              "deploy": {"replicas": replicas}}},
                       "networks": {"net": net}})


def started_at(node: Node, project: str, container: str) -> float:
    (doc,) = json.loads(node.linkd("inspect", "-p", project, container,
                                   cwd=node.host.run_dir / project).stdout)
    return float(doc["state"]["started_at"])


def etcd_floor(endpoints: str, samples: int, *, pause: float = 0.0,
               stop: threading.Event | None = None, tag: str = "idle") -> list[float]:
    """Seconds from a put on one client to its event on another's watch: `samples` of
    them, or (`stop`) until it is set, `pause` seconds apart."""
    from linkd.core import cluster
    from linkd.runtime.cluster.etcd import Etcd, resolve

    async def measure() -> list[float]:
        resolved = resolve(cluster.parse_endpoints(endpoints))
        writer, reader = Etcd(resolved, 5.0), Etcd(resolved, 5.0)
        head = f"/lkbench/floor-{tag}/".encode()
        got: list[float] = []
        try:
            start_rev = await writer.put(head + b"0", b"x", 0)
            watch = reader.watch(head, start_rev + 1)
            async with contextlib.aclosing(watch) as batches:
                it = aiter(batches)
                first = await anext(it)
                assert first == [] or first, first
                i = 0
                while (len(got) < samples) if stop is None else not stop.is_set():
                    sent = time.monotonic()
                    await writer.put(head + str(i).encode(), b"x", 0)
                    while True:
                        batch = await anext(it)
                        if batch:
                            break
                    got.append(time.monotonic() - sent)
                    i += 1
                    await asyncio.sleep(pause)
        finally:
            await writer.close()
            await reader.close()
        return got

    return asyncio.run(measure())


class LoadedFloor:
    """etcd's put-to-watch delay measured beside the starts, in a thread, every `pause`
    seconds: what etcd itself takes while the machine is as busy as it is for linkd's
    records (three daemons, three etcd members and the probe share its CPUs)."""

    def __init__(self, endpoints: str, pause: float) -> None:
        self.stop = threading.Event()
        self.samples: list[float] = []
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(endpoints, pause), daemon=True)
        self._thread.start()

    def _run(self, endpoints: str, pause: float) -> None:
        try:
            self.samples = etcd_floor(endpoints, 0, pause=pause, stop=self.stop, tag="loaded")
        except BaseException as exc:  # said by `end`
            self.error = exc

    def end(self) -> list[float]:
        self.stop.set()
        self._thread.join(30)
        if self.error is not None or not self.samples:
            raise common.BenchError(f"etcd's floor beside the starts: {self.error!r}")
        return self.samples


def iperf_gbits(node: Node, netns: str | None, address: str, seconds: float) -> float:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    for attempt in range(30):
        done = node.host.run(*prefix, "iperf3", "-c", address, "-t", str(seconds), "-J",
                             check=False, timeout=seconds + 30)
        if done.returncode == 0:
            return float(json.loads(done.stdout)["end"]["sum_received"]["bits_per_second"]) / 1e9
        time.sleep(0.1 * (attempt + 1))
    raise common.BenchError(f"iperf3 to {address} failed: {done.stdout[-300:]}")


def main(args: argparse.Namespace, work: Path, cleanup: contextlib.ExitStack) -> str:
    machines = cleanup.enter_context(hosts(3))
    addresses = cleanup.enter_context(underlay(machines))
    etcd = cleanup.enter_context(etcd_cluster(machines[0].outside_address))
    nodes: list[Node] = []

    @cleanup.callback
    def stop_daemons() -> None:
        for node in nodes:
            node.stop()

    for i, (machine, address) in enumerate(zip(machines, addresses, strict=True)):
        nodes.append(Node(machine, f"node{i + 1}", etcd, address))
    one, two, three = nodes
    for node in nodes:
        wait_until(lambda n=node: len(n.listed()) == 3, 60, f"{node.name} to list every node",  # type: ignore[misc]
                   nodes)

    # up: the network made on node 1, then --per-node containers on each node at once.
    one.up("base", stack_file("base", 1, "sleep infinity", own=True))
    for i, node in enumerate(nodes):
        directory = node.host.run_dir / f"many{i}"
        directory.mkdir()
        (directory / "linkd.yaml").write_text(
            stack_file(f"many{i}", args.per_node, "sleep infinity", own=False))
    began = time.monotonic()
    procs = [node.host.popen(sys.executable, "-m", "linkd", "up", "-d", "-p", f"many{i}",
                             "-f", str(node.host.run_dir / f"many{i}" / "linkd.yaml"),
                             env=node.env, stdout=subprocess.PIPE)
             for i, node in enumerate(nodes)]
    said = [proc.communicate()[0] for proc in procs]
    for i, proc in enumerate(procs):
        if proc.returncode != 0:
            raise common.BenchError(f"up of many{i} on node{i + 1} failed: "
                                    f"{said[i].decode(errors='replace')[-600:]}")
    up_all = time.monotonic() - began
    total = sum(node.linkd("ps", "-p", f"many{i}", cwd=node.host.run_dir / f"many{i}"
                           ).stdout.count(" running") for i, node in enumerate(nodes))
    if total != 3 * args.per_node:
        raise common.BenchError(f"{total} containers running, not {3 * args.per_node}")

    # The probe on node 3, in a container of a stack on the network.
    three.up("probe", stack_file("probe", 1, "sleep infinity", own=False))
    probe = subprocess.Popen(
        three.host.command([sys.executable, "-m", "linkd", "exec", "-p", "probe",
                            "probe", "/usr/bin/python3", "-u", "-c", PROBE]),
        env=three.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        cwd=three.host.run_dir / "probe")
    cleanup.callback(probe.kill)
    assert probe.stdin is not None and probe.stdout is not None

    from_start: list[float] = []
    from_up: list[float] = []
    loaded = LoadedFloor(etcd.cluster_flag, pause=0.05)
    cleanup.callback(loaded.stop.set)
    for k in range(args.starts):
        name = f"s{k}"
        probe.stdin.write(name + "\n")
        probe.stdin.flush()
        directory = one.host.run_dir / name
        directory.mkdir()
        (directory / "linkd.yaml").write_text(stack_file(name, 1, "sleep infinity", own=False))
        asked = time.time()
        one.linkd("up", "-d", "-p", name, cwd=directory)
        line = probe.stdout.readline().split()
        if len(line) != 2 or line[0] != name:
            raise common.BenchError(f"the probe said {line!r} for {name}")
        answered = float(line[1])
        from_start.append(answered - started_at(one, name, f"{name}-1"))
        from_up.append(answered - asked)
        # Gone again, so that every start meets the same cluster (a node running
        # hundreds of stacks is another benchmark).
        one.linkd("down", "-p", name, cwd=directory)

    beside = loaded.end()
    floor = etcd_floor(etcd.cluster_flag, args.starts)

    # VXLAN throughput beside the underlay.
    one.up("cli", stack_file("cli", 1, "sleep infinity", own=False))
    two.up("srv", stack_file("srv", 1, "iperf3 -s", own=False))
    (doc,) = json.loads(two.linkd("inspect", "-p", "srv", "srv-1").stdout)
    srv_address = doc["plan"]["interfaces"][0]["address"]
    server = two.host.popen("iperf3", "-s", "-p", "5201")
    cleanup.callback(server.kill)
    overlay_runs: list[float] = []
    underlay_runs: list[float] = []
    for _ in range(args.runs):
        overlay_runs.append(iperf_gbits(one, "linkd-cli.cli-1", srv_address, args.seconds))
        underlay_runs.append(iperf_gbits(one, None, addresses[1], args.seconds))
    mtu = json.loads(one.host.run("ip", "-n", "linkd-cli.cli-1", "-j", "link", "show",
                                  "eth0").stdout)[0]["mtu"]

    # Withdrawal: node 2's daemon killed; until its names stop answering on node 3.
    probe.kill()
    os.kill(two.process.pid, signal.SIGKILL)
    two.process.wait()
    killed = time.monotonic()

    def gone() -> bool:
        done = three.linkd("exec", "-p", "probe", "probe", "/usr/bin/python3", "-c",
                           "import socket,sys\ntry:\n socket.getaddrinfo('srv', None)\n"
                           "except socket.gaierror:\n sys.exit(3)\n", check=False)
        return done.returncode == 3

    wait_until(gone, TTL + 30, "node 2's names to leave node 3", nodes)
    withdrawal = time.monotonic() - killed
    # node 2's containers outlive its killed daemon: a new one adopts them, and stops
    # them when the benchmark ends.
    nodes[1] = Node(machines[1], "node2", etcd, addresses[1])
    wait_until(lambda: nodes[1].listed().get("node2", {}).get("state") == "ready", 60,
               "node2 to rejoin", nodes)

    p50, p99 = statistics.median(from_start), percentile(from_start, 0.99)
    u50, u99 = statistics.median(from_up), percentile(from_up, 0.99)
    f50, f99 = statistics.median(floor), percentile(floor, 0.99)
    b50, b99 = statistics.median(beside), percentile(beside, 0.99)
    o, u = statistics.median(overlay_runs), statistics.median(underlay_runs)
    lines = [
        f"Cluster: 3 nodes (simulated hosts on one underlay bridge), 3-member etcd "
        f"{common.dpkg_version('etcd-server')}, lease TTL {TTL} s; {total} containers on one "
        f"overlay network ({args.per_node} per node).",
        "",
        "| measure | linkd | floor / peer | ratio | target |",
        "|---|---|---|---|---|",
        f"| name on node 3 after a container's start on node 1, p50 ({args.starts} starts) "
        f"| {common.ms(p50)} ms | etcd put→watch {common.ms(f50)} ms idle, "
        f"{common.ms(b50)} ms beside the starts | | |",
        f"| the same, p99 | {common.ms(p99)} ms | etcd put→watch {common.ms(f99)} ms idle, "
        f"{common.ms(b99)} ms beside the starts ({len(beside)} puts) | | ≤ 20 ms |",
        f"| name on node 3 after `linkd up` was run on node 1, p50 / p99 | {common.ms(u50)} / "
        f"{common.ms(u99)} ms | | | |",
        f"| iperf3 container→container across nodes over VXLAN (MTU {mtu}) vs the underlay, "
        f"median of {args.runs} runs of {args.seconds:g} s | {o:.2f} Gbit/s | {u:.2f} Gbit/s | "
        f"{o / u:.2f}x | ≥ 0.8x |",
        f"| `up` of {total} containers, three stacks on three nodes at once | "
        f"{up_all:.2f} s | | | |",
        f"| a killed node's names gone on another node | {withdrawal:.2f} s | TTL {TTL} s | "
        f"| ≤ TTL + 1 s |",
    ]
    return "\n".join(lines)


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--starts", type=int, default=200, help="default 200")
    parser.add_argument("--per-node", type=int, default=100, help="default 100")
    parser.add_argument("--seconds", type=float, default=3.0, help="per iperf3 run")


if __name__ == "__main__":
    sys.exit(common.part("cluster", __doc__ or "", main, runs=5, options=options))
