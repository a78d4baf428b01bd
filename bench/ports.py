"""Data path: iperf3 across a linkd bridge and through a published port, beside the raw paths.

    sudo .venv/bin/python bench/ports.py [--seconds 3] [--runs 3]

Paths, each an iperf3 TCP run of `--seconds`, interleaved over `--runs` repetitions
(median reported), all on this machine:

- raw veth pair: two namespaces of this benchmark joined by one veth pair, no bridge,
  no nftables table: the ceiling;
- linkd bridge: a client container to a server container of one linkd stack (veth,
  bridge, veth; with br_netfilter loaded, also linkd's forward rules and conntrack);
- published port, hairpin: the same client to the host's address on the bridge
  (the gateway) at the server's published port: DNAT and masquerade in the kernel;
- host direct / host published: the host to the server's address, and to
  127.0.0.1:<published port> (DNAT in output, masquerade).

The stack runs in a daemon of the benchmark's own (bench/common.Linkd: private run
directory); everything is removed at the end. Takes the machine-wide kernel lock unless
bench/run holds it; "the host" is the simulated host the benchmark runs in.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import common

REPO = Path(__file__).resolve().parent.parent
RUN_DIR = Path("/run/lkbench-ports")
STACK = "lkbenchports"
NS_A, NS_B = "lkbench-pv-a", "lkbench-pv-b"
NS_C, NS_D, BRIDGE = "lkbench-pb-c", "lkbench-pb-d", "lkbench-pbr"
NS_E, NS_F, NS_SWITCH = "lkbench-pn-e", "lkbench-pn-f", "lkbench-pn-sw"
RAW = ("198.18.255.1", "198.18.255.2")  # RFC 2544 benchmarking range, /30
PLAIN = ("198.18.255.5", "198.18.255.6")
NO_NF = ("198.18.255.9", "198.18.255.10")
STACK_FILE = """
services:
  server: {command: iperf3 -s -p 5201, ports: ["5201"]}
  client: {command: sleep infinity}
"""


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def iperf(netns: str | None, address: str, port: int, seconds: float) -> float:
    """Gbit/s received, one TCP stream."""
    prefix = ["ip", "netns", "exec", netns] if netns else []
    for attempt in range(20):  # the server may still be starting
        result = subprocess.run([*prefix, "iperf3", "-c", address, "-p", str(port), "-t",
                                 str(seconds), "-J"], capture_output=True, text=True)
        if result.returncode == 0:
            document = json.loads(result.stdout)
            return float(document["end"]["sum_received"]["bits_per_second"]) / 1e9
        time.sleep(0.1 * (attempt + 1))
    raise RuntimeError(f"iperf3 to {address}:{port} failed: {result.stdout[-300:]}")


def raw_pair() -> subprocess.Popen[bytes]:
    sh("ip", "netns", "add", NS_A)
    sh("ip", "netns", "add", NS_B)
    sh("ip", "-n", NS_A, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0",
       "netns", NS_B)
    for ns, address in zip((NS_A, NS_B), RAW, strict=True):
        sh("ip", "-n", ns, "addr", "add", f"{address}/30", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    return subprocess.Popen(["ip", "netns", "exec", NS_B, "iperf3", "-s", "-p", "5201"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def plain_bridge(pair: tuple[str, str], addresses: tuple[str, str],
                 switch: str | None = None) -> subprocess.Popen[bytes]:
    """Two namespaces on a Linux bridge of the benchmark's own, which no linkd rule
    names: in the host's namespace (br_netfilter as the host has it), or in a `switch`
    namespace of the benchmark's own with bridge-nf-call-iptables off there only."""
    at = ["-n", switch] if switch else []
    if switch:
        sh("ip", "netns", "add", switch)
        for key in ("iptables", "ip6tables", "arptables"):
            sh("ip", "netns", "exec", switch, "sysctl", "-qw",
               f"net.bridge.bridge-nf-call-{key}=0")
    sh("ip", *at, "link", "add", BRIDGE, "type", "bridge")
    sh("ip", *at, "link", "set", BRIDGE, "up")
    for i, (ns, address) in enumerate(zip(pair, addresses, strict=True)):
        sh("ip", "netns", "add", ns)
        sh("ip", *at, "link", "add", f"{BRIDGE}{i}", "type", "veth", "peer", "name", "eth0",
           "netns", ns)
        sh("ip", *at, "link", "set", f"{BRIDGE}{i}", "master", BRIDGE, "up")
        sh("ip", "-n", ns, "addr", "add", f"{address}/30", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    return subprocess.Popen(["ip", "netns", "exec", pair[1], "iperf3", "-s", "-p", "5201"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main(args: argparse.Namespace, work: Path, cleanup: contextlib.ExitStack) -> str:
    if shutil.which("iperf3") is None:
        raise common.BenchError("needs iperf3 (Debian iperf3; bench/run installs it)")
    (work / "linkd.yaml").write_text(STACK_FILE)
    linkd = common.Linkd(RUN_DIR)
    cleanup.callback(linkd.stop)  # the daemon takes the stack down, table included
    linkd.start_daemon()

    @cleanup.callback
    def remove_raw_paths() -> None:
        for ns in (NS_A, NS_B, NS_C, NS_D, NS_E, NS_F, NS_SWITCH):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)

    for server in (raw_pair(), plain_bridge((NS_C, NS_D), PLAIN),
                   plain_bridge((NS_E, NS_F), NO_NF, NS_SWITCH)):
        cleanup.callback(common.stop_child, server)
    linkd("up", "-d", "-p", STACK, cwd=work)
    plan = json.loads(linkd("inspect", "-p", STACK))["plan"]
    server = next(c for c in plan["containers"] if c["name"] == "server-1")
    address, gateway = server["interfaces"][0]["address"], server["interfaces"][0]["gateway"]
    published = int(linkd("port", "-p", STACK, "server", "5201").split(":")[1])
    client = f"linkd-{STACK}.client-1"
    nf = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
    host_nf = f"bridge-nf-call-iptables={nf.read_text().strip()}" if nf.exists() \
        else "no br_netfilter"
    paths: dict[str, Callable[[], float]] = {
        "raw veth pair": lambda: iperf(NS_A, RAW[1], 5201, args.seconds),
        "Linux bridge, br_netfilter off": lambda: iperf(NS_E, NO_NF[1], 5201, args.seconds),
        f"Linux bridge in the host's namespace ({host_nf})":
            lambda: iperf(NS_C, PLAIN[1], 5201, args.seconds),
        "linkd bridge (container to container)":
            lambda: iperf(client, address, 5201, args.seconds),
        "published port, hairpin (container to gateway:port)":
            lambda: iperf(client, gateway, published, args.seconds),
        "host to container address": lambda: iperf(None, address, 5201, args.seconds),
        "host to 127.0.0.1:published port":
            lambda: iperf(None, "127.0.0.1", published, args.seconds),
    }
    results: dict[str, list[float]] = {}
    for rep in range(args.runs):
        names = list(paths)
        names = names[rep % len(names):] + names[:rep % len(names)]  # rotate the order
        for name in names:
            results.setdefault(name, []).append(paths[name]())
    median = {name: statistics.median(values) for name, values in results.items()}
    names = list(median)

    def ratio(a: str, b: str) -> str:
        return f"{median[a] / median[b]:.2f}x {b}"

    notes = {
        names[1]: ratio(names[1], names[0]),
        names[2]: ratio(names[2], names[0]),
        names[3]: ratio(names[3], names[0]) + ", " + ratio(names[3], names[2]),
        names[4]: ratio(names[4], names[3]),
        names[6]: ratio(names[6], names[5]),
    }
    lines = [f"Data path: iperf3, one TCP stream, {args.seconds:g} s, median of {args.runs} "
             "interleaved runs (targets: bridge >= 0.95x raw veth; published >= 0.9x direct)",
             "", "| path | Gbit/s | ratio |", "|---|---|---|"]
    lines += [f"| {name} | {median[name]:.1f} | {notes.get(name, '')} |" for name in names]
    return "\n".join(lines)


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=3.0, help="per iperf3 run (default 3)")


if __name__ == "__main__":
    sys.exit(common.part("ports", __doc__ or "", main, runs=3, options=options))
