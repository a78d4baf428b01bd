"""`linkd volume create|ls|inspect|rm|prune` and `down -v`: the volume store
(linkd.runtime.volumes) from the command line.

Its arguments are declared in linkd.cli.main, which imports this module only when a
`volume` command (or `down -v`) runs. A volume is in use while a stack that mounts it is
up (its state file names it), stopped containers included, as Docker counts them.
"""

from __future__ import annotations

import argparse
import json
import sys

from linkd.errors import ConflictError, LinkdError, NotFoundError, UsageError
from linkd.runtime.stack import store
from linkd.runtime.volumes import mounts
from linkd.runtime.volumes.store import StoredVolume, VolumeStore


def _users(name: str) -> list[str]:
    return mounts.users(name, store.plans())


def cmd_create(args: argparse.Namespace) -> int:
    labels = []
    for label in args.label:
        key, _, value = label.partition("=")
        if not key:
            raise UsageError(f"--label {label!r}: expected KEY=VALUE")
        labels.append((key, value))
    print(VolumeStore().create(args.name, tuple(labels)).name)
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    wanted = _filters(args.filter)
    volumes = [v for v in VolumeStore().volumes() if _matches(v, wanted)]
    if args.quiet:
        for volume in volumes:
            print(volume.name)
        return 0
    rows = [("VOLUME NAME", "STACK", "KIND")]
    rows += [(v.name, v.stack or "-", "anonymous" if v.anonymous else
              "bind" if v.device else "named") for v in volumes]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _filters(given: list[str]) -> dict[str, str]:
    wanted = {}
    for item in given:
        key, found, value = item.partition("=")
        if not found or key not in ("dangling", "stack", "name", "label"):
            raise UsageError(f"--filter {item!r}: expected dangling=true|false, stack=NAME, "
                             "name=TEXT or label=KEY[=VALUE]")
        wanted[key] = value
    return wanted


def _matches(volume: StoredVolume, wanted: dict[str, str]) -> bool:
    if "dangling" in wanted:
        in_use = bool(_users(volume.name))
        if in_use == (wanted["dangling"].lower() in ("true", "1")):
            return False
    if "stack" in wanted and volume.stack != wanted["stack"]:
        return False
    if "name" in wanted and wanted["name"] not in volume.name:
        return False
    if "label" in wanted:
        key, found, value = wanted["label"].partition("=")
        labels = dict(volume.labels)
        if key not in labels or (found and labels[key] != value):
            return False
    return True


def cmd_inspect(args: argparse.Namespace) -> int:
    volumes = VolumeStore()
    found, missing = [], []
    for name in args.name:
        try:
            volume = volumes.get(name)
        except NotFoundError:
            missing.append(name)
            continue
        found.append({**volume.as_dict(), "used_by": _users(name)})
    print(json.dumps(found, indent=2))
    if missing:
        raise NotFoundError(f"no such volume: {', '.join(missing)}")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    volumes = VolumeStore()
    failed = []
    for name in args.name:
        try:
            volumes.remove(name, _users(name))
        except NotFoundError:
            if not args.force:
                failed.append(f"no such volume: {name}")
            continue
        except ConflictError as exc:
            failed.append(str(exc))
            continue
        print(name)
    if failed:
        raise LinkdError("\n".join(failed))
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    """Docker's rule: the anonymous volumes no stack mounts; with --all, named ones too."""
    if not args.force and sys.stdin.isatty():
        what = "all volumes" if args.all else "anonymous volumes"
        answer = input(f"This removes {what} that no stack that is up mounts. Go on? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            return 0
    volumes = VolumeStore()
    plans = store.plans()
    for volume in volumes.volumes():
        if (volume.anonymous or args.all) and not mounts.users(volume.name, plans):
            volumes.remove(volume.name, [])
            print(f"removed {volume.name}")
    return 0


def remove_stack_volumes(stack: str) -> list[str]:
    """`down -v`: the volumes `stack` made (its named and anonymous ones; never an
    external one), unless another stack that is up mounts one. Returns what was kept."""
    volumes = VolumeStore()
    plans = store.plans()
    kept = []
    for volume in volumes.volumes():
        if volume.stack != stack:
            continue
        users = mounts.users(volume.name, plans)
        if users:
            kept.append(f"volume {volume.name} is kept: {', '.join(users)} use it")
            continue
        volumes.remove(volume.name, [])
        print(f"volume {volume.name} removed")
    return kept
