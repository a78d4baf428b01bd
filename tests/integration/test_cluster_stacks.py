"""One stack file spanning nodes (issue 18 §2, §4): brought up on node1, with one
service placed on node2 by `node.hostname == node2`; each node runs its share, the
containers reach each other by name and by convention across nodes, `ps` on the origin
shows every container with its node, a service placed on an unknown node creates
nothing anywhere, and `down` on the origin removes everything everywhere."""

from __future__ import annotations

import json
import time

from tests.cluster_nodes import Node, cluster, wait_until
from tests.integration.test_network_keys import CONNECT, RESOLVE
from tests.integration.test_overlay_networks import interfaces
from tests.integration.test_stack import serve

STACK = f"""
services:
  db:
    command: {json.dumps(serve(5432))}
    expose: ["5432"]
    deploy: {{placement: {{constraints: ["node.hostname == node2"]}}}}
  web:
    command: {json.dumps(serve(9000))}
    links: [db]
    x-linkd: {{conventions: [docker-links]}}
"""

BY_CONVENTION = """
import os, socket
addr, port = os.environ["DB_PORT_5432_TCP_ADDR"], int(os.environ["DB_PORT_5432_TCP_PORT"])
with socket.create_connection((addr, port), timeout=5) as c:
    print(addr, c.recv(100).decode())
"""

UNPLACEABLE = """
services:
  a: {command: sleep 300}
  b:
    command: sleep 300
    deploy: {placement: {constraints: ["node.hostname == node9"]}}
"""


def ps_rows(node: Node, project: str) -> dict[str, list[str]]:
    lines = node.linkd("ps", "-p", project).stdout.splitlines()
    return {line.split()[2]: line.split() for line in lines[1:]}


def netns(node: Node) -> str:
    return node.host.run("ip", "netns", "list").stdout


def test_one_stack_file_spans_two_nodes() -> None:
    started = time.monotonic()
    with cluster(2) as c:
        etcd, nodes = c.etcd, c.nodes
        one, two = nodes

        # A service no live node satisfies: refused, naming it, and nothing is made.
        bad = one.host.run_dir / "bad"
        bad.mkdir()
        (bad / "linkd.yaml").write_text(UNPLACEABLE)
        refused = one.linkd("up", "-d", "-p", "bad", cwd=bad, check=False)
        assert refused.returncode != 0
        assert "services.b.deploy.placement.constraints" in refused.stderr, refused.stderr
        assert "node.hostname == node9" in refused.stderr
        assert etcd.keys("/linkd/v1/") == [k for k in etcd.keys("/linkd/v1/nodes/")]
        for node in nodes:
            assert "linkd-bad" not in netns(node)

        # Up on node1: web runs here, db on node2.
        one.up("shop", STACK)
        assert etcd.keys("/linkd/v1/stacks/") == ["/linkd/v1/stacks/shop"]
        wait_until(lambda: "db-1" in two.linkd("ps", "-p", "shop", check=False).stdout,
                   15, "node2 to run db", nodes)
        # Each node runs its own share, and knows where the rest runs.
        assert {c: r[3] for c, r in ps_rows(two, "shop").items()} == {
            "db-1": "node2", "web-1": "node1"}
        db = interfaces(two, "shop", "db-1")["default"]
        web = interfaces(one, "shop", "web-1")["default"]
        assert db["address"].rsplit(".", 1)[0] == web["address"].rsplit(".", 1)[0]

        # By name, both ways across the nodes.
        found = one.linkd("exec", "-p", "shop", "web", "/usr/bin/python3", "-c", RESOLVE,
                          "10", "db", "db-1")
        assert json.loads(found.stdout) == {"db": [db["address"]], "db-1": [db["address"]]}, \
            one.daemon_log()
        got = one.linkd("exec", "-p", "shop", "web", "/usr/bin/python3", "-c", CONNECT,
                        "db", "5432")
        assert got.stdout.strip() == "db-1"
        got = two.linkd("exec", "-p", "shop", "db", "/usr/bin/python3", "-c", CONNECT,
                        "web", "9000")
        assert got.stdout.strip() == "web-1"
        # By convention: web's link variables name db's overlay address on node2.
        got = one.linkd("exec", "-p", "shop", "web", "/usr/bin/python3", "-c", BY_CONVENTION)
        assert got.stdout.split() == [db["address"], "db-1"]
        # ... and its live bindings name db-1 on node2, running.
        def bound() -> list[dict[str, object]]:
            done = one.linkd("exec", "-p", "shop", "web", "cat", "/run/linkd/links.json",
                             check=False)
            if done.returncode != 0:
                return []
            (link,) = json.loads(done.stdout)["links"]
            return list(link["peers"])

        wait_until(lambda: bound() != [], 10, "web's links.json to name db-1", nodes)
        assert bound() == [{"container": "db-1", "address": db["address"], "address6": None,
                            "network": "default", "running": True}]

        # ps on the origin: every container, with its node.
        def shown() -> dict[str, list[str]]:
            return ps_rows(one, "shop")

        wait_until(lambda: shown().get("db-1", [""])[-1] == "running", 10,
                   "ps to show db-1 running", nodes)
        rows = shown()
        assert rows["web-1"][:4] == ["shop", "web", "web-1", "node1"]
        assert rows["db-1"][:5] == ["shop", "db", "db-1", "node2", f"default={db['address']}"]

        # down on node2 is refused, naming the origin.
        refused = two.linkd("down", "-p", "shop", check=False)
        assert refused.returncode != 0 and "node1" in refused.stderr, refused.stderr

        # down on the origin: nothing left anywhere.
        one.linkd("down", "-p", "shop", cwd=one.host.run_dir / "shop")
        wait_until(lambda: "linkd-shop" not in netns(two), 15,
                   "node2 to take its share down", nodes)
        for node in nodes:
            left = node.host.run("ip", "-j", "link", "show").stdout
            assert "lkx-" not in left and "lkb-" not in left, left
            assert "linkd-shop" not in netns(node)
        wait_until(lambda: etcd.keys("/linkd/v1/shares/") == [], 5, "shares to go", nodes)
        assert etcd.keys("/linkd/v1/stacks/") == []
        assert etcd.keys("/linkd/v1/endpoints/") == []
        assert etcd.keys("/linkd/v1/networks/") == []
        print(f"took {time.monotonic() - started:.1f} s")


WAITING = """
services:
  db:
    command: ["/bin/sh", "-c", "sleep 2; exec {serve}"]
    healthcheck:
      test: ["CMD", "/usr/bin/python3", "-c",
             "import socket; socket.create_connection(('127.0.0.1', 5432), 1)"]
      interval: 0.2s
      start_period: 60s
    deploy: {{placement: {{constraints: ["node.hostname == node2"]}}}}
  web:
    command: ["/usr/bin/python3", "-c", {at_start}]
    depends_on: {{db: {{condition: service_healthy}}}}
"""

CONNECTS_AT_START = (
    "import socket, time\n"
    "socket.create_connection(('db', 5432), timeout=2).close()\n"
    "time.sleep(300)\n")

WAITS = WAITING.format(serve=serve(5432).replace('"', '\\"'),
                       at_start=json.dumps(CONNECTS_AT_START))


def test_depends_on_a_service_on_another_node_is_waited_for() -> None:
    """web (node1) starts once db (node2) is healthy: its command connects to db as it
    starts, and exits if it cannot. A node that refuses its share ends the wait with
    its reason, and the stack is gone everywhere."""
    with cluster(2) as c:
        one, two = c.nodes
        began = time.monotonic()
        one.up("shop", WAITS)
        took = time.monotonic() - began
        rows = ps_rows(one, "shop")
        assert rows["web-1"][-1] == "running", rows
        assert took > 2, took  # db listens 2 s after its start
        one.linkd("down", "-p", "shop", cwd=one.host.run_dir / "shop")
        wait_until(lambda: "linkd-shop" not in netns(two), 15, "node2 to take shop down",
                   c.nodes)

        # node2 runs a stack of that name of its own: it refuses its share of the
        # cluster's, and web's wait for db ends with why.
        two.up("shop", "services: {lone: {command: sleep 300}}\n")
        refused = one.linkd("up", "-d", "-p", "shop", cwd=one.host.run_dir / "shop",
                            check=False)
        assert refused.returncode != 0
        assert "node node2 refuses its share" in refused.stderr, refused.stderr
        assert "runs on node node2 already" in refused.stderr
        assert c.etcd.keys("/linkd/v1/stacks/") == []
        assert "linkd-shop" not in netns(one)
        assert list(ps_rows(two, "shop")) == ["lone-1"]  # node2's own stack untouched
        two.linkd("down", "-p", "shop", cwd=two.host.run_dir / "shop")
