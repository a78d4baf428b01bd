"""The confinement keys as parsed, the capability rules, and the seccomp profiles (pure)."""

from __future__ import annotations

import importlib.resources
import json

import pytest

from linkd.core.confinement import DEFAULT_CAPABILITIES, capabilities, no_new_privileges
from linkd.core.model import Device, Security
from linkd.core.seccomp_profile import (
    ProfileError,
    SeccompProfile,
    parse_docker,
    parse_rules,
    resolve,
)
from linkd.errors import SpecError
from linkd.spec.stack_file import parse_stack, stack_to_dict


def _parse(text: str, files: dict[str, str] | None = None) -> Security:
    def read(name: str) -> str:
        if files is None or name not in files:
            raise FileNotFoundError(2, "No such file or directory")
        return files[name]

    stack = parse_stack(text, source="t.yaml", default_project="p", read_text=read)
    return stack.services[0].security


def _errors(text: str, files: dict[str, str] | None = None) -> str:
    with pytest.raises(SpecError) as info:
        _parse(text, files)
    return str(info.value)


def test_the_keys_are_read_as_compose_and_docker_read_them() -> None:
    security = _parse("""
services:
  a:
    image: x
    privileged: false
    read_only: true
    cap_add: [net_admin, CAP_SYS_PTRACE, NET_ADMIN]
    cap_drop: [chown]
    security_opt: ["no-new-privileges:false", "seccomp=p.json", "systempaths=unconfined"]
    devices: ["/dev/fuse", "/dev/net/tun:/dev/tun:rw", "/dev/kvm:r"]
""", {"p.json": json.dumps({"defaultAction": "SCMP_ACT_ALLOW"})})
    assert security.cap_add == ("CAP_NET_ADMIN", "CAP_SYS_PTRACE")
    assert security.cap_drop == ("CAP_CHOWN",)
    assert security.read_only and not security.privileged
    assert security.no_new_privileges is False and not security.system_paths
    assert security.seccomp == "file" and security.seccomp_file == "p.json"
    assert security.seccomp_profile == SeccompProfile("allow")
    assert security.devices == (Device("/dev/fuse", "/dev/fuse", "rwm"),
                                Device("/dev/net/tun", "/dev/tun", "rw"),
                                Device("/dev/kvm", "/dev/kvm", "r"))
    assert _parse("services: {a: {command: [x], security_opt: [no-new-privileges]}}"
                  ).no_new_privileges is True
    assert _parse("services: {a: {command: [x], security_opt: ['seccomp:unconfined']}}"
                  ).seccomp == "unconfined"
    assert _parse("services: {a: {command: [x]}}") == Security()


def test_linkd_config_writes_them_back() -> None:
    text = """
services:
  a:
    image: x
    privileged: true
    cap_add: [ALL]
    cap_drop: [NET_RAW]
    security_opt: [no-new-privileges, seccomp=unconfined]
    read_only: true
    devices: [/dev/fuse]
"""
    stack = parse_stack(text, source="t", default_project="p")
    service = stack_to_dict(stack)["services"]["a"]
    assert service["privileged"] is True and service["read_only"] is True
    assert service["cap_add"] == ["ALL"] and service["cap_drop"] == ["CAP_NET_RAW"]
    assert service["security_opt"] == ["no-new-privileges:true", "seccomp=unconfined"]
    assert service["devices"] == ["/dev/fuse:/dev/fuse:rwm"]


def test_label_and_apparmor_are_accepted_with_a_warning() -> None:
    stack = parse_stack("services: {a: {command: [x], security_opt: "
                        "['label=disable', 'apparmor:unconfined']}}",
                        source="t", default_project="p")
    assert any("linkd applies no SELinux profile" in w for w in stack.warnings)
    assert any("linkd applies no AppArmor profile" in w for w in stack.warnings)


@pytest.mark.parametrize(("service", "message"), [
    ("privileged: maybe", 'expected true or false, got "maybe"'),
    ("cap_add: [NOPE]", "unknown capability 'NOPE'"),
    ("cap_drop: CHOWN", "expected a list"),
    ("security_opt: [bogus]", 'unknown security option "bogus"'),
    ("security_opt: ['no-new-privileges:yes']", "no-new-privileges:false"),
    ("security_opt: ['seccomp=']", "expected seccomp=unconfined or seccomp=FILE"),
    ("security_opt: ['seccomp=none.json']",
     'cannot read seccomp profile "none.json": No such file or directory'),
    ("security_opt: ['seccomp=bad.json']", 'seccomp profile "bad.json": not valid JSON'),
    ("security_opt: ['systempaths=yes']", "expected systempaths=unconfined"),
    ("read_only: true", "read_only needs an image"),
    ("devices: [/dev/fuse]", "devices needs an image"),
])
def test_bad_values_name_the_key_and_the_fix(service: str, message: str) -> None:
    text = f"services:\n  a:\n    command: [x]\n    {service}\n"
    assert message in _errors(text, {"bad.json": "{"})


@pytest.mark.parametrize(("device", "message"), [
    ("dev/fuse", "device paths must be absolute"),
    ("/dev/fuse:/dev/f:rwx", "permissions are letters from rwm"),
    ("/dev/a:/dev/b:r:w", "expected HOST[:CONTAINER[:PERMISSIONS]]"),
    ("/dev/../etc/shadow", "may not contain .."),
    ("nvidia.com/gpu=all", "CDI device names"),
])
def test_bad_devices(device: str, message: str) -> None:
    text = f"services:\n  a:\n    image: x\n    devices: ['{device}']\n"
    assert message in _errors(text)


def test_capabilities_follow_dockers_rules() -> None:
    assert capabilities(Security()) == DEFAULT_CAPABILITIES
    dropped = capabilities(Security(cap_drop=("CAP_CHOWN",), cap_add=("CAP_NET_ADMIN",)))
    assert "CAP_CHOWN" not in dropped and dropped[-1] == "CAP_NET_ADMIN"
    assert capabilities(Security(cap_drop=("ALL",), cap_add=("CAP_KILL",))) == ("CAP_KILL",)
    every = capabilities(Security(cap_add=("ALL",), cap_drop=("CAP_SYS_ADMIN",)), 40)
    assert len(every) == 40 and "CAP_SYS_ADMIN" not in every
    assert len(capabilities(Security(privileged=True), 40)) == 41
    assert len(capabilities(Security(privileged=True), 37)) == 38  # what the kernel knows
    assert no_new_privileges(Security()) is True
    assert no_new_privileges(Security(privileged=True)) is False
    assert no_new_privileges(Security(privileged=True, no_new_privileges=True)) is True


def _default() -> SeccompProfile:
    return parse_rules(importlib.resources.files("linkd.core").joinpath(
        "seccomp_default.rules").read_text())


def _allowed(profile: dict[str, object]) -> dict[str, list[dict[str, object]]]:
    calls: dict[str, list[dict[str, object]]] = {}
    for call in profile["syscalls"]:  # type: ignore[attr-defined]
        for name in call["names"]:
            calls.setdefault(name, []).append(call)
    return calls


def test_the_default_policy_is_dockers_for_the_containers_capabilities() -> None:
    profile = _default()
    plain = resolve(profile, frozenset(DEFAULT_CAPABILITIES), "amd64", (6, 1))
    assert plain["defaultAction"] == "SCMP_ACT_ERRNO" and plain["defaultErrnoRet"] == 1
    assert plain["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    calls = _allowed(plain)
    for name in ("read", "write", "execve", "openat", "chroot", "arch_prctl", "ptrace"):
        assert name in calls, name
    for name in ("mount", "reboot", "kexec_load", "init_module", "finit_module", "bpf",
                 "unshare", "setns", "open_by_handle_at", "iopl"):
        assert name not in calls, name
    assert calls["clone3"] == [{"names": ["clone3"], "action": "SCMP_ACT_ERRNO",
                                "errnoRet": 38}]
    (clone,) = calls["clone"]
    assert clone["args"] == [{"index": 0, "value": 0x7E020000, "valueTwo": 0,
                              "op": "SCMP_CMP_MASKED_EQ"}]
    admin = _allowed(resolve(profile, frozenset({"CAP_SYS_ADMIN", "CAP_SYS_BOOT"}), "amd64",
                             (6, 1)))
    assert "mount" in admin and "reboot" in admin and "clone3" in admin
    assert admin["clone"] == [{"names": admin["clone"][0]["names"], "action": "SCMP_ACT_ALLOW"}]
    old = _allowed(resolve(profile, frozenset(), "amd64", (4, 4)))
    assert "ptrace" not in old  # minKernel 4.8
    arm = resolve(profile, frozenset(), "arm64", (6, 1))
    assert arm["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    assert "arch_prctl" not in _allowed(arm) and "set_tls" in _allowed(arm)


def test_a_docker_profile_reads_with_its_conditions() -> None:
    text = json.dumps({
        "defaultAction": "SCMP_ACT_ERRNO",
        "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]}],
        "syscalls": [
            {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
            {"name": "personality", "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
            {"names": ["mount"], "action": "SCMP_ACT_ALLOW",
             "includes": {"caps": ["CAP_SYS_ADMIN"], "minKernel": "4.0"}},
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38,
             "excludes": {"caps": ["CAP_SYS_ADMIN"], "arches": ["s390x"]}},
        ],
    })
    profile = parse_docker(text)
    assert profile.default_errno == 1  # Docker's and runc's default errno: EPERM
    out = resolve(profile, frozenset(), "amd64", (6, 1))
    assert [c["names"] for c in out["syscalls"]] == [["read", "write"], ["personality"],
                                                      ["clone3"]]
    assert out["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]
    out = resolve(profile, frozenset({"CAP_SYS_ADMIN"}), "amd64", (6, 1))
    assert [c["names"] for c in out["syscalls"]][-1] == ["mount"]


@pytest.mark.parametrize(("profile", "message"), [
    ("[1]", "expected a JSON object"),
    ("[" * 100_000, "nests too deeply"),
    ('{"defaultAction": "SCMP_ACT_NOTIFY"}', "defaultAction: expected one of"),
    ('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"]}]}',
     "syscalls[0].action"),
    ('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["r d"], '
     '"action": "SCMP_ACT_ALLOW"}]}', "syscalls[0].names"),
    ('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], '
     '"action": "SCMP_ACT_ALLOW", "args": [{"index": 9, "op": "SCMP_CMP_EQ"}]}]}',
     "args[0].index"),
    ('{"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/s"}', "listenerPath"),
    ('{"defaultAction": "SCMP_ACT_ALLOW", "surprise": 1}', "unknown field 'surprise'"),
    ('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], '
     '"action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4"}}]}', "minKernel"),
])
def test_bad_docker_profiles_say_where(profile: str, message: str) -> None:
    with pytest.raises(ProfileError, match=None) as info:
        parse_docker(profile)
    assert message in str(info.value)


def test_the_rule_format_refuses_what_it_does_not_know() -> None:
    with pytest.raises(ProfileError, match="line 2: unknown condition"):
        parse_rules("default errno 1\nallow read if wat\n")
    with pytest.raises(ProfileError, match="no 'default' line"):
        parse_rules("allow read\n")
    profile = parse_rules("default errno 1\nallow read\n  write if arg0&0x3==1 !cap=KILL\n")
    (rule,) = profile.rules
    assert rule.names == ("read", "write") and rule.not_caps == ("CAP_KILL",)
