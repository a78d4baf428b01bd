"""The pure image rules: layer entries, digests, platforms, documents, names."""

from __future__ import annotations

import json

import pytest

from linkd.core import image_format as fmt
from linkd.core import layer_rules
from linkd.core.image_format import Platform
from linkd.core.layer_rules import LayerEntry
from linkd.errors import ImageError, LinkdError

AMD64 = Platform("linux", "amd64")
DIGEST = "sha256:" + "ab" * 32

ENTRIES = [
    # (name, kind, linkname, dev, expected LayerEntry)
    ("bin/sh", "file", "", (0, 0), LayerEntry("file", "bin/sh")),
    ("./bin//sh", "file", "", (0, 0), LayerEntry("file", "bin/sh")),
    ("./", "dir", "", (0, 0), LayerEntry("skip", "")),
    ("etc/", "dir", "", (0, 0), LayerEntry("dir", "etc")),
    ("bin/ls", "symlink", "busybox", (0, 0), LayerEntry("symlink", "bin/ls", "busybox")),
    ("bin/ls", "symlink", "/bin/busybox", (0, 0), LayerEntry("symlink", "bin/ls", "/bin/busybox")),
    ("a/b/c", "symlink", "../../x", (0, 0), LayerEntry("symlink", "a/b/c", "../../x")),
    ("bin/x", "hardlink", "./bin/busybox", (0, 0), LayerEntry("hardlink", "bin/x", "bin/busybox")),
    ("run/fifo", "fifo", "", (0, 0), LayerEntry("fifo", "run/fifo")),
    ("etc/.wh.motd", "file", "", (0, 0), LayerEntry("whiteout", "etc/motd")),
    ("etc/.wh..wh..opq", "file", "", (0, 0), LayerEntry("opaque", "etc")),
    (".wh..wh..opq", "file", "", (0, 0), LayerEntry("opaque", "")),
    ("etc/.wh..wh.plnk", "dir", "", (0, 0), LayerEntry("skip", "etc/.wh..wh.plnk")),
    ("etc/gone", "chr", "", (0, 0), LayerEntry("whiteout", "etc/gone")),
]


@pytest.mark.parametrize(("name", "kind", "link", "dev", "expected"), ENTRIES)
def test_layer_entries_are_classified(
    name: str, kind: str, link: str, dev: tuple[int, int], expected: LayerEntry
) -> None:
    assert layer_rules.classify_entry("img", "L", name, kind, link, *dev) == expected


REFUSED = [
    ("/etc/passwd", "file", "", (0, 0), "absolute path"),
    ("../evil", "file", "", (0, 0), "'..' in path"),
    ("a/../../evil", "file", "", (0, 0), "'..' in path"),
    ("a/link", "symlink", "../../etc", (0, 0), "symlink escapes the root"),
    ("link", "symlink", "..", (0, 0), "symlink escapes the root"),
    ("a/link", "symlink", "b/../../..", (0, 0), "symlink escapes the root"),
    ("link", "symlink", "", (0, 0), "symlink"),
    ("x", "hardlink", "/etc/shadow", (0, 0), "hard link escapes the root"),
    ("x", "hardlink", "../etc/shadow", (0, 0), "hard link escapes the root"),
    ("dev/null", "chr", "", (1, 3), "device node"),
    ("dev/sda", "blk", "", (8, 0), "device node"),
    ("x", "type 'V'", "", (0, 0), "entry type"),
    # Whiteouts must name an entry of their directory (issue 14: `.wh.` replaced the
    # layer's root by a device, `.wh...` removed the load's work directory).
    (".wh.", "file", "", (0, 0), "whiteout name"),
    ("etc/.wh.", "file", "", (0, 0), "whiteout name"),
    (".wh..", "file", "", (0, 0), "whiteout name"),
    (".wh...", "chr", "", (0, 0), "whiteout name"),
    ("etc/.wh.x/y", "file", "", (0, 0), "whiteout name"),
    ("a\0b", "file", "", (0, 0), "NUL in path"),
    ("l", "symlink", "/a\0b", (0, 0), "NUL in path"),
    ("n" * 256, "file", "", (0, 0), "name length"),
    ("a/" * 2048 + "f", "file", "", (0, 0), "path limit"),
    ("l", "symlink", "/x" * 2048 + "y", (0, 0), "path limit"),
]


@pytest.mark.parametrize(("name", "kind", "link", "dev", "rule"), REFUSED)
def test_bad_layer_entries_are_refused_naming_image_entry_and_rule(
    name: str, kind: str, link: str, dev: tuple[int, int], rule: str
) -> None:
    with pytest.raises(ImageError) as err:
        layer_rules.classify_entry("busybox.tar", "sha256:1234", name, kind, link, *dev)
    assert err.value.rule == rule
    message = str(err.value)
    assert message.startswith("image busybox.tar: layer sha256:1234: ")
    assert name in message and f"(rule: {rule})" in message
    assert isinstance(err.value, LinkdError)


def test_aufs_bookkeeping_is_skipped_with_everything_beneath_it() -> None:
    assert layer_rules.classify_entry("i", "L", ".wh..wh.plnk/123.4", "file") == LayerEntry(
        "skip", ".wh..wh.plnk/123.4")
    assert layer_rules.classify_entry("i", "L", "a/.wh..wh.aufs", "file").kind == "skip"


def test_load_limits_come_from_the_environment() -> None:
    assert layer_rules.limits_from_env({}) == layer_rules.Limits() == layer_rules.DEFAULT_LIMITS
    got = layer_rules.limits_from_env({
        "LINKD_IMAGE_MAX_SIZE": "32G", "LINKD_IMAGE_MAX_ENTRIES": "5",
        "LINKD_IMAGE_MAX_SPARSE": "1m", "LINKD_IMAGE_MAX_RATIO": "7",
        "LINKD_IMAGE_MAX_PATH": "200", "OTHER": "x"})
    assert got == layer_rules.Limits(size=32 << 30, entries=5, path=200, sparse=1 << 20, ratio=7)
    assert layer_rules.limits_from_env({"LINKD_IMAGE_MAX_SIZE": "512KiB"}).size == 512 << 10
    for var, bad in (("LINKD_IMAGE_MAX_ENTRIES", "5K"), ("LINKD_IMAGE_MAX_RATIO", "0"),
                     ("LINKD_IMAGE_MAX_SIZE", "-1"), ("LINKD_IMAGE_MAX_SIZE", "lots")):
        with pytest.raises(LinkdError, match=rf"\${var}='{bad}': expected a positive"):
            layer_rules.limits_from_env({var: bad})


def test_an_error_over_a_limit_names_it_the_value_and_the_variable() -> None:
    limits = layer_rules.Limits(size=1 << 30)
    err = layer_rules.over_limit("bomb.tar", "layer sha256:ab", "size",
                                 "the layers expand to at least", (1 << 30) + 1, limits)
    assert err.rule == "size limit"
    assert str(err) == (
        "image bomb.tar: layer sha256:ab: the layers expand to at least 1,073,741,825 "
        "bytes, over "
        "the limit of 1,073,741,824 bytes (LINKD_IMAGE_MAX_SIZE=1G, default 16G); to load "
        "this image, set LINKD_IMAGE_MAX_SIZE higher in the environment of linkd (the "
        "daemon or `linkd image load`) (rule: size limit)")
    assert layer_rules.show_amount("sparse", 64 << 20) == "64M"
    assert layer_rules.show_amount("size", (1 << 30) + 1) == str((1 << 30) + 1)
    assert layer_rules.show_amount("entries", 1 << 20) == str(1 << 20)


def test_digests_and_blob_paths() -> None:
    assert fmt.check_digest("i", "e", DIGEST) == DIGEST
    assert fmt.blob_path(DIGEST) == "blobs/sha256/" + "ab" * 32
    for bad in ("sha256:abc", "sha512:" + "ab" * 64, "md5:x", None, 3, "SHA256:" + "AB" * 32):
        with pytest.raises(ImageError, match=r"rule: digest"):
            fmt.check_digest("i", "e", bad)


def test_archive_members_are_normalized_and_checked() -> None:
    assert fmt.archive_member("i", "./blobs//sha256/x") == "blobs/sha256/x"
    with pytest.raises(ImageError, match="absolute path"):
        fmt.archive_member("i", "/etc/passwd")
    with pytest.raises(ImageError, match=r"'\.\.' in path"):
        fmt.archive_member("i", "blobs/../../x")


def test_platform_of_the_machine() -> None:
    assert fmt.machine_platform("x86_64") == AMD64
    assert fmt.machine_platform("aarch64") == Platform("linux", "arm64")
    assert fmt.machine_platform("armv7l") == Platform("linux", "arm", "v7")
    assert Platform("linux", "arm", "v7").runs_on(Platform("linux", "arm", "v7"))
    assert not Platform("linux", "arm", "v6").runs_on(Platform("linux", "arm", "v7"))
    assert Platform("linux", "arm64").runs_on(Platform("linux", "arm64", "v8"))
    assert str(Platform("linux", "arm", "v7")) == "linux/arm/v7"


def _desc(arch: str | None, digest: str = DIGEST) -> fmt.Descriptor:
    platform = Platform("linux", arch) if arch else None
    return fmt.Descriptor(fmt.OCI_MANIFEST, digest, 10, platform)


def test_select_manifest_takes_this_machines_platform() -> None:
    other = "sha256:" + "cd" * 32
    assert fmt.select_manifest("i", (_desc("arm64"), _desc("amd64", other)), AMD64).digest == other
    assert fmt.select_manifest("i", (_desc(None),), AMD64).digest == DIGEST
    with pytest.raises(ImageError) as err:
        fmt.select_manifest("busybox", (_desc("arm64"), _desc("s390x")), AMD64)
    assert err.value.rule == "architecture"
    assert "only for linux/arm64, linux/s390x; this machine is linux/amd64" in str(err.value)
    with pytest.raises(ImageError, match="no manifests"):
        fmt.select_manifest("i", (), AMD64)


def _config(**over: object) -> bytes:
    doc: dict[str, object] = {
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [DIGEST]},
        "config": {
            "Entrypoint": ["/bin/entry"], "Cmd": ["serve", "-v"], "Env": ["PATH=/bin", "A=1"],
            "WorkingDir": "/srv", "User": "65534:65534", "ExposedPorts": {"80/tcp": {},
                                                                       "53/udp": {}},
            "StopSignal": "SIGINT", "Labels": {"k": "v"},
            "Healthcheck": {"Test": ["CMD-SHELL", "true"], "Interval": 2_000_000_000,
                            "Retries": 3},
        },
    }
    doc.update(over)
    return json.dumps(doc).encode()


def test_config_is_parsed() -> None:
    c = fmt.parse_config("i", "config", _config())
    assert c.entrypoint == ("/bin/entry",) and c.cmd == ("serve", "-v")
    assert c.env == ("PATH=/bin", "A=1") and c.working_dir == "/srv"
    assert c.user == "65534:65534" and c.stop_signal == "SIGINT"
    assert c.exposed_ports == ("53/udp", "80/tcp")
    assert c.healthcheck == fmt.Healthcheck(("CMD-SHELL", "true"), 2_000_000_000, 0, 0, 3)
    assert c.labels == (("k", "v"),) and c.diff_ids == (DIGEST,)
    fmt.check_platform("i", "config", c, AMD64)
    with pytest.raises(ImageError, match=r"built for linux/arm64; this machine is linux/amd64"):
        fmt.check_platform("i", "config", fmt.parse_config("i", "c", _config(
            architecture="arm64")), AMD64)
    bare = fmt.parse_config("i", "c", _config(config=None))
    assert bare.entrypoint is None and bare.cmd is None and bare.env == ()


@pytest.mark.parametrize(("data", "match"), [
    (b"{not json", "not valid JSON"),
    (b"[]", "must be an object"),
    (_config(rootfs={"type": "other"}), "rootfs.type"),
    (_config(rootfs={"type": "layers", "diff_ids": ["sha256:short"]}), "not a sha256"),
    (_config(config={"Cmd": "sh -c x"}), "Cmd must be a list"),
])
def test_bad_configs_are_refused(data: bytes, match: str) -> None:
    with pytest.raises(ImageError, match=match):
        fmt.parse_config("i", "config", data)


def test_manifests_and_indexes() -> None:
    layer = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": DIGEST,
             "size": 5}
    config = {"mediaType": fmt.OCI_CONFIG, "digest": DIGEST, "size": 3}
    m = fmt.parse_manifest("i", "m", json.dumps({"config": config, "layers": [layer]}).encode())
    assert m.layers[0].size == 5 and m.config.digest == DIGEST
    with pytest.raises(ImageError, match="unsupported layer type"):
        fmt.parse_manifest("i", "m", json.dumps({"config": config, "layers": [
            dict(layer, mediaType="application/x-tar")]}).encode())
    with pytest.raises(ImageError, match="not an image manifest"):
        fmt.parse_manifest("i", "m", json.dumps({"mediaType": fmt.OCI_INDEX}).encode())
    index = json.dumps({"manifests": [dict(config, mediaType=fmt.OCI_MANIFEST, platform={
        "os": "linux", "architecture": "amd64"}, annotations={
        "org.opencontainers.image.ref.name": "busybox:1"})]}).encode()
    (d,) = fmt.parse_index("i", "index.json", index)
    assert d.platform == AMD64 and d.ref_name == "busybox:1"
    assert fmt.referenced_digests(index) == (DIGEST,)
    assert fmt.referenced_digests(b"\x1f\x8b") == ()
    fmt.parse_layout_marker("i", b'{"imageLayoutVersion": "1.0.0"}')
    with pytest.raises(ImageError, match="layout version"):
        fmt.parse_layout_marker("i", b'{"imageLayoutVersion": "2.0.0"}')


def test_docker_save_manifest() -> None:
    doc = [{"Config": "abc.json", "RepoTags": ["busybox:1"], "Layers": ["./l1/layer.tar"]}]
    (e,) = fmt.parse_save_manifest("i", json.dumps(doc).encode())
    assert e == fmt.SaveEntry("abc.json", ("busybox:1",), ("l1/layer.tar",))
    with pytest.raises(ImageError, match=r"'\.\.' in path"):
        fmt.parse_save_manifest("i", json.dumps([dict(doc[0], Layers=["../x"])]).encode())
    with pytest.raises(ImageError, match="non-empty list"):
        fmt.parse_save_manifest("i", b"[]")


def test_names() -> None:
    assert fmt.check_name("busybox") == "busybox:latest"
    assert fmt.check_name("docker.io/library/busybox:1.36") == "docker.io/library/busybox:1.36"
    assert fmt.check_name("localhost/app") == "localhost/app:latest"
    for bad in ("BusyBox", "", "a b", "../x", "x:", "/abs"):
        with pytest.raises(ImageError, match="image name"):
            fmt.check_name(bad)
    assert fmt.default_name(("busybox:1",), "/x/y.tar") == "busybox:1"
    assert fmt.default_name(("busybox",), "/x/y.tar") == "busybox:latest"
    assert fmt.default_name((), "/tmp/My-App.oci.tar") == "my-app:latest"
    assert fmt.default_name((), "/tmp/app/", "v2") == "app:v2"
