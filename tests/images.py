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
import shutil
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

    def oci_files(self, gzip_layers: bool = True, platform_arch: str | None = None
                  ) -> dict[str, bytes]:
        files: dict[str, bytes] = {}

        def blob(data: bytes, media_type: str) -> dict[str, Any]:
            files[f"blobs/sha256/{sha256(data)[7:]}"] = data
            return {"mediaType": media_type, "digest": sha256(data), "size": len(data)}

        layer_descs = []
        for layer in self.layers:
            if gzip_layers:
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
