"""Live DNS benchmark: lookups while 100 containers restart, and how soon a new name answers.

    sudo .venv/bin/python bench/dns_live.py        # from the repository root, as root

1. Churn (the real runtime). One stack: CHURNERS services that exit after a moment and
   are restarted (`restart: always`, Docker's backoff), a `stable` service, and a
   `querier` container that asks linkd's resolver (127.0.0.11, raw UDP queries, one at a
   time, 1 s timeout) for `stable` and every churner's name in turn for CHURN_SECONDS.
   Every answer is checked against the container's /etc/hosts: a timeout or an rcode
   other than NOERROR is a *failed* lookup, an address not the container's is *stale*.
   Target: zero of both while the churners restart (issue 3).

2. Registration (the server alone, in this process's event loop). A DnsServer serves a
   zone of ZONE_SIZE containers on 127.0.0.1; a poller thread asks for a name that does
   not exist yet, every POLL_S; the zone then gains it (`rezone` + `set_zone`, what the
   supervisor does when a container registers), and the time from the start of that
   registration to the poller's first NOERROR answer is one sample. dnsmasq gets the same
   name through its hosts file and SIGHUP (its reload), side by side. Target: linkd
   within 5 ms. (A whole container's name from the command line, beside Docker and
   Podman, is bench/start.py's.)

Both sections print a markdown table (also saved to bench/results/dns_live.md). Takes the
machine-wide kernel lock unless bench/run holds it, and runs in a simulated host.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from ipaddress import IPv4Network
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import common  # noqa: E402

from linkd.core.model import Attachment, Network, Service, Stack  # noqa: E402
from linkd.core.plan import realize  # noqa: E402
from linkd.dns.zone import build_zone, rezone  # noqa: E402

CHURNERS = 100
CHURN_SECONDS = 20
ZONE_SIZE = 500
REGISTRATIONS = 40
POLL_S = 0.0002
RUN_DIR = Path("/run/lkbench-live")

# Runs inside the querier container with the host's python3: stdlib only.
QUERIER = r'''
import json, random, socket, struct, sys, time
seconds, out = float(sys.argv[1]), sys.argv[2]
hosts = {}
for line in open("/etc/hosts"):
    words = line.split()
    if len(words) >= 2 and not words[0].startswith(("#", "127.", "::", "fe", "ff")):
        for name in words[1:]:
            hosts.setdefault(name, words[0])
names = ["stable"] + sorted(n for n in hosts if n.startswith("churn") and "-" not in n)
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(1.0)
sock.connect(("127.0.0.11", 53))
counts = {"queries": 0, "failed": 0, "stale": 0, "timeouts": 0}
latencies, bad = [], []
end = time.monotonic() + seconds
i = 0
while time.monotonic() < end:
    name = names[i % len(names)]
    i += 1
    qid = random.randrange(65536)
    q = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    q += bytes([len(name)]) + name.encode() + b"\0" + struct.pack("!HH", 1, 1)
    start = time.monotonic()
    sock.send(q)
    try:
        while True:
            r = sock.recv(4096)
            if r[:2] == q[:2]:
                break
    except TimeoutError:
        counts["queries"] += 1; counts["failed"] += 1; counts["timeouts"] += 1
        bad.append((name, "timeout"))
        continue
    latencies.append(time.monotonic() - start)
    counts["queries"] += 1
    rcode, ancount = r[3] & 15, struct.unpack_from("!H", r, 6)[0]
    if rcode != 0 or ancount == 0:
        counts["failed"] += 1
        bad.append((name, f"rcode {rcode}, {ancount} answers"))
        continue
    got = socket.inet_ntoa(r[-4:])  # one A record, last in the message
    if got != hosts[name]:
        counts["stale"] += 1
        bad.append((name, f"{got} != {hosts[name]}"))
latencies.sort()
counts["p50_ms"] = 1000 * latencies[len(latencies) // 2]
counts["p99_ms"] = 1000 * latencies[int(len(latencies) * 0.99)]
counts["max_ms"] = 1000 * latencies[-1]
counts["names"] = len(names)
counts["bad"] = bad[:20]
json.dump(counts, open(out + ".part", "w"))
import os; os.rename(out + ".part", out)
'''


# -- 1. churn -----------------------------------------------------------------------------


def churn_stack(results: Path) -> str:
    services: dict[str, dict[str, object]] = {
        "stable": {"command": ["sleep", "3600"]},
        "querier": {
            "command": ["/usr/bin/python3", str(results.parent / "querier.py"),
                        str(CHURN_SECONDS), str(results)],
            "depends_on": ["stable"],
        },
    }
    for i in range(CHURNERS):
        # Lives 0.2-0.6 s, then fails: restarted with Docker's backoff (0.1 s doubling).
        services[f"churn{i}"] = {
            "command": ["sh", "-c", f"sleep 0.{2 + i % 5}; exit 1"],
            "restart": "always",
        }
    return json.dumps({"name": "lkchurn", "services": services})


LINKD = common.Linkd(RUN_DIR)  # a run directory of the benchmark's own: daemon, state


def restarts_so_far() -> int:
    out = LINKD("ps", "-p", "lkchurn")
    return sum(int(w.split("=", 1)[1]) for w in out.split() if w.startswith("restarts="))


def run_churn() -> dict[str, object]:
    workdir = Path(tempfile.mkdtemp(prefix="lkchurn-", dir="/var/tmp"))  # not the private /tmp
    results = workdir / "results.json"
    (workdir / "querier.py").write_text(QUERIER)
    stack = workdir / "linkd.yaml"
    stack.write_text(churn_stack(results))
    try:
        started = time.monotonic()
        LINKD("up", "-d", "-f", str(stack))
        up_s = time.monotonic() - started
        deadline = time.monotonic() + CHURN_SECONDS + 60
        while not results.exists():
            if time.monotonic() > deadline:
                raise RuntimeError("the querier wrote no results")
            time.sleep(0.5)
        restarts = restarts_so_far()
        found: dict[str, object] = json.loads(results.read_text())
        found["restarts"] = restarts
        found["up_s"] = up_s
        return found
    finally:
        LINKD.stop()  # the daemon takes the stack down
        shutil.rmtree(workdir, ignore_errors=True)


# -- 2. registration ------------------------------------------------------------------------


def a_query(name: str, qid: int) -> bytes:
    return (struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
            + bytes([len(name)]) + name.encode() + b"\0" + struct.pack("!HH", 1, 1))


class Poller(threading.Thread):
    """Asks `name` every POLL_S until it answers NOERROR; records when (monotonic)."""

    def __init__(self, port: int, name: str) -> None:
        super().__init__(daemon=True)
        self.port, self.name = port, name
        self.answered_at: float | None = None
        self.stop = threading.Event()
        self.ready = threading.Event()

    def run(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.05)
            s.connect(("127.0.0.1", self.port))
            qid = 0
            while not self.stop.is_set():
                qid = (qid + 1) & 0xFFFF
                s.send(a_query(self.name, qid))
                try:
                    while True:
                        r = s.recv(4096)
                        if r[:2] == struct.pack("!H", qid):
                            break
                except TimeoutError:
                    continue
                except ConnectionRefusedError:  # not listening yet
                    time.sleep(0.01)
                    continue
                self.ready.set()
                if r[3] & 15 == 0 and r[6:8] != b"\0\0":
                    self.answered_at = time.monotonic()
                    return
                time.sleep(POLL_S)


def measure(port: int, name: str, register: Callable[[], None]) -> float:
    """Milliseconds from the start of `register()` to a poller's first answer."""
    poller = Poller(port, name)
    poller.start()
    if not poller.ready.wait(5):
        raise RuntimeError(f"no answers on port {port}")
    time.sleep(0.005)  # the poller is in its steady loop
    start = time.monotonic()
    register()
    poller.join(5)
    poller.stop.set()
    if poller.answered_at is None:
        raise RuntimeError(f"{name} never answered")
    return 1000 * (poller.answered_at - start)


def registration_stack() -> Stack:
    services = tuple(
        Service(f"svc{i}", command=("sleep", "1"), networks=(Attachment("net"),))
        for i in range(ZONE_SIZE)
    )
    asker = Service("asker", command=("sleep", "1"), networks=(Attachment("net"),))
    return Stack("lkreg", (*services, asker), (Network("net"),))


def linkd_registrations() -> list[float]:
    from linkd.runtime.stack.dns_server import DnsServer

    plan = realize(registration_stack(), {"net": IPv4Network("10.200.0.0/22")})
    asker = plan.container("asker-1").interfaces[0].address
    pending = [c.name for c in plan.containers if c.service != "asker"][:REGISTRATIONS]
    newcomers = list(pending)
    served = plan.without(pending)
    server = DnsServer(build_zone([served]))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    serving = asyncio.run_coroutine_threadsafe(
        server.serve_udp(sock, requester_override=asker), loop
    )
    samples: list[float] = []
    try:
        for name in newcomers:
            pending.remove(name)

            async def swap() -> None:
                # What the supervisor's publish_zone does, on the server's own loop.
                nonlocal served
                after = plan.without(pending)
                server.set_zone(rezone(server.zone, [served], [after]))
                served = after

            def register() -> None:
                asyncio.run_coroutine_threadsafe(swap(), loop).result()

            samples.append(measure(port, name, register))
    finally:
        serving.cancel()
        time.sleep(0.05)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
    return samples


def dnsmasq_registrations() -> list[float]:
    plan = realize(registration_stack(), {"net": IPv4Network("10.200.0.0/22")})
    binary = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    samples: list[float] = []
    with tempfile.TemporaryDirectory(prefix="lkreg-") as d:
        hosts = Path(d) / "hosts"
        newcomers = [c for c in plan.containers if c.service != "asker"][:REGISTRATIONS]
        lines = [f"{c.interfaces[0].address} {c.name}" for c in plan.containers
                 if c not in newcomers]
        hosts.write_text("\n".join(lines) + "\n")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        proc = subprocess.Popen(
            [binary, "--no-daemon", f"--port={port}", "--listen-address=127.0.0.1",
             "--bind-interfaces", "--no-resolv", "--no-hosts", "--conf-file=/dev/null",
             f"--addn-hosts={hosts}", "--domain-needed", "--user=root", "--group=root",
             "--pid-file=", "--log-facility=-"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            for c in newcomers:
                line = f"{c.interfaces[0].address} {c.name}"

                def register(line: str = line) -> None:
                    lines.append(line)
                    tmp = hosts.with_suffix(".new")
                    tmp.write_text("\n".join(lines) + "\n")
                    tmp.replace(hosts)
                    proc.send_signal(signal.SIGHUP)  # dnsmasq re-reads its hosts files

                samples.append(measure(port, c.name, register))
        finally:
            proc.terminate()
            proc.wait(5)
    return samples


# -- report ---------------------------------------------------------------------------------


def summary(samples: list[float]) -> tuple[float, float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered), p99, ordered[-1]


def main() -> int:
    if not common.root_and_lock("dns_live.py"):
        return 2
    print(f"[churn] {CHURNERS} restarting containers, {CHURN_SECONDS}s ...", file=sys.stderr)
    churn = run_churn()
    print("[registration] linkd ...", file=sys.stderr)
    ours = linkd_registrations()
    print("[registration] dnsmasq ...", file=sys.stderr)
    theirs = dnsmasq_registrations()
    lines = [
        f"Churn: {CHURNERS} containers restarting (restart: always, each lives 0.2-0.6 s) "
        f"while a querier container asks for `stable` and each churner in turn, "
        f"{CHURN_SECONDS}s",
        "",
        "| queries | failed | stale | timeouts | restarts meanwhile | p50 ms | p99 ms | max ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {churn['queries']:,} | {churn['failed']} | {churn['stale']} | {churn['timeouts']} "
        f"| {churn['restarts']} | {churn['p50_ms']:.3f} | {churn['p99_ms']:.3f} "
        f"| {churn['max_ms']:.3f} |",
        "",
        f"Registration: a new name in a zone of {ZONE_SIZE} containers, from the start of "
        f"the registration to a poller's first answer ({REGISTRATIONS} names, poll every "
        f"{POLL_S * 1000:.1f} ms)",
        "",
        "| server | how it learns the name | p50 ms | p99 ms | max ms |",
        "|---|---|---:|---:|---:|",
    ]
    for server, how, samples in (
        ("linkd", "rezone + set_zone (in the event loop)", ours),
        ("dnsmasq", "hosts file + SIGHUP", theirs),
    ):
        p50, p99, top = summary(samples)
        lines.append(f"| {server} | {how} | {p50:.2f} | {p99:.2f} | {top:.2f} |")
    ok = churn["failed"] == 0 and churn["stale"] == 0 and summary(ours)[2] <= 5.0
    lines += ["", "targets: zero failed or stale lookups under churn; linkd registration "
              f"<= 5 ms: {'met' if ok else 'MISSED'}"]
    if churn.get("bad"):
        lines.append(f"first bad lookups: {churn['bad']}")
    common.save_table("dns_live", "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
