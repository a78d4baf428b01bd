"""examples/compose-app, the issue's sample-style stack, as a user runs it: `linkd up`
builds its three images (FROM scratch, buildah), the front answers through the app and
the database by name, and the database's count survives `down` and `up` in its named
volume; `down -v` takes the volume."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from linkd.runtime.images.image_store import ImageStore
from linkd.runtime.volumes.store import VolumeStore
from tests.integration.conftest import REPO, Linkd

EXAMPLE = REPO / "examples" / "compose-app"


@pytest.fixture
def example(linkd: Linkd, monkeypatch: pytest.MonkeyPatch) -> Iterator[Linkd]:
    shutil.copytree(EXAMPLE, linkd.directory, dirs_exist_ok=True, symlinks=True)
    build = Path(tempfile.mkdtemp(prefix="linkd-test-build-", dir="/var/tmp"))
    monkeypatch.setenv("LINKD_BUILD", str(build))
    store = ImageStore()
    before = {n for i in store.list() for n in i.names}
    try:
        yield linkd
    finally:
        linkd.run("down", "-v", "-p", linkd.project, check=False)
        for name in {n for i in store.list() for n in i.names} - before:
            if name.startswith(f"{linkd.project}-"):
                store.remove(name)
        shutil.rmtree(build, ignore_errors=True)


def _front(linkd: Linkd) -> str:
    deadline = time.monotonic() + 20
    while True:
        got = linkd.exec("web", "wget", "-q", "-O", "-", "http://127.0.0.1/cgi-bin/index",
                         check=False)
        if "visit" in got.stdout or time.monotonic() > deadline:
            return got.stdout + got.stderr
        time.sleep(0.2)


def test_the_example_comes_up_and_keeps_its_data(example: Linkd) -> None:
    linkd = example
    up = linkd.up()
    assert f"built {linkd.project}-app" in up.stdout, up.stdout
    # container_name: the front is "front", by name and as its hostname.
    assert "front" in linkd.run("ps", "-p", linkd.project).stdout
    first = _front(linkd)
    # .env's greeting (a build arg), the app and the db reached by their names, the
    # database's name from its bind-mounted config file.
    assert first.startswith("front (front) asked app:\nhello from the app: visit 1, counted "
                            "by linkd-example-db"), first
    assert "visit 2" in _front(linkd)

    linkd.down()
    data = VolumeStore().get(f"{linkd.project}_data")
    assert (data.path / "visits").read_text() == "2\n"
    linkd.up()
    assert "visit 3" in _front(linkd)  # the named volume kept the count

    linkd.run("down", "-v", "-p", linkd.project)
    assert not (data.path.parent).exists()
