"""Volumes in real stacks: bind mounts, named and anonymous volumes, tmpfs, under both
launchers and for host commands; data that survives `down` and goes with `down -v`; a
volume seeded once from its image; `linkd volume`; and bad sources refused before
anything is created.

The session keeps its volumes in a directory of its own ($LINKD_VOLUMES, tests/simhost.py).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from linkd.runtime.images.image_store import ImageStore
from linkd.runtime.volumes.store import VolumeStore
from tests.images import Entry, Image, busybox_image, layer_tar, write_tar
from tests.integration.conftest import Linkd

STACK = """
services:
  db:
    image: ./db.oci.tar
    command: ["sleep", "600"]
    x-linkd: {runtime: RUNTIME}
    volumes:
      - data:/data
      - ./conf:/conf:ro
      - ./made/here:/made
      - /scratch
      - type: tmpfs
        target: /fast
        tmpfs: {size: 1m}
volumes:
  data:
"""


@pytest.fixture
def db_image(linkd: Linkd) -> Iterator[None]:
    """busybox with content at /data (to seed the volume) and VOLUME /logs."""
    busybox = busybox_image()
    layer = layer_tar([Entry("data", "dir", mode=0o750, uid=1000, gid=1000),
                       Entry("data/seed.txt", data=b"from the image\n", mode=0o640,
                             uid=1000, gid=1000),
                       Entry("data/link", "symlink", target="/etc/passwd"),
                       Entry("logs", "dir"), Entry("logs/first.log", data=b"boot\n")])
    image = Image([*busybox.layers, layer], name="linkd-test/db:1",
                  run={"Volumes": {"/logs": {}}})
    write_tar(image.oci_files(), linkd.directory / "db.oci.tar")
    (linkd.directory / "conf").mkdir()
    (linkd.directory / "conf" / "app.conf").write_text("setting=1\n")
    store = ImageStore()
    before = {n for i in store.list() for n in i.names}
    yield
    if "linkd-test/db:1" not in before and any(
            "linkd-test/db:1" in i.names for i in store.list()):
        store.remove("linkd-test/db:1")


def _mounts(linkd: Linkd, service: str) -> dict[str, str]:
    text = linkd.exec(service, "cat", "/proc/self/mounts").stdout
    return {line.split()[1]: line for line in text.splitlines()}


@pytest.mark.parametrize("runtime", ["linkd", "runc"])
def test_volumes_of_an_image_survive_down_and_go_with_down_v(
        linkd: Linkd, db_image: None, runtime: str) -> None:
    linkd.write(STACK.replace("RUNTIME", runtime))
    volumes = VolumeStore()
    named = f"{linkd.project}_data"
    linkd.up()

    # Seeded from the image: content, owner, mode, and a symlink kept as a link.
    seen = linkd.exec("db", "sh", "-c", "cat /data/seed.txt; stat -c '%u %g %a' "
                      "/data/seed.txt /data; readlink /data/link; cat /logs/first.log")
    assert seen.stdout.split("\n")[:5] == [
        "from the image", "1000 1000 640", "1000 1000 750", "/etc/passwd", "boot"], seen
    # Bind mounts: read-only where asked; a missing short-form source made on the host.
    assert linkd.exec("db", "cat", "/conf/app.conf").stdout == "setting=1\n"
    refused = linkd.exec("db", "sh", "-c", "echo x > /conf/new", check=False)
    assert refused.returncode != 0 and "Read-only" in refused.stderr
    assert (linkd.directory / "made" / "here").is_dir()
    linkd.exec("db", "sh", "-c", "echo kept > /data/mine; echo changed > /data/seed.txt; "
               "echo hi > /made/file; echo anon > /scratch/a")
    assert (linkd.directory / "made" / "here" / "file").read_text() == "hi\n"
    mounts = _mounts(linkd, "db")
    assert mounts["/fast"].startswith("tmpfs /fast tmpfs") and "size=1024k" in mounts["/fast"]
    assert {"/data", "/conf", "/made", "/scratch", "/logs"} <= set(mounts)
    assert " ro," in mounts["/conf"] and " rw," in mounts["/data"]

    # linkd volume: listed with its stack; in use, so not removed.
    listed = linkd.run("volume", "ls").stdout
    assert [named, linkd.project, "named"] in [row.split() for row in listed.splitlines()]
    info = json.loads(linkd.run("volume", "inspect", named).stdout)[0]
    assert info["stack"] == linkd.project and info["used_by"] == [f"{linkd.project}/db-1"]
    assert Path(info["mountpoint"]) == volumes.root / named / "_data"
    refused = linkd.run("volume", "rm", named, check=False)
    assert refused.returncode != 0 and "in use by" in refused.stderr
    anonymous = [v.name for v in volumes.volumes() if v.stack == linkd.project and v.anonymous]
    assert len(anonymous) == 2  # /scratch and the image's /logs

    # down keeps them; up finds the data, and does not seed again.
    linkd.down()
    assert (volumes.root / named / "_data" / "mine").read_text() == "kept\n"
    linkd.up()
    again = linkd.exec("db", "sh", "-c", "cat /data/mine /data/seed.txt /scratch/a")
    assert again.stdout == "kept\nchanged\nanon\n"

    # down -v: the stack's volumes go, named and anonymous; bind sources stay.
    gone = linkd.run("down", "-v", "-p", linkd.project)
    assert f"volume {named} removed" in gone.stdout
    assert not [v for v in volumes.volumes() if v.stack == linkd.project]
    assert not (volumes.root / named).exists()
    assert (linkd.directory / "made" / "here" / "file").exists()


HOST_STACK = """
services:
  worker:
    command: ["/usr/bin/python3", "-c", "import time; time.sleep(600)"]
    volumes:
      - ./src:TARGET/in:ro
      - cache:TARGET/cache
volumes:
  cache:
"""


def test_host_commands_get_their_volumes_in_their_own_mount_namespace(linkd: Linkd) -> None:
    target = linkd.directory / "mnt"
    (target / "in").mkdir(parents=True)
    (target / "cache").mkdir()
    (linkd.directory / "src").mkdir()
    (linkd.directory / "src" / "input.txt").write_text("input\n")
    linkd.write(HOST_STACK.replace("TARGET", str(target)))
    linkd.up()
    read = linkd.py("worker", f"""
        print(open("{target}/in/input.txt").read(), end="")
        open("{target}/cache/out", "w").write("out")
        try:
            open("{target}/in/x", "w")
        except OSError as e:
            print("refused", e.errno)
    """)
    assert read.stdout == "input\nrefused 30\n", read  # EROFS
    # The host's own directories are as they were: the mounts are the container's.
    assert not list((target / "in").iterdir()) and not list((target / "cache").iterdir())
    cache = VolumeStore().get(f"{linkd.project}_cache")
    assert (cache.path / "out").read_text() == "out"
    linkd.run("down", "-v", "-p", linkd.project)


def test_bad_sources_are_refused_before_anything_is_made(linkd: Linkd) -> None:
    linkd.write("""
        services:
          a:
            command: ["/usr/bin/python3", "-c", "import time; time.sleep(600)"]
            volumes: [gone:/var/tmp]
        volumes:
          gone: {external: true, name: linkd-test-nowhere}
    """)
    failed = linkd.run("up", "-d", "-p", linkd.project, check=False)
    assert failed.returncode != 0
    assert "volume linkd-test-nowhere is external and does not exist" in failed.stderr
    assert "linkd volume create linkd-test-nowhere" in failed.stderr
    assert linkd.project not in linkd.run("ps", "-a").stdout

    # A symlink in the stack's directory to a socket elsewhere: not what the user named.
    server = socket.socket(socket.AF_UNIX)
    sock = linkd.directory / "real.sock"
    server.bind(str(sock))
    try:
        os.symlink(sock, linkd.directory / "innocent")
        linkd.write("""
            services:
              a:
                command: ["/usr/bin/python3", "-c", "import time; time.sleep(600)"]
                volumes: ["./innocent:/var/tmp/x"]
        """)
        failed = linkd.run("up", "-d", "-p", linkd.project, check=False)
        assert failed.returncode != 0
        assert f"symlink to the socket {sock}" in failed.stderr, failed.stderr
    finally:
        server.close()


def test_an_external_volume_made_with_volume_create_is_shared(linkd: Linkd) -> None:
    name = f"{linkd.project}-shared"
    linkd.run("volume", "create", name, "--label", "team=a")
    target = linkd.directory / "t"
    target.mkdir()
    linkd.write(f"""
        services:
          a:
            command: ["/usr/bin/python3", "-c",
                      "open('{target}/f', 'w').write('a'); import time; time.sleep(600)"]
            volumes: ["shared:{target}"]
        volumes:
          shared: {{external: true, name: {name}}}
    """)
    try:
        linkd.up()
        volume = VolumeStore().get(name)
        deadline = time.monotonic() + 10
        while not (volume.path / "f").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (volume.path / "f").read_text() == "a"
        assert dict(volume.labels) == {"team": "a"}
        linkd.run("down", "-v", "-p", linkd.project)
        assert VolumeStore().get(name).name == name  # external: not the stack's to remove
        assert name in linkd.run("volume", "ls", "-q", "--filter", "label=team=a").stdout
    finally:
        linkd.run("volume", "rm", "-f", name)
    assert name not in linkd.run("volume", "ls", "-q").stdout


def test_prune_removes_anonymous_volumes_no_stack_mounts(linkd: Linkd) -> None:
    target = linkd.directory / "t"
    target.mkdir()
    linkd.write(f"""
        services:
          a:
            command: ["/usr/bin/python3", "-c", "import time; time.sleep(600)"]
            volumes: ["{target}"]
    """)
    linkd.up()
    anonymous = [v.name for v in VolumeStore().volumes() if v.stack == linkd.project]
    assert len(anonymous) == 1
    assert anonymous[0] not in linkd.run("volume", "prune", "-f").stdout  # in use
    linkd.down()
    assert f"removed {anonymous[0]}" in linkd.run("volume", "prune", "-f").stdout
    assert not [v for v in VolumeStore().volumes() if v.stack == linkd.project]


SECRETS_STACK = """
services:
  app:
    image: linkd-test/db:1
    command: ["sleep", "600"]
    x-linkd: {runtime: RUNTIME}
    secrets:
      - db_password
      - source: token
        target: api_token
        uid: "1000"
        mode: 0400
    configs:
      - source: settings
        target: /etc/app/settings.ini
secrets:
  db_password: {file: ./db_password.txt}
  token: {environment: LINKD_TEST_TOKEN}
configs:
  settings:
    content: "debug = true\\n"
"""


@pytest.mark.parametrize("runtime", ["linkd", "runc"])
def test_secrets_and_configs_are_read_only_files_and_not_shown(
        linkd: Linkd, db_image: None, runtime: str) -> None:
    (linkd.directory / "db_password.txt").write_text("hunter2\n")
    linkd.run("image", "load", "db.oci.tar")
    linkd.write(SECRETS_STACK.replace("RUNTIME", runtime))
    os.environ["LINKD_TEST_TOKEN"] = "t0ken"
    try:
        linkd.up()
    finally:
        del os.environ["LINKD_TEST_TOKEN"]
    seen = linkd.exec("app", "sh", "-c", "cat /run/secrets/db_password /run/secrets/api_token "
                      "/etc/app/settings.ini; stat -c '%u %a' /run/secrets/api_token "
                      "/etc/app/settings.ini")
    assert seen.stdout == "hunter2\nt0kendebug = true\n1000 400\n0 444\n", seen
    refused = linkd.exec("app", "sh", "-c", "echo x > /run/secrets/db_password", check=False)
    assert refused.returncode != 0
    # The file source is bound as it is: an edit on the host shows through.
    (linkd.directory / "db_password.txt").write_text("changed\n")
    assert linkd.exec("app", "cat", "/run/secrets/db_password").stdout == "changed\n"
    shown = linkd.run("inspect", "-p", linkd.project, "app").stdout
    assert "t0ken" not in shown and "(hidden: a secret)" in shown
