"""A container's confinement, made concrete for this machine and for each launcher.

`linkd.core.confinement` says what a container gets (capabilities, no_new_privs, seccomp,
masked and read-only paths, devices) from its service's keys; this module adds the
machine's facts (architecture, kernel, the highest capability it knows) and hands the
result over:

- to runc as the OCI config's `process` and `linux` parts (`oci_process`, `oci_linux`):
  capabilities in the bounding, effective and permitted sets, `noNewPrivileges`,
  `linux.seccomp`, `maskedPaths`, `readonlyPaths`, the devices cgroup (Docker's list:
  deny all, then null, zero, full, random, urandom, tty, console, pts; runc adds mknod of
  any node, so `mknod` works and `open` of another device fails with EPERM, as under
  Docker) and `linux.devices` for `devices:`;
- to linkd's shim as `<container dir>/confine.marshal` (`write_for_shim`), which its run,
  exec and health-probe paths apply to the command before it execs: the capability
  numbers to keep, no_new_privs, the seccomp filter as BPF, the paths to mask. The filter
  is compiled here, with libseccomp (`pyseccomp`, ctypes), from the same OCI object runc
  gets: the shim stays a standard-library program that starts in ~15 ms and installs
  the finished program with one prctl(PR_SET_SECCOMP).

The file is written for every container, host-command ones included (they get the same
capabilities, no_new_privs and seccomp; see docs/security.md "Containers"), and for runc
containers too: `linkd exec` and health probes enter a runc container through the shim,
not through runc, and must be confined like its command.
"""

from __future__ import annotations

import contextlib
import functools
import grp
import importlib.resources
import marshal
import os
import pwd
import stat
import tempfile
from pathlib import Path
from typing import Any

from linkd.core import confinement
from linkd.core.confinement import CAP_NUMBER
from linkd.core.model import Security
from linkd.core.seccomp_profile import GOARCH, SeccompProfile, parse_rules, resolve
from linkd.errors import ContainerError

CONFINE_FILE = "confine.marshal"  # in the container directory, beside spec.marshal


@functools.cache
def goarch() -> str:
    machine = os.uname().machine
    return GOARCH.get(machine, machine)


@functools.cache
def kernel() -> tuple[int, int]:
    release = os.uname().release
    parts = release.split(".")
    try:
        return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)
    except (IndexError, ValueError):
        return 0, 0


@functools.cache
def last_cap() -> int:
    try:
        return int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        return len(confinement.CAPABILITIES) - 1


@functools.cache
def default_profile() -> SeccompProfile:
    text = importlib.resources.files("linkd.core").joinpath("seccomp_default.rules").read_text()
    return parse_rules(text)


@functools.cache
def held() -> frozenset[str]:
    """The capabilities linkd itself has (permitted and bounding): all a container can get,
    as Docker's "all capabilities" are those available where its daemon runs."""
    masks = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("CapPrm", "CapBnd"):
                masks[key] = int(value.strip(), 16)
    except (OSError, ValueError):
        return frozenset(confinement.CAPABILITIES)
    mask = masks.get("CapPrm", 0) & masks.get("CapBnd", 0)
    return frozenset(c for n, c in enumerate(confinement.CAPABILITIES) if mask >> n & 1)


def capabilities(security: Security) -> tuple[str, ...]:
    """The container's capabilities; an added one linkd does not hold is an error (a
    privileged container or `cap_add: [ALL]` gets all linkd holds)."""
    have = held()
    wanted = confinement.capabilities(
        security, min(last_cap(), len(confinement.CAPABILITIES) - 1))
    missing = [c for c in security.cap_add if c != "ALL" and c not in have]
    if missing and not security.privileged:
        raise ContainerError(
            f"cap_add {', '.join(missing)}: linkd itself runs without "
            f"{'it' if len(missing) == 1 else 'them'}, so no container can have "
            f"{'it' if len(missing) == 1 else 'them'}")
    return tuple(c for c in wanted if c in have)


def seccomp(security: Security) -> dict[str, Any] | None:
    """The OCI `linux.seccomp` object of a container, None when it runs unconfined."""
    if not confinement.seccomp_confined(security):
        return None
    profile = security.seccomp_profile if security.seccomp == "file" else None
    caps = frozenset(capabilities(security))
    return resolve(profile or default_profile(), caps, goarch(), kernel())


# --- runc ----------------------------------------------------------------------------------


def oci_process(security: Security) -> dict[str, Any]:
    """The `process` keys runc confines the command with."""
    caps = list(capabilities(security))
    return {
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
        "noNewPrivileges": confinement.no_new_privileges(security),
    }


# Docker's devices cgroup (moby oci/defaults.go): deny everything, then these.
_CGROUP_DEVICES = (("c", 1, 5), ("c", 1, 3), ("c", 1, 9), ("c", 1, 8), ("c", 5, 0), ("c", 5, 1))


def oci_linux(security: Security) -> dict[str, Any]:
    """The `linux` keys runc confines the container with (besides namespaces, cgroups
    and resources, which the caller adds)."""
    out: dict[str, Any] = {}
    if confinement.system_paths_masked(security):
        out["maskedPaths"] = list(confinement.MASKED_PATHS)
        out["readonlyPaths"] = list(confinement.READONLY_PATHS)
    if (profile := seccomp(security)) is not None:
        out["seccomp"] = profile
    if security.privileged:
        rules: list[dict[str, Any]] = [{"allow": True, "access": "rwm"}]
    else:
        rules = [{"allow": False, "access": "rwm"}]
        rules += [{"allow": True, "type": t, "major": major, "minor": minor, "access": "rwm"}
                  for t, major, minor in _CGROUP_DEVICES]
        rules.append({"allow": False, "type": "c", "major": 10, "minor": 229, "access": "rwm"})
    devices = _host_devices() if security.privileged else []
    for device in security.devices:
        kind, major, minor, mode = _device(device.source)
        devices.append({"path": device.target, "type": kind, "major": major, "minor": minor,
                        "fileMode": mode, "uid": 0, "gid": 0})
        rules.append({"allow": True, "type": kind, "major": major, "minor": minor,
                      "access": device.permissions})
    out["devices"] = devices
    out["resources_devices"] = rules  # the caller moves it into linux.resources.devices
    return out


_NOT_DEVICES = ("/dev/pts", "/dev/shm", "/dev/mqueue", "/dev/fd", "/dev/console")


def _host_devices() -> list[dict[str, Any]]:
    """Every device node of the host's /dev (privileged: Docker gives them all), but its
    terminals, shared memory and queues, which the container has its own of."""
    found = []
    for directory, dirs, files in os.walk("/dev"):
        dirs[:] = [d for d in dirs if os.path.join(directory, d) not in _NOT_DEVICES]
        for name in files:
            path = os.path.join(directory, name)
            if path in _NOT_DEVICES:
                continue
            try:
                kind, major, minor, mode = _device(path)
            except ContainerError:
                continue
            found.append({"path": path, "type": kind, "major": major, "minor": minor,
                          "fileMode": mode, "uid": 0, "gid": 0})
    return found


def _device(path: str) -> tuple[str, int, int, int]:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ContainerError(f"device {path}: {exc.strerror}") from None

    if stat.S_ISCHR(st.st_mode):
        kind = "c"
    elif stat.S_ISBLK(st.st_mode):
        kind = "b"
    else:
        raise ContainerError(f"device {path} is not a character or block device")
    return kind, os.major(st.st_rdev), os.minor(st.st_rdev), stat.S_IMODE(st.st_mode)


def host_owner(user: str | None) -> tuple[int, int]:
    """(uid, gid) a host-command container's `user` runs as, from the host's passwd and
    group files as the shim resolves it; root when there is none or it is unknown."""
    if not user:
        return 0, 0
    name, _, group = user.partition(":")
    try:
        entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
        uid, gid = entry.pw_uid, entry.pw_gid
    except KeyError:
        if not name.isdigit():
            return 0, 0
        uid, gid = int(name), 0
    if group:
        with contextlib.suppress(KeyError):
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    return uid, gid


# --- linkd's shim --------------------------------------------------------------------------


def for_shim(security: Security, image: bool) -> dict[str, Any]:
    """What the shim applies (shim_command.py): plain values only (marshal)."""
    privileged = security.privileged
    keep = sorted(CAP_NUMBER[c] for c in capabilities(security))
    profile = seccomp(security)
    for device in security.devices:
        _device(device.source)  # a missing device is an error now, not in the shim
    return {
        "privileged": privileged,
        "caps": keep,
        "last_cap": last_cap(),
        "nnp": confinement.no_new_privileges(security),
        "seccomp": compile_bpf(profile) if profile is not None else None,
        "masked": list(confinement.MASKED_PATHS) if confinement.system_paths_masked(
            security) else [],
        "readonly": list(confinement.READONLY_PATHS) if confinement.system_paths_masked(
            security) else [],
        "image": image,
        "read_only": security.read_only,
        "devices": [[d.source, d.target, d.permissions] for d in security.devices],
        "cgroupns": image,
    }


def write_for_shim(run_dir: str | Path, settings: dict[str, Any]) -> None:
    """`<run_dir>/confine.marshal`, replaced atomically, root's alone."""
    directory = Path(run_dir)
    fd, tmp = tempfile.mkstemp(prefix=".confine.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            marshal.dump(settings, f)
        os.replace(tmp, directory / CONFINE_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_NR_SCMP_ERROR = -1  # what libseccomp resolves a name it does not know to
# libseccomp's comparison operators (seccomp.h enum scmp_compare).
_SCMP_CMP = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4,
             "SCMP_CMP_GE": 5, "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7}


def _action(name: str, errno: int | None) -> int:
    import pyseccomp

    simple = {"SCMP_ACT_ALLOW": pyseccomp.ALLOW, "SCMP_ACT_KILL": pyseccomp.KILL,
              "SCMP_ACT_KILL_THREAD": pyseccomp.KILL_THREAD,
              "SCMP_ACT_KILL_PROCESS": pyseccomp.KILL_PROCESS, "SCMP_ACT_TRAP": pyseccomp.TRAP,
              "SCMP_ACT_LOG": pyseccomp.LOG}
    if name == "SCMP_ACT_ERRNO":
        return int(pyseccomp.ERRNO(1 if errno is None else errno))
    if name == "SCMP_ACT_TRACE":
        return int(pyseccomp.TRACE(errno or 0))
    return int(simple[name])


@functools.lru_cache(maxsize=32)
def _compiled(key: str) -> bytes:
    import json

    return _compile(json.loads(key))


def compile_bpf(profile: dict[str, Any]) -> bytes:
    """The seccomp filter of an OCI `linux.seccomp` object, as the BPF program the kernel
    takes (struct sock_filter[]), built by libseccomp."""
    import json

    return _compiled(json.dumps(profile, sort_keys=True))


def _compile(profile: dict[str, Any]) -> bytes:
    try:
        import pyseccomp
    except (ImportError, OSError) as exc:  # OSError: libseccomp.so.2 is missing
        raise ContainerError(
            f"seccomp needs libseccomp and pyseccomp ({exc}); install libseccomp2, or run "
            "the service with security_opt: [seccomp=unconfined]") from None
    default = _action(profile["defaultAction"], profile.get("defaultErrnoRet"))
    try:
        flt = pyseccomp.SyscallFilter(default)
        native = pyseccomp.system_arch()
        for arch in profile.get("architectures", []):
            number = getattr(pyseccomp.Arch, arch.removeprefix("SCMP_ARCH_"), None)
            if number is None or number == native:
                continue
            with contextlib.suppress(OSError):  # there, or unknown to this libseccomp
                flt.add_arch(number)
        for call in profile["syscalls"]:
            action = _action(call["action"], call.get("errnoRet"))
            if action == default:
                continue  # libseccomp refuses rules that repeat the default (runc skips them)
            args = [pyseccomp.Arg(a["index"], _SCMP_CMP[a["op"]], a["value"],
                                  a.get("valueTwo", 0)) for a in call.get("args", [])]
            for name in call["names"]:
                if pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name) == _NR_SCMP_ERROR:
                    continue  # unknown to this libseccomp: left out, as runc does
                flt.add_rule(action, name, *args)
        with tempfile.TemporaryFile() as f:
            flt.export_bpf(f)
            f.seek(0)
            return f.read()
    except OSError as exc:
        raise ContainerError(f"building the seccomp filter with libseccomp: {exc}") from None

