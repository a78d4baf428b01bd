"""Image documents, parsed and checked without I/O: OCI index/manifest/config, `docker save`.

Everything here takes bytes or strings and returns frozen dataclasses, or raises
`ImageError` naming the image, the entry and the rule it breaks.
`linkd.runtime.images.image_store` does the reading and hashing and asks this module what
each document means; what a member of a layer tar means, and how much one load may
unpack, is `linkd.core.layer_rules`'.

Formats (OCI image-spec v1.1; Docker's image spec v1.2 for `docker save`):
- OCI image layout: `oci-layout` ({"imageLayoutVersion": "1.0.0"}), `index.json` (an
  image index), `blobs/<alg>/<hex>`. An index lists manifests (or nested indexes), each
  optionally with a `platform`; a manifest names one config blob and the layer blobs,
  bottom first; the config carries `rootfs.diff_ids` (the digests of the *uncompressed*
  layers) and the run settings (`config.Entrypoint`, `Cmd`, `Env`, ...).
- `docker save`: `manifest.json` is a list of {"Config", "RepoTags", "Layers"} whose
  paths point into the archive; layers are uncompressed tars whose sha256 are the
  config's diff_ids, and the config file is named after its own sha256.
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any

from linkd.core import reference
from linkd.errors import ImageError, ReferenceFormatError

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})

# Layer media type -> compression ("" = a plain tar).
LAYER_TYPES = {
    "application/vnd.oci.image.layer.v1.tar": "",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": "",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar": "",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "gzip",
}

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")

# uname -m -> the GOARCH names image platforms use (OCI image-spec, image-index.md).
_ARCH = {
    "x86_64": ("amd64", ""),
    "amd64": ("amd64", ""),
    "aarch64": ("arm64", ""),
    "arm64": ("arm64", ""),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i686": ("386", ""),
    "i386": ("386", ""),
    "ppc64le": ("ppc64le", ""),
    "s390x": ("s390x", ""),
    "riscv64": ("riscv64", ""),
}


def machine_platform(machine: str) -> Platform:
    """The image platform of a machine, from what `uname -m` prints."""
    arch, variant = _ARCH.get(machine, (machine, ""))
    return Platform("linux", arch, variant)


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    def runs_on(self, machine: Platform) -> bool:
        if (self.os, self.architecture) != (machine.os, machine.architecture):
            return False
        return not self.variant or not machine.variant or self.variant == machine.variant


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    ref_name: str = ""  # annotation org.opencontainers.image.ref.name


@dataclass(frozen=True)
class Manifest:
    config: Descriptor
    layers: tuple[Descriptor, ...]


@dataclass(frozen=True)
class Healthcheck:
    test: tuple[str, ...]
    interval_ns: int = 0
    timeout_ns: int = 0
    start_period_ns: int = 0
    retries: int = 0


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an image config linkd uses; `diff_ids` bottom layer first."""

    architecture: str
    os: str
    diff_ids: tuple[str, ...]
    variant: str = ""
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    env: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""
    exposed_ports: tuple[str, ...] = ()  # "80/tcp", as the config writes them
    stop_signal: str = ""
    healthcheck: Healthcheck | None = None
    labels: tuple[tuple[str, str], ...] = field(default=())
    volumes: tuple[str, ...] = ()  # VOLUME paths: each an anonymous volume unless mounted

    @property
    def platform(self) -> Platform:
        return Platform(self.os, self.architecture, self.variant)


@dataclass(frozen=True)
class SaveEntry:
    """One image of a `docker save` manifest.json; paths are archive member names."""

    config: str
    repo_tags: tuple[str, ...]
    layers: tuple[str, ...]


# -- digests and paths ----------------------------------------------------------------


def check_digest(image: str, entry: str, digest: object) -> str:
    """A sha256 digest in canonical form, or ImageError (only sha256 is accepted:
    image-spec descriptor.md makes it the one algorithm every implementation supports)."""
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise ImageError(image, entry, "digest", f"not a sha256 digest: {digest!r}")
    return digest


def blob_path(digest: str) -> str:
    """Where an OCI layout keeps a blob: `blobs/sha256/<hex>`."""
    alg, _, hexpart = digest.partition(":")
    return f"blobs/{alg}/{hexpart}"


def archive_member(image: str, name: str) -> str:
    """An archive member or manifest path, normalized (`./a//b` -> `a/b`); refuses
    absolute paths and `..`."""
    if name.startswith("/"):
        raise ImageError(image, name, "absolute path", "archive paths must be relative")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ImageError(image, name, "'..' in path", "archive paths may not climb out")
    return "/".join(parts)


# -- JSON documents -------------------------------------------------------------------


def _json(image: str, entry: str, data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ImageError(image, entry, "JSON", f"not valid JSON: {exc}") from None


def _obj(image: str, entry: str, value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ImageError(image, entry, "format", f"{what} must be an object")
    return value


def _strs(image: str, entry: str, value: Any, what: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ImageError(image, entry, "format", f"{what} must be a list of strings")
    return tuple(value)


def _descriptor(image: str, entry: str, value: Any) -> Descriptor:
    d = _obj(image, entry, value, "a descriptor")
    media_type = d.get("mediaType", "")
    size = d.get("size")
    if not isinstance(media_type, str) or not isinstance(size, int) or size < 0:
        raise ImageError(image, entry, "format", "a descriptor needs mediaType and size")
    platform = None
    p = d.get("platform")
    if isinstance(p, dict):
        platform = Platform(
            str(p.get("os", "")), str(p.get("architecture", "")), str(p.get("variant", ""))
        )
    annotations = d.get("annotations") or {}
    ref = annotations.get("org.opencontainers.image.ref.name", "") if isinstance(
        annotations, dict) else ""
    return Descriptor(
        media_type, check_digest(image, entry, d.get("digest")), size, platform, str(ref)
    )


def parse_layout_marker(image: str, data: bytes) -> None:
    doc = _obj(image, "oci-layout", _json(image, "oci-layout", data), "oci-layout")
    version = doc.get("imageLayoutVersion")
    if not isinstance(version, str) or not version.startswith("1."):
        raise ImageError(
            image, "oci-layout", "layout version", f"unsupported imageLayoutVersion {version!r}"
        )


def parse_index(image: str, entry: str, data: bytes) -> tuple[Descriptor, ...]:
    doc = _obj(image, entry, _json(image, entry, data), "an image index")
    manifests = doc.get("manifests")
    if not isinstance(manifests, list):
        raise ImageError(image, entry, "format", "an image index needs a manifests list")
    return tuple(_descriptor(image, entry, m) for m in manifests)


def parse_manifest(image: str, entry: str, data: bytes) -> Manifest:
    doc = _obj(image, entry, _json(image, entry, data), "a manifest")
    media_type = doc.get("mediaType", OCI_MANIFEST)
    if media_type not in MANIFEST_TYPES:
        raise ImageError(image, entry, "media type", f"not an image manifest: {media_type}")
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise ImageError(image, entry, "format", "a manifest needs a layers list")
    parsed = tuple(_descriptor(image, entry, layer) for layer in layers)
    for layer in parsed:
        if layer.media_type not in LAYER_TYPES:
            raise ImageError(
                image, f"{entry}: layer {layer.digest}", "media type",
                f"unsupported layer type {layer.media_type}",
            )
    return Manifest(_descriptor(image, entry, doc.get("config")), parsed)


def _ns(value: Any) -> int:
    return value if isinstance(value, int) and value > 0 else 0


MAX_IMAGE_VOLUMES = 64  # each is a directory linkd makes for every container of the image


def parse_config(image: str, entry: str, data: bytes) -> ImageConfig:
    doc = _obj(image, entry, _json(image, entry, data), "an image config")
    rootfs = _obj(image, entry, doc.get("rootfs"), "rootfs")
    if rootfs.get("type") != "layers":
        raise ImageError(image, entry, "format", "rootfs.type must be 'layers'")
    diff_ids = _strs(image, entry, rootfs.get("diff_ids"), "rootfs.diff_ids") or ()
    for d in diff_ids:
        check_digest(image, entry, d)
    c = doc.get("config") or {}
    c = _obj(image, entry, c, "config")
    health = None
    h = c.get("Healthcheck")
    if isinstance(h, dict) and h.get("Test"):
        health = Healthcheck(
            _strs(image, entry, h.get("Test"), "Healthcheck.Test") or (),
            _ns(h.get("Interval")), _ns(h.get("Timeout")), _ns(h.get("StartPeriod")),
            _ns(h.get("Retries")),
        )
    labels = c.get("Labels") or {}
    exposed = c.get("ExposedPorts") or {}
    volumes = c.get("Volumes") or {}
    if not isinstance(volumes, dict) or len(volumes) > MAX_IMAGE_VOLUMES:
        raise ImageError(image, entry, "format", "config.Volumes must be a mapping of at "
                         f"most {MAX_IMAGE_VOLUMES} paths")
    return ImageConfig(
        architecture=str(doc.get("architecture", "")),
        os=str(doc.get("os", "")),
        variant=str(doc.get("variant", "")),
        diff_ids=diff_ids,
        entrypoint=_strs(image, entry, c.get("Entrypoint"), "Entrypoint"),
        cmd=_strs(image, entry, c.get("Cmd"), "Cmd"),
        env=_strs(image, entry, c.get("Env"), "Env") or (),
        working_dir=str(c.get("WorkingDir") or ""),
        user=str(c.get("User") or ""),
        exposed_ports=tuple(sorted(exposed)) if isinstance(exposed, dict) else (),
        stop_signal=str(c.get("StopSignal") or ""),
        healthcheck=health,
        labels=tuple(sorted((str(k), str(v)) for k, v in labels.items()))
        if isinstance(labels, dict) else (),
        volumes=tuple(sorted(str(v) for v in volumes)),
    )


def parse_save_manifest(image: str, data: bytes) -> tuple[SaveEntry, ...]:
    doc = _json(image, "manifest.json", data)
    if not isinstance(doc, list) or not doc:
        raise ImageError(image, "manifest.json", "format", "must be a non-empty list")
    entries = []
    for item in doc:
        i = _obj(image, "manifest.json", item, "an entry")
        config = i.get("Config")
        if not isinstance(config, str):
            raise ImageError(image, "manifest.json", "format", "an entry needs Config")
        layers = _strs(image, "manifest.json", i.get("Layers"), "Layers") or ()
        tags = _strs(image, "manifest.json", i.get("RepoTags"), "RepoTags") or ()
        entries.append(SaveEntry(
            archive_member(image, config),
            tags,
            tuple(archive_member(image, layer) for layer in layers),
        ))
    return tuple(entries)


# -- choosing what to load ------------------------------------------------------------


def select_manifest(
    image: str, manifests: tuple[Descriptor, ...], machine: Platform
) -> Descriptor:
    """The manifest (or nested index) of an index that runs on `machine`.

    Descriptors without a platform are candidates too (their config is checked later);
    an index whose every manifest is for another platform is refused by name.
    """
    if not manifests:
        raise ImageError(image, "index.json", "format", "the index lists no manifests")
    fits = [m for m in manifests if m.platform is not None and m.platform.runs_on(machine)]
    if fits:
        return fits[0]
    unmarked = [m for m in manifests if m.platform is None or not m.platform.architecture]
    if unmarked:
        return unmarked[0]
    others = ", ".join(sorted({str(m.platform) for m in manifests}))
    raise ImageError(
        image, "index.json", "architecture",
        f"only for {others}; this machine is {machine}",
    )


def check_platform(image: str, entry: str, config: ImageConfig, machine: Platform) -> None:
    if config.architecture and not config.platform.runs_on(machine):
        raise ImageError(
            image, entry, "architecture",
            f"built for {config.platform}; this machine is {machine}",
        )


def check_layers(image: str, config: ImageConfig, count: int) -> None:
    """The config's diff_ids and the manifest's layers must pair up one to one."""
    if len(config.diff_ids) != count:
        raise ImageError(
            image, "config", "layer count",
            f"the config lists {len(config.diff_ids)} diff_ids for {count} layers",
        )


def default_name(refs: tuple[str, ...], source: str, tag: str = "") -> str:
    """The name an image is stored under when `--name` is not given: its first
    reference (a `docker save` RepoTag, an OCI ref.name that names a repository), else
    the source file's name without its extensions, with `tag` (an OCI ref.name that is
    only a tag) or `latest`."""
    for ref in refs:
        if ref:
            return ref if ":" in ref.rsplit("/", 1)[-1] else f"{ref}:latest"
    base = posixpath.basename(source.rstrip("/")) or "image"
    stem = (base.split(".")[0] or base).lower()
    return f"{stem}:{tag or 'latest'}"


def referenced_digests(data: bytes) -> tuple[str, ...]:
    """Every digest an index or manifest refers to, read leniently: used only to tell
    which blobs of a layout are referenced (attestation manifests and other platforms'
    manifests use media types linkd never loads)."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return ()
    if not isinstance(doc, dict):
        return ()
    found = []
    for key in ("manifests", "layers", "blobs"):
        items = doc.get(key)
        if isinstance(items, list):
            found += [i.get("digest") for i in items if isinstance(i, dict)]
    for key in ("config", "subject"):
        item = doc.get(key)
        if isinstance(item, dict):
            found.append(item.get("digest"))
    return tuple(d for d in found if isinstance(d, str) and _DIGEST.match(d))


_NAME = re.compile(r"^[a-z0-9][a-z0-9._/-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?$")


def check_name(name: str) -> str:
    """An image name as Docker spells references (lower-case repository, optional tag);
    `:latest` is added when no tag is given."""
    tagged = ":" in name.rsplit("/", 1)[-1]
    if _NAME.match(name) and ".." not in name and "//" not in name:
        return name if tagged else f"{name}:latest"
    try:  # a registry's name (`host:5000/a/b`), a digest (`a/b@sha256:...`): pulls
        ref = reference.parse(name)
    except ReferenceFormatError:
        raise ImageError(name, "name", "image name",
                         "use lower-case letters, digits, '.', '_', '-', '/' and ':TAG', "
                         "after an optional REGISTRY[:PORT]/"
                         ) from None
    return name if tagged or ref.digest else f"{name}:latest"
