"""Memory, CPU and PID limits through cgroups that linkd creates, and removes on `down`.

cgroup v1 (this machine's hybrid mode: one hierarchy per controller under /sys/fs/cgroup):
every container with limits gets, in each controller it needs,

    <the cgroup linkd runs in>/linkd/<stack>/<container>/

nested under linkd's own cgroup rather than at the root, so whatever limits or accounts
linkd itself (a systemd unit, a CI sandbox) keeps covering its containers. The files:

    memory  memory.limit_in_bytes            mem_limit / limits.memory
    cpu     cpu.cfs_period_us = 100000,
            cpu.cfs_quota_us = cpus * 100000  cpus / limits.cpus (CFS bandwidth, as Docker)
    pids    pids.max                          pids_limit / limits.pids

The shim's init joins them before it starts anything (`ProcessSpec.cgroups`), so every
process of the container is in them; an image container sees its own directories at
/sys/fs/cgroup/<controller>/ (bound read-only by the shim), as under Docker on v1.

cgroup v2 (unified): the same path under /sys/fs/cgroup with memory.max, cpu.max and
pids.max, provided linkd's cgroup delegates those controllers (cgroup.subtree_control).

`remove_stack` removes the stack's directories once its processes are gone (a cgroup
with tasks cannot be removed: EBUSY, retried briefly while the last exits).
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from pathlib import Path

from linkd.errors import ContainerError
from linkd.model import Limits

ROOT = Path("/sys/fs/cgroup")
PREFIX = "linkd"
PERIOD_US = 100_000


def _v2() -> bool:
    return (ROOT / "cgroup.controllers").exists()


def _own(controller: str) -> str:
    """The cgroup this process is in, for `controller` ("" for v2)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if (controller == "" and controllers == "") or controller in controllers.split(","):
            return path.lstrip("/")
    return ""


def _base(controller: str) -> Path:
    """Where linkd's cgroups for `controller` go: <own cgroup>/linkd."""
    if _v2():
        return ROOT / _own("") / PREFIX
    return ROOT / controller / _own(controller) / PREFIX


def _settings(limits: Limits) -> dict[str, dict[str, str]]:
    """controller -> {file: value} for v1, or {"": {...}} for v2."""
    if _v2():
        files: dict[str, str] = {}
        if limits.memory is not None:
            files["memory.max"] = str(limits.memory)
        if limits.cpus is not None:
            files["cpu.max"] = f"{round(limits.cpus * PERIOD_US)} {PERIOD_US}"
        if limits.pids is not None:
            files["pids.max"] = str(limits.pids)
        return {"": files} if files else {}
    out: dict[str, dict[str, str]] = {}
    if limits.memory is not None:
        out["memory"] = {"memory.limit_in_bytes": str(limits.memory)}
    if limits.cpus is not None:
        out["cpu"] = {"cpu.cfs_period_us": str(PERIOD_US),
                      "cpu.cfs_quota_us": str(round(limits.cpus * PERIOD_US))}
    if limits.pids is not None:
        out["pids"] = {"pids.max": str(limits.pids)}
    return out


def create(stack: str, container: str, limits: Limits) -> tuple[str, ...]:
    """Create (or update) the container's cgroups with `limits`; their directories."""
    made = []
    for controller, files in _settings(limits).items():
        directory = _base(controller) / stack / container
        try:
            directory.mkdir(parents=True, exist_ok=True)
            for name, value in files.items():
                (directory / name).write_text(value)
        except OSError as exc:
            raise ContainerError(
                f"container {container}: cannot set {controller or 'cgroup'} limits in "
                f"{directory}: {exc.strerror}"
            ) from exc
        made.append(str(directory))
    return tuple(made)


def _hierarchies() -> list[Path]:
    """Every mounted cgroup hierarchy, once each (cpu and cpuacct may be one)."""
    if _v2():
        return [ROOT]
    seen: dict[str, Path] = {}
    for entry in sorted(ROOT.iterdir()) if ROOT.is_dir() else []:
        if entry.is_dir():
            seen.setdefault(os.path.realpath(entry), entry)
    return list(seen.values())


def _own_in(hierarchy: Path) -> str:
    """This process's cgroup in `hierarchy` (a v1 mount named after its controllers)."""
    if _v2():
        return _own("")
    names = set(os.path.basename(os.path.realpath(hierarchy)).split(","))
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        listed = {c.removeprefix("name=") for c in controllers.split(",")} if controllers else {
            "unified"}
        if names & listed:
            return path.lstrip("/")
    return ""


def stack_dirs(stack: str) -> list[Path]:
    """The stack's cgroup directories that exist, in every hierarchy (runc, given a
    relative cgroupsPath, creates its cgroups in all of them, under its own cgroup)."""
    found = []
    for hierarchy in _hierarchies():
        directory = hierarchy / _own_in(hierarchy) / PREFIX / stack
        if directory.is_dir():
            found.append(directory)
    return found


def remove_stack(stack: str, timeout: float = 5.0) -> list[BaseException]:
    """Remove the stack's cgroups (and linkd's parent directory once empty); the
    failures, for a teardown to report with its others."""
    deadline = time.monotonic() + timeout
    errors: list[BaseException] = []
    for directory in stack_dirs(stack):
        try:
            for child in [p for p in directory.iterdir() if p.is_dir()]:
                _rmdir(child, deadline)
            _rmdir(directory, deadline)
        except ContainerError as exc:
            errors.append(exc)
            continue
        with contextlib.suppress(OSError):
            directory.parent.rmdir()  # linkd/: only if no other stack has cgroups
    return errors


def _rmdir(directory: Path, deadline: float) -> None:
    while True:
        try:
            directory.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise ContainerError(f"cannot remove cgroup {directory}: {exc.strerror}"
                                     ) from exc
            time.sleep(0.01)  # the last task of the cgroup is still exiting


def leftovers() -> list[str]:
    """Every stack cgroup of linkd's on the machine, whichever cgroup the linkd that made
    it ran in (for tests that check nothing is left)."""
    found = []
    for top in _hierarchies():
        for directory, subdirs, _ in os.walk(top):
            if os.path.basename(directory) == PREFIX:
                found += [os.path.join(directory, d) for d in subdirs]
                subdirs.clear()
            elif directory.count("/") - str(top).count("/") >= 4:
                subdirs.clear()  # deep enough: linkd nests only under its own cgroup
    return found
