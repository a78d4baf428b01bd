"""examples/pulled as a user runs it: `image: busybox:1.36` is not in the store, so
`linkd up` pulls it by name, as Compose does, and the client finds the server through
Docker's legacy link variables alone.

Docker Hub is not reached: the test's own docker-registry on 127.0.0.1 serves
`library/busybox:1.36` (a busybox-static image pushed by skopeo) as the docker.io mirror
(`LINKD_REGISTRY_MIRRORS`, as a user's /etc/linkd/registries.json would name one); the
session's simulated host has no way out, so nothing could reach docker.io anyway.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from linkd.errors import NotFoundError
from linkd.runtime.images.image_store import ImageStore
from tests.images import busybox_image, write_dir
from tests.integration.conftest import REPO, Linkd
from tests.registry import docker_registry, push

EXAMPLE = REPO / "examples" / "pulled"
NAME = "docker.io/library/busybox:1.36"


@pytest.fixture
def example(linkd: Linkd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Linkd]:
    shutil.copytree(EXAMPLE, linkd.directory, dirs_exist_ok=True)
    store = ImageStore()
    with docker_registry(tmp_path / "mirror") as mirror:
        push(write_dir(busybox_image().oci_files(), tmp_path / "bb"),
             f"{mirror.host}/library/busybox:1.36")
        monkeypatch.setenv("LINKD_REGISTRY_MIRRORS", f"http://{mirror.host}")
        _forget(store)  # pulled by the test, not found from an earlier one
        try:
            yield linkd
        finally:
            linkd.run("down", "-p", linkd.project, check=False)
            _forget(store)


def _forget(store: ImageStore) -> None:
    with contextlib.suppress(NotFoundError):
        store.remove(NAME)


def test_a_pulled_image_finds_its_peer_through_link_variables(example: Linkd) -> None:
    linkd = example
    up = linkd.run("up", "-f", "compose.yaml", "-p", linkd.project,
                   "--exit-code-from", "client", timeout=120)
    out = up.stdout
    assert f"image {NAME}: pulled sha256:" in out, out  # pulled once, for both services
    assert out.count(f"image {NAME}: pulling") == 1, out
    assert "hello from a pulled image" in out, out
    assert "found web at 10." in out and ":8080 (/" in out, out
    assert ImageStore().get("busybox:1.36").names == (NAME,)
