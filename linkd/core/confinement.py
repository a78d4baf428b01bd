"""What confines a container by default, and how a service's keys change it (pure).

The defaults are Docker's for an image (moby `daemon/pkg/oci/defaults.go` and
`oci/caps/defaults.go`), so an image behaves under linkd as it does under Docker:

- capabilities: DEFAULT_CAPABILITIES in the bounding, effective and permitted sets,
  nothing inheritable or ambient. A command that runs as another user than root loses
  them at exec, as under Docker (no file capabilities, no ambient set);
- `no_new_privs`: on by default here (stricter than Docker, whose daemon leaves it off
  unless configured); `security_opt: [no-new-privileges:false]` turns it off;
- the seccomp profile (`linkd.core.seccomp_profile`, data in `seccomp_default.rules`);
- MASKED_PATHS (a file reads as empty, a directory as an empty read-only directory) and
  READONLY_PATHS under /proc and /sys;
- a /dev with DEFAULT_DEVICES only, and a devices cgroup (runc) that lets the container
  open no other device.

`privileged: true` lifts all of it, as Docker's `--privileged` does: every capability, no
seccomp, no masked or read-only paths, a writable /sys, the host's devices, and
`no_new_privs` only when `security_opt` asks for it. `cap_add` and `cap_drop` follow
Docker's rules (moby `TweakCapabilities`): `ALL` in cap_add gives every capability but
those dropped, `ALL` in cap_drop keeps only those added.
"""

from __future__ import annotations

from linkd.core.model import Security

# <linux/capability.h>, by number.
CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)  # fmt: skip
CAP_NUMBER = {name: number for number, name in enumerate(CAPABILITIES)}

DEFAULT_CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)  # fmt: skip

MASKED_PATHS = (
    "/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys",
    "/proc/latency_stats", "/proc/sched_debug", "/proc/scsi", "/proc/timer_list",
    "/proc/timer_stats", "/sys/devices/virtual/powercap", "/sys/firmware",
)  # fmt: skip
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

# (name under /dev, type, major, minor): what a container's /dev holds besides pts/ptmx,
# shm and mqueue.
DEFAULT_DEVICES = (
    ("null", "c", 1, 3), ("zero", "c", 1, 5), ("full", "c", 1, 7), ("random", "c", 1, 8),
    ("urandom", "c", 1, 9), ("tty", "c", 5, 0),
)  # fmt: skip


def cap_name(text: str) -> str:
    """`net_admin`, `NET_ADMIN` or `CAP_NET_ADMIN` as CAP_NET_ADMIN; `ALL` stays ALL."""
    name = text.strip().upper()
    if name == "ALL":
        return name
    if not name.startswith("CAP_"):
        name = "CAP_" + name
    if name not in CAP_NUMBER:
        raise ValueError(f"unknown capability {text!r} (capabilities(7) lists them: "
                         "NET_ADMIN, SYS_PTRACE, ...)")
    return name


def capabilities(security: Security, last_cap: int = len(CAPABILITIES) - 1) -> tuple[str, ...]:
    """The container's capability set, `last_cap` being the highest the kernel knows
    (/proc/sys/kernel/cap_last_cap)."""
    every = CAPABILITIES[: last_cap + 1]
    if security.privileged:
        return every
    if "ALL" in security.cap_add:
        return tuple(c for c in every if c not in security.cap_drop)
    if "ALL" in security.cap_drop:
        kept: tuple[str, ...] = ()
    else:
        kept = tuple(c for c in DEFAULT_CAPABILITIES if c not in security.cap_drop)
    added = tuple(c for c in security.cap_add if c not in kept and c in every)
    return kept + added


def no_new_privileges(security: Security) -> bool:
    """no_new_privs: as `security_opt` says, else on unless privileged."""
    if security.no_new_privileges is not None:
        return security.no_new_privileges
    return not security.privileged


def seccomp_confined(security: Security) -> bool:
    return not security.privileged and security.seccomp != "unconfined"


def system_paths_masked(security: Security) -> bool:
    return not security.privileged and security.system_paths
