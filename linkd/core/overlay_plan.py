"""An overlay network in a stack's plan: the bridge, subnet and tunnel this node runs for
a network that spans the cluster's nodes (`driver: overlay` on a `linkd daemon --cluster`).

The cluster's registry (linkd.core.cluster_ipam) gives the network its subnet and VNI;
this node adds its side: a bridge named after the network's owner (every stack on this
node that is on the network shares it, as a local shared network does), a VXLAN device
from this node's underlay address, and the MTU that leaves room for VXLAN's overhead.

What differs from node to node is the bridge's MAC: every node's bridge holds the
gateway address (each node routes its own containers' traffic out), but a frame that
crosses to another node must never carry a source MAC that the bridge there takes for
its own. A container's MAC is its address's (`names.address_mac`), so that every node
knows it from the registry alone.

What an overlay network cannot have yet is refused here, naming the key: a subnet or
gateway of its own (the cluster picks them), IPv6, and static addresses.
"""

from __future__ import annotations

from ipaddress import IPv4Address

from linkd.core import names
from linkd.core.cluster_ipam import NetworkRecord
from linkd.core.model import Network, Stack
from linkd.core.overlay import VxlanDevice, overlay_mtu
from linkd.core.plan import NetworkPlan, OverlayPlan
from linkd.errors import SpecError


def owner_of(network_id: str) -> tuple[str, str]:
    """(owner stack, its key) of a network id `<stack>/<key>`."""
    stack, _, key = network_id.partition("/")
    return stack, key


def network_plan(key: str, record: NetworkRecord, *, internal: bool, node: str,
                 local: IPv4Address, underlay_mtu: int, owned: bool) -> NetworkPlan:
    """The plan of an overlay network, as the stack that knows it under `key` runs it on
    `node`: its own (`owned`), or one it joins."""
    stack, owner_key = owner_of(record.id)
    return NetworkPlan(
        key=key,
        name=record.name or f"{stack}_{owner_key}",
        bridge=names.bridge_name(stack, owner_key),
        bridge_mac=names.bridge_mac(f"{stack}@{node}", owner_key),
        subnet=record.subnet,
        gateway=record.gateway,
        internal=internal,
        owner=None if owned else (stack, owner_key),
        overlay=OverlayPlan(
            id=record.id, vni=record.vni, local=local,
            mtu=overlay_mtu(underlay_mtu, ipv6_underlay=False),
            vxlan=names.vxlan_name(stack, owner_key)),
    )


def device_of(network: NetworkPlan) -> VxlanDevice:
    """The VXLAN device of an overlay network's plan, a port of its bridge."""
    assert network.overlay is not None, "only an overlay network has one"
    o = network.overlay
    return VxlanDevice(name=o.vxlan, bridge=network.bridge, vni=o.vni, local=o.local,
                       mtu=o.mtu)


def overlay_networks(stack: Stack) -> list[Network]:
    """The stack's own networks that span nodes."""
    return [n for n in stack.networks if n.driver == "overlay" and not n.external]


def check(stack: Stack, spanning: set[str]) -> None:
    """SpecError naming each key an overlay network (the keys in `spanning`, the stack's
    own and those it joins) cannot have yet."""
    problems: list[tuple[str, int | None, str]] = []
    for network in stack.networks:
        if network.name not in spanning:
            continue
        where = f"networks.{network.name}"
        if network.subnet is not None or network.gateway is not None:
            problems.append((f"{where}.ipam", None, "an overlay network's subnet is the "
                             "cluster's to pick; remove ipam.config"))
        if network.enable_ipv6:
            problems.append((f"{where}.enable_ipv6", None, "overlay networks are IPv4 only "
                             "for now; remove it"))
    for service in stack.services:
        for a in service.networks:
            if a.network in spanning and (a.ipv4_address or a.ipv6_address) is not None:
                problems.append((
                    f"services.{service.name}.networks.{a.network}", None,
                    "static addresses on an overlay network are not supported yet (the "
                    "cluster assigns them, sticky); remove ipv4_address/ipv6_address"))
    if problems:
        raise SpecError(problems)
