"""The image store on real files: busybox images in OCI layout, OCI archive and docker save
form; every bad-archive rule refused, with nothing written outside the store and nothing
left of a load that failed."""

from __future__ import annotations

import gzip
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from linkd.errors import ImageError, NotFoundError
from linkd.runtime.images.image_store import ImageStore, layer_dir
from tests.images import (
    Entry,
    Image,
    busybox_image,
    layer_tar,
    sha256,
    write_dir,
    write_tar,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def busybox() -> Image:
    return busybox_image()


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "store")


def _store_is_empty(store: ImageStore) -> None:
    """What a failed load may leave: the lock file and empty directories, no layers, no
    images, no names, no temporary files."""
    for sub in ("layers", "images", "tmp"):
        d = store.root / sub
        assert not d.exists() or not os.listdir(d), f"{sub}: {os.listdir(d)}"
    assert not (store.root / "refs.json").exists() or store.list() == []


@pytest.mark.parametrize("form", ["oci-dir", "oci-tar", "oci-dir-plain", "docker-save"])
def test_busybox_loads_in_every_form(busybox: Image, store: ImageStore, tmp_path: Path,
                                     form: str) -> None:
    if form == "docker-save":
        source = write_tar(busybox.save_files(), tmp_path / "busybox.tar")
    elif form == "oci-tar":
        source = write_tar(busybox.oci_files(), tmp_path / "busybox.oci.tar")
    else:
        source = write_dir(busybox.oci_files(gzip_layers=form == "oci-dir"), tmp_path / "oci")
    image = store.load(source)
    assert image.names == ("test/busybox:1",)
    assert image.layers == tuple(busybox.diff_ids())
    assert image.config.cmd == ("/bin/sh",) and image.config.env == ("PATH=/bin",)
    top, bottom = image.layer_dirs(store.root)
    assert (bottom / "bin/busybox").stat().st_mode & 0o777 == 0o755
    assert os.readlink(bottom / "bin/nslookup") == "busybox"
    assert (top / "etc/passwd").read_bytes().startswith(b"root:x:0:0")
    assert store.get("test/busybox:1").id == image.id
    assert os.listdir(store.root / "tmp") == []
    # The binary in the store is the one from Debian, and it runs.
    out = subprocess.run([bottom / "bin/busybox", "echo", "hi"], capture_output=True, text=True)
    assert out.stdout == "hi\n"


def test_layers_are_shared_and_unpacked_once(busybox: Image, store: ImageStore,
                                             tmp_path: Path) -> None:
    first = store.load(write_dir(busybox.oci_files(), tmp_path / "a"))
    inode = (layer_dir(store.root, first.layers[0]) / "bin/busybox").stat().st_ino
    extra = Image([*busybox.layers, layer_tar([Entry("hello", data=b"hi")])], name="other:2")
    second = store.load(write_tar(extra.save_files(), tmp_path / "b.tar"))
    assert (layer_dir(store.root, second.layers[0]) / "bin/busybox").stat().st_ino == inode
    assert len(os.listdir(store.root / "layers")) == 3
    assert sorted(n for i in store.list() for n in i.names) == ["other:2", "test/busybox:1"]
    store.remove("test/busybox:1")
    assert len(os.listdir(store.root / "layers")) == 3  # other:2 still uses them
    store.remove("other:2")
    assert os.listdir(store.root / "layers") == [] and store.list() == []
    with pytest.raises(NotFoundError, match="linkd image load"):
        store.get("other:2")


def test_whiteouts_become_overlayfs_whiteouts_and_hide_lower_files(
        store: ImageStore, tmp_path: Path) -> None:
    lower = layer_tar([Entry("etc", "dir"), Entry("etc/motd", data=b"hello"),
                       Entry("opt", "dir"), Entry("opt/a", data=b"a"), Entry("opt/b", data=b"b")])
    upper = layer_tar([Entry("etc", "dir"), Entry("etc/.wh.motd"), Entry("opt", "dir"),
                       Entry("opt/.wh..wh..opq"), Entry("opt/c", data=b"c")])
    image = store.load(write_dir(Image([lower, upper], name="wh:1").oci_files(),
                                 tmp_path / "wh"))
    top = image.layer_dirs(store.root)[0]
    st = os.lstat(top / "etc/motd")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)
    assert os.getxattr(top / "opt", "trusted.overlay.opaque") == b"y"
    # Mounted as overlayfs does it for a container: the whited-out files are gone.
    merged = tmp_path / "merged"
    merged.mkdir()
    lowerdir = ":".join(str(d) for d in image.layer_dirs(store.root))
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lowerdir}",
                    str(merged)], check=True)
    try:
        assert not (merged / "etc/motd").exists()
        assert sorted(os.listdir(merged / "opt")) == ["c"]
    finally:
        subprocess.run(["umount", str(merged)], check=True)


def test_uncompressed_and_gzip_layers_in_docker_save(busybox: Image, store: ImageStore,
                                                     tmp_path: Path) -> None:
    files = busybox.save_files()
    manifest = json.loads(files["manifest.json"])
    gz = manifest[0]["Layers"][1]
    files[gz] = gzip.compress(files[gz])  # podman writes compressed docker archives
    image = store.load(write_tar(files, tmp_path / "mixed.tar"))
    assert image.layers == tuple(busybox.diff_ids())


# -- bad archives -----------------------------------------------------------------------

OUTSIDE = Path("/var/tmp/linkd-image-escape")


@pytest.fixture
def outside() -> Iterator[Path]:
    """Where an escaping entry would land; must stay absent."""
    OUTSIDE.unlink(missing_ok=True)
    yield OUTSIDE
    assert not OUTSIDE.exists(), "an archive wrote outside the store"


BAD_LAYERS = {
    "'..' in path": [Entry("../../../../../../var/tmp/linkd-image-escape", data=b"x")],
    "absolute path": [Entry("/var/tmp/linkd-image-escape", data=b"x")],
    "symlink escapes the root": [Entry("etc", "dir"), Entry("etc/x", "symlink",
                                                            target="../../var/tmp")],
    "entry beneath a symlink": [Entry("out", "symlink", target="/var/tmp"),
                                Entry("out/linkd-image-escape", data=b"x")],
    "opaque marker beneath a symlink": [Entry("out", "symlink", target="/var/tmp"),
                                        Entry("out/.wh..wh..opq")],
    "hard link escapes the root": [Entry("x", "hardlink", target="/etc/shadow")],
    "hard link target": [Entry("x", "hardlink", target="etc/shadow")],
    "device node": [Entry("dev", "dir"), Entry("dev/mem", "chr", major=1, minor=1)],
}


@pytest.mark.parametrize("rule", sorted(BAD_LAYERS))
@pytest.mark.parametrize("form", ["oci", "docker-save"])
def test_bad_layers_are_refused_and_leave_nothing(
        busybox: Image, store: ImageStore, tmp_path: Path, outside: Path, rule: str,
        form: str) -> None:
    # The bad layer comes second: the good first layer must not be kept either.
    image = Image([busybox.layers[0], layer_tar(BAD_LAYERS[rule])], name="bad:1")
    files = image.oci_files() if form == "oci" else image.save_files()
    source = write_tar(files, tmp_path / "bad.tar")
    with pytest.raises(ImageError) as err:
        store.load(source)
    assert err.value.rule == rule.replace("opaque marker", "entry")
    assert str(err.value).startswith(f"image {source}: layer ")
    _store_is_empty(store)
    with pytest.raises(OSError):  # nothing marked outside the store either
        os.getxattr("/var/tmp", "trusted.overlay.opaque")


def _oci_blob_of_layer(files: dict[str, bytes], n: int) -> str:
    index = json.loads(files["index.json"])
    manifest = json.loads(files["blobs/sha256/" + index["manifests"][0]["digest"][7:]])
    return "blobs/sha256/" + manifest["layers"][n]["digest"][7:]


def test_missing_and_extra_blobs_are_refused(busybox: Image, store: ImageStore,
                                             tmp_path: Path) -> None:
    files = busybox.oci_files()
    missing = dict(files)
    del missing[_oci_blob_of_layer(files, 1)]
    with pytest.raises(ImageError, match=r"rule: missing blob"):
        store.load(write_dir(missing, tmp_path / "missing"))
    extra = dict(files, **{"blobs/sha256/" + "0" * 64: b"junk"})
    with pytest.raises(ImageError, match=r"blobs/sha256/0+: no manifest refers to it "
                       r"\(rule: extra blob\)"):
        store.load(write_dir(extra, tmp_path / "extra"))
    save = busybox.save_files()
    layer = json.loads(save["manifest.json"])[0]["Layers"][0]
    with pytest.raises(ImageError, match=r"rule: missing blob"):
        store.load(write_tar({k: v for k, v in save.items() if k != layer}, tmp_path / "m.tar"))
    with pytest.raises(ImageError, match=r"rule: extra blob"):
        store.load(write_tar(dict(save, **{"f00/layer.tar": b""}), tmp_path / "e.tar"))
    _store_is_empty(store)


def test_digest_mismatches_are_refused(busybox: Image, store: ImageStore,
                                       tmp_path: Path) -> None:
    files = busybox.oci_files(gzip_layers=False)
    blob = _oci_blob_of_layer(files, 0)
    flipped = bytearray(files[blob])
    flipped[-2000] ^= 1  # inside busybox's bytes: the tar still reads
    with pytest.raises(ImageError, match=r"rule: digest mismatch"):
        store.load(write_dir(dict(files, **{blob: bytes(flipped)}), tmp_path / "flip"))
    save = busybox.save_files()
    layer = json.loads(save["manifest.json"])[0]["Layers"][0]
    changed = bytearray(save[layer])
    changed[-2000] ^= 1
    with pytest.raises(ImageError, match=r"rule: diff_id mismatch"):
        store.load(write_tar(dict(save, **{layer: bytes(changed)}), tmp_path / "d.tar"))
    index = json.loads(files["index.json"])
    index["manifests"][0]["size"] += 1  # the right digest, the wrong size
    with pytest.raises(ImageError, match=r"the descriptor says \d+ \(rule: size mismatch\)"):
        store.load(write_dir(dict(files, **{"index.json": json.dumps(index).encode()}),
                             tmp_path / "size"))
    config = next(k for k in save if k.endswith(".json") and k != "manifest.json")
    with pytest.raises(ImageError, match=rf"{config}: content is .* \(rule: digest mismatch\)"):
        store.load(write_tar(dict(save, **{config: save[config] + b" "}), tmp_path / "c.tar"))
    _store_is_empty(store)


def test_another_architecture_is_refused(busybox: Image, store: ImageStore,
                                         tmp_path: Path) -> None:
    arm = Image(busybox.layers, arch="arm64", name="arm:1")
    with pytest.raises(ImageError, match=r"index.json: only for linux/arm64; this machine is "
                       r"linux/amd64 \(rule: architecture\)"):
        store.load(write_dir(arm.oci_files(), tmp_path / "arm"), machine="x86_64")
    with pytest.raises(ImageError, match=r"built for linux/arm64.*rule: architecture"):
        store.load(write_tar(arm.save_files(), tmp_path / "arm.tar"), machine="x86_64")
    _store_is_empty(store)


def test_archive_paths_and_zstd_are_checked(busybox: Image, store: ImageStore,
                                            tmp_path: Path) -> None:
    files = dict(busybox.oci_files(), **{"../escape": b"x"})
    with pytest.raises(ImageError, match=r"rule: '\.\.' in path"):
        store.load(write_tar(files, tmp_path / "dots.tar"))
    files = busybox.oci_files(gzip_layers=False)
    index = json.loads(files["index.json"])
    mpath = "blobs/sha256/" + index["manifests"][0]["digest"][7:]
    manifest = json.loads(files[mpath])
    zst = b"\x28\xb5\x2f\xfd" + b"\0" * 20
    manifest["layers"][0].update(mediaType="application/vnd.oci.image.layer.v1.tar+zstd",
                                 digest=sha256(zst), size=len(zst))
    del files[_oci_blob_of_layer(files, 0)]
    files["blobs/sha256/" + sha256(zst)[7:]] = zst
    raw = json.dumps(manifest).encode()
    del files[mpath]
    files["blobs/sha256/" + sha256(raw)[7:]] = raw
    index["manifests"][0].update(digest=sha256(raw), size=len(raw))
    files["index.json"] = json.dumps(index).encode()
    with pytest.raises(ImageError, match=r"not readable: zstd: .*rule: layer format"):
        store.load(write_dir(files, tmp_path / "zstd"))
    with pytest.raises(ImageError, match=r"neither an OCI layout"):
        store.load(write_tar({"hello": b"x"}, tmp_path / "no.tar"))
    with pytest.raises(NotFoundError):
        store.load(tmp_path / "nothing-here.tar")
    _store_is_empty(store)


def test_cli_image_load_ls_rm(busybox: Image, tmp_path: Path) -> None:
    source = write_tar(busybox.save_files(), tmp_path / "busybox.tar")
    env = {**os.environ, "PYTHONPATH": str(REPO), "LINKD_IMAGES": str(tmp_path / "store")}

    def linkd(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "linkd", "image", *args], env=env,
                              capture_output=True, text=True, timeout=60)

    load = linkd("load", str(source), "--name", "bb")
    assert load.returncode == 0, load.stderr
    assert load.stdout.startswith("loaded bb:latest (sha256:") and "2 layers" in load.stdout
    ls = linkd("ls")
    assert ls.stdout.splitlines()[0].split() == ["NAME", "ID", "PLATFORM", "LAYERS", "SIZE"]
    assert ls.stdout.splitlines()[1].split()[0] == "bb:latest"
    assert linkd("rm", "bb").stdout == "removed bb\n"
    assert linkd("ls").stdout.splitlines()[1:] == []
    bad = linkd("rm", "bb")
    assert bad.returncode == 1 and "not in the store" in bad.stderr
    (tmp_path / "bad.tar").write_bytes(b"nope")
    bad = linkd("load", str(tmp_path / "bad.tar"))
    assert bad.returncode == 2 and bad.stderr.startswith(f"linkd: image {tmp_path}/bad.tar: ")
    assert linkd("load", str(source), "--name", "bb").returncode == 0
    assert linkd("prune", "-f").stdout == "reclaimed 0.0 MB\n"  # bb has its name
    pruned = linkd("prune", "--all", "--force")
    assert pruned.stdout.startswith("removed bb:latest (sha256:"), pruned.stdout
    assert linkd("ls").stdout.splitlines()[1:] == []


def test_prune_removes_what_no_name_or_container_keeps(busybox: Image, store: ImageStore,
                                                       tmp_path: Path) -> None:
    """`linkd image prune`: images without a name go (a newer one took theirs), the
    layers only they had with them; `--all`: every image no container runs."""
    old = Image([*busybox.layers, layer_tar([Entry("v", data=b"1")])], name="app:1")
    new = Image([*busybox.layers, layer_tar([Entry("v", data=b"2")])], name="app:2")
    first = store.load(write_tar(old.save_files(), tmp_path / "old.tar"))
    second = store.load(write_tar(new.save_files(), tmp_path / "new.tar"))
    store.tag(second.id, "app:1")  # app:1 moves on: the first image has no name left
    assert [i.id for i in store.unnamed()] == [first.id]
    assert store.prune({first.id}) == ((), 0)  # a container runs it: kept
    removed, freed = store.prune(set())
    assert [(i.id, i.names) for i in removed] == [(first.id, ())]
    assert freed == len(old.layers[-1])  # its own layer's archive; the shared ones stay
    assert not layer_dir(store.root, first.layers[-1]).exists()
    assert all(layer_dir(store.root, d).is_dir() for d in second.layers)
    assert store.prune(set()) == ((), 0)  # a named image stays without --all
    assert store.prune({second.id}, named=True) == ((), 0)
    removed, _ = store.prune(set(), named=True)
    assert [(i.id, i.names) for i in removed] == [(second.id, ("app:1", "app:2"))]
    assert store.list() == [] and os.listdir(store.root / "layers") == []
