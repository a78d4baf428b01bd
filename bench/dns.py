"""DNS throughput benchmark: linkd's DnsServer next to dnsmasq, same names, one run.

    sudo env PYTHONPATH=. .venv/bin/python bench/dns.py          # from the repo root, as root

Both servers are pinned to core 1 (`taskset -c 1`), dnsperf to core 0; all traffic is on
127.0.0.1. linkd serves a zone built by `linkd.plan.realize` + `linkd.dns_zone.build_zone`
from a stack of SERVICES services (one replica each, `expose: 8080`) plus a client, with
`requester_override=` the client's address, so every query is answered from its view.
dnsmasq gets the same answers: a hosts file for the A names, `--srv-host` for the SRV names
(targets in the hosts file, so it adds glue as linkd does).

Query mix: 70% A hits (service and container short names: 2 * SERVICES names), 20% SRV hits
(`_8080._tcp.SERVICE`), 10% single-label names that exist nowhere (NXDOMAIN from linkd;
dnsmasq is run with --domain-needed so it answers them NXDOMAIN locally too, instead of
REFUSED for lack of upstreams -- the rcodes each server gave are printed).

Measured per server: queries/s at saturation (`dnsperf -c 10 -q 100 -l SAT_SECONDS`), then
latency at a fixed 1000 qps (`dnsperf -Q 1000 -l LAT_SECONDS -v`: the per-query latencies
printed by -v give avg, p50, p99 and max).

`python bench/dns.py --serve PORT` is the linkd server process (started by the benchmark).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from linkd.dns_zone import Zone, build_zone  # noqa: E402
from linkd.model import Attachment, Network, PortSpec, Service, Stack  # noqa: E402
from linkd.plan import StackPlan, realize  # noqa: E402

SERVICES = 500
SUBNET = IPv4Network("10.200.0.0/22")
CMD = ("sleep", "60")
SERVER_CORE = "1"
CLIENT_CORE = "0"
SAT_SECONDS = 10
LAT_SECONDS = 10
FIXED_QPS = 1000
QUERIES = 10_000  # lines in the query file (dnsperf loops over it)
TARGET_RATIO = 1.5


def stack() -> Stack:
    services = tuple(
        Service(
            f"svc{i}",
            command=CMD,
            networks=(Attachment("net"),),
            expose=(PortSpec(8080, 8080),),
        )
        for i in range(SERVICES)
    )
    client = Service("client", command=CMD, networks=(Attachment("net"),))
    return Stack("bench", (*services, client), (Network("net"),))


def make_zone() -> tuple[StackPlan, Zone, IPv4Address]:
    plan = realize(stack(), {"net": SUBNET})
    zone = build_zone([plan])
    client = plan.container("client-1").interfaces[0].address
    assert client is not None
    return plan, zone, client


# -- the linkd server process ------------------------------------------------------------------


def serve(port: int) -> None:
    from linkd.runtime.dns_server import DnsServer

    _, zone, client = make_zone()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("127.0.0.1", port))
    sock.setblocking(False)
    server = DnsServer(zone)
    print("ready", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(server.serve_udp(sock, requester_override=client))


# -- the benchmark -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_udp(port: int, timeout: float = 20.0) -> None:
    """Until the server on `port` answers one query (a raw A query for svc0)."""
    query = (
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
        + b"\x04svc0\x00\x00\x01\x00\x01"
    )
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        while time.monotonic() < deadline:
            try:
                s.sendto(query, ("127.0.0.1", port))
                s.recvfrom(4096)
                return
            except OSError:
                time.sleep(0.1)
    raise RuntimeError(f"no DNS server answering on 127.0.0.1:{port}")


def write_inputs(plan: StackPlan, tmp: Path) -> tuple[Path, Path, list[str]]:
    """The query file, dnsmasq's hosts file, and its --srv-host options."""
    a_names: list[str] = []
    srv_names: list[str] = []
    hosts: list[str] = []
    srv_opts: list[str] = []
    for c in plan.containers:
        if c.service == "client":
            continue
        iface = c.interfaces[0]
        target = f"{c.name}.{iface.network}.{plan.stack}.linkd"
        hosts.append(f"{iface.address} {c.service} {c.name} {target}")
        a_names += [c.service, c.name]
        srv = f"_8080._tcp.{c.service}"
        srv_names.append(srv)
        srv_opts.append(f"--srv-host={srv},{target},8080")
    rng = random.Random(1)
    lines = []
    for i in range(QUERIES):
        r = i % 10
        if r < 7:
            lines.append(f"{rng.choice(a_names)} A")
        elif r < 9:
            lines.append(f"{rng.choice(srv_names)} SRV")
        else:
            lines.append(f"nx{rng.randrange(10**6)} A")
    rng.shuffle(lines)
    queries = tmp / "queries.txt"
    queries.write_text("\n".join(lines) + "\n")
    hostsfile = tmp / "hosts"
    hostsfile.write_text("\n".join(hosts) + "\n")
    print(f"names: {len(a_names)} A, {len(srv_names)} SRV; query file {QUERIES} lines "
          "(70% A, 20% SRV, 10% nonexistent)", file=sys.stderr)
    return queries, hostsfile, srv_opts


def dnsperf(port: int, queries: Path, args: list[str], tmp: Path) -> str:
    out = tmp / "dnsperf.out"
    with out.open("w") as f:
        subprocess.run(
            ["taskset", "-c", CLIENT_CORE, "dnsperf", "-s", "127.0.0.1", "-p", str(port),
             "-d", str(queries), *args],
            stdout=f, stderr=subprocess.STDOUT, check=True,
        )
    return out.read_text()


def parse_summary(text: str) -> dict[str, object]:
    def grab(pattern: str) -> float:
        m = re.search(pattern, text)
        return float(m.group(1)) if m else float("nan")

    rcodes = {}
    m = re.search(r"Response codes:\s*(.*)", text)
    if m:
        for code, n in re.findall(r"(\w+) (\d+)", m.group(1)):
            rcodes[code] = int(n)
    return {
        "qps": grab(r"Queries per second:\s*([\d.]+)"),
        "lost": grab(r"Queries lost:\s*(\d+)"),
        "sent": grab(r"Queries sent:\s*(\d+)"),
        "avg": grab(r"Average Latency \(s\):\s*([\d.]+)") * 1000,
        "max": grab(r"Average Latency \(s\):.*max ([\d.]+)") * 1000,
        "rcodes": rcodes,
    }


def per_query_latencies(text: str) -> list[float]:
    # -v lines: "> NOERROR svc1 A 0.000123"
    return [float(m.group(1)) * 1000 for m in re.finditer(r"^> \S+ .* ([\d.]+)$", text, re.M)]


def measure(name: str, port: int, queries: Path, tmp: Path) -> dict[str, object]:
    print(f"[{name}] saturation, {SAT_SECONDS}s ...", file=sys.stderr)
    sat = parse_summary(dnsperf(port, queries, ["-c", "10", "-q", "100", "-l", str(SAT_SECONDS)],
                                tmp))
    print(f"[{name}] fixed {FIXED_QPS} qps, {LAT_SECONDS}s ...", file=sys.stderr)
    text = dnsperf(port, queries, ["-Q", str(FIXED_QPS), "-l", str(LAT_SECONDS), "-v"], tmp)
    fixed = parse_summary(text)
    lat = sorted(per_query_latencies(text))
    if lat:
        fixed["p50"] = statistics.median(lat)
        fixed["p99"] = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        fixed["avg_v"] = statistics.fmean(lat)
    return {"sat": sat, "fixed": fixed}


def start_linkd(port: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        ["taskset", "-c", SERVER_CORE, sys.executable, str(Path(__file__).resolve()),
         "--serve", str(port)],
        env=env, stdout=subprocess.DEVNULL,
    )


def start_dnsmasq(port: int, hostsfile: Path, srv_opts: list[str]) -> subprocess.Popen[bytes]:
    dnsmasq = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    return subprocess.Popen(
        ["taskset", "-c", SERVER_CORE, dnsmasq, "--no-daemon", f"--port={port}",
         "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
         "--conf-file=/dev/null", f"--addn-hosts={hostsfile}", "--domain-needed",
         "--cache-size=10000", "--dns-forward-max=1000", "--user=root", "--group=root",
         "--pid-file=", "--log-facility=-", "--quiet-dhcp", *srv_opts],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def fmt_rcodes(r: object) -> str:
    assert isinstance(r, dict)
    total = sum(r.values()) or 1
    return ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in r.items())


def main() -> int:
    if shutil.which("dnsperf") is None or not (shutil.which("dnsmasq") or
                                               Path("/usr/sbin/dnsmasq").exists()):
        print("needs dnsperf and dnsmasq: apt-get install -y dnsperf dnsmasq-base",
              file=sys.stderr)
        return 2
    plan, _, _ = make_zone()
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="linkd-dnsbench-") as d:
        tmp = Path(d)
        queries, hostsfile, srv_opts = write_inputs(plan, tmp)
        for name, start in (
            ("linkd", lambda p: start_linkd(p)),
            ("dnsmasq", lambda p: start_dnsmasq(p, hostsfile, srv_opts)),
        ):
            port = free_port()
            proc = start(port)
            try:
                wait_udp(port)
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}")
                results[name] = measure(name, port, queries, tmp)
            finally:
                stop(proc)

    def get(server: str, phase: str, key: str) -> float:
        v = results[server][phase]
        assert isinstance(v, dict)
        return float(v.get(key, float("nan")))

    print()
    print(f"DNS, {2 * SERVICES} A + {SERVICES} SRV names, query mix 70% A / 20% SRV / 10% "
          f"NXDOMAIN; servers on core {SERVER_CORE}, dnsperf on core {CLIENT_CORE}, UDP loopback")
    print()
    print(f"| server | qps at saturation (-c 10 -q 100, {SAT_SECONDS}s) | lost | "
          f"avg ms @ {FIXED_QPS} qps | p50 ms | p99 ms | max ms | "
          "qps ratio linkd/dnsmasq | rcodes |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    base = get("dnsmasq", "sat", "qps")
    for server in ("linkd", "dnsmasq"):
        qps = get(server, "sat", "qps")
        ratio = qps / base if base else float("nan")
        print(
            f"| {server} | {qps:,.0f} | {get(server, 'sat', 'lost'):.0f} | "
            f"{get(server, 'fixed', 'avg'):.3f} | {get(server, 'fixed', 'p50'):.3f} | "
            f"{get(server, 'fixed', 'p99'):.3f} | {get(server, 'fixed', 'max'):.3f} | "
            f"{ratio:.2f}x | {fmt_rcodes(results[server]['sat']['rcodes'])} |"  # type: ignore[index]
        )
    ratio = get("linkd", "sat", "qps") / base if base else float("nan")
    verdict = "meets" if ratio >= TARGET_RATIO else "misses"
    print()
    print(f"linkd/dnsmasq qps ratio {ratio:.2f}x ({verdict} the {TARGET_RATIO}x target)")
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--serve", type=int, metavar="PORT", help="run the linkd server only")
    ns = ap.parse_args()
    if ns.serve is not None:
        serve(ns.serve)
        sys.exit(0)
    sys.exit(main())
