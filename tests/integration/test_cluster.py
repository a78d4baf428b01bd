"""A cluster of simulated nodes: three linkd daemons, each in a simulated host of its own
(tests/simhost.py: a network namespace, a mount table and a LINKD_RUN_DIR), joined to a
three-member etcd (tests/etcd.py) that listens on the session's side of the first
host's uplink, which every host reaches by its default route.

`linkd node ls` on any node lists all three, and a node's daemon runs a stack as any
daemon does; a daemon killed with -9 leaves the list on the others within its lease's
TTL and a second; another daemon cannot take the name of a live node; one stopped with
SIGTERM leaves at once. Every process, namespace and data directory goes in teardown,
whatever happened.
"""

from __future__ import annotations

import os
import signal
import sys

from tests.cluster_nodes import TTL, Node, hosts, wait_until
from tests.etcd import etcd_cluster


def test_three_nodes_see_each_other_and_a_killed_one_leaves() -> None:
    with hosts(3) as machines, etcd_cluster(machines[0].outside_address) as etcd:
        nodes: list[Node] = []
        try:
            for i, machine in enumerate(machines):
                nodes.append(Node(machine, f"node{i + 1}", etcd))
            everyone = {"node1", "node2", "node3"}
            for node in nodes:
                wait_until(lambda node=node: set(node.listed()) == everyone, 30,
                           f"{node.name} to list every node", nodes)

            table = nodes[1].node_ls()
            assert table.returncode == 0, table.stderr
            lines = table.stdout.splitlines()
            assert lines[0].split() == ["NAME", "ADDRESS", "STATE", "LABELS", "LINKD"]
            rows = {line.split()[0]: line for line in lines[1:]}
            assert set(rows) == everyone
            assert " * " in rows["node2"] and " * " not in rows["node1"]
            for node in nodes:  # the default address: the route to etcd, eth0's
                assert f" {node.host.address} " in rows[node.name]
                assert "ready" in rows[node.name] and f"rack={node.name[-1]}" in rows[
                    node.name]

            # A node's daemon runs stacks as any daemon does.
            stack = machines[0].run_dir / "c1"
            stack.mkdir()
            (stack / "linkd.yaml").write_text("services:\n  web:\n    command: sleep 300\n")
            try:
                nodes[0].host.linkd("up", "-d", "-p", "c1", cwd=stack, env=nodes[0].env)
                ps = nodes[0].host.linkd("ps", "-p", "c1", cwd=stack, env=nodes[0].env)
                assert "running" in ps.stdout, ps.stdout
            finally:
                nodes[0].host.linkd("down", "--forget", "-p", "c1", cwd=stack,
                                    env=nodes[0].env, check=False)

            os.kill(nodes[2].process.pid, signal.SIGKILL)  # the daemon itself (exec'd)
            nodes[2].process.wait()
            took = wait_until(lambda: "node3" not in nodes[0].listed()
                              and "node3" not in nodes[1].listed(),
                              TTL + 5, "node3 to leave", nodes[:2])
            assert took <= TTL + 1, f"node3 left the list after {took:.2f} s"

            # A name a live node holds: the daemon does not start, and says whose it is.
            refused = machines[2].run(
                sys.executable, "-m", "linkd", "daemon", "--cluster", etcd.cluster_flag,
                "--node-name", "node1", "--cluster-ttl", str(TTL), env=nodes[2].env,
                check=False, timeout=30)
            assert refused.returncode == 1, refused.stdout + refused.stderr
            assert (f"linkd: node name node1 is held by a live node at {machines[0].address}"
                    in refused.stderr), refused.stderr

            nodes[1].process.send_signal(signal.SIGTERM)
            assert nodes[1].process.wait(timeout=30) == 0, nodes[1].daemon_log()
            gone = wait_until(lambda: set(nodes[0].listed()) == {"node1"}, 5,
                              "node2 to leave", nodes[:1])
            assert gone < 1.5, f"node2 left {gone:.2f} s after its daemon ended"
            assert "left the cluster" in nodes[1].daemon_log()
            print(f"killed node gone after {took:.2f} s; stopped node after {gone:.2f} s")
        finally:
            for node in nodes:
                if node.process.poll() is None:
                    node.process.kill()
                    node.process.wait()
