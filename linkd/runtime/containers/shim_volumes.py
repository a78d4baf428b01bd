"""The container's `volumes:`, mounted by its init (B) in its own mount namespace
(standalone like the shim, see ``shim_base``; imported only by a container that has some).

Each bind or volume source is cloned first (open_tree(2), a detached copy of the mount
at the source, recursively), before pivot_root or the private /tmp can hide it: the
mount then moves that copy into place (move_mount(2)), never a path looked up again. (A
plain bind of an opened source would fail once pivot_root has detached the host's root,
which the source's mount belongs to.)
A volume is seeded once the image's root is mounted and before it is covered: if it is
empty, it gets a copy of what the image has at its target (Docker's rule), owners and
modes kept, symlinks copied as links, device nodes, FIFOs and sockets left out; every
entry is made relative to a directory descriptor, without following a link.
The mounts themselves go last, after /tmp and the `tmpfs` key's, by target depth, so
that one inside another lands on it.

A spec's ``mounts`` entry: [kind, host source, target, read only, seed, tmpfs data].
"""

import ctypes
import os
import stat

TYPE_CHECKING = False
if TYPE_CHECKING or __package__:
    from typing import Any

    from . import shim_base as base
else:
    import shim_base as base

_MAX_DEPTH = 128  # directories deep: an image's tree is bounded, and so is the copy


# Since Linux 5.2, one number on every architecture (the generic syscall table).
_SYS_OPEN_TREE, _SYS_MOVE_MOUNT = 428, 429
_AT_FDCWD = -100
_OPEN_TREE_CLONE, _AT_RECURSIVE = 0x1, 0x8000
_MOVE_MOUNT_F_EMPTY_PATH = 0x4


def open_sources(spec: "dict[str, Any]") -> "list[int | None]":
    """A detached clone of the mount tree at each mount's source (None for a tmpfs)."""
    fds: list[int | None] = []
    flags = _OPEN_TREE_CLONE | _AT_RECURSIVE | os.O_CLOEXEC
    for kind, source, target, *_ in spec.get("mounts") or []:
        if kind == "tmpfs":
            fds.append(None)
            continue
        fd = int(base.libc.syscall(_SYS_OPEN_TREE, _AT_FDCWD, os.fsencode(source), flags))
        if fd < 0:
            err = ctypes.get_errno()
            raise base.SetupError(f"cannot mount {source} at {target}: {os.strerror(err)}",
                                  base.EXIT_SETUP_FAILED)
        fds.append(fd)
    return fds


def is_dir(fd: "int | None") -> bool:
    return fd is None or stat.S_ISDIR(os.fstat(fd).st_mode)


def seed(spec: "dict[str, Any]", fds: "list[int | None]", image_dir: "Any") -> None:
    """Copy what the image has at each seeded volume's target into it, if it is empty.
    `image_dir(target)` is the target's host path inside the image's root."""
    for (kind, _source, target, _ro, wanted, _data), fd in zip(spec["mounts"], fds, strict=True):
        if kind != "volume" or not wanted or fd is None:
            continue
        try:
            src = os.open(image_dir(target), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue  # nothing there (or not a directory): nothing to copy
        try:
            dst = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                if not os.listdir(dst):
                    _copy_dir(src, dst, 0)
                    _same_owner_and_mode(os.fstat(src), dst)
            finally:
                os.close(dst)
        except OSError as e:
            raise base.SetupError(f"copying the image's {target} into its volume: "
                                  f"{e.strerror}", base.EXIT_SETUP_FAILED) from None
        finally:
            os.close(src)


def _copy_dir(src: int, dst: int, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise OSError(0, f"directories more than {_MAX_DEPTH} deep")
    nofollow = os.O_NOFOLLOW | os.O_CLOEXEC
    for entry in os.scandir(src):
        st = entry.stat(follow_symlinks=False)
        name = entry.name
        if stat.S_ISDIR(st.st_mode):
            os.mkdir(name, 0o700, dir_fd=dst)
            inner_src = os.open(name, os.O_RDONLY | os.O_DIRECTORY | nofollow, dir_fd=src)
            inner_dst = os.open(name, os.O_RDONLY | os.O_DIRECTORY | nofollow, dir_fd=dst)
            try:
                _copy_dir(inner_src, inner_dst, depth + 1)
                _same_owner_and_mode(st, inner_dst)
            finally:
                os.close(inner_src)
                os.close(inner_dst)
        elif stat.S_ISREG(st.st_mode):
            rfd = os.open(name, os.O_RDONLY | nofollow, dir_fd=src)
            try:
                wfd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | nofollow, 0o600,
                              dir_fd=dst)
                try:
                    while os.sendfile(wfd, rfd, None, 1 << 20):
                        pass
                    _same_owner_and_mode(st, wfd)
                finally:
                    os.close(wfd)
            finally:
                os.close(rfd)
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(name, dir_fd=src), name, dir_fd=dst)
            os.chown(name, st.st_uid, st.st_gid, dir_fd=dst, follow_symlinks=False)
        # Device nodes, FIFOs and sockets: not data, and not for a host directory.


def _same_owner_and_mode(st: "os.stat_result", fd: int) -> None:
    os.fchown(fd, st.st_uid, st.st_gid)
    os.fchmod(fd, stat.S_IMODE(st.st_mode))  # after chown, which drops setuid bits
    os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))


def mount_all(spec: "dict[str, Any]", fds: "list[int | None]", image: bool) -> None:
    """Mount every volume at its target (the container's paths: after pivot_root for an
    image, the host's own paths for a host command, which must exist there)."""
    entries: list[tuple[str, int | None, list[str], str]] = [
        (t, None, flags, data) for t, flags, data in spec.get("tmpfs") or []]
    entries += [(m[2], i, [], m[5]) for i, m in enumerate(spec.get("mounts") or [])]
    for target, index, flags, data in sorted(entries, key=lambda m: (m[0].count("/"), m[0])):
        if index is None:
            tmpfs(target, flags, data, image)
            continue
        kind, source, _, read_only, _, _ = spec["mounts"][index]
        fd = fds[index]
        if not image and not os.path.exists(target):
            raise base.SetupError(
                f"cannot mount {source or kind} at {target}: {target} does not exist on the "
                "host; this service runs a host command on the host's files, where linkd "
                "creates nothing: make it, or use an image", base.EXIT_SETUP_FAILED)
        if kind == "tmpfs":
            bits = base.MS_NOSUID | base.MS_NODEV | (base.MS_RDONLY if read_only else 0)
            base.mount("tmpfs", target, "tmpfs", bits, data or None)
            continue
        base.check(int(base.libc.syscall(_SYS_MOVE_MOUNT, fd, b"", _AT_FDCWD,
                                         os.fsencode(target), _MOVE_MOUNT_F_EMPTY_PATH)),
                   f"mounting {source} at {target}")
        if read_only:
            base.mount(None, target, None, base.MS_BIND | base.MS_REMOUNT | base.MS_RDONLY,
                       None)


_TMPFS_FLAGS = {"ro": base.MS_RDONLY, "nosuid": base.MS_NOSUID, "nodev": base.MS_NODEV,
                "noexec": base.MS_NOEXEC}


def tmpfs(target: str, flags: "list[str]", data: str, image: bool) -> None:
    """Compose's `tmpfs` key: (target, flags, data). An image's mount points were made in
    its root; a host command's must exist on the host: linkd creates nothing there."""
    if not image and not os.path.isdir(target):
        raise base.SetupError(
            f"tmpfs target {target} is not a directory on the host; this service runs "
            "a host command on the host's files, where linkd creates nothing: make the "
            "directory, or use an image", base.EXIT_SETUP_FAILED)
    bits = 0
    for flag in flags:
        bits |= _TMPFS_FLAGS.get(flag, 0)
    base.mount("tmpfs", target, "tmpfs", bits, data or None)
