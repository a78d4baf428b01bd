"""The benchmark driver behind `bench/run`: peers side by side, interleaved, one table.

Order of work: remove leftovers of an interrupted run, pick a /19 of 10.88.0.0/16 that no
host route touches, warm every implementation up (2 containers, untimed), then for each
repetition, for each N, run every implementation (in an order rotated per repetition, so
no implementation always goes first) as prepare (untimed) → setup (timed) → teardown
(timed) → cleanup (untimed). Then the whole-container measurement, the linkd per-call
profile (`linkd_profile.py`), and the table.

Parts: `bench/run` runs everything (the wiring benchmark above, then the DNS benchmark of
`dns.py`: linkd, dnsmasq and aardvark-dns under dnsperf); `bench/run wiring [OPTIONS]` and
`bench/run dns [--servers ...] [--no-save]`, `bench/run live` (bench/dns_live.py: lookups
during churn, registration latency) and `bench/run daemon [--containers N --memory N]`
(bench/daemon.py: recovery after kill -9, memory) and `bench/run health [--no-docker]`
(bench/health.py: three services up to all healthy, beside docker-compose) and
`bench/run ports` (bench/ports.py: iperf3 across a linkd bridge and through a published
port, beside a raw veth pair) and `bench/run images` (bench/images.py: image load, and
container start from an image with linkd's launcher and with runc) and `bench/run cli`
(bench/cli.py: `linkd ps` beside `docker ps`) and `bench/run start` (bench/start.py: a
container from the command line to running and to its name answering, linkd beside
`docker run -d` and `podman run -d`), `bench/run cluster` (bench/cluster.py: names and
VXLAN across three nodes) and `bench/run ui` (bench/ui.py: a change reaching the open
topology page in chromium) run one. Every part runs in a simulated host
(bench/common.py). A whole run runs every part whatever fails, appends each table to
bench/results/latest.md (each part also saves its own, bench/results/PART.md), ends with
the parts' outcomes, and exits non-zero if any failed.

Everything the run creates is removed in `finally`, and the run fails if `ip netns` or
`ip link` still show anything with a bench prefix afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.util
import ipaddress
import json
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import FrameType, ModuleType

import common
import container
import netsetup
import report

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "latest.md"
# run as they are, output appended
SCRIPTS = {"live": "dns_live.py", "daemon": "daemon.py", "health": "health.py",
           "ports": "ports.py", "images": "images.py", "cli": "cli.py", "start": "start.py",
           "cluster": "cluster.py", "ui": "ui.py"}
PARTS = ("all", "wiring", "dns", *SCRIPTS)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/run [all|wiring|dns]", description=__doc__.splitlines()[0],
        epilog="These options are the wiring part's; `bench/run dns --help` lists the DNS"
               " part's. Without a part, bench/run runs both (all).")
    p.add_argument("--sizes", default="10,100,500", help="container counts (default 10,100,500)")
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions (default 3)")
    p.add_argument("--slow-reps-500", type=int, default=2,
                   help="repetitions of CNI and netavark at N>=500 (default 2, to keep the"
                        " run short)")
    p.add_argument("--only", default="linkd,ipbatch,cni,netavark",
                   help="implementations to run (comma-separated)")
    p.add_argument("--containers", type=int, default=30,
                   help="whole-container measurement size (0 to skip)")
    p.add_argument("--profile", type=int, default=100, metavar="N",
                   help="append the linkd per-call profile at this N (0 to skip)")
    p.add_argument("--profile-only", action="store_true",
                   help="print only the linkd per-call profile")
    p.add_argument("--no-save", action="store_true", help="do not write bench/results/latest.md")
    return p.parse_args(argv)


def host_routes() -> list[ipaddress.IPv4Network]:
    out = subprocess.run(["ip", "-j", "-4", "route", "show", "table", "all"],
                         capture_output=True, text=True, check=True).stdout
    routes = []
    for entry in json.loads(out or "[]"):
        dst = entry.get("dst", "")
        if dst in ("default", "") or entry.get("type") in ("broadcast",):
            continue
        try:
            routes.append(ipaddress.IPv4Network(dst, strict=False))
        except ValueError:
            continue
    return routes


def free_block() -> ipaddress.IPv4Network:
    """A /19 of 10.88.0.0/16 that no host route touches (8 /22s: one per use)."""
    taken = host_routes()
    for block in ipaddress.IPv4Network("10.88.0.0/16").subnets(new_prefix=19):
        if block.network_address == ipaddress.IPv4Address("10.88.0.0"):
            continue  # podman's default network lives here when podman is installed
        if not any(block.overlaps(route) for route in taken):
            return block
    raise netsetup.BenchError("no /19 of 10.88.0.0/16 is free of host routes")


def versions() -> list[tuple[str, str]]:
    def dpkg(pkg: str) -> str:
        got = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", pkg],
                             capture_output=True, text=True, check=False)
        return got.stdout.strip() or "?"

    import pyroute2

    return [
        ("python", platform.python_version()),
        ("pyroute2", getattr(pyroute2, "__version__", "?")),
        ("iproute2", dpkg("iproute2")),
        ("containernetworking-plugins", dpkg("containernetworking-plugins")),
        ("netavark", dpkg("netavark")),
    ]


def build(block: ipaddress.IPv4Network, only: set[str]) -> dict[str, netsetup.NetSetup]:
    nets = list(block.subnets(new_prefix=22))
    impls: dict[str, netsetup.NetSetup] = {
        "linkd": netsetup.LinkdKernel(nets[0]),
        "ipbatch": netsetup.IpBatch(nets[1]),
        "cni": netsetup.Cni(nets[2]),
        "netavark": netsetup.Netavark(nets[3]),
    }
    return {k: v for k, v in impls.items() if k in only}


SLOW = {"cni", "netavark"}
WARMUP = 2  # containers per implementation in the untimed warm-up round


def reps_for(key: str, n: int, args: argparse.Namespace) -> int:
    reps: int = args.reps
    return min(reps, args.slow_reps_500) if key in SLOW and n >= 500 else reps


async def network(args: argparse.Namespace, impls: dict[str, netsetup.NetSetup],
                  sizes: list[int]) -> dict[str, dict[int, report.Cell]]:
    cells = {k: {n: report.Cell() for n in sizes} for k in impls}
    keys = list(impls)
    # Warm-up, untimed: imports, first sockets, page cache for every binary involved.
    for impl in impls.values():
        try:
            impl.prepare(WARMUP)
            await impl.setup(WARMUP)
            await impl.teardown()
        finally:
            impl.cleanup()
    for rep in range(args.reps):
        for n in sizes:
            order = keys[rep % len(keys):] + keys[: rep % len(keys)]
            for key in order:
                if rep >= reps_for(key, n, args):
                    continue
                impl = impls[key]
                try:
                    impl.prepare(n)
                    started = time.perf_counter()
                    await impl.setup(n)
                    wired = time.perf_counter()
                    await impl.teardown()
                    done = time.perf_counter()
                finally:
                    impl.cleanup()
                cells[key][n].setup.append((wired - started) / n)
                cells[key][n].teardown.append((done - wired) / n)
                print(f"  rep {rep + 1} N={n:<4} {key:<9} setup {(wired - started) / n * 1e3:6.1f}"
                      f" ms  teardown {(done - wired) / n * 1e3:6.1f} ms", file=sys.stderr,
                      flush=True)
    return cells


def notes(impls: dict[str, netsetup.NetSetup], plan_ms: float | None) -> list[str]:
    lines = [
        "Setup includes creating the bridge (once per N) and every namespace; per-container"
        " figures are the total divided by N. Containers are wired one after the other."
        f" Each implementation first wires {WARMUP} containers untimed (warm-up); the order of"
        " the implementations rotates with each repetition.",
        "Teardown, for every row, ends when the kernel has removed the host-side veths and the"
        " bridge is gone. linkd: `Kernel.remove_netns` per container, then"
        " `Kernel.remove_bridge`, which polls the bridge's ports (every 20 ms) until the"
        " kernel's cleanup work has taken the veths, then deletes it; the bench then checks"
        " in /sys that every veth is gone. `ip -batch`: one `ip -batch` of `netns delete`,"
        " poll /sys/class/net/BRIDGE/brif (every 2 ms) until empty, `ip link delete` the"
        " bridge.",
        "linkd's setup is one `Kernel` lifetime, as one `linkd up` has: whatever it starts"
        " on first use (its namespace helper process, when it has one) and `Kernel.close()`"
        " are inside the clock, so they weigh most at N=10.",
        "linkd's plans come from `linkd.core.plan.realize` (one network, one service with N"
        " replicas), computed before the clock starts"
        + (f" (realize took {plan_ms:.0f} ms at the largest N)" if plan_ms is not None else "")
        + ".",
    ]
    if "cni" in impls:
        lines.append(
            "CNI: per container `ip netns add`, then `bridge` ADD (host-local IPAM with a"
            " default route, data dir in a temp dir, isGateway, no ipMasq) and `loopback`"
            " ADD for lo (the bridge plugin leaves lo down); teardown: `bridge` DEL,"
            " `ip netns delete`, and the bridge deleted at the end (CNI's DEL never"
            " removes it). DEL deletes the veth itself, one by one, where linkd and"
            " `ip -batch` delete the namespace and let the kernel remove its veths. The plugin"
            " names host veths vethXXXXXXXX; the bench finds them as the ports of its"
            " `lkbench-cni` bridge.")
    if "netavark" in impls:
        lines.append(
            "netavark runs with its iptables driver (Debian's has no `none` driver)"
            " inside a throwaway namespace `lkbench-nvhost` that plays the host (via"
            " `nsenter --net`, one extra exec per call): bridge, host veths,"
            " iptables rules and ip_forward land there and vanish with it; the host firewall"
            " is never touched."
            " dns_enabled false; static IPs passed as podman does; per container `ip netns add`"
            " + `netavark setup`, teardown `netavark teardown` + `ip netns delete` (netavark"
            " deletes the bridge with the last container).")
    return lines


def check_clean() -> list[str]:
    return netsetup.leftovers() + container.leftovers()


def install_sigterm() -> None:
    """SIGTERM and SIGINT unwind (KeyboardInterrupt), so the `finally` clean-up runs.

    Only in this process: pyroute2 forks children (which inherit the handlers) and stops them
    with SIGTERM; a forked child must just die, never unwind a copy of our stack and run
    the clean-up (or read our netlink sockets) a second time.
    """
    main_pid = os.getpid()

    def on_term(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != main_pid:
            os._exit(128 + signum)
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)


async def amain(args: argparse.Namespace) -> int:
    import linkd_profile

    started = time.monotonic()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = only - {"linkd", "ipbatch", "cni", "netavark"}
    if unknown:
        raise SystemExit(f"bench/run: --only: unknown {', '.join(sorted(unknown))}")
    block = free_block()
    impls = build(block, only)
    # /22s 0-3: the four implementations; 4: whole containers; 5: the profile.
    spare = list(block.subnets(new_prefix=22))
    for impl in impls.values():
        impl.cleanup()
    container.cleanup()
    text = ""
    try:
        if args.profile_only:
            text = await linkd_profile.profile(args.profile or 100, spare[5])
        else:
            text = await run_all(args, impls, sizes, spare, started)
    finally:
        for impl in impls.values():
            impl.cleanup()
        container.cleanup()
    left = check_clean()
    if left:
        print(f"bench: left behind: {', '.join(left)}", file=sys.stderr)
        return 1
    print(text)
    if not args.no_save and not args.profile_only:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)
        print(f"(saved to {RESULTS.relative_to(HERE.parent)})", file=sys.stderr)
    return 0


async def run_all(args: argparse.Namespace, impls: dict[str, netsetup.NetSetup],
                  sizes: list[int], spare: list[ipaddress.IPv4Network], started: float) -> str:
    import linkd_profile

    print(f"subnets from {spare[0].supernet(new_prefix=19)}; sizes {sizes}; reps {args.reps}",
          file=sys.stderr)
    cells = await network(args, impls, sizes)
    whole = None
    if args.containers > 0:
        result = await container.measure(args.containers, spare[4])
        whole = report.Whole(
            count=args.containers,
            total_ms=result.median_ms(result.total),
            network_ms=result.median_ms(result.network),
            files_ms=result.median_ms(result.files),
            process_ms=result.median_ms(result.process),
            stop_ms=result.stop * 1000,
        )
    profile = ""
    if args.profile > 0 and "linkd" in impls:
        profile = await linkd_profile.profile(args.profile, spare[5])
    plan_ms = None
    if "linkd" in impls:
        linkd_impl = impls["linkd"]
        assert isinstance(linkd_impl, netsetup.LinkdKernel)
        plan_ms = linkd_impl.plan_seconds * 1000
    labels = {k: v.name for k, v in impls.items()}
    rows = [report.Row(k, labels[k], cells[k]) for k in impls]
    slow_note = ""
    if any(k in SLOW for k in impls) and any(n >= 500 for n in sizes) \
            and args.slow_reps_500 < args.reps:
        slow_note = (f"; ¹ CNI and netavark at N≥500: {args.slow_reps_500} repetition"
                     f"{'s' if args.slow_reps_500 != 1 else ''} only (`--slow-reps-500`:"
                     " they are the slowest, and this keeps the run short)")
    reps_note = f"{args.reps} interleaved repetitions{slow_note}"
    header = report.Header(
        command="bench/run" + ("" if len(sys.argv) < 2 else " " + " ".join(sys.argv[1:])),
        date=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        nproc=os.cpu_count() or 0,
        kernel=platform.release(),
        versions=versions(),
        elapsed=time.monotonic() - started,
    )
    text = report.render(header, rows, sizes, reps_note, args.reps, notes(impls, plan_ms),
                         whole)
    if profile:
        text += "\n" + profile
    return text


def dns_bench() -> ModuleType:
    """bench/dns.py, imported under a name no package can shadow (`dns` is dnspython's)."""
    spec = importlib.util.spec_from_file_location("linkd_bench_dns", HERE / "dns.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def run_dns(argv: Sequence[str], command: str, also_to: Path | None) -> int:
    """The DNS part: print its table, save it (and append it to `also_to`)."""
    dns = dns_bench()
    args = dns.parse_args(argv, prog="bench/run dns")
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    try:
        text = dns.run(servers, save=not args.no_save, command=command)
    except dns.BenchError as exc:
        print(f"bench/run: dns: {exc}", file=sys.stderr)
        return 1
    print(text)
    if also_to is not None and not args.no_save:
        with also_to.open("a") as f:
            f.write("\n" + text)
    return 0


def run_script(script: str, argv: Sequence[str], also_to: Path | None) -> int:
    """bench/dns_live.py or bench/daemon.py as they are; their table is appended to
    `also_to` (latest.md) on a whole run."""
    result = subprocess.run([sys.executable, str(HERE / script), *argv],
                            stdout=subprocess.PIPE, text=True)
    print(result.stdout, end="")
    if also_to is not None and result.returncode == 0:
        with also_to.open("a") as f:
            f.write("\n" + result.stdout)
    return result.returncode


def main(argv: Sequence[str]) -> int:
    if os.geteuid() != 0:
        print("bench/run: run as root (it creates network namespaces)", file=sys.stderr)
        return 2
    part, rest = (argv[0], list(argv[1:])) if argv and argv[0] in PARTS else ("all", list(argv))
    command = "bench/run" + "".join(f" {a}" for a in argv)
    install_sigterm()
    common.enter_simulated_host()
    try:
        if part == "dns":
            return run_dns(rest, command, None)
        if part in SCRIPTS:
            return run_script(SCRIPTS[part], rest, None)
        args = parse_args(rest)
        if part == "wiring" or args.profile_only:
            return asyncio.run(amain(args))
        try:
            code = asyncio.run(amain(args))
        except Exception:  # reported, and the other parts still run
            traceback.print_exc()
            code = 1
        return run_the_rest(code, save=not args.no_save)
    except KeyboardInterrupt as exc:
        left = check_clean()
        print(f"bench/run: interrupted ({exc or 'SIGINT'}); "
              + (f"left behind: {', '.join(left)}" if left else "everything removed"),
              file=sys.stderr)
        return 130


def run_the_rest(wiring: int, save: bool) -> int:
    """Every other part after the wiring one, whatever failed before; the parts' exit
    codes are said at the end (and in latest.md), and any failure fails the run."""
    also_to = RESULTS if save else None
    if save and wiring != 0:  # latest.md is the wiring part's table: say it has none
        RESULTS.write_text("# linkd benchmark\n\nThe wiring part FAILED (see its output).\n")
    codes = {"wiring": wiring,
             "dns": run_dns([] if save else ["--no-save"], "bench/run dns", also_to)}
    for name, script in SCRIPTS.items():
        codes[name] = run_script(script, [], also_to)
    summary = "Parts: " + ", ".join(
        f"{name} {'ok' if code == 0 else f'FAILED (exit {code})'}" for name, code in codes.items())
    print(summary, file=sys.stderr)
    if also_to is not None:
        with also_to.open("a") as f:
            f.write(f"\n{summary}\n")
    return 0 if not any(codes.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
