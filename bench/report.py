"""The markdown the benchmark prints (and saves to bench/results/latest.md).

Pure formatting: takes the measurements, returns text.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

TARGET_FLOOR_RATIO = 1.3  # linkd setup / ip -batch setup, at most
TARGET_CNI_RATIO = 3.0  # CNI setup / linkd setup, at least
TARGET_TEARDOWN_MS = 3.0  # linkd teardown per container at N=100, at most


@dataclass
class Cell:
    """Per-container seconds of each repetition for one implementation and one N."""

    setup: list[float] = field(default_factory=list)
    teardown: list[float] = field(default_factory=list)

    def median_ms(self) -> tuple[float, float] | None:
        if not self.setup:
            return None
        return statistics.median(self.setup) * 1000, statistics.median(self.teardown) * 1000


@dataclass
class Row:
    key: str
    label: str
    cells: dict[int, Cell]


@dataclass
class Header:
    command: str
    date: str
    nproc: int
    kernel: str
    versions: Sequence[tuple[str, str]]
    elapsed: float = 0.0


@dataclass
class Whole:
    count: int
    total_ms: float
    network_ms: float
    files_ms: float
    process_ms: float
    stop_ms: float


def _fmt(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "n/a"


def network_table(rows: Sequence[Row], sizes: Sequence[int], reps_note: str,
                  reps: int) -> list[str]:
    lines = [
        "## Network wiring per container",
        "",
        "netns + veth (peer born in the netns as eth0) + bridge port + IPv4 address + lo up +"
        " default route. Median milliseconds per container, **setup / teardown**, "
        f"{reps_note}.",
        "",
        "| implementation | " + " | ".join(f"N={n}" for n in sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    for row in rows:
        cells = []
        for n in sizes:
            cell = row.cells.get(n)
            got = cell.median_ms() if cell else None
            if got is None:
                cells.append("-")
            else:
                mark = "¹" if cell is not None and len(cell.setup) < reps else ""
                cells.append(f"{_fmt(got[0])} / {_fmt(got[1])}{mark}")
        lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
    return lines


def targets_table(rows: Sequence[Row], sizes: Sequence[int]) -> list[str]:
    by_key = {r.key: r for r in rows}

    def med(key: str, n: int, which: int) -> float | None:
        row = by_key.get(key)
        cell = row.cells.get(n) if row else None
        got = cell.median_ms() if cell else None
        return got[which] if got else None

    lines = [
        "",
        "| ratio (same run) | " + " | ".join(f"N={n}" for n in sizes) + " | target |",
        "|---|" + "---|" * len(sizes) + "---|",
    ]
    floor = []
    cni = []
    for n in sizes:
        linkd, ip, c = med("linkd", n, 0), med("ipbatch", n, 0), med("cni", n, 0)
        floor.append(_ratio(linkd, ip) if linkd and ip else "-")
        cni.append(_ratio(c, linkd) if c and linkd else "-")
    lines.append(f"| linkd setup ÷ `ip -batch` setup | {' | '.join(floor)} "
                 f"| ≤ {TARGET_FLOOR_RATIO}x |")
    lines.append(f"| CNI setup ÷ linkd setup (how much faster linkd is) | {' | '.join(cni)} "
                 f"| ≥ {TARGET_CNI_RATIO:.0f}x |")
    nv = []
    for n in sizes:
        v, linkd = med("netavark", n, 0), med("linkd", n, 0)
        nv.append(_ratio(v, linkd) if v and linkd else "-")
    lines.append(f"| netavark setup ÷ linkd setup | {' | '.join(nv)} | - |")
    teardown = med("linkd", 100, 1)
    if teardown is not None:
        verdict = "met" if teardown <= TARGET_TEARDOWN_MS else "missed"
        lines.append(f"| linkd teardown at N=100 | {_fmt(teardown)} ms ({verdict}) |"
                     + " |" * (len(sizes) - 1) + f" ≤ {TARGET_TEARDOWN_MS:.0f} ms |")
    verdicts = []
    for n in sizes:
        linkd, ip, c = med("linkd", n, 0), med("ipbatch", n, 0), med("cni", n, 0)
        if linkd and ip:
            ok = linkd / ip <= TARGET_FLOOR_RATIO
            verdicts.append(f"floor ratio at N={n} {'met' if ok else 'missed'}")
        if linkd and c:
            ok = c / linkd >= TARGET_CNI_RATIO
            verdicts.append(f"CNI ratio at N={n} {'met' if ok else 'missed'}")
    lines += ["", "Targets: " + "; ".join(verdicts) + "."]
    return lines


def whole_table(whole: Whole | None) -> list[str]:
    lines = ["", "## One container's steps inside linkd's runtime", ""]
    if whole is None:
        return [*lines, "Not measured in this run (`--containers 0`)."]
    return [
        *lines,
        f"One container at a time through linkd's runtime, `sleep 60`, median of {whole.count}:"
        " wall time until `linkd.runtime.containers.process.start` returned (the command"
        " exec'd in its new PID/UTS/IPC/mount namespaces inside the wired netns). The runtime"
        " only: a container as a user starts it, from `linkd up -d` beside `docker run -d`, is"
        " `bench/run start`'s table.",
        "",
        "| what | median ms |",
        "|---|---|",
        f"| network and DNS placement (`Kernel` steps) | {_fmt(whole.network_ms)} |",
        "| hosts, hostname, resolv.conf (`store.write_atomic`, fsync each) "
        f"| {_fmt(whole.files_ms)} |",
        f"| `process.start` (shim, namespaces, exec) | {_fmt(whole.process_ms)} |",
        f"| **all of it** (median of the sums) | **{_fmt(whole.total_ms)}** |",
        "",
        f"Stopping all {whole.count} (SIGTERM, concurrently) took {_fmt(whole.stop_ms)} ms.",
    ]


def render(
    header: Header,
    rows: Sequence[Row],
    sizes: Sequence[int],
    reps_note: str,
    reps: int,
    notes: Sequence[str],
    whole: Whole | None,
) -> str:
    lines = [
        "# linkd benchmark",
        "",
        f"- command: `{header.command}` (as root, from the repository root)",
        f"- date: {header.date}; run took {header.elapsed:.0f} s",
        f"- machine: `nproc` = {header.nproc}; kernel {header.kernel}",
        "- versions: " + ", ".join(f"{name} {version}" for name, version in header.versions),
        "",
    ]
    lines += network_table(rows, sizes, reps_note, reps)
    lines += targets_table(rows, sizes)
    if notes:
        lines += ["", "Notes:", ""]
        lines += [f"- {note}" for note in notes]
    lines += whole_table(whole)
    return "\n".join(lines) + "\n"
