"""The daemon's side of a health agent never blocks its event loop (which also answers
DNS), not even when a killed agent takes its time to die.

A process in a frozen cgroup v1 freezer does not die of SIGKILL until it is thawed: the
agent here is such a process, thawed two seconds later by a thread.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
import time
from pathlib import Path

import pytest

from linkd.runtime.containers import health

FREEZER = Path("/sys/fs/cgroup/freezer")


async def test_closing_an_agent_does_not_wait_for_its_death_on_the_loop() -> None:
    if not (FREEZER / "cgroup.procs").exists():
        pytest.skip("no cgroup v1 freezer on this host")
    agent = health.Agent(1, "/nonexistent")
    agent.argv = ["sleep", "600"]  # stands in for the agent: only its death matters here
    agent._spawn(asyncio.get_running_loop())
    popen = agent._popen
    assert popen is not None
    frozen = FREEZER / f"linkd-test-{secrets.token_hex(4)}"
    frozen.mkdir()
    thaw = threading.Timer(2.0, lambda: (frozen / "freezer.state").write_text("THAWED"))
    try:
        (frozen / "cgroup.procs").write_text(str(popen.pid))
        (frozen / "freezer.state").write_text("FROZEN")
        while (frozen / "freezer.state").read_text().strip() != "FROZEN":
            await asyncio.sleep(0.01)
        thaw.start()
        started = time.monotonic()
        agent.close()
        assert time.monotonic() - started < 0.5
        async with asyncio.timeout(10):  # reaped once thawed, by the loop
            while popen.returncode is None:
                await asyncio.sleep(0.02)
        assert popen.returncode == -9
    finally:
        thaw.cancel()
        (frozen / "freezer.state").write_text("THAWED")
        if popen.poll() is None:
            popen.kill()
            popen.wait()
        for _ in range(100):  # the cgroup empties once the process is reaped
            try:
                os.rmdir(frozen)
                break
            except OSError:
                time.sleep(0.02)
