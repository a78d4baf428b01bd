"""Root filesystems and runtimes of image-based containers, and every container's limits.

A container whose plan names an image (`ContainerPlan.image`, the image id after
`linkd.runtime.images.image_store.resolve_stack`) gets an overlayfs root, mounted by the shim inside
the container's own mount namespace (so the host's mount table never shows it):

    lowerdir  the image's layers in the store, top first (read-only, shared)
    upperdir  <container dir>/rootfs/upper   the container's writes
    workdir   <container dir>/rootfs/work    overlayfs's scratch space
    merged    <container dir>/rootfs/merged  the mount point
    (rootfs/ is 0700: only root reaches the writable layer; the store's layers/ is too)

The container directory (/run/linkd/stacks/<stack>/containers/<name>/) is removed by
`down`, and the writable layer with it; a restarted container keeps its writes, as with
Docker.

Two runtimes run it, chosen per service by `x-linkd: runtime: runc | linkd`, else by
$LINKD_RUNTIME (`runc`, `linkd` or `auto`), else `auto`: runc when it is installed.

- linkd (its own launcher): the shim's init mounts the overlay, binds /etc/hosts,
  /etc/hostname, /etc/resolv.conf, /run/linkd, a few devices, /sys and the container's
  cgroups into it, and pivot_roots (shim_mounts.py `image_root`).
- runc: the shim's init mounts the overlay and becomes `runc run` on an OCI bundle
  (<container dir>/bundle/config.json) that joins the network namespace linkd created
  (/run/netns/<netns>) and inherits the shim's UTS, IPC and PID namespaces, so the
  shim's init stays PID 1 and forwards signals to runc, which forwards them to the
  command: both ways, the command is PID 2 and stops on SIGTERM. runc's state lives in
  <container dir>/runc; its cgroups are `linkd/<stack>/<container>` under linkd's own
  cgroup (a relative cgroupsPath), with the limits as OCI resources.

Limits (`ContainerPlan.limits`) for the own launcher and host commands: cgroups made by
`linkd.runtime.kernel.cgroups`, joined by the shim's init before it starts anything.

Confinement (`ContainerPlan.security`, `linkd.runtime.containers.confine`): the bundle's `process`
and `linux` parts for runc, `confine.marshal` beside the spec for the shim (every
container, host commands too); the container directory is made private and its bindings
the container user's (`store.protect_container_dir`).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

from linkd.core.plan import ContainerPlan
from linkd.errors import ContainerError
from linkd.runtime.containers import confine
from linkd.runtime.containers.process import ProcessSpec
from linkd.runtime.images import beneath
from linkd.runtime.images.image_store import ImageStore
from linkd.runtime.kernel import cgroups
from linkd.runtime.stack.store import protect_container_dir

RUNTIME_ENV = "LINKD_RUNTIME"
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def runtime_of(container: ContainerPlan) -> str:
    """"runc" or "linkd": what runs `container`'s image."""
    choice = container.runtime or os.environ.get(RUNTIME_ENV) or "auto"
    if choice == "auto":
        return "runc" if shutil.which("runc") else "linkd"
    if choice not in ("runc", "linkd"):
        raise ContainerError(f"${RUNTIME_ENV}={choice!r}: expected runc, linkd or auto")
    if choice == "runc" and not shutil.which("runc"):
        raise ContainerError(
            f"container {container.name}: runtime runc is not installed (apt-get install "
            "runc), or choose linkd's own launcher: x-linkd: {runtime: linkd}"
        )
    return choice


def prepare(spec: ProcessSpec, container: ContainerPlan, stack: str) -> ProcessSpec:
    """`spec` with `container`'s limits and, if it runs an image, its root filesystem;
    its confinement goes beside the spec for the shim (linkd.runtime.containers.confine)."""
    os.makedirs(spec.run_dir, mode=0o700, exist_ok=True)
    settings = confine.for_shim(container.security, image=container.image is not None)
    confine.write_for_shim(spec.run_dir, settings)
    if container.image is None:
        protect_container_dir(Path(spec.run_dir), *confine.host_owner(container.user))
        return replace(spec, cgroups=cgroups.create(stack, container.name, container.limits))
    store = ImageStore()
    image = store.get(container.image)
    lower = tuple(str(d) for d in image.layer_dirs(store.root))
    try:  # the bindings are the container user's (issue 14 §5)
        uid, gid, _ = resolve_user([Path(d) for d in lower], container.user)
    except ContainerError:
        uid = gid = 0  # the start fails on the unknown user anyway
    protect_container_dir(Path(spec.run_dir), uid, gid)
    run_dir = Path(spec.run_dir)
    # The writable layer holds what container root writes, setuid files included: only
    # root may reach it (issue 14). rootfs/ (upper, work, merged) is 0700, not upper/
    # itself: overlayfs shows upper's own mode as the container's `/`.
    os.makedirs(run_dir, mode=0o700, exist_ok=True)
    (run_dir / "rootfs").mkdir(mode=0o700, exist_ok=True)
    os.chmod(run_dir / "rootfs", 0o700, follow_symlinks=False)
    spec = replace(spec, rootfs_lower=lower, rootfs_dir=str(run_dir / "rootfs"), keep_dirs=())
    if runtime_of(container) == "linkd":
        return replace(spec, cgroups=cgroups.create(stack, container.name, container.limits))
    return _runc(spec, container, stack, [Path(d) for d in lower])


def _runc(spec: ProcessSpec, container: ContainerPlan, stack: str,
          layers: list[Path]) -> ProcessSpec:
    run_dir = Path(spec.run_dir)
    bundle = run_dir / "bundle"
    bundle.mkdir(parents=True, exist_ok=True)
    state = run_dir / "runc"
    container_id = f"linkd-{stack}-{container.name}"
    shutil.rmtree(state / container_id, ignore_errors=True)  # a killed run's state
    config = bundle_config(spec, container, stack, layers)
    (bundle / "config.json").write_text(json.dumps(config, indent=1))
    runc = shutil.which("runc") or "runc"
    return replace(
        spec,
        argv=(runc, "--root", str(state), "run", "--bundle", str(bundle), container_id),
        env=(("PATH", HOST_PATH),),
        user=None,
        working_dir=None,
        bind_files=(),
        bind_dirs=(),
        rootfs_pivot=False,
    )


def bundle_config(spec: ProcessSpec, container: ContainerPlan, stack: str,
                  layers: list[Path]) -> dict[str, object]:
    """The OCI runtime config (runtime-spec config.md) of an image container."""
    uid, gid, groups = resolve_user(layers, container.user)
    groups += [g for g in group_ids(layers, container.group_add) if g not in groups]
    security = container.security
    ro = [] if security.privileged else ["ro"]  # privileged: a writable /sys, as Docker's
    mounts: list[dict[str, object]] = [
        {"destination": "/proc", "type": "proc", "source": "proc",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "noexec", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", *ro]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", *ro]},
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "nodev", "mode=1777"]},
    ]
    for source, target in (*spec.bind_files, *spec.bind_dirs):
        mounts.append({"destination": target, "type": "bind", "source": source,
                       "options": ["rbind", "ro", "nosuid"]})
    users: list[tuple[str, dict[str, object]]] = [
        (target, {"destination": target, "type": "tmpfs", "source": "tmpfs",
                  "options": [*flags, *filter(None, data.split(","))]})
        for target, flags, data in container.tmpfs]
    for kind, source, target, read_only, _seed, data in spec.mounts:
        options = ["ro" if read_only else "rw"]
        if kind == "tmpfs":
            users.append((target, {"destination": target, "type": "tmpfs",
                                   "source": "tmpfs", "options": [
                                       "nosuid", "nodev", *options,
                                       *filter(None, data.split(","))]}))
        else:
            users.append((target, {"destination": target, "type": "bind",
                                        "source": source, "options": ["rbind", *options]}))
    # A mount inside another after it, whichever key gave it (Docker sorts them so too).
    mounts.extend(m for _, m in sorted(users, key=lambda u: (u[0].count("/"), u[0])))
    resources: dict[str, object] = {}
    limits = container.limits
    if limits.memory is not None:
        resources["memory"] = {"limit": limits.memory}
    if limits.cpus is not None:
        resources["cpu"] = {"quota": round(limits.cpus * cgroups.PERIOD_US),
                            "period": cgroups.PERIOD_US}
    if limits.pids is not None:
        resources["pids"] = {"limit": limits.pids}
    # Confinement (linkd.runtime.containers.confine): capabilities, no_new_privs, seccomp, masked
    # and read-only paths, the devices cgroup and `devices:`.
    linux = confine.oci_linux(security)
    resources["devices"] = linux.pop("resources_devices")
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": uid, "gid": gid, "additionalGids": groups},
            "args": list(container.argv),
            "env": [f"{k}={v}" for k, v in container.env],
            "cwd": container.working_dir or "/",
            "rlimits": [{"type": f"RLIMIT_{name.upper()}", "soft": _rlimit(soft),
                         "hard": _rlimit(hard)} for name, soft, hard in limits.ulimits],
            **confine.oci_process(security),
        },
        "root": {"path": str(Path(spec.rootfs_dir or "") / "merged"),
                 "readonly": security.read_only},
        "mounts": mounts,
        "linux": {
            # Relative: under the cgroup runc runs in (linkd's), in every hierarchy.
            "cgroupsPath": f"{cgroups.PREFIX}/{stack}/{container.name}",
            "resources": resources,
            # UTS, IPC and PID are the shim's (it made them); mount, network and cgroup
            # are the container's own.
            "namespaces": [{"type": "mount"}, *_network_namespace(container.netns),
                           {"type": "cgroup"}],
            **linux,
        },
    }


def _network_namespace(netns: str) -> list[dict[str, str]]:
    """The container's network namespace, or none to join: network_mode host runs in
    runc's, the host's."""
    return [{"type": "network", "path": f"/run/netns/{netns}"}] if netns else []


def _rlimit(value: int) -> int:
    """An rlimit as runc takes it: unsigned, -1 (unlimited) as RLIM_INFINITY."""
    return (1 << 64) - 1 if value == -1 else value


def resolve_user(layers: list[Path], user: str | None) -> tuple[int, int, list[int]]:
    """(uid, gid, extra gids) of "uid", "uid:gid", "name" or "name:group", from the
    image's /etc/passwd and /etc/group (runc takes numbers only), as the shim does."""
    if not user:
        return 0, 0, []
    name, _, group = user.partition(":")
    passwd = _table(layers, "etc/passwd")
    groups = _table(layers, "etc/group")
    entry = next((e for e in passwd if e[0] == name or (name.isdigit() and e[2] == name)),
                 None)
    if entry is None and not name.isdigit():
        raise ContainerError(f"user {name!r} not found in the image's /etc/passwd")
    uid = int(entry[2]) if entry else int(name)
    gid = int(entry[3]) if entry and entry[3].isdigit() else 0
    if group:
        found = next((g for g in groups if g[0] == group), None)
        if group.isdigit():
            gid = int(group)
        elif found is not None and found[2].isdigit():
            gid = int(found[2])
        else:
            raise ContainerError(f"group {group!r} not found in the image's /etc/group")
    extra = [int(g[2]) for g in groups
             if entry and len(g) > 3 and entry[0] in g[3].split(",") and g[2].isdigit()]
    return uid, gid, sorted(set(extra) - {gid})


_TABLE_LIMIT = 8 << 20  # bytes of an image's /etc/passwd or /etc/group


def group_ids(layers: list[Path], names: tuple[str, ...]) -> list[int]:
    """`group_add` as gids: numbers as they are, names from the image's /etc/group."""
    if not names:
        return []
    table = _table(layers, "etc/group")
    found = []
    for name in names:
        if name.isdigit():
            found.append(int(name))
            continue
        entry = next((g for g in table if g[0] == name and len(g) > 2 and g[2].isdigit()),
                     None)
        if entry is None:
            raise ContainerError(f"group_add: group {name!r} not found in the image's "
                                 "/etc/group")
        found.append(int(entry[2]))
    return found


def _table(layers: list[Path], path: str) -> list[list[str]]:
    """The lines of the image's `path`, split at ':', as the merged image shows it:
    read beneath the layers by descriptor, symlinks resolved inside the image
    (`beneath.read_merged`), so an image whose `etc` is a symlink to `/etc` reads its own
    /etc (missing), never the host's (issue 14)."""
    try:
        data = beneath.read_merged(layers, path, _TABLE_LIMIT)
    except OSError as exc:
        raise ContainerError(f"reading /{path} of the image: {exc.strerror or exc}") from None
    if data is None:
        return []
    return [line.split(":") for line in data.decode(errors="replace").splitlines()
            if line and not line.startswith("#")]
