"""Compose's networking keys in real containers (issue 16 §5): a network shared by two
stacks (`external: true`), network modes, and the per-container DNS, sysctl and link
keys, seen from inside the containers."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.integration.conftest import Linkd, fresh_linkd, snapshot
from tests.integration.test_stack import serve

# Inside a container: each name's IPv4 addresses through the system resolver (glibc:
# /etc/hosts, then linkd's DNS), retried for a few seconds (another stack's containers
# reach this stack's DNS within its follow interval); then a TCP exchange if asked.
RESOLVE = """
import json, socket, sys, time
found = {}
for name in sys.argv[1:]:
    deadline = time.monotonic() + 10
    while True:
        try:
            found[name] = sorted({a[4][0] for a in socket.getaddrinfo(name, 9000, socket.AF_INET)})
            break
        except socket.gaierror as exc:
            if time.monotonic() > deadline:
                found[name] = str(exc)
                break
            time.sleep(0.1)
print(json.dumps(found))
"""

CONNECT = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as c:
    print(c.recv(100).decode())
"""


def resolve(stack: Linkd, service: str, *names: str) -> dict[str, object]:
    out = stack.exec(service, "/usr/bin/python3", "-c", RESOLVE, *names).stdout
    result: dict[str, object] = json.loads(out)
    return result


def addresses(stack: Linkd, container: str) -> dict[str, str]:
    """The container's address on each network, from `linkd inspect`."""
    (doc,) = json.loads(stack.run("inspect", "-p", stack.project, container).stdout)
    return {i["network"]: i["address"] for i in doc["plan"]["interfaces"]}


@pytest.fixture
def owner() -> Iterator[Linkd]:
    with fresh_linkd() as runner:
        yield runner


@pytest.fixture
def joiner() -> Iterator[Linkd]:
    with fresh_linkd() as runner:
        yield runner


def test_two_stacks_talk_by_name_over_an_external_network(
    owner: Linkd, joiner: Linkd
) -> None:
    owner.write(f"""
        services:
          web:
            command: {serve(9000)}
          db:
            command: sleep 300
            networks: [back]
        networks:
          back: {{}}
    """)
    joiner.write(f"""
        services:
          client:
            command: {serve(9000)}
            networks: [shop, own]
          lone:
            command: sleep 300
            networks: [own]
        networks:
          shop:
            external: true
            name: {owner.project}_default
          own: {{}}
    """)
    owner.up()
    owners = {b for b in snapshot().links if b.startswith("lkb-")}
    joiner.up()
    owner.wait_listening("web", 9000)
    joiner.wait_listening("client", 9000)
    web = addresses(owner, "web-1")["default"]
    client = addresses(joiner, "client-1")
    # One subnet, two stacks' containers, no address twice.
    assert client["shop"].rsplit(".", 1)[0] == web.rsplit(".", 1)[0]
    assert client["shop"] != web
    # The joiner's container resolves the owner's names, and reaches them...
    assert resolve(joiner, "client", "web", "web-1", f"web.{owner.project}.linkd") == {
        "web": [web], "web-1": [web], f"web.{owner.project}.linkd": [web]}
    got = joiner.exec("client", "/usr/bin/python3", "-c", CONNECT, "web", "9000")
    assert got.stdout.strip() == "web-1"
    # ... and the owner's resolves the joiner's, on that network only.
    assert resolve(owner, "web", "client", "client-1") == {
        "client": [client["shop"]], "client-1": [client["shop"]]}
    got = owner.exec("web", "/usr/bin/python3", "-c", CONNECT, "client", "9000")
    assert got.stdout.strip() == "client-1"
    # Neither stack's containers off the shared network see the other stack's names.
    db = resolve(owner, "db", "client")["client"]
    lone = resolve(joiner, "lone", "web")["web"]
    assert isinstance(db, str) and isinstance(lone, str), (db, lone)

    # The joiner goes: the owner's networks stay, whole.
    joiner.down()
    assert owners == {b for b in snapshot().links if b.startswith("lkb-")}
    assert isinstance(resolve(owner, "web", "client")["client"], str)
    got = owner.exec("web", "/usr/bin/python3", "-c", CONNECT, "web", "9000")
    assert got.stdout.strip() == "web-1"


def test_the_owner_going_first_leaves_the_network_to_the_joiner(
    owner: Linkd, joiner: Linkd
) -> None:
    owner.write("""
        services:
          web:
            command: sleep 300
        networks:
          default:
            name: shared-net
    """)
    joiner.write(f"""
        services:
          a:
            command: {serve(9000)}
          b:
            command: sleep 300
        networks:
          default:
            external: true
            name: shared-net
    """)
    owner.up()
    joiner.up()
    bridge = {b for b in snapshot().links if b.startswith("lkb-")}
    down = owner.down()
    # As Docker keeps a network with active endpoints (Compose's down says so and goes
    # on): the bridge stays for the joiner's containers, which still talk over it.
    assert "kept" in down.stdout + down.stderr, down
    assert bridge <= snapshot().links
    joiner.wait_listening("a", 9000)
    got = joiner.exec("b", "/usr/bin/python3", "-c", CONNECT, "a", "9000")
    assert got.stdout.strip() == "a-1"
    # The owner comes back on the same bridge and subnet, and its names answer again.
    owner.up()
    web = addresses(owner, "web-1")["default"]
    assert resolve(joiner, "a", "web") == {"web": [web]}
    owner.down()
    # The last one out removes it.
    joiner.down()
    assert not bridge & snapshot().links


def test_a_missing_external_network_is_an_error_that_creates_nothing(joiner: Linkd) -> None:
    joiner.write("""
        services:
          a:
            command: sleep 300
            networks: [proxy]
        networks:
          proxy:
            external: true
    """)
    # `linkd config` takes it without looking for the network.
    config = joiner.run("config", "-p", joiner.project)
    assert "external: true" in config.stdout
    before = snapshot()
    failed = joiner.run("up", "-d", "-p", joiner.project, check=False)
    assert failed.returncode != 0
    assert ("network proxy declared as external, but could not be found: create it with "
            "another stack first") in failed.stderr, failed.stderr
    after = snapshot()
    assert after.netns == before.netns and after.links == before.links
    ps = joiner.run("ps", "-p", joiner.project, check=False)
    assert "a-1" not in ps.stdout
