"""A container's planned mounts made real: its volumes made (or found), a bind's missing
host directory made when the short syntax asks for it, and each source checked; and the
same checks for a whole stack before `up` creates anything (`check_stack`).

A bind source is what the user named: a socket reached through a symlink in its last
component (`./data` -> /var/run/docker.sock) is refused, since giving a container a
socket on the host hands it what listens there; naming the socket itself is the user's
choice, as with Docker.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from linkd.core.model import FileMount, Mount, Stack, Volume
from linkd.core.plan import ContainerPlan, StackPlan
from linkd.errors import ContainerError, NotFoundError, SpecError
from linkd.runtime.volumes.store import VolumeStore


@dataclass(frozen=True, slots=True)
class HostMount:
    """One entry of the shim's `mounts`: the source as a host path."""

    kind: str  # bind | volume | tmpfs
    source: str
    target: str
    read_only: bool
    seed: bool  # a volume to fill with the image's content at `target` while empty
    data: str = ""  # tmpfs options

    def for_shim(self) -> tuple[str, str, str, bool, bool, str]:
        return (self.kind, self.source, self.target, self.read_only, self.seed, self.data)


def host_mounts(plan: StackPlan, container: ContainerPlan, files: Path,
                store: VolumeStore | None = None) -> tuple[HostMount, ...]:
    """`container`'s mounts with host sources, its volumes made if they are not there,
    and its secrets and configs (written into `files`, a directory of the container's,
    where one needs a copy of its own)."""
    if not container.mounts and not container.files:
        return ()
    volumes = store or VolumeStore()
    declared = {v.name: v for v in plan.volumes}
    result = []
    for mount in container.mounts:
        if mount.kind == "tmpfs":
            result.append(HostMount("tmpfs", "", mount.target, mount.read_only, False,
                                    mount.data))
            continue
        if mount.kind == "bind":
            _bind_source(container.name, mount)
            result.append(HostMount("bind", mount.source, mount.target, mount.read_only,
                                    False))
            continue
        volume = declared.get(mount.source) or Volume("", mount.source)
        try:
            stored = volumes.ensure(volume, plan.stack)
        except NotFoundError as exc:
            raise ContainerError(f"container {container.name}: {exc}") from None
        seed = not mount.nocopy and stored.device is None and container.image is not None
        result.append(HostMount("volume", str(stored.path), mount.target, mount.read_only,
                                seed))
    for index, file in enumerate(container.files):
        result.append(HostMount("bind", _file_source(container.name, file, files, index),
                                file.target, True, False))
    return tuple(result)


def _file_source(container: str, file: FileMount, files: Path, index: int) -> str:
    """The host file a secret or config is bound from: its own source, or a copy with
    the owner and mode it asks for (0444 and root's, Compose's defaults)."""
    if file.unset:
        raise ContainerError(f"container {container}: {file.target}: {_unset(file)}")
    if file.content is None and file.uid is None and file.gid is None and file.mode is None:
        if not os.path.isfile(file.source):
            raise ContainerError(f"container {container}: {file.target}: the source "
                                 f"{file.source} is not a file")
        return file.source
    files.mkdir(mode=0o700, exist_ok=True)
    copy = files / str(index)
    try:
        if file.content is not None:
            copy.unlink(missing_ok=True)
            with open(copy, "x", encoding="utf-8") as f:
                f.write(file.content)
        else:
            shutil.copyfile(file.source, copy, follow_symlinks=True)
        os.chown(copy, file.uid or 0, file.gid or 0)
        os.chmod(copy, 0o444 if file.mode is None else file.mode)
    except OSError as exc:
        raise ContainerError(f"container {container}: {file.target}: {exc}") from None
    return str(copy)


def _bind_source(container: str, mount: Mount) -> None:
    try:
        problem = source_problem(mount.source, mount.create_host_path)
    except OSError as exc:
        problem = f"cannot make it: {exc.strerror}"
    if problem is None and not os.path.exists(mount.source):
        with contextlib.suppress(FileExistsError):
            os.makedirs(mount.source, 0o755)  # Compose's short syntax makes it
    if problem is not None:
        raise ContainerError(f"container {container}: bind mount {mount.source} -> "
                             f"{mount.target}: {problem}")


def source_problem(source: str, create: bool) -> str | None:
    """What is wrong with a bind source, or None."""
    try:
        own = os.lstat(source)
    except FileNotFoundError:
        return None if create else (
            "the source does not exist; make it, or use the short syntax (which makes a "
            "missing directory) or bind: {create_host_path: true}")
    except OSError as exc:
        return f"cannot look at the source: {exc.strerror}"
    if stat.S_ISLNK(own.st_mode):
        try:
            final = os.stat(source)
        except OSError:
            return "the source is a symlink to nothing"
        if stat.S_ISSOCK(final.st_mode):
            return (f"the source is a symlink to the socket {os.path.realpath(source)}; "
                    "name the socket itself if the container is to have it")
    return None


def check_stack(stack: Stack, store: VolumeStore | None = None) -> None:
    """Before anything is created: external volumes exist, bind-volume devices exist,
    bind sources are there (or will be made). One SpecError lists every problem."""
    volumes = store or VolumeStore()
    problems: list[tuple[str, int | None, str]] = []
    for volume in stack.volumes:
        where = f"volumes.{volume.key}"
        if volume.external:
            try:
                volumes.get(volume.name)
            except NotFoundError:
                problems.append((where, None, f"volume {volume.name} is external and does "
                                 f"not exist: make it first (linkd volume create "
                                 f"{volume.name}, or up the stack that declares it), or "
                                 "drop external: true"))
        elif volume.device is not None and not os.path.isdir(volume.device):
            problems.append((where, None, f"the device {volume.device} of this bind volume "
                             "is not a directory; make it"))
    for service in stack.services:
        for file in service.files:
            if file.unset:
                problems.append((f"services.{service.name}", None,
                                 f"{file.target}: {_unset(file)}"))
            elif file.content is None and not os.path.isfile(file.source):
                problems.append((f"services.{service.name}", None, f"{file.target}: the "
                                 f"source {file.source} is not a file"))
        for mount in service.volumes:
            if mount.kind != "bind":
                continue
            problem = source_problem(mount.source, mount.create_host_path)
            if problem is not None:
                problems.append((f"services.{service.name}.volumes", None,
                                 f"{mount.source} -> {mount.target}: {problem}"))
    if problems:
        raise SpecError(problems)


def _unset(file: FileMount) -> str:
    return (f"its content comes from the variable {file.unset}, which was not set when the "
            "stack was read; set it (or put it in .env beside the stack file)")


def users(name: str, plans: list[StackPlan]) -> list[str]:
    """The containers (`stack/container`) of `plans`, the stacks that are up, that mount
    the volume `name`: stopped ones too, as Docker counts them."""
    return [f"{plan.stack}/{c.name}" for plan in plans for c in plan.containers
            if any(m.kind == "volume" and m.source == name for m in c.mounts)]
