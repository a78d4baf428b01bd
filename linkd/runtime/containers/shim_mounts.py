"""What the container sees of file systems, mounted by its init (B) in the container's
mount namespace: the host's network-namespace mounts detached, the host files and
directories bound read-only, a private /tmp, /proc and /sys paths masked, and for images
the overlay root with a minimal /dev, /sys and the cgroup directories bound into it and
pivot_root (standalone like the shim, see ``shim_base``; ``rootfs.py`` beside this file
prepares the image's directories).

Every mount point inside an image root is resolved inside it (``in_root``): the
image's symlinks cannot point a mount outside the root. For runc (``rootfs_pivot``
false) only the overlay is mounted here; ``runc run`` does the rest in a mount namespace
of its own. linkd's own launcher mounts the root, /dev, /tmp and /dev/shm nodev (there
is no devices cgroup).
"""

import os

TYPE_CHECKING = False
if TYPE_CHECKING or __package__:  # imported as part of linkd (the type checker, tests)
    from typing import Any

    from . import shim_base as base
else:  # the shim: its directory is on sys.path
    import shim_base as base

# A bind mount ignores MS_RDONLY: read-only takes this remount of the bind.
_RO_REMOUNT = base.MS_BIND | base.MS_REMOUNT | base.MS_RDONLY | base.MS_NOSUID

SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")


def hide_namespace_mounts(keep: bytes = b"") -> None:
    """Detach nsfs mounts (/run/netns/*) from the container's copy of the mount table.

    The new mount namespace starts as a copy of the host's, including every `ip netns`
    bind mount.  `ip netns` makes /run/netns shared so a later `ip netns del` propagates, but
    making our copy private cuts that link: each copy would keep those network namespaces
    (and their veths) alive until this container exits.  Nothing in a container needs them.
    """
    with open("/proc/self/mountinfo", "rb") as f:
        lines = f.read().splitlines()
    points: dict[bytes, bytes] = {}  # mount ID -> mount point
    parents: dict[bytes, bytes] = {}  # mount ID -> its parent's
    children: dict[bytes, list[bytes]] = {}  # mount ID -> its children's
    nsfs: list[bytes] = []
    for line in lines:
        fields = line.split()
        points[fields[0]] = _unescape_mountinfo(fields[4])
        parents[fields[0]] = fields[1]
        children.setdefault(fields[1], []).append(fields[0])
        if fields[fields.index(b"-") + 1] == b"nsfs":
            nsfs.append(fields[0])
    # A netns directory that is a mount holding nothing but nsfs mounts (/run/netns:
    # `ip netns` binds it onto itself) is detached whole, with everything under it, in
    # one call: one umount per namespace made every start cost O(namespaces on the
    # host), and `up` of N containers O(N^2).
    kinds = set(nsfs)
    whole = {
        parent for parent in {parents[m] for m in nsfs}
        if points.get(parent, b"/").endswith(b"/netns")
        and all(c in kinds and points[c] != keep for c in children[parent])
    }
    for parent in whole:
        base.libc.umount2(points[parent], base.MNT_DETACH)
    for mount in reversed(nsfs):  # later (possibly stacked) mounts first
        if parents[mount] not in whole and points[mount] != keep:
            base.libc.umount2(points[mount], base.MNT_DETACH)


def _unescape_mountinfo(field: bytes) -> bytes:
    # The kernel writes space, tab, newline and backslash as \ooo (octal), and only those.
    head, *rest = field.split(b"\\")
    return head + b"".join(bytes([int(p[:3], 8)]) + p[3:] for p in rest)


def bind_host_paths(spec: "dict[str, Any]") -> None:
    """A host root: the spec's files, then its directories, bound read-only onto paths
    that exist on the host. Before anything hides their sources, which are host paths,
    possibly under /tmp or /proc."""
    for key, is_dir in (("bind_files", False), ("bind_dirs", True)):
        for source, target in spec.get(key, []):
            _check_bind(source, target, is_dir)
            _bind_ro(source, target)


def _check_source(source: str, is_dir: bool) -> None:
    kind = "directory" if is_dir else "file"
    if not (os.path.isdir if is_dir else os.path.isfile)(source):
        raise base.SetupError(f"bind {kind} source {source} is not a {kind}",
                              base.EXIT_SETUP_FAILED)


def _check_bind(source: str, target: str, is_dir: bool) -> None:
    # mount(2) says ENOENT for either path; say which one, and why the target must exist:
    # the root filesystem is the host's, and creating a mount point there would leak a
    # file onto the host.
    _check_source(source, is_dir)
    if not (os.path.isdir if is_dir else os.path.isfile)(target):
        why = "" if is_dir else (" (containers share the host's root filesystem, so only "
                                 "existing files can be replaced)")
        raise base.SetupError(
            f"cannot bind {source} onto {target}: {target} is not an existing "
            f"{'directory' if is_dir else 'file'} on the host{why}",
            base.EXIT_SETUP_FAILED,
        )


def private_tmp(keep_dirs: list[str]) -> None:
    """A private /tmp. Host directories under /tmp the container must still see (a stack
    file's directory there) are held open before it hides them, then bound back at the
    same path inside it; the rest of /tmp stays private."""
    kept = [(path, os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
            for path in keep_dirs]
    base.mount("tmpfs", "/tmp", "tmpfs", base.MS_NOSUID | base.MS_NODEV, "mode=1777")
    for path, fd in kept:
        os.makedirs(path, exist_ok=True)
        base.mount(f"/proc/self/fd/{fd}", path, None, base.MS_BIND | base.MS_REC, None)
        os.close(fd)


def mask_paths(masked: list[str], readonly: list[str]) -> None:
    """runc's maskedPaths and readonlyPaths, in the container's /proc and /sys: a masked
    file reads as /dev/null, a masked directory as an empty read-only tmpfs, a read-only
    path is bound onto itself read-only. Paths this kernel does not have are skipped."""
    for path in masked:
        try:
            is_dir = os.path.isdir(path) and not os.path.islink(path)
            if not os.path.lexists(path):
                continue
        except OSError:
            continue
        if is_dir:
            base.mount("tmpfs", path, "tmpfs",
                       base.MS_RDONLY | base.MS_NOSUID | base.MS_NODEV | base.MS_NOEXEC,
                       "size=0")
        else:
            base.mount("/dev/null", path, None, base.MS_BIND, None)
    for path in readonly:
        if not os.path.lexists(path):
            continue
        base.mount(path, path, None, base.MS_BIND | base.MS_REC, None)
        base.mount(None, path, None, _RO_REMOUNT | base.MS_NODEV | base.MS_NOEXEC, None)


# --- image roots ---------------------------------------------------------------------------


def in_root(root: str, path: str) -> str:
    """`path` as the container will see it, as a host path under `root`: the image's
    symlinks are followed the way the container would follow them (an absolute target
    starts again at the root, `..` stops there), so no mount point leaves the root."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    done: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        here = root + "/" + "/".join([*done, part])
        if os.path.islink(here):
            hops += 1
            if hops > 40:
                raise base.SetupError(f"too many symlinks in the image at {path}",
                                      base.EXIT_SETUP_FAILED)
            link = os.readlink(here)
            if link.startswith("/"):
                done = []
            parts = [p for p in link.split("/") if p not in ("", ".")] + parts
            continue
        done.append(part)
    return root + "".join("/" + p for p in done)


def mount_point(root: str, path: str, is_dir: bool) -> str:
    """Create the mount point for `path` inside the image root (in the container's upper
    layer) and return its host path."""
    real = in_root(root, path)
    if is_dir:
        os.makedirs(real, exist_ok=True)
    elif not os.path.isfile(real):
        os.makedirs(os.path.dirname(real), exist_ok=True)
        fd = os.open(real, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        os.close(fd)
    return real


def _bind_ro(source: str, target: str, read_only: bool = True) -> None:
    base.mount(source, target, None, base.MS_BIND, None)
    if read_only:
        base.mount(None, target, None, _RO_REMOUNT, None)


def image_root(spec: "dict[str, Any]", on_root: "Any" = None) -> None:
    """B: make the image's overlay the root. Everything bound from the host (the hosts,
    hostname and resolv.conf files, the bindings directory, device nodes, the cgroup
    directories) is mounted into the new root before pivot_root hides the host's.

    The overlay mount lives only in this mount namespace: it goes when the container's
    last process does, and nothing of it shows in the host's mount table.
    `on_root(root)` is called once the overlay is mounted at `root`, before anything
    covers it or makes it read-only (the volumes: seeded, their mount points made).
    """
    mount = base.mount
    rootfs = spec["rootfs_dir"]
    upper, work, root = (os.path.join(rootfs, d) for d in ("upper", "work", "merged"))
    for d in (upper, work, root):
        os.makedirs(d, exist_ok=True)
    lower = ":".join(spec["rootfs_lower"])
    conf = spec.get("confine") or {}
    privileged = bool(conf.get("privileged"))
    # nodev unless privileged: the own launcher has no devices cgroup, so a node container
    # root makes with mknod must not open anywhere (EACCES); the devices it may use are
    # bound in from the host's /dev, mounts that nodev here does not reach.
    runc = not spec.get("rootfs_pivot", True)  # runc has a devices cgroup instead
    nodev = 0 if privileged or runc else base.MS_NODEV
    mount("overlay", root, "overlay", nodev, f"lowerdir={lower},upperdir={upper},workdir={work}")
    if on_root is not None:
        on_root(root)
    if not spec.get("rootfs_pivot", True):
        # runc: the command (runc run) binds what its bundle lists and pivots itself.
        spec["bind_files"], spec["bind_dirs"], spec["keep_dirs"] = [], [], []
        return
    for source, target in spec.get("bind_files", []):
        _check_source(source, False)
        _bind_ro(source, mount_point(root, target, False))
    for source, target in spec.get("bind_dirs", []):
        _bind_ro(source, mount_point(root, target, True))
    dev = mount_point(root, "/dev", True)
    _image_dev(dev, privileged)
    for source, target, _permissions in conf.get("devices") or []:
        # `devices:` (their permissions are for runc's devices cgroup; here a bound node
        # is readable and writable as its mode says).
        if not os.path.exists(source):
            raise base.SetupError(f"device {source} does not exist on the host",
                                  base.EXIT_SETUP_FAILED)
        mount(source, mount_point(root, target, False), None, base.MS_BIND, None)
    sys_dir = mount_point(root, "/sys", True)
    sys_ro = 0 if privileged else base.MS_RDONLY
    mount("sysfs", sys_dir, "sysfs", sys_ro | base.MS_NOSUID | base.MS_NODEV | base.MS_NOEXEC,
          None)
    _image_cgroups(spec.get("cgroups") or [], sys_dir + "/fs/cgroup", privileged)
    for d in ("/proc", "/tmp", *(t for t, _, _ in spec.get("tmpfs") or [])):
        mount_point(root, d, True)
    if conf.get("read_only"):
        # read_only: the image's root, with every mount point made above; /tmp, /dev and
        # the bound files are mounts of their own and keep their modes.
        mount(None, root, None, base.MS_BIND | base.MS_REMOUNT | base.MS_RDONLY | nodev, None)
    # pivot_root(".", "."): the old root ends up stacked on the new one, and the lazy
    # unmount takes it away (pivot_root(2), "NOTES"); no put_old directory needed.
    os.chdir(root)
    number = SYS_PIVOT_ROOT.get(os.uname().machine)
    if number is None:
        raise base.SetupError(f"pivot_root: unknown syscall on {os.uname().machine}",
                              base.EXIT_SETUP_FAILED)
    base.check(int(base.libc.syscall(number, b".", b".")), f"pivot_root into {root}")
    base.check(int(base.libc.umount2(b".", base.MNT_DETACH)), "detaching the host's root")
    os.chdir("/")
    # Done here; what init does next for host roots would reach for host paths.
    spec["bind_files"], spec["bind_dirs"], spec["keep_dirs"] = [], [], []


def _image_cgroups(cgroups: list[str], cgroot: str, privileged: bool) -> None:
    if len(cgroups) == 1 and os.path.exists(cgroups[0] + "/cgroup.controllers"):
        # cgroup v2: one directory holds every limit; it is the container's whole
        # /sys/fs/cgroup, as under Docker with a cgroup namespace.
        _bind_ro(cgroups[0], cgroot, not privileged)
    elif cgroups:
        # cgroup v1: the container sees its own limits where v1 tools look for them.
        base.mount("tmpfs", cgroot, "tmpfs", base.MS_NOSUID | base.MS_NODEV | base.MS_NOEXEC,
                   "mode=755")
        for directory in cgroups:
            controller = directory.split("/")[4]  # /sys/fs/cgroup/<controller>/...
            os.makedirs(f"{cgroot}/{controller}")
            _bind_ro(directory, f"{cgroot}/{controller}", not privileged)


def _image_dev(dev: str, privileged: bool) -> None:
    """The container's /dev: a tmpfs (nosuid, noexec, nodev) with the standard devices
    bound from the host's, a private devpts for ptmx, shm and mqueue; privileged: the
    host's devices (its /dev, recursively), with its own pts, shm and mqueue over them."""
    mount = base.mount
    nosuid_noexec = base.MS_NOSUID | base.MS_NOEXEC
    if privileged:
        mount("/dev", dev, None, base.MS_BIND | base.MS_REC, None)
        # Not the host's terminals, shared memory or queues.
        mount("devpts", dev + "/pts", "devpts", nosuid_noexec,
              "newinstance,ptmxmode=0666,mode=0620")
        mount("tmpfs", dev + "/shm", "tmpfs", nosuid_noexec | base.MS_NODEV, "mode=1777")
        if os.path.isdir(dev + "/mqueue"):
            mount("mqueue", dev + "/mqueue", "mqueue", nosuid_noexec | base.MS_NODEV, None)
        return
    mount("tmpfs", dev, "tmpfs", nosuid_noexec | base.MS_NODEV, "mode=755,size=64k")
    for name in _DEVICES:  # a fresh tmpfs: nothing of the image's here
        os.close(os.open(f"{dev}/{name}", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
        mount(f"/dev/{name}", f"{dev}/{name}", None, base.MS_BIND, None)
    for sub in ("shm", "pts", "mqueue"):
        os.makedirs(f"{dev}/{sub}")
    mount("tmpfs", dev + "/shm", "tmpfs", nosuid_noexec | base.MS_NODEV, "mode=1777")
    mount("devpts", dev + "/pts", "devpts", nosuid_noexec, "newinstance,ptmxmode=0666,mode=0620")
    mount("mqueue", dev + "/mqueue", "mqueue", nosuid_noexec | base.MS_NODEV, None)
    for link, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"),
                         ("ptmx", "pts/ptmx")):
        os.symlink(target, f"{dev}/{link}")
