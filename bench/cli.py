"""CLI benchmark: `linkd ps` against its daemon, beside `docker ps` against dockerd.

    sudo .venv/bin/python bench/cli.py [--runs 20]

A linkd of its own (private run directory, daemon started by `linkd up -d`) holds one
stack of CONTAINERS `sleep` containers; a dockerd of its own (bench/common.Dockerd, in a
network namespace of the benchmark's own) holds CONTAINERS busybox containers. Then, in
turn, each run: `linkd ps` from a directory without a stack file (the only stack up is
the one shown), `linkd ps` in the stack file's directory (which reads and validates the
file to learn the stack's name), `docker ps`, and the interpreter alone (`python3 -c
pass`, the same interpreter linkd runs on). Wall time of each whole command, median of
the runs, after one untimed round. Targets: `linkd ps` <= 150 ms and <= 1.5x `docker ps`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import statistics
import sys
from pathlib import Path

import common

sys.path.insert(0, str(common.REPO))

from tests.images import busybox_image, write_tar

CONTAINERS = 10
TARGET_MS = 150.0
TARGET_RATIO = 1.5
IMAGE = "test/busybox:1"  # tests.images' name for it

STACK = f"""\
name: lkbench-cli
services:
  app:
    command: sleep 3600
    scale: {CONTAINERS}
"""


def measure(runs: int, work: Path, linkd: common.Linkd, docker: common.Dockerd
            ) -> dict[str, list[float]]:
    stack_dir = work / "stack"
    stack_dir.mkdir()
    (stack_dir / "linkd.yaml").write_text(STACK)
    linkd.compile()
    linkd("up", "-d", cwd=stack_dir)
    docker.start()
    docker("load", "-i", str(write_tar(busybox_image().save_files(), work / "busybox.tar")))
    for n in range(CONTAINERS):
        docker("run", "-d", "--network", "none", "--name", f"c{n}", IMAGE, "sleep", "3600")
    commands = {
        "`linkd ps`": (linkd.argv("ps"), linkd.env, work),
        "`linkd ps` in the stack file's directory": (linkd.argv("ps"), linkd.env, stack_dir),
        "`docker ps`": (docker.argv("ps"), docker.env, work),
        "`python3 -c pass`": ([sys.executable, "-c", "pass"], linkd.env, work),
    }
    shown = linkd("ps", cwd=work)
    if shown.count(" running") != CONTAINERS:
        raise common.BenchError(f"linkd ps does not show {CONTAINERS} running:\n{shown}")
    if len(docker("ps", "-q").split()) != CONTAINERS:
        raise common.BenchError(f"docker ps does not list {CONTAINERS} containers")
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for round_ in range(-1, runs):  # round -1 is the untimed warm-up
        for name, (argv, env, cwd) in commands.items():
            took = common.timed(argv, env=env, cwd=cwd)
            if round_ >= 0:
                samples[name].append(took)
    return samples


def render(samples: dict[str, list[float]], runs: int, versions: str) -> str:
    median = {name: statistics.median(values) for name, values in samples.items()}
    linkd, docker = median["`linkd ps`"], median["`docker ps`"]
    lines = [
        f"`linkd ps` against its daemon holding a stack of {CONTAINERS} containers, `docker ps`"
        f" against dockerd holding {CONTAINERS}; wall time of the whole command, median of"
        f" {runs} interleaved runs ({dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC;"
        f" `nproc` {os.cpu_count()}, kernel {platform.release()}; {versions})",
        "",
        "| command | median ms | range ms | ÷ `docker ps` |",
        "|---|---:|---:|---:|",
    ]
    for name, values in samples.items():
        lines.append(f"| {name} | {common.ms(median[name])} | {common.range_ms(values)} "
                     f"| {median[name] / docker:.2f}x |")
    floor = median["`python3 -c pass`"]
    lines += [
        "",
        f"`linkd ps`: {common.ms(linkd)} ms, of which {common.ms(linkd - floor)} ms over the"
        f" interpreter's own start; target <= {TARGET_MS:.0f} ms"
        f" {'met' if linkd * 1000 <= TARGET_MS else 'MISSED'}; {linkd / docker:.2f}x"
        f" `docker ps`, target <= {TARGET_RATIO}x"
        f" {'met' if linkd / docker <= TARGET_RATIO else 'MISSED'}.",
    ]
    return "\n".join(lines)


def main(args: argparse.Namespace, work: Path, cleanup: contextlib.ExitStack) -> str:
    linkd = common.Linkd(Path("/run/lkbench-cli"))
    cleanup.callback(linkd.stop)
    docker = common.Dockerd("lkbench-cli-docker")
    cleanup.callback(docker.stop)
    samples = measure(args.runs, work, linkd, docker)
    versions = (f"python {platform.python_version()}, {docker.version()} (Debian docker.io"
                f" {common.dpkg_version('docker.io')})")
    return render(samples, args.runs, versions)


if __name__ == "__main__":
    sys.exit(common.part("cli", __doc__ or "", main))
