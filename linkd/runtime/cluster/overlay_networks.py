"""A cluster daemon's overlay networks: what the planner asks the cluster's registry for,
and what a stack gives back when it goes.

A stack planned on a `linkd daemon --cluster` gets, for each network it declares with
`driver: overlay`, the cluster's record of it (subnet, VNI; made by the first node that
claims it, under its name, so that stacks on other nodes can join it with
`external: true`), and for each of its containers on such a network an address that
no container anywhere in the cluster has (sticky: the same one when it comes back). An
external network that no stack on this node made is looked up by name in the registry.

When containers go (an update that removes them, `down`), their addresses are released
(their sticky leases stay); a stack that made an overlay network releases the network
too when it goes, unless another node's containers still hold addresses on it: then
the network stays in the registry, for them, and is released by whichever `down`
finds it unused.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Mapping
from ipaddress import IPv4Address

from linkd.core import ipam, overlay_plan
from linkd.core.cluster_ipam import NetworkRecord
from linkd.core.model import Stack
from linkd.core.overlay import overlay_id
from linkd.core.plan import NetworkPlan, StackPlan
from linkd.core.shared_networks import real_name
from linkd.errors import ConflictError, LinkdError
from linkd.runtime.cluster.etcd import EtcdUnavailable
from linkd.runtime.cluster.membership import Membership
from linkd.runtime.cluster.registry import Registry
from linkd.runtime.kernel import vxlan
from linkd.runtime.kernel.netlink import Kernel

log = logging.getLogger("linkd")

Assigned = dict[tuple[str, str], IPv4Address]  # (container, network key) -> its address


class OverlayNetworks:
    """This node's side of the cluster's overlay networks."""

    def __init__(self, registry: Registry, local: IPv4Address, underlay_mtu: int) -> None:
        self.registry = registry
        self.node = registry.node
        self.local = local
        self.underlay_mtu = underlay_mtu

    async def close(self) -> None:
        await self.registry.etcd.close()

    async def taken_subnets(self) -> list[tuple[ipam.IPNetwork, str]]:
        """The overlay networks' subnets, which this node's own networks must avoid."""
        return [(subnet, "an overlay network of the cluster")
                for subnet in await self.registry.taken_subnets()]

    async def networks(self, stack: Stack, made_here: Iterable[str],
                       avoid: list[tuple[ipam.IPNetwork, str]]
                       ) -> tuple[dict[str, NetworkPlan], dict[str, NetworkPlan]]:
        """By key, the plans of the stack's own overlay networks (claimed now if the
        cluster has no record of them), and of the external networks it joins that no
        stack on this node made (`made_here`: their names) but some node did."""
        here = set(made_here)
        own: dict[str, NetworkPlan] = {}
        for network in overlay_plan.overlay_networks(stack):
            record = await self.registry.claim_network(
                overlay_id(stack.name, network.name), avoid,
                name=real_name(stack.name, network))
            own[network.name] = self._plan(network.name, record, network.internal, True)
        joined: dict[str, NetworkPlan] = {}
        for network in stack.networks:
            name = real_name(stack.name, network)
            if not network.external or name in here:
                continue
            found = await self.registry.find(name)
            if found is None:
                continue  # the planner says it was not found, naming both places
            plan = self._plan(network.name, found, False, False)
            # Its own bridge here (another stack on this node is on it already) is no clash.
            clash = next((what for subnet, what in avoid if subnet.overlaps(found.subnet)
                          and what != f"host route via {plan.bridge}"), None)
            if clash is not None:
                raise ConflictError(
                    f"networks.{network.name}: overlay network {name} has subnet "
                    f"{found.subnet}, which this node uses already ({clash}); remove that "
                    "network here, or run the stack on another node")
            joined[network.name] = plan
        overlay_plan.check(stack, set(own) | set(joined) | {
            n.name for n in stack.networks if n.external and n.driver == "overlay"})
        return own, joined

    def _plan(self, key: str, record: NetworkRecord, internal: bool,
              owned: bool) -> NetworkPlan:
        return overlay_plan.network_plan(
            key, record, internal=internal, node=self.node, local=self.local,
            underlay_mtu=self.underlay_mtu, owned=owned)

    async def assign(self, stack: Stack, networks: Mapping[str, NetworkPlan]) -> Assigned:
        """An address from the registry for each container on an overlay network."""
        assigned: Assigned = {}
        for service in stack.services:
            for attachment in service.networks:
                net = networks.get(attachment.network)
                if net is None or net.overlay is None:
                    continue
                for replica in range(1, service.replicas + 1):
                    container = service.container(replica)
                    assigned[(container, net.key)] = await self.registry.claim_address(
                        net.overlay.id, f"{stack.name}/{container}")
        return assigned

    async def release(self, plan: StackPlan, kept: StackPlan | None = None
                      ) -> list[LinkdError]:
        """Give back the addresses of `plan`'s containers on overlay networks, but those
        `kept` still has (an update), and with `kept` None (the stack goes) the overlay
        networks it made. Best-effort: returns what failed."""
        errors: list[LinkdError] = []
        networks = {n.key: n for n in plan.networks}
        staying = ({(c.name, i.network, i.address) for c in kept.containers
                    for i in c.interfaces} if kept is not None else set())
        for c in plan.containers:
            for i in c.interfaces:
                net = networks.get(i.network)
                if net is None or net.overlay is None or (c.name, i.network, i.address) in staying:
                    continue
                try:
                    await self.registry.release_address(net.overlay.id, f"{plan.stack}/{c.name}")
                except EtcdUnavailable as exc:  # every other call would wait as long
                    return [*errors, LinkdError(f"overlay addresses not released: {exc}")]
                except LinkdError as exc:
                    errors.append(LinkdError(
                        f"release {i.address} on overlay network {net.name}: {exc}"))
        if kept is not None:
            return errors
        for net in plan.networks:
            if net.overlay is None or net.owner is not None:
                continue
            try:
                await self.registry.release_network(net.overlay.id)
            except ConflictError as exc:  # another node's containers are on it
                log.info("overlay network %s kept in the cluster's registry: %s", net.name, exc)
            except LinkdError as exc:
                errors.append(LinkdError(f"release overlay network {net.name}: {exc}"))
        return errors


async def start(member: Membership, kernel: Kernel) -> OverlayNetworks | None:
    """This node's overlay networks, on a client of their own; None (said) when the
    node's underlay address is not an IPv4 address of this host's."""
    try:
        local = ipaddress.ip_address(member.record.address)
    except ValueError:
        local = None
    if not isinstance(local, IPv4Address):
        log.warning("node %s: overlay networks need an IPv4 underlay address (--node-address),"
                    " not %s: driver overlay networks are bridges on this node",
                    member.config.name, member.record.address)
        return None
    mtu = await vxlan.underlay_mtu(kernel, local)
    registry = Registry(member.new_client(), member.config.name, member.config.prefix)
    return OverlayNetworks(registry, local, mtu)
