"""Pulls against a tiny registry of the test's own (tests/registry.py), on 127.0.0.1 of
the session's simulated host: by tag and by digest, a platform from an index, layers the
store has are not fetched again; and every way a registry can fail a pull (a wrong
digest, a truncated blob, 500s, a schema-1 manifest, a missing tag, a pull cancelled
half-way) gives a clear error and leaves the store as it was. Needs root (the store
unpacks layers with their owners); no namespace or mount, so no machine-wide lock.
Docker's own registry serves the same pulls in tests/integration/test_pull.py."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from linkd.core import image_format as fmt
from linkd.core.image_format import Platform
from linkd.errors import ImageError, NotFoundError, RegistryError, SpecError
from linkd.runtime.images import pull as pull_mod
from linkd.runtime.images import registry
from linkd.runtime.images.image_store import ImageStore, layer_dir
from linkd.runtime.images.pull import pull, to_pull
from linkd.spec.stack_file import parse_stack
from tests.images import Entry, Image, layer_tar, write_dir
from tests.registry import TinyRegistry, free_port, serving

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="layers need root: owners")

HOST_ARCH = fmt.machine_platform(os.uname().machine).architecture
OTHER_ARCH = "s390x" if HOST_ARCH != "s390x" else "riscv64"


def small_image(*files: tuple[str, bytes], base: bytes | None = None,
                arch: str | None = None) -> Image:
    """A tiny image: an optional shared base layer, then one of `files`."""
    top = layer_tar([Entry(name, data=data) for name, data in files])
    return Image(([base] if base else []) + [top], arch=arch, name="test/bb:1")


BASE = layer_tar([Entry("etc", "dir"), Entry("etc/os-release", data=b"ID=test\n")])


@pytest.fixture
async def tiny() -> AsyncIterator[TinyRegistry]:
    async with serving(TinyRegistry()) as reg:
        yield reg


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "store")


def contents(store: ImageStore) -> set[str]:
    """Every path in the store but its lock and the (empty) pulls directory."""
    if not store.root.exists():
        return set()
    found = {str(p.relative_to(store.root)) for p in store.root.rglob("*")}
    assert not any(p.startswith("pulls/") for p in found), found  # downloads gone
    return found - {"lock", "pulls", "tmp"}


async def test_pull_by_tag_and_by_digest(tiny: TinyRegistry, store: ImageStore) -> None:
    image = small_image(("hello", b"hi\n"), base=BASE)
    digest = tiny.add_layout("test/bb", "1", image.oci_files())
    pulled = await pull(f"{tiny.host}/test/bb:1", store, concurrency=2)
    assert pulled.image.names == (f"{tiny.host}/test/bb:1",)
    assert pulled.image.layers == tuple(image.diff_ids())
    assert pulled.fetched == 2
    with pytest.raises(NotFoundError):
        store.get(f"{tiny.host}/test/bb")  # that is test/bb:latest
    by_digest = await pull(f"{tiny.host}/test/bb@{digest}", store)
    assert by_digest.image.id == pulled.image.id
    assert by_digest.fetched == 0  # every layer was in the store
    assert set(by_digest.image.names) == {f"{tiny.host}/test/bb:1",
                                          f"{tiny.host}/test/bb@{digest}"}
    assert store.get(f"{tiny.host}/test/bb@{digest}").id == pulled.image.id
    assert all(r.startswith("/v2/test/bb/") for r in tiny.requests)


async def test_a_second_image_fetches_only_the_layers_the_store_lacks(
        tiny: TinyRegistry, store: ImageStore) -> None:
    one = small_image(("one", b"1\n"), base=BASE)
    two = small_image(("two", b"2\n"), base=BASE)
    tiny.add_layout("test/one", "1", one.oci_files())
    tiny.add_layout("test/two", "1", two.oci_files())
    await pull(f"{tiny.host}/test/one:1", store)
    tiny.requests.clear()
    pulled = await pull(f"{tiny.host}/test/two:1", store)
    assert pulled.fetched == 1
    manifest = json.loads(tiny.manifests["test/two:1"][1])
    fetched = {r.rsplit("/", 1)[1] for r in tiny.layer_requests()}
    # The config and the new layer; not the shared base.
    assert fetched == {manifest["config"]["digest"], manifest["layers"][1]["digest"]}
    assert pulled.image.size == len(BASE) + len(two.layers[1])


async def test_a_pull_reports_each_step_and_each_layers_bytes(
        tiny: TinyRegistry, store: ImageStore) -> None:
    """What `up` and `linkd image pull` draw: the image's steps, each fetched layer's
    (by its 12 first hex digits, as Docker shows them), and its bytes to the last."""
    one = small_image(("one", b"1" * 300_000), base=BASE)
    two = small_image(("two", b"2\n"), base=BASE)
    tiny.add_layout("test/one", "1", one.oci_files())
    tiny.add_layout("test/two", "1", two.oci_files())
    steps: list[tuple[str, str]] = []
    counts: dict[str, list[tuple[int, int]]] = {}
    await pull(f"{tiny.host}/test/one:1", store, report=lambda s, w: steps.append((s, w)),
               transfer=lambda s, got, total: counts.setdefault(s, []).append((got, total)))
    image = f"image {tiny.host}/test/one:1"
    manifest = json.loads(tiny.manifests["test/one:1"][1])
    layers = [f"layer {d['digest'][7:19]}" for d in manifest["layers"]]
    sizes = [d["size"] for d in manifest["layers"]]
    assert [w for s, w in steps if s == image][:2] == [
        "pulling", f"2 layers, 2 to fetch ({sum(sizes) / 1e6:.1f} MB)"]
    assert [w for s, w in steps if s == image][2] == "storing"
    assert [w for s, w in steps if s == image][3].startswith("pulled sha256:")
    for layer, size in zip(layers, sizes, strict=True):
        assert [w for s, w in steps if s == layer] == [
            "waiting", f"downloading {size / 1e6:.1f} MB", "verified", "unpacking", "done"]
        assert counts[layer][-1] == (size, size)  # the last count is the whole layer
        assert all(got <= size for got, _ in counts[layer])
    steps.clear()
    await pull(f"{tiny.host}/test/two:1", store, report=lambda s, w: steps.append((s, w)))
    assert ("image " + f"{tiny.host}/test/two:1", "2 layers, 1 to fetch "
            f"({len(two.layers[1]) / 1e6:.1f} MB)") in steps  # the base was there


async def test_an_index_gives_this_machines_image(tiny: TinyRegistry,
                                                  store: ImageStore) -> None:
    mine = small_image(("arch", HOST_ARCH.encode()), arch=HOST_ARCH)
    other = small_image(("arch", OTHER_ARCH.encode()), arch=OTHER_ARCH)
    d_other = tiny.add_layout("test/multi", "other", other.oci_files())
    d_mine = tiny.add_layout("test/multi", "mine", mine.oci_files())
    tiny.add_index("test/multi", "1", [({"os": "linux", "architecture": OTHER_ARCH}, d_other),
                                       ({"os": "linux", "architecture": HOST_ARCH}, d_mine)])
    pulled = await pull(f"{tiny.host}/test/multi:1", store)
    assert pulled.image.config.architecture == HOST_ARCH
    assert pulled.image.layers == tuple(mine.diff_ids())
    # Another platform, when asked for (`--platform`).
    theirs = await pull(f"{tiny.host}/test/multi:1", ImageStore(store.root.parent / "s2"),
                        target=Platform("linux", OTHER_ARCH))
    assert theirs.image.layers == tuple(other.diff_ids())


async def test_an_index_without_this_platform_is_refused(tiny: TinyRegistry,
                                                         store: ImageStore) -> None:
    other = small_image(("arch", b"x"), arch=OTHER_ARCH)
    d = tiny.add_layout("test/multi", "other", other.oci_files())
    tiny.add_index("test/multi", "1", [({"os": "linux", "architecture": OTHER_ARCH}, d)])
    with pytest.raises(ImageError, match=f"only for linux/{OTHER_ARCH}; this machine is "
                       f"linux/{HOST_ARCH}"):
        await pull(f"{tiny.host}/test/multi:1", store)
    # A single manifest for another platform: its config says so.
    with pytest.raises(ImageError, match=f"built for linux/{OTHER_ARCH}"):
        await pull(f"{tiny.host}/test/multi:other", store)
    assert not tiny.layer_requests() or all(
        r.rsplit("/", 1)[1] == json.loads(tiny.manifests["test/multi:other"][1])
        ["config"]["digest"] for r in tiny.layer_requests())  # no layer fetched
    assert contents(store) == set()


async def test_a_layer_with_the_wrong_digest_is_refused(tiny: TinyRegistry,
                                                        store: ImageStore) -> None:
    image = small_image(("x", b"x" * 4000), base=BASE)
    tiny.add_layout("test/bb", "1", image.oci_files())
    bad = json.loads(tiny.manifests["test/bb:1"][1])["layers"][1]["digest"]
    tiny.tampered.add(bad)
    with pytest.raises(ImageError, match=f"layer {bad}: content is sha256:.*, expected "
                       f"{bad} \\(rule: digest mismatch\\)") as info:
        await pull(f"{tiny.host}/test/bb:1", store)
    assert f"{tiny.host}/test/bb:1" in str(info.value)
    assert contents(store) == set()


async def test_a_manifest_with_other_bytes_than_its_digest_is_refused(
        tiny: TinyRegistry, store: ImageStore) -> None:
    image = small_image(("x", b"x"))
    digest = tiny.add_layout("test/bb", "1", image.oci_files())
    tiny.tampered.add(digest)
    for ref in ("1", digest):
        with pytest.raises(ImageError, match=f"manifest {ref}: content is sha256:.*, "
                           f"expected {digest}"):
            await pull(f"{tiny.host}/test/bb{'@' if ':' in ref else ':'}{ref}", store)
    assert tiny.layer_requests() == []
    assert contents(store) == set()


async def test_a_truncated_blob_is_retried_then_refused(tiny: TinyRegistry,
                                                        store: ImageStore,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    monkeypatch.setattr(registry.Repository, "attempts", 3)
    monkeypatch.setattr(registry.Repository, "backoff", 0.01)
    image = small_image(("x", os.urandom(200_000)))
    tiny.add_layout("test/bb", "1", image.oci_files(gzip_layers=False))
    layer = json.loads(tiny.manifests["test/bb:1"][1])["layers"][0]["digest"]
    tiny.truncated.add(layer)
    with pytest.raises(RegistryError, match=f"pull {tiny.host}/test/bb:1 from {tiny.host}: "
                       f"layer {layer}: .*gave up after 3 attempts"):
        await pull(f"{tiny.host}/test/bb:1", store)
    assert tiny.layer_requests().count(f"/v2/test/bb/blobs/{layer}") == 3
    assert contents(store) == set()


async def test_a_broken_download_resumes_where_it_broke_off(tiny: TinyRegistry,
                                                            store: ImageStore) -> None:
    image = small_image(("x", os.urandom(300_000)))
    tiny.add_layout("test/bb", "1", image.oci_files(gzip_layers=False))
    layer = json.loads(tiny.manifests["test/bb:1"][1])["layers"][0]["digest"]
    tiny.cut_once.add(layer)
    seen: list[str | None] = []
    handle = tiny.handle

    async def watching(request: web.Request) -> web.StreamResponse:
        if request.path.endswith(layer):
            seen.append(request.headers.get("Range"))
        return await handle(request)

    tiny.handle = watching  # type: ignore[method-assign]
    pulled = await pull(f"{tiny.host}/test/bb:1", store)
    assert pulled.image.layers == tuple(image.diff_ids())
    assert len(seen) == 2 and seen[0] is None
    assert seen[1] is not None and int(seen[1].removeprefix("bytes=").rstrip("-")) > 0


async def test_a_download_that_starts_over_is_unpacked_from_the_whole_blob(
        tiny: TinyRegistry, store: ImageStore) -> None:
    """A registry that breaks off and then will not resume sends the blob again from its
    start: the unpacking, which read the first try as it came, starts over too."""
    image = small_image(("x", os.urandom(600_000)))
    tiny.add_layout("test/bb", "1", image.oci_files(gzip_layers=False))
    layer = json.loads(tiny.manifests["test/bb:1"][1])["layers"][0]["digest"]
    tiny.cut_then_whole.add(layer)
    pulled = await pull(f"{tiny.host}/test/bb:1", store)
    assert pulled.image.layers == tuple(image.diff_ids())
    assert sum(1 for r in tiny.requests if r.endswith(layer)) == 2
    unpacked = layer_dir(store.root, image.diff_ids()[0])
    assert len((unpacked / "x").read_bytes()) == 600_000


async def test_500s_are_retried(tiny: TinyRegistry, store: ImageStore) -> None:
    image = small_image(("x", b"x"))
    tiny.add_layout("test/bb", "1", image.oci_files())
    layer = json.loads(tiny.manifests["test/bb:1"][1])["layers"][0]["digest"]
    tiny.failures = {"/v2/test/bb/manifests/1": 2, f"/v2/test/bb/blobs/{layer}": 1}
    pulled = await pull(f"{tiny.host}/test/bb:1", store)
    assert pulled.image.layers == tuple(image.diff_ids())
    assert tiny.requests.count("/v2/test/bb/manifests/1") == 3


async def test_schema_1_is_refused(tiny: TinyRegistry, store: ImageStore) -> None:
    body = json.dumps({"schemaVersion": 1, "name": "test/old", "tag": "1",
                       "fsLayers": [], "history": []}).encode()
    tiny.add_manifest("test/old", "1",
                      "application/vnd.docker.distribution.manifest.v1+prettyjws", body)
    tiny.add_manifest("test/old", "json", "application/json", body)  # typed only inside
    for tag in ("1", "json"):
        with pytest.raises(RegistryError, match=r"is a schema 1 manifest .*push the image "
                           r"again"):
            await pull(f"{tiny.host}/test/old:{tag}", store)
    assert contents(store) == set()


async def test_an_unknown_tag_says_so(tiny: TinyRegistry, store: ImageStore) -> None:
    with pytest.raises(RegistryError, match=f"pull {tiny.host}/test/none:1 from {tiny.host}: "
                       "manifest 1: HTTP 404 .*MANIFEST_UNKNOWN.*does not know"):
        await pull(f"{tiny.host}/test/none:1", store)


async def test_an_unreachable_registry_says_so(store: ImageStore,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry.Repository, "backoff", 0.01)
    host = f"127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(RegistryError, match=f"pull {host}/test/bb:1 from {host}: manifest 1: "
                       "ClientConnectorError: .*gave up after 4 attempts"):
        await pull(f"{host}/test/bb:1", store)
    assert contents(store) == set()


async def test_an_anonymous_token_is_asked_for_once(tiny: TinyRegistry,
                                                    store: ImageStore) -> None:
    tiny.token = "anonymous-123"
    image = small_image(("x", b"x"), base=BASE)
    tiny.add_layout("test/bb", "1", image.oci_files())
    pulled = await pull(f"{tiny.host}/test/bb:1", store)
    assert pulled.image.layers == tuple(image.diff_ids())
    assert tiny.requests.count("/token") == 1


async def test_a_token_does_not_follow_a_redirect_to_other_storage(
        tiny: TinyRegistry, store: ImageStore) -> None:
    tiny.token = "anonymous-456"
    image = small_image(("x", b"x"), base=BASE)
    files = image.oci_files()
    tiny.add_layout("test/bb", "1", files)
    async with serving(TinyRegistry()) as storage:
        storage.add_layout("test/bb", "1", files)
        tiny.redirect = storage.host
        pulled = await pull(f"{tiny.host}/test/bb:1", store)
    assert pulled.image.layers == tuple(image.diff_ids())
    assert len(storage.layer_requests()) == 3  # the config and two layers
    assert storage.authorizations == [None, None, None]


async def test_a_cancelled_pull_leaves_the_store_as_it_was(tiny: TinyRegistry,
                                                           store: ImageStore) -> None:
    first = small_image(("a", b"a"), base=BASE)
    tiny.add_layout("test/a", "1", first.oci_files())
    await pull(f"{tiny.host}/test/a:1", store)
    before = contents(store)
    image = small_image(("x", os.urandom(100_000)), base=layer_tar([Entry("y", data=b"y")]))
    tiny.add_layout("test/bb", "1", image.oci_files(gzip_layers=False))
    layer = json.loads(tiny.manifests["test/bb:1"][1])["layers"][1]["digest"]
    tiny.truncated.add(layer)  # the body stops half-way: the pull is mid-blob
    task = asyncio.create_task(pull(f"{tiny.host}/test/bb:1", store))
    while f"/v2/test/bb/blobs/{layer}" not in tiny.requests:
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert contents(store) == before
    assert list((store.root / "pulls").iterdir()) == []


def test_a_dead_pulls_downloads_go_at_the_next_pull(store: ImageStore) -> None:
    pulls = store.root / "pulls"
    pulls.mkdir(parents=True)
    (pulls / "pull-999999999-abc").mkdir()  # no such process
    (pulls / f"pull-{os.getpid()}-def").mkdir()  # a live one: kept
    pull_mod._pulls_dir(store)
    assert [p.name for p in pulls.iterdir()] == [f"pull-{os.getpid()}-def"]


def test_insecure_registries(tmp_path: Path) -> None:
    assert registry.scheme("127.0.0.1:5000", {}) == "http"
    assert registry.scheme("localhost", {}) == "http"
    assert registry.scheme("[::1]:5000", {}) == "http"
    assert registry.scheme("ghcr.io", {}) == "https"
    assert registry.scheme("10.0.0.5:5000", {}) == "https"
    env = {"LINKD_INSECURE_REGISTRIES": "10.0.0.5:5000, reg.lan"}
    assert registry.scheme("10.0.0.5:5000", env) == "http"
    assert registry.scheme("10.0.0.5:6000", env) == "https"
    assert registry.scheme("reg.lan:5000", env) == "http"
    # The registries file counts as much (token realms, `linkd login`).
    (tmp_path / "registries.json").write_text('{"insecure-registries": ["10.9.0.0/16"]}')
    env = {"LINKD_REGISTRIES_CONFIG": str(tmp_path / "registries.json")}
    assert registry.scheme("10.9.1.2:5000", env) == "http"
    assert registry.scheme("10.8.1.2:5000", env) == "https"


def test_challenges_are_parsed() -> None:
    assert registry.parse_challenge(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/redis:pull"') == ("bearer", {
            "realm": "https://auth.docker.io/token", "service": "registry.docker.io",
            "scope": "repository:library/redis:pull"})
    assert registry.parse_challenge('Basic realm="x y"') == ("basic", {"realm": "x y"})


def test_a_stack_pulls_the_registries_images_it_lacks(tmp_path: Path,
                                                             store: ImageStore) -> None:
    (tmp_path / "local.tar").write_bytes(b"")
    stack = parse_stack("""
services:
  a: {image: "127.0.0.1:5000/test/a:1"}
  b: {image: "redis:7"}
  c: {image: "local.tar"}
  d: {image: "ghcr.io/org/d@sha256:%s"}
  e: {image: "127.0.0.1:5000/test/e:1", build: .}
""" % ("ab" * 32), source="t.yaml", default_project="t")
    # Compose's `missing`: every registry's image the store lacks, Docker Hub's too.
    assert to_pull(stack, tmp_path, store) == pull_mod.pullable(stack.services, tmp_path) == [
        ("127.0.0.1:5000/test/a:1", None), (f"ghcr.io/org/d@sha256:{'ab' * 32}", None),
        ("redis:7", None)]
    archive = parse_stack('services:\n  a: {image: "gone.tar"}\n  b: {image: "x.tar.gz"}\n',
                          source="t.yaml", default_project="t")
    assert to_pull(archive, tmp_path, store) == []  # files not there: never pulled
    bad = parse_stack('services:\n  web: {image: "127.0.0.1:5000/Test/a:1"}\n',
                      source="t.yaml", default_project="t")
    with pytest.raises(SpecError, match=r"services.web.image: image reference "
                       r"'127.0.0.1:5000/Test/a:1': the repository name 'Test/a' must be "
                       r"lower case \(rule: lower case\)"):
        to_pull(bad, tmp_path, store)


async def test_pull_policy_always_and_never(tiny: TinyRegistry, store: ImageStore,
                                            tmp_path: Path) -> None:
    image = small_image(("x", b"x"))
    tiny.add_layout("test/bb", "1", image.oci_files())
    ref = f"{tiny.host}/test/bb:1"
    never = parse_stack(f'services:\n  a: {{image: "{ref}", pull_policy: never}}\n',
                        source="t.yaml", default_project="t")
    assert never.service("a").pull_policy == "never"
    await pull_mod.pull_missing(never, tmp_path, store)
    assert tiny.requests == []  # never: not pulled, `up` then says it is not in the store
    always = parse_stack(f'services:\n  a: {{image: "{ref}", pull_policy: always}}\n'
                         '  b: {image: "redis:7", pull_policy: never}\n',
                         source="t.yaml", default_project="t")
    for _ in range(2):  # every up, though it is in the store the second time
        tiny.requests.clear()
        await pull_mod.pull_missing(always, tmp_path, store)
        assert "/v2/test/bb/manifests/1" in tiny.requests
    assert len(tiny.layer_requests()) == 1  # the config only: the layer is in the store
    assert to_pull(always, tmp_path, store) == [(ref, None)]


async def test_pull_policy_every_pulls_again_once_the_last_pull_is_that_old(
        tiny: TinyRegistry, store: ImageStore, tmp_path: Path) -> None:
    image = small_image(("x", b"x"))
    tiny.add_layout("test/bb", "1", image.oci_files())
    ref = f"{tiny.host}/test/bb:1"
    stack = parse_stack(f'services:\n  a: {{image: "{ref}", pull_policy: every_1h}}\n'
                        f'  b: {{image: "{ref}", pull_policy: daily}}\n',
                        source="t.yaml", default_project="t")
    await pull_mod.pull_missing(stack, tmp_path, store)  # missing: pulled
    assert store.pulled_at(ref) == pytest.approx(time.time(), abs=30)
    assert store.pulled_at(f"{ref}") == store.pulled_at(f"{tiny.host}/test/bb:1")
    tiny.requests.clear()
    await pull_mod.pull_missing(stack, tmp_path, store)  # pulled a moment ago: not again
    assert tiny.requests == []
    store.note_pull(ref, time.time() - 3601)  # the shortest policy's hour has passed
    assert to_pull(stack, tmp_path, store) == [(ref, None)]
    await pull_mod.pull_missing(stack, tmp_path, store)
    assert "/v2/test/bb/manifests/1" in tiny.requests
    assert to_pull(stack, tmp_path, store) == []
    # Loaded from a file, never pulled: a refreshing policy pulls it.
    other = small_image(("y", b"y"))
    other.name = "test/loaded:1"
    store.load(write_dir(other.oci_files(), tmp_path / "loaded"))
    assert store.pulled_at("test/loaded:1") is None
    loaded = parse_stack('services:\n  a: {image: "test/loaded:1", pull_policy: weekly}\n'
                         '  b: {image: "test/loaded:1"}\n',
                         source="t.yaml", default_project="t")
    assert to_pull(loaded, tmp_path, store) == [("test/loaded:1", None)]
    # A bad times file is only a reason to pull once more.
    (store.root / "pulled.json").write_text("{nope")
    assert store.pulled_at(ref) is None


def test_platforms_are_parsed() -> None:
    assert pull_mod.parse_platform("linux/arm/v7") == Platform("linux", "arm", "v7")
    with pytest.raises(Exception, match="OS/ARCH"):
        pull_mod.parse_platform("amd64")


async def test_up_pulls_what_is_missing_for_the_services_platform(
        tiny: TinyRegistry, store: ImageStore, tmp_path: Path) -> None:
    mine = small_image(("arch", HOST_ARCH.encode()), arch=HOST_ARCH)
    other = small_image(("arch", OTHER_ARCH.encode()), arch=OTHER_ARCH)
    d_other = tiny.add_layout("test/multi", "other", other.oci_files())
    d_mine = tiny.add_layout("test/multi", "mine", mine.oci_files())
    tiny.add_index("test/multi", "1", [({"os": "linux", "architecture": HOST_ARCH}, d_mine),
                                       ({"os": "linux", "architecture": OTHER_ARCH}, d_other)])
    stack = parse_stack(f"""
services:
  a: {{image: "{tiny.host}/test/multi:1", platform: "linux/{OTHER_ARCH}"}}
""", source="t.yaml", default_project="t")
    await pull_mod.pull_missing(stack, tmp_path, store)
    assert store.get(f"{tiny.host}/test/multi:1").layers == tuple(other.diff_ids())
    tiny.requests.clear()
    await pull_mod.pull_missing(stack, tmp_path, store)  # in the store: no request
    assert tiny.requests == []
    missing = parse_stack(f"""
services:
  web: {{image: "{tiny.host}/test/none:1"}}
  app: {{image: "{tiny.host}/test/none:1"}}
""", source="t.yaml", default_project="t")
    with pytest.raises(NotFoundError, match=(
            rf"^image {tiny.host}/test/none:1 is not in the store, and pulling it failed: "
            rf"pull {tiny.host}/test/none:1 from {tiny.host}: manifest 1: HTTP 404 .* "
            r"\(the image of app, web\); `linkd image load FILE` loads it")):
        await pull_mod.pull_missing(missing, tmp_path, store)
    # In the store, with `always`: the failed pull is the error, said as the registry's.
    tiny.add_layout("test/none", "1", mine.oci_files())
    await pull_mod.pull_missing(missing, tmp_path, store)
    del tiny.manifests["test/none:1"]
    always = parse_stack(f'services:\n  web: {{image: "{tiny.host}/test/none:1", '
                         'pull_policy: always}\n', source="t.yaml", default_project="t")
    with pytest.raises(RegistryError, match=r"HTTP 404 .* \(the image of web\)$"):
        await pull_mod.pull_missing(always, tmp_path, store)


def test_a_name_in_the_store_matches_in_either_form(store: ImageStore, tmp_path: Path) -> None:
    image = small_image(("x", b"x"))
    image.name = "busybox:1"
    store.load(write_dir(image.oci_files(), tmp_path / "bb"))
    for name in ("busybox:1", "docker.io/library/busybox:1", "index.docker.io/busybox:1",
                 "library/busybox:1"):
        assert store.get(name).layers == tuple(image.diff_ids()), name
    with pytest.raises(NotFoundError, match="`linkd image pull busybox` pulls it"):
        store.get("busybox")
    image_id = store.get("busybox:1").id
    with pytest.raises(NotFoundError, match=r"remove it by one of its names \(busybox:1\)"):
        store.remove(image_id)
    store.remove("docker.io/library/busybox:1")  # the name as loaded goes
    assert store.list() == []
    assert fmt.check_name("127.0.0.1:5000/a/b") == "127.0.0.1:5000/a/b:latest"
    assert fmt.check_name(f"a/b@sha256:{'0' * 64}") == f"a/b@sha256:{'0' * 64}"
    with pytest.raises(ImageError, match="REGISTRY"):
        fmt.check_name("host:x/b")
