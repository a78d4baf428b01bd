"""Runs after the other integration tests: nothing of linkd's may be left on the machine."""

from __future__ import annotations

from tests.integration.conftest import (
    _PREEXISTING_DAEMONS,
    daemon_pids,
    snapshot,
    stop_session_daemons,
)


def test_the_suite_left_no_namespace_link_mount_or_process() -> None:
    stop_session_daemons()  # the daemon `up -d` started takes what it still runs down
    assert daemon_pids() <= _PREEXISTING_DAEMONS, "a linkd daemon of this run is still running"
    left = snapshot()
    assert not left.netns, f"network namespaces left: {sorted(left.netns)}"
    assert not left.links, f"links left: {sorted(left.links)}"
    assert not left.mounts, f"mounts left: {sorted(left.mounts)}"
    assert not left.processes, f"processes left: {sorted(left.processes)}"
