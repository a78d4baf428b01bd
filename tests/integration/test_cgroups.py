"""cgroup v2 limits for real, on a cgroup2 hierarchy the test mounts at a private point.

This machine is cgroup v1 (hybrid: one hierarchy per controller under /sys/fs/cgroup), so
linkd's v1 path is what its stacks use (tests/integration/test_image_run.py checks those
limits inside containers). A cgroup2 mount still works beside them and offers the
controllers that no v1 hierarchy holds (/proc/cgroups: hierarchy 0; here hugetlb). The
kernel has one v2 hierarchy, so the mount shows the same tree as /sys/fs/cgroup/unified.

Each test runs linkd's cgroups code in a child process (tests' DRIVER) that first moves
itself into a cgroup of the test's, standing in for where a bare host, a systemd unit or a
container puts linkd, with $LINKD_CGROUP_ROOT naming the mount. The tests check the
cgroup.subtree_control writes at each level, a real process in the container's cgroup,
the limit file, the errors, and that `remove_stack` leaves every cgroup as it found it.

What the tests change beyond the cgroups they create: to offer a controller to a cgroup
below the root they add it to the root's cgroup.subtree_control (systemd's part, for a
delegated unit), and take it back afterwards; in the root-case test linkd does that
itself, and must take it back. The fixture restores the root and unmounts in `finally`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from linkd.core.model import Limits
from linkd.runtime.kernel import cgroups
from tests.integration.conftest import REPO, Linkd

# Runs linkd's cgroups code as `python DRIVER <cgroup dir to join or -> <steps as JSON>`;
# prints one JSON result per step. A first step ["unshare"] re-runs it in a new cgroup
# namespace (rooted at the joined cgroup) and a private mount namespace.
DRIVER = r'''
import json, os, signal, subprocess, sys
from pathlib import Path

join, steps = sys.argv[1], json.loads(sys.argv[2])
if join != "-":
    Path(join, "cgroup.procs").write_text(str(os.getpid()))
if steps and steps[0] == ["unshare"]:
    os.execvp("unshare", ["unshare", "--cgroup", "--mount", "--propagation", "private",
                          sys.executable, sys.argv[0], "-", json.dumps(steps[1:])])

from linkd.errors import ContainerError
from linkd.core.model import Limits
from linkd.core.model import Limits
from linkd.runtime.kernel import cgroups

def top():
    return cgroups.root()

results, mounted = [], None
try:
    for name, *args in steps:
        try:
            if name == "mount":  # a cgroup2 mount of this (cgroup) namespace
                subprocess.run(["mount", "-t", "cgroup2", "none", args[0]], check=True)
                mounted = args[0]
                os.environ[cgroups.ROOT_ENV] = args[0]
                results.append({})
            elif name == "own":
                results.append({"own": cgroups.own_cgroup()})
            elif name == "move":  # mkdir a cgroup below the root and move there
                (top() / args[0]).mkdir(exist_ok=True)
                (top() / args[0] / "cgroup.procs").write_text(str(os.getpid()))
                results.append({})
            elif name == "make":
                stack, container, files = args
                results.append({"leaf": str(cgroups.make_v2_cgroup(stack, container, files))})
            elif name == "create":
                stack, container, limits = args
                results.append({"dirs": list(cgroups.create(stack, container,
                                                            Limits(*limits)))})
            elif name == "run_in":  # a process in the container's cgroup, as the shim's init
                sleeper = subprocess.Popen(["sleep", "60"])
                try:
                    Path(args[0], "cgroup.procs").write_text(str(sleeper.pid))
                    line = [l for l in Path(f"/proc/{sleeper.pid}/cgroup").read_text()
                            .splitlines() if l.startswith("0::")][0]
                    procs = Path(args[0], "cgroup.procs").read_text().split()
                finally:
                    sleeper.kill()
                    sleeper.wait()
                results.append({"cgroup": line, "procs": procs, "pid": sleeper.pid})
            elif name == "read":
                results.append({"words": (top() / args[0]).read_text().split()})
            elif name == "remove":
                results.append({"errors": [str(e) for e in cgroups.remove_stack(args[0])]})
            else:
                raise SystemExit(f"unknown step {name}")
        except ContainerError as exc:
            results.append({"error": str(exc)})
finally:
    if mounted:
        subprocess.run(["umount", mounted], check=False)
print(json.dumps(results))
'''

# A limit file per controller a cgroup2 hierarchy may offer (the first offered is used).
LIMIT_FILES: dict[str, dict[str, str]] = {
    "pids": {"pids.max": "50"},
    "memory": {"memory.max": str(64 << 20)},
    "cpu": {"cpu.max": "50000 100000"},
}


def _hugetlb_files() -> dict[str, str]:
    """hugetlb.<size>.max for the smallest huge page size (hugepages-2048kB -> 2MB)."""
    sizes = sorted(int(d.name.removeprefix("hugepages-").removesuffix("kB"))
                   for d in Path("/sys/kernel/mm/hugepages").iterdir())
    kb = sizes[0]
    unit = f"{kb >> 20}GB" if kb >= 1 << 20 else f"{kb >> 10}MB" if kb >= 1 << 10 else f"{kb}KB"
    return {f"hugetlb.{unit}.max": str(4 << 20)}


def _words(path: Path) -> frozenset[str]:
    return frozenset(path.read_text().split())


@dataclass
class Cgroup2:
    """The test's cgroup2 mount, and everything the test changes in it."""

    mount: Path
    scratch: Path
    root_before: frozenset[str]
    made: list[Path] = field(default_factory=list)  # cgroups the test created, top down
    stacks: list[str] = field(default_factory=list)

    def offers(self) -> frozenset[str]:
        return _words(self.mount / "cgroup.controllers")

    def controller(self) -> tuple[str, dict[str, str]]:
        """A controller this hierarchy offers, and a limit file of it to write."""
        for name, files in LIMIT_FILES.items():
            if name in self.offers():
                return name, files
        if "hugetlb" in self.offers() and Path("/sys/kernel/mm/hugepages").is_dir():
            return "hugetlb", _hugetlb_files()
        pytest.skip(f"this cgroup2 hierarchy offers no controller to test with: {self.offers()}")

    def stack(self) -> str:
        self.stacks.append("lkt" + secrets.token_hex(4))
        return self.stacks[-1]

    def mkdir(self, name: str) -> Path:
        path = self.mount / name
        path.mkdir()
        self.made.append(path)
        return path

    def enable(self, cgroup: Path, controller: str) -> None:
        """As systemd (or an administrator) would: `controller` for `cgroup`'s children."""
        (cgroup / "cgroup.subtree_control").write_text(f"+{controller}")

    def subtree(self, cgroup: Path) -> frozenset[str]:
        return _words(cgroup / "cgroup.subtree_control")

    def run(self, join: Path | None, *steps: list[Any]) -> list[dict[str, Any]]:
        driver = self.scratch / "driver.py"
        driver.write_text(DRIVER)
        done = subprocess.run(
            [sys.executable, str(driver), str(join) if join else "-", json.dumps(steps)],
            capture_output=True, text=True, timeout=60,
            env={**os.environ, "PYTHONPATH": str(REPO), cgroups.ROOT_ENV: str(self.mount)},
        )
        assert done.returncode == 0, done.stderr
        results: list[dict[str, Any]] = json.loads(done.stdout)
        return results

    def cleanup(self) -> None:
        """Whatever a failed test left: processes in the test's cgroups (the test started
        them), the cgroups, the root's subtree_control as it was."""
        trees = [*self.made]
        for stack in self.stacks:
            trees += [Path(d) for d in cgroups.leftovers(self.mount) if d.endswith("/" + stack)]
        for tree in trees:
            for directory, _, _ in os.walk(tree):
                with contextlib.suppress(OSError):
                    for pid in Path(directory, "cgroup.procs").read_text().split():
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(int(pid), signal.SIGKILL)
        time.sleep(0.1)
        for tree in reversed(trees):
            for directory, _, _ in sorted(os.walk(tree), key=lambda w: -len(w[0])):
                with contextlib.suppress(OSError):
                    os.rmdir(directory)
        with contextlib.suppress(OSError):
            (self.mount / cgroups.PREFIX).rmdir()  # only if empty: linkd's, of this test
        added = self.subtree(self.mount) - self.root_before
        if added:
            (self.mount / "cgroup.subtree_control").write_text(
                " ".join(f"-{c}" for c in added))


@pytest.fixture
def cgroup2() -> Iterator[Cgroup2]:
    # Not under /tmp: a run directory here must be the same path inside containers.
    scratch = Path(tempfile.mkdtemp(prefix="lkt-cg2-", dir="/var/tmp"))
    mount = scratch / "hierarchy"
    mount.mkdir()
    subprocess.run(["mount", "-t", "cgroup2", "none", str(mount)], check=True)
    try:
        hierarchy = Cgroup2(mount, scratch, _words(mount / "cgroup.subtree_control"))
        try:
            yield hierarchy
        finally:
            hierarchy.cleanup()
            assert hierarchy.subtree(mount) == hierarchy.root_before
    finally:
        subprocess.run(["umount", str(mount)], check=True)
        shutil.rmtree(scratch)  # unmounted: only the test's files are left in it


def _no_linkd_tree(under: Path) -> bool:
    return not (under / cgroups.PREFIX).exists()


def test_linkd_in_the_root_cgroup_enables_what_it_needs_down_its_tree_and_takes_it_back(
        cgroup2: Cgroup2) -> None:
    # A host without systemd: linkd runs in the root cgroup, which is the base; the root
    # holds processes but is exempt from the no-internal-processes rule.
    if (cgroup2.mount / cgroups.PREFIX).exists():
        pytest.skip("another linkd's cgroups are at this hierarchy's root")
    controller, files = cgroup2.controller()
    stack = cgroup2.stack()
    before = cgroup2.subtree(cgroup2.mount)
    own, made, joined, subtree_linkd, subtree_stack = cgroup2.run(
        cgroup2.mount, ["own"], ["make", stack, "web-1", files],
        ["run_in", str(cgroup2.mount / cgroups.PREFIX / stack / "web-1")],
        ["read", "linkd/cgroup.subtree_control"],
        ["read", f"linkd/{stack}/cgroup.subtree_control"])
    assert own == {"own": "/"}
    leaf = cgroup2.mount / cgroups.PREFIX / stack / "web-1"
    assert made == {"leaf": str(leaf)}
    assert controller in cgroup2.subtree(cgroup2.mount)  # added by linkd if it was missing
    assert controller in subtree_linkd["words"] and controller in subtree_stack["words"]
    assert joined["cgroup"] == f"0::/linkd/{stack}/web-1"
    assert joined["procs"] == [str(joined["pid"])]
    for name, value in files.items():  # the limit, read back from the kernel
        assert (leaf / name).read_text().strip() == value
    recorded = os.getxattr(cgroup2.mount / cgroups.PREFIX, cgroups.RECORD_XATTR).decode()
    assert recorded.split() == sorted({controller} - before)

    (removed,) = cgroup2.run(cgroup2.mount, ["remove", stack])
    assert removed == {"errors": []}
    assert _no_linkd_tree(cgroup2.mount)
    others = [p for p in cgroup2.mount.iterdir() if p.is_dir()]
    if not others:  # nothing else below the root could have come to use it
        assert cgroup2.subtree(cgroup2.mount) == before


def test_a_cgroup_systemd_delegated_to_linkd_is_the_base_and_is_left_as_found(
        cgroup2: Cgroup2) -> None:
    # systemd's Delegate=yes with DelegateSubgroup=supervisor: the unit's cgroup offers the
    # controllers and is marked delegated; linkd runs in <unit>/supervisor.
    controller, files = cgroup2.controller()
    if controller not in cgroup2.subtree(cgroup2.mount):
        cgroup2.enable(cgroup2.mount, controller)  # systemd's part: offer it to the unit
    unit = cgroup2.mkdir(f"lkt-unit-{secrets.token_hex(3)}")
    os.setxattr(unit, "trusted.delegate", b"1")
    supervisor = cgroup2.mkdir(f"{unit.name}/supervisor")
    stack = cgroup2.stack()
    leaf = unit / cgroups.PREFIX / stack / "db-1"
    made, joined = cgroup2.run(supervisor, ["make", stack, "db-1", files],
                               ["run_in", str(leaf)])
    assert made == {"leaf": str(leaf)}
    assert joined["cgroup"] == f"0::/{unit.name}/linkd/{stack}/db-1"
    assert cgroup2.subtree(unit) == {controller}  # linkd's change, in a delegated cgroup
    assert cgroup2.subtree(unit / cgroups.PREFIX) == {controller}
    assert cgroup2.subtree(unit / cgroups.PREFIX / stack) == {controller}
    for name, value in files.items():
        assert (leaf / name).read_text().strip() == value
    # A second container of the stack: nothing more to enable.
    (second,) = cgroup2.run(supervisor, ["make", stack, "db-2", files])
    assert second == {"leaf": str(unit / cgroups.PREFIX / stack / "db-2")}

    (removed,) = cgroup2.run(supervisor, ["remove", stack])
    assert removed == {"errors": []}
    assert sorted(p.name for p in unit.iterdir() if p.is_dir()) == ["supervisor"]
    assert cgroup2.subtree(unit) == frozenset()  # taken back: only linkd's own cgroup there


def test_an_undelegated_base_is_left_alone_and_the_error_says_how_to_delegate(
        cgroup2: Cgroup2) -> None:
    controller, files = cgroup2.controller()
    if controller not in cgroup2.subtree(cgroup2.mount):
        cgroup2.enable(cgroup2.mount, controller)
    slice_ = cgroup2.mkdir(f"lkt-slice-{secrets.token_hex(3)}")  # offers it; not delegated
    service = cgroup2.mkdir(f"{slice_.name}/linkd.service")
    stack = cgroup2.stack()
    (refused,) = cgroup2.run(service, ["make", stack, "web-1", files])
    message = refused["error"]
    assert f"container web-1: cgroup v2: the {controller} controller is not enabled for " \
        f"the children of {slice_}" in message
    assert "Delegate=yes" in message
    assert f"echo +{controller} > {slice_}/cgroup.subtree_control" in message
    assert cgroup2.subtree(slice_) == frozenset() and _no_linkd_tree(slice_)

    # Once the administrator enables it there, linkd uses it, and leaves it on.
    cgroup2.enable(slice_, controller)
    made, removed = cgroup2.run(service, ["make", stack, "web-1", files], ["remove", stack])
    assert made == {"leaf": str(slice_ / cgroups.PREFIX / stack / "web-1")}
    assert removed == {"errors": []}
    assert _no_linkd_tree(slice_) and cgroup2.subtree(slice_) == {controller}


def test_at_a_cgroup_namespace_root_holding_processes_linkd_says_to_move_them_to_a_leaf(
        cgroup2: Cgroup2) -> None:
    # A container with its own cgroup namespace: linkd sees its cgroup as the root, but the
    # namespace's root is not exempt from the no-internal-processes rule.
    controller, files = cgroup2.controller()
    if controller not in cgroup2.subtree(cgroup2.mount):
        cgroup2.enable(cgroup2.mount, controller)
    container = cgroup2.mkdir(f"lkt-ctr-{secrets.token_hex(3)}")
    cgroup2.made.append(container / "init")  # made inside the namespace, removed after
    inner = cgroup2.scratch / "inner"
    inner.mkdir()
    stack = cgroup2.stack()
    _, own, refused, _, own_after, made, joined, removed, left = cgroup2.run(
        container, ["unshare"], ["mount", str(inner)], ["own"],
        ["make", stack, "app-1", files],
        ["move", "init"], ["own"],  # what docker-in-docker's entrypoint does
        ["make", stack, "app-1", files],
        ["run_in", f"{inner}/linkd/{stack}/app-1"],
        ["remove", stack], ["read", "cgroup.subtree_control"])
    assert own == {"own": "/"}
    assert "holds processes" in refused["error"] and "no internal processes" in refused["error"]
    assert f"mkdir {inner}/init" in refused["error"]
    assert own_after == {"own": "/init"}
    assert made == {"leaf": f"{inner}/linkd/{stack}/app-1"}
    assert joined["cgroup"] == f"0::/linkd/{stack}/app-1"  # as seen inside the namespace
    assert removed == {"errors": []}
    assert left == {"words": []}  # the namespace's root: taken back (only init is there)
    assert cgroup2.subtree(container) == frozenset()
    assert sorted(p.name for p in container.iterdir() if p.is_dir()) == ["init"]


def test_limits_this_hierarchy_cannot_offer_fail_naming_the_controller(
        cgroup2: Cgroup2) -> None:
    # Here memory, cpu and pids are bound to v1 hierarchies: the v2 mount lacks them.
    missing = [c for c in ("memory", "cpu", "pids") if c not in cgroup2.offers()]
    if not missing:
        pytest.skip("this cgroup2 hierarchy offers memory, cpu and pids")
    before = cgroup2.subtree(cgroup2.mount)
    stack = cgroup2.stack()
    limits = {"memory": [64 << 20, None, None], "cpu": [None, 0.5, None],
              "pids": [None, None, 50]}
    results = cgroup2.run(cgroup2.mount, *(["create", stack, f"{c}-1", limits[c]]
                                           for c in missing))
    for controller, result in zip(missing, results, strict=True):
        assert result["error"].startswith(
            f"container {controller}-1: cgroup v2: the {controller} controller is not "
            f"available in {cgroup2.mount} (its cgroup.controllers: ")
        assert "a cgroup v1 hierarchy holds it" in result["error"]
    assert _no_linkd_tree(cgroup2.mount) and cgroup2.subtree(cgroup2.mount) == before


def test_up_with_a_limit_the_host_cannot_offer_says_which_and_leaves_nothing(
        cgroup2: Cgroup2, linkd: Linkd, monkeypatch: pytest.MonkeyPatch) -> None:
    # Through the CLI and a daemon of this test's that sees the cgroup2 mount as its
    # hierarchy. No network (network_mode: none): the host's forwarding stays untouched.
    if "memory" in cgroup2.offers():
        pytest.skip("this cgroup2 hierarchy offers memory")
    socket = cgroup2.scratch / "api.sock"
    monkeypatch.setenv("LINKD_SOCKET", str(socket))
    monkeypatch.setenv("LINKD_RUN_DIR", str(cgroup2.scratch / "run"))  # no other stack's
    monkeypatch.setenv(cgroups.ROOT_ENV, str(cgroup2.mount))
    log = (cgroup2.scratch / "daemon.log").open("w")
    daemon = subprocess.Popen([sys.executable, "-m", "linkd", "daemon", "--socket", str(socket)],
                              env={**os.environ, "PYTHONPATH": str(REPO)},
                              stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 10
        while not socket.exists():
            assert time.monotonic() < deadline and daemon.poll() is None, "no daemon"
            time.sleep(0.05)
        linkd.write("""
            services:
              worker:
                command: ["/bin/sleep", "60"]
                network_mode: none
                mem_limit: 64m
        """)
        refused = linkd.run("up", "-d", "-p", linkd.project, check=False)
        assert refused.returncode != 0
        assert "Traceback" not in refused.stderr, refused.stderr
        assert "linkd: container worker-1: cgroup v2: the memory controller is not " \
            f"available in {cgroup2.mount}" in refused.stderr, refused.stderr
        linkd.run("down", "-p", linkd.project, check=False)
    finally:
        daemon.terminate()  # ours, by its pid
        daemon.wait(timeout=30)
        log.close()
    assert _no_linkd_tree(cgroup2.mount)
    assert not [d for d in cgroups.leftovers(cgroup2.mount) if linkd.project in d]


# --- cgroup v1, this machine's real hierarchies: the limits hold ---------------------------

# Joins the cgroups given (as the shim's init does), then tries to break the limit.
WORKLOAD = r'''
import os, sys, time
for directory in sys.argv[1].split(","):
    with open(os.path.join(directory, "cgroup.procs"), "w") as f:
        f.write("0")
kind = sys.argv[2]
if kind == "memory":
    chunks = [b"x" * (4 << 20) for _ in range(64)]  # 256 MiB, every page written
    print("allocated", len(chunks))
elif kind == "pids":
    children = []
    try:
        for _ in range(20):
            pid = os.fork()
            if pid == 0:
                time.sleep(30)
                os._exit(0)
            children.append(pid)
    except OSError as exc:
        print("refused", len(children), exc.errno)
    for pid in children:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
elif kind == "cpu":
    start, used = time.monotonic(), time.process_time()
    while time.monotonic() - start < 1.0:
        pass
    print("cpu", time.process_time() - used)
'''

V1_LIMITS = {
    "memory": Limits(memory=32 << 20),
    "pids": Limits(pids=4),
    "cpu": Limits(cpus=0.2),
}


@pytest.mark.parametrize("kind", sorted(V1_LIMITS))
def test_v1_limits_hold_for_the_processes_in_linkds_cgroups(kind: str) -> None:
    if cgroups.is_v2(cgroups.ROOT) or not (cgroups.ROOT / kind).is_dir():
        pytest.skip(f"no cgroup v1 {kind} hierarchy at {cgroups.ROOT}")
    stack = "lkt" + secrets.token_hex(4)
    try:
        dirs = cgroups.create(stack, "w-1", V1_LIMITS[kind], cgroups.ROOT)
        assert [Path(d).relative_to(cgroups.ROOT).parts[0] for d in dirs] == [kind]
        done = subprocess.run([sys.executable, "-c", WORKLOAD, ",".join(dirs), kind],
                              capture_output=True, text=True, timeout=60)
        if kind == "memory":  # no swap here: over 32 MiB the OOM killer ends it
            assert done.returncode == -signal.SIGKILL, done.stdout + done.stderr
            assert "allocated" not in done.stdout
        elif kind == "pids":  # itself and three children; the fourth fork fails (EAGAIN)
            assert done.stdout.split() == ["refused", "3", "11"], done.stdout + done.stderr
        else:  # 20 ms of every 100 ms period
            used = float(done.stdout.split()[1])
            assert 0.05 < used < 0.4, done.stdout + done.stderr
    finally:
        errors = cgroups.remove_stack(stack, top=cgroups.ROOT)
    assert errors == []
    assert not [d for d in cgroups.leftovers(cgroups.ROOT) if d.endswith(stack)]
