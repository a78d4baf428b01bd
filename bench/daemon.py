"""Daemon benchmark: recovery after kill -9 with N containers up, and the daemon's memory.

    sudo .venv/bin/python bench/daemon.py [--containers 500] [--memory 1000]

A daemon of its own (private run directory /run/lkbench-daemon, its own socket) runs
stacks of STACK_SIZE `sleep` containers each until N containers are up. Then:

- memory: the daemon's resident set (VmRSS) with N containers (target <= 150 MB at 1000);
- restart: `kill -9` of the daemon, a new daemon started, and the time until it answers
  on its socket, which it does only once every stack is recovered: every container
  adopted (none restarted: checked by PID), missing objects recreated and DNS served in
  every container again (checked by a query to 127.0.0.11 in one namespace per stack).
  Target <= 2 s at 500 containers.

Everything is taken down at the end (SIGTERM to the daemon: it removes every stack), and
the private run directory removed. Takes the machine-wide kernel lock.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import common

REPO = Path(__file__).resolve().parent.parent
RUN_DIR = Path("/run/lkbench-daemon")
SOCKET = RUN_DIR / "linkd.sock"
STACK_SIZE = 100  # containers per stack (one /24 each)


class Unix(http.client.HTTPConnection):
    def __init__(self) -> None:
        super().__init__("linkd", timeout=600)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(600)
        self.sock.connect(str(SOCKET))


def call(method: str, path: str, body: object = None) -> Any:
    connection = Unix()
    try:
        data = None if body is None else json.dumps(body).encode()
        connection.request(method, path, body=data)
        response = connection.getresponse()
        payload = response.read()
    finally:
        connection.close()
    if response.status >= 400:
        raise RuntimeError(f"{method} {path}: {response.status} {payload[:500]!r}")
    return json.loads(payload) if payload else None


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "LINKD_RUN_DIR": str(RUN_DIR),
            "LINKD_SOCKET": str(SOCKET)}


def start_daemon() -> tuple[subprocess.Popen[bytes], float]:
    """A daemon, and the seconds until it answers on its socket."""
    started = time.monotonic()
    log = (RUN_DIR / "daemon.log").open("ab")
    # LKPROFILE=FILE profiles the daemon (written when it ends)
    out = os.environ.get("LKPROFILE")
    profile = ["-m", "cProfile", "-o", out] if out else []
    proc = subprocess.Popen([sys.executable, *profile, "-m", "linkd", "daemon"], env=env(),
                            stdout=log, stderr=log, start_new_session=True)
    while True:
        try:
            call("GET", "/v1/stacks")
            return proc, time.monotonic() - started
        except (OSError, RuntimeError):
            if proc.poll() is not None:
                raise RuntimeError(f"the daemon exited {proc.returncode}; see {log.name}") from None
            time.sleep(0.005)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bring_up(count: int, first: int = 0) -> list[str]:
    names = []
    for index in range(first, first + count // STACK_SIZE):
        name = f"lkbenchd{index}"
        spec = {"services": {"c": {"command": "sleep 3600", "scale": STACK_SIZE}}}
        call("POST", "/v1/stacks", {"name": name, "spec": spec, "directory": "/"})
        names.append(name)
    return names


def pids(names: list[str]) -> dict[str, int]:
    found = {}
    for name in names:
        for container in call("GET", f"/v1/stacks/{name}/containers"):
            found[f"{name}/{container['name']}"] = container["pid"]
    return found


def dns_answers(stack: str) -> bool:
    """A query to linkd's resolver inside one container of `stack` answers NOERROR."""
    query = struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\x01c\x00\x00\x01\x00\x01"
    code = (
        "import socket,sys;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(2);"
        f"s.sendto({query!r},('127.0.0.11',53));r=s.recv(512);sys.exit(r[3]&15)"
    )
    result = subprocess.run(["ip", "netns", "exec", f"linkd-{stack}.c-1", sys.executable,
                             "-c", code], capture_output=True)
    return result.returncode == 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--containers", type=int, default=500, help="for the restart (x100)")
    ap.add_argument("--memory", type=int, default=1000, help="for the memory reading (x100)")
    args = ap.parse_args()
    if not common.root_and_lock("daemon.py"):
        return 2
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    daemon, _ = start_daemon()
    rows: list[str] = []
    try:
        t = time.monotonic()
        names = bring_up(args.containers)
        up_s = time.monotonic() - t
        before = pids(names)
        rss_restart = rss_mb(daemon.pid)
        os.kill(daemon.pid, signal.SIGKILL)
        daemon.wait()
        daemon, restart_s = start_daemon()
        after = pids(names)
        restarted = sum(1 for k in before if after.get(k) != before[k])
        dns_ok = all(dns_answers(n) for n in names)
        rows.append(
            f"| restart after kill -9 | {len(before)} | {restart_s:.2f} s | {restarted} | "
            f"{'yes' if dns_ok else 'NO'} | {rss_restart:.0f} MB (before the kill) | "
            f"up of all: {up_s:.1f} s |"
        )
        if args.memory > args.containers:
            names += bring_up(args.memory - args.containers, first=len(names))
        rss = rss_mb(daemon.pid)
        rows.append(f"| memory | {args.memory} | | | | {rss:.0f} MB | |")
    finally:
        daemon.send_signal(signal.SIGTERM)  # takes every stack down
        try:
            daemon.wait(600)
        finally:
            shutil.rmtree(RUN_DIR, ignore_errors=True)
    header = [
        "Daemon: recovery after `kill -9` and resident memory (stacks of "
        f"{STACK_SIZE} containers; targets: restart <= 2 s at 500, RSS <= 150 MB at 1000)",
        "",
        "| measure | containers | time to serve again | restarted | DNS answers | daemon RSS "
        "| note |",
        "|---|---:|---:|---:|---|---:|---|",
    ]
    text = "\n".join(header + rows)
    common.save_table("daemon", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
