"""linkd's pytest plugin, through real nested pytest runs: the example system passes, a
failing test gets its containers' logs in the report, Ctrl-C takes the stacks down, a
run killed with SIGKILL has its stacks removed by the next run, and two runs of the same
stack file at once never collide.

The nested runs inherit the machine-wide lock (LINKD_KERNEL_LOCK_HELD, set by the
conftest's `kernel_lock`); they load no conftest of this directory, so they never try to
take it again.
"""

from __future__ import annotations

import importlib.metadata
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from linkd.client.api import Client
from linkd.runtime.stack.store import lease_path
from tests.integration.conftest import REPO, Linkd

RECORDS = Path(os.environ.get("LINKD_RUN_DIR", "/run/linkd")) / "pytest"


def plugin_args() -> list[str]:
    """Nothing when the entry point is installed (that is what is tested then; `-p
    linkd.client.pytest_plugin` would then register the module twice, which pluggy refuses),
    else the module, as a user without the entry point passes it."""
    installed = importlib.metadata.entry_points(group="pytest11", name="linkd")
    return [] if installed else ["-p", "linkd.client.pytest_plugin"]


def pytest_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *plugin_args(), *args]


def env() -> dict[str, str]:
    assert os.environ.get("LINKD_KERNEL_LOCK_HELD"), "the nested run must inherit the lock"
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO)}


def run_pytest(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        pytest_argv(*args), cwd=cwd, env=env(), capture_output=True, text=True, timeout=300
    )


def hosted() -> set[str]:
    return {s["name"] for s in Client().request("GET", "/v1/stacks")}


def test_the_microservices_example_passes() -> None:
    records = set(RECORDS.glob("*.json"))
    done = run_pytest("-q", "examples/microservices")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "5 passed" in done.stdout
    assert set(RECORDS.glob("*.json")) <= records  # the run removed its record


def test_two_runs_of_the_same_stack_file_at_once_never_collide() -> None:
    runs = [
        subprocess.Popen(pytest_argv("-q", "examples/microservices"), cwd=REPO, env=env(),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    for run in runs:
        output, _ = run.communicate(timeout=300)
        assert run.returncode == 0, output
        assert "5 passed" in output


def test_two_pytest_xdist_workers_with_the_same_stack_file() -> None:
    records = set(RECORDS.glob("*.json"))
    before = hosted()
    # --dist load spreads the tests of the one module over both workers: each brings up
    # the module's stack from the same file, at the same time.
    done = run_pytest("-v", "-n", "2", "--dist", "load", "examples/microservices")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "5 passed" in done.stdout
    assert "[gw0] " in done.stdout and "[gw1] " in done.stdout, done.stdout
    assert hosted() == before and set(RECORDS.glob("*.json")) <= records


FAILING = '''
import pytest
from linkd.client import waits
from linkd.client.pytest_plugin import stack_fixture

shared = stack_fixture({"services": {"talker": {
    "command": ["python3", "-u", "-c", "print('talker says hi'); import time; time.sleep(300)"],
}}}, scope="module", wait={"talker": waits.log("says hi")})


def test_fails(shared):
    assert shared["talker"].address
    assert False, "this test fails on purpose"


def test_passes(shared):
    assert "talker says hi" in shared["talker"].logs()


# The module's stack in two async tests, each on its own event loop: its async form.
@pytest.mark.asyncio
async def test_async_logs(shared):
    assert "talker says hi" in await shared.aio["talker"].logs()


@pytest.mark.asyncio
async def test_async_exec(shared):
    done = await shared.aio["talker"].exec("cat", "/etc/hostname")
    assert done.stdout.strip() == "talker-1"


@pytest.mark.linkd_stack("stack.yaml", wait={"echo": waits.log("echo up")})
def test_fails_with_the_marker(linkd_stack):
    assert linkd_stack.name.startswith("p")
    assert 1 == 2
'''


def test_a_failing_test_gets_its_containers_logs_in_the_report(linkd: Linkd) -> None:
    linkd.write("""
        services:
          echo:
            command: python3 -u -c "print('echo up'); import time; time.sleep(300)"
    """, "stack.yaml")
    (linkd.directory / "test_failing.py").write_text(FAILING)
    done = run_pytest("-q", "test_failing.py", cwd=linkd.directory)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "2 failed, 3 passed" in done.stdout, done.stdout
    # test_fails: the module's stack; test_fails_with_the_marker: the test's own.
    assert "linkd logs: p" in done.stdout and " talker-1 " in done.stdout, done.stdout
    assert "talker says hi" in done.stdout
    assert " echo-1 " in done.stdout and "echo up" in done.stdout
    assert "this test fails on purpose" in done.stdout


SLEEPER = '''
import time
from pathlib import Path
from linkd.client.pytest_plugin import stack_fixture

up = stack_fixture({"services": {"s": {"command": "sleep 300"}}})


def test_sleeps(up):
    Path("{marker}").write_text(up.name)
    time.sleep(300)
'''


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_sleeper(linkd: Linkd, marker: Path) -> tuple[subprocess.Popen[str], str]:
    marker.unlink(missing_ok=True)
    (linkd.directory / "test_sleeper.py").write_text(SLEEPER.replace("{marker}", str(marker)))
    # Ctrl-C as at a terminal: a suite started in the background by a shell without job
    # control inherits SIGINT ignored, and Python then leaves it ignored.
    run = subprocess.Popen(pytest_argv("-q", "test_sleeper.py"), cwd=linkd.directory, env=env(),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           preexec_fn=_default_sigint)
    deadline = time.monotonic() + 60
    while not marker.exists() or not marker.read_text():
        assert run.poll() is None, run.communicate()[0]
        assert time.monotonic() < deadline, "the nested run never brought its stack up"
        time.sleep(0.05)
    return run, marker.read_text()


def test_ctrl_c_and_a_killed_run(linkd: Linkd) -> None:
    marker = linkd.directory / "up.txt"

    # Ctrl-C: pytest stops, the fixture's teardown takes the stack down.
    run, name = start_sleeper(linkd, marker)
    assert name in hosted()
    run.send_signal(signal.SIGINT)
    try:
        output, _ = run.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        run.kill()
        output, _ = run.communicate()
        state = Client().request("GET", f"/v1/stacks/{name}") if name in hosted() else None
        if state is not None:
            Client().request("DELETE", f"/v1/stacks/{name}")  # no leftovers for the others
        raise AssertionError(f"the nested run did not end within 60 s of Ctrl-C; its "
                             f"output:\n{output}\nthe daemon's view of {name}: {state}") from None
    assert "KeyboardInterrupt" in output, output
    assert name not in hosted() and not lease_path(name).exists()

    # SIGKILL: nothing runs the teardown; the stack and the run's record stay...
    run, name = start_sleeper(linkd, marker)
    prefix = name.rsplit("-", 1)[0]
    run.kill()
    run.communicate(timeout=60)
    assert name in hosted()
    assert (RECORDS / f"{prefix}.json").exists()
    # ... until the next run of the plugin, which removes them before its tests.
    (linkd.directory / "test_nothing.py").write_text("def test_nothing():\n    pass\n")
    done = run_pytest("-q", "test_nothing.py", cwd=linkd.directory)
    assert done.returncode == 0, done.stdout + done.stderr
    assert name not in hosted()
    assert not (RECORDS / f"{prefix}.json").exists()
    assert not lease_path(name).exists()


def test_the_plugin_needs_the_marker_for_linkd_stack(linkd: Linkd) -> None:
    (linkd.directory / "test_unmarked.py").write_text(textwrap.dedent("""
        def test_unmarked(linkd_stack):
            pass
    """))
    done = run_pytest("-q", "test_unmarked.py", cwd=linkd.directory)
    assert done.returncode != 0
    assert "needs a @pytest.mark.linkd_stack" in done.stdout + done.stderr
