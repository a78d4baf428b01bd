"""DNS throughput benchmark: linkd's DnsServer, dnsmasq and aardvark-dns, same names, one run.

    sudo env PYTHONPATH=. .venv/bin/python bench/dns.py    # from the repo root, as root
    sudo bench/run dns                                     # the same, through the entry command

Where it runs: in a network namespace of its own, `lkbench-dns`, with only `lo` (up) and
two addresses on it: the network's gateway (aardvark-dns listens there, as under Podman)
and the client container's address (dnsperf's source for aardvark-dns). The namespace has
no route beyond its own addresses, so nothing any server does (aardvark-dns forwards what
it does not know) can leave it. linkd and dnsmasq listen on 127.0.0.1 inside it, as before.
Every server is pinned to core 1 (`taskset -c 1`), dnsperf to core 0. The namespace and
every process are removed in `finally` (also on Ctrl-C and SIGTERM); processes are
stopped by PID. The run holds /run/lock/linkd-kernel.lock (as bench/run and the
integration tests do): it waits for, and never overlaps, another run.

The names: `linkd.core.plan.realize` + `linkd.dns.zone.build_zone` from a stack of SERVICES
services (one replica each, `expose: 8080`) plus a client, in 10.200.0.0/22.
- linkd serves that zone with `requester_override=` the client's address (the way it
  serves 127.0.0.11 inside a container), so every query is answered from its view.
- dnsmasq gets the same answers: a hosts file for the A names, `--srv-host` for the SRV
  names (targets in the hosts file, so it adds glue as linkd does), `--domain-needed` so it
  answers single-label misses NXDOMAIN locally instead of REFUSED for lack of upstreams.
- aardvark-dns gets one network file as netavark writes it: line 1 the gateway (its listen
  address) and, as the network's DNS server, 127.0.0.1 (inside the namespace; nothing
  listens on its port 53, so the forwards it makes die there instead of going to the
  host's resolver), then one line per container: id, IPv4, no IPv6, `name,service,shortid`.
  It answers by the query's source address, so dnsperf sends from the client's address.
  It has no SRV records (Podman has none): it forwards SRV queries upstream and, the
  upstream being unreachable, never answers them. Hence two query mixes.

Query mixes (one query file each; dnsperf loops over it):
- mixed: the issue's mix, 70% A hits (service and container short names, 2 * SERVICES
  names), 20% SRV hits (`_8080._tcp.SERVICE`), 10% single-label names that exist nowhere;
- A only: the same file without its SRV lines (7 A hits : 1 nonexistent name).

Measured per server and mix: queries/s at saturation, the median of SAT_REPS runs of
`dnsperf -c 10 -q 100 -t 1 -l SAT_SECONDS`, with the CPU time of dnsperf and of the server
and how busy both cores were (a run where the cores did much else is marked: another
process ran on the pinned cores), then latency at a fixed
1000 qps (`dnsperf -Q 1000 -q 500 -t 1 -l LAT_SECONDS -v`: the per-query latencies printed
by -v give p50 and p99). Before measuring, each server is asked a few questions by this
script (from inside the namespace) and must answer the A names NOERROR with the right
address; what each answered is printed under the table.

`python bench/dns.py --serve PORT` is the linkd server process (started by the benchmark).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import datetime as dt
import fcntl
import hashlib
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from linkd.core.model import Attachment, Network, PortSpec, Service, Stack  # noqa: E402
from linkd.core.plan import StackPlan, realize  # noqa: E402
from linkd.dns.snapshot import Zone  # noqa: E402
from linkd.dns.zone import build_zone  # noqa: E402

SERVICES = 500
SUBNET = IPv4Network("10.200.0.0/22")
CMD = ("sleep", "60")
SERVER_CORE = "1"
CLIENT_CORE = "0"
SAT_SECONDS = 5
SAT_REPS = 3  # saturation runs per server and mix; the table shows the median one
OTHER_LOAD = 10  # % of a core busy beyond the measured processes: the run was disturbed
SAT_RETRIES = 3  # a disturbed saturation run is done again, at most this many times
LAT_SECONDS = 10
FIXED_QPS = 1000
TIMEOUT = 1  # dnsperf -t: a local server that has not answered in 1 s never will
QUERIES = 10_000  # lines in the query file (dnsperf loops over it)
TARGET_RATIO = 1.5
TARGET_P99_MS = 2.0

NETNS = "lkbench-dns"
PORT = 5300  # every server, one after the other, in NETNS; aardvark's upstream is :53
LOOPBACK = "127.0.0.1"
KERNEL_LOCK = "/run/lock/linkd-kernel.lock"
LOCK_FD_ENV = "LINKD_KERNEL_LOCK_FD"  # set by bench/run, which holds the lock on that fd
AARDVARK = "/usr/lib/podman/aardvark-dns"
SERVERS = ("linkd", "dnsmasq", "aardvark-dns")
MIXES = ("mixed", "A only")
RESULTS = Path(__file__).resolve().parent / "results" / "dns.md"


class BenchError(Exception):
    pass


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
    from linkd.runtime.stack.dns_server import DnsServer

    _, zone, client = make_zone()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((LOOPBACK, port))
    sock.setblocking(False)
    server = DnsServer(zone)
    print("ready", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(server.serve_udp(sock, requester_override=client))


# -- the machine: lock, namespace, processes ---------------------------------------------------


@contextlib.contextmanager
def kernel_lock() -> Iterator[None]:
    """Hold the machine-wide lock bench/run and the integration tests take.

    Under bench/run the lock is already held on an inherited descriptor (LOCK_FD_ENV);
    flock on that same open file is then a no-op, where opening the file again and
    locking it would wait for ourselves forever.
    """
    inherited = os.environ.get(LOCK_FD_ENV)
    fd = int(inherited) if inherited else os.open(KERNEL_LOCK, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for {KERNEL_LOCK} (a test or benchmark run holds it) ...",
                  file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        if not inherited:
            os.close(fd)


def ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], check=check, stdout=subprocess.DEVNULL,
                   stderr=None if check else subprocess.DEVNULL)


def netns_exists() -> bool:
    return Path("/run/netns", NETNS).exists()


def create_netns(addresses: Sequence[IPv4Address]) -> None:
    if netns_exists():  # left by a run that was killed (SIGKILL): ours by its name
        ip("netns", "delete", NETNS)
    ip("netns", "add", NETNS)
    ip("-n", NETNS, "link", "set", "lo", "up")
    for address in addresses:
        ip("-n", NETNS, "addr", "add", f"{address}/32", "dev", "lo")


def delete_netns() -> None:
    if netns_exists():
        ip("netns", "delete", NETNS, check=False)


def in_netns(*argv: str, core: str) -> list[str]:
    return ["ip", "netns", "exec", NETNS, "taskset", "-c", core, *argv]


CLONE_NEWNET = 0x40000000


def netns_udp_socket() -> socket.socket:
    """A UDP socket that lives in NETNS (this thread enters it only to create it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open("/proc/self/ns/net", "rb") as own, open(f"/run/netns/{NETNS}", "rb") as target:
        if libc.setns(target.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {NETNS}")
        try:
            return socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        finally:
            if libc.setns(own.fileno(), CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to our own namespace")


class Server:
    """One running server; stop() ends exactly the process(es) it started, by PID."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc

    def alive(self) -> bool:
        return self.proc.poll() is None

    def server_pid(self) -> int | None:
        return self.proc.pid  # `ip netns exec` and `taskset` exec: the same process

    def cpu_seconds(self) -> float:
        """User + system time of the server process so far (all its threads)."""
        pid = self.server_pid()
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Aardvark(Server):
    """aardvark-dns forks and its parent exits once the child serves (setsid, no
    foreground mode in 1.4): the server is the child, whose PID it writes to
    CONFIG/aardvark.pid."""

    def __init__(self, proc: subprocess.Popen[bytes], config: Path) -> None:
        super().__init__(proc)
        self.config = config
        self.pid: int | None = None

    def started(self, timeout: float = 10.0) -> None:
        try:
            code = self.proc.wait(timeout)
        finally:
            self._read_pid()
        if code != 0 or self.pid is None:
            raise BenchError(f"aardvark-dns run exited with {code} (pid file: {self.pid})")

    def _read_pid(self) -> None:
        pidfile = self.config / "aardvark.pid"
        with contextlib.suppress(OSError, ValueError):
            pid = int(pidfile.read_text().strip())
            # Ours: an aardvark-dns with our config directory on its command line.
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if str(self.config).encode() in cmdline:
                self.pid = pid

    def alive(self) -> bool:
        return self.pid is not None and Path(f"/proc/{self.pid}").exists()

    def server_pid(self) -> int | None:
        return self.pid

    def stop(self) -> None:
        super().stop()  # the parent: normally long gone
        if self.pid is None:
            self._read_pid()  # interrupted before started() read it
        if self.pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.alive():
                os.kill(self.pid, signal.SIGKILL)
        # Not our child (it was reparented): nobody reaps it but init; wait until gone.
        deadline = time.monotonic() + 5
        while self._exists_as_ours() and time.monotonic() < deadline:
            time.sleep(0.05)

    def _exists_as_ours(self) -> bool:
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] != "Z"


# -- inputs ------------------------------------------------------------------------------------


@dataclass
class Inputs:
    queries: dict[str, Path]  # per mix
    hostsfile: Path
    srv_opts: list[str]
    aardvark_config: Path
    gateway: IPv4Address
    client: IPv4Address
    a_check: tuple[str, IPv4Address]  # a service name and its address
    srv_check: str
    counts: dict[str, int] = field(default_factory=dict)


def write_inputs(plan: StackPlan, client: IPv4Address, tmp: Path) -> Inputs:
    """The query files, dnsmasq's hosts file and --srv-host options, aardvark's config."""
    a_names: list[str] = []
    srv_names: list[str] = []
    hosts: list[str] = []
    srv_opts: list[str] = []
    (network,) = plan.networks
    assert network.gateway is not None
    aardvark = [f"{network.gateway} {LOOPBACK}"]
    for c in plan.containers:
        iface = c.interfaces[0]
        cid = hashlib.sha256(c.name.encode()).hexdigest()
        aardvark.append(f"{cid} {iface.address}  {c.name},{c.service},{cid[:12]}")
        if c.service == "client":
            continue
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
    queries = {"mixed": tmp / "queries-mixed.txt", "A only": tmp / "queries-a.txt"}
    queries["mixed"].write_text("\n".join(lines) + "\n")
    queries["A only"].write_text("\n".join(x for x in lines if not x.endswith(" SRV")) + "\n")
    hostsfile = tmp / "hosts"
    hostsfile.write_text("\n".join(hosts) + "\n")
    config = tmp / "aardvark"
    config.mkdir()
    (config / network.name).write_text("\n".join(aardvark) + "\n")
    svc0 = plan.container("svc0-1").interfaces[0].address
    assert svc0 is not None
    print(f"names: {len(a_names)} A, {len(srv_names)} SRV; query file {QUERIES} lines "
          "(70% A, 20% SRV, 10% nonexistent; the A-only file drops the SRV lines)",
          file=sys.stderr)
    return Inputs(queries, hostsfile, srv_opts, config, network.gateway, client,
                  ("svc0", svc0), "_8080._tcp.svc0",
                  {"a": len(a_names), "srv": len(srv_names)})


# -- asking a server ourselves -----------------------------------------------------------------

RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
QTYPES = {"A": 1, "SRV": 33}


def encode_query(qid: int, name: str, qtype: str) -> bytes:
    labels = b"".join(bytes([len(x)]) + x.encode() for x in name.split(".") if x)
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\0" + struct.pack(
        "!HH", QTYPES[qtype], 1)


def decode_name(msg: bytes, pos: int) -> tuple[str, int]:
    """The name at `pos` (following compression pointers) and the offset after it."""
    labels: list[str] = []
    end = -1
    for _ in range(128):
        length = msg[pos]
        if length & 0xC0 == 0xC0:
            if end < 0:
                end = pos + 2
            pos = ((length & 0x3F) << 8) | msg[pos + 1]
        elif length == 0:
            return ".".join(labels), end if end >= 0 else pos + 1
        else:
            labels.append(msg[pos + 1:pos + 1 + length].decode(errors="replace"))
            pos += 1 + length
    raise ValueError("name compression loop")


def decode_answers(msg: bytes) -> tuple[str, list[str]]:
    """The rcode and the answer section (A: the address; SRV: `port target`)."""
    _, flags, qd, an = struct.unpack("!HHHH", msg[:8])
    rcode = RCODES.get(flags & 0xF, str(flags & 0xF))
    pos = 12
    for _ in range(qd):
        pos = decode_name(msg, pos)[1] + 4
    answers = []
    for _ in range(an):
        pos = decode_name(msg, pos)[1]
        rtype, _cls, _ttl, rdlength = struct.unpack("!HHIH", msg[pos:pos + 10])
        rdata = pos + 10
        if rtype == 1:
            answers.append(str(IPv4Address(msg[rdata:rdata + 4])))
        elif rtype == 33:
            port = struct.unpack("!H", msg[rdata + 4:rdata + 6])[0]
            answers.append(f"{port} {decode_name(msg, rdata + 6)[0]}")
        else:
            answers.append(f"type {rtype}")
        pos = rdata + rdlength
    return rcode, answers


def ask(server: str, port: int, source: str | None, name: str, qtype: str,
        timeout: float = 0.5) -> tuple[str, list[str]]:
    """One query from inside NETNS: (rcode, answers), or ("no answer", [])."""
    qid = random.randrange(1 << 16)
    with netns_udp_socket() as s:
        s.settimeout(timeout)
        if source:
            s.bind((source, 0))
        s.sendto(encode_query(qid, name, qtype), (server, port))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data, _ = s.recvfrom(4096)
            except TimeoutError:
                break
            if len(data) >= 12 and struct.unpack("!H", data[:2])[0] == qid:
                return decode_answers(data)
    return "no answer", []


# -- dnsperf -----------------------------------------------------------------------------------


def cpu_times() -> dict[str, tuple[int, int]]:
    """Per core: (busy, total) jiffies from /proc/stat."""
    times = {}
    for line in Path("/proc/stat").read_text().splitlines():
        m = re.match(r"cpu(\d+) (.*)", line)
        if m:
            v = [int(x) for x in m.group(2).split()]
            idle = v[3] + v[4]
            times[m.group(1)] = (sum(v[:8]) - idle, sum(v[:8]))
    return times


def busy_share(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]],
               core: str) -> float:
    busy = after[core][0] - before[core][0]
    total = after[core][1] - before[core][1]
    return 100 * busy / total if total else float("nan")


def wait_quiet(timeout: float = 30.0, window: float = 0.5, idle_below: float = 5.0) -> float:
    """Until both pinned cores are idle for a window (what a previous run started -- the
    kernel's namespace clean-up, a server's exit -- has settled); the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = cpu_times()
        time.sleep(window)
        after = cpu_times()
        if all(busy_share(before, after, core) < idle_below
               for core in (CLIENT_CORE, SERVER_CORE)):
            break
    return time.monotonic() - started


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def dnsperf(target: Target, queries: Path, args: list[str], tmp: Path) -> str:
    """Run dnsperf to the end; its output. (The only child reaped meanwhile: its CPU time
    is the change in RUSAGE_CHILDREN across this call.)"""
    out = tmp / "dnsperf.out"
    source = ["-a", target.source] if target.source else []
    with out.open("w") as f:
        subprocess.run(
            in_netns("dnsperf", "-s", target.address, "-p", str(PORT), *source,
                     "-d", str(queries), "-t", str(TIMEOUT), *args, core=CLIENT_CORE),
            stdout=f, stderr=subprocess.STDOUT, check=True,
        )
    return out.read_text()


@dataclass
class Run:
    qps: float = float("nan")
    sent: int = 0
    lost: int = 0
    avg: float = float("nan")  # ms
    max: float = float("nan")
    p50: float = float("nan")
    p99: float = float("nan")
    rcodes: dict[str, int] = field(default_factory=dict)
    client_busy: float = float("nan")  # % of core CLIENT_CORE busy during the run
    server_busy: float = float("nan")
    client_cpu: float = float("nan")  # dnsperf's CPU time ÷ wall time, %
    server_cpu: float = float("nan")  # the server process's
    all_qps: list[float] = field(default_factory=list)  # every saturation run's, sorted
    retries: int = 0  # saturation runs done again because other work took the cores

    def other_load(self) -> float:
        """How much of the two cores went to something else than dnsperf and the server
        (softirq, which /proc/stat counts apart, adds a few points)."""
        return max(self.client_busy - self.client_cpu, self.server_busy - self.server_cpu)


def parse_summary(text: str) -> Run:
    def grab(pattern: str) -> float:
        m = re.search(pattern, text)
        return float(m.group(1)) if m else float("nan")

    def count(pattern: str) -> int:
        m = re.search(pattern, text)
        return int(m.group(1)) if m else 0

    run = Run(
        qps=grab(r"Queries per second:\s*([\d.]+)"),
        sent=count(r"Queries sent:\s*(\d+)"),
        lost=count(r"Queries lost:\s*(\d+)"),
        avg=grab(r"Average Latency \(s\):\s*([\d.]+)") * 1000,
        max=grab(r"Average Latency \(s\):.*max ([\d.]+)") * 1000,
    )
    m = re.search(r"Response codes:\s*(.*)", text)
    if m:
        for code, n in re.findall(r"(\w+) (\d+)", m.group(1)):
            run.rcodes[code] = int(n)
    return run


def per_query_latencies(text: str) -> list[float]:
    # -v lines: "> NOERROR svc1 A 0.000123" (a lost query: "> T svc1 A", no latency)
    return [float(m.group(1)) * 1000 for m in re.finditer(r"^> \S+ .* ([\d.]+)$", text, re.M)]


def saturate(target: Target, server: Server, queries: Path, tmp: Path) -> Run:
    before = cpu_times()
    client0, server0, wall0 = children_cpu(), server.cpu_seconds(), time.monotonic()
    sat = parse_summary(dnsperf(target, queries,
                                ["-c", "10", "-q", "100", "-l", str(SAT_SECONDS)], tmp))
    client1, server1, wall1 = children_cpu(), server.cpu_seconds(), time.monotonic()
    after = cpu_times()
    sat.client_busy = busy_share(before, after, CLIENT_CORE)
    sat.server_busy = busy_share(before, after, SERVER_CORE)
    sat.client_cpu = 100 * (client1 - client0) / (wall1 - wall0)
    sat.server_cpu = 100 * (server1 - server0) / (wall1 - wall0)
    return sat


def measure(target: Target, server: Server, mix: str, queries: Path,
            tmp: Path) -> tuple[Run, Run]:
    tag = f"[{target.name}, {mix}]"
    runs = []
    retries = 0
    for i in range(SAT_REPS):
        print(f"{tag} saturation {i + 1}/{SAT_REPS}, {SAT_SECONDS}s ...", file=sys.stderr,
              flush=True)
        run = saturate(target, server, queries, tmp)
        for _ in range(SAT_RETRIES):  # another process took the pinned cores: again
            if run.other_load() <= OTHER_LOAD:
                break
            print(f"{tag} {run.other_load():.0f}% of a core went elsewhere: again",
                  file=sys.stderr, flush=True)
            retries += 1
            wait_quiet()
            run = saturate(target, server, queries, tmp)
        runs.append(run)
    runs.sort(key=lambda r: r.qps)
    sat = runs[len(runs) // 2]
    sat.all_qps = [r.qps for r in runs]
    sat.retries = retries
    print(f"{tag} qps {', '.join(f'{q:,.0f}' for q in sat.all_qps)}", file=sys.stderr)
    print(f"{tag} fixed {FIXED_QPS} qps, {LAT_SECONDS}s ...", file=sys.stderr, flush=True)
    text = dnsperf(target, queries,
                   ["-Q", str(FIXED_QPS), "-q", "500", "-l", str(LAT_SECONDS), "-v"], tmp)
    fixed = parse_summary(text)
    lat = sorted(per_query_latencies(text))
    if lat:
        fixed.p50 = statistics.median(lat)
        fixed.p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    return sat, fixed


# -- the servers -------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    address: str  # where it listens (in NETNS), port PORT
    source: str | None  # dnsperf's source address, when the server cares
    start: Callable[[], Server]
    checks: list[str] = field(default_factory=list)


def start_linkd() -> Server:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return Server(subprocess.Popen(
        in_netns(sys.executable, str(Path(__file__).resolve()), "--serve", str(PORT),
                 core=SERVER_CORE),
        env=env, stdout=subprocess.DEVNULL,
    ))


def start_dnsmasq(inputs: Inputs) -> Server:
    dnsmasq = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    return Server(subprocess.Popen(
        in_netns(dnsmasq, "--no-daemon", f"--port={PORT}", f"--listen-address={LOOPBACK}",
                 "--bind-interfaces", "--no-resolv", "--no-hosts", "--conf-file=/dev/null",
                 f"--addn-hosts={inputs.hostsfile}", "--domain-needed", "--cache-size=10000",
                 "--dns-forward-max=1000", "--user=root", "--group=root", "--pid-file=",
                 "--log-facility=-", "--quiet-dhcp", *inputs.srv_opts, core=SERVER_CORE),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    ))


def start_aardvark(inputs: Inputs) -> Server:
    # stderr: it logs to syslog, and says so on stderr when there is none.
    server = Aardvark(subprocess.Popen(
        in_netns(AARDVARK, "--config", str(inputs.aardvark_config), "-p", str(PORT), "run",
                 core=SERVER_CORE),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    ), inputs.aardvark_config)
    server.started()
    return server


def targets(inputs: Inputs) -> dict[str, Target]:
    return {
        "linkd": Target("linkd", LOOPBACK, None, start_linkd),
        "dnsmasq": Target("dnsmasq", LOOPBACK, None, lambda: start_dnsmasq(inputs)),
        "aardvark-dns": Target("aardvark-dns", str(inputs.gateway), str(inputs.client),
                               lambda: start_aardvark(inputs)),
    }


def wait_ready(target: Target, inputs: Inputs, server: Server, timeout: float = 20.0) -> None:
    """Until it answers; then check the answers: A right, what SRV and misses give."""
    name, address = inputs.a_check
    deadline = time.monotonic() + timeout
    while True:
        if not server.alive():
            raise BenchError(f"{target.name} exited before answering")
        got = ask(target.address, PORT, target.source, name, "A", timeout=0.2)
        if got[0] != "no answer":
            break
        if time.monotonic() > deadline:
            raise BenchError(f"{target.name}: no answer on {target.address}:{PORT} in {NETNS}")
    target.checks.clear()
    for qname, qtype in ((name, "A"), (f"{name}-1", "A"), (inputs.srv_check, "SRV"),
                         ("nx1", "A")):
        rcode, answers = ask(target.address, PORT, target.source, qname, qtype)
        target.checks.append(f"`{qname} {qtype}` → {rcode}"
                             + (f" {', '.join(answers)}" if answers else ""))
        if qtype == "A" and not qname.startswith("nx") and (
                rcode != "NOERROR" or answers != [str(address)]):
            raise BenchError(f"{target.name}: {qname} A gave {rcode} {answers}, "
                             f"expected NOERROR {address}")
    print(f"[{target.name}] " + "; ".join(target.checks), file=sys.stderr, flush=True)


# -- the report --------------------------------------------------------------------------------


def fmt_rcodes(run: Run) -> str:
    answered = sum(run.rcodes.values())
    total = answered + run.lost
    if not total:
        return "-"
    parts = [f"{k} {100 * v / total:.0f}%" for k, v in run.rcodes.items()]
    if run.lost:
        parts.append(f"no answer {100 * run.lost / total:.0f}%")
    return ", ".join(parts)


def fmt_ms(v: float) -> str:
    return f"{v:.3f}" if v < 10 else f"{v:.0f}"


def versions() -> str:
    def dpkg(pkg: str) -> str:
        got = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", pkg],
                             capture_output=True, text=True, check=False)
        return got.stdout.strip() or "?"

    return ", ".join(f"{p} {dpkg(p)}" for p in ("dnsperf", "dnsmasq-base", "aardvark-dns")) \
        + f", python {platform.python_version()}"


def render(results: dict[str, dict[str, tuple[Run, Run]]], found: dict[str, Target],
           inputs: Inputs, command: str, elapsed: float) -> str:
    lines = [
        "## DNS",
        "",
        f"- command: `{command}` (as root, from the repository root); "
        f"{dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}; run took {elapsed:.0f} s",
        f"- machine: `nproc` = {os.cpu_count()}; kernel {platform.release()}; {versions()}",
        f"- {inputs.counts['a']} A names + {inputs.counts['srv']} SRV names ({SERVICES}"
        " services with `expose: 8080`, plus a client); servers pinned to core"
        f" {SERVER_CORE}, dnsperf to core {CLIENT_CORE}; UDP inside network namespace"
        f" `{NETNS}` (lo only)",
        "",
    ]
    for mix in MIXES:
        servers = [s for s in SERVERS if mix in results.get(s, {})]
        if not servers:
            continue
        title = ("mixed: 70% A / 20% SRV / 10% nonexistent (the issue's mix)" if mix == "mixed"
                 else "A only: the same queries without the SRV ones (87.5% A / 12.5%"
                 " nonexistent)")
        lines += [
            f"### {title}",
            "",
            f"| server | qps at saturation (median of {SAT_REPS} runs of {SAT_SECONDS} s) | lost | "
            f"avg / p50 / p99 / max ms @ {FIXED_QPS} qps | lost @ {FIXED_QPS} qps | "
            "qps ÷ dnsmasq | rcodes (saturation) | CPU dnsperf / server (core 0 / 1 busy) |",
            "|---|---:|---:|---|---:|---:|---|---|",
        ]
        base = results["dnsmasq"][mix][0].qps if "dnsmasq" in servers else float("nan")
        for s in servers:
            sat, fixed = results[s][mix]
            ratio = f"{sat.qps / base:.2f}x" if base == base and base > 0 else "-"
            mark = "²" if sat.other_load() > OTHER_LOAD else ""
            lines.append(
                f"| {s} | {sat.qps:,.0f}{mark} | {sat.lost:,} | {fmt_ms(fixed.avg)} / "
                f"{fmt_ms(fixed.p50)} / {fmt_ms(fixed.p99)} / {fmt_ms(fixed.max)} | "
                f"{fixed.lost:,} | {ratio} | {fmt_rcodes(sat)} | "
                f"{sat.client_cpu:.0f}% / {sat.server_cpu:.0f}% ({sat.client_busy:.0f}% /"
                f" {sat.server_busy:.0f}%) |")
        lines.append("")
    lines += verdicts(results)
    lines += ["", "Notes:", ""]
    lines += [f"- {note}" for note in notes(results, found)]
    return "\n".join(lines) + "\n"


def verdicts(results: dict[str, dict[str, tuple[Run, Run]]]) -> list[str]:
    got = []
    for mix in MIXES:
        if mix not in results.get("linkd", {}):
            continue
        sat, fixed = results["linkd"][mix]
        parts = []
        if mix in results.get("dnsmasq", {}):
            ratio = sat.qps / results["dnsmasq"][mix][0].qps
            if mix == "mixed":  # the target is set on the mix
                judged = f"{'meets' if ratio >= TARGET_RATIO else 'misses'} the ≥" \
                    f" {TARGET_RATIO}x target"
            else:
                judged = f"for information: the ≥ {TARGET_RATIO}x target is on the mixed run"
            parts.append(f"qps {ratio:.2f}x dnsmasq's ({judged})")
        p99_ok = fixed.p99 <= TARGET_P99_MS
        parts.append(f"p99 {fixed.p99:.3f} ms at {FIXED_QPS} qps "
                     f"({'meets' if p99_ok else 'misses'} the ≤ {TARGET_P99_MS:g} ms target)")
        got.append(f"**Verdict, {mix}:** linkd " + "; ".join(parts) + ".")
    return got


def notes(results: dict[str, dict[str, tuple[Run, Run]]], found: dict[str, Target]) -> list[str]:
    lines = [
        f"qps at saturation: the median of {SAT_REPS} runs of"
        f" `dnsperf -c 10 -q 100 -t {TIMEOUT} -l {SAT_SECONDS}` (lost, rcodes and CPU from"
        f" that run; all runs: {all_runs(results)}; a run during which more than"
        f" {OTHER_LOAD}% of a pinned core went to other processes is done again, up to"
        f" {SAT_RETRIES} times); latency:"
        f" `dnsperf -Q {FIXED_QPS} -q 500 -t {TIMEOUT} -l {LAT_SECONDS} -v`, p50/p99 from"
        " the per-query latencies of answered queries, avg/max from dnsperf's summary."
        " \"lost\" = no answer within"
        f" {TIMEOUT} s. rcodes are shares of the queries sent, \"no answer\" included.",
        "CPU, during the saturation run: each process's user + system time ÷ wall time"
        " (dnsperf's from RUSAGE_CHILDREN, the server's from /proc/PID/stat), and in"
        " parentheses how busy cores 0 and 1 were (/proc/stat, softirq included: a loopback"
        " datagram is received on the sender's core, so core 0 also carries the kernel's"
        " receive path of every query). dnsperf's own CPU share does not tell whether it"
        " is the limit; the server's does: with 100 queries outstanding, a server that"
        " leaves part of its core idle waited for queries, so the client set the pace.",
        "What each server answered to this script's own queries, before it was measured: "
        + " ".join(f"{name}: {'; '.join(t.checks)}." for name, t in found.items() if t.checks),
        "linkd: `DnsServer.serve_udp` on 127.0.0.1 with `requester_override=` the client,"
        " as inside a container (127.0.0.11 NATed to loopback); dnsmasq: hosts file +"
        " `--srv-host`, `--domain-needed`, `--cache-size=10000`.",
        "aardvark-dns: listens on the gateway address and scopes answers by the query's"
        " source address, so dnsperf sends from the client container's address (`-a`); its"
        " network file names 127.0.0.1 (in the namespace, nothing on port 53) as the"
        " network's DNS server, so what it forwards never leaves the namespace. It has no"
        " SRV records: it forwards SRV queries and, the forward failing, sends nothing back,"
        " so in the mixed run the SRV 20% are lost and each holds one of dnsperf's 100"
        " outstanding slots for the whole timeout: its mixed qps measures dnsperf's"
        " timeout, not aardvark-dns. Compare it on the A-only mix. It answers names it does"
        " not know (single label) NXDOMAIN itself.",
    ]
    for server, by_mix in results.items():
        for mix, (sat, _) in by_mix.items():
            if sat.other_load() > OTHER_LOAD:
                lines.append(
                    f"² {server}, {mix}: disturbed. During its median saturation run"
                    f" {sat.other_load():.0f}% of a core went to something else than dnsperf"
                    f" and {server} (core 0 {sat.client_busy:.0f}% busy, dnsperf"
                    f" {sat.client_cpu:.0f}%; core 1 {sat.server_busy:.0f}%, {server}"
                    f" {sat.server_cpu:.0f}%): another process ran on the pinned cores."
                    " Rerun when the machine is quiet.")
            elif sat.client_busy >= 95 and sat.server_busy < 95:
                lines.append(
                    f"{server}, {mix}: client-bound. During the saturation run the dnsperf"
                    f" core was {sat.client_busy:.0f}% busy while {server} used"
                    f" {sat.server_cpu:.0f}% of its core (which was {sat.server_busy:.0f}%"
                    f" busy): one dnsperf on one core cannot feed it faster, so {server}'s"
                    " ceiling is at least this figure and its ratio a lower bound.")
    return lines


def all_runs(results: dict[str, dict[str, tuple[Run, Run]]]) -> str:
    return "; ".join(
        f"{server} {mix} " + " / ".join(f"{q / 1000:.1f}k" for q in sat.all_qps)
        + (f" ({sat.retries} done again)" if sat.retries else "")
        for server, by_mix in results.items() for mix, (sat, _) in by_mix.items())


# -- main --------------------------------------------------------------------------------------


def benchmark(servers: Sequence[str], command: str) -> str:
    """Create the namespace, measure every server on every mix, remove it all: the text."""
    started = time.monotonic()
    plan, _, client = make_zone()
    results: dict[str, dict[str, tuple[Run, Run]]] = {}
    with tempfile.TemporaryDirectory(prefix="lkbench-dns-") as d:
        tmp = Path(d)
        inputs = write_inputs(plan, client, tmp)
        found = {k: v for k, v in targets(inputs).items() if k in servers}
        running: Server | None = None
        try:
            create_netns([inputs.gateway, inputs.client])
            for name, target in found.items():
                waited = wait_quiet()
                if waited > 1:
                    print(f"[{name}] waited {waited:.1f}s for cores {CLIENT_CORE} and"
                          f" {SERVER_CORE} to be idle", file=sys.stderr, flush=True)
                running = target.start()
                wait_ready(target, inputs, running)
                for mix in MIXES:
                    results.setdefault(name, {})[mix] = measure(
                        target, running, mix, inputs.queries[mix], tmp)
                    if not running.alive():
                        raise BenchError(f"{name} died during the {mix} run")
                running.stop()
                running = None
        finally:
            if running is not None:
                running.stop()
            delete_netns()
    if netns_exists():
        raise BenchError(f"network namespace {NETNS} is still there")
    return render(results, found, inputs, command, time.monotonic() - started)


def missing_tools() -> list[str]:
    missing = []
    if shutil.which("dnsperf") is None:
        missing.append("dnsperf")
    if not (shutil.which("dnsmasq") or Path("/usr/sbin/dnsmasq").exists()):
        missing.append("dnsmasq-base")
    if not Path(AARDVARK).exists():
        missing.append("aardvark-dns")
    return missing


def run(servers: Sequence[str] = SERVERS, save: bool = True, command: str = "") -> str:
    """The whole DNS benchmark under the kernel lock; the markdown (also saved)."""
    missing = missing_tools()
    if missing:
        raise BenchError(f"needs {', '.join(missing)}: apt-get install -y {' '.join(missing)}")
    with kernel_lock():
        text = benchmark(servers, command or "bench/dns.py")
    if save:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)
        print(f"(saved to {RESULTS.relative_to(REPO)})", file=sys.stderr)
    return text


def parse_args(argv: Sequence[str], prog: str = "bench/dns.py") -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog=prog, description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--servers", default=",".join(SERVERS),
                    help=f"servers to measure (comma-separated; default {','.join(SERVERS)})")
    ap.add_argument("--no-save", action="store_true", help=f"do not write {RESULTS.name}")
    ap.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    if args.serve is not None:
        serve(args.serve)
        return 0
    if os.geteuid() != 0:
        print("bench/dns.py: run as root (it creates a network namespace)", file=sys.stderr)
        return 2
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = set(servers) - set(SERVERS)
    if unknown:
        print(f"bench/dns.py: --servers: unknown {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    try:
        print(run(servers, save=not args.no_save,
                  command="bench/dns.py" + "".join(f" {a}" for a in argv)))
    except BenchError as exc:
        print(f"bench/dns.py: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        print(f"bench/dns.py: interrupted ({exc or 'SIGINT'}); "
              + (f"{NETNS} still there" if netns_exists() else "everything removed"),
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
