"""What every benchmark script does first and last: check for root and take the
machine-wide kernel lock (unless bench/run holds it), and save its table."""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path

KERNEL_LOCK = "/run/lock/linkd-kernel.lock"
RESULTS = Path(__file__).resolve().parent / "results"


def root_and_lock(script: str) -> bool:
    """False (after saying why) when not root; else the lock is held until exit: one
    benchmark or integration test run at a time, since each sees the other's objects."""
    if os.geteuid() != 0:
        print(f"bench/{script}: run as root", file=sys.stderr)
        return False
    if not os.environ.get("LINKD_KERNEL_LOCK_FD"):  # bench/run holds it already
        fcntl.flock(os.open(KERNEL_LOCK, os.O_CREAT | os.O_RDWR, 0o600), fcntl.LOCK_EX)
    return True


def save_table(name: str, text: str) -> None:
    """Print a table and keep it as bench/results/NAME.md."""
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text(text + "\n")
