"""Paths beneath a directory, resolved without ever following a symlink (issue 14).

Layer unpacking and the user lookup of an image work in trees that strangers wrote, so
they never hand the kernel a path to resolve from `/`. They hold a descriptor of the
tree's root and resolve every path below it, refusing symlinks on the way:

- `openat2(root, path, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS |
  RESOLVE_NO_XDEV)` (Linux 5.6) opens a directory in one call; a symlink anywhere in
  the path fails with ELOOP, and the kernel refuses anything that would leave the root.
- Where there is no openat2 (ENOSYS), and to create missing directories on the way, a
  walk from the root's descriptor: one `openat(dir, component, O_DIRECTORY | O_NOFOLLOW)`
  per component, so a symlink or a file on the way fails (ENOTDIR) instead of leading
  elsewhere.

Everything after that is done by name in a directory descriptor (`mkdirat`, `openat` with
O_NOFOLLOW|O_EXCL, `symlinkat`, `linkat` without AT_SYMLINK_FOLLOW, `unlinkat`), so what a
path meant cannot change between the check and the use: there is no check, only the use.
`remove_at` empties a directory the same way, bottom up, so a symlink inside a removed tree
is unlinked, never followed. Components are checked again here (no "", ".", "..", "/" or
NUL) although `linkd.core.layer_rules` has already refused entries with them.

`read_merged` reads one file as an overlayfs stack of such trees shows it (the image's
/etc/passwd for runc's user lookup): symlinks are resolved inside the image, an absolute
one from the image's root, as the container would see them, so no image path reads a file
of the host.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from linkd import files

# openat2(2): the same number on every architecture (allocated after the syscall tables
# were unified); struct open_how and the RESOLVE_* flags from linux/openat2.h.
_SYS_OPENAT2 = 437
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
_RESOLVE = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_HOPS = 40  # symlinks followed inside an image before giving up (the kernel's own)


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

use_openat2 = True  # False once the kernel says ENOSYS (tests set it to exercise the walk)


def openat2_beneath(dir_fd: int, path: str, flags: int) -> int:
    """openat2 of `path` beneath `dir_fd`, no symlink followed; OSError on failure."""
    how = _OpenHow(flags | os.O_CLOEXEC, 0, _RESOLVE)
    raw = os.fsencode(path)
    for _ in range(16):  # EAGAIN: a rename elsewhere raced the lookup; the kernel says retry
        fd = _syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(dir_fd), ctypes.c_char_p(raw),
                      ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if err not in (errno.EAGAIN, errno.EINTR):
            raise OSError(err, os.strerror(err), path)
    raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN), path)


def check_parts(parts: Sequence[str]) -> None:
    for part in parts:
        if part in ("", ".", "..") or "/" in part or "\0" in part:
            raise ValueError(f"not a path component: {part!r}")


def open_root(path: Path | str) -> int:
    """A descriptor of directory `path` itself (which must not be a symlink)."""
    return os.open(path, DIR_FLAGS)


def open_dir(root_fd: int, parts: Sequence[str], create: int | None = None) -> int:
    """A new descriptor of the directory `parts` beneath `root_fd` (a duplicate of the root
    for no parts). With `create` (a mode), missing directories are made on the way.
    ENOTDIR or ELOOP: a component is a symlink or not a directory."""
    global use_openat2
    check_parts(parts)
    if not parts:
        return os.dup(root_fd)
    if use_openat2:
        try:
            return openat2_beneath(root_fd, "/".join(parts), os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            if exc.errno == errno.ENOSYS:
                use_openat2 = False
            elif exc.errno == errno.EPERM:
                pass  # a seccomp policy that refuses openat2 (older container runtimes')
            elif exc.errno != errno.ENOENT or create is None:
                raise
    return _walk(root_fd, parts, create)


def _walk(root_fd: int, parts: Sequence[str], create: int | None) -> int:
    fd = os.dup(root_fd)
    try:
        for part in parts:
            try:
                step = os.open(part, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if create is None:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o700, dir_fd=fd)
                step = os.open(part, DIR_FLAGS, dir_fd=fd)
                os.fchmod(step, create)
            os.close(fd)
            fd = step
    except BaseException:
        os.close(fd)
        raise
    return fd


def blocker(root_fd: int, parts: Sequence[str]) -> tuple[str, str]:
    """Why `parts` cannot be opened as a directory: the first component on the way that
    is not one and what it is (`kind_of`, or "missing"), or ("", "directory") when
    every component is one."""
    fd = os.dup(root_fd)
    try:
        for n, part in enumerate(parts):
            st = lstat_at(fd, part)
            if st is None:
                return "/".join(parts[:n + 1]), "missing"
            if not stat.S_ISDIR(st.st_mode):
                return "/".join(parts[:n + 1]), kind_of(st)
            step = os.open(part, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = step
    finally:
        os.close(fd)
    return "", "directory"


# A layer's words for what is in the way, as its errors say them ("d is a file in this
# layer, not a directory"); `linkd.files` names a user's file in its own ("a regular file").
_KINDS = {stat.S_IFLNK: "symlink", stat.S_IFREG: "file", stat.S_IFDIR: "directory",
          stat.S_IFCHR: "device", stat.S_IFIFO: "fifo"}


def kind_of(st: os.stat_result) -> str:
    """What an lstat says a file is: "symlink", "file", "directory", "whiteout",
    "device", "fifo" or "special file"."""
    if _is_whiteout(st):
        return "whiteout"
    return _KINDS.get(stat.S_IFMT(st.st_mode), "special file")


def lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    """lstat of `name` in the directory, or None if there is nothing by that name."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def remove_at(dir_fd: int, name: str) -> None:
    """Remove `name` from the directory whatever it is, a directory with all below it.
    Each directory is opened O_NOFOLLOW and emptied by name, bottom up, so a symlink
    inside is removed, never followed (iterative: no recursion limit on deep trees)."""
    check_parts([name])
    st = lstat_at(dir_fd, name)
    if st is None:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dir_fd)
        return
    top = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    frames: list[tuple[int, str, list[str]]] = [(top, name, os.listdir(top))]
    try:
        while frames:
            fd, here, rest = frames[-1]
            if rest:
                child = rest.pop()
                child_st = lstat_at(fd, child)
                if child_st is None:
                    continue
                if stat.S_ISDIR(child_st.st_mode):
                    sub = os.open(child, DIR_FLAGS, dir_fd=fd)
                    frames.append((sub, child, os.listdir(sub)))
                else:
                    os.unlink(child, dir_fd=fd)
                continue
            frames.pop()
            os.close(fd)
            os.rmdir(here, dir_fd=frames[-1][0] if frames else dir_fd)
    finally:
        for fd, _, _ in frames:
            os.close(fd)


# -- reading a file of an overlayfs stack of layers ----------------------------------------

_OPAQUE = "trusted.overlay.opaque"


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)


def _opaque(fd: int) -> bool:
    try:
        return os.getxattr(fd, _OPAQUE) == b"y"
    except OSError:
        return False


def _normalized(parts: list[str]) -> list[str]:
    """Lexical '.' and '..' as the image's root sees them: '..' at the root stays there."""
    out: list[str] = []
    for part in parts:
        if part in ("", "."):
            continue
        if part == "..":
            if out:
                out.pop()
            continue
        out.append(part)
    return out


def read_merged(layers: Sequence[Path], path: str, limit: int) -> bytes | None:
    """The content of `path` (at most `limit` bytes) as the overlayfs stack of `layers`
    (top first) shows it, or None if it is missing, hidden by a whiteout or an opaque
    directory, not a regular file, or behind more than 40 symlinks. Symlinks resolve
    inside the image (absolute ones from its root); every lookup is by name in a
    directory descriptor, O_NOFOLLOW, so nothing outside the layers is read."""
    roots: list[int] = []
    try:
        for layer in layers:
            try:
                roots.append(open_root(layer))
            except FileNotFoundError:
                continue
        todo = _normalized(path.split("/"))
        for _ in range(_MAX_HOPS + 1):
            found = _lookup(roots, todo, limit)
            if not isinstance(found, list):
                return found
            todo = found
        return None
    finally:
        for fd in roots:
            os.close(fd)


def _lookup(roots: list[int], parts: list[str], limit: int) -> bytes | list[str] | None:
    """One pass down the merged tree: the file's content, None, or the path to try next
    when a component is a symlink (its target put in its place)."""
    dirs = [os.dup(fd) for fd in roots]  # where the current directory exists, top first
    try:
        for n, part in enumerate(parts):
            last = n == len(parts) - 1
            below: list[int] = []
            for i, fd in enumerate(dirs):
                st = lstat_at(fd, part)
                if st is None:
                    continue
                if _is_whiteout(st):
                    return None
                if stat.S_ISLNK(st.st_mode):
                    target = os.readlink(part, dir_fd=fd)
                    base = [] if target.startswith("/") else parts[:n]
                    return _normalized([*base, *target.split("/"), *parts[n + 1:]])
                if stat.S_ISREG(st.st_mode):
                    return _read(fd, part, limit) if last else None
                if not stat.S_ISDIR(st.st_mode) or last:
                    return None
                below = _merged_dir(dirs[i:], part)
                break
            for fd in dirs:
                os.close(fd)
            dirs = below
            if not dirs:
                return None
        return None  # the path names a directory (or the root)
    finally:
        for fd in dirs:
            os.close(fd)


def _merged_dir(dirs: list[int], part: str) -> list[int]:
    """The layers in which directory `part` of `dirs` (top first, the first has it as a
    directory) continues down: until a layer hides the rest (opaque, whiteout, not a
    directory)."""
    out: list[int] = []
    try:
        for fd in dirs:
            st = lstat_at(fd, part)
            if st is None:
                continue
            if not stat.S_ISDIR(st.st_mode):
                break
            sub = os.open(part, DIR_FLAGS, dir_fd=fd)
            out.append(sub)
            if _opaque(sub):
                break
    except BaseException:
        for fd in out:
            os.close(fd)
        raise
    return out


def _read(dir_fd: int, name: str, limit: int) -> bytes | None:
    # O_NONBLOCK: a FIFO swapped in would otherwise block the open; the fstat below
    # refuses anything but a regular file.
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
                 | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = files.read_bounded(fd, limit)
        if len(data) > limit:
            raise OSError(errno.EFBIG, f"larger than {limit} bytes", name)
        return data
    finally:
        os.close(fd)
