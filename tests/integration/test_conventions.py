"""Conventions in real containers: programs that know only Docker's legacy link variables
or Kubernetes' service variables reach their dependency, also after it restarts; the
live bindings files follow the peer; bad convention files create nothing."""

from __future__ import annotations

import json
import socket
import time

from tests.integration.conftest import Linkd, snapshot

# A dependency that answers one connection ("pong") and exits: `restart: always` brings
# it back, at the same address.
PONG_ONCE = (
    '/usr/bin/python3 -c "import socket; s = socket.create_server((\'0.0.0.0\', 5432)); '
    "c, _ = s.accept(); c.recv(16); c.sendall(b'pong'); c.close()\""
)

# Consumers that know one convention each, and nothing else about their peer.
DOCKER_CONSUMER = """
import os, socket
addr, port = os.environ["DB_PORT_5432_TCP_ADDR"], int(os.environ["DB_PORT_5432_TCP_PORT"])
with socket.create_connection((addr, port), timeout=5) as c:
    c.sendall(b"ping")
    print(c.recv(16).decode())
"""
KUBERNETES_CONSUMER = DOCKER_CONSUMER.replace(
    'os.environ["DB_PORT_5432_TCP_ADDR"], int(os.environ["DB_PORT_5432_TCP_PORT"])',
    'os.environ["DB_SERVICE_HOST"], int(os.environ["DB_SERVICE_PORT"])',
)

STACK = f"""
    services:
      db:
        command: {PONG_ONCE}
        expose: ["5432"]
        restart: always
        environment: {{POSTGRES_DB: shop, SECRET: nope}}
      legacy:
        command: sleep 300
        links: ["db"]
        x-linkd:
          conventions: [docker-links]
          links:
            db: {{env: [POSTGRES_DB]}}
      modern:
        command: sleep 300
        links: ["db"]
        x-linkd:
          conventions: [kubernetes, linkd]
"""


def wait_running(linkd: Linkd, container: str, restarts: int) -> None:
    deadline = time.monotonic() + 10
    while True:
        line = next(
            line for line in linkd.run("ps", "-p", linkd.project).stdout.splitlines()
            if f" {container} " in line
        )
        if "running" in line and (restarts == 0 or f"restarts={restarts}" in line):
            return
        assert time.monotonic() < deadline, line
        time.sleep(0.05)


def ping(linkd: Linkd, service: str, code: str) -> str:
    deadline = time.monotonic() + 10
    while True:  # the server may be between restarts, or not listening yet
        result = linkd.py(service, code, check=False)
        if result.returncode == 0:
            return result.stdout.strip()
        assert time.monotonic() < deadline, result.stderr
        time.sleep(0.1)


def test_consumers_of_each_convention_reach_the_dependency_also_after_it_restarts(
    linkd: Linkd,
) -> None:
    linkd.write(STACK)
    linkd.up()
    wait_running(linkd, "db-1", 0)
    assert ping(linkd, "legacy", DOCKER_CONSUMER) == "pong"
    wait_running(linkd, "db-1", 1)  # it exited after answering, and came back
    assert ping(linkd, "modern", KUBERNETES_CONSUMER) == "pong"
    wait_running(linkd, "db-1", 2)
    # The variables injected at start still point at it.
    assert ping(linkd, "legacy", DOCKER_CONSUMER) == "pong"

    legacy = dict(
        line.split("=", 1)
        for line in linkd.exec("legacy", "/usr/bin/env").stdout.splitlines()
        if "=" in line
    )
    assert legacy["DB_NAME"] == "/legacy-1/db"
    assert legacy["DB_PORT"] == f"tcp://{legacy['DB_PORT_5432_TCP_ADDR']}:5432"
    assert legacy["DB_ENV_POSTGRES_DB"] == "shop"
    assert "DB_ENV_SECRET" not in legacy  # not on the allow-list
    assert not any(k.startswith(("DB_SERVICE", "LINKD_")) for k in legacy)
    modern = linkd.exec("modern", "/usr/bin/env").stdout
    assert "DB_SERVICE_HOST=" in modern and "LINKD_DB_HOST=" in modern
    assert "DB_NAME=" not in modern


def test_linkd_env_explains_and_the_live_bindings_follow_the_peer(linkd: Linkd) -> None:
    linkd.write(STACK)
    linkd.up()
    wait_running(linkd, "db-1", 0)
    explained = linkd.run("env", "-p", linkd.project, "legacy").stdout
    assert "DB_PORT_5432_TCP_ADDR=10." in explained
    assert "# docker-links, link db" in explained
    host_view = linkd.run("env", "-p", linkd.project, "legacy", "--host").stdout
    assert "PATH=" not in host_view and "DB_PORT_5432_TCP_PORT=5432" in host_view

    env_file = linkd.exec("legacy", "/bin/cat", "/run/linkd/links.env").stdout
    assert "DB_PORT_5432_TCP_PORT=5432" in env_file
    # db answers one connection and exits: inside the container, links.json says so while
    # it is down and says running again once it is back (each version written by rename
    # into a directory bound in, which a bound file would not show).
    watched = linkd.py("legacy", DOCKER_CONSUMER + """
import json, time
def running():
    with open("/run/linkd/links.json") as f:
        (link,) = json.load(f)["links"]
    (peer,) = link["peers"]
    return peer["running"], peer["address"]
seen = []
end = time.monotonic() + 10
while time.monotonic() < end:
    state = running()
    if not seen or seen[-1] != state:
        seen.append(state)
    if len(seen) >= 2 and state[0]:
        break
    time.sleep(0.002)
print(json.dumps(seen))
""").stdout.splitlines()
    assert watched[0] == "pong"
    states = json.loads(watched[1])
    address = explained.split("DB_PORT_5432_TCP_ADDR=", 1)[1].split()[0]
    # Seen running (or already down), then down, then running again, at the same address.
    assert [running for running, _ in states][-2:] == [False, True], states
    assert {addr for _, addr in states} == {address}
    # A process on the host reaches the dependency with the --host variables.
    host_env = dict(
        line.split("  #", 1)[0].split("=", 1) for line in host_view.splitlines()
    )
    target = (host_env["DB_PORT_5432_TCP_ADDR"], int(host_env["DB_PORT_5432_TCP_PORT"]))
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(target, timeout=2) as c:
                c.sendall(b"ping")
                assert c.recv(16) == b"pong"
                break
        except OSError:
            assert time.monotonic() < deadline
            time.sleep(0.1)


def test_a_bad_convention_file_is_refused_before_anything_exists(linkd: Linkd) -> None:
    (linkd.directory / "mine.yaml").write_text(
        "name: mine\nversion: 1\nvariables:\n  - each: link\n    set: {'{NOPE}': x}\n"
    )
    linkd.write("""
        services:
          db: {command: sleep 300}
          app:
            command: sleep 300
            links: [db]
            x-linkd: {conventions: [mine.yaml]}
    """)
    before = snapshot()
    result = linkd.run("up", "-d", "-p", linkd.project, check=False)
    assert result.returncode != 0
    assert "mine.yaml" in result.stderr and "NOPE" in result.stderr
    linkd.write("""
        services:
          db: {command: sleep 300}
          app:
            command: sleep 300
            links: [db]
            x-linkd: {conventions: [nosuch.yaml]}
    """)
    missing = linkd.run("up", "-d", "-p", linkd.project, check=False)
    assert missing.returncode != 0 and "no convention file nosuch.yaml" in missing.stderr
    assert (snapshot() - before).empty()
    assert linkd.project not in linkd.run("ps", "-a", check=False).stdout


def test_addresses_are_sticky_across_down_and_up_and_file_changes(linkd: Linkd) -> None:
    linkd.write("""
        services:
          db: {command: sleep 300}
          web: {command: sleep 300, scale: 2}
    """)
    linkd.up()
    before = inspect_addresses(linkd)
    linkd.down()
    # Meanwhile another stack comes up: it does not take the subnet held for the first.
    other = linkd.project + "x"
    other_file = linkd.write("services:\n  solo: {command: sleep 300}\n", name="other.yaml")
    try:
        linkd.run("up", "-d", "-p", other, "-f", str(other_file))
        linkd.write("""
            services:
              cache: {command: sleep 300}
              db: {command: sleep 300}
              web: {command: sleep 300, scale: 3}
        """)
        linkd.up()
        after = inspect_addresses(linkd)
        assert {k: after[k] for k in before} == before
        assert len(set(after.values())) == len(after) == 5
        others = linkd.run("ps", "-p", other).stdout
        assert before["db-1"].rsplit(".", 1)[0] + "." not in others
    finally:
        linkd.run("down", "--forget", "-p", other, check=False)


def inspect_addresses(linkd: Linkd) -> dict[str, str]:
    document = json.loads(linkd.run("inspect", "-p", linkd.project).stdout)
    return {
        c["name"]: c["interfaces"][0]["address"] for c in document["plan"]["containers"]
    }
