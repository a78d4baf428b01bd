"""Where an image load reads from, and what it will load: the sources and the load's plan.

A `Source` is the files of what `linkd image load` was given, by normalized relative
name: an OCI image layout directory, or an archive (an OCI layout tarred, or `docker
save`'s `manifest.json` + layer tars), read with the bounded tar parser of
`linkd.runtime.images.layers`. Symlinks in a directory are not followed; links in an
archive (`docker save` before 25 links a layer shared by two images) name members of it.

`plan_oci` and `plan_save` read the documents (`linkd.core.image_format` says what each
means) and decide what to load: the config, verified against its digest, and each layer
by member, blob digest and diff_id, bottom first, with the name the image is stored
under. A blob no manifest refers to is refused. Nothing is unpacked here: the store
(`linkd.runtime.images.image_store`) verifies and unpacks the layers of a plan.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from linkd.core import image_format as fmt
from linkd.core import layer_rules
from linkd.core.image_format import Descriptor, ImageConfig
from linkd.errors import ImageError, NotFoundError
from linkd.runtime.images.layers import BoundedTarInfo, TarRefused, check_digest

_JSON_LIMIT = 8 << 20  # manifests and configs are small; refuse to read more


# -- reading sources ------------------------------------------------------------------


class Source:
    """Files of a layout directory or an archive, by normalized relative name."""

    label: str

    def names(self) -> set[str]:
        raise NotImplementedError

    def open(self, name: str) -> IO[bytes]:
        raise NotImplementedError

    def size(self, name: str) -> int:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def read(self, name: str, entry: str) -> bytes:
        if name not in self.names():
            raise ImageError(self.label, entry, "missing blob", f"{name} is not in the image")
        with self.open(name) as f:
            data = f.read(_JSON_LIMIT + 1)
        if len(data) > _JSON_LIMIT:
            raise ImageError(self.label, entry, "size", f"{name} is larger than 8 MiB")
        return data


class _DirSource(Source):
    def __init__(self, path: Path, label: str) -> None:
        self.path = path
        self.label = label
        self._names = {
            str(p.relative_to(path)) for p in path.rglob("*") if p.is_file() and not p.is_symlink()
        }

    def names(self) -> set[str]:
        return self._names

    def open(self, name: str) -> IO[bytes]:
        fd = os.open(self.path / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        return os.fdopen(fd, "rb")

    def size(self, name: str) -> int:
        return os.stat(self.path / name, follow_symlinks=False).st_size


class _TarSource(Source):
    def __init__(self, path: Path, label: str, limits: layer_rules.Limits) -> None:
        self.label = label
        try:
            # The bounded parser: an archive's extended headers are held to a size too.
            self.tar = tarfile.open(path, "r:*", tarinfo=BoundedTarInfo)  # noqa: SIM115
            listed: list[tarfile.TarInfo] = []
            while (member := self.tar.next()) is not None:
                listed.append(member)
                if len(listed) > limits.entries:
                    raise layer_rules.over_limit(label, str(path), "entries",
                                                 "the archive holds at least", len(listed),
                                                 limits)
        except TarRefused as exc:
            raise ImageError(label, str(path), exc.rule, exc.detail) from None
        except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
            raise ImageError(label, str(path), "format", f"not a tar archive: {exc}") from None
        self.members: dict[str, tarfile.TarInfo] = {}
        links: dict[str, str] = {}
        for m in listed:
            name = fmt.archive_member(label, m.name)
            if m.isfile():
                self.members[name] = m
            elif m.issym() or m.islnk():
                # `docker save` (before 25) links a layer shared by two images.
                base = os.path.dirname(name) if m.issym() else ""
                target = fmt.archive_member(label, os.path.normpath(
                    os.path.join(base, m.linkname)) if m.issym() else m.linkname)
                links[name] = target
        for name, target in links.items():
            if target in self.members:
                self.members[name] = self.members[target]

    def names(self) -> set[str]:
        return set(self.members)

    def open(self, name: str) -> IO[bytes]:
        f = self.tar.extractfile(self.members[name])
        assert f is not None
        return f

    def size(self, name: str) -> int:
        return self.members[name].size

    def close(self) -> None:
        self.tar.close()


def open_source(path: Path, label: str, limits: layer_rules.Limits) -> Source:
    if path.is_dir():
        return _DirSource(path, label)
    if path.is_file():
        return _TarSource(path, label, limits)
    raise NotFoundError(f"image {label}: no such file or directory")


def _read_blob(src: Source, desc: Descriptor, entry: str) -> bytes:
    data = src.read(fmt.blob_path(desc.digest), entry)
    check_digest(src.label, entry, "sha256:" + hashlib.sha256(data).hexdigest(), desc.digest)
    if len(data) != desc.size:
        raise ImageError(src.label, entry, "size mismatch",
                         f"{len(data)} bytes, the descriptor says {desc.size}")
    return data


# -- the plan of a load: which config and layers, from which members -------------------


@dataclass(frozen=True)
class LoadLayer:
    """One layer to load: the source's member holding it ("": a pull found it in the
    store already), and what it must hash to."""

    member: str
    blob_digest: str | None  # None: a docker-save layer.tar named by no digest
    size: int | None
    diff_id: str


@dataclass(frozen=True)
class LoadPlan:
    """What one load stores: the config (as read, and parsed), its layers bottom first,
    and the name the image goes under."""

    config_raw: bytes
    config: ImageConfig
    layers: tuple[LoadLayer, ...]
    name: str


def plan_oci(src: Source, source: str, name: str | None, machine: fmt.Platform,
             stored: Callable[[str], bool] | None = None) -> LoadPlan:
    """The plan of an OCI layout: down its index to the manifest for `machine`. With
    `stored` (a pull, which fetches only the layers the store lacks), a layer whose blob
    is absent is taken from the store if `stored(diff_id)` says it is there."""
    label = src.label
    fmt.parse_layout_marker(label, src.read("oci-layout", "oci-layout"))
    index_raw = src.read("index.json", "index.json")
    descriptors = fmt.parse_index(label, "index.json", index_raw)
    # Which blobs are referenced at all (every manifest present, any platform).
    referenced: set[str] = set()
    todo = list(fmt.referenced_digests(index_raw))
    present = src.names()
    while todo:
        digest = todo.pop()
        if digest in referenced:
            continue
        referenced.add(digest)
        path = fmt.blob_path(digest)
        if path in present:
            with src.open(path) as f:
                head = f.read(1)
                if head == b"{":  # a JSON document (a manifest or an index)
                    todo += fmt.referenced_digests(head + f.read(_JSON_LIMIT))
    for blob in sorted(n for n in present if n.startswith("blobs/")):
        alg, _, hexpart = blob[len("blobs/"):].partition("/")
        if f"{alg}:{hexpart}" not in referenced:
            raise ImageError(label, blob, "extra blob", "no manifest refers to it")
    # Down the index to one manifest for this machine.
    chosen = fmt.select_manifest(label, descriptors, machine)
    entry = f"manifest {chosen.digest}"
    while chosen.media_type in fmt.INDEX_TYPES:
        nested = fmt.parse_index(label, entry, _read_blob(src, chosen, entry))
        chosen = fmt.select_manifest(label, nested, machine)
        entry = f"manifest {chosen.digest}"
    manifest = fmt.parse_manifest(label, entry, _read_blob(src, chosen, entry))
    config_raw = _read_blob(src, manifest.config, f"config {manifest.config.digest}")
    config = fmt.parse_config(label, f"config {manifest.config.digest}", config_raw)
    fmt.check_platform(label, f"config {manifest.config.digest}", config, machine)
    fmt.check_layers(label, config, len(manifest.layers))
    layers = []
    for desc, diff_id in zip(manifest.layers, config.diff_ids, strict=True):
        path = fmt.blob_path(desc.digest)
        if path not in present and stored is not None and stored(diff_id):
            layers.append(LoadLayer("", desc.digest, desc.size, diff_id))
            continue
        if path not in present:
            raise ImageError(label, f"layer {desc.digest}", "missing blob",
                             f"{path} is not in the image")
        layers.append(LoadLayer(path, desc.digest, desc.size, diff_id))
    ref = chosen.ref_name or next((d.ref_name for d in descriptors if d.ref_name), "")
    if name is None:
        full = ref if (":" in ref or "/" in ref) else ""
        name = fmt.default_name((full,), source, "" if full else ref)
    return LoadPlan(config_raw, config, tuple(layers), fmt.check_name(name))


def plan_save(src: Source, source: str, name: str | None, machine: fmt.Platform) -> LoadPlan:
    """The plan of a `docker save` archive: its one image, or the one tagged `name`."""
    label = src.label
    entries = fmt.parse_save_manifest(label, src.read("manifest.json", "manifest.json"))
    if name is not None:
        wanted = fmt.check_name(name)
        chosen = [e for e in entries if wanted in e.repo_tags] or (
            list(entries) if len(entries) == 1 else [])
    else:
        chosen = list(entries)
    if len(chosen) != 1:
        tags = ", ".join(t for e in entries for t in e.repo_tags) or "untagged"
        raise ImageError(label, "manifest.json", "one image",
                         f"the archive holds {len(entries)} images ({tags}): name one with --name")
    save = chosen[0]
    present = src.names()
    referenced = {m for e in entries for m in (e.config, *e.layers)}
    for member in sorted(present):
        if (member.startswith("blobs/") or member.endswith("/layer.tar")) and (
                member not in referenced):
            raise ImageError(label, member, "extra blob", "manifest.json does not refer to it")
    config_raw = src.read(save.config, save.config)
    stem = os.path.basename(save.config).removesuffix(".json")
    want = f"sha256:{stem}"
    fmt.check_digest(label, save.config, want)  # the file name must carry the digest
    check_digest(label, save.config, "sha256:" + hashlib.sha256(config_raw).hexdigest(), want)
    config = fmt.parse_config(label, save.config, config_raw)
    fmt.check_platform(label, save.config, config, machine)
    fmt.check_layers(label, config, len(save.layers))
    layers = []
    for member, diff_id in zip(save.layers, config.diff_ids, strict=True):
        if member not in present:
            raise ImageError(label, member, "missing blob", "the layer is not in the archive")
        blob = None
        if member.startswith("blobs/sha256/"):
            blob = fmt.check_digest(label, member, "sha256:" + member.rsplit("/", 1)[1])
        layers.append(LoadLayer(member, blob, None, diff_id))
    if name is None:
        name = fmt.default_name(save.repo_tags, source)
    return LoadPlan(config_raw, config, tuple(layers), fmt.check_name(name))
