"""Layer blobs, verified, then unpacked: the I/O half of `core.layer_rules`.

A layer goes through two steps, and only bytes that passed the first reach the second:

1. `verify_layer` reads the blob once: its bytes are hashed and counted against the
   blob's descriptor (digest and size), decompressed (gzip or zstd, sniffed by their magic;
   zstd through the `zstd` command, `linkd.runtime.images.zstd`) and hashed again against
   the config's diff_id.
   For a layer the store does not have yet, the plain tar is written as it passes into an
   unlinked temporary file of the store (O_TMPFILE in `<store>/tmp/`, 0700). Limits are
   counted on the way (the image's size, the layer's expansion over its blob), so a bomb
   stops at the limit, not at the end of the disk.
2. `unpack_layer` then reads that verified tar back and unpacks it into a new directory
   of the load's private work directory (`<store>/tmp/load-*/N`); `linkd.runtime.images.image_store`
   renames the layers into `layers/` once every layer of the image has passed both steps.

Why this order: the tar parser and the unpacker only ever see bytes that match the
digests the image names, so a refused load (a wrong diff_id, a wrong size) has created no
file at all, and the bytes cannot change between the check and the use (the copy is ours,
in a directory only root can reach). Only the decompressor sees unverified bytes, and it
writes nowhere but the temporary file, bounded by the limits. Keeping the plain tar rather
than the compressed blob costs its uncompressed size on disk for a moment, but decompresses
once instead of twice.

Unpacking cannot leave its directory, by construction rather than by bookkeeping
(`linkd.runtime.images.beneath`): every entry's parent is opened beneath the layer's root with
`openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` (or an O_NOFOLLOW walk), and the entry is
created by name in that descriptor; a hard link's target is resolved the same way and
linked with `linkat` (no AT_SYMLINK_FOLLOW), and must be a regular file of this layer; an
entry that replaces another (a file by a directory, a directory by a symlink, ...) removes
it by name, emptying a directory bottom up without following anything. An entry beneath
a symlink or a file of its own layer is refused. So whatever order the entries come in,
nothing is created, changed, linked or removed outside the layer's directory.

Whiteouts are written as overlayfs writes them (a character device 0/0; an opaque
directory carries trusted.overlay.opaque=y), owners and modes as the tar says; of the
extended attributes only security.capability is kept (never trusted.*). The tar parser
(Python's tarfile) is held to bounded memory by `BoundedTarInfo`: extended headers over
`HEADER_MAX`, sparse maps over `SPARSE_REGIONS_MAX` regions, old GNU sparse members and
members that would send it backwards are refused.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import io
import os
import shutil
import stat
import tarfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, cast
from zlib import error as zlib_error

from linkd.core import layer_rules
from linkd.errors import ImageError
from linkd.runtime.images import beneath, zstd

_CHUNK = 1 << 20
_ALLOWED_XATTRS = ("security.capability",)  # file capabilities (ping); never trusted.*
_XATTR_PREFIX = "SCHILY.xattr."
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class Hashing(io.RawIOBase):
    """Read through, hashing and counting what passes; never more than `limit` + 1
    bytes (so a blob longer than its descriptor says is read only that far)."""

    def __init__(self, inner: IO[bytes], limit: int | None = None, *,
                 hashed: bool = True) -> None:
        self.inner = inner
        self.hash = hashlib.sha256() if hashed else None  # None: counted only
        self.count = 0
        self.limit = limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        want = len(buffer)
        if self.limit is not None:
            want = min(want, self.limit + 1 - self.count)
        data = self.inner.read(want) if want > 0 else b""
        n = len(data)
        buffer[:n] = data
        if self.hash is not None:
            self.hash.update(data)
        self.count += n
        return n

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass

    def digest(self) -> str:
        assert self.hash is not None, "a stream that was only counted has no digest"
        return "sha256:" + self.hash.hexdigest()


def check_digest(label: str, entry: str, got: str, want: str,
                 rule: str = "digest mismatch") -> None:
    if got != want:
        raise ImageError(label, entry, rule, f"content is {got}, expected {want}")


class Budget:
    """What one load has used of its `layer_rules.Limits`, over all its layers. A pull
    unpacks its layers on several threads at once: each count is added under a lock, so
    none is lost and the image's limits hold whatever order the layers come in."""

    def __init__(self, label: str, limits: layer_rules.Limits) -> None:
        self.label = label
        self.limits = limits
        self.size = 0  # bytes of the layer tars
        self.files = 0  # bytes the unpacked files declare
        self.entries = 0
        self.sparse = 0
        self._lock = threading.Lock()

    def add(self, counter: str, value: int) -> int:
        """Count `value` more on `counter`; what it holds now."""
        with self._lock:
            total: int = getattr(self, counter) + value
            setattr(self, counter, total)
            return total

    def over(self, entry: str, name: str, what: str, value: int) -> ImageError:
        return layer_rules.over_limit(self.label, entry, name, what, value, self.limits)

    def expansion(self, blob_size: int) -> int:
        """How far a layer of a blob of `blob_size` bytes may expand."""
        return max(layer_rules.RATIO_FLOOR, self.limits.ratio * blob_size)


# -- step 1: verify --------------------------------------------------------------------


def _decompressed(label: str, entry: str, raw: Hashing) -> IO[bytes]:
    buffered = io.BufferedReader(raw, _CHUNK)
    magic = buffered.peek(4)[:4]
    if magic[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=buffered, mode="rb")  # type: ignore[return-value]
    if magic == zstd.MAGIC:
        try:
            return zstd.ZstdReader(buffered)  # type: ignore[return-value]
        except zstd.ZstdMissing as exc:
            raise ImageError(label, entry, "compression", str(exc)) from None
    return buffered


def verify_layer(budget: Budget, layer: str, stream: IO[bytes], *, blob_digest: str | None,
                 size: int, diff_id: str, keep: IO[bytes] | None) -> int:
    """Hash one layer read from `stream`: the blob against `blob_digest` (when it has
    one: a `docker save` layer.tar is named by no digest) and `size`, the tar against
    `diff_id`; write the tar to `keep` if given. Returns the tar's size."""
    label = budget.label
    entry = f"layer {layer}"
    if size > budget.limits.size:
        raise budget.over(entry, "size", "the layer's blob is", size)
    # A blob named by no digest (a docker-save layer.tar, a pull's blob checked as it
    # came) is counted, not hashed: its diff_id says the rest.
    raw = Hashing(stream, limit=size, hashed=blob_digest is not None)
    cap = budget.expansion(size)
    decompressed: IO[bytes] | None = None
    try:
        decompressed = _decompressed(label, entry, raw)
        plain = Hashing(decompressed)
        while chunk := plain.read(_CHUNK):
            expanded = budget.add("size", len(chunk))
            if expanded > budget.limits.size:
                raise budget.over(entry, "size", "the image's layers expand to at least",
                                  expanded)
            if plain.count > cap:
                raise budget.over(entry, "ratio", "the layer expands to at least "
                                  f"{plain.count:,} bytes from a blob of {size:,}, or",
                                  -(-plain.count // max(size, 1)))
            if keep is not None:
                keep.write(chunk)
        raw.drain()  # the rest of the blob, for its digest
    except (EOFError, gzip.BadGzipFile, zlib_error, zstd.ZstdError) as exc:
        if blob_digest is not None:  # other bytes than the blob's: say that, not this
            with contextlib.suppress(OSError, ValueError):
                raw.drain()
            if raw.count == size:
                check_digest(label, entry, raw.digest(), blob_digest)
        raise ImageError(label, entry, "layer format", f"not readable: {exc}") from None
    except OSError as exc:
        raise ImageError(label, entry, "I/O", f"{exc.strerror or exc}") from None
    finally:
        if decompressed is not None:
            decompressed.close()  # a zstd process ends here, however the layer ended
    if raw.count != size:
        raise ImageError(label, entry, "size mismatch",
                         f"{'more than ' if raw.count > size else ''}{raw.count} bytes, "
                         f"the descriptor says {size}")
    if blob_digest is not None:
        check_digest(label, entry, raw.digest(), blob_digest)
    check_digest(label, entry, plain.digest(), diff_id, "diff_id mismatch")
    return plain.count


# -- the tar parser, bounded -------------------------------------------------------------


class TarRefused(Exception):
    """A tar the bounded parser will not read further (`rule`, `detail` for the error)."""

    def __init__(self, rule: str, detail: str) -> None:
        super().__init__(detail)
        self.rule = rule
        self.detail = detail


_EXTENDED = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE,
             tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)


class BoundedTarInfo(tarfile.TarInfo):
    """tarfile's member header, held to bounded memory and forward progress: tarfile
    reads an extended header whole and a sparse map region by region, however large the
    archive says they are, and follows a negative size backwards."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _EXTENDED and self.size > layer_rules.HEADER_MAX:
            raise TarRefused("tar header", f"an extended header of {self.size:,} bytes "
                           f"(at most {layer_rules.HEADER_MAX:,})")
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise TarRefused("tar header", "old GNU sparse members (type S) are not "
                           "supported; PAX sparse members are")
        if self.size < 0:
            raise TarRefused("tar header", "a negative size")
        member: tarfile.TarInfo = super()._proc_member(tarfile_)  # type: ignore[misc]
        if member.size < 0 or tarfile_.offset <= self.offset:
            raise TarRefused("tar header", "a member's size sends the archive backwards")
        return member

    def _proc_gnusparse_10(self, next_: tarfile.TarInfo, pax_headers: Mapping[str, str],
                           tarfile_: tarfile.TarFile) -> None:
        # The map of a PAX 1.0 sparse member is in its data: read its count first.
        fileobj = cast(IO[bytes], tarfile_.fileobj)
        start = fileobj.tell()
        count = fileobj.read(tarfile.BLOCKSIZE).split(b"\n", 1)[0]
        if not count.isdigit() or int(count) > layer_rules.SPARSE_REGIONS_MAX:
            raise TarRefused("tar header", f"a sparse map of {count[:20]!r} regions "
                           f"(at most {layer_rules.SPARSE_REGIONS_MAX:,})")
        fileobj.seek(start)
        super()._proc_gnusparse_10(next_, pax_headers, tarfile_)  # type: ignore[misc]


def open_tar(fileobj: IO[bytes]) -> tarfile.TarFile:
    """A plain tar for reading with the bounded parser."""
    return tarfile.open(fileobj=fileobj, mode="r:", tarinfo=BoundedTarInfo)


def next_member(tar: tarfile.TarFile) -> tarfile.TarInfo | None:
    """The next member, without tarfile keeping every member read so far in memory."""
    member = tar.next()
    cast(list[tarfile.TarInfo], vars(tar)["members"]).clear()
    return member


# -- step 2: unpack ------------------------------------------------------------------------


_KINDS = {
    tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hardlink",
    tarfile.CHRTYPE: "chr", tarfile.BLKTYPE: "blk", tarfile.FIFOTYPE: "fifo",
}


def _kind(m: tarfile.TarInfo) -> str:
    if m.isreg():
        return "file"
    return _KINDS.get(m.type, f"type {m.type!r}")


def _parts(path: str) -> list[str]:
    return path.split("/") if path else []


class Unpacker:
    """Writes one layer's entries beneath the directory `root` (a descriptor)."""

    def __init__(self, budget: Budget, layer: str, root: int, blob_size: int) -> None:
        self.budget = budget
        self.label = budget.label
        self.layer = layer
        self.root = root
        self.blob_size = blob_size
        self.cap = budget.expansion(blob_size)  # what this layer's files may declare
        self.declared = 0

    def _fail(self, name: str, rule: str, detail: str) -> ImageError:
        return ImageError(self.label, f"layer {self.layer}: {name}", rule, detail)

    def _count(self, m: tarfile.TarInfo) -> None:
        b = self.budget
        entry = f"layer {self.layer}: {m.name}"
        entries = b.add("entries", 1)
        if entries > b.limits.entries:
            raise b.over(entry, "entries", "the image's layers hold at least", entries)
        if not m.isreg():
            return
        files = b.add("files", m.size)
        self.declared += m.size
        if files > b.limits.size:
            raise b.over(entry, "size", "the image's files declare at least", files)
        if m.sparse is not None:
            sparse = b.add("sparse", m.size)
            if sparse > b.limits.sparse:
                raise b.over(entry, "sparse", "sparse members declare at least", sparse)
        if self.declared > self.cap:
            raise b.over(entry, "ratio", "the layer's files declare at least "
                         f"{self.declared:,} bytes from a blob of {self.blob_size:,}, or",
                         -(-self.declared // max(self.blob_size, 1)))

    def _dir(self, name: str, parts: list[str], what: str = "entry") -> int:
        """A descriptor of directory `parts`, made if missing; refused if a symlink or
        a non-directory of this layer is on the way."""
        try:
            return beneath.open_dir(self.root, parts, create=0o755)
        except OSError as exc:
            if exc.errno not in (errno.ENOTDIR, errno.ELOOP, errno.EXDEV):
                raise
            where, kind = beneath.blocker(self.root, parts)
        if kind == "symlink":
            raise self._fail(name, "entry beneath a symlink",
                             f"{where} is a symlink in this layer; the {what} cannot go "
                             "through it") from None
        raise self._fail(name, "entry beneath a non-directory",
                         f"{where} is a {kind} in this layer, not a directory") from None

    def add(self, m: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        self._count(m)
        e = layer_rules.classify_entry(self.label, self.layer, m.name, _kind(m), m.linkname,
                                       m.devmajor, m.devminor, self.budget.limits)
        if e.kind == "skip":
            return
        parts = _parts(e.path)
        if e.kind == "opaque":
            fd = self._dir(m.name, parts, "opaque marker")
            try:
                os.setxattr(fd, "trusted.overlay.opaque", b"y")
            finally:
                os.close(fd)
            return
        parent = self._dir(m.name, parts[:-1])
        try:
            self._add(m, tar, e, parent, parts[-1])
        finally:
            os.close(parent)

    def _add(self, m: tarfile.TarInfo, tar: tarfile.TarFile, e: layer_rules.LayerEntry,
             parent: int, name: str) -> None:
        existing = beneath.lstat_at(parent, name)
        keep = existing is not None and e.kind == "dir" and stat.S_ISDIR(existing.st_mode)
        if existing is not None and not keep:
            beneath.remove_at(parent, name)  # by name, nothing followed
        if e.kind == "whiteout":
            os.mknod(name, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=parent)
        elif e.kind == "dir":
            if not keep:
                os.mkdir(name, 0o700, dir_fd=parent)
            self._with_fd(os.open(name, beneath.DIR_FLAGS, dir_fd=parent), m, times=False)
        elif e.kind == "file":
            fd = os.open(name, _FILE_FLAGS, 0o600, dir_fd=parent)
            try:
                source = tar.extractfile(m)
                assert source is not None
                with open(fd, "wb", closefd=False) as out:
                    shutil.copyfileobj(source, out, _CHUNK)
            except BaseException:
                os.close(fd)
                raise
            self._with_fd(fd, m, times=True)
        elif e.kind == "symlink":
            os.symlink(e.target, name, dir_fd=parent)
            os.chown(name, m.uid, m.gid, dir_fd=parent, follow_symlinks=False)
            os.utime(name, (m.mtime, m.mtime), dir_fd=parent, follow_symlinks=False)
        elif e.kind == "hardlink":
            self._link(m.name, e.target, parent, name)
        elif e.kind == "fifo":
            os.mkfifo(name, 0o600, dir_fd=parent)
            # O_NONBLOCK: opening a FIFO for reading returns at once.
            fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC,
                         dir_fd=parent)
            self._with_fd(fd, m, times=True)

    def _link(self, entry: str, target: str, parent: int, name: str) -> None:
        """A hard link to `target`, a regular file of this layer, found beneath the
        root without following a symlink; the link shares its inode, owner and mode."""
        *dirs, base = _parts(target)
        try:
            where = beneath.open_dir(self.root, dirs)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EXDEV):
                raise
            raise self._fail(entry, "hard link target",
                             f"{target!r} is not a file of this layer (a directory on the "
                             "way is missing, a symlink or not a directory)") from None
        try:
            st = beneath.lstat_at(where, base)
            if st is None or not stat.S_ISREG(st.st_mode):
                what = "missing" if st is None else f"a {beneath.kind_of(st)}"
                raise self._fail(entry, "hard link target",
                                 f"{target!r} is {what} in this layer, not a file")
            os.link(base, name, src_dir_fd=where, dst_dir_fd=parent, follow_symlinks=False)
        finally:
            os.close(where)

    def _with_fd(self, fd: int, m: tarfile.TarInfo, *, times: bool) -> None:
        """Owner, mode (after the owner: chown clears set-id bits), allowed xattrs and
        times, all through the entry's own descriptor; closes it."""
        try:
            os.fchown(fd, m.uid, m.gid)
            os.fchmod(fd, m.mode & 0o7777)
            for key, value in m.pax_headers.items():
                if key.startswith(_XATTR_PREFIX) and (
                        key[len(_XATTR_PREFIX):] in _ALLOWED_XATTRS):
                    os.setxattr(fd, key[len(_XATTR_PREFIX):],
                                value.encode("utf-8", "surrogateescape"))
            if times:
                os.utime(fd, (m.mtime, m.mtime))
        finally:
            os.close(fd)


def unpack_layer(budget: Budget, layer: str, tar_file: IO[bytes], dest: Path,
                 blob_size: int) -> None:
    """Unpack the verified tar `tar_file` into the new directory `dest`. `blob_size`
    (the layer's blob) bounds what its files may declare."""
    entry = f"layer {layer}"
    label = budget.label
    os.mkdir(dest, 0o700)
    root = beneath.open_root(dest)
    name = ""
    try:
        os.fchmod(root, 0o755)  # the image's /, when a layer is mounted without an upper
        unpacker = Unpacker(budget, layer, root, blob_size)
        with open_tar(tar_file) as tar:
            while True:
                name = ""
                m = next_member(tar)
                if m is None:
                    break
                name = m.name
                unpacker.add(m, tar)
    except TarRefused as exc:
        raise ImageError(label, entry, exc.rule, exc.detail) from None
    except (tarfile.TarError, EOFError, ValueError, OverflowError) as exc:
        where = f"{entry}: {name}" if name else entry
        raise ImageError(label, where, "layer format", f"not a readable tar: {exc}") from None
    except OSError as exc:
        where = f"{entry}: {name}" if name else entry
        raise ImageError(label, where, "unpack", f"{exc.strerror or exc}") from None
    finally:
        os.close(root)
