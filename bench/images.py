"""Image benchmark: loading a busybox image, and starting a container from it.

    sudo .venv/bin/python bench/images.py [--runs 20]

- load: `ImageStore.load` of a busybox image (Debian's busybox-static and its applet
  symlinks, two layers) into an empty private store, as an OCI archive (gzip layers) and
  as a `docker save` archive (plain layers); and again into a store that has the layers
  (every blob still hashed, nothing unpacked).
- pull: `linkd.runtime.images.pull` from Debian's docker-registry, a 3-layer ~20 MB
  image cold and warm (a second image sharing two of its layers), and `linkd image
  pull`, beside `skopeo copy docker://... oci:` and `docker pull` (a dockerd on a
  simulated host of its own) of the same image from the same registry, in the same
  rounds (issue 17's target: cold <= 1.0x skopeo).
- start: from `process.start` until the container's command has written its first line
  to the log (so both runtimes are timed to the same point: runc's `start` returns when
  runc is exec'd, before the command runs), for linkd's own launcher and for runc, with a
  host command (no image) as the baseline. Each container runs in a network namespace of
  its own (`lkbench-img`), is stopped and its writable layer removed between runs.

Medians over --runs interleaved rounds (the order rotates each round). Prints a markdown
table (also saved to bench/results/images.md); takes the machine-wide kernel lock unless
bench/run holds it. Targets (issue 7): start <= 100 ms with runc and <= 50 ms with
linkd's launcher. (`docker run -d` and `podman run -d` beside linkd's command line are
bench/start.py's.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import common

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from linkd.core.model import Limits, RestartPolicy  # noqa: E402
from linkd.core.plan import ContainerPlan  # noqa: E402
from linkd.runtime.containers import process, rootfs  # noqa: E402
from linkd.runtime.images.image_store import ImageStore  # noqa: E402
from tests.images import busybox_image, write_tar  # noqa: E402

NETNS = "lkbench-img"


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.1f} ms"


def _range(values: list[float]) -> str:
    return f"{min(values) * 1000:.1f}-{max(values) * 1000:.1f}"


def bench_load(work: Path, runs: int) -> list[tuple[str, list[float]]]:
    image = busybox_image()
    oci = write_tar(image.oci_files(), work / "busybox.oci.tar")
    save = write_tar(image.save_files(), work / "busybox.tar")
    cold_oci: list[float] = []
    cold_save: list[float] = []
    warm: list[float] = []
    for n in range(runs):
        for kind, source, into in (("oci", oci, cold_oci), ("save", save, cold_save)):
            store = ImageStore(work / f"store-{kind}-{n}")
            start = time.perf_counter()
            store.load(source)
            into.append(time.perf_counter() - start)
            start = time.perf_counter()
            store.load(source)
            warm.append(time.perf_counter() - start)
            shutil.rmtree(store.root)
    size = oci.stat().st_size / 1e6
    return [
        (f"load, OCI archive ({size:.1f} MB, gzip), empty store", cold_oci),
        (f"load, docker save archive ({save.stat().st_size / 1e6:.1f} MB), empty store",
         cold_save),
        ("load again, layers in the store (hashing only)", warm),
    ]


def bench_pull(work: Path, runs: int, cleanup: contextlib.ExitStack
               ) -> list[tuple[str, list[float]]]:
    """Pulls from Debian's docker-registry (plain HTTP) on the benchmark's simulated host:
    a 3-layer image of ~20 MB of random data (gzip layers), into an empty store and, as
    a second image sharing its two lower layers, into a store that has them; beside
    `skopeo copy` of the same image into an OCI layout (which unpacks nothing) and
    `docker pull` by a dockerd on a machine of its own (which unpacks, as linkd does),
    in the same rounds, in rotating order. The registry listens on the address that
    machine reaches (its uplink's far end); every client treats it as an insecure
    registry (HTTPS tried first, then plain HTTP), as Docker's rule says."""
    from linkd.runtime.images.pull import pull
    from tests.images import Entry, Image, layer_tar, write_dir
    from tests.registry import docker_registry, push

    layers = [layer_tar([Entry(f"data{i}", data=os.urandom(size))])
              for i, size in enumerate((12 << 20, 6 << 20, 2 << 20))]
    image = Image(layers, name="bench/pull:1")
    other = Image([*layers[:2], layer_tar([Entry("other", data=os.urandom(2 << 20))])],
                  name="bench/other:1")
    docker = common.Dockerd("lkbench-pull-docker", ["--insecure-registry", "198.18.0.0/15"])
    cleanup.callback(docker.stop)
    docker.start()
    address = docker.machine.host.outside_address
    env = {**os.environ, "LINKD_INSECURE_REGISTRIES": address}
    times: dict[str, list[float]] = {k: [] for k in ("cold", "warm", "cli", "skopeo",
                                                      "docker")}
    with docker_registry(work / "registry", address=address) as reg:
        ref = f"{reg.host}/bench/pull:1"
        push(write_dir(image.oci_files(), work / "pull-oci"), ref)
        push(write_dir(other.oci_files(), work / "other-oci"), f"{reg.host}/bench/other:1")

        def linkd_pulls(n: int) -> None:
            store = ImageStore(work / f"pull-store-{n}")
            start = time.perf_counter()
            asyncio.run(pull(ref, store, env=env))
            times["cold"].append(time.perf_counter() - start)
            start = time.perf_counter()
            pulled = asyncio.run(pull(f"{reg.host}/bench/other:1", store, env=env))
            times["warm"].append(time.perf_counter() - start)
            assert pulled.fetched == 1
            shutil.rmtree(store.root)

        def linkd_command(n: int) -> None:
            store = work / f"cli-store-{n}"
            start = time.perf_counter()
            common.run([sys.executable, "-m", "linkd", "image", "pull", ref],
                       env={**env, "LINKD_IMAGES": str(store), "PYTHONPATH": str(REPO)})
            times["cli"].append(time.perf_counter() - start)
            shutil.rmtree(store)

        def skopeo(n: int) -> None:
            dest = work / f"skopeo-{n}"
            start = time.perf_counter()
            common.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false",
                        f"docker://{ref}", f"oci:{dest}"])
            times["skopeo"].append(time.perf_counter() - start)
            shutil.rmtree(dest)

        def docker_pull(n: int) -> None:
            start = time.perf_counter()
            docker("pull", "-q", ref)
            times["docker"].append(time.perf_counter() - start)
            docker("rmi", ref)  # and its layers: the next pull is cold again

        peers = [linkd_pulls, linkd_command, skopeo, docker_pull]
        docker_pull(-1)  # warm-up, untimed: dockerd's first pull sets up its stores
        times["docker"].clear()
        for n in range(runs):
            for peer in peers[n % len(peers):] + peers[:n % len(peers)]:
                peer(n)
    return [
        ("pull, 3 layers ~20 MB, empty store (fetch, verify, unpack)", times["cold"]),
        ("pull, a second image sharing 2 of its 3 layers (one fetched)", times["warm"]),
        ("`linkd image pull` of the first (the command: Python's start included)",
         times["cli"]),
        ("`skopeo copy docker://... oci:` of the first (fetch only)", times["skopeo"]),
        (f"`docker pull` of the first ({docker.version()}; fetch, unpack)",
         times["docker"]),
    ]


def _container(image: str | None, runtime: str | None) -> ContainerPlan:
    argv = ("sh", "-c", "echo ready; exec sleep 600") if image else (
        "/bin/sh", "-c", "echo ready; exec sleep 600")
    return ContainerPlan(
        name="c-1", service="c", replica=1, netns=NETNS, hostname="c-1", interfaces=(),
        argv=argv, env=(("PATH", "/bin:/usr/bin"),), working_dir="/", user=None,
        restart=RestartPolicy(), stop_signal="SIGTERM", stop_grace_period=2.0,
        healthcheck=None, image=image, limits=Limits(), runtime=runtime,
    )


async def _start_once(work: Path, container: ContainerPlan) -> float:
    run_dir = work / "run" / "c-1"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    for name, text in (("hosts", "127.0.0.1 localhost\n"), ("hostname", "c-1\n"),
                       ("resolv.conf", "nameserver 127.0.0.11\n")):
        (run_dir / name).write_text(text)
    (run_dir / "bindings").mkdir()
    log = run_dir / "log"
    spec = process.ProcessSpec(
        name="c-1", netns=NETNS, hostname="c-1", argv=container.argv, env=container.env,
        working_dir="/", user=None,
        bind_files=((str(run_dir / "hosts"), "/etc/hosts"),
                    (str(run_dir / "hostname"), "/etc/hostname"),
                    (str(run_dir / "resolv.conf"), "/etc/resolv.conf")),
        log_path=str(log), run_dir=str(run_dir),
        bind_dirs=((str(run_dir / "bindings"), "/run/linkd"),),
    )
    start = time.perf_counter()
    spec = rootfs.prepare(spec, container, "lkbench")  # part of a start: bundle, cgroups
    proc = await process.start(spec)
    while b"ready" not in (log.read_bytes() if log.exists() else b""):
        await asyncio.sleep(0.0005)
    took = time.perf_counter() - start
    await proc.stop(signal.SIGTERM, 5.0)
    shutil.rmtree(run_dir, ignore_errors=True)
    return took


async def bench_start(work: Path, runs: int) -> list[tuple[str, list[float]]]:
    store = ImageStore()
    image = store.load(write_tar(busybox_image().oci_files(), work / "start.oci.tar"),
                       name="lkbench/busybox:1")
    kinds = [("container start, linkd's launcher (image)", _container(image.id, "linkd"))]
    if shutil.which("runc"):
        kinds.append(("container start, runc (image)", _container(image.id, "runc")))
    kinds.append(("container start, host command (no image)", _container(None, None)))
    times: dict[str, list[float]] = {k: [] for k, _ in kinds}
    for _, container in kinds:  # warm-up, untimed
        await _start_once(work, container)
    for n in range(runs):
        for what, container in kinds[n % len(kinds):] + kinds[: n % len(kinds)]:
            times[what].append(await _start_once(work, container))
    store.remove("lkbench/busybox:1")
    return [(k, times[k]) for k, _ in kinds]


def main(args: argparse.Namespace, work: Path, cleanup: contextlib.ExitStack) -> str:
    os.environ["LINKD_IMAGES"] = str(work / "store")
    common.run(["ip", "netns", "add", NETNS])
    cleanup.callback(subprocess.run, ["ip", "netns", "del", NETNS], check=False)
    from linkd.runtime.kernel import cgroups

    cleanup.callback(cgroups.remove_stack, "lkbench")
    pulls = bench_pull(work, args.runs, cleanup)
    rows = (bench_load(work, args.runs) + pulls
            + asyncio.run(bench_start(work, args.runs)))
    lines = [f"Images: a busybox image, median of {args.runs} runs (min-max ms)", "",
             "| what | median | range |", "|---|---|---|"]
    lines += [f"| {what} | {_ms(values)} | {_range(values)} |" for what, values in rows]
    cold, skopeo, docker = (statistics.median(pulls[i][1]) for i in (0, 3, 4))
    lines += ["", f"Cold pull, linkd / skopeo: **{cold / skopeo:.2f}x**; linkd / docker pull: "
              f"**{cold / docker:.2f}x** (issue 17's target: <= 1.0x skopeo)"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(common.part("images", __doc__ or "", main))
