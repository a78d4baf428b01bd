"""Health checks as data: what a probe's result does to a container's health. No clock,
no processes; `linkd.runtime.containers.health` runs the probes and calls these functions.

The rules are Docker's (moby `daemon/health.go`), which Compose and Podman follow:

- A container with a healthcheck starts `starting`. The first probe runs one interval
  after the start (not at once), and each next one an interval after the previous one
  ended. While the container is `starting` and within `start_period`, the interval is
  `start_interval`.
- Exit code 0 is a success: the failing streak goes to 0 and the status to `healthy`
  (also during the start period, which it ends). Anything else (1, a command that is
  not found, a probe killed at `timeout`) is a failure: the streak grows and reaches
  `retries` -> `unhealthy`. While `starting` inside the start period, failures do not
  count at all (the streak stays). A failure never moves `healthy` back to `starting`.
- The last LOG_ENTRIES results are kept, each with its output cut to OUTPUT_LIMIT
  bytes (Docker's numbers: 5 results, 4096 bytes).
- A timed-out probe is recorded with exit code -1 and "Health check exceeded timeout
  (Ns)", as Docker records it.
- A container that starts again (a restart) starts over: `starting`, streak 0, no log.

`test: NONE` / `disable: true` means no probes and no health at all (None), as Docker
shows no health for such a container.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Literal

from linkd.core.model import Healthcheck

HealthStatus = Literal["starting", "healthy", "unhealthy"]

LOG_ENTRIES = 5
OUTPUT_LIMIT = 4096  # bytes of a probe's output kept
TIMEOUT_EXIT_CODE = -1


@dataclass(frozen=True, slots=True)
class Probe:
    """One probe's result: wall-clock start and end, exit code, output (cut)."""

    start: float
    end: float
    exit_code: int
    output: str


@dataclass(frozen=True, slots=True)
class Health:
    status: HealthStatus = "starting"
    failing_streak: int = 0
    log: tuple[Probe, ...] = ()

    @property
    def last(self) -> Probe | None:
        return self.log[-1] if self.log else None


def enabled(check: Healthcheck | None) -> bool:
    """Whether probes run at all: a healthcheck with a test that is not disabled."""
    return check is not None and not check.disabled and bool(check.test)


def initial(check: Healthcheck | None) -> Health | None:
    """The health of a container that has just started (None: it has no healthcheck)."""
    return Health() if enabled(check) else None


def record(health: Health, check: Healthcheck, probe: Probe, started_at: float) -> Health:
    """`health` after `probe`, for a container that started at `started_at`."""
    log = (*health.log, probe)[-LOG_ENTRIES:]
    if probe.exit_code == 0:
        return Health("healthy", 0, log)
    in_start_period = probe.start - started_at < check.start_period
    if health.status == "starting" and in_start_period:
        return replace(health, log=log)  # Docker: the streak does not grow
    streak = health.failing_streak + 1
    status: HealthStatus = "unhealthy" if streak >= check.retries else health.status
    return Health(status, streak, log)


def interval(health: Health, check: Healthcheck, now: float, started_at: float) -> float:
    """Seconds from the end of one probe (or the start) to the next probe."""
    if health.status == "starting" and now - started_at < check.start_period:
        return check.start_interval
    return check.interval


def timed_out(start: float, end: float, timeout: float) -> Probe:
    return Probe(
        start, end, TIMEOUT_EXIT_CODE,
        f"Health check exceeded timeout ({format_seconds(timeout)})",
    )


def clip(output: bytes) -> str:
    """A probe's output as kept: at most OUTPUT_LIMIT bytes, decoded leniently."""
    return output[:OUTPUT_LIMIT].decode(errors="replace")


def format_seconds(seconds: float) -> str:
    """Go's duration style for the durations a healthcheck has: 30s, 1.5s, 250ms."""
    if seconds >= 1 or seconds == 0:
        return f"{seconds:g}s"
    return f"{seconds * 1000:g}ms"


def summary_of(status: HealthStatus) -> str:
    """`(healthy)`, `(health: starting)`, `(unhealthy)`, as `docker ps` shows them."""
    return "(health: starting)" if status == "starting" else f"({status})"


def failure_reason(health: Health) -> str:
    """The last probe, for an error message: its exit code and (stripped) output."""
    last = health.last
    if last is None:
        return "no probe has finished yet"
    output = " ".join(last.output.split()) or "no output"
    if len(output) > 300:
        output = output[:297] + "..."
    return f"last probe exited {last.exit_code}: {output}"


def pending(
    containers: Iterable[tuple[str, Healthcheck | None]],
    statuses: dict[str, HealthStatus | None],
) -> frozenset[str]:
    """The containers whose service has a healthcheck and that are not healthy (yet):
    DNS leaves them out of their service's names. `statuses`: container -> health."""
    return frozenset(
        name
        for name, check in containers
        if enabled(check) and statuses.get(name) != "healthy"
    )


def to_plain(health: Health) -> dict[str, object]:
    """Docker's `State.Health` shape, lower-case: status, failing_streak, log."""
    return {
        "status": health.status,
        "failing_streak": health.failing_streak,
        "log": [
            {"start": p.start, "end": p.end, "exit_code": p.exit_code, "output": p.output}
            for p in health.log
        ],
    }


@dataclass(frozen=True, slots=True)
class Peer:
    """A container of a dependency, as `wait_verdict` needs it."""

    name: str
    status: str  # linkd.core.state.ContainerStatus
    exit_code: int | None
    has_check: bool
    health: Health | None


Verdict = tuple[Literal["wait", "ok", "fail"], str]


def healthy_verdict(service: str, dependency: str, peers: Iterable[Peer]) -> Verdict:
    """`depends_on: {dependency: {condition: service_healthy}}` of `service`: go on once
    every replica of the dependency is healthy; fail (with the reason) as soon as one
    exited or went unhealthy; else wait."""
    waiting = False
    for peer in peers:
        wanted = f"service {service} depends on {dependency} being healthy, but {peer.name}"
        if not peer.has_check:
            return "fail", f"{wanted} has no healthcheck"
        if peer.status in ("exited", "failed"):
            code = "" if peer.exit_code is None else f" with code {peer.exit_code}"
            return "fail", f"{wanted} exited{code} before it was healthy"
        if peer.health is not None and peer.health.status == "unhealthy":
            return "fail", f"{wanted} is unhealthy ({failure_reason(peer.health)})"
        if peer.status != "running" or peer.health is None or peer.health.status != "healthy":
            waiting = True
    return ("wait", "") if waiting else ("ok", "")
