"""zstd layers, decompressed through the zstd command: loaded from an OCI layout, pulled
from Debian's docker-registry (pushed by skopeo as they are), and hostile ones (a bomb,
garbage, a truncated stream, no zstd command) refused with a clear error, leaving the
store as it was and no zstd process behind. Layers compressed by the zstd CLI in the
test. Needs root (the store unpacks layers with owners); no namespace or mount."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from linkd.errors import ImageError
from linkd.runtime.images.image_store import ImageStore
from linkd.runtime.images.pull import pull
from tests.images import (
    Entry,
    Image,
    busybox_image,
    default_config,
    layer_tar,
    sha256,
    write_dir,
    zstd_compress,
)
from tests.registry import RealRegistry, docker_registry, push

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="layers need root: owners")

ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ImageStore]:
    yield ImageStore(tmp_path / "store")
    assert _zstd_children() == []  # every zstd the load started has ended


def _zstd_children() -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:]
        if comm == "zstd" and int(rest.split()[1]) == os.getpid():
            found.append(int(entry.name))
    return found


def _empty(store: ImageStore) -> None:
    for sub in ("layers", "images", "tmp"):
        d = store.root / sub
        assert not d.exists() or not os.listdir(d), f"{sub}: {os.listdir(d)}"


def _layout(blobs: list[tuple[bytes, str]]) -> dict[str, bytes]:
    """An OCI layout of ready-made zstd layer blobs: (blob, diff_id), bottom first."""
    files: dict[str, bytes] = {}

    def blob(data: bytes, media_type: str) -> dict[str, object]:
        files[f"blobs/sha256/{sha256(data)[7:]}"] = data
        return {"mediaType": media_type, "digest": sha256(data), "size": len(data)}

    layers = [blob(data, ZSTD) for data, _ in blobs]
    config = blob(json.dumps(default_config([d for _, d in blobs])).encode(),
                  "application/vnd.oci.image.config.v1+json")
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": config, "layers": layers}
    desc = blob(json.dumps(manifest).encode(), "application/vnd.oci.image.manifest.v1+json")
    desc["annotations"] = {"org.opencontainers.image.ref.name": "test/zstd:1"}
    files["index.json"] = json.dumps({"schemaVersion": 2, "manifests": [desc]}).encode()
    files["oci-layout"] = b'{"imageLayoutVersion": "1.0.0"}'
    return files


def _zero_file_zstd_layer(size: int) -> tuple[bytes, str]:
    """A zstd layer of one file of `size` zero bytes, streamed through the zstd
    command: (blob, diff_id). 256 MiB compress to about 8 KiB."""
    info = tarfile.TarInfo("zeros")
    info.size = size
    info.mtime = 1_700_000_000
    digest = hashlib.sha256()
    proc = subprocess.Popen(["zstd", "-q", "-c"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    assert proc.stdin is not None

    def put(data: bytes) -> None:
        digest.update(data)
        assert proc.stdin is not None
        proc.stdin.write(data)

    out: list[bytes] = []
    stdout = proc.stdout
    assert stdout is not None
    reader = threading.Thread(target=lambda: out.append(stdout.read()))
    reader.start()
    put(info.tobuf(format=tarfile.PAX_FORMAT))
    chunk = bytes(1 << 20)
    for _ in range(size >> 20):
        put(chunk)
    put(bytes(2 * tarfile.BLOCKSIZE))
    proc.stdin.close()
    reader.join()
    assert proc.wait() == 0
    return out[0], "sha256:" + digest.hexdigest()


def test_a_zstd_layout_loads(store: ImageStore, tmp_path: Path) -> None:
    image = busybox_image()
    files = image.oci_files(zstd_layers=True)
    assert ZSTD.encode() in b"".join(files.values())
    loaded = store.load(write_dir(files, tmp_path / "zstd"))
    assert loaded.layers == tuple(image.diff_ids())
    bottom = loaded.layer_dirs(store.root)[-1]
    assert (bottom / "bin/busybox").read_bytes() == Path("/bin/busybox").read_bytes()


async def test_a_zstd_image_pulled_from_docker_registry(store: ImageStore,
                                                        tmp_path: Path) -> None:
    image = Image([layer_tar([Entry("etc", "dir"), Entry("etc/x", data=b"zstd\n" * 1000)]),
                   layer_tar([Entry("y", data=os.urandom(50_000))])], name="test/z:1")
    reg: RealRegistry
    with docker_registry(tmp_path / "registry") as reg:
        push(write_dir(image.oci_files(zstd_layers=True), tmp_path / "z"),
             f"{reg.host}/test/z:1")
        pulled = await pull(f"{reg.host}/test/z:1", store)
    assert pulled.image.layers == tuple(image.diff_ids())
    assert pulled.fetched == 2
    top = pulled.image.layer_dirs(store.root)[1]
    assert (top / "etc/x").read_bytes() == b"zstd\n" * 1000


def test_a_zstd_bomb_stops_at_the_expansion_limit(store: ImageStore, tmp_path: Path) -> None:
    blob, diff_id = _zero_file_zstd_layer(256 << 20)
    assert len(blob) < 64 << 10
    start = time.monotonic()
    with pytest.raises(ImageError) as err:
        store.load(write_dir(_layout([(blob, diff_id)]), tmp_path / "bomb"))
    assert time.monotonic() - start < 20
    assert err.value.rule == "ratio limit"
    assert "LINKD_IMAGE_MAX_RATIO" in str(err.value)
    _empty(store)


@pytest.mark.parametrize("kind", ["garbage", "truncated", "trailing"])
def test_a_broken_zstd_stream_is_refused(store: ImageStore, tmp_path: Path,
                                         kind: str) -> None:
    tar = layer_tar([Entry("x", data=os.urandom(100_000))])
    good = zstd_compress(tar)
    blob = {"garbage": good[:4] + os.urandom(2000), "truncated": good[:len(good) // 2],
            "trailing": good + b"not zstd at all"}[kind]
    with pytest.raises(ImageError, match=r"layer sha256:[0-9a-f]{64}: not readable: zstd: "
                       r".*\(rule: layer format\)"):
        store.load(write_dir(_layout([(blob, sha256(tar))]), tmp_path / kind))
    _empty(store)


def test_without_the_zstd_command_the_error_names_the_package(
        store: ImageStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tar = layer_tar([Entry("x", data=b"x")])
    source = write_dir(_layout([(zstd_compress(tar), sha256(tar))]), tmp_path / "z")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ImageError, match="zstd layers are decompressed by the zstd command, "
                       r"which is not installed \(apt-get install zstd\)"):
        store.load(source)
    _empty(store)
