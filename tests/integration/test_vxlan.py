"""Overlay networks in the kernel: two simulated nodes joined by an underlay, each with the
network's bridge, VXLAN device and one container, reach each other only through the FDB
and neighbour entries linkd programs (linkd.core.overlay, linkd.runtime.kernel.vxlan).

Each node is a SimulatedHost; the underlay is a veth pair between them with a smaller MTU
than the usual 1500, so that the overlay MTU is not right by chance. Everything on a node
is made and read by `tests/overlay_node.py` running there.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network, ip_address
from typing import Any

import pytest

from linkd.core import names, overlay
from linkd.core.plan import NetworkPlan
from linkd.errors import KernelError
from linkd.runtime.kernel import vxlan
from linkd.runtime.kernel.netlink import Kernel
from tests.integration.conftest import snapshot
from tests.simhost import SimulatedHost, ip, simulated_host

UNDERLAY_MTU = 1400

SERVER = textwrap.dedent(r"""
    import socket, sys, threading
    address = sys.argv[1]
    tcp = socket.create_server((address, 7000))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((address, 7001))
    def echo():
        while True:
            data, peer = udp.recvfrom(65535)
            udp.sendto(str(len(data)).encode(), peer)
    threading.Thread(target=echo, daemon=True).start()
    print("listening", flush=True)
    while True:
        c, _ = tcp.accept()
        c.sendall(b"b")
        c.close()
""")

# A TCP connection, and UDP datagrams of the given sizes that may not be fragmented
# (IP_MTU_DISCOVER = IP_PMTUDISC_DO): what came back for each, or the error.
PROBE = textwrap.dedent(r"""
    import json, socket, sys
    address, sizes = sys.argv[1], [int(s) for s in sys.argv[2:]]
    out = {}
    try:
        with socket.create_connection((address, 7000), timeout=1) as c:
            c.settimeout(1)
            out["tcp"] = c.recv(10).decode()
    except OSError as e:
        out["tcp"] = type(e).__name__
    for size in sizes:
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.setsockopt(socket.IPPROTO_IP, 10, 2)
        u.settimeout(1)
        try:
            u.sendto(b"x" * size, (address, 7001))
            out[str(size)] = u.recv(100).decode()
        except OSError as e:
            out[str(size)] = type(e).__name__
    print(json.dumps(out))
""")


class Node:
    """One simulated node and its side of the overlay network."""

    def __init__(self, host: SimulatedHost, args: dict[str, Any]) -> None:
        self.host = host
        self.args = args
        self.facts: dict[str, Any] = {}

    def op(self, op: str, **extra: Any) -> dict[str, Any]:
        done = self.host.run(sys.executable, "-m", "tests.overlay_node", op,
                             json.dumps({**self.args, **extra}))
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result

    def endpoint(self) -> dict[str, str]:
        return {"mac": self.facts["mac"], "address": self.args["address"],
                "node": self.args["local"]}

    def in_container(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.facts["netns"], *argv]

    def probe(self, address: str, *sizes: int) -> dict[str, str]:
        done = self.host.run(*self.in_container("/usr/bin/python3", "-c", PROBE, address,
                                                *map(str, sizes)), timeout=30)
        result: dict[str, str] = json.loads(done.stdout.strip().splitlines()[-1])
        return result

    def vxlan_rx_packets(self) -> int:
        done = self.host.run("ip", "-s", "-j", "link", "show", "dev", self.facts["device"])
        return int(json.loads(done.stdout)[0]["stats64"]["rx"]["packets"])


@pytest.fixture
def nodes() -> Iterator[tuple[Node, Node]]:
    tag = secrets.token_hex(3)
    x = int(tag[:2], 16)
    stack = "t" + tag
    common = {"stack": stack, "network": "over", "subnet": "10.91.0.0/24",
              "vni": overlay.allocate_vni(overlay.overlay_id(stack, "over"), ())}
    with simulated_host() as host_a, simulated_host() as host_b:
        # The underlay: a veth pair between the two nodes, made in the session and moved.
        ends = (f"lkt{tag}a", f"lkt{tag}b")
        ip("link", "add", ends[0], "type", "veth", "peer", "name", ends[1])
        for host, end, address in ((host_a, ends[0], f"198.19.{x}.1"),
                                   (host_b, ends[1], f"198.19.{x}.2")):
            ip("link", "set", end, "netns", host.netns)
            ip("addr", "add", f"{address}/30", "dev", end, netns=host.netns)
            ip("link", "set", end, "mtu", str(UNDERLAY_MTU), "up", netns=host.netns)
        a = Node(host_a, {**common, "container": "a-1", "address": "10.91.0.10",
                          "local": f"198.19.{x}.1"})
        b = Node(host_b, {**common, "container": "b-1", "address": "10.91.0.20",
                          "local": f"198.19.{x}.2"})
        yield a, b


def test_containers_on_two_nodes_reach_each_other_only_through_programmed_entries(
        nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    baseline = {node: node.op("leaks") for node in nodes}  # the node's underlay end only
    for node in nodes:
        node.facts = node.op("setup")
        assert node.facts["created"] is True
    mtu = overlay.overlay_mtu(UNDERLAY_MTU)
    assert mtu == 1350

    # The device: as the pure layer says, a port of the network's bridge, and the MTU
    # leaves room for the VXLAN headers on the underlay.
    seen = a.op("observe")
    device = seen["device"]
    assert device["ifname"] == names.vxlan_name(a.args["stack"], "over")
    assert device["mtu"] == mtu and a.facts["underlay_mtu"] == UNDERLAY_MTU
    assert device["master"] == a.facts["bridge"] and seen["bridge"]["mtu"] == mtu
    assert a.facts["container_mtu"] == mtu
    data = device["linkinfo"]["info_data"]
    assert data["id"] == a.args["vni"] and data["port"] == 4789
    assert data["local"] == a.args["local"]
    assert data["learning"] is False and data["proxy"] is True
    assert "group" not in data and "remote" not in data  # nothing to flood to
    assert seen["state"] == {"fdb": [], "neigh": []}

    server = subprocess.Popen(
        b.host.command(b.in_container(sys.executable, "-c", SERVER, b.args["address"])),
        env=b.host.env(), stdout=subprocess.PIPE, cwd=b.host.run_dir)
    try:
        assert server.stdout is not None and server.stdout.readline() == b"listening\n"

        # Nothing programmed: nothing reaches node B at all (no learning, no flooding).
        failed = a.probe(b.args["address"], 64)
        assert failed["tcp"] != "b" and failed["64"] != "64", failed
        assert b.vxlan_rx_packets() == 0

        # Programmed from the desired state on both nodes: TCP gets through, and so does
        # a datagram of the full overlay MTU that may not be fragmented; one byte more
        # is refused in the container itself (its MTU is the overlay's).
        everyone = [a.endpoint(), b.endpoint()]
        for node in nodes:
            synced = node.op("sync", endpoints=everyone)
            assert synced["changes"] == 2 and synced["problems"] == []
            other = b if node is a else a
            assert node.op("observe")["state"] == synced["desired"] == {
                "fdb": [[other.facts["mac"], other.args["local"]]],
                "neigh": [[other.args["address"], other.facts["mac"]]]}
        full = mtu - 28  # IPv4 and UDP headers
        reached = a.probe(b.args["address"], full, full + 1)
        assert reached == {"tcp": "b", str(full): str(full), str(full + 1): "OSError"}, reached
        assert b.vxlan_rx_packets() > 0

        # Again: every ensure_* step and the sync change nothing.
        for node in nodes:
            assert node.op("again") == {"created": False, "same": True}
            assert node.op("sync", endpoints=everyone)["changes"] == 0

        # Node B's container gone from the registry: its entries go, and with them the
        # way there (A still holds B's MAC in its ARP cache: the frame goes nowhere).
        assert a.op("sync", endpoints=[a.endpoint()])["changes"] == 2
        assert a.op("observe")["state"] == {"fdb": [], "neigh": []}
        received = b.vxlan_rx_packets()
        failed = a.probe(b.args["address"], 64)
        assert failed["tcp"] != "b" and failed["64"] != "64", failed
        assert b.vxlan_rx_packets() == received
    finally:
        server.kill()
        server.wait()

    # Teardown leaves nothing the suite's leak check would see on either node, and that
    # check does see the VXLAN device while it is there.
    for node in nodes:
        before = node.op("leaks")
        assert node.facts["device"] in before["links"]
        assert node.facts["netns"] in before["netns"]
        node.op("teardown")
        assert node.op("leaks") == baseline[node]


def _bridge(stack: str) -> NetworkPlan:
    return NetworkPlan(key="over", name=f"{stack}_over", bridge=names.bridge_name(stack, "over"),
                       bridge_mac=names.bridge_mac(stack, "over"),
                       subnet=IPv4Network("10.91.1.0/24"), gateway=IPv4Address("10.91.1.1"),
                       internal=True)


def _ifindex(name: str) -> int:
    return int(json.loads(ip("-j", "link", "show", "dev", name))[0]["ifindex"])


async def test_a_device_with_other_settings_is_made_anew_and_goes_with_its_bridge(
        kernel: Kernel) -> None:
    stack = "t" + secrets.token_hex(3)
    net = _bridge(stack)
    local = ip_address("127.0.0.1")
    device = overlay.vxlan_device(stack, "over", 4242, local, 1500)
    try:
        await kernel.ensure_bridge(net)
        # A leftover that learns and floods to a group, on Linux's old port: replaced.
        ip("link", "add", device.name, "type", "vxlan", "id", "4242", "dstport", "8472",
           "local", "127.0.0.1", "group", "239.1.1.1", "dev", "lo")
        assert device.name in snapshot().links  # the suite's leak check sees these
        assert await vxlan.ensure_vxlan(kernel, device) is True
        data = json.loads(ip("-d", "-j", "link", "show", "dev", device.name))[0]
        info = data["linkinfo"]["info_data"]
        assert (info["port"], info["learning"], "group" in info) == (4789, False, False)
        assert data["mtu"] == 1450 and data["master"] == net.bridge
        assert (await kernel.links())[device.name].kind == "vxlan"

        # Only the MTU, the bridge or the state differ: set in place, the same device.
        index = _ifindex(device.name)
        ip("link", "set", device.name, "nomaster", "mtu", "1300", "down")
        assert await vxlan.ensure_vxlan(kernel, device) is False
        data = json.loads(ip("-d", "-j", "link", "show", "dev", device.name))[0]
        assert (data["ifindex"], data["mtu"], data["master"]) == (index, 1450, net.bridge)
        assert "UP" in data["flags"]

        # Entries on a device that is gone: removing them is done already.
        entry = overlay.FdbEntry("02:00:00:00:00:09", ip_address("127.0.0.9"))
        await vxlan.ensure_fdb(kernel, device.name, entry)
        await vxlan.ensure_fdb(kernel, device.name, entry)
        neigh = overlay.NeighEntry(ip_address("10.91.1.9"), entry.mac)
        await vxlan.ensure_neigh(kernel, device.name, neigh)
        assert await vxlan.observe_forwarding(kernel, device.name) == overlay.ForwardingState(
            frozenset({entry}), frozenset({neigh}))
        await vxlan.remove_fdb(kernel, device.name, entry)
        await vxlan.remove_fdb(kernel, device.name, entry)
        await vxlan.remove_neigh(kernel, device.name, neigh)
        await vxlan.remove_neigh(kernel, device.name, neigh)
        assert await vxlan.observe_forwarding(kernel, device.name) == overlay.ForwardingState()
    finally:
        await kernel.remove_bridge(net.bridge)
    assert device.name not in snapshot().links and net.bridge not in snapshot().links
    await vxlan.remove_vxlan(kernel, device.name)  # gone already: fine
    await vxlan.remove_fdb(kernel, device.name, entry)


async def test_a_foreign_link_with_the_device_s_name_is_refused(kernel: Kernel) -> None:
    stack = "t" + secrets.token_hex(3)
    net = _bridge(stack)
    device = overlay.vxlan_device(stack, "over", 4242, ip_address("127.0.0.1"), 1500)
    try:
        await kernel.ensure_bridge(net)
        ip("link", "add", device.name, "type", "veth", "peer", "name", "lkt" + stack[1:])
        with pytest.raises(KernelError, match=f"a veth link named {device.name} already"):
            await vxlan.ensure_vxlan(kernel, device)
    finally:
        ip("link", "del", device.name)
        await kernel.remove_bridge(net.bridge)
