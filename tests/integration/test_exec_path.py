"""One way into a running container, for `linkd exec` and health probes alike, under both
image runtimes (linkd's own launcher and runc).

The image carries a probe script and a marker file that exist nowhere on the host, names
its user through an NSS service that does not exist (so only a files-only lookup finds
it), and the service's command records its own /proc/self/cgroup at start. The probe
passes only if it runs on the image's filesystem, as the image's user, in exactly the
command's cgroups and cgroup namespace: what a process started by the container sees.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from linkd.runtime.containers import shim_base, shim_entry
from tests.images import Entry, Image, busybox_image, layer_tar, write_tar
from tests.integration.conftest import Linkd
from tests.integration.test_health import inspect

PROBE = b"""#!/bin/sh
test -f /only-in-image || { echo "not on the image's root"; exit 1; }
mine=$(cat /proc/self/cgroup)
main=$(cat /tmp/main.cgroup)
[ "$mine" = "$main" ] || { echo "other cgroups: $mine / command's: $main"; exit 1; }
echo "inside as $(id -u)"
"""

STACK = """
services:
  app:
    image: ./probe.oci.tar
    user: app
    command: ["sh", "-c", "cat /proc/self/cgroup > /tmp/main.cgroup; exec sleep 600"]
    mem_limit: 64m
    x-linkd: {runtime: RUNTIME}
    healthcheck:
      test: ["CMD", "/probe.sh"]
      interval: 0.1s
      timeout: 5s
      retries: 2
"""


def _image(linkd: Linkd) -> None:
    layer = layer_tar([
        Entry("probe.sh", data=PROBE, mode=0o755),
        Entry("only-in-image", data=b"yes\n"),
        Entry("etc", "dir"),
        Entry("etc/nsswitch.conf", data=b"passwd: linkdnowhere\ngroup: linkdnowhere\n"),
        Entry("etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\n"
                                 b"app:x:1234:1234:app:/home:/bin/sh\n"),
        Entry("etc/group", data=b"root:x:0:\napp:x:1234:\n"),
    ])
    image = Image([*busybox_image().layers, layer], name="linkd-test/probe:1")
    write_tar(image.oci_files(), linkd.directory / "probe.oci.tar")


@pytest.mark.parametrize("runtime", ["linkd", "runc"])
def test_probes_and_exec_run_inside_the_image_and_its_cgroups(linkd: Linkd,
                                                              runtime: str) -> None:
    _image(linkd)
    linkd.write(STACK.replace("RUNTIME", runtime))
    try:
        linkd.up()
        # linkd exec: the same way in.
        result = linkd.exec("app", "/probe.sh", check=False)
        assert (result.returncode, result.stdout) == (0, "inside as 1234\n"), (
            result.stdout + result.stderr)
        deadline = time.monotonic() + 15
        while True:
            detail = inspect(linkd, "app-1")
            log = (detail.get("health") or {}).get("log") or []
            if detail["state"].get("health") == "healthy" or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert detail["state"].get("health") == "healthy", log[-1:] if log else detail
        assert log[-1]["output"] == "inside as 1234\n"
    finally:
        linkd.run("down", "-p", linkd.project, check=False)
        linkd.run("image", "rm", "linkd-test/probe:1", check=False)


def test_no_way_in_while_runc_has_not_started_the_command(tmp_path: Path) -> None:
    """Between `runc run` starting and its command running (runc's child is missing, or
    still `runc init`), init's namespaces are not the container's: entering must fail
    (the health agent waits and retries), never settle on init's host-rooted mounts."""
    (tmp_path / "init").write_text("sleep 60; :\n")  # runs as `runc init`
    (tmp_path / "run").write_text("(exec -a runc bash init) & wait\n")  # as `runc run`
    for script, depth in (("exec -a runc sleep 60 & wait", 1),  # runc run, no child yet
                          ("exec -a runc bash run & wait", 2)):  # runc run -> runc init
        init = subprocess.Popen(["bash", "-c", script], cwd=tmp_path)
        try:
            deadline = time.monotonic() + 5
            while _depth(init.pid) < depth:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            with pytest.raises(shim_base.NotStartedYet, match="runc has not started"):
                shim_entry.open_entry(init.pid, "web-1")
        finally:
            init.kill()
            init.wait()


def _depth(pid: int) -> int:
    """How many generations of first children `pid` has (running, not yet exec'd away)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    if not children:
        return 0
    if Path(f"/proc/{children[0]}/cmdline").read_bytes().split(b"\0")[0] != b"runc":
        return 0  # not yet renamed by its exec
    return 1 + _depth(int(children[0]))
