"""The last steps before a container's command runs, shared by the container's own command
(C), `linkd exec`'s child and health probes: confinement (the capability bounding set,
capabilities kept across the user switch, no_new_privs, the seccomp filter; ``confine.py``
beside this file writes what to apply), the user and its groups, the working directory,
default signal dispositions, and execve with the PATH searched in the container
(standalone like the shim, see ``shim_base``).

The order is runc's: the bounding set first (that needs CAP_SETPCAP, which root still
has); without no_new_privs the seccomp filter next, while CAP_SYS_ADMIN still allows
loading it; then the user, with PR_SET_KEEPCAPS so that a switch away from root keeps
the permitted set until capset sets effective = permitted = the container's set and
inheritable and ambient empty. exec then gives root the bounding set and any other user
nothing (no file capabilities, no ambient ones), as under Docker. With no_new_privs the
filter is loaded last, right before execve, so it only needs to allow execve. The BPF is
compiled by libseccomp in the runtime, so nothing here imports more than ctypes.
"""

import ctypes
import os

TYPE_CHECKING = False
if TYPE_CHECKING or __package__:  # imported as part of linkd (the type checker, tests)
    import signal
    from typing import Any, NoReturn

    from . import shim_base as base
else:  # the shim: its directory is on sys.path (and no `signal` enums: see shim_base)
    import _signal as signal

    import shim_base as base


def exec_command(spec: "dict[str, Any]", alive_fd: int | None = None) -> "NoReturn":
    """Apply confinement, user and working directory, then become the command (C, or
    exec's child, or a health probe)."""
    conf = spec.get("confine") if spec.get("confine_command", True) else None
    if spec.get("rlimits"):
        _set_rlimits(spec["rlimits"])  # while root and capable: raising a hard limit needs it
    if conf is not None:
        _confine_before_user(conf)
    # An image's users come from its files (`lookup_user`): the container's own spec says
    # so by its rootfs_dir, an exec spec (`linkd exec`, health probes) by image_root.
    files_only = bool(spec.get("rootfs_dir") or spec.get("image_root"))
    _become(spec.get("user"), spec.get("working_dir"), files_only, spec.get("group_add") or [])
    if conf is not None:
        _confine_after_user(conf)
    if alive_fd is not None:
        # After _become: changing uid/gid clears PR_SET_PDEATHSIG.
        base.die_with_parent(alive_fd, wait_for_go=True)
    env = {str(k): str(v) for k, v in spec.get("env", [])}
    _default_signals()
    if conf is not None:
        _confine_last(conf)
    _execvpe([str(a) for a in spec["argv"]], env)


def _set_rlimits(rlimits: "list[list[Any]]") -> None:
    """`ulimits`: (Docker's name, soft, hard), -1 unlimited. `resource` only here: most
    containers set none, and the shim's start pays for every import."""
    import resource

    for name, soft, hard in rlimits:
        which = getattr(resource, f"RLIMIT_{str(name).upper()}")
        try:
            resource.setrlimit(which, (int(soft), int(hard)))  # -1 is RLIM_INFINITY
        except (ValueError, OSError) as exc:
            raise base.SetupError(f"ulimit {name} ({soft}:{hard}): {exc}",
                                  base.EXIT_SETUP_FAILED) from None


def lookup_user(spec: str, files_only: bool = False) -> tuple[int, int, list[int]]:
    """Resolve "uid", "uid:gid", "name" or "name:group" to (uid, gid, supplementary groups).

    As Docker does: a uid without a passwd entry runs with gid 0 and no extra groups; a named
    or known user gets its primary group and the groups /etc/group lists it in.

    `files_only` (an image's root): /etc/passwd and /etc/group are read as files, never
    through glibc's NSS, which follows the image's nsswitch.conf and would load an
    image's libnss_*.so into this process before its confinement is complete.
    """
    # Imported here: most containers name no user, and each import is start-up time.
    import grp
    import pwd

    user_part, _, group_part = spec.partition(":")
    users, groups_db = (_files_db() if files_only else (None, None))
    entry: tuple[str, int, int] | None
    try:
        if users is not None:
            entry = next(u for u in users if (str(u[1]) if user_part.isdigit() else u[0])
                         == user_part)
        else:
            found = (pwd.getpwuid(int(user_part)) if user_part.isdigit()
                     else pwd.getpwnam(user_part))
            entry = (found.pw_name, found.pw_uid, found.pw_gid)
    except (KeyError, StopIteration):
        if not user_part.isdigit():
            raise base.SetupError(
                f"user {user_part!r} not found in /etc/passwd", base.EXIT_NOT_FOUND
            ) from None
        entry = None
    uid = entry[1] if entry else int(user_part)
    gid = entry[2] if entry else 0
    if group_part:
        if group_part.isdigit():
            gid = int(group_part)
        else:
            try:
                gid = (next(g[1] for g in groups_db if g[0] == group_part)
                       if groups_db is not None else grp.getgrnam(group_part).gr_gid)
            except (KeyError, StopIteration):
                raise base.SetupError(
                    f"group {group_part!r} not found in /etc/group", base.EXIT_NOT_FOUND
                ) from None
    if entry is None:
        return uid, gid, [gid]
    if groups_db is not None:
        extra = [g[1] for g in groups_db if entry[0] in g[2] and g[1] != gid]
        return uid, gid, [gid, *extra]
    return uid, gid, os.getgrouplist(entry[0], gid)


def _gids(names: "list[str] | tuple[str, ...]", files_only: bool) -> "list[int]":
    """`group_add`: gids as they are, names from /etc/group (the image's, as files)."""
    import grp

    groups_db = _files_db()[1] if files_only else None
    found = []
    for name in names:
        if name.isdigit():
            found.append(int(name))
            continue
        try:
            found.append(next(g[1] for g in groups_db if g[0] == name)
                         if groups_db is not None else grp.getgrnam(name).gr_gid)
        except (KeyError, StopIteration):
            raise base.SetupError(f"group_add: group {name!r} not found in /etc/group",
                                  base.EXIT_NOT_FOUND) from None
    return found


def _files_db() -> tuple[list[tuple[str, int, int]], list[tuple[str, int, list[str]]]]:
    """(name, uid, gid) of /etc/passwd and (name, gid, members) of /etc/group, as files."""
    def lines(path: str) -> list[list[str]]:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read(1 << 20)
        except OSError:
            return []
        return [line.split(":") for line in text.splitlines() if line and line[0] != "#"]

    users = [(p[0], int(p[2]), int(p[3])) for p in lines("/etc/passwd")
             if len(p) >= 4 and p[2].isdigit() and p[3].isdigit()]
    groups = [(p[0], int(p[2]), [m for m in p[3].split(",") if m])
              for p in lines("/etc/group") if len(p) >= 4 and p[2].isdigit()]
    return users, groups


def _become(user: str | None, working_dir: str | None, files_only: bool = False,
            group_add: "list[str] | tuple[str, ...]" = ()) -> None:
    if user is not None or group_add:
        uid, gid, groups = lookup_user(user, files_only) if user is not None else (0, 0, [0])
        groups = [*groups, *(g for g in _gids(group_add, files_only) if g not in groups)]
        try:
            # Groups first: once the uid is not 0 they can no longer be changed.
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
        except OSError as e:
            raise base.SetupError(
                f"switching to user {user!r}: {e.strerror}", base.EXIT_CANNOT_EXECUTE
            ) from None
    if working_dir is not None:
        try:
            os.chdir(working_dir)
        except OSError as e:
            code = base.code_for_errno(e.errno or 0, base.EXIT_NOT_FOUND)
            raise base.SetupError(
                f"working directory {working_dir!r}: {e.strerror}", code
            ) from None


def _default_signals() -> None:
    """Give the command the signal state a fresh process expects.

    Python ignores SIGPIPE and SIGXFSZ and the shim has handlers everywhere; ignored signals
    survive execve, so without this `yes | head` inside the container would never end.
    """
    for sig in base.FORWARDED_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _execvpe(argv: list[str], env: dict[str, str]) -> "NoReturn":
    """execve argv[0], searched in the *container's* PATH; errors name the command.

    Written out instead of os.execvpe so that "not found" and "found but not executable"
    can be told apart and reported with the PATH that was searched.
    """
    if not argv:
        raise base.SetupError("empty command", base.EXIT_NOT_FOUND)
    cmd = argv[0]
    search = env.get("PATH", os.defpath)
    if "/" in cmd:
        candidates = [cmd]
    else:
        candidates = [os.path.join(d or ".", cmd) for d in search.split(os.pathsep)]
    absent = (base.ENOENT, base.ENOTDIR)
    saved: OSError | None = None
    for candidate in candidates:
        try:
            os.execve(candidate, argv, env)
        except OSError as e:
            # As execvp does: keep searching, but a file that exists and cannot be run
            # (EACCES) is a better explanation than "not here".
            if saved is None or (saved.errno in absent and e.errno not in absent):
                saved = e
    assert saved is not None
    if saved.errno in absent:
        where = "" if "/" in cmd else f" in PATH ({search})"
        raise base.SetupError(f"command {cmd!r} not found{where}", base.EXIT_NOT_FOUND)
    code = base.code_for_errno(saved.errno or 0, base.EXIT_CANNOT_EXECUTE)
    raise base.SetupError(f"cannot execute {cmd!r}: {saved.strerror}", code)


# --- confinement ---------------------------------------------------------------------------


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32))


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


def _confine_before_user(conf: "dict[str, Any]") -> None:
    keep = set(conf["caps"])
    for cap in range(conf["last_cap"] + 1):
        if cap not in keep:
            base.prctl(base.PR_CAPBSET_DROP, cap,
                       f"dropping capability {cap} from the bounding set")
    if conf.get("seccomp") and not conf["nnp"]:
        load_seccomp(conf["seccomp"])
    base.prctl(base.PR_SET_KEEPCAPS, 1, "keeping capabilities across the user switch")


def _confine_after_user(conf: "dict[str, Any]") -> None:
    base.prctl(base.PR_SET_KEEPCAPS, 0, "clearing PR_SET_KEEPCAPS")
    mask = 0
    for cap in conf["caps"]:
        mask |= 1 << cap
    header = _CapHeader(base.LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    # Never more than we hold (privileged asks for every capability the kernel knows; the
    # daemon itself may run without some, and capset refuses to add any).
    if base.libc.capget(ctypes.addressof(header), ctypes.addressof(data)) == 0:
        mask &= data[0].permitted | (data[1].permitted << 32)
    header = _CapHeader(base.LINUX_CAPABILITY_VERSION_3, 0)
    for i in (0, 1):
        word = (mask >> (32 * i)) & 0xFFFFFFFF
        data[i].effective = data[i].permitted = word
        data[i].inheritable = 0
    if base.libc.capset(ctypes.addressof(header), ctypes.addressof(data)) != 0:
        raise base.SetupError(f"setting capabilities: {os.strerror(ctypes.get_errno())}",
                              base.EXIT_SETUP_FAILED)
    # Ambient capabilities: none (EINVAL on kernels before 4.3, which have none).
    base.libc.prctl(base.PR_CAP_AMBIENT, base.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)


def _confine_last(conf: "dict[str, Any]") -> None:
    if conf["nnp"]:
        base.prctl(base.PR_SET_NO_NEW_PRIVS, 1, "setting no_new_privs")
        if conf.get("seccomp"):
            load_seccomp(conf["seccomp"])


def load_seccomp(program: bytes) -> None:
    """Install a seccomp filter compiled by libseccomp (struct sock_filter[], 8 bytes each)."""
    buf = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // 8, ctypes.addressof(buf))
    base.prctl(base.PR_SET_SECCOMP, base.SECCOMP_MODE_FILTER, "loading the seccomp filter",
               ctypes.addressof(prog))
