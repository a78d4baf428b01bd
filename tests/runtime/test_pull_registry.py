"""Pulls from Debian's docker-registry (CNCF distribution 2.8), started by the test on
127.0.0.1 of the session's simulated host with a config and storage of its own, plain
HTTP; images pushed to it by skopeo from OCI layouts built from busybox-static. By tag and
by digest, a multi-platform index, a layer with a whiteout, and a second image whose
shared layers are not fetched again (the registry's access log counts the blob GETs).
The ways a registry can fail a pull are in tests/runtime/test_pull.py (a registry of the
test's own breaks on request); a stack brought up from a pulled image is in
tests/integration/test_pull.py. Needs root (the store unpacks layers with owners and
whiteout devices); no namespace or mount, so no machine-wide lock."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from linkd.core import image_format as fmt
from linkd.errors import ImageError
from linkd.runtime.images.image_store import ImageStore, layer_dir
from linkd.runtime.images.pull import pull
from tests.images import Entry, Image, busybox_image, layer_tar, write_dir
from tests.registry import RealRegistry, docker_registry, index_files, push

# docker-registry and skopeo: `scripts/dev test` installs them (a missing one fails).
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="layers need root: owners, "
                                "whiteouts")

HOST_ARCH = fmt.machine_platform(os.uname().machine).architecture
OTHER_ARCH = "s390x" if HOST_ARCH != "s390x" else "riscv64"


@pytest.fixture
def reg(tmp_path: Path) -> Iterator[RealRegistry]:
    with docker_registry(tmp_path / "registry") as r:
        yield r


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "store")


def raw_digest(ref: str) -> str:
    raw = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--raw",
                          f"docker://{ref}"], check=True, capture_output=True,
                         timeout=60).stdout
    return "sha256:" + hashlib.sha256(raw).hexdigest()


async def test_busybox_by_tag_and_by_digest(reg: RealRegistry, store: ImageStore,
                                            tmp_path: Path) -> None:
    image = busybox_image()
    push(write_dir(image.oci_files(), tmp_path / "bb"), f"{reg.host}/test/bb:1")
    pulled = await pull(f"{reg.host}/test/bb:1", store)
    assert pulled.image.names == (f"{reg.host}/test/bb:1",)
    assert pulled.image.layers == tuple(image.diff_ids())
    assert pulled.fetched == 2
    top = pulled.image.layer_dirs(store.root)[-1]  # the bottom layer: the binary
    assert (top / "bin/busybox").read_bytes() == Path("/bin/busybox").read_bytes()
    digest = raw_digest(f"{reg.host}/test/bb:1")
    again = await pull(f"{reg.host}/test/bb@{digest}", store)
    assert again.image.id == pulled.image.id and again.fetched == 0


async def test_a_multi_platform_index(reg: RealRegistry, store: ImageStore,
                                      tmp_path: Path) -> None:
    mine = busybox_image()
    mine.arch = HOST_ARCH
    other = Image([layer_tar([Entry("arch", data=b"other")])], arch=OTHER_ARCH)
    files = index_files([(other, OTHER_ARCH), (mine, HOST_ARCH)])
    push(write_dir(files, tmp_path / "multi"), f"{reg.host}/test/multi:1", all_images=True)
    pulled = await pull(f"{reg.host}/test/multi:1", store)
    assert pulled.image.config.architecture == HOST_ARCH
    assert pulled.image.layers == tuple(mine.diff_ids())
    # An index with no manifest for this machine: said, and nothing stored.
    files = index_files([(other, OTHER_ARCH)])
    push(write_dir(files, tmp_path / "others"), f"{reg.host}/test/others:1",
         all_images=True)
    before = sorted(p.name for p in (store.root / "layers").iterdir())
    with pytest.raises(ImageError, match=f"only for linux/{OTHER_ARCH}; this machine is "
                       f"linux/{HOST_ARCH}"):
        await pull(f"{reg.host}/test/others:1", store)
    assert sorted(p.name for p in (store.root / "layers").iterdir()) == before
    assert [i.names for i in store.list()] == [(f"{reg.host}/test/multi:1",)]


async def test_layers_with_a_whiteout_and_shared_layers(reg: RealRegistry, store: ImageStore,
                                                        tmp_path: Path) -> None:
    bb = busybox_image()
    gone = layer_tar([Entry("etc", "dir"), Entry("etc/.wh.group")])
    one = Image([*bb.layers, gone], name="test/one:1")
    two = Image([*bb.layers, layer_tar([Entry("two", data=b"2\n")])], name="test/two:1")
    push(write_dir(one.oci_files(), tmp_path / "one"), f"{reg.host}/test/one:1")
    push(write_dir(two.oci_files(), tmp_path / "two"), f"{reg.host}/test/two:1")
    first = await pull(f"{reg.host}/test/one:1", store)
    assert first.fetched == 3
    whiteout = layer_dir(store.root, first.image.layers[2]) / "etc/group"
    st = whiteout.lstat()
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0  # overlayfs's own whiteout
    gets = reg.blob_gets()
    second = await pull(f"{reg.host}/test/two:1", store)
    assert second.fetched == 1
    assert reg.blob_gets() - gets == 2  # its config and its own layer, no shared one
    assert second.image.layers[:2] == first.image.layers[:2]
