"""Health benchmark: a three-service stack from `up` to all healthy, and back down.

    sudo .venv/bin/python bench/health.py [--runs 5] [--no-docker]

The stack: `store` (busybox httpd), `api` (busybox httpd, depends on store being
healthy) and `worker` (depends on api being healthy); each has a healthcheck that
fetches a page over HTTP by name (`store`, `api`) every 100 ms. Up means: from the
request until every container reports healthy; down: until the request to take it down
returns with nothing left.

- linkd: a daemon of its own (bench/common.Linkd: private run directory), the stack sent
  with `POST /v1/stacks`, health read from `GET /v1/stacks/S/containers`; the commands
  are the host's busybox (Debian busybox-static).
- Debian's docker-compose (which has no `up --wait`: `up -d`, then `docker inspect` until
  healthy) on a dockerd of its own (bench/common.Dockerd: Docker's defaults, in a
  simulated host of its own); the same busybox binary in an image imported from a tar
  stream, `init: true` so the services stop on SIGTERM as they do under linkd's init.

Target: linkd up <= 1 s. Everything it starts is stopped (by PID) and its directories
removed at the end. Takes the machine-wide kernel lock unless bench/run holds it, and
runs in a simulated host (bench/common.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import common

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from linkd.client.api import Client  # noqa: E402

RUN_DIR = Path("/run/lkbench-health")
WWW = RUN_DIR / "www"
BUSYBOX = "/bin/busybox"
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


def linkd_round(client: Client, name: str) -> tuple[float, float]:
    spec = {"services": services(str(WWW))}
    started = time.monotonic()
    client.request("POST", "/v1/stacks", {"name": name, "spec": spec, "directory": "/"})
    while True:
        found = client.request("GET", f"/v1/stacks/{name}/containers")
        if all(c.get("health") == "healthy" for c in found) and len(found) == 3:
            break
        if time.monotonic() - started > 60:
            raise common.BenchError(f"linkd: not healthy after 60 s: {found}")
        time.sleep(0.005)
    up = time.monotonic() - started
    started = time.monotonic()
    client.request("DELETE", f"/v1/stacks/{name}")
    return up, time.monotonic() - started


# -- docker-compose --------------------------------------------------------------------------


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


def compose_round(docker: common.Dockerd, file: Path, name: str) -> tuple[float, float]:
    base = ["docker-compose", "-f", str(file), "-p", name]
    started = time.monotonic()
    common.run([*base, "up", "-d"], env=docker.env)
    ids = common.run([*base, "ps", "-q"], env=docker.env).split()
    while True:
        states = docker("inspect", "-f", "{{.State.Health.Status}}", *ids).split()
        if len(states) == 3 and all(s == "healthy" for s in states):
            break
        if time.monotonic() - started > 60:
            raise common.BenchError(f"docker-compose: not healthy after 60 s: {states}")
        time.sleep(0.005)
    up = time.monotonic() - started
    started = time.monotonic()
    common.run([*base, "down", "-t", "10"], env=docker.env)
    return up, time.monotonic() - started


# -- the table -------------------------------------------------------------------------------


def row(peer: str, rounds: list[tuple[float, float]], baseline: float | None) -> str:
    up = statistics.median(r[0] for r in rounds)
    down = statistics.median(r[1] for r in rounds)
    ratio = f"{up / baseline:.1f}x" if baseline else "1.0x"
    fastest = min(r[0] for r in rounds)
    return (f"| {peer} | {len(rounds)} | {up * 1000:.0f} ms | {fastest * 1000:.0f} ms "
            f"| {down * 1000:.0f} ms | {ratio} |")


def main(args: argparse.Namespace, work: Path, cleanup: contextlib.ExitStack) -> str:
    linkd = common.Linkd(RUN_DIR)
    cleanup.callback(linkd.stop)
    client = Client(linkd.start_daemon())
    WWW.mkdir(parents=True, exist_ok=True)
    (WWW / "index.html").write_text("ok\n")
    linkd_rounds = [linkd_round(client, f"lkbh{i}") for i in range(args.runs)]
    linkd.stop()
    linkd_up = statistics.median(r[0] for r in linkd_rounds)
    rows = [row("linkd (daemon)", linkd_rounds, None)]
    if args.no_docker:
        rows.append("| docker-compose | not run (--no-docker) | | | | |")
    else:
        docker = common.Dockerd("lkbench-health-docker")
        cleanup.callback(docker.stop)
        docker.start()
        docker("import", "-c", f'CMD ["{BUSYBOX}", "sh"]', "-", IMAGE, input=busybox_rootfs())
        file = compose_file(work)
        rounds = [compose_round(docker, file, f"lkbh{i}") for i in range(args.runs)]
        compose = common.run(["docker-compose", "version", "--short"]).strip()
        rows.append(row(f"docker-compose {compose} + {docker.version()}", rounds, linkd_up))
    header = [
        "Three services (store <- api <- worker, each `service_healthy` on the one before, "
        f"healthchecks every {INTERVAL}): from `up` to all healthy, and down (median of "
        f"{args.runs}; target: linkd up <= 1 s)",
        "",
        "| peer | runs | up to all healthy | fastest | down | up ÷ linkd |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    return "\n".join(header + rows)


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-docker", action="store_true", help="linkd only")


if __name__ == "__main__":
    sys.exit(common.part("health", __doc__ or "", main, runs=5, options=options))
