"""A cluster when things die (issue 18 §5): three nodes (tests/cluster_nodes.py), each a
simulated host with its own daemon, a three-member etcd, and stacks on every node joined
by overlay networks.

- names and TCP across all three nodes, and two overlay networks isolated everywhere;
- one etcd member SIGKILLed: no lookup fails, and the cluster still takes changes;
- a node killed (its daemon `kill -9`, its underlay link down): its containers leave
  the other nodes' DNS within the lease TTL (+1 s), the others keep talking; its daemon
  started again adopts its stacks and its names come back;
- all of etcd stopped: running containers and the names they know keep working; when
  etcd is back every node is ready again and a new container is found by name.
"""

from __future__ import annotations

import json
import os
import signal
import time

from tests.cluster_nodes import TTL, Node, cluster, wait_until
from tests.integration.test_network_keys import CONNECT, RESOLVE
from tests.integration.test_stack import serve

PY = "/usr/bin/python3"


def stack(service: str, *networks: str, joins: dict[str, str] | None = None,
          own: tuple[str, ...] = ()) -> str:
    """A stack file: `service` serving its name on :9000, on `networks`; `own` are
    overlay networks it makes, `joins` maps a key to a cluster network it joins."""
    nets = {key: {"driver": "overlay"} for key in own}
    nets |= {key: {"external": True, "name": name} for key, name in (joins or {}).items()}
    return json.dumps({"services": {service: {"command": serve(9000),
                                              "networks": list(networks)}},
                       "networks": nets})


def resolve(node: Node, project: str, service: str, *names: str, wait: float = 10
            ) -> dict[str, object]:
    done = node.linkd("exec", "-p", project, service, PY, "-c", RESOLVE, str(wait), *names)
    return dict(json.loads(done.stdout))


def connect(node: Node, project: str, service: str, name: str) -> str:
    done = node.linkd("exec", "-p", project, service, PY, "-c", CONNECT, name, "9000",
                      check=False)
    return done.stdout.strip() if done.returncode == 0 else f"failed: {done.stderr[-200:]}"


def address(node: Node, project: str, container: str, network: str) -> str:
    (doc,) = json.loads(node.linkd("inspect", "-p", project, container).stdout)
    return str({i["network"]: i["address"] for i in doc["plan"]["interfaces"]}[network])


def test_a_cluster_survives_its_members_and_nodes_dying() -> None:
    with cluster(3) as c:
        machines, addresses, etcd, nodes = c.machines, c.addresses, c.etcd, c.nodes
        one, two, three = nodes
        one.up("a", stack("a", "net", own=("net",)))
        two.up("b", stack("b", "net", joins={"net": "a_net"}))
        three.up("c", stack("c", "net", joins={"net": "a_net"}))
        three.up("d", stack("d", "other", own=("other",)))
        one.up("e", stack("e", "other", joins={"other": "d_other"}))
        a1, b1 = address(one, "a", "a-1", "net"), address(two, "b", "b-1", "net")
        d1, e1 = address(three, "d", "d-1", "other"), address(one, "e", "e-1", "other")

        # Three nodes, one network: every name answers, every container is reached.
        assert resolve(three, "c", "c", "a", "b") == {"a": [a1], "b": [b1]}
        assert connect(three, "c", "c", "a") == "a-1"
        assert connect(three, "c", "c", "b") == "b-1"
        assert connect(one, "a", "a", "c") == "c-1"
        # Two overlay networks are isolated on every node: no name, no route.
        assert connect(one, "e", "e", "d") == "d-1"  # across nodes, on `other`
        said = resolve(one, "a", "a", "d", "e", wait=0)
        assert said["d"] != [d1] and said["e"] != [e1], said
        for node, project, target in ((one, "a", d1), (one, "a", e1), (three, "c", e1),
                                      (three, "d", a1)):
            assert connect(node, project, project, target).startswith("failed"), target

        # One etcd member dies: lookups go on, and the cluster still takes changes.
        etcd.kill(0)
        for _ in range(5):
            assert resolve(three, "c", "c", "a", "b", wait=0) == {"a": [a1], "b": [b1]}
        two.up("f", stack("f", "net", joins={"net": "a_net"}))
        f1 = address(two, "f", "f-1", "net")
        assert resolve(three, "c", "c", "f") == {"f": [f1]}
        etcd.restart()

        # A node dies: its daemon killed, its underlay link down.
        os.kill(two.process.pid, signal.SIGKILL)
        two.process.wait()
        two.host.run("ip", "link", "set", "eth1", "down")
        start = time.monotonic()

        def forgotten() -> bool:
            got = resolve(three, "c", "c", "b", "f", wait=0)
            return all(not isinstance(v, list) for v in got.values())

        wait_until(forgotten, TTL + 10, "node2's names to leave node3's DNS", nodes)
        took = time.monotonic() - start
        assert took <= TTL + 1 + 1.5, f"node2's names left after {took:.2f} s"  # +exec
        assert connect(three, "c", "c", "a") == "a-1"  # the others keep talking
        assert connect(one, "a", "a", "c") == "c-1"
        print(f"a killed node's names left the others' DNS after {took:.2f} s")

        # It comes back: its daemon adopts its stacks and its names return.
        two.host.run("ip", "link", "set", "eth1", "up")
        time.sleep(TTL)  # its old lease holds its name until it expires
        nodes[1] = two = Node(machines[1], "node2", etcd, addresses[1])
        wait_until(lambda: two.listed().get("node2", {}).get("state") == "ready", 30,
                   "node2 to rejoin", nodes)
        assert resolve(three, "c", "c", "b") == {"b": [b1]}
        assert connect(three, "c", "c", "b") == "b-1"

        # All of etcd stops: what runs, and the names it knows, go on.
        etcd.stop()
        assert resolve(three, "c", "c", "a", "b", wait=0) == {"a": [a1], "b": [b1]}
        assert connect(three, "c", "c", "b") == "b-1"
        assert connect(one, "a", "a", "c") == "c-1"
        etcd.restart()
        for node in nodes:
            wait_until(lambda n=node: n.listed().get(n.name, {}).get("state") == "ready",
                       30, f"{node.name} to be back", nodes)  # type: ignore[misc]
        one.up("g", stack("g", "net", joins={"net": "a_net"}))
        g1 = address(one, "g", "g-1", "net")
        assert resolve(three, "c", "c", "g") == {"g": [g1]}
