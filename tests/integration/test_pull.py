"""A stack whose image is a reference to a registry: `up` pulls it first.

Debian's docker-registry runs on 127.0.0.1 of the session's simulated host (plain HTTP,
a config and storage of the test's own; tests/registry.py), skopeo pushes a busybox
httpd image built from busybox-static to it, and the stack names the image
`127.0.0.1:PORT/test/web:1`: `linkd up` pulls it (in the daemon, before anything is
made), runs it, and a host-command client finds it through Docker's link variables. A
reference the registry does not have fails the `up` with the registry, the reference and
the reason, and makes nothing. `linkd image pull` pulls by the command line. The image
names leave the store and the registry its process after the test.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from linkd.runtime.images.image_store import ImageStore
from tests.images import Entry, Image, busybox_image, layer_tar, write_dir
from tests.integration.conftest import Linkd
from tests.registry import RealRegistry, docker_registry, push

CLIENT = """
import os, time, urllib.request
url = f"http://{os.environ['WEB_PORT_8080_TCP_ADDR']}:{os.environ['WEB_PORT_8080_TCP_PORT']}/"
for _ in range(100):
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
  web:
    image: REF
  client:
    command: ["/usr/bin/python3", "client.py"]
    links: [web]
"""


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RealRegistry]:
    with docker_registry(tmp_path / "registry") as reg:
        yield reg


@pytest.fixture
def pushed(registry: RealRegistry, tmp_path: Path) -> Iterator[str]:
    """`127.0.0.1:PORT/test/web:1` in the registry; its names out of the store after."""
    bb = busybox_image()
    layer = layer_tar([Entry("www", "dir"), Entry("www/index.html", data=b"hello, pulled\n")])
    web = Image([*bb.layers, layer], name="test/web:1", run={
        "Cmd": ["httpd", "-f", "-p", "8080", "-h", "/www"], "ExposedPorts": {"8080/tcp": {}}})
    ref = f"{registry.host}/test/web:1"
    push(write_dir(web.oci_files(), tmp_path / "web"), ref)
    store = ImageStore()  # the daemon's: the same environment as this process
    yield ref
    for image in store.list():
        for name in image.names:
            if name.startswith(registry.host + "/"):
                store.remove(name)


def test_up_pulls_an_image_by_reference_and_runs_it(linkd: Linkd, pushed: str,
                                                    registry: RealRegistry) -> None:
    (linkd.directory / "client.py").write_text(CLIENT)
    linkd.write(STACK.replace("REF", pushed))
    linkd.up()
    out = linkd.wait_for_log("client", "client got:")
    assert "client got: hello, pulled" in out, out
    listed = linkd.run("image", "ls").stdout
    assert pushed in listed
    shown = json.loads(linkd.run("image", "inspect", pushed).stdout)[0]
    assert shown["names"] == [pushed] and len(shown["layers"]) == 3
    assert shown["config"]["cmd"] == ["httpd", "-f", "-p", "8080", "-h", "/www"]
    assert json.loads(linkd.run("image", "inspect", shown["id"]).stdout)[0]["id"] == shown["id"]
    # Up again: in the store, nothing fetched.
    gets = registry.blob_gets()
    linkd.down()
    linkd.up()
    assert registry.blob_gets() == gets
    # The command line pulls too (the image is there: only the manifest and config).
    pulled = linkd.run("image", "pull", pushed)
    assert pulled.stdout.startswith(f"pulled {pushed} (sha256:"), pulled.stdout
    assert "fetched 0 layers" in pulled.stdout
    # `linkd pull`: the stack's images (web's; client runs a host command).
    stack_pull = linkd.run("pull", "-p", linkd.project)
    assert stack_pull.stdout.startswith(f"pulled {pushed} (sha256:"), stack_pull.stdout
    assert len(stack_pull.stdout.splitlines()) == 1


def test_a_failed_pull_makes_nothing_and_says_why(linkd: Linkd, pushed: str,
                                                  registry: RealRegistry) -> None:
    missing = f"{registry.host}/test/web:2"
    linkd.write(STACK.replace("REF", missing))
    (linkd.directory / "client.py").write_text(CLIENT)
    failed = linkd.run("up", "-d", "-p", linkd.project, check=False)
    assert failed.returncode != 0
    assert (f"pull {missing} from {registry.host}: manifest 2: HTTP 404"
            in failed.stderr), failed.stderr
    assert "(the image of web)" in failed.stderr
    ps = linkd.run("ps", "-p", linkd.project, check=False)
    assert "client" not in ps.stdout and "web" not in ps.stdout, ps.stdout
    cli = linkd.run("image", "pull", missing, check=False)
    assert cli.returncode != 0 and f"pull {missing} from {registry.host}" in cli.stderr


def test_a_pull_is_drawn_layer_by_layer_on_a_terminal(linkd: Linkd, pushed: str) -> None:
    """`up -d` on a terminal draws what the daemon does meanwhile, the pull's layers
    each on a line rewritten in place; `linkd image pull` in a pipe writes each step a
    line (on stderr: stdout says what was pulled)."""
    (linkd.directory / "client.py").write_text(CLIENT)
    linkd.write(STACK.replace("REF", pushed))
    code, out = linkd.run_on_terminal("up", "-d", "-p", linkd.project)
    assert code == 0, out
    manifest_layers = ImageStore().get(pushed).layers
    assert len(manifest_layers) == 3
    assert f"image {pushed}" in out and "3 layers, 3 to fetch" in out, out
    done = set(re.findall(r"layer ([0-9a-f]{12}) +done", out))
    assert len(done) == 3, out  # each layer's line, drawn to its end
    assert "\x1b[2K" in out  # lines rewritten in place, not appended
    assert "container client-1" in out  # and the rest of the `up`, as a foreground one
    linkd.down()
    ImageStore().remove(pushed)
    pulled = linkd.run("image", "pull", pushed)
    assert pulled.stdout.startswith(f"pulled {pushed}"), pulled.stdout
    steps = pulled.stderr.splitlines()
    assert steps[0] == f"image {pushed}: pulling", steps
    assert sum(1 for s in steps if s.startswith("layer ") and s.endswith(": done")) == 3
    assert "\x1b" not in pulled.stderr
