"""Runs after the other integration tests: nothing of linkd's may be left on the machine."""

from __future__ import annotations

from pathlib import Path

from linkd.runtime.images import image_store
from linkd.runtime.kernel import cgroups
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


def test_the_suite_left_no_image_root_cgroup_or_half_loaded_image() -> None:
    # Image roots are mounted inside the containers' own mount namespaces; one showing on
    # the host (an overlay over the store's layers) would be a leak.
    store = str(image_store.root())
    overlays = [line for line in Path("/proc/mounts").read_text().splitlines()
                if line.startswith("overlay ") and (store in line or "/rootfs/" in line)]
    assert not overlays, f"image root mounts left: {overlays}"
    assert not cgroups.leftovers(), f"cgroups left: {cgroups.leftovers()}"
    tmp = Path(store) / "tmp"
    assert not tmp.is_dir() or not list(tmp.iterdir()), f"half-loaded images in {tmp}"
    pulls = Path(store) / "pulls"
    assert not pulls.is_dir() or not list(pulls.iterdir()), f"half-pulled images in {pulls}"


def test_the_suite_left_no_nftables_table_of_linkd() -> None:
    import subprocess

    stop_session_daemons()
    listed = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True)
    ours = [line for line in listed.stdout.splitlines() if line.split()[-1].startswith("linkd")]
    assert not ours, f"nftables tables left: {ours}"
