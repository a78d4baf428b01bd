"""The OCI bundle linkd gives runc, and users resolved from an image's layers."""

from __future__ import annotations

from pathlib import Path

import pytest

from linkd.core.model import Limits
from linkd.core.plan import ContainerPlan, RestartPolicy
from linkd.errors import ContainerError
from linkd.runtime.containers.process import ProcessSpec
from linkd.runtime.containers.rootfs import bundle_config, resolve_user, runtime_of


def _layers(tmp_path: Path) -> list[Path]:
    top, bottom = tmp_path / "top", tmp_path / "bottom"
    for layer in (top, bottom):
        (layer / "etc").mkdir(parents=True)
    (bottom / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\nold:x:5:5::/:/bin/sh\n")
    (top / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/:/bin/sh\n")
    (bottom / "etc/group").write_text("root:x:0:\napp:x:1001:\nweb:x:33:app\n")
    return [top, bottom]


def test_users_come_from_the_topmost_passwd(tmp_path: Path) -> None:
    layers = _layers(tmp_path)
    assert resolve_user(layers, None) == (0, 0, [])
    assert resolve_user(layers, "app") == (1000, 1001, [33])
    assert resolve_user(layers, "app:web") == (1000, 33, [])
    assert resolve_user(layers, "1000") == (1000, 1001, [33])
    assert resolve_user(layers, "4242:7") == (4242, 7, [])
    with pytest.raises(ContainerError, match="user 'old' not found"):
        resolve_user(layers, "old")  # the top layer's passwd replaced the bottom one's
    with pytest.raises(ContainerError, match="group 'nope' not found"):
        resolve_user(layers, "app:nope")


def _container(**over: object) -> ContainerPlan:
    fields: dict[str, object] = dict(
        name="app-1", service="app", replica=1, netns="linkd-s-app-1", hostname="app-1",
        interfaces=(), argv=("/entry.sh", "serve"), env=(("PATH", "/bin"), ("A", "1")),
        working_dir="/srv", user="app", restart=RestartPolicy(), stop_signal="SIGTERM",
        stop_grace_period=10.0, healthcheck=None, image="sha256:" + "ab" * 32,
        limits=Limits(64 << 20, 0.5, 50, (("nofile", 1024, 4096), ("core", -1, -1))),
        tmpfs=(("/run", ("nodev", "noexec", "nosuid"), "size=1m"),),
    )
    fields.update(over)
    return ContainerPlan(**fields)  # type: ignore[arg-type]


def test_the_bundle_joins_linkds_network_namespace_and_nests_its_cgroups(
        tmp_path: Path) -> None:
    spec = ProcessSpec(
        name="app-1", netns="linkd-s-app-1", hostname="app-1", argv=(), env=(),
        working_dir=None, user=None,
        bind_files=(("/run/linkd/x/hosts", "/etc/hosts"),), log_path="/dev/null",
        run_dir=str(tmp_path), bind_dirs=(("/run/linkd/x/bindings", "/run/linkd"),),
        rootfs_dir=str(tmp_path / "rootfs"),
    )
    config = bundle_config(spec, _container(), "s", _layers(tmp_path))
    process = config["process"]
    assert isinstance(process, dict)
    assert process["args"] == ["/entry.sh", "serve"] and process["cwd"] == "/srv"
    assert process["env"] == ["PATH=/bin", "A=1"]
    assert process["user"] == {"uid": 1000, "gid": 1001, "additionalGids": [33]}
    assert process["rlimits"] == [  # ulimits; -1 (unlimited) as RLIM_INFINITY
        {"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 4096},
        {"type": "RLIMIT_CORE", "soft": (1 << 64) - 1, "hard": (1 << 64) - 1}]
    assert config["root"] == {"path": str(tmp_path / "rootfs/merged"), "readonly": False}
    linux = config["linux"]
    assert isinstance(linux, dict)
    assert linux["namespaces"] == [{"type": "mount"},
                                   {"type": "network", "path": "/run/netns/linkd-s-app-1"},
                                   {"type": "cgroup"}]
    assert linux["cgroupsPath"] == "linkd/s/app-1"  # relative: under linkd's own cgroup
    resources = dict(linux["resources"])
    assert resources.pop("devices")[0] == {"allow": False, "access": "rwm"}  # deny, then some
    assert resources == {"memory": {"limit": 64 << 20},
                         "cpu": {"quota": 50000, "period": 100000},
                         "pids": {"limit": 50}}
    mounts = config["mounts"]
    assert isinstance(mounts, list)
    binds = {m["destination"]: m["source"] for m in mounts if m["type"] == "bind"}
    assert {"destination": "/run", "type": "tmpfs", "source": "tmpfs",
            "options": ["nodev", "noexec", "nosuid", "size=1m"]} in mounts
    assert binds == {"/etc/hosts": "/run/linkd/x/hosts", "/run/linkd": "/run/linkd/x/bindings"}


def test_the_runtime_is_chosen_per_service_then_by_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LINKD_RUNTIME", "linkd")
    assert runtime_of(_container()) == "linkd"
    assert runtime_of(_container(runtime="linkd")) == "linkd"
    monkeypatch.setenv("LINKD_RUNTIME", "podman")
    with pytest.raises(ContainerError, match="expected runc, linkd or auto"):
        runtime_of(_container())
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("LINKD_RUNTIME", "auto")
    assert runtime_of(_container()) == "linkd"  # runc is not installed (on this PATH)
    with pytest.raises(ContainerError, match="runc is not installed"):
        runtime_of(_container(runtime="runc"))
