"""Overlay networks across nodes (issue 18 §3): two linkd daemons on simulated hosts
joined by an underlay (tests/cluster_nodes.py) and a three-member etcd. A stack on one
node makes a network with `driver: overlay`; a stack on the other joins it by name
(`external: true`); each node runs the network's bridge and a VXLAN device with the
cluster's VNI, the containers get distinct addresses of the cluster's subnet, with the
MTU the tunnel leaves; `down` gives every address and the network back to the registry.
"""

from __future__ import annotations

import json
import signal
from typing import Any

from tests.cluster_nodes import Node, cluster
from tests.integration.test_network_keys import CONNECT, RESOLVE
from tests.integration.test_stack import serve

UNDERLAY_MTU = 1400  # not the default, so that the overlay's MTU is seen to follow it


def interfaces(node: Node, project: str, container: str) -> dict[str, dict[str, Any]]:
    (doc,) = json.loads(node.linkd("inspect", "-p", project, container).stdout)
    return {i["network"]: i for i in doc["plan"]["interfaces"]}


def link(node: Node, name: str, netns: str | None = None) -> dict[str, Any]:
    argv = ["ip", "-d", "-j", "link", "show", name]
    if netns is not None:
        argv = ["ip", "-n", netns, "-d", "-j", "link", "show", name]
    (found,) = json.loads(node.host.run(*argv).stdout)
    return dict(found)


def vxlan_of(node: Node, interface: dict[str, Any]) -> str:
    """The VXLAN device on the bridge of `interface`'s network."""
    ports = json.loads(node.host.run("ip", "-j", "link", "show", "master",
                                     interface["bridge"]).stdout)
    (vxlan,) = [p["ifname"] for p in ports if p["ifname"].startswith("lkx-")]
    return str(vxlan)


def test_a_network_spans_two_nodes() -> None:
    with cluster(2, UNDERLAY_MTU) as c:
        addresses, etcd, nodes = c.addresses, c.etcd, c.nodes
        one, two = nodes
        one.up("db", f"""
services:
  db:
    command: {json.dumps(serve(9000))}
    networks: [back]
networks:
  back: {{driver: overlay}}
""")
        two.up("web", f"""
services:
  web:
    command: {json.dumps(serve(9000))}
    networks: [shared]
    deploy: {{replicas: 2}}
networks:
  shared: {{external: true, name: db_back}}
""")
        held = etcd.keys("/linkd/v1/networks/db/back/addresses/")
        assert len(held) == 3 and "/linkd/v1/names/db_back" in etcd.keys("/linkd/v1/names/")
        db = interfaces(one, "db", "db-1")["back"]
        webs = [interfaces(two, "web", f"web-{i}")["shared"] for i in (1, 2)]
        # One subnet, three containers on two nodes, no address twice.
        subnet = db["address"].rsplit(".", 1)[0]
        assert {w["address"].rsplit(".", 1)[0] for w in webs} == {subnet}
        assert len({db["address"], *(w["address"] for w in webs)}) == 3
        # One bridge per node, named by the network's owner, and a VXLAN device on it
        # with the cluster's VNI, from the node's underlay address, on port 4789.
        assert db["bridge"] == webs[0]["bridge"]
        devices = []
        for node, address in zip(nodes, addresses, strict=True):
            device = link(node, vxlan_of(node, db))
            data = device["linkinfo"]["info_data"]
            assert data["local"] == address and data["port"] == 4789
            assert not data.get("learning") and data.get("proxy")
            assert device["mtu"] == UNDERLAY_MTU - 50
            devices.append(data["id"])
        assert devices[0] == devices[1]
        # The containers' ends have the overlay's MTU too, and a MAC from the address.
        eth0 = link(two, "eth0", "linkd-web.web-1")
        assert eth0["mtu"] == UNDERLAY_MTU - 50
        assert eth0["address"] == "02:42:" + ":".join(
            f"{int(b):02x}" for b in webs[0]["address"].split("."))

        # Each node's DNS answers for the other's containers, through the system
        # resolver inside the container; and they talk over the tunnel, both ways.
        found = two.linkd("exec", "-p", "web", "web", "/usr/bin/python3", "-c", RESOLVE, "10",
                          "db", "db-1", "db-1.back.db.linkd")
        assert json.loads(found.stdout) == {
            "db": [db["address"]], "db-1": [db["address"]],
            "db-1.back.db.linkd": [db["address"]]}, two.daemon_log()
        got = two.linkd("exec", "-p", "web", "web", "/usr/bin/python3", "-c", CONNECT,
                        "db", "9000")
        assert got.stdout.strip() == "db-1"
        found = one.linkd("exec", "-p", "db", "db", "/usr/bin/python3", "-c", RESOLVE, "10",
                          "web", "web-2.shared.web.linkd")
        assert json.loads(found.stdout) == {
            "web": sorted(w["address"] for w in webs),
            "web-2.shared.web.linkd": [webs[1]["address"]]}
        got = one.linkd("exec", "-p", "db", "db", "/usr/bin/python3", "-c", CONNECT,
                        "web-2", "9000")
        assert got.stdout.strip() == "web-2"
        # Only what the registry says is programmed: one FDB entry per remote container.
        fdb = json.loads(one.host.run("bridge", "-j", "fdb", "show", "dev", vxlan_of(one, db)
                                      ).stdout)
        remote = {e["mac"]: e.get("dst") for e in fdb if e.get("dst")}
        assert remote == {w["mac_address"]: addresses[1] for w in webs}

        # Each node takes VXLAN in from the other only (the node's nft table).
        for node, other in ((one, addresses[1]), (two, addresses[0])):
            table = node.host.run("nft", "list", "table", "inet", "linkd-_overlay").stdout
            assert f"elements = {{ {other} }}" in table, table

        # A stack that makes a network of a name the cluster has is refused.
        clash = two.host.run_dir / "clash"
        clash.mkdir()
        (clash / "linkd.yaml").write_text(
            "services: {a: {command: sleep 300, networks: [n]}}\n"
            "networks: {n: {driver: overlay, name: db_back}}\n")
        refused = two.linkd("up", "-d", "-p", "clash", cwd=clash, check=False)
        assert refused.returncode != 0
        assert "network db_back exists in the cluster already" in refused.stderr, \
            refused.stderr

        # Down, then up again: the same addresses (sticky, cluster-wide).
        two.linkd("down", "-p", "web", cwd=two.host.run_dir / "web")
        two.linkd("up", "-d", "-p", "web", cwd=two.host.run_dir / "web")
        again = [interfaces(two, "web", f"web-{i}")["shared"]["address"] for i in (1, 2)]
        assert again == [w["address"] for w in webs]
        two.linkd("down", "-p", "web", cwd=two.host.run_dir / "web")
        one.linkd("down", "-p", "db", cwd=one.host.run_dir / "db")
        for node in nodes:  # nothing of the network is left on either node
            left = node.host.run("ip", "-j", "link", "show").stdout
            assert "lkx-" not in left and "lkb-" not in left, left
        assert etcd.keys("/linkd/v1/endpoints/") == []  # nor any record of a container
        # The registry holds no address, and no network: only the sticky leases went
        # with the network's record.
        assert etcd.keys("/linkd/v1/networks/") == []
        assert etcd.keys("/linkd/v1/names/") == []
        assert etcd.keys("/linkd/v1/vnis/") == [] and etcd.keys("/linkd/v1/subnets/") == []
        # A node that stops takes its VXLAN table with it.
        two.process.send_signal(signal.SIGTERM)
        assert two.process.wait(timeout=30) == 0, two.daemon_log()
        tables = two.host.run("nft", "list", "tables").stdout
        assert "linkd" not in tables, tables
