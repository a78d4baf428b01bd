"""Pull an image by reference from its registry into the image store.

A pull fetches an OCI image layout and loads it the way `linkd image load` loads one,
so the store has one way in, with the same checks:

1. the manifest the reference names (`linkd.runtime.images.registry`), from the first
   of the registry's endpoints that can serve it (`linkd.runtime.images.transport`:
   docker.io's mirrors in order; HTTPS before plain HTTP); an index (OCI
   index, Docker manifest list) is followed down to the manifest for the platform asked
   for (this machine's by default), by digest;
2. the config: its platform must be the one asked for, its diff_ids pair with the
   layers;
3. the layers the store does not have yet (by diff_id), at most `concurrency` at once,
   each streamed into `<store>/pulls/pull-<pid>-*/blobs/` and checked against its
   size as it comes; meanwhile a thread reads what has arrived of it
   (`linkd.runtime.images.growing`), hashing, decompressing and checking it as `load`
   does (digest, diff_id, limits: `image_store.unpack_fetched`), and unpacks it into
   `unpacked/` beside it once the whole blob passed;
4. `ImageStore.load(..., partial=True, unpacked=...)`: the layout (a one-manifest
   index, the manifest and the config) verified again, its layers taken from
   `unpacked/` and from the store, moved in and named under the store's lock.

Nothing reaches the store before step 4, which moves layers in only once every one of
them passed; the download directory is removed when the pull ends, however it ends, and
the next pull removes those of pulls whose process died. So an interrupted or failed pull
leaves the store as it was.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import hashlib
import json
import os
import platform as platform_mod
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar, cast

import aiohttp

from linkd.core import image_format as fmt
from linkd.core import layer_rules, reference
from linkd.core.image_format import Descriptor, Platform
from linkd.core.model import Service, Stack
from linkd.core.registry_config import Endpoint, endpoints
from linkd.errors import (
    LinkdError,
    NotFoundError,
    ReferenceFormatError,
    RegistryError,
    SpecError,
    UsageError,
)
from linkd.runtime.images import transport
from linkd.runtime.images.growing import Abandoned, GrowingBlob
from linkd.runtime.images.image_store import ImageStore, StoredImage, layer_dir, unpack_fetched
from linkd.runtime.images.layers import Budget
from linkd.runtime.images.registry import Repository, auth_for
from linkd.runtime.images.sources import LoadLayer
from linkd.spec import values
from linkd.spec.build import refresh_after
from linkd.spec.values import Bad

CONCURRENCY = 3
# Threads of their own for the layers' unpacking: each waits for its download's bytes
# most of the time, and must not hold the threads the rest of the runtime shares
# (asyncio.to_thread's). More layers at once than this wait their turn, reading the
# file their download went on writing meanwhile.
_UNPACKING = concurrent.futures.ThreadPoolExecutor(max_workers=2 * CONCURRENCY,
                                                   thread_name_prefix="linkd-unpack")
_T = TypeVar("_T")
TRANSFER_EVERY = 0.1  # seconds between two byte counts of one layer told to `transfer`

Report = Callable[[str, str], None]  # (subject, what happened): milestones
Transfer = Callable[[str, int, int], None]  # (subject, bytes so far, of): a live display
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.zst")  # image: a file, never a name
_MAX_NESTING = 4  # an index in an index in ...: registries nest at most one level


@dataclass(frozen=True)
class Pulled:
    """A pull's result: the image as stored, and how many of its layers (and bytes of
    blobs) came over the network."""

    image: StoredImage
    fetched: int
    fetched_bytes: int


def parse_platform(text: str) -> Platform:
    """`os/arch[/variant]`, as `--platform` and Compose's `platform:` write it, read as
    the stack file's `platform:` is (linkd.spec.values.parse_platform)."""
    try:
        return Platform(*values.parse_platform(text).split("/"))
    except Bad as exc:
        raise UsageError(f"--platform: {exc} (OS/ARCH or OS/ARCH/VARIANT)") from None


def _pulls_dir(store: ImageStore) -> Path:
    """`<store>/pulls`, 0700, without the directories of pulls whose process died."""
    store.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = store.root / "pulls"
    path.mkdir(exist_ok=True, mode=0o700)
    for old in path.iterdir():
        pid = old.name.split("-")[1] if old.name.count("-") >= 2 else ""
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def quiet(subject: str, what: str) -> None:
    return None


async def pull(text: str, store: ImageStore | None = None, *, target: Platform | None = None,
               concurrency: int = CONCURRENCY, env: Mapping[str, str] = os.environ,
               report: Report = quiet, transfer: Transfer | None = None) -> Pulled:
    """Pull `text` (a reference as written) for `target` (this machine by default).
    `report` hears each step of the image (subject `image NAME`) and of each layer it
    fetches (subject `layer <12 hex digits>`, as Docker shows them); `transfer`, when
    given, each layer's bytes so far, at most every TRANSFER_EVERY seconds."""
    ref = reference.parse(text)
    store = store or ImageStore()
    target = target or fmt.machine_platform(platform_mod.machine())
    label = str(ref)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
    config = await asyncio.to_thread(transport.load_config, env)
    pulls = await asyncio.to_thread(_pulls_dir, store)

    async def attempt(endpoint: Endpoint, session: aiohttp.ClientSession) -> Pulled:
        # A mirror's own credentials (`linkd login MIRROR`), never Docker Hub's.
        login = ref.domain if endpoint.host == ref.api_host else endpoint.host
        repo = Repository(session, endpoint.host, ref.path, label, env=env,
                          auth=auth_for(login, env))
        repo.base = endpoint.base(ref.path)  # a mirror's, or HTTPS/HTTP as tried
        work = Path(tempfile.mkdtemp(prefix=f"pull-{os.getpid()}-", dir=pulls))
        try:
            return await _pull(repo, store, ref, target, work, concurrency, report,
                               transfer)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    pulled = await transport.pull_from(endpoints(ref.domain, config), attempt, label, config,
                                       timeout=timeout, env=env)
    await asyncio.to_thread(store.note_pull, label)  # for `pull_policy: daily` and the like
    return pulled


async def _pull(repo: Repository, store: ImageStore, ref: reference.Reference,
                target: Platform, work: Path, concurrency: int, report: Report,
                transfer: Transfer | None) -> Pulled:
    label = repo.label
    started = time.monotonic()
    subject = f"image {label}"
    report(subject, "pulling")
    blobs = work / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    media, body = await repo.manifest(ref.ref)
    chosen: Descriptor | None = None
    for _ in range(_MAX_NESTING):
        if media not in fmt.INDEX_TYPES:
            break
        entry = f"index {chosen.digest if chosen else ref.ref}"
        chosen = fmt.select_manifest(label, fmt.parse_index(label, entry, body), target)
        media, body = await repo.manifest(chosen.digest, chosen)
    else:
        raise repo.error(f"indexes nested more than {_MAX_NESTING} deep")
    manifest_entry = f"manifest {chosen.digest if chosen else ref.ref}"
    manifest = fmt.parse_manifest(label, manifest_entry, body)
    config_entry = f"config {manifest.config.digest}"
    config_raw = await repo.small_blob(manifest.config, config_entry)
    config = fmt.parse_config(label, config_entry, config_raw)
    fmt.check_platform(label, config_entry, config, target)
    fmt.check_layers(label, config, len(manifest.layers))
    # Only what the store lacks; `load` checks again under its lock.
    wanted = {d.digest: (d, diff_id)  # one fetch per blob
              for d, diff_id in zip(manifest.layers, config.diff_ids, strict=True)
              if not layer_dir(store.root, diff_id).is_dir()}
    fetched_bytes = sum(d.size for d, _ in wanted.values())
    report(subject, f"{len(manifest.layers)} layers, {len(wanted)} to fetch "
                    f"({fetched_bytes / 1e6:.1f} MB)")
    limit = asyncio.Semaphore(max(1, concurrency))
    # Each layer is verified and unpacked as its bytes arrive, on a thread of its own
    # reading the file the download writes (linkd.runtime.images.growing), into the
    # pull's own directory; the layers' counts go against the image's limits together.
    budget = Budget(label, layer_rules.limits_from_env(os.environ))
    unpacked: dict[str, tuple[Path, int]] = {}
    (work / "unpacked").mkdir(mode=0o700)

    async def fetch(desc: Descriptor, diff_id: str) -> None:
        layer = f"layer {desc.digest.partition(':')[2][:12]}"
        blob = blobs / desc.digest.partition(":")[2]
        dest = work / "unpacked" / diff_id.partition(":")[2]
        # The unpacking reads every byte of the blob as it comes: it checks the digest
        # (before its tar is parsed), the diff_id and the limits; the download checks
        # the size. One hash of the blob, off the event loop.
        plan = LoadLayer(blob.name, desc.digest, desc.size, diff_id)
        report(layer, "waiting")
        async with limit:
            report(layer, f"downloading {desc.size / 1e6:.1f} MB")
            growing = GrowingBlob(blob)
            job = asyncio.get_running_loop().run_in_executor(
                _UNPACKING, unpack_fetched, cast(IO[bytes], growing), plan, budget, dest)
            try:
                await repo.blob(desc, blob, f"layer {desc.digest}",
                                _told(growing.grew, _throttled(transfer, layer, desc.size)),
                                digest_checked_by_reader=True)
                growing.finish()
            except BaseException:
                growing.fail()
                await _ended(job)
                growing.close()
                raise
        report(layer, "verified")
        report(layer, "unpacking")
        try:
            size = await _outcome(job, growing)
        except Abandoned:  # the download started over under it: the whole file, again
            shutil.rmtree(dest, ignore_errors=True)
            with open(blob, "rb") as whole:
                size = await _in_thread(unpack_fetched, whole, plan, budget, dest)
        finally:
            growing.close()
        blob.unlink()  # the layout leaves it out: `load` takes the directory instead
        unpacked[diff_id] = (dest, size)
        report(layer, "done")

    try:
        async with asyncio.TaskGroup() as group:
            for desc, diff_id in wanted.values():
                group.create_task(fetch(desc, diff_id))
    except BaseExceptionGroup as failed:
        # The first layer that failed says why; the others were cancelled by it.
        first = next((e for e in failed.exceptions if isinstance(e, LinkdError)), None)
        if first is None:
            raise
        raise first from None
    _write_layout(work, body, media, config_raw, chosen)
    report(subject, "storing")
    image = await _in_thread(functools.partial(
        store.load, work, label, target=target, label=label, partial=True,
        unpacked=unpacked))
    report(subject, f"pulled {image.id[:19]} in {time.monotonic() - started:.1f} s")
    return Pulled(image, len(wanted), fetched_bytes)


async def _ended(job: asyncio.Future[Any]) -> None:
    """Wait for a thread told to stop (its blob failed), whatever it ends with."""
    with contextlib.suppress(BaseException):
        await asyncio.shield(job)
    if not job.done():  # this task was cancelled meanwhile: the thread still must end
        with contextlib.suppress(BaseException):
            await job


async def _outcome(job: asyncio.Future[_T], growing: GrowingBlob) -> _T:
    """The unpacking thread's result. Cancelled, the thread is told to stop, and is
    waited for: it writes in the pull's directory, which goes when the pull ends."""
    try:
        return await asyncio.shield(job)
    except asyncio.CancelledError:
        growing.fail()
        with contextlib.suppress(BaseException):
            await job
        raise


def _told(*hooks: Callable[[int], None] | None) -> Callable[[int], None]:
    """One callback for a download's byte count, calling each of `hooks` given."""
    given = [h for h in hooks if h is not None]

    def received(count: int) -> None:
        for hook in given:
            hook(count)

    return received


async def _in_thread(fn: Callable[..., _T], *args: Any) -> _T:
    """`fn(*args)` on a thread. Cancelled, it waits for the thread to end before it
    says so: the thread writes in the pull's directory, which goes when the pull ends."""
    job = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(job)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await job
        raise


def _throttled(transfer: Transfer | None, subject: str, size: int
               ) -> Callable[[int], None] | None:
    """`transfer` for one layer, told at most every TRANSFER_EVERY seconds and at the
    end."""
    if transfer is None:
        return None
    last = 0.0

    def received(count: int) -> None:
        nonlocal last
        now = time.monotonic()
        if count == size or now - last >= TRANSFER_EVERY:
            last = now
            transfer(subject, count, size)

    return received


def _write_layout(work: Path, manifest: bytes, media: str, config: bytes,
                  chosen: Descriptor | None) -> None:
    """The OCI layout `load` reads: the manifest (with its platform, when an index gave
    one) as the only entry of index.json, its blob and the config's."""
    blobs = work / "blobs" / "sha256"
    manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    for data in (manifest, config):
        (blobs / hashlib.sha256(data).hexdigest()).write_bytes(data)
    desc: dict[str, Any] = {"mediaType": media, "digest": manifest_digest,
                            "size": len(manifest)}
    if chosen is not None and chosen.platform is not None:
        p = chosen.platform
        desc["platform"] = {"os": p.os, "architecture": p.architecture,
                            **({"variant": p.variant} if p.variant else {})}
    (work / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [desc]}))
    (work / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')


# -- a stack's images --------------------------------------------------------------------


def pullable(services: Iterable[Service], base: Path) -> list[tuple[str, str | None]]:
    """(reference, platform) of the images of `services` that come from a registry:
    not built, not a path in the stack's directory (`base`) nor named like an archive,
    and references. A name that names a registry but breaks the grammar is the stack
    file's error."""
    found: dict[str, str | None] = {}
    for s in services:
        if s.image is None or s.build is not None or (base / s.image).exists():
            continue
        if s.image.endswith(ARCHIVE_SUFFIXES):
            continue  # a file that is not there: the store's lookup says so
        try:
            reference.parse(s.image)
        except ReferenceFormatError as exc:
            if reference.has_domain(s.image):
                raise SpecError([(f"services.{s.name}.image", None, str(exc))]) from None
            continue  # a file that is not there, say: the store's lookup says so
        found[s.image] = found.get(s.image) or s.platform
    return sorted(found.items())


def to_pull(stack: Stack, base: Path, store: ImageStore) -> list[tuple[str, str | None]]:
    """(reference, platform) of the `image:`s of `stack` to pull before it comes up, as
    Compose pulls them: those `pullable` that a service's `pull_policy` says to pull
    `always`, and those not in the store unless every service of the image says
    `never` (`missing`, the default, and Compose's other policies pull what is
    missing), and those whose last pull is older than a `daily`, `weekly` or
    `every_<duration>` says. A name without a registry (`redis:7`) is Docker Hub's."""
    policies: dict[str, set[str]] = {}
    for s in stack.services:
        if s.image is not None:
            policies.setdefault(s.image, set()).add(s.pull_policy)
    wanted = []
    for ref, platform in pullable(stack.services, base):
        if "always" in policies[ref]:
            wanted.append((ref, platform))
            continue
        if policies[ref] == {"never"}:
            continue
        try:
            store.get(ref)
        except NotFoundError:
            wanted.append((ref, platform))
            continue
        every = [t for t in map(refresh_after, policies[ref]) if t is not None]
        last = store.pulled_at(ref)
        if every and (last is None or time.time() - last >= min(every)):
            wanted.append((ref, platform))
    return wanted


async def pull_missing(stack: Stack, base: Path, store: ImageStore | None = None, *,
                       report: Report = quiet, transfer: Transfer | None = None) -> None:
    """Pull the images `to_pull` names, one after another, before anything is made
    (for a service's `platform:` if it has one); the first that fails stops the `up`,
    saying which services it is for, and, if the store lacks it, that it does."""
    store = store or ImageStore()
    for ref, asked in to_pull(stack, base, store):
        # `platform:` of a service picks from an index (its check against the image's
        # config is linkd.core.image_config's, as for loaded images).
        try:
            await pull(ref, store, target=parse_platform(asked) if asked else None,
                       report=report, transfer=transfer)
        except RegistryError as exc:
            users = ", ".join(sorted(s.name for s in stack.services if s.image == ref))
            try:
                store.get(ref)
            except NotFoundError:
                raise NotFoundError(
                    f"image {ref} is not in the store, and pulling it failed: {exc} (the "
                    f"image of {users}); `linkd image load FILE` loads it from a file, "
                    "`pull_policy: never` stops `up` trying its registry") from None
            raise RegistryError(exc.registry, exc.reference,
                                f"{exc.detail} (the image of {users})") from None
