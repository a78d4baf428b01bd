"""Building a service's image (`build:`) with buildah, into linkd's image store.

buildah (Debian's `buildah`) builds without a daemon: linkd runs `buildah build` once
per image, which writes the image as an OCI archive into a work directory of linkd's,
and loads that archive into the store (`ImageStore.load`, which verifies and unpacks it
as it does any archive) under the service's image name and its `tags`.

Layout (the root is /var/lib/linkd/build, or $LINKD_BUILD):

    <root>/lock             flock: one build at a time
    <root>/storage/         buildah's storage (`--root`): the images `FROM` pulled and
                            the layers of earlier builds (its cache, `--layers`)
    <root>/containers.conf  buildah's configuration, linkd's own (CONTAINERS_CONF): its
                            network configuration in <root>/networks/, and none of the
                            user's podman settings
    <root>/work/build-*/    a build in progress: the archive, an inline Dockerfile,
                            buildah's temporary files (TMPDIR); removed after it, and
                            by the next build if a process died
    <root>/replaced.json    {"v": 1, "stores": {STORE: [IMAGE_ID]}}: images builds
                            took the names of, kept while a container runs them

buildah's run state is in linkd's run directory (`--runroot <run dir>/build`), so a
build never reads or changes the storage of the user's own buildah or podman
(`/var/lib/containers/storage`). Built images are not kept in buildah's storage: `-t
oci-archive:` writes the result straight to the archive, and `--force-rm` removes the
build's containers whether it succeeds or fails. The storage driver is overlay: measured
here, a build that ends, fails or is interrupted (SIGINT) leaves no mount; a killed one
can, so each build first detaches whatever is mounted beneath the root (the lock says no
build runs) and then removes buildah's containers.

RUN steps use the host's network (`--network host`: linkd makes no build network, so no
bridge and no firewall rule is added for a build), or none with `network: none`.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from linkd import paths
from linkd.core.model import Build, Service, Stack
from linkd.errors import LinkdError, NotFoundError
from linkd.runtime.images.image_store import ImageStore, StoredImage, containers_using
from linkd.runtime.stack.store import locked, write_atomic

DEFAULT_ROOT = "/var/lib/linkd/build"
ROOT_ENV = "LINKD_BUILD"
DRIVER = "overlay"
LAST_LINES = 15  # of the builder's output, in the error of a failed build
INSTALL_HINT = "apt-get install buildah (Debian's package)"

Emit = Callable[[str], None]


class BuildError(LinkdError):
    """A build that could not start or failed: the service, why, and buildah's last
    lines."""


def build_root() -> Path:
    return Path(os.environ.get(ROOT_ENV) or DEFAULT_ROOT)


def to_build(stack: Stack, store: ImageStore, *, services: Sequence[str] = (),
             always: bool = False) -> list[Service]:
    """The services of `stack` whose image is to be built now: each with `build:` (of
    `services` if given) whose image is missing from the store, or all of them when
    `always` (`linkd build`, `up --build`) or its `pull_policy` is `build`. An image
    two services share is built once."""
    wanted = set(services)
    unknown = wanted - {s.name for s in stack.services}
    if unknown:
        raise NotFoundError(f"no service {', '.join(sorted(unknown))} in stack {stack.name}")
    chosen: dict[str, Service] = {}
    for service in stack.services:
        if service.build is None or service.image is None or (
                wanted and service.name not in wanted):
            continue
        if service.image in chosen:
            continue
        if always or service.build.always or _stored_id(store, service.image) is None:
            chosen[service.image] = service
    return list(chosen.values())


def _stored_id(store: ImageStore, image: str) -> str | None:
    try:
        return store.get(image).id
    except NotFoundError:
        return None


def buildah() -> str:
    """The buildah program, or the error that says how to install it."""
    found = shutil.which("buildah")
    if found is None:
        raise BuildError(f"building an image (build:) needs buildah, which is not "
                         f"installed: {INSTALL_HINT}")
    return found


def build_service(service: Service, directory: Path, emit: Emit,
                  store: ImageStore | None = None) -> StoredImage:
    """Build `service`'s image from its `build:` (paths relative to `directory`, the
    stack file's), streaming buildah's output line by line to `emit`, and load it into
    the store under its image name and tags. Nothing is stored if the build fails."""
    build, image = service.build, service.image
    assert build is not None and image is not None
    program = buildah()
    context = directory / build.context
    if not context.is_dir():
        raise BuildError(f"service {service.name}: the build context {context} is not a "
                         "directory")
    dockerfile = _dockerfile(service.name, build, context)
    root = build_root()
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    with locked(root / "lock"), _work_dir(root) as work:
        env = {**os.environ, "TMPDIR": str(work), "CONTAINERS_CONF": str(_config(root))}
        if _detach_leftovers(root):
            subprocess.run([program, *_global(root), "rm", "--all"], env=env,
                           stdin=subprocess.DEVNULL, capture_output=True, check=False)
        if build.dockerfile_inline is not None:
            dockerfile = work / "Dockerfile"
            dockerfile.write_text(build.dockerfile_inline)
        archive = work / "image.tar"
        argv = [program, *_global(root), "build",
                *build_options(build, dockerfile, archive), str(context)]
        code, last = _stream(argv, emit, env)
        if code != 0:
            shown = "\n".join(f"  {line}" for line in last)
            raise BuildError(f"service {service.name}: building image {image} failed "
                             f"(buildah exited {code}); its last lines:\n{shown}")
        images = store or ImageStore()
        before = {name: _stored_id(images, name) for name in (image, *build.tags)}
        previous = images.get(image) if before[image] is not None else None
        built = images.load(archive, image)
        stored = built
        if previous is not None and previous.config == built.config:
            # A build that changed nothing differs from the last one only in buildah's
            # timestamps: keeping the last image keeps its containers running (Compose
            # recreates nothing then either).
            stored = images.tag(previous.id, image)
        for tag in build.tags:
            stored = images.tag(stored.id, tag)
        replaced = {i for i in before.values() if i is not None} | {built.id}
        _drop_replaced(images, replaced - {stored.id})
        return stored


def _drop_replaced(images: ImageStore, replaced: set[str]) -> None:
    """Remove the images builds gave the names of (`replaced`, and those kept at earlier
    builds) that no container runs; those that one runs wait, in
    `<root>/replaced.json`, for a later build. Only what a build replaced is
    removed: an image that lost its name otherwise is not a build's to remove."""
    path = build_root() / "replaced.json"
    try:
        waiting: dict[str, list[str]] = json.loads(path.read_bytes())["stores"]
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        waiting = {}
    key = str(images.root.resolve())
    candidates = set(waiting.get(key, ())) | replaced
    if not candidates:
        return
    in_use = {image_id for _, image_id in containers_using()}
    waiting[key] = sorted(images.drop_unnamed(candidates, in_use))
    write_atomic(path, json.dumps({"v": 1, "stores": {k: v for k, v in waiting.items() if v}},
                                  indent=1).encode())


def build_options(build: Build, dockerfile: Path | None, archive: Path) -> list[str]:
    """`buildah build`'s options for `build`, writing the image to `archive`."""
    options = ["--layers", "--force-rm", "--pull=always" if build.pull else "--pull=false",
               "--network", "none" if build.no_network else "host",
               "-t", f"oci-archive:{archive}"]
    if dockerfile is not None:
        options += ["-f", str(dockerfile)]
    if build.no_cache:
        options.append("--no-cache")
    if build.target is not None:
        options += ["--target", build.target]
    for flag, pairs in (("--build-arg", build.args), ("--label", build.labels)):
        for key, value in pairs:
            options += [flag, f"{key}={value}"]
    for host, address in build.extra_hosts:
        options += ["--add-host", f"{host}:{address}"]
    if build.shm_size is not None:
        options += ["--shm-size", f"{build.shm_size}b"]
    for name, soft, hard in build.ulimits:
        options += ["--ulimit", f"{name}={soft}:{hard}"]
    return options


def _config(root: Path) -> Path:
    """buildah's containers.conf, linkd's own: the network configuration directory
    (which buildah reads at every start, whatever `--network`) beneath the storage
    rather than /etc/containers/networks, and nothing of the user's podman settings."""
    path = root / "containers.conf"
    text = f"[network]\nnetwork_config_dir = {json.dumps(str(root / 'networks'))}\n"
    if not path.is_file() or path.read_text() != text:
        write_atomic(path, text.encode())
    return path


def _global(root: Path) -> list[str]:
    """buildah's options before its command: linkd's storage."""
    return ["--root", str(root / "storage"), "--runroot", str(paths.root() / "build"),
            "--storage-driver", DRIVER]


def _dockerfile(service: str, build: Build, context: Path) -> Path | None:
    """The Dockerfile's path, checked (None: inline, or buildah finds Dockerfile or
    Containerfile in the context)."""
    if build.dockerfile_inline is not None:
        return None
    if build.dockerfile is not None:
        path = context / build.dockerfile
        if not path.is_file():
            raise BuildError(f"service {service}: build.dockerfile {path} is not a file")
        return path
    if not any((context / name).is_file() for name in ("Containerfile", "Dockerfile")):
        raise BuildError(f"service {service}: the build context {context} has no "
                         "Dockerfile (or Containerfile); add one or set build.dockerfile")
    return None


@contextlib.contextmanager
def _work_dir(root: Path) -> Iterator[Path]:
    """A private directory for one build's archive and buildah's temporary files; a
    dead build's go first (the caller holds the lock: no other build runs)."""
    base = root / "work"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(mode=0o700)
    work = Path(tempfile.mkdtemp(prefix="build-", dir=base))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _stream(argv: list[str], emit: Emit, env: dict[str, str]) -> tuple[int, list[str]]:
    """Run `argv`, its output (stdout and stderr, in order) line by line to `emit`; its
    exit code and last lines."""
    last: collections.deque[str] = collections.deque(maxlen=LAST_LINES)
    with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, env=env, text=True,
                          errors="replace") as process:
        assert process.stdout is not None
        try:
            for line in process.stdout:
                line = line.rstrip("\n")
                last.append(line)
                emit(line)
        except BaseException:
            # Ctrl-C reached buildah too (one process group): it stops its step and
            # unmounts what it mounted; wait for that rather than leave it half done.
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=30)
            raise
        return process.wait(), list(last)


_libc = ctypes.CDLL(None, use_errno=True)
_MNT_DETACH = 2


def _detach_leftovers(root: Path) -> bool:
    """Detach every mount beneath `root` (a killed build's: with the lock held, no
    build runs); whether there were any."""
    prefix = str(root.resolve()) + "/"
    with open("/proc/self/mountinfo", "rb") as f:
        points = [_unescape(line.split()[4]) for line in f.read().splitlines()]
    ours = [p for p in points if p.startswith(prefix)]
    for point in reversed(ours):  # the later mounts, stacked on the earlier, first
        _libc.umount2(os.fsencode(point), _MNT_DETACH)
    return bool(ours)


def _unescape(field: bytes) -> str:
    # The kernel writes space, tab, newline and backslash in mount points as \ooo.
    head, *rest = field.split(b"\\")
    raw = head + b"".join(bytes([int(p[:3], 8)]) + p[3:] for p in rest)
    return os.fsdecode(raw)
