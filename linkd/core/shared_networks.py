"""Networks two stacks share: `networks: N: {external: true}` joins a network that another
stack made, as Compose joins one that exists already.

A network belongs to the stack that makes it (its owner) and is named as Compose names
it: `<stack>_<key>`, or its `name:`. A stack that declares a network `external: true`
names it by `name:` (else by its key) and joins it: its containers get veths on the
owner's bridge and addresses from the owner's subnet, and the network's names answer
both ways (linkd's DNS scopes names by network, and a shared network is one network).
This module decides, from the plans of the stacks that are up (read by the runtime,
`linkd.runtime.stack.planner`):

- which network an external one is (`join`: the owner's plan, copied under the joining
  stack's key, with `owner` set), or that it does not exist: an error that creates
  nothing;
- that no two stacks make a network of one name (`check_names`);
- which addresses are taken on each network by other stacks' containers (`held`),
  whichever side plans: the owner's addresses avoid the joiners' as much as the other way;
- which containers of other stacks a stack's DNS must know (`neighbours`);
- which stacks still use a bridge (`users`): the owner's `down` keeps a bridge that a
  joiner's containers are on (Docker, too, refuses to remove a network with active
  endpoints, and Compose's `down` leaves it with a warning); the last one to leave
  removes it.

A network's identity, everywhere (the DNS zone's network ids too), is `(owner, key)`:
`network_id`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address

from linkd.core.model import Network, Stack
from linkd.core.plan import NetworkPlan, StackPlan
from linkd.errors import ConflictError, NotFoundError

NetId = tuple[str, str]  # (owner stack, network key there)
IPAddress = IPv4Address | IPv6Address


def network_id(stack: str, net: NetworkPlan) -> NetId:
    """The network `net` of `stack`'s plan is, whichever stack's plan names it."""
    return net.owner or (stack, net.key)


def real_name(stack: str, network: Network) -> str:
    """Its name as Compose gives it: `name:`, else `<stack>_<key>` (an external network's
    name is its key)."""
    if network.real_name is not None:
        return network.real_name
    return network.name if network.external else f"{stack}_{network.name}"


def owned(plans: Iterable[StackPlan]) -> dict[str, tuple[str, NetworkPlan]]:
    """Networks the stacks made (not joined), by name: (owner, its plan)."""
    found: dict[str, tuple[str, NetworkPlan]] = {}
    for plan in plans:
        for net in plan.networks:
            if net.owner is None:
                found.setdefault(net.name, (plan.stack, net))
    return found


def join(stack: Stack, others: Sequence[StackPlan],
         elsewhere: Mapping[str, NetworkPlan] | None = None) -> dict[str, NetworkPlan]:
    """The plan of each external network of `stack`, by its key: the owner's, as `stack`
    records it, or else the one `elsewhere` has for that key (an overlay network made on
    another node of a cluster). NotFoundError naming the first that no stack up has made."""
    made = owned(p for p in others if p.stack != stack.name)
    joined: dict[str, NetworkPlan] = {}
    for network in stack.networks:
        if not network.external:
            continue
        name = real_name(stack.name, network)
        found = made.get(name)
        if found is None and elsewhere and network.name in elsewhere:
            joined[network.name] = elsewhere[network.name]
            continue
        if found is None:
            known = ", ".join(sorted(made)) or "none"
            raise NotFoundError(
                f"network {name} declared as external, but could not be found: create it "
                f"with another stack first (a network of its own is named <stack>_<key>, "
                f"or its name:; networks of the stacks up: {known})"
            )
        owner, net = found
        joined[network.name] = replace(net, key=network.name, owner=(owner, net.key))
    return joined


def check_names(stack: Stack, others: Sequence[StackPlan]) -> None:
    """ConflictError if a network `stack` makes has the name of one another stack made:
    a stack joining that name could not tell which it means."""
    made = owned(p for p in others if p.stack != stack.name)
    for network in stack.networks:
        if network.external:
            continue
        name = real_name(stack.name, network)
        if name in made:
            owner, net = made[name]
            raise ConflictError(
                f"networks.{network.name}: network {name} exists already (stack {owner} made "
                f"it, as its network {net.key}); to join it, declare it external: true "
                f"(with name: {name}), or give this one another name"
            )


def held(
    stack: str, networks: Sequence[NetworkPlan | NetId], others: Sequence[StackPlan]
) -> dict[str, frozenset[IPAddress]]:
    """By network key of `stack`, the addresses other stacks' containers have on that
    network. `networks` are `stack`'s, as plans (external ones) or ids (its own:
    `(stack, key)`)."""
    keys: dict[NetId, str] = {}
    for net in networks:
        if isinstance(net, NetworkPlan):
            keys[network_id(stack, net)] = net.key
        else:
            keys[net] = net[1]
    taken: dict[str, set[IPAddress]] = {}
    for plan in others:
        if plan.stack == stack:
            continue
        here = {n.key: keys[network_id(plan.stack, n)] for n in plan.networks
                if network_id(plan.stack, n) in keys}
        if not here:
            continue
        for c in plan.containers:
            for i in c.interfaces:
                key = here.get(i.network)
                if key is not None:
                    found = taken.setdefault(key, set())
                    found.add(i.address)
                    if i.address6 is not None:
                        found.add(i.address6)
    return {key: frozenset(addresses) for key, addresses in taken.items()}


def neighbours(plan: StackPlan, others: Sequence[StackPlan]) -> tuple[StackPlan, ...]:
    """Other stacks' containers on the networks `plan` shares with them, each stack as a
    plan of those containers with those interfaces only: what `plan`'s DNS adds to its
    own zone, so that names answer across the two stacks on a shared network (and only
    there)."""
    found = (shared_part(plan, other) for other in others if other.stack != plan.stack)
    return tuple(part for part in found if part is not None)


def shares(plan: StackPlan, other: StackPlan) -> bool:
    """Whether `other` is on a network of `plan`'s."""
    mine = {network_id(plan.stack, n) for n in plan.networks}
    return any(network_id(other.stack, n) in mine for n in other.networks)


def shared_part(plan: StackPlan, other: StackPlan) -> StackPlan | None:
    """`other`'s part of `neighbours(plan, ...)`; None when it shares no network."""
    mine = {network_id(plan.stack, n) for n in plan.networks}
    shared = [n for n in other.networks if network_id(other.stack, n) in mine]
    if not shared:
        return None
    keys = {n.key for n in shared}
    containers = []
    for c in other.containers:
        interfaces = tuple(i for i in c.interfaces if i.network in keys)
        if interfaces:
            containers.append(replace(c, interfaces=interfaces, links=(),
                                      added_hosts=(), extra_hosts=()))
    return replace(other, networks=tuple(shared), containers=tuple(containers))


def users(bridge: str, others: Iterable[StackPlan], stack: str) -> tuple[str, ...]:
    """The stacks other than `stack` whose plans put containers on `bridge`, or made it."""
    return tuple(sorted({
        plan.stack
        for plan in others
        if plan.stack != stack
        for n in plan.networks
        if n.bridge == bridge
        and (n.owner is None or any(i.bridge == bridge
                                    for c in plan.containers for i in c.interfaces))
    }))
