"""The daemon's own tasks: the repair loop outlives whatever a repair raises, and it is
owned by the daemon (cancelled and awaited when the daemon stops), never left behind."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import pytest

from linkd.runtime.daemon import api
from linkd.runtime.daemon.daemon import Daemon, Hosted


class BuggyOnce:
    """A stack's supervisor whose first repair hits a bug (not a LinkdError)."""

    def __init__(self) -> None:
        self.calls = 0
        self.repaired_again = asyncio.Event()

    async def repair(self) -> int:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("a bug in repair")
        self.repaired_again.set()
        return 0


async def test_the_repair_loop_logs_a_bug_and_keeps_repairing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    daemon = Daemon()
    supervisor = BuggyOnce()
    daemon.stacks["shop"] = Hosted("shop", supervisor, asyncio.Event())  # type: ignore[arg-type]
    loop_task = asyncio.create_task(daemon.reconcile_forever(interval=0.01))
    again = asyncio.create_task(supervisor.repaired_again.wait())
    try:
        with caplog.at_level(logging.ERROR, "linkd"):
            done, _ = await asyncio.wait({loop_task, again}, timeout=10,
                                         return_when=asyncio.FIRST_COMPLETED)
        assert loop_task not in done, f"the repair loop died: {loop_task.exception()!r}"
        assert again in done
    finally:
        for task in (loop_task, again):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert "stack shop: repair failed with an unexpected error" in caplog.text
    assert "a bug in repair" in caplog.text  # with its traceback


async def test_the_repair_loop_ends_with_the_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LINKD_RUN_DIR", str(tmp_path))
    running, ended = asyncio.Event(), asyncio.Event()

    async def recover(self: Daemon) -> list[str]:
        return []

    async def reconcile_forever(self: Daemon, interval: float = 0) -> None:
        running.set()
        try:
            await asyncio.Event().wait()
        finally:
            ended.set()

    monkeypatch.setattr(Daemon, "recover", recover)
    monkeypatch.setattr(Daemon, "reconcile_forever", reconcile_forever)
    ready = asyncio.Event()
    serving = asyncio.create_task(api.serve(tmp_path / "linkd.sock", on_ready=ready.set))
    await asyncio.wait_for(ready.wait(), 10)
    await asyncio.wait_for(running.wait(), 10)
    serving.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await serving
    assert ended.is_set(), "the daemon stopped and left its repair loop running"
