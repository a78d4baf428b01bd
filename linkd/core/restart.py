"""Restart policies, as Docker applies them, as a pure decision.

Docker restarts with a delay that starts at 100 ms and doubles after each restart, and
resets once a container has run for 10 s. linkd does the same and caps the delay at
10 s (Docker: one minute) because stacks here are short-lived test and dev stacks.
`unless-stopped` behaves like `always`: a container stopped by the user is never
restarted by any policy.
"""

from __future__ import annotations

from linkd.core.model import RestartPolicy

FIRST_DELAY = 0.1
MAX_DELAY = 10.0
RESET_AFTER = 10.0


def next_delay(
    policy: RestartPolicy,
    exit_code: int,
    *,
    restarts: int,
    backoff: int,
    stopped_by_user: bool,
) -> float | None:
    """Seconds to wait before restarting, or None to leave the container exited.

    `restarts` counts every restart so far (what `on-failure:N` limits); `backoff`
    counts those since the delay was last reset (see `backoff_after_run`).
    """
    if stopped_by_user or policy.mode == "no":
        return None
    if policy.mode == "on-failure":
        if exit_code == 0:
            return None
        if policy.max_retries is not None and restarts >= policy.max_retries:
            return None
    return min(FIRST_DELAY * float(2**backoff), MAX_DELAY)


def backoff_after_run(backoff: int, ran_for: float) -> int:
    """The backoff step to use next: a long enough run starts the backoff afresh."""
    return 0 if ran_for >= RESET_AFTER else backoff
