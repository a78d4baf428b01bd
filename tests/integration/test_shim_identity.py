"""Which process is a container's shim (A) or init (B): one check (process.open_shim), by
its command line, after a pidfd is open, and signals only through that pidfd.

A decoy process names the container's spec file in its command line without being a
shim; B is a fork of A with A's very command line, and must not be taken for it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest

from linkd.core.state import ContainerState
from linkd.runtime.containers import process
from linkd.runtime.stack import store, teardown
from tests.integration import test_process
from tests.integration.test_process import Runner

netns, runner = test_process.netns, test_process.runner  # its fixtures, for these tests


@pytest.fixture
def decoy_of() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for popen in started:
        popen.kill()
        popen.wait()


def _decoy(started: list[subprocess.Popen[bytes]], spec_path: str) -> subprocess.Popen[bytes]:
    """A process whose command line holds `spec_path`, as an argument only."""
    popen = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "run",
                              spec_path])
    started.append(popen)
    return popen


async def test_running_shims_finds_each_shim_with_its_init(runner: Runner) -> None:
    proc = await runner.start(runner.spec("sleep", "60"))
    found = process.running_shims()
    assert found[str(runner.tmp / proc.name)] == (proc.pid, proc.init_pid)


async def test_open_shim_gives_a_pidfd_for_the_containers_own_processes_only(
    runner: Runner, decoy_of: list[subprocess.Popen[bytes]]
) -> None:
    spec = runner.spec("sleep", "60")
    proc = await runner.start(spec)
    shim = process.open_shim(proc.pid, spec.run_dir)
    init = process.open_shim(proc.init_pid, spec.run_dir, init=True)
    assert shim is not None and init is not None
    os.close(shim)
    os.close(init)
    assert process.open_shim(proc.init_pid, spec.run_dir) is None  # B is not A ...
    assert process.open_shim(proc.pid, spec.run_dir, init=True) is None  # ... nor A B
    assert process.open_shim(proc.pid, spec.run_dir + "-other") is None
    decoy = _decoy(decoy_of, os.path.join(spec.run_dir, process.SPEC_FILE))
    assert process.open_shim(decoy.pid, spec.run_dir) is None
    assert not process.kill_shim(decoy.pid, spec.run_dir)
    assert decoy.poll() is None
    assert process.kill_shim(proc.init_pid, spec.run_dir, init=True)
    assert await proc.wait() == 137


async def test_a_leftover_is_killed_only_if_it_is_the_containers_shim(
    runner: Runner, decoy_of: list[subprocess.Popen[bytes]]
) -> None:
    stack = "t" + secrets.token_hex(4)
    run_dir = store.container_dir(stack, "web-1")
    try:
        spec = runner.spec("sleep", "60", run_dir=str(run_dir))
        proc = await runner.start(spec)
        decoy = _decoy(decoy_of, str(run_dir / process.SPEC_FILE))
        # A state file whose PIDs are now someone else's: they are not killed, and the
        # container is found by its run directory instead.
        stale = ContainerState("web-1", pid=decoy.pid, init_pid=decoy.pid)
        assert teardown.Leftovers().end(stack, "web-1", stale)
        assert await proc.wait() == 137
        assert decoy.poll() is None  # still running, long after a kill would have landed
        # Its recorded PIDs, right this time: ended through them.
        again = await runner.start(spec)
        right = ContainerState("web-1", pid=again.pid, init_pid=again.init_pid)
        assert teardown.Leftovers().end(stack, "web-1", right)
        assert await again.wait() == 137
        assert not teardown.Leftovers().end(stack, "web-1", right)  # nothing left to end
    finally:
        shutil.rmtree(store.stack_dir(stack), ignore_errors=True)
