"""Sticky addressing: a stack's lease keeps its subnets and its containers' addresses
through re-creation, whatever else changed in the file or on the machine."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from linkd.core import ipam
from linkd.core.model import Attachment, Network, Service, Stack
from linkd.core.plan import StackPlan, lease_of
from linkd.core.state import pack, unpack
from tests.planning import realize

CMD = ("sleep", "60")
NET = IPv4Network("10.87.5.0/24")


def shop(*services: Service) -> Stack:
    return Stack("shop", services, (Network("front", enable_ipv6=True),))


def svc(name: str, replicas: int = 1) -> Service:
    return Service(name, command=CMD, replicas=replicas, networks=(Attachment("front"),))


def addresses(plan: StackPlan) -> dict[str, tuple[object, object]]:
    return {c.name: (c.interfaces[0].address, c.interfaces[0].address6) for c in plan.containers}


def test_a_service_added_at_the_top_moves_no_one() -> None:
    first = realize(shop(svc("db"), svc("web", 2)), {"front": NET})
    again = realize(
        shop(svc("cache"), svc("db"), svc("web", 3)), {"front": NET}, lease=lease_of(first)
    )
    before, after = addresses(first), addresses(again)
    assert all(after[name] == before[name] for name in before)
    assert len(set(after.values())) == len(after)  # and nobody shares an address
    # Without the lease the file order decides, and everybody moves.
    fresh = addresses(realize(shop(svc("cache"), svc("db"), svc("web", 3)), {"front": NET}))
    assert fresh["db-1"] != before["db-1"]


def test_a_removed_service_leaves_the_others_in_place() -> None:
    first = realize(shop(svc("a"), svc("b"), svc("c")), {"front": NET})
    again = realize(shop(svc("a"), svc("c")), {"front": NET}, lease=lease_of(first))
    assert addresses(again)["c-1"] == addresses(first)["c-1"]


def test_a_lease_for_another_subnet_is_ignored() -> None:
    first = realize(shop(svc("a")), {"front": NET})
    moved = realize(shop(svc("a")), {"front": IPv4Network("10.87.9.0/24")}, lease=lease_of(first))
    assert moved.containers[0].interfaces[0].address == IPv4Address("10.87.9.2")


def test_subnets_prefer_the_lease_and_avoid_other_stacks_leases() -> None:
    nets = [Network("front"), Network("back")]
    previous = {"front": IPv4Network("10.87.7.0/24")}
    held = [IPv4Network("10.87.0.0/24"), IPv4Network("10.87.1.0/24")]
    got = ipam.pick_subnets(nets, [], previous=previous, reserved=held)
    assert got == {"front": IPv4Network("10.87.7.0/24"), "back": IPv4Network("10.87.2.0/24")}
    # The lease yields to something that really uses the subnet now.
    taken = [(IPv4Network("10.87.7.0/24"), "stack other network x")]
    got = ipam.pick_subnets(nets, taken, previous=previous, reserved=held)
    assert got["front"] == IPv4Network("10.87.2.0/24")
    # And reservations yield when the pool has nothing else.
    tiny = IPv4Network("10.87.0.0/23")
    got = ipam.pick_subnets([Network("front")], [], pool=tiny, reserved=held)
    assert got == {"front": IPv4Network("10.87.0.0/24")}


def test_a_lease_survives_its_encoding() -> None:
    lease = lease_of(realize(shop(svc("db"), svc("web", 2)), {"front": NET}))
    assert unpack(ipam.Lease, pack(lease)) == lease
    assert lease.subnet_map() == {"front": NET}
    assert lease.addresses_on("front", 4)["web-2"] == IPv4Address("10.87.5.4")
