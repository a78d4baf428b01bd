"""The shim's confinement of a command: the capability bounding set, the user switch that
keeps capabilities, effective = permitted = the container's set, no_new_privs and the
seccomp filter (``confine.py`` beside this file writes what to apply; standalone like the
shim, see ``shim_base``).

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
    from typing import Any

    from . import shim_base as base
else:  # the shim: its directory is on sys.path
    import shim_base as base


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32))


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


def before_user(conf: "dict[str, Any]") -> None:
    keep = set(conf["caps"])
    for cap in range(conf["last_cap"] + 1):
        if cap not in keep:
            base.prctl(base.PR_CAPBSET_DROP, cap,
                       f"dropping capability {cap} from the bounding set")
    if conf.get("seccomp") and not conf["nnp"]:
        load_seccomp(conf["seccomp"])
    base.prctl(base.PR_SET_KEEPCAPS, 1, "keeping capabilities across the user switch")


def after_user(conf: "dict[str, Any]") -> None:
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


def last(conf: "dict[str, Any]") -> None:
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
