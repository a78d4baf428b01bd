"""Memory, CPU and PID limits through cgroups that linkd creates, and removes on `down`.

The hierarchy is read at /sys/fs/cgroup, or at $LINKD_CGROUP_ROOT (the functions also
take `top=`): a test mounts a cgroup2 hierarchy of its own elsewhere to run the v2 path
on a v1 host. runc ignores the variable; it always uses /sys/fs/cgroup. A root with a
`cgroup.controllers` file is cgroup v2 (unified); otherwise it holds one v1 hierarchy
per controller.

cgroup v1 (this machine's hybrid mode): every container with limits gets, in each
controller it needs,

    <the cgroup linkd runs in>/linkd/<stack>/<container>/

nested under linkd's own cgroup rather than at the root, so whatever limits or accounts
linkd itself (a systemd unit, a CI sandbox) keeps covering its containers. The files:

    memory  memory.limit_in_bytes            mem_limit / limits.memory
    cpu     cpu.cfs_period_us = 100000,
            cpu.cfs_quota_us = cpus * 100000  cpus / limits.cpus (CFS bandwidth, as Docker)
    pids    pids.max                          pids_limit / limits.pids

cgroup v2 (unified): one directory per container with memory.max, cpu.max
("<cpus * 100000> 100000") and pids.max. Those files exist only where the parent lists
the controller in its cgroup.subtree_control, and a cgroup that holds processes may not
list memory or cpu there ("no internal processes"; only the hierarchy's root is exempt).
linkd's own cgroup always holds a process, linkd, so linkd's tree goes beside it, under
its parent, the *base* (the root itself when linkd runs in the root). That is where runc
puts a relative cgroupsPath on v2, so runc's containers share the tree:

    <base>/                 the parent of linkd's cgroup: must pass the controllers down
        <linkd's cgroup>/   left alone
        linkd/              cgroup.subtree_control: +memory +cpu +pids (what the limits use)
            <stack>/        the same
                <container>/  memory.max, cpu.max, pids.max

linkd writes cgroup.subtree_control in the two levels it creates, and in the base only
when a controller is missing there, offered there (its cgroup.controllers), and the base
is linkd's to change: the root of the hierarchy linkd sees (a host without systemd, or a
cgroup namespace), or a cgroup systemd marked as delegated (the `trusted.delegate` or
`user.delegate` xattr of a unit with Delegate=yes; with DelegateSubgroup=supervisor
linkd runs in <unit>/supervisor and the unit's cgroup is the base). What it adds there it
records on <base>/linkd (xattr trusted.linkd.enabled) and removes again when its last
stack goes, unless the base then has children other than linkd's own cgroup (one of them
may have come to use it). Any other case is an error that names the controller and the
way to delegate it; a base that holds processes (linkd at the root of a cgroup namespace
whose root holds the container's processes) is one too.

The shim's init joins the container's directories before it starts anything
(`ProcessSpec.cgroups`), so every process of the container is in them; an image container
sees its own directories at /sys/fs/cgroup/<controller>/ (bound read-only by the shim),
as under Docker on v1.

`remove_stack` removes the stack's directories once its processes are gone (a cgroup
with tasks cannot be removed: EBUSY, retried briefly while the last exits).
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from linkd.core.model import Limits
from linkd.errors import ContainerError

ROOT = Path("/sys/fs/cgroup")
ROOT_ENV = "LINKD_CGROUP_ROOT"
PREFIX = "linkd"
PERIOD_US = 100_000
RECORD_XATTR = "trusted.linkd.enabled"  # on <base>/linkd: what linkd enabled in the base
DELEGATE_XATTRS = ("trusted.delegate", "user.delegate")  # systemd's mark (Delegate=yes)


# --- what to write where (pure) -------------------------------------------------------------

def v1_files(limits: Limits) -> dict[str, dict[str, str]]:
    """controller -> {file: value} in each v1 hierarchy."""
    out: dict[str, dict[str, str]] = {}
    if limits.memory is not None:
        out["memory"] = {"memory.limit_in_bytes": str(limits.memory)}
    if limits.cpus is not None:
        out["cpu"] = {"cpu.cfs_period_us": str(PERIOD_US),
                      "cpu.cfs_quota_us": str(round(limits.cpus * PERIOD_US))}
    if limits.pids is not None:
        out["pids"] = {"pids.max": str(limits.pids)}
    return out


def v2_files(limits: Limits) -> dict[str, str]:
    """{file: value} in the container's one v2 directory."""
    files: dict[str, str] = {}
    if limits.memory is not None:
        files["memory.max"] = str(limits.memory)
    if limits.cpus is not None:
        files["cpu.max"] = f"{round(limits.cpus * PERIOD_US)} {PERIOD_US}"
    if limits.pids is not None:
        files["pids.max"] = str(limits.pids)
    return files


def v2_controllers(files: dict[str, str]) -> tuple[str, ...]:
    """The controllers whose files `files` writes ("memory.max" -> "memory")."""
    return tuple(dict.fromkeys(name.split(".", 1)[0] for name in files))


def v2_base(own: str) -> str:
    """Where linkd's v2 tree goes: the parent of linkd's cgroup `own`; "/" for "/"."""
    return str(PurePosixPath(own).parent)


@dataclass(frozen=True)
class Base:
    """What linkd read of the base cgroup: the facts the v2 plan depends on."""

    path: str  # cgroup path, "/" for the root of the hierarchy linkd sees
    offers: frozenset[str]  # its cgroup.controllers
    enables: frozenset[str]  # its cgroup.subtree_control
    delegated: bool = False  # marked by systemd as delegated (Delegate=yes)


@dataclass(frozen=True)
class SubtreePlan:
    """cgroup.subtree_control writes, top down, for one container's v2 directory."""

    enable_in_base: tuple[str, ...]  # linkd adds these to the base (recorded, undone)
    levels: tuple[tuple[str, tuple[str, ...]], ...]  # (cgroup path linkd creates, +these)
    leaf: str  # the container's cgroup path


def plan_v2(base: Base, stack: str, container: str, needed: Sequence[str],
            mount: str = str(ROOT)) -> SubtreePlan:
    """What to enable where so `needed` reach the container's cgroup, or a ContainerError
    naming the controller and the way to delegate it (`mount`: for the messages)."""
    tree = PurePosixPath(base.path) / PREFIX
    where = str(PurePosixPath(mount) / base.path.lstrip("/"))
    may_change = base.path == "/" or base.delegated
    missing = [c for c in needed if c not in base.enables]
    for controller in missing:
        if controller not in base.offers:
            offered = " ".join(sorted(base.offers)) or "none"
            if base.path == "/":
                raise ContainerError(
                    f"cgroup v2: the {controller} controller is not available in {where} "
                    f"(its cgroup.controllers: {offered}), where linkd puts its containers' "
                    f"cgroups: a cgroup v1 hierarchy holds it (a hybrid host: boot with "
                    f"systemd.unified_cgroup_hierarchy=1 or cgroup_no_v1={controller}), or "
                    f"the kernel lacks it"
                )
            raise ContainerError(
                f"cgroup v2: the {controller} controller is not available in {where} "
                f"(its cgroup.controllers: {offered}), where linkd puts its containers' "
                f"cgroups beside its own: delegate it to linkd, e.g. run linkd under systemd "
                f"with Delegate=yes and DelegateSubgroup=supervisor"
            )
        if not may_change:
            enabled = " ".join(sorted(base.enables)) or "none"
            raise ContainerError(
                f"cgroup v2: the {controller} controller is not enabled for the children of "
                f"{where} (its cgroup.subtree_control: {enabled}), which linkd changes only "
                f"where it is delegated: run linkd under systemd with Delegate=yes and "
                f"DelegateSubgroup=supervisor, or enable it yourself: "
                f"echo +{controller} > {where}/cgroup.subtree_control"
            )
    wanted = tuple(needed)
    return SubtreePlan(
        enable_in_base=tuple(missing),
        levels=((str(tree), wanted), (str(tree / stack), wanted)),
        leaf=str(tree / stack / container),
    )


# --- the hierarchy ----------------------------------------------------------------------------

def root() -> Path:
    """Where the cgroup hierarchy is mounted ($LINKD_CGROUP_ROOT, else /sys/fs/cgroup)."""
    return Path(os.environ.get(ROOT_ENV) or ROOT)


def is_v2(top: Path | None = None) -> bool:
    """Whether the hierarchy at `top` is cgroup v2 (unified)."""
    return ((top or root()) / "cgroup.controllers").exists()


def own_cgroup(controller: str = "") -> str:
    """The cgroup this process is in, for `controller` ("" for v2), with a leading /."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if (controller == "" and controllers == "") or controller in controllers.split(","):
            return path
    return "/"


def _in(top: Path, cgroup: str) -> Path:
    return top / cgroup.lstrip("/")


def _words(path: Path) -> frozenset[str]:
    return frozenset(path.read_text().split())


def _read_base(top: Path, own: str) -> Base:
    path = v2_base(own)
    directory = _in(top, path)
    delegated = False
    for name in DELEGATE_XATTRS:
        with contextlib.suppress(OSError):
            delegated = delegated or os.getxattr(directory, name).strip() == b"1"
    return Base(path, _words(directory / "cgroup.controllers"),
                _words(directory / "cgroup.subtree_control"), delegated)


def _mkdir(directory: Path, made: list[Path]) -> None:
    """Create `directory` and its missing parents, noting each one made (for a rollback)."""
    missing = [p for p in (directory, *directory.parents) if not p.exists()]
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another container's start made it
            path.mkdir()
            made.append(path)


def _rollback(made: list[Path]) -> None:
    for path in reversed(made):
        with contextlib.suppress(OSError):
            path.rmdir()


def create(stack: str, container: str, limits: Limits,
           top: Path | None = None) -> tuple[str, ...]:
    """Create (or update) the container's cgroups with `limits`; their directories.
    Nothing is left behind if it fails."""
    top = top or root()
    if is_v2(top):
        files = v2_files(limits)
        return (str(make_v2_cgroup(stack, container, files, top)),) if files else ()
    made: list[Path] = []
    out = []
    for controller, files in v1_files(limits).items():
        directory = _in(top / controller, own_cgroup(controller)) / PREFIX / stack / container
        try:
            _mkdir(directory, made)
            _write_files(directory, files)
        except (OSError, ContainerError) as exc:
            _rollback(made)
            raise _container_error(container, directory, exc) from None
        out.append(str(directory))
    return tuple(out)


def _write_files(directory: Path, files: dict[str, str]) -> None:
    for name, value in files.items():
        try:
            (directory / name).write_text(value)
        except OSError as exc:
            raise ContainerError(f"cannot set {name} = {value} in {directory}: "
                                 f"{exc.strerror}") from exc


def _container_error(container: str, directory: Path, exc: Exception) -> ContainerError:
    if isinstance(exc, OSError):
        return ContainerError(f"container {container}: cannot create cgroup {directory}: "
                              f"{exc.strerror}")
    return ContainerError(f"container {container}: {exc}")


def make_v2_cgroup(stack: str, container: str, files: dict[str, str],
                   top: Path | None = None) -> Path:
    """The container's v2 directory with `files` written, their controllers enabled down
    to it (see the module docstring for where, and which cgroups linkd may change)."""
    top = top or root()
    own = own_cgroup("")
    try:
        base = _read_base(top, own)
    except OSError as exc:
        raise ContainerError(f"container {container}: cannot read the cgroup v2 hierarchy "
                             f"at {top} (linkd's cgroup: {own}): {exc.strerror}") from exc
    try:
        plan = plan_v2(base, stack, container, v2_controllers(files), str(top))
    except ContainerError as exc:
        raise ContainerError(f"container {container}: {exc}") from None
    base_dir = _in(top, base.path)
    leaf = _in(top, plan.leaf)
    made: list[Path] = []
    enabled_in_base = False
    try:
        if plan.enable_in_base:
            _enable_in_base(base_dir, plan.enable_in_base, made)
            enabled_in_base = True
        for cgroup, wanted in plan.levels:
            directory = _in(top, cgroup)
            _mkdir(directory, made)
            enabled = _words(directory / "cgroup.subtree_control")
            if missing := [c for c in wanted if c not in enabled]:
                _enable(directory, missing)
        _mkdir(leaf, made)
        _write_files(leaf, files)
    except (OSError, ContainerError) as exc:
        _rollback(made)
        if enabled_in_base and not (base_dir / PREFIX).exists():
            _undo_in_base(base_dir, plan.enable_in_base, base.path, own)
        raise _container_error(container, leaf, exc) from None
    return leaf


def _enable(directory: Path, controllers: Sequence[str], base: bool = False) -> None:
    try:
        (directory / "cgroup.subtree_control").write_text(
            " ".join(f"+{c}" for c in controllers))
    except OSError as exc:
        if exc.errno == errno.EBUSY and base:
            procs = ""
            with contextlib.suppress(OSError):
                procs = " ".join((directory / "cgroup.procs").read_text().split()[:5])
            raise ContainerError(
                f"cgroup v2: cannot enable {' '.join(controllers)} for the children of "
                f"{directory}: it holds processes ({procs or '?'}), and a cgroup with "
                f"processes passes no controllers down (\"no internal processes\"; only the "
                f"root of the whole hierarchy is exempt). If linkd runs at the root of a "
                f"cgroup namespace (in a container), move those processes into a leaf "
                f"(mkdir {directory}/init, write each pid to {directory}/init/cgroup.procs, "
                f"as docker-in-docker does) and start linkd there"
            ) from exc
        raise ContainerError(f"cgroup v2: cannot enable {' '.join(controllers)} in "
                             f"{directory}/cgroup.subtree_control: {exc.strerror}") from exc


def _enable_in_base(base_dir: Path, controllers: Sequence[str], made: list[Path]) -> None:
    """Enable `controllers` in the base (not linkd's), recording them on <base>/linkd
    first, so that a crash after the write still leaves the record to undo them by."""
    tree = base_dir / PREFIX
    _mkdir(tree, made)
    recorded = _recorded(tree)
    os.setxattr(tree, RECORD_XATTR, " ".join(sorted(recorded | set(controllers))).encode())
    _enable(base_dir, controllers, base=True)


def _recorded(tree: Path) -> set[str]:
    try:
        return set(os.getxattr(tree, RECORD_XATTR).decode().split())
    except OSError:
        return set()


def _undo_in_base(base_dir: Path, controllers: Collection[str], base: str,
                  own: str) -> None:
    """Take back what linkd enabled in the base, unless another cgroup there may have come
    to use it: only when the base's one child left, if any, is linkd's own cgroup."""
    own_child = PurePosixPath(own).relative_to(base).parts[:1] if own != base else ()
    if any(p.is_dir() and (p.name,) != own_child for p in base_dir.iterdir()):
        return
    enabled = _words(base_dir / "cgroup.subtree_control")
    if undo := [c for c in controllers if c in enabled]:
        with contextlib.suppress(OSError):  # EBUSY: a child enabled it for its own children
            (base_dir / "cgroup.subtree_control").write_text(" ".join(f"-{c}" for c in undo))


# --- removal and leftovers ------------------------------------------------------------------

def _hierarchies(top: Path) -> list[Path]:
    """Every mounted cgroup hierarchy, once each (cpu and cpuacct may be one)."""
    if is_v2(top):
        return [top]
    seen: dict[str, Path] = {}
    for entry in sorted(top.iterdir()) if top.is_dir() else []:
        if entry.is_dir():
            seen.setdefault(os.path.realpath(entry), entry)
    return list(seen.values())


def _own_in(hierarchy: Path) -> str:
    """This process's cgroup in a v1 `hierarchy` (a mount named after its controllers)."""
    names = set(os.path.basename(os.path.realpath(hierarchy)).split(","))
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        listed = {c.removeprefix("name=") for c in controllers.split(",")} if controllers else {
            "unified"}
        if names & listed:
            return path
    return "/"


def stack_dirs(stack: str, top: Path | None = None) -> list[Path]:
    """The stack's cgroup directories that exist, in every hierarchy (runc, given a
    relative cgroupsPath, creates its cgroups in all of them, in the same places)."""
    top = top or root()
    if is_v2(top):
        candidates = [_in(top, v2_base(own_cgroup(""))) / PREFIX / stack]
    else:
        candidates = [_in(h, _own_in(h)) / PREFIX / stack for h in _hierarchies(top)]
    return [d for d in candidates if d.is_dir()]


def remove_stack(stack: str, timeout: float = 5.0,
                 top: Path | None = None) -> list[BaseException]:
    """Remove the stack's cgroups (linkd's parent directory once empty, and on v2 what
    linkd enabled in the base for it); the failures, for a teardown to report."""
    top = top or root()
    deadline = time.monotonic() + timeout
    errors: list[BaseException] = []
    for directory in stack_dirs(stack, top):
        try:
            for child in [p for p in directory.iterdir() if p.is_dir()]:
                _rmdir(child, deadline)
            _rmdir(directory, deadline)
        except ContainerError as exc:
            errors.append(exc)
            continue
        tree = directory.parent
        recorded = _recorded(tree)
        try:
            tree.rmdir()  # linkd/: only if no other stack has cgroups
        except OSError:
            continue
        if recorded and is_v2(top):
            own = own_cgroup("")
            _undo_in_base(tree.parent, recorded, v2_base(own), own)
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


def leftovers(top: Path | None = None) -> list[str]:
    """Every stack cgroup of linkd's on the machine, whichever cgroup the linkd that made
    it ran in (for tests that check nothing is left)."""
    found = []
    for hierarchy in _hierarchies(top or root()):
        for directory, subdirs, _ in os.walk(hierarchy):
            if os.path.basename(directory) == PREFIX:
                found += [os.path.join(directory, d) for d in subdirs]
                subdirs.clear()
            elif directory.count("/") - str(hierarchy).count("/") >= 4:
                subdirs.clear()  # deep enough: linkd nests only near its own cgroup
    return found
