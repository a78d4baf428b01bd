"""End-to-end start: a container from the command line until it runs, and until its name
answers in DNS from a peer container; linkd beside `docker run -d`, in one run.

    sudo .venv/bin/python bench/start.py [--runs 20]

The same busybox image (tests/images.py: Debian's busybox-static, in a `docker save`
archive) everywhere, each container running `sleep 3600`:

- linkd, a run directory and daemon of the benchmark's own (the daemon started by an
  untimed first `up -d`), everything through the command line:
  - `linkd up -d` of a new stack of one service, until the command returns, which it
    does once the container runs (checked with `linkd ps`); taken down untimed;
  - the stack `peer` runs one service, `peer`; `linkd up -d` of its file with one more
    service added (`webN`): until the command returns, and until `webN` answers from
    inside `peer`; the service is removed again (untimed) by `up -d` of the first file.
- Docker and Podman, each on a simulated host of its own (bench/common.Dockerd and
  Podman: their defaults, Podman with netavark and aardvark-dns), a user-defined network
  (their DNS serves container names only there) with `peer` on it; `docker run -d` /
  `podman run -d --network lkbench --name webN`: until the command returns (running:
  checked with `inspect`), and until `webN` answers from inside `peer`; `rm -f` untimed.

"Answers": a poller in the peer's network namespace, asking the resolver its
/etc/resolv.conf names (read with each runtime's `exec`: 127.0.0.11 under linkd and
Docker, the network's gateway under Podman), first checks that `peer` answers, then
sends an A query for the new name every POLL_S without waiting for replies, and notes
the wall-clock time of the first answer with an address. "After the process started"
is that time minus the start the runtime itself recorded for the new container's
process (linkd's `started_at`, `State.StartedAt` of the others), on the same clock:
negative when the name answers before the process runs. Rounds alternate the runtimes,
after one untimed round. Targets: linkd to running <= 0.25x Docker's median; the name
answering <= 5 ms after the process starts.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import select
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import common

sys.path.insert(0, str(common.REPO))

from tests.images import busybox_image, write_tar

IMAGE = "test/busybox:1"  # tests.images' name for it
POLL_S = 0.001
TARGET_RATIO = 0.25
TARGET_ANSWER_MS = 5.0

# Runs in the peer's network namespace (nsenter --net): stdlib only. Asks SERVER for
# KNOWN until it answers (the path to the resolver works: prints "ready" and how long
# that took), then sends a query for NAME every INTERVAL without waiting, and prints the
# wall-clock time of the first answer with records.
POLLER = r"""
import select, socket, struct, sys, time
server, known, name, interval = sys.argv[1:4] + [float(sys.argv[4])]
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.connect((server, 53))

def ask(qid, name):
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    try:
        sock.send(struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\0\0\1\0\1")
    except OSError:
        pass

def answered(wait):
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0 and select.select([sock], [], [], left)[0]:
        try:
            reply = sock.recv(4096)
        except OSError:  # an ICMP error for an earlier query
            continue
        if reply[3] & 0xF == 0 and struct.unpack(">H", reply[6:8])[0]:
            return True
    return False

began = time.monotonic()
ask(0, known)
while not answered(0.05):
    ask(0, known)
print(f"ready {time.monotonic() - began:.6f}", flush=True)
if not name:
    sys.exit(0)
qid = 1
while True:
    ask(qid, name)
    qid = qid % 0xFFFF + 1
    if answered(interval):
        print(f"{time.time():.6f}", flush=True)
        sys.exit(0)
"""


@dataclass
class Row:
    label: str
    running: list[float] = field(default_factory=list)  # seconds from the command
    answered: list[float] = field(default_factory=list)  # seconds from the command
    after_start: list[float] = field(default_factory=list)  # seconds from the process start
    # seconds from the removal of the round's container until `peer` answers again
    silent: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Peer:
    pid: int  # a process in its network namespace
    server: str  # the resolver its /etc/resolv.conf names


class Poller:
    """The poller in the peer's network namespace, asking for `name` (none: only until
    `peer` answers); made once `peer` answers, `waited` seconds after it first asked."""

    def __init__(self, peer: Peer, name: str, timeout: float = 60) -> None:
        self.proc = subprocess.Popen(
            ["nsenter", f"--net=/proc/{peer.pid}/ns/net", sys.executable, "-c", POLLER,
             peer.server, "peer", name, str(POLL_S)],
            stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        ready = select.select([self.proc.stdout], [], [], timeout)[0]
        said = self.proc.stdout.readline().split() if ready else []
        if said[:1] != ["ready"]:
            self.proc.kill()
            self.proc.wait()
            raise common.BenchError(f"`peer` did not answer from inside the peer within"
                                    f" {timeout:.0f} s ({peer})")
        self.waited = float(said[1])  # from its first query for `peer` to the answer

    def answered_at(self, timeout: float = 30) -> float:
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise common.BenchError(f"the name did not answer within {timeout:.0f} s") from None
        return float(out.strip())


def silence(row: Row, peer: Peer) -> None:
    """After a removal: until `peer` answers again (Podman's aardvark-dns does not for a
    while), noted in `row`; the next round starts with every name answering."""
    poller = Poller(peer, "")
    poller.proc.wait()
    row.silent.append(poller.waited)


def resolver(resolv_conf: str) -> str:
    """The first name server of a resolv.conf."""
    words = resolv_conf.split()
    return words[words.index("nameserver") + 1]


def end_to_end(row: Row, peer: Peer, name: str, start: Callable[[], None],
               started_at: Callable[[], float]) -> None:
    """One round: `start` the container named `name` (returns once it runs), with a
    poller in the peer's network namespace."""
    poller = Poller(peer, name)
    clock = time.time()
    began = time.perf_counter()
    start()
    row.running.append(time.perf_counter() - began)
    answered = poller.answered_at()
    row.answered.append(answered - clock)
    row.after_start.append(answered - started_at())


# -- linkd -----------------------------------------------------------------------------------


def stack_file(services: list[str]) -> str:
    return "services:\n" + "".join(
        f"  {s}: {{image: {IMAGE}, command: sleep 3600}}\n" for s in services)


class LinkdRuns:
    def __init__(self, linkd: common.Linkd, work: Path, archive: Path) -> None:
        self.linkd = linkd
        self.one = work / "one"
        self.peer_dir = work / "peer"
        for directory in (self.one, self.peer_dir):
            directory.mkdir()
        (self.one / "linkd.yaml").write_text(stack_file(["web"]))
        (self.peer_dir / "linkd.yaml").write_text(stack_file(["peer"]))
        linkd("image", "load", str(archive))
        linkd("up", "-d", "-p", "peer", cwd=self.peer_dir)  # starts the daemon
        self.peer = Peer(int(str(self.state("peer", "peer-1")["init_pid"])), resolver(
            linkd("exec", "-p", "peer", "peer", "--", "cat", "/etc/resolv.conf")))

    def state(self, stack: str, container: str) -> dict[str, object]:
        found = json.loads(self.linkd("inspect", "-p", stack, container))
        state: dict[str, object] = found[0]["state"]
        return state

    def one_service(self, row: Row, n: int) -> None:
        stack = f"one{n}"
        began = time.perf_counter()
        self.linkd("up", "-d", "-p", stack, cwd=self.one)
        row.running.append(time.perf_counter() - began)
        if self.state(stack, "web-1")["status"] != "running":
            raise common.BenchError(f"linkd up -d returned before {stack}'s web-1 ran")
        self.linkd("down", "--forget", "-p", stack)

    def added_service(self, row: Row, n: int) -> None:
        name = f"web{n}"
        file = self.peer_dir / "linkd.yaml"

        def start() -> None:
            file.write_text(stack_file(["peer", name]))
            self.linkd("up", "-d", "-p", "peer", cwd=self.peer_dir)

        def started_at() -> float:
            state = self.state("peer", f"{name}-1")
            if state["status"] != "running":
                raise common.BenchError(f"linkd up -d returned before {name}-1 ran")
            return float(str(state["started_at"]))

        end_to_end(row, self.peer, name, start, started_at)
        file.write_text(stack_file(["peer"]))
        self.linkd("up", "-d", "-p", "peer", cwd=self.peer_dir)
        silence(row, self.peer)


# -- docker and podman ----------------------------------------------------------------------


class EngineRuns:
    """Docker or Podman: the same commands."""

    def __init__(self, engine: common.Dockerd | common.Podman, archive: Path) -> None:
        self.engine = engine
        engine.start()
        engine("load", "-i", str(archive))
        engine("network", "create", "lkbench")
        self.run = ["run", "-d", *engine.run_options(), "--network", "lkbench"]
        engine(*self.run, "--name", "peer", IMAGE, "sleep", "3600")
        self.peer = Peer(int(engine("inspect", "-f", "{{.State.Pid}}", "peer")),
                         resolver(engine("exec", "peer", "cat", "/etc/resolv.conf")))

    def added_container(self, row: Row, n: int) -> None:
        name = f"web{n}"

        def start() -> None:
            self.engine(*self.run, "--name", name, IMAGE, "sleep", "3600")

        def started_at() -> float:
            running, at = self.engine("inspect", "-f", "{{.State.Running}} {{.State.StartedAt}}",
                                      name).split(maxsplit=1)
            if running != "true":
                raise common.BenchError(f"run -d returned before {name} ran")
            return wall_clock(at)

        end_to_end(row, self.peer, name, start, started_at)
        self.engine("rm", "-f", name)
        silence(row, self.peer)


def wall_clock(text: str) -> float:
    """`2026-12-02T18:50:01.123456789Z` (Docker) or `2026-12-02 18:50:01.123456789 +0000
    UTC` (Podman) as epoch seconds, nanoseconds cut to what a float holds."""
    day, clock = text.replace("T", " ").split()[:2]
    whole, _, fraction = clock.rstrip("Z").partition(".")
    seconds = dt.datetime.fromisoformat(f"{day} {whole}").replace(tzinfo=dt.UTC).timestamp()
    return seconds + float(f"0.{fraction or 0}")


# -- the table -------------------------------------------------------------------------------


def cell(samples: list[float]) -> str:
    if not samples:
        return "-"
    return f"{common.median_ms(samples)} ({common.range_ms(samples)})"


def render(rows: list[Row], runs: int, versions: str) -> str:
    one, added, docker = rows[:3]
    lines = [
        f"A container from the command to running, and to its name answering in DNS from a"
        f" peer container; median (range) ms of {runs} interleaved rounds"
        f" ({dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; `nproc` {os.cpu_count()}, kernel"
        f" {platform.release()}; {versions}; the same busybox image; DNS polled every"
        f" {POLL_S * 1000:g} ms)",
        "",
        "| command | to running | to answering in the peer | answering after the process"
        " started | to running ÷ Docker | `peer` unanswered after the removal |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    base = statistics.median(docker.running)
    for row in rows:
        lines.append(f"| {row.label} | {cell(row.running)} | {cell(row.answered)} "
                     f"| {cell(row.after_start)} | {statistics.median(row.running) / base:.2f}x "
                     f"| {cell(row.silent)} |")
    ratio = statistics.median(one.running) / base
    after = statistics.median(added.after_start) * 1000
    lines += [
        "",
        f"linkd to running: {ratio:.2f}x Docker's median, target <= {TARGET_RATIO}x"
        f" {'met' if ratio <= TARGET_RATIO else 'MISSED'}; linkd's new name answers"
        f" {abs(after):.1f} ms {'after' if after >= 0 else 'before'} its process started"
        f" (median), target <= {TARGET_ANSWER_MS:g} ms after"
        f" {'met' if after <= TARGET_ANSWER_MS else 'MISSED'}. Podman's commands run through"
        " `nsenter` into its simulated host (one exec more than Docker's client, which"
        " reaches dockerd over its socket). The last column: after each round's container"
        " was removed (untimed), from the first query for `peer` to its answer.",
    ]
    return "\n".join(lines)


def measure(runs: int, work: Path, linkd: common.Linkd, docker: common.Dockerd,
            podman: common.Podman) -> list[Row]:
    archive = write_tar(busybox_image().save_files(), work / "busybox.tar")
    linkd.compile()
    ours = LinkdRuns(linkd, work, archive)
    engines = [EngineRuns(docker, archive), EngineRuns(podman, archive)]
    rows = [
        Row("`linkd up -d`, a new stack of one service"),
        Row("`linkd up -d`, one service added beside `peer`"),
        Row("`docker run -d --network lkbench`, beside `peer`"),
        Row("`podman run -d --network lkbench`, beside `peer`"),
    ]
    for n in range(runs + 1):
        warm = Row("warm-up") if n == 0 else None  # round 0 is not counted
        ours.one_service(warm or rows[0], n)
        ours.added_service(warm or rows[1], n)
        for engine, row in zip(engines, rows[2:], strict=True):
            engine.added_container(warm or row, n)
        print(f"  round {n}: " + ", ".join(
            f"{common.ms(r.running[-1])}" for r in ([warm] if warm else rows)),
            file=sys.stderr, flush=True)
    return rows


def main(args: argparse.Namespace, work: Path, cleanup: contextlib.ExitStack) -> str:
    linkd = common.Linkd(Path("/run/lkbench-start"))
    cleanup.callback(linkd.stop)
    docker = common.Dockerd("lkbench-start-docker")
    cleanup.callback(docker.stop)
    podman = common.Podman("lkbench-start-podman")
    cleanup.callback(podman.stop)
    rows = measure(args.runs, work, linkd, docker, podman)
    versions = f"python {platform.python_version()}, {docker.version()}, {podman.version()}"
    return render(rows, args.runs, versions)


if __name__ == "__main__":
    sys.exit(common.part("start", __doc__ or "", main))
