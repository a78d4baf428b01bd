"""Health benchmark: a three-service stack from `up` to all healthy, and back down.

    sudo .venv/bin/python bench/health.py [--reps 5] [--no-docker]

The stack: `store` (busybox httpd), `api` (busybox httpd, depends on store being
healthy) and `worker` (depends on api being healthy); each has a healthcheck that
fetches a page over HTTP by name (`store`, `api`) every 100 ms. Up means: from the
request until every container reports healthy; down: until the request to take it down
returns with nothing left.

- linkd: a daemon of its own (private run directory /run/lkbench-health), the stack sent
  with `POST /v1/stacks`, health read from `GET /v1/stacks/S/containers`; the commands
  are the host's busybox (Debian busybox-static).
- docker-compose (Debian `docker-compose` 1.29, which has no `up --wait`: `up -d`, then
  `docker inspect` until healthy) on a dockerd of its own, started here with
  `--iptables=false --bridge=none` and private data and exec roots, networks from
  10.89.0.0/16; the same busybox binary in an image imported from a tar stream,
  `init: true` so the services stop on SIGTERM as they do under linkd's init.

Target: linkd up <= 1 s. Everything it starts is stopped (by PID) and its directories
removed at the end. Takes the machine-wide kernel lock unless bench/run holds it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import common

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from linkd.runtime.client import Client  # noqa: E402

RUN_DIR = Path("/run/lkbench-health")
SOCKET = RUN_DIR / "linkd.sock"
WWW = RUN_DIR / "www"
BUSYBOX = "/bin/busybox"
DOCKER_ROOT = Path("/run/lkbench-docker")
DOCKER_DATA = Path("/var/lib/lkbench-docker")
DOCKER_SOCKET = DOCKER_ROOT / "docker.sock"
IMAGE = "lkbench/busybox:1"
INTERVAL = "100ms"


def check(url: str) -> list[str]:
    return ["CMD", BUSYBOX, "wget", "-q", "-O", "/dev/null", url]


def services(www: str) -> dict[str, Any]:
    """The three services, in Compose shape; `www` is the directory httpd serves."""
    health = {"interval": INTERVAL, "timeout": "1s", "retries": 3}
    return {
        "store": {
            "command": [BUSYBOX, "httpd", "-f", "-p", "7000", "-h", www],
            "healthcheck": {"test": check("http://127.0.0.1:7000/"), **health},
        },
        "api": {
            "command": [BUSYBOX, "httpd", "-f", "-p", "8080", "-h", www],
            "depends_on": {"store": {"condition": "service_healthy"}},
            "healthcheck": {"test": check("http://store:7000/"), **health},
        },
        "worker": {
            "command": [BUSYBOX, "sleep", "3600"],
            "depends_on": {"api": {"condition": "service_healthy"}},
            "healthcheck": {"test": check("http://api:8080/"), **health},
        },
    }


# -- linkd -----------------------------------------------------------------------------------


def linkd_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "LINKD_RUN_DIR": str(RUN_DIR),
            "LINKD_SOCKET": str(SOCKET)}


def start_linkd() -> tuple[subprocess.Popen[bytes], Client]:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    log = (RUN_DIR / "daemon.log").open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "linkd", "daemon"], env=linkd_env(),
                            stdout=log, stderr=log, start_new_session=True)
    client = Client(SOCKET)
    deadline = time.monotonic() + 30
    while not client.available():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the linkd daemon did not start; see {log.name}")
        time.sleep(0.01)
    return proc, client


def linkd_round(client: Client, name: str) -> tuple[float, float]:
    spec = {"services": services(str(WWW))}
    started = time.monotonic()
    client.request("POST", "/v1/stacks", {"name": name, "spec": spec, "directory": "/"})
    while True:
        found = client.request("GET", f"/v1/stacks/{name}/containers")
        if all(c.get("health") == "healthy" for c in found) and len(found) == 3:
            break
        if time.monotonic() - started > 60:
            raise RuntimeError(f"linkd: not healthy after 60 s: {found}")
        time.sleep(0.005)
    up = time.monotonic() - started
    started = time.monotonic()
    client.request("DELETE", f"/v1/stacks/{name}")
    return up, time.monotonic() - started


# -- docker-compose --------------------------------------------------------------------------


def docker_env() -> dict[str, str]:
    return {**os.environ, "DOCKER_HOST": f"unix://{DOCKER_SOCKET}"}


def docker(*args: str, input: bytes | None = None) -> str:
    done = subprocess.run(["/usr/bin/docker", *args], env=docker_env(), input=input,
                          capture_output=True, check=True)
    return done.stdout.decode()


def start_dockerd() -> subprocess.Popen[bytes]:
    DOCKER_ROOT.mkdir(parents=True, exist_ok=True)
    log = (DOCKER_ROOT / "dockerd.log").open("ab")
    proc = subprocess.Popen(
        ["dockerd", "--iptables=false", "--ip6tables=false", "--ip-forward=false",
         "--ip-masq=false", "--userland-proxy=false", "--bridge=none",
         "--default-address-pool", "base=10.89.0.0/16,size=24",
         "--data-root", str(DOCKER_DATA), "--exec-root", str(DOCKER_ROOT / "exec"),
         "-H", f"unix://{DOCKER_SOCKET}", "--pidfile", str(DOCKER_ROOT / "docker.pid")],
        stdout=log, stderr=log, start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            docker("version")
            break
        except subprocess.CalledProcessError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not start; see {log.name}") from None
            time.sleep(0.1)
    docker("import", "-c", f'CMD ["{BUSYBOX}", "sh"]', "-", IMAGE, input=busybox_rootfs())
    return proc


def busybox_rootfs() -> bytes:
    """A root filesystem of the host's static busybox and a page to serve, as a tar."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "bin").mkdir()
        shutil.copy2(BUSYBOX, root / "bin" / "busybox")
        (root / "www").mkdir()
        (root / "www" / "index.html").write_text("ok\n")
        (root / "tmp").mkdir()
        archive = root.parent / f"{root.name}.tar"
        with tarfile.open(archive, "w") as tar:
            for entry in ("bin", "www", "tmp"):
                tar.add(root / entry, arcname=entry)
        data = archive.read_bytes()
        archive.unlink()
        return data


def compose_file(directory: Path) -> Path:
    spec = services("/www")
    for service in spec.values():
        service["image"] = IMAGE
        service["init"] = True
    path = directory / "docker-compose.yml"
    path.write_text(json.dumps({"version": "2.4", "services": spec}, indent=1))
    return path


def compose_round(file: Path, name: str) -> tuple[float, float]:
    base = ["docker-compose", "-f", str(file), "-p", name]
    started = time.monotonic()
    subprocess.run([*base, "up", "-d"], env=docker_env(), check=True, capture_output=True)
    ids = subprocess.run([*base, "ps", "-q"], env=docker_env(), check=True,
                         capture_output=True, text=True).stdout.split()
    while True:
        states = docker("inspect", "-f", "{{.State.Health.Status}}", *ids).split()
        if len(states) == 3 and all(s == "healthy" for s in states):
            break
        if time.monotonic() - started > 60:
            raise RuntimeError(f"docker-compose: not healthy after 60 s: {states}")
        time.sleep(0.005)
    up = time.monotonic() - started
    started = time.monotonic()
    subprocess.run([*base, "down", "-t", "10"], env=docker_env(), check=True,
                   capture_output=True)
    return up, time.monotonic() - started


def stop(proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- the table -------------------------------------------------------------------------------


def row(peer: str, rounds: list[tuple[float, float]], baseline: float | None) -> str:
    up = statistics.median(r[0] for r in rounds)
    down = statistics.median(r[1] for r in rounds)
    ratio = f"{up / baseline:.1f}x" if baseline else "1.0x"
    fastest = min(r[0] for r in rounds)
    return (f"| {peer} | {len(rounds)} | {up * 1000:.0f} ms | {fastest * 1000:.0f} ms "
            f"| {down * 1000:.0f} ms | {ratio} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-docker", action="store_true", help="linkd only")
    args = ap.parse_args()
    if not common.root_and_lock("health.py"):
        return 2
    rows: list[str] = []
    daemon, client = start_linkd()
    try:
        WWW.mkdir(parents=True, exist_ok=True)
        (WWW / "index.html").write_text("ok\n")
        linkd_rounds = [linkd_round(client, f"lkbh{i}") for i in range(args.reps)]
    finally:
        stop(daemon)
        shutil.rmtree(RUN_DIR, ignore_errors=True)
    linkd_up = statistics.median(r[0] for r in linkd_rounds)
    rows.append(row("linkd (daemon)", linkd_rounds, None))
    if not args.no_docker and shutil.which("dockerd") and shutil.which("docker-compose"):
        dockerd = start_dockerd()
        try:
            with tempfile.TemporaryDirectory() as tmp:
                file = compose_file(Path(tmp))
                rounds = [compose_round(file, f"lkbh{i}") for i in range(args.reps)]
            rows.append(row("docker-compose 1.29 + dockerd 20.10", rounds, linkd_up))
        finally:
            stop(dockerd)
            shutil.rmtree(DOCKER_ROOT, ignore_errors=True)
            shutil.rmtree(DOCKER_DATA, ignore_errors=True)
    else:
        rows.append("| docker-compose | not run (`apt-get install docker.io docker-compose`) "
                    "| | | | |")
    header = [
        "Three services (store <- api <- worker, each `service_healthy` on the one before, "
        f"healthchecks every {INTERVAL}): from `up` to all healthy, and down (median of "
        f"{args.reps}; target: linkd up <= 1 s)",
        "",
        "| peer | runs | up to all healthy | fastest | down | up ÷ linkd |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    text = "\n".join(header + rows)
    common.save_table("health", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
