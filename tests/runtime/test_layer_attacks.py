"""Hostile layers, one named test per attack of issue 14: each is refused with a clear
error (or, where the layer is harmless, loads) and leaves a victim tree beside the store
exactly as it was (paths, contents, modes, inodes, link counts, ctimes) and the store
empty. Every test runs twice: with openat2 and with the O_NOFOLLOW walk that stands in
for it on kernels without one. Needs root (owners, whiteout devices, trusted xattrs);
no namespace or mount, so no machine-wide lock."""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import stat
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from linkd.core import layer_rules
from linkd.core.model import Limits as ResourceLimits
from linkd.core.plan import ContainerPlan, RestartPolicy
from linkd.errors import ContainerError, ImageError, LinkdError
from linkd.runtime.containers import rootfs
from linkd.runtime.containers.process import ProcessSpec
from linkd.runtime.containers.rootfs import resolve_user
from linkd.runtime.images import beneath, layers
from linkd.runtime.images.image_store import ImageStore
from tests.images import (
    Entry,
    Image,
    layer_tar,
    make_victim,
    oci_files_of_blobs,
    sha256,
    snapshot_tree,
    sparse_tar,
    write_dir,
    zero_file_gzip_layer,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="layers need root: owners, "
                                "whiteout devices, trusted.* xattrs")


@pytest.fixture(autouse=True, params=["openat2", "walk"])
def resolution(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(beneath, "use_openat2", request.param == "openat2")
    return str(request.param)


@pytest.fixture
def victim(tmp_path: Path) -> Iterator[Path]:
    """A tree beside the store that no layer may change; checked after the test."""
    path = make_victim(tmp_path / "victim")
    before = snapshot_tree(path)
    yield path
    assert snapshot_tree(path) == before, "a layer changed the tree outside the store"


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "store")


def _load(store: ImageStore, tmp_path: Path, *tars: bytes, limits: layer_rules.Limits | None = None
          ) -> list[Path]:
    """Load an image of these layers (plain tars, bottom first); its layer directories,
    bottom first."""
    n = len(list(tmp_path.glob("src-*")))
    image = store.load(write_dir(Image(list(tars), name=f"t:{n}").oci_files(gzip_layers=False),
                                 tmp_path / f"src-{n}"), limits=limits)
    return image.layer_dirs(store.root)[::-1]


def _refused(store: ImageStore, tmp_path: Path, *tars: bytes,
             limits: layer_rules.Limits | None = None) -> ImageError:
    with pytest.raises(ImageError) as err:
        _load(store, tmp_path, *tars, limits=limits)
    _store_is_empty(store)
    return err.value


def _store_is_empty(store: ImageStore) -> None:
    for sub in ("layers", "images", "tmp"):
        d = store.root / sub
        assert not d.exists() or not os.listdir(d), f"{sub}: {os.listdir(d)}"


def _swap(victim: Path) -> list[Entry]:
    """The start of the issue's payload: `e/f` -> the victim, a file `d/f`, then `d`
    replaced by a symlink to `e`, so `d/f` now names the victim."""
    return [Entry("e", "dir"), Entry("e/f", "symlink", target=str(victim)),
            Entry("d", "dir"), Entry("d/f", data=b"x"), Entry("d", "symlink", target="e")]


# -- the escape and its variants ---------------------------------------------------------


def test_openat2_is_there() -> None:
    """This kernel has openat2, so the 'openat2' runs below exercise it."""
    root = beneath.open_root("/")
    try:
        fd = beneath.openat2_beneath(root, "etc", os.O_RDONLY | os.O_DIRECTORY)
        os.close(fd)
        with pytest.raises(OSError) as err:
            beneath.openat2_beneath(root, "../etc", os.O_RDONLY | os.O_DIRECTORY)
        assert err.value.errno == 18  # EXDEV: would leave the root
    finally:
        os.close(root)


def test_the_setuid_escape_of_the_issue_is_refused(store: ImageStore, tmp_path: Path,
                                                   victim: Path) -> None:
    """Symlink swap, hard link through it, then a setuid file written through the link."""
    layer = layer_tar([*_swap(victim), Entry("x", "hardlink", target="d/f"),
                       Entry("x/anything", data=b"#!/bin/sh\nid\n", mode=0o4755)])
    err = _refused(store, tmp_path, layer)
    assert err.rule == "hard link target"
    assert "'d/f' is not a file of this layer" in str(err)
    assert not (victim / "anything").exists()


def test_overwriting_a_host_file_is_refused(store: ImageStore, tmp_path: Path,
                                            victim: Path) -> None:
    layer = layer_tar([*_swap(victim), Entry("x", "hardlink", target="d/f"),
                       Entry("x/file", data=b"pwned")])
    assert _refused(store, tmp_path, layer).rule == "hard link target"
    # Without the hard link: writing beneath the swapped directory.
    layer = layer_tar([*_swap(victim), Entry("d/f/file", data=b"pwned")])
    err = _refused(store, tmp_path, layer)
    assert err.rule == "entry beneath a symlink"
    assert "d is a symlink in this layer" in str(err)


def test_deleting_a_host_directory_is_refused(store: ImageStore, tmp_path: Path,
                                              victim: Path) -> None:
    # A file replacing the victim's directory, reached through the swapped `d`.
    layer = layer_tar([*_swap(victim), Entry("d/f/dir", data=b"")])
    assert _refused(store, tmp_path, layer).rule == "entry beneath a symlink"
    layer = layer_tar([Entry("d", "symlink", target=str(victim)), Entry("d/dir", "symlink",
                                                                       target="/")])
    assert _refused(store, tmp_path, layer).rule == "entry beneath a symlink"
    # Replacing a symlink to the victim's directory removes the symlink, not the target.
    layer = layer_tar([Entry("l", "symlink", target=str(victim / "dir")),
                       Entry("l", data=b"a file now"),
                       Entry("m", "symlink", target=str(victim)), Entry("m", "dir"),
                       Entry("m/dir", "dir")])
    top, = _load(store, tmp_path, layer)
    assert (top / "l").read_bytes() == b"a file now"
    assert (top / "m/dir").is_dir() and not (top / "m").is_symlink()


def test_a_replaced_directory_is_removed_beneath_the_layer_only(
        store: ImageStore, tmp_path: Path, victim: Path) -> None:
    """A directory holding symlinks to the victim is replaced by a file: its symlinks go,
    the victim's files do not."""
    layer = layer_tar([Entry("d", "dir"), Entry("d/v", "symlink", target=str(victim)),
                       Entry("d/sub", "dir"),
                       Entry("d/sub/w", "symlink", target=str(victim / "dir")),
                       Entry("d", data=b"now a file")])
    top, = _load(store, tmp_path, layer)
    assert (top / "d").read_bytes() == b"now a file"


def test_hard_linking_a_host_inode_is_refused(store: ImageStore, tmp_path: Path,
                                              victim: Path) -> None:
    for entries in (
        [Entry("e", "symlink", target=str(victim)), Entry("x", "hardlink", target="e/file")],
        [Entry("d", "dir"), Entry("d/file", data=b"x"),
         Entry("d", "symlink", target=str(victim)), Entry("x", "hardlink", target="d/file")],
        [Entry("s", "symlink", target=str(victim / "file")),
         Entry("x", "hardlink", target="s")],  # a link to a symlink: refused too
    ):
        err = _refused(store, tmp_path, layer_tar(entries))
        assert err.rule == "hard link target"
    assert os.lstat(victim / "file").st_nlink == 2  # its own second link, nothing more


def test_entries_under_a_replaced_directory_are_not_remembered(
        store: ImageStore, tmp_path: Path, victim: Path) -> None:
    """The bookkeeping bug: `d/f` stayed "known" after `d` was replaced."""
    layer = layer_tar([Entry("d", "dir"), Entry("d/f", data=b"x"), Entry("d", data=b"file"),
                       Entry("x", "hardlink", target="d/f")])
    err = _refused(store, tmp_path, layer)
    assert err.rule == "hard link target"
    layer = layer_tar([Entry("d", "dir"), Entry("d", data=b"file"), Entry("d/f", data=b"x")])
    err = _refused(store, tmp_path, layer)
    assert err.rule == "entry beneath a non-directory" and "d is a file" in str(err)


def test_whiteouts_and_opaque_markers_through_a_swapped_directory_are_refused(
        store: ImageStore, tmp_path: Path, victim: Path) -> None:
    for last in (Entry("d/f/.wh.file"), Entry("d/f/.wh..wh..opq")):
        err = _refused(store, tmp_path, layer_tar([*_swap(victim), last]))
        assert err.rule == "entry beneath a symlink"
    with pytest.raises(OSError):
        os.getxattr(victim, "trusted.overlay.opaque")


def test_a_lower_layers_symlink_does_not_lead_an_upper_layer_out(
        store: ImageStore, tmp_path: Path, victim: Path) -> None:
    """Each layer unpacks into its own directory: `d` of the upper layer is a directory
    of its own (overlayfs shows it over the lower symlink)."""
    lower = layer_tar([Entry("d", "symlink", target=str(victim)),
                       Entry("r", "symlink", target="/")])
    upper = layer_tar([Entry("d/file", data=b"in the layer"), Entry("d/.wh.dir"),
                       Entry("r/etc/passwd", data=b"root:x:0:0::/:/bin/sh\n")])
    bottom, top = _load(store, tmp_path, lower, upper)
    assert (top / "d/file").read_bytes() == b"in the layer"
    assert os.readlink(bottom / "d") == str(victim)


def test_bad_whiteout_names_are_refused(store: ImageStore, tmp_path: Path,
                                        victim: Path) -> None:
    for name, detail in ((".wh.", "'.wh.' names no entry to delete"),
                         (".wh..", "'.wh..' would delete '.'"),
                         (".wh...", "'.wh...' would delete '..'"),
                         ("a/.wh.", "names no entry"),
                         ("a/.wh...", "would delete '..'"),
                         (".wh.x/y", "'.wh.x' is a whiteout, not a directory")):
        err = _refused(store, tmp_path, layer_tar([Entry("a", "dir"), Entry(name)]))
        assert err.rule == "whiteout name" and detail in str(err), name
    # As a device 0/0 (overlayfs's own form) too.
    err = _refused(store, tmp_path, layer_tar([Entry(".wh..", "chr")]))
    assert err.rule == "whiteout name"


# -- verified before unpacked ------------------------------------------------------------


def test_nothing_is_unpacked_before_both_digests_check(
        store: ImageStore, tmp_path: Path, victim: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = layers.unpack_layer
    monkeypatch.setattr("linkd.runtime.images.image_store.unpack_layer",
                        lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    payload = layer_tar([Entry("e", "symlink", target=str(victim)),
                         Entry("x", "hardlink", target="e/file")])
    good = layer_tar([Entry("ok", data=b"fine")])
    # A wrong diff_id: the config names another tar.
    files = oci_files_of_blobs([(good, sha256(good), False), (payload, sha256(b"x"), False)])
    with pytest.raises(ImageError, match=r"rule: diff_id mismatch"):
        store.load(write_dir(files, tmp_path / "diff"))
    assert len(calls) == 1  # only the good first layer, into the load's work directory
    # A wrong blob digest: a byte of the payload flipped after the manifest was made.
    calls.clear()
    files = oci_files_of_blobs([(payload, sha256(payload), False)])
    blob = f"blobs/sha256/{sha256(payload)[7:]}"
    files[blob] = payload[:-1] + b"\1"
    with pytest.raises(ImageError, match=r"rule: digest mismatch"):
        store.load(write_dir(files, tmp_path / "digest"))
    assert calls == []
    _store_is_empty(store)


def test_a_blob_longer_than_its_descriptor_is_read_only_that_far(
        store: ImageStore, tmp_path: Path, victim: Path) -> None:
    good = layer_tar([Entry("ok", data=b"fine")])
    files = oci_files_of_blobs([(good, sha256(good), False)])
    blob = f"blobs/sha256/{sha256(good)[7:]}"
    files[blob] = good + bytes(1 << 20)
    with pytest.raises(ImageError, match=r"more than \d+ bytes, the descriptor says"):
        store.load(write_dir(files, tmp_path / "long"))


# -- bombs and limits ---------------------------------------------------------------------


def test_a_gzip_bomb_stops_at_the_expansion_limit(store: ImageStore, tmp_path: Path,
                                                  victim: Path) -> None:
    blob, diff_id = zero_file_gzip_layer("zeros", 256 << 20)
    assert len(blob) < 300 << 10  # the issue's 260 KiB
    start = time.monotonic()
    with pytest.raises(ImageError) as err:
        store.load(write_dir(oci_files_of_blobs([(blob, diff_id, True)]), tmp_path / "b"))
    assert time.monotonic() - start < 20
    assert err.value.rule == "ratio limit"
    message = str(err.value)
    assert re.search(r"the layer expands to at least 6\d,\d{3},\d{3} bytes from a blob of "
                     r"2\d\d,\d{3}, or 2\d\d times its blob, over the limit of 100 times",
                     message)
    assert "over the limit of 100 times its blob (LINKD_IMAGE_MAX_RATIO=100, default 100)" \
        in message and "set LINKD_IMAGE_MAX_RATIO higher" in message
    _store_is_empty(store)


def test_the_expansion_limit_can_be_raised(store: ImageStore, tmp_path: Path, victim: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    blob, diff_id = zero_file_gzip_layer("zeros", 65 << 20)
    source = write_dir(oci_files_of_blobs([(blob, diff_id, True)]), tmp_path / "b")
    with pytest.raises(ImageError, match="ratio limit"):
        store.load(source)
    monkeypatch.setenv("LINKD_IMAGE_MAX_RATIO", "5000")
    top, = store.load(source).layer_dirs(store.root)
    assert (top / "zeros").stat().st_size == 65 << 20


def test_a_sparse_bomb_is_refused_by_its_declared_size(store: ImageStore, tmp_path: Path,
                                                       victim: Path) -> None:
    bomb = sparse_tar("big", 256 << 20)
    assert len(bomb) < 20 << 10
    err = _refused(store, tmp_path, bomb)
    assert err.rule == "sparse limit"
    assert "sparse members declare at least 268,435,456 bytes, over the limit of " \
        "67,108,864 bytes (LINKD_IMAGE_MAX_SPARSE=64M, default 64M)" in str(err)
    # Raised, the expansion limit still holds: 256 MiB from a blob of a few KiB.
    err = _refused(store, tmp_path, bomb, limits=layer_rules.Limits(sparse=1 << 30))
    assert err.rule == "ratio limit"
    # A small sparse file loads, its hole as zeros.
    top, = _load(store, tmp_path, sparse_tar("small", 1 << 20))
    data = (top / "small").read_bytes()
    assert len(data) == 1 << 20 and data[:512] == b"x" * 512 and not any(data[512:])


def test_entry_size_and_path_limits(store: ImageStore, tmp_path: Path, victim: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    many = layer_tar([Entry(f"f{n}") for n in range(30)])
    err = _refused(store, tmp_path, many, limits=layer_rules.Limits(entries=20))
    assert err.rule == "entries limit" and "LINKD_IMAGE_MAX_ENTRIES=20" in str(err)
    # Two layers count together.
    err = _refused(store, tmp_path, many, layer_tar([Entry("g")]),
                   limits=layer_rules.Limits(entries=30))
    assert err.rule == "entries limit"
    big = layer_tar([Entry("f", data=bytes(300 << 10))])
    err = _refused(store, tmp_path, big, limits=layer_rules.Limits(size=256 << 10))
    assert err.rule == "size limit" and "LINKD_IMAGE_MAX_SIZE=256K" in str(err)
    monkeypatch.setenv("LINKD_IMAGE_MAX_PATH", "100")
    err = _refused(store, tmp_path, layer_tar([Entry("a/" * 60 + "f")]))
    assert err.rule == "path limit"
    assert "the path is 121 bytes, over the limit of 100 bytes" in str(err)
    err = _refused(store, tmp_path, layer_tar([Entry("l", "symlink", target="/x" * 60)]))
    assert err.rule == "path limit" and "the link target is 120 bytes" in str(err)
    monkeypatch.delenv("LINKD_IMAGE_MAX_PATH")
    err = _refused(store, tmp_path, layer_tar([Entry("n" * 256)]))
    assert err.rule == "name length"
    monkeypatch.setenv("LINKD_IMAGE_MAX_SIZE", "lots")
    with pytest.raises(LinkdError, match=r"\$LINKD_IMAGE_MAX_SIZE='lots': expected a "
                       "positive whole number, optionally with K, M, G or T"):
        _load(store, tmp_path, many)


def _raw_header(name: str, typeflag: bytes, size: int, negative: bool = False) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = typeflag
    info.size = 0 if negative else size
    header = bytearray(info.tobuf(format=tarfile.USTAR_FORMAT))
    if negative:  # base-256, as GNU tar writes large numbers: -512
        header[124:136] = b"\xff" * 10 + b"\xfe\x00"
        header[148:156] = b" " * 8
        header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


def test_tar_headers_that_would_hold_the_parser_are_refused(
        store: ImageStore, tmp_path: Path, victim: Path) -> None:
    # A PAX header of 2 MiB (memory: tarfile reads it whole).
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("f")
        info.pax_headers = {"comment": "x" * (2 << 20)}
        tar.addfile(info, io.BytesIO(b""))
    err = _refused(store, tmp_path, out.getvalue())
    assert err.rule == "tar header" and "extended header of 2,097,1" in str(err)
    # A negative size (tarfile would read the same header again and again).
    neg = _raw_header("f", tarfile.REGTYPE, 0, negative=True) + bytes(1024)
    err = _refused(store, tmp_path, neg)
    assert err.rule == "tar header"
    # A PAX 1.0 sparse map announcing ten million regions.
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("GNUSparseFile.0/s")
        info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                            "GNU.sparse.name": "s", "GNU.sparse.realsize": "10"}
        data = b"10000000\n" + bytes(503)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    err = _refused(store, tmp_path, out.getvalue())
    assert err.rule == "tar header" and "sparse map" in str(err)
    # Old GNU sparse members are not read at all.
    err = _refused(store, tmp_path, _raw_header("s", tarfile.GNUTYPE_SPARSE, 0) + bytes(1024))
    assert err.rule == "tar header" and "type S" in str(err)


def test_a_gzip_outer_archive_is_held_to_the_entry_limit(
        store: ImageStore, tmp_path: Path, victim: Path) -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for n in range(50):
            tar.addfile(tarfile.TarInfo(f"junk{n}"), io.BytesIO(b""))
    (tmp_path / "outer.tar.gz").write_bytes(gzip.compress(out.getvalue()))
    with pytest.raises(ImageError, match=r"the archive holds at least 21 entries, over the "
                       r"limit of 20 entries"):
        store.load(tmp_path / "outer.tar.gz", limits=layer_rules.Limits(entries=20))


# -- the user lookup reads the image's files only ----------------------------------------


def test_the_user_lookup_does_not_follow_an_image_symlink_to_the_host(
        store: ImageStore, tmp_path: Path, victim: Path) -> None:
    layer = layer_tar([Entry("etc", "symlink", target=str(victim / "etc"))])
    dirs = _load(store, tmp_path, layer)[::-1]
    with pytest.raises(ContainerError, match="user 'intruder' not found"):
        resolve_user(dirs, "intruder")
    assert resolve_user(dirs, "4242") == (4242, 0, [])  # a plain uid, no entry
    with pytest.raises(ContainerError, match="group 'intruders' not found"):
        resolve_user(dirs, "4242:intruders")
    # The issue's own form, `etc` -> `/etc`: a user of this host's /etc/passwd.
    host_user = next(line.split(":")[0] for line in
                     Path("/etc/passwd").read_text().splitlines() if line.split(":")[0])
    layer = layer_tar([Entry("etc", "symlink", target="/etc")])
    dirs = _load(store, tmp_path, layer)[::-1]
    with pytest.raises(ContainerError, match=f"user '{host_user}' not found"):
        resolve_user(dirs, host_user)
    # A relative symlink that climbs above the image's root is refused at load.
    lower = layer_tar([Entry("x", "dir"), Entry("x/y", "symlink", target="../../../..")])
    upper = layer_tar([Entry("etc", "symlink", target="x/y" + str(victim / "etc"))])
    with pytest.raises(ImageError, match="symlink escapes the root"):
        _load(store, tmp_path, lower, upper)


def test_symlinks_inside_the_image_resolve_inside_it(store: ImageStore, tmp_path: Path,
                                                     victim: Path) -> None:
    passwd = b"root:x:0:0::/:/bin/sh\napp:x:1000:1000::/:/bin/sh\n"
    lower = layer_tar([Entry("real", "dir"), Entry("real/etc", "dir"),
                       Entry("real/etc/passwd", data=passwd),
                       Entry("real/etc/group", data=b"app:x:1000:\nweb:x:33:app\n")])
    upper = layer_tar([Entry("etc", "symlink", target="/real/etc")])
    dirs = _load(store, tmp_path, lower, upper)[::-1]
    assert resolve_user(dirs, "app") == (1000, 1000, [33])
    # A whiteout in a top layer hides the file; an opaque directory hides the layers below.
    gone = layer_tar([Entry("real", "dir"), Entry("real/etc", "dir"),
                      Entry("real/etc/.wh.passwd")])
    dirs = _load(store, tmp_path, lower, upper, gone)[::-1]
    with pytest.raises(ContainerError, match="user 'app' not found"):
        resolve_user(dirs, "app")
    opaque = layer_tar([Entry("real", "dir"), Entry("real/.wh..wh..opq")])
    dirs = _load(store, tmp_path, lower, upper, opaque)[::-1]
    with pytest.raises(ContainerError, match="user 'app' not found"):
        resolve_user(dirs, "app")
    # A symlink loop ends, as in the kernel, after 40 hops.
    loop = layer_tar([Entry("etc", "symlink", target="/etc")])
    dirs = _load(store, tmp_path, lower, loop)[::-1]
    with pytest.raises(ContainerError, match="user 'app' not found"):
        resolve_user(dirs, "app")


# -- modes --------------------------------------------------------------------------------


def test_store_and_writable_layer_directories_are_root_only(
        store: ImageStore, tmp_path: Path, victim: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    (store.root / "layers").mkdir(parents=True, mode=0o755)  # as an older linkd left it
    os.chmod(store.root / "layers", 0o755)
    layer = layer_tar([Entry("bin", "dir"), Entry("bin/su", data=b"x", mode=0o4755)])
    top, = _load(store, tmp_path, layer)
    assert stat.S_IMODE(os.stat(store.root / "layers").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(store.root / "tmp").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(top).st_mode) == 0o755  # the image's /, under 0700
    assert stat.S_IMODE(os.stat(top / "bin/su").st_mode) == 0o4755
    # A container's writable layer: rootfs/ (upper, work, merged) is 0700.
    monkeypatch.setenv("LINKD_IMAGES", str(store.root))
    monkeypatch.setattr(rootfs.cgroups, "create", lambda *a: ())
    image_id = store.list()[0].id
    container = ContainerPlan(
        name="app-1", service="app", replica=1, netns="linkd-s-app-1", hostname="app-1",
        interfaces=(), argv=("/bin/su",), env=(), working_dir="/", user=None,
        restart=RestartPolicy(), stop_signal="SIGTERM", stop_grace_period=10.0,
        healthcheck=None, image=image_id, limits=ResourceLimits(None, None, None),
        runtime="linkd")
    run_dir = tmp_path / "run/app-1"
    spec = ProcessSpec(name="app-1", netns="linkd-s-app-1", hostname="app-1", argv=(),
                       env=(), working_dir=None, user=None, bind_files=(),
                       log_path="/dev/null", run_dir=str(run_dir))
    spec = rootfs.prepare(spec, container, "s")
    assert spec.rootfs_dir == str(run_dir / "rootfs")
    assert stat.S_IMODE(os.stat(run_dir / "rootfs").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(run_dir).st_mode) == 0o700


def test_ordinary_replacements_still_work(store: ImageStore, tmp_path: Path,
                                          victim: Path) -> None:
    layer = layer_tar([
        Entry("a", data=b"file"), Entry("a", "dir"), Entry("a/x", data=b"x"),   # file -> dir
        Entry("b", "dir"), Entry("b/y", data=b"y"), Entry("b", data=b"file"),   # dir -> file
        Entry("c", "dir"), Entry("c", "symlink", target="a"),                   # dir -> link
        Entry("d", "symlink", target="/nowhere"), Entry("d", "dir"),            # link -> dir
        Entry("e", "dir", mode=0o700), Entry("e", "dir", mode=0o750),           # dir stays
        Entry("h", "hardlink", target="a/x"), Entry("a/z", "hardlink", target="h"),
        Entry("w", data=b"w"), Entry(".wh.w"),                                  # -> whiteout
        Entry("p", "fifo"), Entry("p", data=b"not a fifo"),
    ])
    top, = _load(store, tmp_path, layer)
    assert (top / "a/x").read_bytes() == b"x" and (top / "b").read_bytes() == b"file"
    assert os.readlink(top / "c") == "a" and (top / "d").is_dir()
    assert stat.S_IMODE(os.stat(top / "e").st_mode) == 0o750
    assert os.stat(top / "h").st_ino == os.stat(top / "a/x").st_ino == os.stat(
        top / "a/z").st_ino
    w = os.lstat(top / "w")
    assert stat.S_ISCHR(w.st_mode) and w.st_rdev == 0
    assert (top / "p").read_bytes() == b"not a fifo"


def test_only_the_file_capability_xattr_is_kept(store: ImageStore, tmp_path: Path,
                                                victim: Path) -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("ping")
        info.pax_headers = {"SCHILY.xattr.security.capability":
                            "\x01\x00\x00\x02\x00\x20\x00\x00" + "\x00" * 12,
                            "SCHILY.xattr.trusted.overlay.opaque": "y",
                            "security.capability": "\x01"}  # no SCHILY prefix: ignored
        tar.addfile(info, io.BytesIO(b""))
    top, = _load(store, tmp_path, out.getvalue())
    assert os.listxattr(top / "ping") == ["security.capability"]
    assert json.dumps(sorted(os.listxattr(top))) == "[]"
