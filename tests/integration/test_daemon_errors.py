"""Errors reach the user as what they are: a teardown that failed is a failed `down`
(an error status from the API, a non-zero exit from the CLI, each failure said), an
error raised deep inside task groups is its message, not an ExceptionGroup traceback, and
a daemon with a wrong `--tcp` stops before it touches the stacks it would recover."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from linkd import Stack
from linkd.errors import LinkdError
from linkd.runtime.kernel import cgroups
from tests.integration.conftest import REPO, Linkd
from tests.integration.test_recovery import (
    alive,
    containers,
    kill_daemon,
    restart_daemon,
    state_of,
)

MISSING_IMAGE = """
    services:
      app:
        image: linkd-test/never-loaded:1
"""


def said_plainly(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    assert "ExceptionGroup" not in result.stderr, result.stderr
    assert fragment in result.stderr, result.stderr


def test_up_in_the_foreground_of_a_missing_image_says_only_the_error(linkd: Linkd) -> None:
    linkd.write(MISSING_IMAGE)
    result = linkd.run("up", "-p", linkd.project, check=False)
    said_plainly(result, "image linkd-test/never-loaded:1 is not in the store")


def test_up_d_of_a_missing_image_says_only_the_error(linkd: Linkd) -> None:
    linkd.write(MISSING_IMAGE)
    result = linkd.run("up", "-d", "-p", linkd.project, check=False)
    said_plainly(result, "image linkd-test/never-loaded:1 is not in the store")



def test_the_python_api_raises_the_error_itself(linkd: Linkd) -> None:
    spec = {"services": {"app": {"image": "linkd-test/never-loaded:1"}}}
    with pytest.raises(LinkdError, match="never-loaded:1 is not in the store") as caught:
        Stack.start(spec, name=linkd.project, directory=linkd.directory)
    assert not isinstance(caught.value, BaseExceptionGroup)


# --- a teardown that fails ----------------------------------------------------------------

LIMITED = """
    services:
      app:
        command: sleep 300
        mem_limit: 64m
"""


@contextlib.contextmanager
def squatter(stack: str) -> Iterator[None]:
    """A process of the test's own in the stack's memory cgroup: the kernel refuses to
    remove a cgroup that holds a process (EBUSY), so the stack's teardown fails there,
    while every other step succeeds."""
    found = [d for d in cgroups.stack_dirs(stack) if "memory" in d.parts]
    assert found, f"no memory cgroup for stack {stack}: {cgroups.stack_dirs(stack)}"
    process = subprocess.Popen(["sleep", "300"])
    try:
        (found[0] / "cgroup.procs").write_text(str(process.pid))
        yield
    finally:
        process.kill()
        process.wait()


def failed_down(result: subprocess.CompletedProcess[str]) -> None:
    said_plainly(result, "step(s) failed: cannot remove cgroup")
    assert "Device or resource busy" in result.stderr, result.stderr
    assert "removed" not in result.stdout, result.stdout


def test_a_failed_teardown_through_the_daemon_is_a_failed_down(linkd: Linkd) -> None:
    linkd.write(LIMITED)
    linkd.up()
    with squatter(linkd.project):
        failed_down(linkd.run("down", "-p", linkd.project, check=False))
    # Once the cause is gone, `down` again removes what is left.
    assert "removed" in linkd.down().stdout
    assert not cgroups.stack_dirs(linkd.project)


def test_a_failed_teardown_of_a_foreground_up_is_a_failed_down(linkd: Linkd) -> None:
    linkd.write(LIMITED)
    up = subprocess.Popen(
        [sys.executable, "-m", "linkd", "up", "--no-attach", "-p", linkd.project],
        cwd=linkd.directory, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        deadline = time.monotonic() + 30
        while not cgroups.stack_dirs(linkd.project) or "running" not in linkd.run(
            "ps", "-p", linkd.project, check=False
        ).stdout:
            assert up.poll() is None and time.monotonic() < deadline, up.communicate()
            time.sleep(0.1)
        with squatter(linkd.project):
            failed_down(linkd.run("down", "-p", linkd.project, check=False))
        _, stderr = up.communicate(timeout=30)
        assert up.returncode != 0
        assert "Traceback" not in stderr and "cannot remove cgroup" in stderr, stderr
    finally:
        if up.poll() is None:
            up.terminate()  # ours: the foreground `up` this test started
            up.wait()
    assert "removed" in linkd.down().stdout
    assert not cgroups.stack_dirs(linkd.project)


# --- a wrong --tcp --------------------------------------------------------------------------


@pytest.mark.parametrize("wrong", ["localhost", "port in use"])
def test_a_wrong_tcp_leaves_the_stacks_to_recover_running(linkd: Linkd, wrong: str) -> None:
    linkd.write("""
        services:
          web: {command: sleep 300}
    """)
    linkd.up()
    pids = [c["pid"] for c in containers(state_of(linkd)).values()]
    kill_daemon()  # its stack now waits for a daemon to recover it
    with contextlib.ExitStack() as held:
        taken = held.enter_context(socket.socket())
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        tcp = f"localhost:{port}" if wrong == "localhost" else f"127.0.0.1:{port}"
        result = linkd.run("daemon", "--tcp", tcp, check=False, timeout=30)
    assert result.returncode == 2, result.stderr
    said_plainly(result, f"--tcp {tcp}: ")
    assert ("is not an IP address" if wrong == "localhost" else "the port is in use") \
        in result.stderr
    assert "recovered" not in result.stderr and "removed" not in result.stderr
    # Untouched: the containers run on, the stack's state is there for the next daemon.
    assert all(alive(pid) for pid in pids)
    restart_daemon()
    after = containers(state_of(linkd))
    assert [c["pid"] for c in after.values()] == pids
    assert all(c["status"] == "running" for c in after.values())
