"""Build real images without a registry: layer tars, OCI layouts, `docker save` archives.

An image is first a dict of files (archive member name -> bytes) so a test can break one
rule (drop a blob, add one, flip a byte) before writing it as a directory or a tar. The
busybox image is Debian's busybox-static (`/bin/busybox`) with a symlink per applet.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BUSYBOX = Path("/bin/busybox")
ARCH = {"x86_64": "amd64", "aarch64": "arm64"}


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Entry:
    """One layer member: kind is file, dir, symlink, hardlink, chr, blk or fifo."""

    name: str
    kind: str = "file"
    data: bytes = b""
    target: str = ""
    mode: int = 0o644
    major: int = 0
    minor: int = 0
    uid: int = 0
    gid: int = 0


_TYPES = {
    "file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE, "chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}


def layer_tar(entries: Iterable[Entry]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type = _TYPES[e.kind]
            info.mode = e.mode if e.kind != "dir" or e.mode != 0o644 else 0o755
            info.mtime = 1_700_000_000
            info.linkname = e.target
            info.devmajor, info.devminor = e.major, e.minor
            info.uid, info.gid = e.uid, e.gid
            info.size = len(e.data) if e.kind == "file" else 0
            tar.addfile(info, io.BytesIO(e.data) if e.kind == "file" else None)
    return out.getvalue()


def busybox_entries(applets: Iterable[str] | None = None) -> list[Entry]:
    if applets is None:
        listed = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True,
                                check=True).stdout.split()
        applets = [a for a in listed if a != "busybox"]
    entries = [Entry(d, "dir") for d in ("bin", "etc", "tmp", "proc", "sys", "dev", "run",
                                         "root", "var", "home")]
    entries[2].mode = 0o1777
    entries.append(Entry("bin/busybox", data=BUSYBOX.read_bytes(), mode=0o755))
    entries += [Entry(f"bin/{a}", "symlink", target="busybox") for a in applets]
    entries.append(Entry("etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\n"
                         b"nobody:x:65534:65534:nobody:/home:/bin/false\n"))
    entries.append(Entry("etc/group", data=b"root:x:0:\nnogroup:x:65534:\n"))
    return entries


def default_config(diff_ids: list[str], arch: str | None = None, **run: Any) -> dict[str, Any]:
    import platform
    config: dict[str, Any] = {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]}
    config.update(run)
    return {
        "architecture": arch or ARCH.get(platform.machine(), platform.machine()),
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }


@dataclass
class Image:
    layers: list[bytes]  # uncompressed tars, bottom first
    run: dict[str, Any] = field(default_factory=dict)  # config.config overrides
    arch: str | None = None
    name: str = "test/busybox:1"

    def diff_ids(self) -> list[str]:
        return [sha256(layer) for layer in self.layers]

    def config_bytes(self) -> bytes:
        return json.dumps(default_config(self.diff_ids(), self.arch, **self.run)).encode()

    def oci_files(self, gzip_layers: bool = True, platform_arch: str | None = None,
                  zstd_layers: bool = False) -> dict[str, bytes]:
        files: dict[str, bytes] = {}

        def blob(data: bytes, media_type: str) -> dict[str, Any]:
            files[f"blobs/sha256/{sha256(data)[7:]}"] = data
            return {"mediaType": media_type, "digest": sha256(data), "size": len(data)}

        layer_descs = []
        for layer in self.layers:
            if zstd_layers:
                data = zstd_compress(layer)
                layer_descs.append(blob(data, "application/vnd.oci.image.layer.v1.tar+zstd"))
            elif gzip_layers:
                data = gzip.compress(layer, mtime=0)
                layer_descs.append(blob(data, "application/vnd.oci.image.layer.v1.tar+gzip"))
            else:
                layer_descs.append(blob(layer, "application/vnd.oci.image.layer.v1.tar"))
        config = blob(self.config_bytes(), "application/vnd.oci.image.config.v1+json")
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": config, "layers": layer_descs}
        desc = blob(json.dumps(manifest).encode(), manifest["mediaType"])
        desc["platform"] = {"os": "linux",
                            "architecture": platform_arch or json.loads(
                                self.config_bytes())["architecture"]}
        desc["annotations"] = {"org.opencontainers.image.ref.name": self.name}
        files["index.json"] = json.dumps({"schemaVersion": 2, "manifests": [desc]}).encode()
        files["oci-layout"] = b'{"imageLayoutVersion": "1.0.0"}'
        return files

    def save_files(self) -> dict[str, bytes]:
        """`docker save` (before Docker 25): <id>/layer.tar, <hex>.json, manifest.json."""
        files: dict[str, bytes] = {}
        members = []
        for n, layer in enumerate(self.layers):
            member = f"{hashlib.sha256(b'%d' % n + layer).hexdigest()}/layer.tar"
            files[member] = layer
            files[member.replace("layer.tar", "VERSION")] = b"1.0"
            members.append(member)
        config = self.config_bytes()
        config_name = sha256(config)[7:] + ".json"
        files[config_name] = config
        files["manifest.json"] = json.dumps(
            [{"Config": config_name, "RepoTags": [self.name], "Layers": members}]
        ).encode()
        files["repositories"] = b"{}"
        return files


def zstd_compress(data: bytes) -> bytes:
    """`data` compressed by the zstd command (Debian's zstd package)."""
    return subprocess.run(["zstd", "-q", "-c"], input=data, capture_output=True, check=True,
                          timeout=60).stdout


def write_dir(files: dict[str, bytes], path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    for name, data in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)
    return path


def write_tar(files: dict[str, bytes], path: Path) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return path


def busybox_image(**run: Any) -> Image:
    """busybox in two layers (the binary and its applets, then /etc files), so layer
    stacking is exercised."""
    entries = busybox_entries()
    base = [e for e in entries if not e.name.startswith("etc/")]
    etc = [Entry("etc", "dir")] + [e for e in entries if e.name.startswith("etc/")]
    return Image([layer_tar(base), layer_tar(etc)], run=run)


# -- hostile layers (issue 14) ---------------------------------------------------------


def sparse_tar(name: str, declared: int, data: bytes = b"x" * 512) -> bytes:
    """A layer of one PAX sparse member (GNU format 0.1): `data` stored at offset 0, the
    file `declared` bytes long; what `tar --sparse --format=posix` writes."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(f"GNUSparseFile.0/{name}")
        info.size = len(data)
        info.mtime = 1_700_000_000
        info.pax_headers = {"GNU.sparse.map": f"0,{len(data)}", "GNU.sparse.name": name,
                            "GNU.sparse.size": str(declared)}
        tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def zero_file_gzip_layer(name: str, size: int) -> tuple[bytes, str]:
    """A gzip layer of one file of `size` zero bytes, built without holding the tar:
    (the compressed blob, the diff_id of the tar). 256 MiB compress to about 260 KiB."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 1_700_000_000
    header = info.tobuf(format=tarfile.PAX_FORMAT)
    pad = (-size) % tarfile.BLOCKSIZE
    digest = hashlib.sha256()
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as gz:
        def put(data: bytes) -> None:
            digest.update(data)
            gz.write(data)
        put(header)
        chunk = bytes(1 << 20)
        left = size
        while left:
            put(chunk[:min(left, len(chunk))])
            left -= min(left, len(chunk))
        put(bytes(pad + 2 * tarfile.BLOCKSIZE))
    return out.getvalue(), "sha256:" + digest.hexdigest()


def oci_files_of_blobs(blobs: list[tuple[bytes, str, bool]], name: str = "test/x:1"
                       ) -> dict[str, bytes]:
    """An OCI layout of ready-made layer blobs: (blob, diff_id, gzipped), bottom first."""
    files: dict[str, bytes] = {}

    def blob(data: bytes, media_type: str) -> dict[str, Any]:
        files[f"blobs/sha256/{sha256(data)[7:]}"] = data
        return {"mediaType": media_type, "digest": sha256(data), "size": len(data)}

    layers = [blob(data, "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if gz else ""))
              for data, _, gz in blobs]
    config = blob(json.dumps(default_config([d for _, d, _ in blobs])).encode(),
                  "application/vnd.oci.image.config.v1+json")
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": config, "layers": layers}
    desc = blob(json.dumps(manifest).encode(), manifest["mediaType"])
    desc["annotations"] = {"org.opencontainers.image.ref.name": name}
    files["index.json"] = json.dumps({"schemaVersion": 2, "manifests": [desc]}).encode()
    files["oci-layout"] = b'{"imageLayoutVersion": "1.0.0"}'
    return files


def make_victim(path: Path) -> Path:
    """A tree an escaping layer would change: files (one with a second link), a
    directory tree, a symlink, an /etc/passwd with a user no image has; and the names a
    generated layer uses, so that a path that escaped lands on something: in the root
    and in every directory below it, `a` and `passwd` are files, `b` and `etc`
    directories (two levels deep)."""
    for d in ("", "b", "etc", "b/b", "b/etc", "etc/b", "etc/etc"):
        (path / d).mkdir(parents=True, exist_ok=True)
        for name in ("a", "passwd"):
            (path / d / name).write_bytes(f"victim {d}/{name}\n".encode())
    (path / "dir/deep").mkdir(parents=True)
    (path / "file").write_bytes(b"victim file\n")
    (path / "dir/file").write_bytes(b"victim dir file\n")
    (path / "dir/deep/file").write_bytes(b"deep\n")
    os.link(path / "file", path / "dir/second-link")
    os.symlink("dir", path / "link")
    (path / "etc/passwd").write_text("intruder:x:4242:4242::/:/bin/sh\n")
    (path / "etc/group").write_text("intruders:x:4242:intruder\n")
    return path


def snapshot_tree(path: Path) -> dict[str, tuple[Any, ...]]:
    """Everything about a tree that an escape could change, transiently included: every
    path with its type, mode, owner, inode, link count, size, mtime and ctime (a link
    made and removed again still moves the ctime), xattrs, and content or link target.
    Nothing is followed."""
    found: dict[str, tuple[Any, ...]] = {}
    for here, dirs, files in os.walk(path, followlinks=False):
        for name in [".", *dirs, *files] if here == str(path) else [*dirs, *files]:
            p = os.path.normpath(os.path.join(here, name))
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                content: Any = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                content = hashlib.sha256(Path(p).read_bytes()).hexdigest()
            else:
                content = None
            xattrs = tuple(sorted(os.listxattr(p, follow_symlinks=False)))
            found[os.path.relpath(p, path)] = (
                st.st_mode, st.st_uid, st.st_gid, st.st_ino, st.st_nlink, st.st_size,
                st.st_mtime_ns, st.st_ctime_ns, xattrs, content)
    return found
