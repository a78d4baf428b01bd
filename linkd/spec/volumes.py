"""A stack's volumes: the top-level `volumes:` read into `Volume`s, a service's `volumes:`
(Compose's short `SOURCE:TARGET:MODE` and long syntax) and `volumes_from:` into `Mount`s.

Paths are settled here, once, the way Compose settles them before anything runs: a
relative bind source starts in the stack file's directory, `~` is $HOME, targets are
absolute and normalized. What a source is decides its kind, as in Compose's short syntax:
a path (`.`, `/`, `~`) is a bind mount, anything else a volume the top level declares, no
source an anonymous volume. Where the volumes are kept, and what mounts them, is the
runtime's (linkd.runtime.volumes); nothing here looks at the host.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import replace

from linkd.core.model import Dependency, Mount, MountKind, Service, Volume
from linkd.spec.nodes import At, Reader, given
from linkd.spec.values import Bad, quote

_VOLUME_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")  # Docker's rule
# A mount in /proc would cover what the kernel says about the container's own processes
# (Docker refuses it too); /sys may be covered, as monitoring agents do with the host's.
_KERNEL_TARGETS = ("/proc",)
# Short-syntax modes: ro/rw; SELinux relabelling (z, Z: no SELinux labels here, nothing
# to do); macOS consistency and propagation flags (bind mounts here are private).
_MODES = {"ro", "rw", "z", "Z", "nocopy", "consistent", "cached", "delegated",
          "private", "rprivate", "shared", "rshared", "slave", "rslave"}
_LONG_KEYS = ("type", "source", "target", "read_only", "bind", "volume", "tmpfs",
              "consistency")
_TOP_KEYS = ("name", "external", "driver", "driver_opts", "labels")


class VolumeReader:
    """Reads the top-level `volumes:` first, then each service's mounts against it."""

    def __init__(self, r: Reader, stack: str, directory: str, home: str | None) -> None:
        # `home`: what `~` in a bind source is ($HOME)
        self.r = r
        self.stack = stack
        self.directory = directory or "/"
        self.home = home
        self.declared: dict[str, Volume] = {}
        # service -> its `volumes_from` entries (source, read_only, where), resolved once
        # every service is read (`with_volumes_from`)
        self.froms: dict[str, list[tuple[str, bool | None, At]]] = {}

    # --- the top level ---

    def volumes(self, at: At | None) -> tuple[Volume, ...]:
        if at is None or at.is_null:
            return ()
        for key, child in self.r.pairs(at) or []:
            volume = self._volume(key, child)
            if volume is not None:
                self.declared[key] = volume
        return tuple(self.declared.values())

    def _volume(self, key: str, at: At) -> Volume | None:
        r = self.r
        f = {} if at.is_null else r.fields(at, _TOP_KEYS)
        if f is None:
            return None
        external = False
        name = r.text(f["name"]) if given(f, "name") else None
        if ext := given(f, "external"):
            if ext.is_mapping:  # the old form, external: {name: NAME}
                inner = r.fields(ext, ("name",)) or {}
                external = True
                if old := given(inner, "name"):
                    name = r.text(old)
            else:
                external = bool(r.boolean(ext))
        if driver := given(f, "driver"):
            text = r.text(driver)
            if text not in (None, "local"):
                r.warn(driver, f"volume driver {quote(text or '')} is not available: linkd "
                               "keeps the volume as a directory of its own (the local driver)")
        device = self._driver_opts(given(f, "driver_opts"))
        labels: tuple[tuple[str, str], ...] = ()
        if lab := given(f, "labels"):
            labels = _labels(r, lab)
        if external and (device is not None or given(f, "driver_opts")):
            r.fail(at, f"volume {key} is external: linkd does not create it, so it takes no "
                       "driver_opts; drop them, or drop external")
        real = name if name is not None else key if external else f"{self.stack}_{key}"
        if not _VOLUME_NAME.fullmatch(real):
            r.fail(at, f"volume name {quote(real)} is not a valid volume name: letters, "
                       'digits, "_", "." and "-", starting with a letter or digit')
            return None
        return Volume(key, real, external, device, labels)

    def _driver_opts(self, at: At | None) -> str | None:
        """The local driver's bind form, {type: none, o: bind, device: PATH}: the volume is
        that host directory. Other driver options (nfs, tmpfs, ...) mount file systems
        linkd does not mount for volumes: warned, and the volume is a directory."""
        if at is None or at.is_null:
            return None
        opts = {key: self.r.raw(child) or "" for key, child in self.r.pairs(at) or []}
        if "bind" in opts.get("o", "").split(",") and opts.get("device"):
            try:
                return self._host_path(opts["device"])
            except Bad as exc:
                self.r.fail(at, f"device: {exc}")
                return None
        self.r.warn(at, "driver_opts other than {type: none, o: bind, device: PATH} are not "
                        "applied: linkd keeps the volume as a directory of its own")
        return None

    # --- a service's mounts ---

    def mounts(self, service: str, at: At | None) -> tuple[Mount, ...]:
        if at is None or at.is_null:
            return ()
        mounts: list[Mount] = []
        targets: dict[str, At] = {}
        for item in self.r.items(at) or []:
            mount = self._long(item) if item.is_mapping else self._short(item)
            if mount is None:
                continue
            if mount.target in targets:
                self.r.fail(item, f"service {service} mounts two things at {mount.target} "
                                  f"(also line {targets[mount.target].line}); keep one")
                continue
            targets[mount.target] = item
            mounts.append(mount)
        return tuple(mounts)

    def _short(self, at: At) -> Mount | None:
        text = self.r.text(at)
        if text is None:
            return None
        parts = text.split(":")
        if len(parts) > 3 or not all(parts):
            self.r.fail(at, f"expected [SOURCE:]TARGET[:MODE], got {quote(text)}")
            return None
        if len(parts) == 1:
            return self._checked(at, Mount("volume", parts[0]))
        source, target = parts[0], parts[1]
        modes = parts[2].split(",") if len(parts) == 3 else []
        # "roz", "rwZ": Docker's parser takes a relabel flag written onto ro/rw too.
        modes = [half for m in modes for half in
                 ((m[:2], m[2:]) if m[:2] in ("ro", "rw") and m[2:] in ("z", "Z") else (m,))]
        unknown = [m for m in modes if m not in _MODES]
        if unknown:
            self.r.fail(at, f"unknown volume mode {quote(unknown[0])} in {quote(text)}; "
                            "expected ro or rw (z, Z, nocopy and the consistency flags are "
                            "accepted)")
            return None
        read_only = "ro" in modes
        if _is_path(source):
            return self._checked(at, Mount("bind", target, source, read_only,
                                           create_host_path=True))
        return self._checked(at, Mount("volume", target, source, read_only,
                                       nocopy="nocopy" in modes))

    def _long(self, at: At) -> Mount | None:
        r = self.r
        f = r.fields(at, _LONG_KEYS)
        if f is None:
            return None
        kind = r.text(f["type"]) if given(f, "type") else None
        if kind is None:
            r.fail(at, 'a volume in the long syntax needs "type": volume, bind or tmpfs')
            return None
        if kind not in ("volume", "bind", "tmpfs"):
            why = {"npipe": "named pipes are Windows'",
                   "cluster": "cluster volumes are Swarm's",
                   "image": "linkd does not mount images as volumes"}.get(kind)
            r.fail(f["type"], f"volume type {quote(kind)} is not supported"
                              f"{': ' + why if why else ''}; linkd mounts volume, bind and "
                              "tmpfs")
            return None
        target = r.text(f["target"]) if given(f, "target") else None
        if target is None:
            r.fail(at, 'a volume in the long syntax needs "target", the path in the container')
            return None
        source = r.text(f["source"]) if given(f, "source") else ""
        read_only = bool(r.boolean(f["read_only"])) if given(f, "read_only") else False
        mount_kind: MountKind = "bind" if kind == "bind" else "tmpfs" if kind == "tmpfs" \
            else "volume"
        mount = Mount(mount_kind, target, source or "", read_only)
        if kind == "bind":
            if not source:
                r.fail(at, 'a bind mount needs "source", the host path')
                return None
            opts = r.fields(f["bind"], ("propagation", "create_host_path", "selinux")) \
                if given(f, "bind") else {}
            create = given(opts or {}, "create_host_path")
            mount = replace(mount, create_host_path=bool(create and r.boolean(create)))
        elif kind == "volume":
            opts = r.fields(f["volume"], ("nocopy", "subpath", "labels")) \
                if given(f, "volume") else {}
            if sub := given(opts or {}, "subpath"):
                r.fail(sub, "volume subpath is not supported by linkd; mount the whole "
                            "volume, or bind-mount the directory")
            nocopy = given(opts or {}, "nocopy")
            mount = replace(mount, nocopy=bool(nocopy and r.boolean(nocopy)))
        else:
            if source:
                r.fail(f["source"], "a tmpfs has no source; drop it")
            mount = replace(mount, data=self._tmpfs_data(given(f, "tmpfs")))
        return self._checked(at, mount)

    def _tmpfs_data(self, at: At | None) -> str:
        if at is None or at.is_null:
            return ""
        opts = self.r.fields(at, ("size", "mode"))
        data = []
        if size := given(opts or {}, "size"):
            text = self.r.raw(size)
            if text is not None:
                data.append(f"size={text}")
        if mode := given(opts or {}, "mode"):
            # The digits as written are the octal mode (1777, 0755, 0o755).
            text = (self.r.raw(mode) or "").removeprefix("0o")
            if re.fullmatch(r"[0-7]{1,4}", text):
                data.append(f"mode={text}")
            else:
                self.r.fail(mode, f"expected an octal file mode (1777, 0755), got {quote(text)}")
        return ",".join(data)

    def _checked(self, at: At, mount: Mount) -> Mount | None:
        """`mount` with its paths settled, or None (a problem recorded)."""
        try:
            target = check_target(mount.target)
            source = mount.source
            if mount.kind == "bind":
                source = self._host_path(source)
            elif mount.kind == "volume" and source:
                volume = self.declared.get(source)
                if volume is None:
                    declared = ", ".join(sorted(self.declared)) or "none"
                    raise Bad(f"volume {quote(source)} is not declared in the top-level "
                              f"volumes: (declared: {declared}); add it there, or write a "
                              "path (./dir, /dir) for a bind mount")
        except Bad as exc:
            self.r.fail(at, str(exc))
            return None
        return replace(mount, target=target, source=source)

    def _host_path(self, source: str) -> str:
        if source == "~" or source.startswith("~/"):
            if not self.home:
                raise Bad(f"{quote(source)} starts with ~, and HOME is not set")
            source = self.home + source[1:]
        return posixpath.normpath(posixpath.join(self.directory, source))

    # --- volumes_from ---

    def read_from(self, service: str, at: At | None) -> tuple[Dependency, ...]:
        """Remember `service`'s `volumes_from:`; the services it names start first."""
        if at is None or at.is_null:
            return ()
        entries = self.froms.setdefault(service, [])
        for item in self.r.items(at) or []:
            text = self.r.text(item)
            if text is None:
                continue
            head, _, rest = text.partition(":")
            if head == "container":
                name, _, mode = rest.partition(":")
            else:
                name, mode = head, rest
            if mode not in ("", "ro", "rw") or not name:
                self.r.fail(item, f"expected SERVICE[:ro|rw] or container:NAME[:ro|rw], got "
                                  f"{quote(text)}")
                continue
            entries.append((name, None if not mode else mode == "ro", item))
        return ()

    def with_volumes_from(self, services: list[Service]) -> list[Service]:
        """`services` with the mounts their `volumes_from:` names copied in (after their
        own, which win at the same target), and a dependency on each source. A source is
        a service of the stack or one of its containers (`container:NAME`): a service's
        first container is the one whose anonymous volumes are shared, as with Docker."""
        by_container = {s.container(1): s for s in services} | {s.name: s for s in services}
        done: dict[str, Service] = {}

        def resolve(service: Service, seen: tuple[str, ...]) -> Service:
            if service.name in done:
                return done[service.name]
            mounts = list(service.volumes)
            taken = {m.target for m in mounts}
            depends = list(service.depends_on)
            for name, read_only, at in self.froms.get(service.name, []):
                source = by_container.get(name)
                if source is None or source.name == service.name:
                    self.r.fail(at, f"volumes_from: {quote(name)} is not another service or "
                                    "container of this stack")
                    continue
                if source.name in seen:
                    self.r.fail(at, f"volumes_from of {service.name} goes round to itself "
                                    f"through {source.name}")
                    continue
                shared = resolve(source, (*seen, service.name))
                for mount in shared.volumes:
                    if mount.kind == "tmpfs" or mount.target in taken:  # not shareable
                        continue
                    taken.add(mount.target)
                    owner = mount.owner or (source.container(1) if mount.kind == "volume"
                                            and not mount.source else "")
                    mounts.append(replace(mount, owner=owner, read_only=mount.read_only
                                          if read_only is None else read_only))
                if not any(d.service == source.name for d in depends):
                    depends.append(Dependency(source.name))
            result = replace(service, volumes=tuple(mounts), depends_on=tuple(depends))
            done[service.name] = result
            return result

        return [resolve(s, ()) for s in services]


def check_target(target: str) -> str:
    """A mount's target: an absolute path other than /, and not in /proc."""
    if not target.startswith("/"):
        raise Bad(f"the target {quote(target)} is not an absolute path; write where in the "
                  "container it goes, from /")
    path = posixpath.normpath(target)
    if path.startswith("//"):
        path = "/" + path.lstrip("/")
    if path == "/":
        raise Bad("a volume cannot be mounted at /, the container's root")
    if any(path == k or path.startswith(k + "/") for k in _KERNEL_TARGETS):
        raise Bad(f"the target {path} is inside /proc, which shows the container's own "
                  "processes; mount it elsewhere (a host's /proc goes at /host/proc, say)")
    return path


def _is_path(source: str) -> bool:
    return source.startswith((".", "/", "~"))


def _labels(r: Reader, at: At) -> tuple[tuple[str, str], ...]:
    if at.is_mapping:
        return tuple((k, "" if c.is_null else r.raw(c) or "") for k, c in r.pairs(at) or [])
    pairs = []
    for item in r.items(at) or []:
        if (text := r.text(item)) is not None:
            key, _, value = text.partition("=")
            pairs.append((key, value))
    return tuple(pairs)

