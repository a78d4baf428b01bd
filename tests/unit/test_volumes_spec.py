"""`volumes:` and `volumes_from:` read as Compose reads them: the short and long syntax,
sources settled against the stack file's directory, named volumes against the top level,
anonymous ones named by their stack, container and target; and bad input refused with
the field and the fix."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from linkd.core.image_config import with_image
from linkd.core.image_format import ImageConfig
from linkd.core.model import Mount, Stack, Volume
from linkd.core.plan import anonymous_volume, realize
from linkd.errors import SpecError
from linkd.spec.stack_file import parse_stack
from linkd.spec.values import Bad
from linkd.spec.volumes import check_target


def parse(text: str, **kw: Any) -> Stack:
    kw.setdefault("default_project", "proj")
    kw.setdefault("directory", "/srv/app")
    kw.setdefault("host_env", {"HOME": "/home/u"})
    return parse_stack(textwrap.dedent(text), source="compose.yaml", **kw)


def problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse(text)
    return [p[2] for p in info.value.problems]


def test_the_short_syntax_as_compose_reads_it() -> None:
    stack = parse("""
        services:
          db:
            image: postgres
            volumes:
              - data:/var/lib/postgresql/data
              - ./init.sql:/docker-entrypoint-initdb.d/init.sql:ro
              - ../shared:/shared:rw,z
              - ~/cache:/cache:Z
              - /etc/ssl/certs:/certs:ro
              - /scratch
        volumes:
          data:
    """)
    assert stack.service("db").volumes == (
        Mount("volume", "/var/lib/postgresql/data", "data"),
        Mount("bind", "/docker-entrypoint-initdb.d/init.sql", "/srv/app/init.sql", True,
              create_host_path=True),
        Mount("bind", "/shared", "/srv/shared", False, create_host_path=True),
        Mount("bind", "/cache", "/home/u/cache", False, create_host_path=True),
        Mount("bind", "/certs", "/etc/ssl/certs", True, create_host_path=True),
        Mount("volume", "/scratch"),
    )
    assert stack.volumes == (Volume("data", "proj_data"),)


def test_the_long_syntax() -> None:
    stack = parse("""
        services:
          app:
            image: app
            volumes:
              - type: volume
                source: data
                target: /data
                read_only: true
                volume: {nocopy: true}
              - type: bind
                source: ./conf
                target: /etc/app
                bind: {create_host_path: true, propagation: rprivate}
              - type: bind
                source: /srv/x
                target: /x
              - type: tmpfs
                target: /run/cache
                tmpfs: {size: 64m, mode: 1770}
        volumes:
          data: {name: shared-data, labels: {tier: db}}
    """)
    assert stack.service("app").volumes == (
        Mount("volume", "/data", "data", True, nocopy=True),
        Mount("bind", "/etc/app", "/srv/app/conf", create_host_path=True),
        Mount("bind", "/x", "/srv/x"),
        Mount("tmpfs", "/run/cache", data="size=64m,mode=1770"),
    )
    assert stack.volumes == (Volume("data", "shared-data", labels=(("tier", "db"),)),)


def test_top_level_volumes_external_and_bind_devices() -> None:
    stack = parse("""
        services: {a: {image: x, volumes: [e1:/a, e2:/b, dev:/c]}}
        volumes:
          e1: {external: true}
          e2: {external: {name: legacy}}
          dev:
            driver: local
            driver_opts: {type: none, o: bind, device: ./data}
    """)
    assert stack.volumes == (
        Volume("e1", "e1", external=True),
        Volume("e2", "legacy", external=True),
        Volume("dev", "proj_dev", device="/srv/app/data"),
    )
    assert stack.warnings == ()


def test_other_drivers_are_warned_and_kept_as_directories() -> None:
    stack = parse("""
        services: {a: {image: x, volumes: [n:/n]}}
        volumes:
          n:
            driver: rexray
            driver_opts: {type: nfs, o: "addr=10.0.0.1", device: ":/export"}
    """)
    assert stack.volumes == (Volume("n", "proj_n"),)
    assert len(stack.warnings) == 2
    assert "rexray" in stack.warnings[0] and "driver_opts" in stack.warnings[1]


@pytest.mark.parametrize(("mount", "says"), [
    ("undeclared:/data", 'volume "undeclared" is not declared in the top-level volumes:'),
    ("data:relative", "is not an absolute path"),
    ("/proc/sys/x", "inside /proc"),
    ("./x:/proc", "inside /proc"),
    ("./x:/", "cannot be mounted at /"),
    ("./x:/a:rx", 'unknown volume mode "rx"'),
    ("a:b:c:d", "expected [SOURCE:]TARGET[:MODE]"),
    ("{type: npipe, source: x, target: /x}", "named pipes are Windows'"),
    ("{type: image, source: x, target: /x}", "does not mount images"),
    ("{type: bind, target: /x}", 'a bind mount needs "source"'),
    ("{type: volume, source: data}", 'needs "target"'),
    ("{source: data, target: /x}", 'needs "type"'),
    ("{type: volume, source: data, target: /x, volume: {subpath: a}}", "subpath"),
    ("{type: tmpfs, target: /x, tmpfs: {mode: 999}}", "octal file mode"),
])
def test_bad_mounts_name_the_field_and_the_fix(mount: str, says: str) -> None:
    found = problems(f"""
        services:
          a:
            image: x
            volumes: [{mount}]
        volumes: {{data: {{}}}}
    """)
    assert any(says in p for p in found), found


def test_two_mounts_at_one_target_are_refused() -> None:
    found = problems("""
        services: {a: {image: x, volumes: ["./a:/data", "./b:/data/"]}}
    """)
    assert "mounts two things at /data" in found[0]


def test_volumes_from_shares_the_sources_mounts_and_starts_after_it() -> None:
    stack = parse("""
        services:
          data:
            image: x
            container_name: store
            volumes: [/var/lib/x, "shared:/shared", "./conf:/conf:ro"]
            tmpfs: [/run]
          app:
            image: y
            volumes: ["./own:/shared"]
            volumes_from: ["container:store:ro"]
          other:
            image: z
            volumes_from: [data]
        volumes: {shared: {}}
    """)
    app, other = stack.service("app"), stack.service("other")
    assert app.volumes == (
        Mount("bind", "/shared", "/srv/app/own", create_host_path=True),  # its own wins
        Mount("volume", "/var/lib/x", "", True, owner="store"),
        Mount("bind", "/conf", "/srv/app/conf", True, create_host_path=True),
    )
    assert [d.service for d in app.depends_on] == ["data"]
    assert other.volumes[0] == Mount("volume", "/var/lib/x", owner="store")
    # The one anonymous volume both see is the source container's.
    plan = realize(stack, _subnets(stack))
    names = {c.name: {m.target: m.source for m in c.mounts} for c in plan.containers}
    assert names["store"]["/var/lib/x"] == names["app-1"]["/var/lib/x"] \
        == names["other-1"]["/var/lib/x"] == anonymous_volume("proj", "store", "/var/lib/x")


def test_volumes_from_an_unknown_source_or_a_loop_is_refused() -> None:
    assert "not another service or container" in problems("""
        services: {a: {image: x, volumes_from: [nope]}}
    """)[0]
    found = problems("""
        services:
          a: {image: x, volumes_from: [b]}
          b: {image: x, volumes_from: [a]}
    """)
    assert any("goes round" in p or "cycle" in p for p in found), found


def test_the_plan_names_volumes_as_they_are_stored_and_orders_mounts_by_depth() -> None:
    stack = parse("""
        services:
          a:
            image: x
            scale: 2
            volumes: ["data:/srv/data/inner", "/srv", "./cfg:/srv/data"]
        volumes: {data: {}, unused: {}}
    """)
    plan = realize(stack, _subnets(stack))
    first, second = plan.containers
    assert [m.target for m in first.mounts] == ["/srv", "/srv/data", "/srv/data/inner"]
    assert first.mounts[0].source == anonymous_volume("proj", "a-1", "/srv")
    assert second.mounts[0].source == anonymous_volume("proj", "a-2", "/srv")
    assert first.mounts[2].source == second.mounts[2].source == "proj_data"
    # Every declared volume (Compose makes them all), then the anonymous ones.
    assert [v.name for v in plan.volumes] == [
        "proj_data", "proj_unused", first.mounts[0].source, second.mounts[0].source]
    assert [v.key for v in plan.volumes][2:] == ["", ""]


def test_an_images_volume_paths_become_anonymous_volumes_unless_mounted() -> None:
    stack = parse("""
        services: {db: {image: pg, volumes: ["./pg:/var/lib/pg"], tmpfs: [/tmp/t]}}
    """)
    config = ImageConfig("amd64", "linux", (), volumes=(
        "/var/lib/pg", "/logs", "/tmp/t", "relative", "/proc/x"))
    service = with_image(stack.service("db"), "sha256:" + "0" * 64, config)
    assert [(m.kind, m.target) for m in service.volumes] == [
        ("bind", "/var/lib/pg"), ("volume", "/logs")]


def test_a_relative_target_is_not_normalized_into_an_absolute_one() -> None:
    with pytest.raises(Bad):
        check_target("data/../x")


@given(st.lists(st.sampled_from(["a", "..", ".", "", "proc", "sys", "x y", "é"]),
                min_size=1, max_size=8))
def test_targets_are_absolute_normal_and_never_the_kernels(parts: list[str]) -> None:
    try:
        path = check_target("/" + "/".join(parts))
    except Bad:
        return
    assert path.startswith("/") and path != "/" and "/../" not in path + "/"
    assert not path.startswith("//") and path == path.rstrip("/")
    assert path.split("/")[1] != "proc"


@given(st.text(alphabet="./~:abz-_ ", min_size=1, max_size=30))
def test_any_short_entry_is_a_mount_or_a_clear_problem(entry: str) -> None:
    text = f'services: {{a: {{image: x, volumes: ["{entry}"]}}}}\nvolumes: {{abz: {{}}}}\n'
    try:
        stack = parse(text)
    except SpecError as exc:
        assert all(p[0].startswith("services.a.volumes") for p in exc.problems), exc
        return
    for mount in stack.service("a").volumes:
        assert mount.target.startswith("/")
        assert mount.kind != "bind" or mount.source.startswith("/")


def _subnets(stack: Stack) -> dict[str, Any]:
    from ipaddress import IPv4Network
    return {n.name: IPv4Network(f"10.99.{i}.0/24") for i, n in enumerate(stack.networks)}
