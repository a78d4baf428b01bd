"""docker.io images through registry mirrors on 127.0.0.1 of the session's simulated
host: Debian's docker-registry serving `library/busybox:1.36` (pushed by skopeo), tiny
registries of the test's own that refuse or do not know the image. A pull of
`busybox:1.36` tries the mirrors in order and keeps the image's docker.io name.

No test here may reach docker.io: the `no_docker_hub` fixture points the endpoint every
docker.io pull ends with at a loopback port nothing listens on, so a mirror that failed
would end the pull with "cannot connect", never with a request to the internet. Needs
root (the store unpacks layers with owners); no namespace or mount."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from linkd.core import reference
from linkd.errors import RegistryError
from linkd.runtime.images import registry
from linkd.runtime.images.image_store import ImageStore
from linkd.runtime.images.pull import pull
from tests.images import busybox_image, write_dir
from tests.registry import TinyRegistry, docker_registry, free_port, push, serving

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="layers need root: owners")


@pytest.fixture(autouse=True)
def no_docker_hub(monkeypatch: pytest.MonkeyPatch) -> str:
    dead = f"127.0.0.1:{free_port()}"
    monkeypatch.setattr(reference, "DOCKER_HUB_API", dead)
    monkeypatch.setattr(registry.Repository, "backoff", 0.01)
    return dead


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "store")


@pytest.fixture
async def empty() -> AsyncIterator[TinyRegistry]:
    async with serving(TinyRegistry()) as reg:
        yield reg


def env_of(tmp_path: Path, *mirrors: str) -> dict[str, str]:
    return {"LINKD_REGISTRY_MIRRORS": ",".join(mirrors),
            "LINKD_REGISTRIES_CONFIG": str(tmp_path / "none.json"),
            "LINKD_CERTS_D": str(tmp_path / "certs.d")}


async def test_busybox_from_the_second_of_two_mirrors(store: ImageStore, tmp_path: Path,
                                                      empty: TinyRegistry) -> None:
    (tmp_path / "none.json").write_text("{}")
    image = busybox_image()
    refused = f"http://127.0.0.1:{free_port()}"  # nothing listens: connection refused
    with docker_registry(tmp_path / "registry") as mirror:
        push(write_dir(image.oci_files(), tmp_path / "bb"),
             f"{mirror.host}/library/busybox:1.36")
        env = env_of(tmp_path, refused, f"http://{empty.host}", f"http://{mirror.host}")
        pulled = await pull("busybox:1.36", store, env=env)
        assert mirror.blob_gets() == 3  # the config and two layers
    assert pulled.image.names == ("docker.io/library/busybox:1.36",)
    assert pulled.image.layers == tuple(image.diff_ids())
    assert store.get("busybox:1.36").id == pulled.image.id
    # The mirror that did not know the image was asked for it by its docker.io path.
    assert "/v2/library/busybox/manifests/1.36" in empty.requests


async def test_every_mirror_failing_says_what_each_answered(
        store: ImageStore, tmp_path: Path, empty: TinyRegistry, no_docker_hub: str) -> None:
    (tmp_path / "none.json").write_text("{}")
    refused = f"http://127.0.0.1:{free_port()}"
    broken = TinyRegistry()
    broken.failures = {"/v2/library/redis/manifests/7": 99}
    async with serving(broken):
        env = env_of(tmp_path, refused, f"http://{empty.host}/", f"http://{broken.host}")
        with pytest.raises(RegistryError) as info:
            await pull("redis:7", store, env=env)
    message = str(info.value)
    # The last endpoint (docker.io's, here a dead loopback port) says why, then the mirrors
    # in the order they were tried.
    assert message.startswith(f"pull docker.io/library/redis:7 from {no_docker_hub}: ")
    tried = message.partition("(tried before: ")[2]
    assert tried.index(refused) < tried.index(empty.host) < tried.index(broken.host)
    assert f"{refused}: cannot connect" in tried
    assert f"http://{empty.host}: manifest 7: HTTP 404" in tried
    assert f"http://{broken.host}: manifest 7: HTTP 500" in tried and "gave up" in tried
    assert broken.requests.count("/v2/library/redis/manifests/7") == (
        registry.Repository.attempts)
    assert not (store.root / "layers").exists() or not list((store.root / "layers").iterdir())


async def test_mirrors_are_for_docker_io_only(store: ImageStore, tmp_path: Path,
                                              empty: TinyRegistry) -> None:
    (tmp_path / "none.json").write_text("{}")
    with pytest.raises(RegistryError, match=f"from {empty.host}: manifest 1: HTTP 404"):
        await pull(f"{empty.host}/test/bb:1", store, env=env_of(tmp_path, "https://x.invalid"))
    assert "/v2/test/bb/manifests/1" in empty.requests  # the registry itself, no mirror
