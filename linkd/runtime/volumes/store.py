"""The volume store: one directory per volume, as Docker's local driver keeps them.

Layout (the root is /var/lib/linkd/volumes, or $LINKD_VOLUMES; 0700, root's alone, as
what containers write there is theirs):

    <root>/lock                  flock held while a volume is made or removed
    <root>/<name>/_data/         what the container sees at the mount's target
    <root>/<name>/volume.json    {name, created, stack, anonymous, device, labels}

A volume with a `device` (driver_opts {type: none, o: bind, device: PATH}) is that host
directory; its `_data` stays empty and removing the volume leaves the device alone, as
Docker's local driver does. Names follow Docker's rule, so a name is never a path.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from linkd.core.model import Volume
from linkd.errors import ConflictError, NotFoundError, UsageError
from linkd.runtime.stack.store import locked, write_atomic

DEFAULT_ROOT = "/var/lib/linkd/volumes"
ROOT_ENV = "LINKD_VOLUMES"
_RECORD = "volume.json"
_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")
_MAX_RECORD = 64 * 1024


def root() -> Path:
    return Path(os.environ.get(ROOT_ENV) or DEFAULT_ROOT)


@dataclass(frozen=True, slots=True)
class StoredVolume:
    name: str
    created: float  # wall-clock seconds
    stack: str  # the stack that made it ("" for `linkd volume create`, or unknown)
    anonymous: bool
    device: str | None
    labels: tuple[tuple[str, str], ...]
    path: Path  # what is mounted: `_data`, or the device

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created)),
            "stack": self.stack,
            "anonymous": self.anonymous,
            "device": self.device,
            "labels": dict(self.labels),
            "mountpoint": str(self.path),
        }


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise UsageError(f"{name!r} is not a volume name: letters, digits, '_', '.' and "
                         "'-', starting with a letter or digit, at least two characters")
    return name


class VolumeStore:
    def __init__(self, base: Path | None = None) -> None:
        self.root = base or root()

    def _dir(self, name: str) -> Path:
        return self.root / check_name(name)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        with locked(self.root / "lock"):
            yield

    def ensure(self, volume: Volume, stack: str) -> StoredVolume:
        """The volume, made if it is not there yet; an external one must be."""
        with contextlib.suppress(NotFoundError):
            return self.get(volume.name)
        if volume.external:
            raise NotFoundError(
                f"volume {volume.name} is external and does not exist: make it first "
                f"(linkd volume create {volume.name}), or drop external: true")
        with self._locked():
            with contextlib.suppress(NotFoundError):
                return self.get(volume.name)  # made meanwhile
            return self._create(volume.name, stack, anonymous=not volume.key,
                                device=volume.device, labels=volume.labels)

    def create(self, name: str, labels: tuple[tuple[str, str], ...] = ()) -> StoredVolume:
        """`linkd volume create`: a volume of no stack's (an external volume to be)."""
        with self._locked():
            with contextlib.suppress(NotFoundError):
                return self.get(name)
            return self._create(name, "", anonymous=False, device=None, labels=labels)

    def _create(self, name: str, stack: str, *, anonymous: bool, device: str | None,
                labels: tuple[tuple[str, str], ...]) -> StoredVolume:
        directory = self._dir(name)
        directory.mkdir(mode=0o700, exist_ok=True)
        (directory / "_data").mkdir(mode=0o755, exist_ok=True)
        record = {"name": name, "created": time.time(), "stack": stack,
                  "anonymous": anonymous, "device": device, "labels": dict(labels)}
        write_atomic(directory / _RECORD, json.dumps(record).encode(), 0o600)
        return self.get(name)

    def get(self, name: str) -> StoredVolume:
        directory = self._dir(name)
        try:
            with open(directory / _RECORD, "rb") as f:
                doc = json.loads(f.read(_MAX_RECORD))
        except FileNotFoundError:
            raise NotFoundError(f"no such volume: {name}") from None
        except (OSError, ValueError) as exc:
            raise NotFoundError(f"volume {name}: its record is unreadable ({exc}); remove "
                                f"{directory} by hand") from None
        device = doc.get("device")
        labels = doc.get("labels") or {}
        return StoredVolume(
            name=name,
            created=float(doc.get("created") or 0),
            stack=str(doc.get("stack") or ""),
            anonymous=bool(doc.get("anonymous")),
            device=str(device) if device else None,
            labels=tuple(sorted((str(k), str(v)) for k, v in labels.items())),
            path=Path(device) if device else directory / "_data",
        )

    def volumes(self) -> list[StoredVolume]:
        try:
            names = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            with contextlib.suppress(NotFoundError, UsageError):
                found.append(self.get(name))
        return found

    def remove(self, name: str, users: list[str]) -> None:
        """Remove the volume and its data; `users` are the containers that mount it now
        (a volume in use stays, as Docker's `volume rm` says)."""
        if users:
            raise ConflictError(f"volume {name} is in use by {', '.join(sorted(users))}: "
                                "stop them first (linkd down)")
        with self._locked():
            self.get(name)  # NotFoundError for a volume that is not there
            directory = self._dir(name)
            # The record first: a removal cut short leaves no volume that looks whole.
            (directory / _RECORD).unlink()
            shutil.rmtree(directory)
