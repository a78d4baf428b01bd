"""Layer tars, hashed and unpacked: the I/O half of the layer rules in `linkd.image_format`.

`unpack_layer` reads a layer blob once: the compressed bytes are hashed against the
blob's descriptor, decompressed (gzip, sniffed by its magic; zstd is refused: no zstd
library is installed), hashed again against the config's diff_id, and unpacked entry by
entry by `Unpacker` into a new directory that holds only what it wrote. Every entry goes
through `linkd.image_format.classify_entry`; nothing follows a symlink (an entry beneath a
symlink of its own layer is refused, files are created with O_NOFOLLOW|O_EXCL, hard links
only point at files written earlier in the layer), so nothing lands outside `dest`.
Whiteouts are written as overlayfs writes them (a character device 0/0; an opaque
directory carries trusted.overlay.opaque=y), owners and modes as the tar says; of the
extended attributes only security.capability is kept (never trusted.*).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import shutil
import stat
import tarfile
from pathlib import Path
from typing import IO, Any
from zlib import error as zlib_error

from linkd import image_format as fmt
from linkd.errors import ImageError

_CHUNK = 1 << 20
_ALLOWED_XATTRS = ("security.capability",)  # file capabilities (ping); never trusted.*


class Hashing(io.RawIOBase):
    """Read through, hashing and counting what passes."""

    def __init__(self, inner: IO[bytes]) -> None:
        self.inner = inner
        self.hash = hashlib.sha256()
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.inner.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.hash.update(data)
        self.count += n
        return n

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass

    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


def check_digest(label: str, entry: str, got: str, want: str,
                 rule: str = "digest mismatch") -> None:
    if got != want:
        raise ImageError(label, entry, rule, f"content is {got}, expected {want}")


_KINDS = {
    tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hardlink",
    tarfile.CHRTYPE: "chr", tarfile.BLKTYPE: "blk", tarfile.FIFOTYPE: "fifo",
}


def _kind(m: tarfile.TarInfo) -> str:
    if m.isreg():
        return "file"
    return _KINDS.get(m.type, f"type {m.type!r}")


class Unpacker:
    """Writes one layer's entries under `dest`, which holds only what it wrote."""

    def __init__(self, label: str, layer: str, dest: Path) -> None:
        self.label = label
        self.layer = layer
        self.dest = dest
        self.symlinks: set[str] = set()
        self.files: set[str] = set()

    def _fail(self, name: str, rule: str, detail: str) -> ImageError:
        return ImageError(self.label, f"layer {self.layer}: {name}", rule, detail)

    def _prepare(self, name: str, path: str) -> Path:
        parts = path.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in self.symlinks:
                raise self._fail(name, "entry beneath a symlink",
                                 f"{'/'.join(parts[:i])} is a symlink in this layer")
        target = self.dest / path
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def _clear(self, target: Path, path: str, keep_dir: bool) -> None:
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return
            shutil.rmtree(target)
        else:
            target.unlink()
        self.symlinks.discard(path)
        self.files.discard(path)

    def add(self, m: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        e = fmt.classify_entry(
            self.label, self.layer, m.name, _kind(m), m.linkname, m.devmajor, m.devminor
        )
        if e.kind == "skip":
            return
        target = self._prepare(m.name, e.path)
        if e.kind == "opaque":
            if e.path in self.symlinks:
                raise self._fail(m.name, "entry beneath a symlink",
                                 f"{e.path} is a symlink in this layer")
            with contextlib.suppress(FileExistsError):
                os.mkdir(target)
            os.setxattr(target, "trusted.overlay.opaque", b"y", follow_symlinks=False)
            return
        self._clear(target, e.path, keep_dir=e.kind == "dir")
        if e.kind == "whiteout":
            os.mknod(target, stat.S_IFCHR | 0o000, os.makedev(0, 0))
            return
        if e.kind == "dir":
            target.mkdir(exist_ok=True)
        elif e.kind == "file":
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as out:
                source = tar.extractfile(m)
                assert source is not None
                shutil.copyfileobj(source, out, _CHUNK)
            self.files.add(e.path)
        elif e.kind == "symlink":
            os.symlink(e.target, target)
            self.symlinks.add(e.path)
        elif e.kind == "hardlink":
            if e.target not in self.files:
                raise self._fail(m.name, "hard link target",
                                 f"{e.target!r} is not a file earlier in this layer")
            os.link(self.dest / e.target, target, follow_symlinks=False)
            self.files.add(e.path)
            return  # shares the target's inode, owner and mode
        elif e.kind == "fifo":
            os.mkfifo(target, 0o600)
        os.lchown(target, m.uid, m.gid)
        if e.kind != "symlink":
            os.chmod(target, m.mode & 0o7777)
            for key, value in m.pax_headers.items():
                attr = key.removeprefix("SCHILY.xattr.")
                if attr in _ALLOWED_XATTRS:
                    os.setxattr(target, attr, value.encode("utf-8", "surrogateescape"))
        if e.kind != "dir":
            os.utime(target, (m.mtime, m.mtime), follow_symlinks=False)


def _decompressed(label: str, entry: str, raw: Hashing) -> IO[bytes]:
    buffered = io.BufferedReader(raw, _CHUNK)
    magic = buffered.peek(4)[:4]
    if magic[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=buffered, mode="rb")  # type: ignore[return-value]
    if magic == b"\x28\xb5\x2f\xfd":
        raise ImageError(label, entry, "compression",
                         "zstd layers need a zstd library, and none is installed")
    return buffered


def unpack_layer(label: str, layer: str, stream: IO[bytes], *, blob_digest: str | None,
                 size: int | None, diff_id: str, dest: Path | None) -> int:
    """Hash one layer read from `stream` (the blob against `blob_digest` and `size` when
    known, the tar against `diff_id`) and, if `dest` is given, unpack it into that new
    directory. Returns the size of the uncompressed tar. `label` names the image and
    `layer` the layer in errors."""
    entry = f"layer {layer}"
    raw = Hashing(stream)
    try:
        plain = Hashing(_decompressed(label, entry, raw))
        if dest is not None:
            dest.mkdir()
            unpacker = Unpacker(label, layer, dest)
            with tarfile.open(fileobj=plain, mode="r|") as tar:
                for m in tar:
                    unpacker.add(m, tar)
        plain.drain()
        io.BufferedReader(raw).read()  # the rest of the blob, for its digest
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib_error) as exc:
        raise ImageError(label, entry, "layer format", f"not a readable tar: {exc}") from None
    except OSError as exc:
        raise ImageError(label, entry, "unpack", f"{exc.strerror or exc}") from None
    if blob_digest is not None:
        check_digest(label, entry, raw.digest(), blob_digest)
        if size is not None and raw.count != size:
            raise ImageError(label, entry, "size mismatch",
                             f"{raw.count} bytes, the descriptor says {size}")
    check_digest(label, entry, plain.digest(), diff_id, "diff_id mismatch")
    return plain.count
