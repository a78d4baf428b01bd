"""kill -9 of the daemon, then a new daemon: it adopts what still runs, finishes or
repairs what was half done, serves DNS again and leaves no orphan."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from linkd.client.api import Client, ensure_daemon
from linkd.runtime.stack import store
from tests.integration.conftest import REPO, Linkd, daemon_pids

RESOLVES = """
import socket, sys
for name in sys.argv[1:]:
    socket.getaddrinfo(name, 80, socket.AF_INET)
print("resolved", len(sys.argv) - 1)
"""


def kill_daemon() -> None:
    """SIGKILL every linkd daemon of this run (one a CLI started meanwhile, too)."""
    deadline = time.monotonic() + 10
    while pids := daemon_pids():
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # a linkd daemon: started by this run
        assert time.monotonic() < deadline, f"daemons {pids} did not die"
        time.sleep(0.02)


def restart_daemon() -> None:
    env_before = dict(os.environ)
    os.environ["PYTHONPATH"] = str(REPO)
    try:
        ensure_daemon(Client())
    finally:
        os.environ.clear()
        os.environ.update(env_before)


def state_of(linkd: Linkd) -> dict[str, object]:
    document: dict[str, object] = json.loads(linkd.run("inspect", "-p", linkd.project).stdout)
    return document


def containers(document: dict[str, object]) -> dict[str, dict[str, object]]:
    return {c["name"]: c for c in document["containers"]}  # type: ignore[attr-defined, index]


def alive(pid: object) -> bool:
    return isinstance(pid, int) and Path(f"/proc/{pid}").exists()


def test_a_killed_daemon_is_replaced_without_restarting_any_container(linkd: Linkd) -> None:
    linkd.write("""
        services:
          web: {command: sleep 300, scale: 2}
          client: {command: sleep 300}
    """)
    linkd.up()
    before = containers(state_of(linkd))
    kill_daemon()
    # The containers outlived it.
    assert all(alive(c["pid"]) for c in before.values())
    restart_daemon()
    after = containers(state_of(linkd))
    assert {n: c["pid"] for n, c in after.items()} == {n: c["pid"] for n, c in before.items()}
    assert all(c["status"] == "running" and c["restarts"] == 0 for c in after.values())
    # DNS is served again inside every container (new sockets, new DNAT rules).
    out = linkd.exec("client", "/usr/bin/python3", "-c", RESOLVES, "web", "web-2",
                     f"client.default.{linkd.project}.linkd").stdout
    assert "resolved 3" in out
    assert "resolved 1" in linkd.exec("web", "/usr/bin/python3", "-c", RESOLVES, "client").stdout
    # And the new daemon drives the stack: down goes through it.
    hosted = {s["name"] for s in Client().request("GET", "/v1/stacks")}
    assert linkd.project in hosted


def test_a_torn_state_file_is_recovered_from_the_last_good_copy(linkd: Linkd) -> None:
    """The daemon answers from memory; the state file is what the next one reads."""
    linkd.write("""
        services:
          db: {command: sleep 300}
          web: {command: sleep 300}
    """)
    linkd.up()
    before = containers(state_of(linkd))
    state = store.root() / "stacks" / linkd.project / "state.msgpack"
    assert state.with_name("state.msgpack.prev").exists()
    kill_daemon()
    state.write_bytes(state.read_bytes()[:40])  # torn
    log = store.root() / "daemon.log"
    logged = log.stat().st_size
    restart_daemon()
    after = containers(state_of(linkd))
    assert {n: c["pid"] for n, c in after.items()} == {n: c["pid"] for n, c in before.items()}
    with log.open() as f:
        f.seek(logged)
        assert "last good copy" in f.read()


def test_a_veth_deleted_by_hand_is_recreated_by_the_next_daemon(linkd: Linkd) -> None:
    linkd.write("""
        services:
          a: {command: sleep 300}
          b: {command: sleep 300}
    """)
    linkd.up()
    plan = state_of(linkd)["plan"]
    veth = next(c for c in plan["containers"] if c["name"] == "b-1")["interfaces"][0]  # type: ignore[index]
    subprocess.run(["ip", "link", "del", veth["host_ifname"]], check=True)
    kill_daemon()
    restart_daemon()
    link = subprocess.run(["ip", "-j", "link", "show", veth["host_ifname"]],
                          capture_output=True, text=True, check=True)
    assert json.loads(link.stdout)[0]["master"] == veth["bridge"]
    # b is reachable again from a, at the same address.
    code = f"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect(("{veth['address']}", 9))
print(socket.gethostbyname("b"))
"""
    assert linkd.py("a", code).stdout.strip() == veth["address"]


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_kill_9_at_a_random_point_of_up_then_restart_ends_consistent(
    linkd: Linkd, seed: int
) -> None:
    services = "\n".join(f"          s{i}: {{command: sleep 300}}" for i in range(20))
    linkd.write(f"""
        services:
{services}
    """)
    restart_daemon()
    up = subprocess.Popen(
        [sys.executable, "-m", "linkd", "up", "-d", "-p", linkd.project],
        cwd=linkd.directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    time.sleep(random.Random(seed).uniform(0.2, 1.0))
    kill_daemon()
    up.kill()  # the CLI waiting for the answer: nothing more of it is wanted
    up.wait(30)
    kill_daemon()
    restart_daemon()
    listed = linkd.run("ps", "-p", linkd.project, check=False)
    if listed.returncode != 0:
        # Killed before the plan was recorded: nothing of the stack may exist.
        netns = [n for n in os.listdir("/run/netns") if n.startswith(f"linkd-{linkd.project}.")]
        assert netns == []
        return
    document = state_of(linkd)
    found = containers(document)
    assert len(found) == 20
    assert all(c["status"] == "running" and alive(c["pid"]) for c in found.values()), found
    addresses = [c["interfaces"][0]["address"] for c in document["plan"]["containers"]]  # type: ignore[index]
    assert len(set(addresses)) == 20  # no duplicates
    netns = [n for n in os.listdir("/run/netns") if n.startswith(f"linkd-{linkd.project}.")]
    assert len(netns) == 20  # nothing missing, nothing extra
    out = linkd.exec("s0", "/usr/bin/python3", "-c", RESOLVES, *[f"s{i}" for i in range(20)])
    assert "resolved 20" in out.stdout


@pytest.mark.parametrize("seed", [1, 2])
def test_kill_9_at_a_random_point_of_down_then_restart_finishes_it(
    linkd: Linkd, seed: int
) -> None:
    services = "\n".join(f"          s{i}: {{command: sleep 300}}" for i in range(10))
    linkd.write(f"""
        services:
{services}
    """)
    linkd.up()
    down = subprocess.Popen(
        [sys.executable, "-m", "linkd", "down", "-p", linkd.project],
        cwd=linkd.directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    time.sleep(random.Random(seed).uniform(0.15, 0.5))
    kill_daemon()
    down.wait(30)
    restart_daemon()
    # Either the stack is whole and running (down never reached the daemon), or gone.
    listed = linkd.run("ps", "-p", linkd.project, check=False)
    netns = [n for n in os.listdir("/run/netns") if n.startswith(f"linkd-{linkd.project}.")]
    if listed.returncode == 0:
        found = containers(state_of(linkd))
        assert all(c["status"] == "running" and alive(c["pid"]) for c in found.values())
        assert len(netns) == 10
    else:
        assert netns == []


def test_the_daemon_repairs_a_veth_deleted_while_it_runs(linkd: Linkd) -> None:
    linkd.write("""
        services:
          a: {command: sleep 300}
          b: {command: /usr/bin/python3 -m http.server 8000 --bind 0.0.0.0}
    """)
    linkd.up()
    plan = state_of(linkd)["plan"]
    veth = next(c for c in plan["containers"] if c["name"] == "b-1")["interfaces"][0]  # type: ignore[index]
    subprocess.run(["ip", "link", "del", veth["host_ifname"]], check=True)
    deadline = time.monotonic() + 10
    while True:
        shown = subprocess.run(["ip", "-j", "link", "show", veth["host_ifname"]],
                               capture_output=True, text=True)
        if shown.returncode == 0 and json.loads(shown.stdout)[0].get("master") == veth["bridge"]:
            break
        assert time.monotonic() < deadline, "not repaired"
        time.sleep(0.1)
    # b, still the same process, is reachable from a again, by name.
    code = """
import time, urllib.request
for attempt in range(50):
    try:
        print(urllib.request.urlopen("http://b:8000/", timeout=2).status)
        break
    except OSError:
        time.sleep(0.1)
"""
    assert linkd.py("a", code).stdout.strip() == "200"


def test_objects_of_a_stack_with_no_state_are_removed_as_orphans(linkd: Linkd) -> None:
    linkd.write("""
        services:
          a: {command: sleep 300}
          b: {command: sleep 300}
    """)
    linkd.up()
    pids = [c["pid"] for c in containers(state_of(linkd)).values()]
    kill_daemon()
    stack_dir = store.root() / "stacks" / linkd.project
    for name in ("state.msgpack", "state.msgpack.prev"):
        (stack_dir / name).unlink()  # as if the crash came before anything was recorded
    restart_daemon()
    assert [n for n in os.listdir("/run/netns") if n.startswith(f"linkd-{linkd.project}.")] == []
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in pids):
        assert time.monotonic() < deadline, "orphan containers still run"
        time.sleep(0.05)
