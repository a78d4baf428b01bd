"""One node's side of an overlay network, driven by tests/integration/test_vxlan.py inside
a simulated host (`python -m tests.overlay_node OP JSON`, run through the host's
`SimulatedHost.run`), as the daemon will drive it there: linkd's own Kernel steps make a
bridge, one container (its namespace and veth) and the network's VXLAN device, and
program the forwarding entries from linkd.core.overlay's desired state.

Every operation prints one JSON object; the container's end gets the overlay MTU, which
no linkd plan carries yet.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from ipaddress import IPv4Address, IPv4Network, ip_address
from typing import Any

from linkd.core import names, overlay
from linkd.core.model import RestartPolicy
from linkd.core.plan import ContainerPlan, InterfacePlan, NetworkPlan
from linkd.runtime.kernel import vxlan
from linkd.runtime.kernel.netlink import Kernel
from tests.integration.conftest import snapshot


def network(args: dict[str, Any]) -> NetworkPlan:
    subnet = IPv4Network(args["subnet"])
    return NetworkPlan(
        key=args["network"], name=f"{args['stack']}_{args['network']}",
        bridge=names.bridge_name(args["stack"], args["network"]),
        bridge_mac=names.bridge_mac(args["stack"], args["network"]),
        subnet=subnet, gateway=subnet.network_address + 1, internal=True)


def container(args: dict[str, Any], net: NetworkPlan) -> ContainerPlan:
    interface = InterfacePlan(
        network=net.key, ifname="eth0",
        host_ifname=names.host_veth_name(args["stack"], args["container"], net.key),
        bridge=net.bridge, address=IPv4Address(args["address"]),
        prefixlen=net.subnet.prefixlen, gateway=net.gateway, default_route=True)
    return ContainerPlan(
        name=args["container"], service=args["container"], replica=1,
        netns=names.netns_name(args["stack"], args["container"]), hostname=args["container"],
        interfaces=(interface,), argv=(), env=(), working_dir="/", user=None,
        restart=RestartPolicy(), stop_signal="SIGTERM", stop_grace_period=10.0,
        healthcheck=None, image=None)


def device(args: dict[str, Any], underlay_mtu: int) -> overlay.VxlanDevice:
    return overlay.vxlan_device(args["stack"], args["network"], args["vni"],
                                ip_address(args["local"]), underlay_mtu)


def ip_json(*argv: str) -> Any:
    return json.loads(subprocess.run(["ip", "-j", *argv], check=True, capture_output=True,
                                     text=True).stdout)


def links() -> dict[str, Any]:
    """Every link of this node, by name, as `ip -d -j link` shows it."""
    return {link["ifname"]: link for link in ip_json("-d", "link", "show")}


def essentials() -> dict[str, Any]:
    """What makes each link what it is (not its counters or the bridge's timers)."""
    def settings(link: dict[str, Any]) -> dict[str, Any]:
        data = (link.get("linkinfo") or {}).get("info_data") or {}
        return {k: v for k, v in data.items() if not k.endswith("_timer")}

    return {name: (link["ifindex"], link["address"], link["mtu"], link.get("master"),
                   sorted(link["flags"]), settings(link))
            for name, link in links().items()}


async def setup(kernel: Kernel, args: dict[str, Any]) -> dict[str, Any]:
    net = network(args)
    plan = container(args, net)
    (interface,) = plan.interfaces
    await kernel.ensure_bridge(net)
    await kernel.ensure_netns(plan.netns)
    await kernel.ensure_veth(plan.netns, interface)
    await kernel.configure_netns(plan)
    mtu = await vxlan.underlay_mtu(kernel, ip_address(args["local"]))
    dev = device(args, mtu)
    created = await vxlan.ensure_vxlan(kernel, dev)
    for argv in (["link", "set", interface.host_ifname, "mtu", str(dev.mtu)],
                 ["-n", plan.netns, "link", "set", "eth0", "mtu", str(dev.mtu)]):
        subprocess.run(["ip", *argv], check=True)
    (eth0,) = ip_json("-n", plan.netns, "link", "show", "eth0")
    return {"created": created, "mac": eth0["address"], "underlay_mtu": mtu,
            "device": dev.name, "bridge": net.bridge, "netns": plan.netns,
            "container_mtu": eth0["mtu"]}


async def again(kernel: Kernel, args: dict[str, Any]) -> dict[str, Any]:
    """Every ensure_* step once more: what they report, and the links before and after."""
    net = network(args)
    plan = container(args, net)
    before = essentials()
    await kernel.ensure_bridge(net)
    await kernel.ensure_netns(plan.netns)
    await kernel.ensure_veth(plan.netns, plan.interfaces[0])
    dev = device(args, await vxlan.underlay_mtu(kernel, ip_address(args["local"])))
    created = await vxlan.ensure_vxlan(kernel, dev)
    return {"created": created, "same": before == essentials()}


def endpoints(args: dict[str, Any]) -> list[overlay.Endpoint]:
    return [overlay.Endpoint(overlay.parse_mac(e["mac"]), ip_address(e["address"]),
                             ip_address(e["node"])) for e in args["endpoints"]]


async def sync(kernel: Kernel, args: dict[str, Any]) -> dict[str, Any]:
    desired = overlay.desired_forwarding(endpoints(args), ip_address(args["local"]))
    name = names.vxlan_name(args["stack"], args["network"])
    changes = await vxlan.sync_forwarding(kernel, name, desired.state)
    return {"changes": sum(map(len, (changes.remove_fdb, changes.remove_neigh,
                                     changes.add_fdb, changes.add_neigh))),
            "problems": list(desired.problems),
            "desired": _state(desired.state)}


def _state(state: overlay.ForwardingState) -> dict[str, list[list[str]]]:
    return {"fdb": sorted([e.mac, str(e.vtep)] for e in state.fdb),
            "neigh": sorted([str(e.address), e.mac] for e in state.neigh)}


async def observe(kernel: Kernel, args: dict[str, Any]) -> dict[str, Any]:
    name = names.vxlan_name(args["stack"], args["network"])
    state = await vxlan.observe_forwarding(kernel, name)
    found = links()
    return {"state": _state(state), "device": found.get(name),
            "bridge": found.get(names.bridge_name(args["stack"], args["network"])),
            "links": {n: {"kind": (link.get("linkinfo") or {}).get("info_kind")}
                      for n, link in found.items()}}


async def teardown(kernel: Kernel, args: dict[str, Any]) -> dict[str, Any]:
    net = network(args)
    kernel.remove_netns(names.netns_name(args["stack"], args["container"]))
    await kernel.remove_bridge(net.bridge)  # takes the VXLAN device with it
    return {}


async def leaks(kernel: Kernel, args: dict[str, Any]) -> dict[str, Any]:
    """What the test suite's leak check sees on this node."""
    found = snapshot()
    return {"links": sorted(found.links), "netns": sorted(found.netns)}


OPS = {"setup": setup, "again": again, "sync": sync, "observe": observe,
       "teardown": teardown, "leaks": leaks}


async def main(op: str, args: dict[str, Any]) -> None:
    kernel = Kernel()
    try:
        result = await OPS[op](kernel, args)
    finally:
        kernel.close()
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], json.loads(sys.argv[2])))
