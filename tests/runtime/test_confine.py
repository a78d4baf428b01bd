"""Confinement made concrete: runc's config, the shim's file and its seccomp loader, and
the modes that keep secrets at rest (issue 14 §3 and §5)."""

from __future__ import annotations

import ctypes
import errno
import json
import marshal
import os
import stat
from pathlib import Path

import pytest

from linkd.core.confinement import DEFAULT_CAPABILITIES, MASKED_PATHS, READONLY_PATHS
from linkd.core.model import Device, Limits, Security
from linkd.core.plan import ContainerPlan, RestartPolicy
from linkd.runtime.containers import confine, shim_base, shim_command
from linkd.runtime.containers.process import ProcessSpec
from linkd.runtime.containers.rootfs import bundle_config
from linkd.runtime.stack import store


def _container(security: Security) -> ContainerPlan:
    return ContainerPlan(
        name="app-1", service="app", replica=1, netns="linkd-s-app-1", hostname="app-1",
        interfaces=(), argv=("/bin/sh",), env=(), working_dir="/", user=None,
        restart=RestartPolicy(), stop_signal="SIGTERM", stop_grace_period=10.0,
        healthcheck=None, image="sha256:" + "ab" * 32, limits=Limits(), security=security)


def _config(tmp_path: Path, security: Security) -> dict[str, object]:
    spec = ProcessSpec(name="app-1", netns="n", hostname="h", argv=(), env=(),
                       working_dir=None, user=None, bind_files=(), log_path="/dev/null",
                       run_dir=str(tmp_path), rootfs_dir=str(tmp_path / "rootfs"))
    return bundle_config(spec, _container(security), "s", [])


def test_runc_gets_dockers_confinement(tmp_path: Path) -> None:
    config = _config(tmp_path, Security())
    process, linux = config["process"], config["linux"]
    assert isinstance(process, dict) and isinstance(linux, dict)
    caps = process["capabilities"]
    assert caps["bounding"] == caps["effective"] == caps["permitted"] == list(
        DEFAULT_CAPABILITIES)
    assert "inheritable" not in caps and "ambient" not in caps
    assert process["noNewPrivileges"] is True
    assert linux["maskedPaths"] == list(MASKED_PATHS)
    assert linux["readonlyPaths"] == list(READONLY_PATHS)
    assert linux["seccomp"]["defaultAction"] == "SCMP_ACT_ERRNO"
    names = {n for call in linux["seccomp"]["syscalls"] for n in call["names"]}
    assert "read" in names and "mount" not in names and "reboot" not in names
    rules = linux["resources"]["devices"]
    assert rules[0] == {"allow": False, "access": "rwm"}
    assert {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"} in rules
    assert not [r for r in rules if r["allow"] and r.get("type") == "b"]
    assert {"type": "cgroup"} in linux["namespaces"]
    mounts = {m["destination"]: m.get("options", []) for m in config["mounts"]}  # type: ignore[attr-defined]
    assert {"nosuid", "noexec"} <= set(mounts["/dev"])
    assert "ro" in mounts["/sys"] and "ro" in mounts["/sys/fs/cgroup"]
    assert config["root"] == {"path": str(tmp_path / "rootfs/merged"), "readonly": False}


def test_runc_privileged_read_only_and_devices(tmp_path: Path) -> None:
    config = _config(tmp_path, Security(privileged=True, read_only=True))
    process, linux = config["process"], config["linux"]
    assert isinstance(process, dict) and isinstance(linux, dict)
    assert set(process["capabilities"]["bounding"]) == confine.held()
    assert process["noNewPrivileges"] is False
    assert "seccomp" not in linux and "maskedPaths" not in linux
    assert linux["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    assert any(d["path"] == "/dev/null" for d in linux["devices"])  # the host's devices
    mounts = {m["destination"]: m.get("options", []) for m in config["mounts"]}  # type: ignore[attr-defined]
    assert "ro" not in mounts["/sys"]
    assert config["root"]["readonly"] is True  # type: ignore[index]

    config = _config(tmp_path, Security(devices=(Device("/dev/null", "/dev/mine", "r"),),
                                        seccomp="unconfined", cap_drop=("ALL",)))
    linux = config["linux"]
    assert isinstance(linux, dict)
    assert linux["devices"] == [{"path": "/dev/mine", "type": "c", "major": 1, "minor": 3,
                                 "fileMode": 0o666, "uid": 0, "gid": 0}]
    assert linux["resources"]["devices"][-1] == {"allow": True, "type": "c", "major": 1,
                                                 "minor": 3, "access": "r"}
    assert "seccomp" not in linux and "maskedPaths" in linux
    assert config["process"]["capabilities"]["bounding"] == []  # type: ignore[index]


def test_the_shims_settings_and_its_filter(tmp_path: Path) -> None:
    settings = confine.for_shim(Security(), image=True)
    assert settings["nnp"] is True and settings["cgroupns"] is True
    assert settings["masked"] == list(MASKED_PATHS)
    program = settings["seccomp"]
    assert isinstance(program, bytes) and len(program) % 8 == 0
    assert 0 < len(program) // 8 <= 4096  # BPF_MAXINSNS
    host = confine.for_shim(Security(privileged=True), image=False)
    assert host["seccomp"] is None and host["masked"] == [] and not host["cgroupns"]
    confine.write_for_shim(tmp_path, settings)
    (tmp_path / "spec.marshal").write_bytes(marshal.dumps({"name": "x"}))
    loaded = shim_base.load_spec(str(tmp_path / "spec.marshal"))
    assert loaded["confine"] == settings
    assert stat.S_IMODE((tmp_path / confine.CONFINE_FILE).stat().st_mode) == 0o600


def test_the_shim_loads_the_filter_and_it_denies() -> None:
    """In a child: no_new_privs, then the compiled default filter; unshare is then EPERM
    (it needs CAP_SYS_ADMIN, which the container's set lacks), getpid still works."""
    program = confine.for_shim(Security(), image=True)["seccomp"]
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            shim_base.prctl(shim_base.PR_SET_NO_NEW_PRIVS, 1, "nnp")
            shim_command.load_seccomp(program)
            os.getpid()
            rc = shim_base.libc.unshare(shim_base.CLONE_NEWUTS)
            os._exit(ctypes.get_errno() if rc != 0 else 0)
        except BaseException:
            os._exit(99)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == errno.EPERM


def test_a_cap_add_linkd_does_not_hold_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(confine, "held", lambda: frozenset(DEFAULT_CAPABILITIES))
    from linkd.errors import ContainerError

    with pytest.raises(ContainerError, match="cap_add CAP_SYS_ADMIN: linkd itself runs"):
        confine.capabilities(Security(cap_add=("CAP_SYS_ADMIN",)))
    assert set(confine.capabilities(Security(privileged=True))) == set(DEFAULT_CAPABILITIES)


# --- secrets at rest (§5) ------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_run_directories_are_private_and_bindings_are_the_containers_user(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "run"
    monkeypatch.setenv("LINKD_RUN_DIR", str(root))
    container = store.container_dir("s", "app-1")
    store.write_atomic(container / "bindings" / "links.env", b"DB_PASSWORD='x'\n")
    store.write_atomic(container / "bindings" / "links.json", b"{}")
    for directory in (root, root / "stacks", root / "stacks/s", container.parent, container,
                      container / "bindings"):
        assert _mode(directory) == 0o700, directory
    store.protect_container_dir(container, 65534, 65534)
    assert _mode(root) == 0o700 and _mode(container) == 0o700
    assert _mode(container / "bindings") == 0o711  # the container's user opens files in it
    for name in ("links.env", "links.json"):
        st = (container / "bindings" / name).stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (65534, 65534, 0o400)
    # A peer changed: the file is replaced, and stays the container user's, 0400.
    store.write_atomic(container / "bindings" / "links.env", b"DB_PASSWORD='y'\n")
    st = (container / "bindings" / "links.env").stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (65534, 0o400)
    assert (container / "bindings" / "links.env").read_text() == "DB_PASSWORD='y'\n"
    # A run directory someone made 0755 becomes 0700 again on the next write.
    os.chmod(root, 0o755)
    store.write_atomic(container / "hosts", b"127.0.0.1 localhost\n")
    assert _mode(root) == 0o700


def test_a_replaced_file_never_gets_wider_than_asked(tmp_path: Path) -> None:
    path = tmp_path / "lease"
    path.write_bytes(b"old")
    os.chmod(path, 0o644)
    store.write_atomic(path, b"new", 0o600)
    assert _mode(path) == 0o600


def test_pytest_records_are_0600(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LINKD_RUN_DIR", str(tmp_path / "run"))
    from linkd.client import pytest_plugin

    prefix = pytest_plugin.Run().next_name().rsplit("-", 1)[0]
    record = pytest_plugin.records_dir() / f"{prefix}.json"
    assert _mode(record) == 0o600 and _mode(record.parent) == 0o700
    assert json.loads(record.read_text())["pid"] == os.getpid()
    record.unlink()
