"""Image-based services in real stacks: busybox images next to host commands.

One stack: `db` (a host command) answers on 5432; `app` runs an image whose entrypoint
knows only Docker's link variables and reaches db by them; `web` runs busybox httpd
from an image in the store, and its image's ExposedPorts give the host-command `client`
its link variables. The image configs (Entrypoint, Cmd, Env, WorkingDir, User,
StopSignal) are honoured and the stack file overrides them; busybox's nslookup resolves
peers through linkd's DNS; `down` leaves no mount, writable layer or process.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from linkd.runtime.images.image_store import ImageStore
from linkd.runtime.kernel import cgroups
from tests.images import Entry, Image, busybox_image, layer_tar, write_tar
from tests.integration.conftest import Linkd

ENTRY = b"""#!/bin/sh
echo "env: $GREETING $IMAGE_ONLY"
echo "where: $(pwd) $(id -u) $(cat /etc/hostname)"
i=0
while [ $i -lt 50 ]; do
  reply=$(echo ping | nc -w 2 "$DB_PORT_5432_TCP_ADDR" "$DB_PORT_5432_TCP_PORT")
  [ -n "$reply" ] && break
  i=$((i+1)); sleep 0.1
done
echo "reply: $reply"
echo "written" > /srv/mine 2>/dev/null || echo written > /tmp/mine
exec "$@"
"""

PONG = """
import socket
s = socket.create_server(("0.0.0.0", 5432))
while True:
    c, _ = s.accept()
    c.recv(16)
    c.sendall(b"pong")
    c.close()
"""

CLIENT = """
import os, time, urllib.request
url = f"http://{os.environ['WEB_PORT_8080_TCP_ADDR']}:{os.environ['WEB_PORT_8080_TCP_PORT']}/"
for _ in range(50):
    try:
        print("client got:", urllib.request.urlopen(url, timeout=2).read().decode().strip(),
              flush=True)
        break
    except OSError:
        time.sleep(0.1)
time.sleep(600)
"""

STACK = """
x-linkd: {conventions: [docker-links]}
services:
  db:
    command: ["/usr/bin/python3", "pong.py"]
    expose: ["5432"]
    mem_limit: 256m
  app:
    image: ./app.oci.tar
    x-linkd: {runtime: RUNTIME}
    links: [db]
    tmpfs: ["/cache:size=1m"]
    environment: {GREETING: from-stack}
    deploy:
      resources:
        limits: {memory: 64m, cpus: "0.5", pids: 50}
  web:
    image: linkd-test/web:1
    x-linkd: {runtime: RUNTIME}
  client:
    command: ["/usr/bin/python3", "client.py"]
    links: [web]
"""

TEST_IMAGES = ("linkd-test/app:1", "linkd-test/web:1")


@pytest.fixture(scope="module")
def busybox() -> Image:
    return busybox_image()


@pytest.fixture
def images(linkd: Linkd, busybox: Image) -> Iterator[ImageStore]:
    """The test's images as files in the stack directory; their names leave the store
    (the daemon's, which is this process's: same environment) after the test."""
    # resolv.conf as a symlink out of /etc, as systemd images have it: linkd's file is
    # bound where the link leads, inside the image's root.
    app_layer = layer_tar([Entry("entry.sh", data=ENTRY, mode=0o755),
                           Entry("srv", "dir", mode=0o777), Entry("etc", "dir"),
                           Entry("etc/resolv.conf", "symlink",
                                 target="/run/systemd/resolve/stub-resolv.conf")])
    app = Image([*busybox.layers, app_layer], name="linkd-test/app:1", run={
        "Entrypoint": ["/entry.sh"], "Cmd": ["sleep", "600"], "WorkingDir": "/srv",
        "Env": ["PATH=/bin", "GREETING=from-image", "IMAGE_ONLY=yes"], "User": "nobody",
        "StopSignal": "SIGINT",
    })
    web_layer = layer_tar([Entry("www", "dir"), Entry("www/index.html", data=b"hello, image\n")])
    web = Image([*busybox.layers, web_layer], name="linkd-test/web:1", run={
        "Cmd": ["httpd", "-f", "-p", "8080", "-h", "/www"], "ExposedPorts": {"8080/tcp": {}},
        "Healthcheck": {"Test": ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/"],
                        "Interval": 200_000_000, "Retries": 5},
    })
    write_tar(app.oci_files(), linkd.directory / "app.oci.tar")
    write_tar(web.save_files(), linkd.directory / "web.tar")
    (linkd.directory / "pong.py").write_text(PONG)
    (linkd.directory / "client.py").write_text(CLIENT)
    store = ImageStore()
    before = {n for i in store.list() for n in i.names}
    yield store
    for name in TEST_IMAGES:
        if name not in before and name in {n for i in store.list() for n in i.names}:
            store.remove(name)


@pytest.mark.parametrize("runtime", ["linkd", "runc"])
def test_image_services_beside_host_commands(linkd: Linkd, images: ImageStore,
                                             runtime: str) -> None:
    load = linkd.run("image", "load", "web.tar")
    assert load.stdout.startswith("loaded linkd-test/web:1 ")
    linkd.write(STACK.replace("RUNTIME", runtime))
    preview = linkd.run("env", "-f", "linkd.yaml", "-p", linkd.project, "client")  # not up
    assert "WEB_PORT_8080_TCP_PORT=8080" in preview.stdout
    linkd.up()

    # The entrypoint knows only Docker's link variables, and reaches db by them.
    out = linkd.wait_for_log("app", "reply: ")
    assert "reply: pong" in out, out
    # Image Env under the stack's environment; WorkingDir, User, /etc/hostname.
    assert "env: from-stack yes" in out
    assert "where: /srv 65534 app-1" in out
    # The image's ExposedPorts feed the conventions: the host-command client found web.
    out = linkd.wait_for_log("client", "client got:")
    assert "client got: hello, image" in out, out

    # busybox's nslookup asks linkd's DNS (127.0.0.11, from the bound resolv.conf).
    env = dict(line.split("  #")[0].split("=", 1)
               for line in linkd.run("env", "-p", linkd.project, "app").stdout.splitlines())
    db_addr = env["DB_PORT_5432_TCP_ADDR"]
    looked_up = linkd.exec("app", "nslookup", "db")
    assert db_addr in looked_up.stdout, looked_up.stdout + looked_up.stderr
    assert "127.0.0.11" in looked_up.stdout
    # The container's root is the image (and its own writes), with linkd's files bound in.
    listing = linkd.exec("app", "sh", "-c", "ls /; cat /run/linkd/links.env; cat /srv/mine; "
                         "test -e /usr/bin/python3 || echo no-host-python")
    assert "entry.sh" in listing.stdout and "no-host-python" in listing.stdout
    assert "DB_PORT_5432_TCP_ADDR" in listing.stdout or "DB_" in listing.stdout
    # Secrets at rest: the bindings are the container user's (nobody) alone, 0400, in a
    # directory it can only traverse; on the host, nothing above them opens to others.
    mine = linkd.exec("app", "stat", "-c", "%u %a", "/run/linkd/links.env", "/run/linkd")
    assert mine.stdout.split("\n")[:2] == ["65534 400", "0 711"], mine.stdout
    # tmpfs: made inside the image's root, by linkd's launcher or by runc.
    cache = linkd.exec("app", "sh", "-c", "grep ' /cache ' /proc/self/mounts").stdout
    assert cache.startswith("tmpfs /cache tmpfs") and "size=1024k" in cache, cache
    hosts = linkd.exec("app", "cat", "/etc/hosts").stdout
    assert f"{db_addr}\tdb" in hosts or db_addr in hosts

    # Limits through linkd's cgroups, visible inside the container.
    limits = linkd.exec("app", "cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes",
                        "/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/pids/pids.max")
    assert limits.stdout.split() == [str(64 << 20), "50000", "50"], limits.stderr
    db_cgroup = linkd.exec("db", "cat", "/proc/self/cgroup").stdout
    assert f"/linkd/{linkd.project}/db-1" in db_cgroup
    # memory, cpu and pids for linkd's launcher; runc makes one in every hierarchy.
    assert len([p for p in cgroups.leftovers() if p.endswith(linkd.project)]) >= 3

    # An image in use stays in the store.
    refused = linkd.run("image", "rm", "linkd-test/web:1", check=False)
    assert refused.returncode == 1 and f"used by {linkd.project}/web-1" in refused.stderr

    # The plan says what ran: the image's id, its stop signal, the merged argv.
    state = json.loads(linkd.run("inspect", "-p", linkd.project, "app").stdout)[0]["plan"]
    assert state["image"].startswith("sha256:")
    assert state["argv"] == ["/entry.sh", "sleep", "600"]
    assert state["stop_signal"] == "SIGINT"
    web = json.loads(linkd.run("inspect", "-p", linkd.project, "web").stdout)[0]["plan"]
    assert web["healthcheck"]["test"] == ["wget", "-q", "-O", "/dev/null",
                                          "http://127.0.0.1:8080/"]
    assert web["healthcheck"]["interval"] == 0.2 and web["healthcheck"]["retries"] == 5
    deadline = time.monotonic() + 10  # the image's HEALTHCHECK runs inside the image
    while True:
        health = json.loads(linkd.run("inspect", "-p", linkd.project, "web").stdout)[0][
            "state"].get("health")
        if health == "healthy" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert health == "healthy", health
    run_dir = Path(os.environ.get("LINKD_RUN_DIR", "/run/linkd")) / "stacks" / linkd.project
    assert (run_dir / "containers/app-1/rootfs/upper/srv/mine").read_text() == "written\n"
    for directory in (run_dir.parent.parent, run_dir.parent, run_dir, run_dir / "containers",
                      run_dir / "containers/app-1"):
        assert directory.stat().st_mode & 0o777 == 0o700, directory
    links = (run_dir / "containers/app-1/bindings/links.env").stat()
    assert (links.st_uid, links.st_mode & 0o777) == (65534, 0o400)
    # The command runs with Docker's capabilities, no_new_privs and seccomp (both runtimes;
    # tests/integration/test_confinement.py has the denials).
    status = linkd.exec("web", "grep", "-E", "^(CapBnd|NoNewPrivs|Seccomp):",
                        "/proc/self/status").stdout.split()
    assert status == ["CapBnd:", "00000000a80425fb", "NoNewPrivs:", "1", "Seccomp:", "2"]

    linkd.down()
    assert not run_dir.exists()  # the writable layers went with the stack
    assert not [p for p in cgroups.leftovers() if p.endswith(linkd.project)]
    mounts = Path("/proc/mounts").read_text()
    assert "rootfs/merged" not in mounts and "overlay" not in mounts.replace(
        "overlay /var/lib/docker", "")


def test_the_stack_file_overrides_entrypoint_and_command(linkd: Linkd,
                                                         images: ImageStore) -> None:
    linkd.write("""
        services:
          once:
            image: ./app.oci.tar
            entrypoint: ["sh", "-c"]
            command: ["echo args: $$0 $$IMAGE_ONLY; echo uid $$(id -u); pwd; exit 3", "x"]
            user: "0"
            working_dir: /bin
    """)
    result = linkd.run("up", "-p", linkd.project, "--exit-code-from", "once", check=False)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "args: x yes" in result.stdout
    assert "uid 0" in result.stdout and "/bin" in result.stdout
