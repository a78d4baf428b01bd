"""Runs after the other integration tests: nothing of linkd's may be left on the machine."""

from __future__ import annotations

from tests.integration.conftest import snapshot


def test_the_suite_left_no_namespace_link_mount_or_process() -> None:
    left = snapshot()
    assert not left.netns, f"network namespaces left: {sorted(left.netns)}"
    assert not left.links, f"links left: {sorted(left.links)}"
    assert not left.mounts, f"mounts left: {sorted(left.mounts)}"
    assert not left.processes, f"processes left: {sorted(left.processes)}"
