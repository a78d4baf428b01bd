"""Topology page benchmark: how long a change takes to reach the open page.

    sudo .venv/bin/python bench/ui.py [--runs 20]

A daemon of its own (bench/common.Linkd) runs a stack of a service per run, `webN`,
which exits when the benchmark drops a file and is restarted (`restart: on-failure`),
and `db`, whose healthcheck (every 50 ms) follows another file. `linkd ui` serves the
page and Debian's chromium (Selenium through chromium-driver, tests/browser.py) keeps it
open. Each run restarts its `webN` once, flips `db`'s health twice, and takes a second
stack up and down. A change is timed from the daemon's event (its `time`: when the daemon
published it) to the moment the page's picture (or its list of stacks) shows it (a
MutationObserver in the page notes the time, Date.now()); beside it, the same event's
arrival at a plain subscriber of the event stream on the daemon's socket (the one
`linkd up -d` uses): what any client of the stream gets, with no page.

Target: a change on the page within 1 s. Everything it starts is stopped (by PID) and
its directories removed at the end; runs in a simulated host (bench/common.py).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from linkd.client.api import Client  # noqa: E402
from linkd.client.events import StackEvents  # noqa: E402
from tests.browser import chromium  # noqa: E402

RUN_DIR = Path("/run/lkbench-ui")
STACK = "lkbui"
OTHER = "lkbuiother"

# Every mutation of the picture or the list of stacks: when, and what they said then
# (each container's box's text; the stacks listed).
OBSERVE = """
window.seen = [];
const note = () => window.seen.push([Date.now(),
    Object.fromEntries([...document.querySelectorAll("#picture [data-container]")]
                       .map(g => [g.dataset.container, g.textContent])),
    [...document.querySelectorAll("#stacks option")].map(o => o.value)]);
const watch = new MutationObserver(note);
for (const id of ["picture", "stacks"]) {
  watch.observe(document.getElementById(id), {childList: true, subtree: true,
                                               characterData: true});
}
"""


def spec(trigger: Path, runs: int) -> dict[str, Any]:
    """A service per run that exits once (its restart delay is Docker's first, 100 ms,
    where one service restarted every run would wait twice as long each time), and `db`."""
    crashing = {
        f"web{n}": {"command": ["sh", "-c", f"while [ ! -f {trigger}/crash{n} ]; do sleep "
                                            f"0.01; done; rm {trigger}/crash{n}; exit 3"],
                    "restart": "on-failure"}
        for n in range(1, runs + 1)
    }
    return {"services": {
        **crashing,
        "db": {"command": ["sleep", "3600"],
               "healthcheck": {"test": ["CMD", "test", "-f", f"{trigger}/healthy"],
                               "interval": "50ms", "timeout": "1s", "retries": 1}},
    }}


class Arrivals:
    """The events of some stacks (linkd.client.events, one subscription each), each with
    the time it arrived here."""

    def __init__(self, path: Path, stacks: tuple[str, ...]) -> None:
        self.events: list[tuple[float, dict[str, Any]]] = []
        self._streams = [StackEvents(path, stack, self._note) for stack in stacks]

    def _note(self, event: dict[str, Any]) -> None:
        self.events.append((time.time(), event))

    def wait(self, what: str, match: Callable[[dict[str, Any]], bool], after: float,
             timeout: float = 30) -> tuple[float, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for arrived, event in list(self.events):
                if event.get("time", 0) >= after and match(event):
                    return arrived, event
            time.sleep(0.005)
        raise common.BenchError(f"no event for {what} within {timeout} s")

    def close(self) -> None:
        for stream in self._streams:
            stream.close()


Check = Callable[[dict[str, str], list[str]], bool]


def shown(driver: Any, what: str, since_ms: float, check: Check, timeout: float = 30) -> float:
    """When (time.time()) the page first showed `check(boxes, stacks)` after `since_ms`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for at, picture, stacks in driver.execute_script("return window.seen"):
            if at >= since_ms and check(picture, stacks):
                return float(at) / 1000
        time.sleep(0.01)
    raise common.BenchError(f"the page did not show {what} within {timeout} s")


def box_says(container: str, text: str) -> Check:
    return lambda boxes, stacks: text in boxes.get(container, "")


def listed(stack: str, present: bool = True) -> Check:
    return lambda boxes, stacks: (stack in stacks) == present


def main(args: argparse.Namespace, work: Path, cleanup: contextlib.ExitStack) -> str:
    linkd = common.Linkd(RUN_DIR)
    cleanup.callback(linkd.stop)
    sock = linkd.start_daemon()
    client = Client(sock)
    client.request("POST", "/v1/stacks",
                   {"name": STACK, "spec": spec(work, args.runs), "directory": "/"})
    ui = subprocess.Popen(linkd.argv("ui"), env=linkd.env, stdout=subprocess.PIPE, text=True)
    cleanup.callback(common.stop_child, ui)  # type: ignore[arg-type]
    assert ui.stdout is not None
    url = ui.stdout.readline().strip()
    subscriber = Arrivals(sock, (STACK, OTHER))
    cleanup.callback(subscriber.close)
    driver = cleanup.enter_context(chromium())
    driver.get(url)
    deadline = time.monotonic() + 30
    while "db-1" not in driver.find_element("id", "picture").text:
        if time.monotonic() > deadline:
            raise common.BenchError("the page never drew the stack")
        time.sleep(0.05)
    driver.execute_script(OBSERVE)

    page: dict[str, list[float]] = {"restart": [], "health": [], "stack up": [],
                                    "stack down": []}
    stream: dict[str, list[float]] = {k: [] for k in page}

    def measure(kind: str, act: Callable[[], object], event: dict[str, object],
                check: Check) -> None:
        """Do `act`; time the event with those fields and the page's `check` coming true."""
        before = time.time()
        act()
        arrived, found = subscriber.wait(
            kind, lambda e: all(e.get(k) == v for k, v in event.items()), before)
        published = float(found["time"])
        at = shown(driver, kind, published * 1000 - 1, check)
        page[kind].append(at - published)
        stream[kind].append(arrived - published)

    healthy = work / "healthy"
    lone = {"name": OTHER, "spec": {"services": {"lone": {"command": ["sleep", "3600"]}}},
            "directory": "/"}
    for n in range(1, args.runs + 1):
        web = f"web{n}-1"
        measure("restart", (work / f"crash{n}").touch,
                {"type": "lifecycle", "container": web, "status": "running", "restarts": 1},
                box_says(web, "1 restart"))
        measure("health", healthy.touch,
                {"type": "health", "container": "db-1", "health": "healthy"},
                box_says("db-1", "db · healthy"))
        measure("health", healthy.unlink,
                {"type": "health", "container": "db-1", "health": "unhealthy"},
                box_says("db-1", "db · unhealthy"))
        measure("stack up", functools.partial(client.request, "POST", "/v1/stacks", lone),
                {"type": "stack", "stack": OTHER, "status": "starting"}, listed(OTHER))
        measure("stack down",
                functools.partial(client.request, "DELETE", f"/v1/stacks/{OTHER}"),
                {"type": "stack", "stack": OTHER, "status": "removed"},
                listed(OTHER, present=False))

    rows = []
    for kind, samples in page.items():
        ordered = sorted(samples)
        p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
        raw = statistics.median(stream[kind])
        rows.append(f"| {kind} | {len(samples)} | {common.ms(statistics.median(samples))} "
                    f"| {common.ms(p99)} | {common.ms(raw)} "
                    f"| {statistics.median(samples) / max(raw, 1e-6):.0f}x |")
    header = [
        "From the daemon's event to the open page showing it (`linkd ui`, Debian's chromium "
        f"{common.dpkg_version('chromium')}; {args.runs} runs; target <= 1 s), beside the "
        "event's arrival at a plain subscriber of the stream",
        "",
        "| change | samples | page p50 ms | page p99 ms | stream p50 ms | page ÷ stream |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    return "\n".join(header + rows)


if __name__ == "__main__":
    sys.exit(common.part("ui", __doc__ or "", main, runs=20))
