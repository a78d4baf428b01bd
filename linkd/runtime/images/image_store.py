"""The image store: load image archives, unpack their layers once, keep them by digest.

Sources (what `docker save`, `podman save`, `skopeo copy ... oci:` and CI artifacts give):
an OCI image layout directory, an OCI archive (a tar of such a directory), or a
`docker save` archive (`manifest.json` + uncompressed layer tars). An archive with both
`index.json` and `manifest.json` (Docker 25 and newer write both) is read as OCI.
Reading them, and deciding what a load stores, is `linkd.runtime.images.sources`'.

Layout (the root is /var/lib/linkd/images, or $LINKD_IMAGES):

    <root>/lock                  flock: held by every change to the store
    <root>/refs.json             {"v": 1, "refs": {NAME: IMAGE_ID}}, replaced atomically
    <root>/images/<hex>.json     one image: its id (the config digest), its layers'
                                 diff_ids bottom first, its raw config, its size
    <root>/layers/<hex>/         one unpacked layer, named by its diff_id (the sha256 of
                                 the uncompressed tar): shared by every image that has it
    <root>/tmp/load-*/           a load in progress; renamed into layers/ when every
                                 digest has been checked, removed if the load fails (and
                                 by the next load if the process died)

`layers/` and `tmp/` are 0700 (issue 14): a layer holds what the image's author chose,
setuid files included, and only root may reach it. A layer's own directory stays 0755:
overlayfs shows it as the image's `/` when it is mounted without an upper layer.

Layers are kept in overlayfs's own format, ready to be stacked as lower directories
without copying: a whiteout `.wh.NAME` becomes a character device 0/0 named NAME, an
opaque marker `.wh..wh..opq` becomes the `trusted.overlay.opaque=y` xattr on its
directory. (Flattening each image into one tree would cost a copy per image and lose the
sharing of layers.) Both need root, which linkd has.

Every blob is verified before it is used: the config and manifests against their
descriptors as they are read, each layer against its descriptor (the compressed blob,
digest and size) and against the config's diff_id (the uncompressed tar) while it is
copied as a plain tar into the store's tmp/; only then is that copy unpacked, into the
load's private directory, and the layers are renamed into layers/ once all of them passed
(`linkd.runtime.images.layers` says why in this order, and how unpacking cannot leave its
directory). What one load may unpack is bounded by `linkd.core.layer_rules.Limits`, read
from the environment (`LINKD_IMAGE_MAX_*`) at each load.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

from linkd.core import image_format as fmt
from linkd.core import layer_rules, reference
from linkd.core.image_config import with_images
from linkd.core.image_format import ImageConfig
from linkd.core.model import Stack
from linkd.errors import ImageError, NotFoundError, ReferenceFormatError
from linkd.runtime.images.layers import Budget, unpack_layer, verify_layer
from linkd.runtime.images.sources import LoadLayer, Source, open_source, plan_oci, plan_save
from linkd.runtime.stack import store as stack_store
from linkd.runtime.stack.store import locked, write_atomic

DEFAULT_ROOT = "/var/lib/linkd/images"
ROOT_ENV = "LINKD_IMAGES"


def root() -> Path:
    return Path(os.environ.get(ROOT_ENV) or DEFAULT_ROOT)


@dataclass(frozen=True)
class StoredImage:
    """An image in the store: `layers` are diff_ids, bottom first."""

    id: str
    names: tuple[str, ...]
    layers: tuple[str, ...]
    config: ImageConfig
    size: int

    def layer_dirs(self, store_root: Path) -> list[Path]:
        """The unpacked layers, top first (the order of overlayfs's lowerdir)."""
        return [layer_dir(store_root, d) for d in reversed(self.layers)]


def layer_dir(store_root: Path, diff_id: str) -> Path:
    return store_root / "layers" / diff_id.partition(":")[2]


def _unpack(src: Source, layer: LoadLayer, budget: Budget, work: Path,
            dest: Path | None) -> int:
    """Verify one layer (blob and diff_id) and, if `dest` is given, unpack the verified
    copy there (`linkd.runtime.images.layers`). Returns the size of the uncompressed tar."""
    size = layer.size if layer.size is not None else src.size(layer.member)
    with src.open(layer.member) as stream:
        return _verify_and_unpack(stream, replace(layer, size=size), budget, work, dest)


def _verify_and_unpack(stream: IO[bytes], layer: LoadLayer, budget: Budget, work: Path,
                       dest: Path | None) -> int:
    name = layer.blob_digest or layer.member
    assert layer.size is not None
    with contextlib.ExitStack() as stack:
        # Unlinked (O_TMPFILE), in the store's 0700 tmp/: nothing to clean up, no one
        # else can reach it between the check and the unpacking.
        copy = None if dest is None else stack.enter_context(
            tempfile.TemporaryFile(dir=work))
        tar_size = verify_layer(budget, name, stream, blob_digest=layer.blob_digest,
                                size=layer.size, diff_id=layer.diff_id, keep=copy)
        if copy is not None and dest is not None:
            copy.seek(0)
            unpack_layer(budget, name, copy, dest, layer.size)
        return tar_size


def unpack_fetched(blob: IO[bytes], layer: LoadLayer, budget: Budget, dest: Path) -> int:
    """A pull's layer, read from `blob` while it is fetched: verified (digest, diff_id,
    size, limits) and unpacked into the new directory `dest` exactly as `load` does it,
    while the pull fetches the others (`blob`: linkd.runtime.images.growing's
    `GrowingBlob`, which ends when the download is whole). Only the decompressor sees
    bytes before the digest is checked, as in a load; the tar parser reads the verified
    copy after. `dest` is
    in the pull's own directory (the store's `tmp/` is cleared by every load), on the
    store's file system: `load(unpacked=...)` moves it into `layers/` with the rest of
    the image, under the lock. Returns the tar's size."""
    return _verify_and_unpack(blob, layer, budget, dest.parent, dest)


def _key(name: str, refs: Mapping[str, object]) -> str | None:
    """The name in `refs` that `name` means: as written, with `:latest`, or as the
    reference it is in full (`docker.io/library/redis:7`) or familiar (`redis:7`) form,
    so a name loaded from an archive and the same name pulled are one image."""
    candidates = [name, f"{name}:latest"]
    with contextlib.suppress(ReferenceFormatError):
        ref = reference.parse(name)
        candidates += [str(ref), ref.familiar]
    return next((c for c in candidates if c in refs), None)


# -- the store -------------------------------------------------------------------------


class ImageStore:
    """Images by name; every change happens under `<root>/lock`."""

    def __init__(self, store_root: Path | None = None) -> None:
        self.root = store_root or root()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        with locked(self.root / "lock"):
            yield

    def _private_dir(self, name: str) -> Path:
        """`<root>/<name>`, made 0700 (and made so if an older linkd left it 0755)."""
        path = self.root / name
        path.mkdir(exist_ok=True, mode=0o700)
        os.chmod(path, 0o700, follow_symlinks=False)
        return path

    def _refs(self) -> dict[str, str]:
        try:
            doc = json.loads((self.root / "refs.json").read_bytes())
        except FileNotFoundError:
            return {}
        refs = doc.get("refs", {})
        return {str(k): str(v) for k, v in refs.items()}

    def _save_refs(self, refs: dict[str, str]) -> None:
        write_atomic(self.root / "refs.json",
                     json.dumps({"v": 1, "refs": refs}, indent=1, sort_keys=True).encode())

    def _record(self, image_id: str, names: tuple[str, ...]) -> StoredImage:
        path = self.root / "images" / (image_id.partition(":")[2] + ".json")
        doc = json.loads(path.read_bytes())
        raw = doc["config"].encode()
        return StoredImage(
            id=image_id, names=names, layers=tuple(doc["layers"]),
            config=fmt.parse_config(image_id, "config", raw), size=int(doc["size"]),
        )

    def list(self) -> list[StoredImage]:
        by_id: dict[str, list[str]] = {}
        for name, image_id in sorted(self._refs().items()):
            by_id.setdefault(image_id, []).append(name)
        return [self._record(i, tuple(n)) for i, n in by_id.items()]

    def note_pull(self, name: str, when: float | None = None) -> None:
        """Remember when `name` was last pulled (now, or `when`), for `pulled_at`; the
        times of names no longer in the store are forgotten on the way."""
        with self._locked():
            refs = self._refs()
            times = {n: t for n, t in self._pull_times().items() if n in refs}
            times[_key(name, refs) or name] = time.time() if when is None else when
            # Not synced: a time lost with a power cut costs one more pull, no more.
            write_atomic(self.root / "pulled.json", json.dumps(times, indent=1).encode(),
                         durable=False)

    def pulled_at(self, name: str) -> float | None:
        """When `name` was last pulled (a Unix time); None if it never was (loaded from
        a file or built, or pulled by a linkd that kept no times)."""
        times = self._pull_times()
        key = _key(name, times)
        return None if key is None else times[key]

    def _pull_times(self) -> dict[str, float]:
        try:
            doc = json.loads((self.root / "pulled.json").read_bytes())
        except (FileNotFoundError, ValueError):
            return {}  # a lost or bad file: only a reason to pull once more
        return {str(k): float(v) for k, v in doc.items()
                if isinstance(v, (int, float))} if isinstance(doc, dict) else {}

    def unnamed(self) -> tuple[StoredImage, ...]:
        """The images no name points at (kept while a container runs them, or until
        `prune`)."""
        named = set(self._refs().values())
        return tuple(self._record(i, ()) for i in sorted(self._records()) if i not in named)

    def get(self, name: str) -> StoredImage:
        refs = self._refs()
        if name.startswith("sha256:") and name in refs.values():
            return self._record(name, tuple(n for n, i in refs.items() if i == name))
        key = _key(name, refs)
        if key is None:
            raise NotFoundError(f"image {name} is not in the store ({self.root}): "
                                f"`linkd image pull {name}` pulls it from its registry, "
                                "`linkd image load FILE` loads it from a file")
        image_id = refs[key]
        return self._record(image_id, tuple(n for n, i in refs.items() if i == image_id))

    def load(self, source: str | os.PathLike[str], name: str | None = None,
             machine: str | None = None, limits: layer_rules.Limits | None = None, *,
             target: fmt.Platform | None = None, label: str | None = None,
             partial: bool = False,
             unpacked: Mapping[str, tuple[Path, int]] | None = None) -> StoredImage:
        """Load an image from a layout directory or archive; returns it as stored.
        `limits` default to the environment's (`LINKD_IMAGE_MAX_*`). A pull
        (`linkd.runtime.images.pull`) loads the layout it fetched, `partial`: without the
        blobs of layers the store has, and for the platform it chose (`target`);
        `unpacked`: the layers it verified and unpacked as they came (`unpack_fetched`),
        by diff_id (their directory, their tar's size), whose blobs it left out."""
        path = Path(source)
        label = label or str(source)
        target = target or fmt.machine_platform(machine or platform.machine())
        limits = limits or layer_rules.limits_from_env(os.environ)
        src = open_source(path, label, limits)
        try:
            with self._locked():
                # A dead process's load: shutil.rmtree works by descriptors and follows
                # no symlink in what it removes.
                shutil.rmtree(self.root / "tmp", ignore_errors=True)
                tmp_root = self._private_dir("tmp")
                work = Path(tempfile.mkdtemp(prefix="load-", dir=tmp_root))
                try:
                    return self._load(src, label, name, target, work, Budget(label, limits),
                                      partial, unpacked or {})
                finally:
                    shutil.rmtree(work, ignore_errors=True)
        finally:
            src.close()

    def _load(self, src: Source, label: str, name: str | None, machine: fmt.Platform,
              work: Path, budget: Budget, partial: bool = False,
              unpacked: Mapping[str, tuple[Path, int]] | None = None) -> StoredImage:
        names = src.names()
        unpacked = unpacked or {}
        if "index.json" in names:
            stored = (lambda d: d in unpacked or layer_dir(self.root, d).is_dir()
                      ) if partial else None
            plan = plan_oci(src, label, name, machine, stored)
        elif "manifest.json" in names:
            plan = plan_save(src, label, name, machine)
        else:
            raise ImageError(label, "index.json", "format",
                             "neither an OCI layout (index.json) nor a docker save "
                             "archive (manifest.json)")
        fresh: list[tuple[Path, Path]] = []
        sizes = []
        for n, layer in enumerate(plan.layers):
            final = layer_dir(self.root, layer.diff_id)
            if not layer.member and layer.diff_id in unpacked:  # the pull's, verified
                done, tar_size = unpacked[layer.diff_id]
                sizes.append(tar_size)
                if not final.is_dir():
                    fresh.append((done, final))
                continue
            if not layer.member:  # checked under the lock: still there
                sizes.append(self._layer_size(layer.diff_id))
                continue
            dest = None if final.is_dir() else work / str(n)
            sizes.append(_unpack(src, layer, budget, work, dest))
            if dest is not None:
                fresh.append((dest, final))
        size = sum(sizes)
        # Every digest held: move the new layers in, then the record, then the name.
        self._private_dir("layers")
        for dest, final in fresh:
            with contextlib.suppress(FileExistsError, OSError):
                os.rename(dest, final)
        image_id = "sha256:" + hashlib.sha256(plan.config_raw).hexdigest()
        (self.root / "images").mkdir(exist_ok=True)
        record = {"v": 1, "id": image_id, "layers": list(plan.config.diff_ids),
                  "config": plan.config_raw.decode(), "size": size, "layer_sizes": sizes,
                  "loaded": int(time.time())}
        write_atomic(self.root / "images" / (image_id.partition(":")[2] + ".json"),
                     json.dumps(record).encode())
        refs = self._refs()
        refs[plan.name] = image_id
        self._save_refs(refs)
        return self._record(image_id, tuple(n for n, i in refs.items() if i == image_id))

    def _layer_size(self, diff_id: str) -> int:
        """The tar size of a stored layer, from a record that has it (records older
        than pulls have no `layer_sizes`: then 0, the image's size is then low)."""
        for record in (self.root / "images").glob("*.json"):
            doc = json.loads(record.read_bytes())
            sizes = doc.get("layer_sizes")
            if sizes and diff_id in doc["layers"]:
                return int(sizes[doc["layers"].index(diff_id)])
        return 0

    def remove(self, name: str) -> StoredImage:
        """Forget a name; the image and layers nothing else uses go with it."""
        with self._locked():
            image = self.get(name)
            refs = self._refs()
            key = _key(name, refs)
            if key is None:  # an id: which of its names is meant?
                raise NotFoundError(f"image {name}: remove it by one of its names "
                                    f"({', '.join(image.names)})")
            del refs[key]
            self._save_refs(refs)
            self._collect(refs)
            return image

    def _collect(self, refs: dict[str, str]) -> None:
        """Remove image records no name points at, then layers no image uses."""
        live = set(refs.values())
        keep: set[str] = set()
        images = self.root / "images"
        for record in images.glob("*.json") if images.is_dir() else []:
            image_id = "sha256:" + record.stem
            if image_id not in live:
                record.unlink()
                continue
            keep.update(json.loads(record.read_bytes())["layers"])
        layers = self.root / "layers"
        for d in layers.iterdir() if layers.is_dir() else []:
            if "sha256:" + d.name not in keep:
                shutil.rmtree(d)

    def tag(self, image_id: str, name: str) -> StoredImage:
        """A name for an image in the store (a build's `tags`), taken from the image
        that had it."""
        with self._locked():
            refs = self._refs()
            if not (self.root / "images" / (image_id.partition(":")[2] + ".json")).is_file():
                raise NotFoundError(f"image {image_id} is not in the store ({self.root})")
            refs[fmt.check_name(name)] = image_id
            self._save_refs(refs)
            return self._record(image_id, tuple(n for n, i in refs.items() if i == image_id))

    def drop_unnamed(self, candidates: set[str], in_use: set[str]) -> set[str]:
        """Remove the images of `candidates` that no name points at any more (a build
        gave their names to newer ones) and no container runs (`in_use`), with the
        layers no remaining image uses; the candidates kept for now (named or in use)."""
        with self._locked():
            named = set(self._refs().values())
            records = self._records()
            gone = {i for i in candidates if i in records and i not in named | in_use}
            self._drop(gone, records)
            return {i for i in candidates if i in records and i not in gone}

    def prune(self, in_use: set[str], *, named: bool = False
              ) -> tuple[tuple[StoredImage, ...], int]:
        """`docker image prune [-a]`: remove the images no container runs (`in_use`)
        that have no name (a pull, load or build gave theirs to a newer image), and
        with `named` the named ones too; then the layers no image left uses. What went
        (its names as they were) and the bytes of the layers freed."""
        with self._locked():
            refs = self._refs()
            records = self._records()
            names: dict[str, list[str]] = {}
            for name, image_id in sorted(refs.items()):
                names.setdefault(image_id, []).append(name)
            gone = {i for i in records if i not in in_use and (named or i not in names)}
            removed = tuple(self._record(i, tuple(names.get(i, ()))) for i in sorted(gone))
            if named:
                self._save_refs({n: i for n, i in refs.items() if i not in gone})
            return removed, self._drop(gone, records)

    def _records(self) -> dict[str, Path]:
        images = self.root / "images"
        return {"sha256:" + r.stem: r for r in images.glob("*.json")} if images.is_dir() else {}

    def _drop(self, gone: set[str], records: dict[str, Path]) -> int:
        """Remove the records of `gone` and the layers no other record uses (under the
        lock); the bytes those layers' archives had."""
        layers = {i: set(json.loads(r.read_bytes())["layers"]) for i, r in records.items()}
        freed = set().union(*(layers[i] for i in gone)).difference(
            *(layers[i] for i in records if i not in gone))
        size = sum(self._layer_size(d) for d in freed)
        for image_id in gone:
            records[image_id].unlink()
        for diff_id in freed:
            shutil.rmtree(layer_dir(self.root, diff_id), ignore_errors=True)
        return size

    def resolve(self, ref: str, base: Path | None = None) -> StoredImage:
        """`image:` of a stack file: a path to a layout or archive (loaded, and stored
        under its own name), else a name in the store."""
        path = Path(ref) if base is None else base / ref
        if path.exists():
            return self.load(path)
        return self.get(ref)


def resolve_stack(stack: Stack, base: Path, store: ImageStore | None = None, *,
                  load: bool = True) -> Stack:
    """`stack` with its image-based services merged with their images' configs
    (`linkd.core.image_config`); paths (relative to `base`, the stack file's directory) are
    loaded into the store first. `image:` becomes the image id. With `load` False (a
    preview: `linkd env` of a stack that is not up), only names already in the store are
    merged and everything else is left as written."""
    refs = {s.image for s in stack.services if s.image is not None}
    if not refs:
        return stack
    # A built image is a name in the store, never a path (its context may be a
    # directory of that name).
    built = {s.image: s.name for s in stack.services if s.build is not None and s.image}
    images = store or ImageStore()
    resolved = {}
    for ref in sorted(refs):
        if not load:
            try:
                image = images.get(ref)
            except (NotFoundError, OSError, ValueError):
                continue
        elif ref in built:
            try:
                image = images.get(ref)
            except NotFoundError:
                raise NotFoundError(
                    f"image {ref} of service {built[ref]} is not built yet: `linkd build "
                    f"{built[ref]}` (or `linkd up`, which builds it) builds it") from None
        else:
            image = images.resolve(ref, base)
        resolved[ref] = (image.id, image.config)
    return with_images(stack, resolved)


def containers_using(image_id: str | None = None) -> list[tuple[str, str]]:
    """(`stack/container`, image id) of the containers of the stacks that are up whose
    root filesystem is an image (`image_id`, or any)."""
    return [(f"{plan.stack}/{c.name}", c.image) for plan in stack_store.plans()
            for c in plan.containers if c.image is not None and image_id in (None, c.image)]
