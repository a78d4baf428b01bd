"""Containers are confined as Docker confines an image, with both launchers (issue 14 §3).

Root inside a busybox image tries what would reach the host, and each denial is checked by
its errno (tests/syscall_probe.py makes one-syscall programs that exit with it): mknod of
a host disk succeeds (CAP_MKNOD, as under Docker) but opening it fails (runc: EPERM, the
devices cgroup; linkd's launcher: EACCES, its root and /dev are nodev), mount is EPERM,
writing core_pattern or sysrq-trigger is EROFS, /proc/kcore, /proc/keys and the other
masked paths read as /dev/null or an empty directory, reboot,
kexec_load and module loading are EPERM (seccomp), clone3 is ENOSYS (Docker's profile).
The probes run as the container's command (the run path) and through `linkd exec` (the
shim's exec path, which confines on its own for runc containers too). `privileged: true`
gives it all back; cap_add, cap_drop, read_only, security_opt, user and devices do what
Compose users expect. Host-command containers get the capability set, no_new_privs,
seccomp and the masked paths too.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from linkd.core.confinement import CAP_NUMBER, DEFAULT_CAPABILITIES, MASKED_PATHS
from linkd.runtime.images.image_store import ImageStore
from tests.images import Entry, Image, busybox_image, layer_tar, write_tar
from tests.integration.conftest import Linkd
from tests.syscall_probe import (
    CLONE3,
    FINIT_MODULE,
    INIT_MODULE,
    KEXEC_LOAD,
    MKDIR,
    MKNOD,
    MOUNT,
    O_RDONLY,
    O_WRONLY,
    OPEN,
    REBOOT,
    probe,
    supported,
)

pytestmark = pytest.mark.skipif(not supported(), reason="the syscall probes are x86-64 code")

CHOWN = 92
O_RDWR = 2
IMAGE = "linkd-test/confine:1"
SYSRQ = Path("/proc/sysrq-trigger").exists()


def _host_disk() -> tuple[int, int]:
    """A block device of this machine (major, minor): what container root must not open."""
    for entry in sorted(os.listdir("/sys/dev/block")):
        major, minor = (int(x) for x in entry.split(":"))
        return major, minor
    pytest.skip("no block device on this machine")


def _probes() -> dict[str, bytes]:
    major, minor = _host_disk()
    return {
        "mknod": probe(MKNOD, b"/blk", stat.S_IFBLK | 0o600, os.makedev(major, minor)),
        "open_disk": probe(OPEN, b"/blk", O_RDONLY),
        "mount": probe(MOUNT, b"none", b"/mnt", b"tmpfs", 0, 0),
        "core_pattern": probe(OPEN, b"/proc/sys/kernel/core_pattern", O_WRONLY),
        "sysrq": probe(OPEN, b"/proc/sysrq-trigger", O_WRONLY),
        "sys_write": probe(MKDIR, b"/sys/linkd-probe", 0o755),
        # A wrong magic number: refused (EINVAL) before anything, even when allowed.
        "reboot": probe(REBOOT, 0, 0, 0, 0),
        # More segments than the kernel takes: EINVAL before anything, even when allowed.
        "kexec_load": probe(KEXEC_LOAD, 0, 1000, 0, 0),
        "finit_module": probe(FINIT_MODULE, -1, b"", 0),
        "init_module": probe(INIT_MODULE, 0, 0, b""),
        "clone3": probe(CLONE3, 0, 0),
        "chown": probe(CHOWN, b"/probe", 1, 1),
        "mkdir_root": probe(MKDIR, b"/newdir", 0o755),
        "mkdir_tmp": probe(MKDIR, b"/tmp/newdir", 0o755),
        "open_tun": probe(OPEN, b"/dev/net/tun", O_RDWR),
    }


# Runs every probe and prints NAME=ERRNO lines, then the facts /proc gives.
SCRIPT = """#!/bin/sh
rm -f /blk; rmdir /newdir /tmp/newdir 2>/dev/null
for p in mknod open_disk mount core_pattern sysrq sys_write reboot kexec_load finit_module \\
         init_module clone3 chown mkdir_root mkdir_tmp open_tun; do
  /probe/$p; echo "$p=$?"
done
umount /mnt 2>/dev/null
for m in MASKED; do
  if [ -d $m ]; then echo "mask:$m=dir:$(ls -A $m | wc -l)"
  elif [ -e $m ]; then echo "mask:$m=$(stat -c %t:%T $m):$(head -c 64 $m | wc -c)"
  else echo "mask:$m=absent"; fi
done
grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status \\
  | tr -d ' \\t' | tr ':' '='
echo "dev=$(ls /dev | tr '\\n' ' ')"
echo "cgroup=$(cut -d: -f3 /proc/self/cgroup | sort -u | tr '\\n' ' ')"
echo done
""".replace("MASKED", " ".join(MASKED_PATHS)).encode()


def _masked(seen: dict[str, str]) -> bool:
    """Every masked path the host has reads as /dev/null (0 bytes) or an empty directory."""
    for path in MASKED_PATHS:
        want = ("absent" if not os.path.lexists(path)
                else "dir:0" if os.path.isdir(path) else "1:3:0")
        if seen[f"mask:{path}"] != want:
            return False
    return True


def _mask(caps: tuple[str, ...]) -> str:
    return f"{sum(1 << CAP_NUMBER[c] for c in caps):016x}"


DEFAULT_MASK = _mask(DEFAULT_CAPABILITIES)


def _parse(out: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


@pytest.fixture
def image(linkd: Linkd) -> Iterator[str]:
    probes = _probes()
    layer = layer_tar([Entry("probe", "dir"), Entry("mnt", "dir"),
                       Entry("probe/run.sh", data=SCRIPT, mode=0o755),
                       *(Entry(f"probe/{name}", data=code, mode=0o755)
                         for name, code in probes.items())])
    img = Image([*busybox_image().layers, layer], name=IMAGE,
                run={"Cmd": ["sleep", "600"], "Env": ["PATH=/bin"]})
    write_tar(img.save_files(), linkd.directory / "confine.tar")
    linkd.run("image", "load", "confine.tar")
    yield IMAGE
    store = ImageStore()
    if IMAGE in {n for i in store.list() for n in i.names}:
        linkd.run("down", "-p", linkd.project, check=False)
        store.remove(IMAGE)


def _wait_log(linkd: Linkd, service: str, text: str, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while True:
        out = linkd.run("logs", "-p", linkd.project, service, check=False).stdout
        if text in out or time.monotonic() > deadline:
            return out
        time.sleep(0.1)


def _probe(linkd: Linkd, service: str) -> dict[str, str]:
    result = linkd.exec(service, "/probe/run.sh")
    assert "done" in result.stdout, result.stdout + result.stderr
    return _parse(result.stdout)


@pytest.mark.parametrize("runtime", ["linkd", "runc"])
def test_root_in_an_image_is_denied_what_would_reach_the_host(
        linkd: Linkd, image: str, runtime: str) -> None:
    linkd.write(f"""
        services:
          box:
            image: {image}
            command: ["sh", "-c", "/probe/run.sh; exec sleep 600"]
            x-linkd: {{runtime: {runtime}}}
    """)
    linkd.up()
    logged = _parse(_wait_log(linkd, "box", "done"))
    for seen in (logged, _probe(linkd, "box")):  # the command, then `linkd exec`
        assert seen["mknod"] == "0"  # CAP_MKNOD is Docker's too ...
        # ... but the node opens nowhere: runc's devices cgroup, the own launcher's nodev.
        assert seen["open_disk"] == str(errno.EPERM if runtime == "runc" else errno.EACCES)
        assert seen["mount"] == str(errno.EPERM)
        assert seen["core_pattern"] == str(errno.EROFS)
        # (a kernel without magic SysRq has no such file)
        assert seen["sysrq"] == str(errno.EROFS if SYSRQ else errno.ENOENT)
        assert seen["sys_write"] == str(errno.EROFS)
        # /proc/kcore, /proc/keys, /proc/timer_list, /sys/firmware, ... as /dev/null or
        # an empty directory (this kernel may lack some, /proc/kcore included).
        assert _masked(seen), seen
        for call in ("reboot", "kexec_load", "finit_module", "init_module"):
            assert seen[call] == str(errno.EPERM), (call, seen)
        assert seen["clone3"] == str(errno.ENOSYS)  # Docker's profile: glibc falls back
        assert seen["chown"] == "0"
        assert seen["CapBnd"] == seen["CapEff"] == seen["CapPrm"] == DEFAULT_MASK
        assert seen["CapInh"] == seen["CapAmb"] == "0" * 16
        assert seen["NoNewPrivs"] == "1"
        assert seen["Seccomp"] == "2"  # filter mode
        devices = set(seen["dev"].split())
        assert {"null", "zero", "full", "random", "urandom", "tty", "pts", "ptmx",
                "shm"} <= devices
        assert not devices & {"sda", "vda", "kmsg", "mem", "fuse", "loop0", "net"}
        assert "/linkd/" not in seen["cgroup"]  # a cgroup namespace: its own cgroup is /


@pytest.mark.parametrize("runtime", ["linkd", "runc"])
def test_privileged_gives_full_access(linkd: Linkd, image: str, runtime: str) -> None:
    linkd.write(f"""
        services:
          box:
            image: {image}
            privileged: true
            x-linkd: {{runtime: {runtime}}}
    """)
    linkd.up()
    seen = _probe(linkd, "box")
    assert seen["mknod"] == "0" and seen["open_disk"] == "0"
    assert seen["mount"] == "0"
    assert seen["core_pattern"] == "0"  # opened for writing (nothing is written)
    assert seen["reboot"] == str(errno.EINVAL)  # past the capability and seccomp checks
    assert seen["clone3"] == str(errno.EINVAL)
    for call in ("kexec_load", "finit_module"):
        assert seen[call] != str(errno.EPERM), (call, seen)
    assert not _masked(seen)
    if os.path.exists("/proc/keys"):
        assert seen["mask:/proc/keys"].startswith("0:0:")
    assert int(seen["CapEff"], 16) == int(seen["CapBnd"], 16) > int(DEFAULT_MASK, 16)
    assert seen["NoNewPrivs"] == "0" and seen["Seccomp"] == "0"
    assert "sys_write" in seen and seen["sys_write"] != str(errno.EROFS)


PROFILE = {"defaultAction": "SCMP_ACT_ALLOW",
           "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO",
                         "errnoRet": errno.EACCES}]}


@pytest.mark.parametrize("runtime", ["linkd", "runc"])
def test_compose_keys_change_the_confinement(linkd: Linkd, image: str, runtime: str) -> None:
    (linkd.directory / "deny-mkdir.json").write_text(json.dumps(PROFILE))
    services = {
        "dropchown": "cap_drop: [chown]",
        "sysadmin": "cap_add: [SYS_ADMIN]",
        "nocaps": "cap_drop: [ALL]",
        "ro": "read_only: true",
        "unconfined": "security_opt: [seccomp=unconfined]",
        "custom": "security_opt: [seccomp=deny-mkdir.json]",
        "nnpoff": 'security_opt: ["no-new-privileges:false", "label=disable"]',
        "nobody": "user: nobody",
        "dev": "devices: [/dev/net/tun]",
    }
    if not Path("/dev/net/tun").exists():
        del services["dev"]
    text = "services:\n" + "".join(
        f"  {name}:\n    image: {image}\n    x-linkd: {{runtime: {runtime}}}\n    {key}\n"
        for name, key in services.items())
    linkd.write(text)
    up = linkd.up()
    assert "label is accepted but linkd applies no SELinux profile" in up.stderr + up.stdout
    seen = {name: _probe(linkd, name) for name in services}

    assert seen["dropchown"]["chown"] == str(errno.EPERM)
    assert seen["dropchown"]["CapBnd"] == _mask(
        tuple(c for c in DEFAULT_CAPABILITIES if c != "CAP_CHOWN"))
    assert seen["sysadmin"]["mount"] == "0"  # the capability, and seccomp allows mount
    assert seen["nocaps"]["CapBnd"] == seen["nocaps"]["CapEff"] == "0" * 16
    assert seen["nocaps"]["chown"] == str(errno.EPERM)
    assert seen["ro"]["mkdir_root"] == str(errno.EROFS)
    assert seen["ro"]["mkdir_tmp"] == "0"  # /tmp stays writable
    assert seen["unconfined"]["Seccomp"] == "0"
    assert seen["unconfined"]["clone3"] == str(errno.EINVAL)
    assert seen["unconfined"]["mount"] == str(errno.EPERM)  # no CAP_SYS_ADMIN still
    assert seen["custom"]["mkdir_tmp"] == str(errno.EACCES)
    assert seen["custom"]["reboot"] == str(errno.EPERM)  # the profile allows it; the cap not
    assert seen["nnpoff"]["NoNewPrivs"] == "0"
    assert seen["nobody"]["CapEff"] == seen["nobody"]["CapPrm"] == "0" * 16
    assert seen["nobody"]["CapBnd"] == DEFAULT_MASK
    if "dev" in services:
        assert seen["dev"]["open_tun"] == "0"
        assert seen["nobody"]["open_tun"] == str(errno.ENOENT)


def test_host_command_containers_get_capabilities_no_new_privs_seccomp_and_masks(
        linkd: Linkd) -> None:
    linkd.write("""
        services:
          plain:
            command: ["sleep", "600"]
          full:
            command: ["sleep", "600"]
            privileged: true
    """)
    linkd.up()
    code = """
        import errno, os
        status = dict(l.split(":", 1) for l in open("/proc/self/status"))
        print({k: status[k].strip() for k in ("CapEff", "CapBnd", "NoNewPrivs", "Seccomp")})
        try:
            os.close(os.open("/proc/sys/kernel/core_pattern", os.O_WRONLY))
            print("core_pattern", 0)
        except OSError as e:
            print("core_pattern", e.errno)
        print("keys", os.stat("/proc/keys").st_rdev == os.makedev(1, 3))
    """
    plain = linkd.py("plain", code).stdout
    assert f"'CapBnd': '{DEFAULT_MASK}'" in plain and "'NoNewPrivs': '1'" in plain
    assert "'Seccomp': '2'" in plain
    assert f"core_pattern {errno.EROFS}" in plain and "keys True" in plain
    full = linkd.py("full", code).stdout
    assert "'Seccomp': '0'" in full and "'NoNewPrivs': '0'" in full
    assert "core_pattern 0" in full and "keys False" in full


def test_bad_values_are_refused_with_the_key_named(linkd: Linkd) -> None:
    linkd.write("""
        services:
          a:
            command: ["true"]
            cap_add: [NOT_A_CAP]
            security_opt: ["seccomp=missing.json", "no-new-privileges:maybe"]
            read_only: true
    """)
    result = linkd.run("config", "-p", linkd.project, check=False)
    assert result.returncode != 0
    for text in ("services.a.cap_add[0]", "unknown capability 'NOT_A_CAP'",
                 "cannot read seccomp profile \"missing.json\"", "no-new-privileges:maybe",
                 "read_only needs an image"):
        assert text in result.stderr, result.stderr
