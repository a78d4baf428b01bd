"""The cross-stack DNS follower (linkd.runtime.stack.shared.Neighbours) reads other stacks'
state files, which change with every container's state: a stack that shares no network
with this one must not be decoded again on every change (with many stacks coming up,
that decoding was most of `up`'s time), only when its plan changes (its lease is saved);
one that shares a network is read again whenever it changes. No kernel: state files in a
run directory of the test's own."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from linkd.core.ipam import Lease
from linkd.core.plan import StackPlan
from linkd.core.state import ContainerState, ContainerStatus, StackState
from linkd.runtime.stack import shared, store
from linkd.runtime.stack.live import LiveStack
from linkd.spec.stack_file import parse_stack
from tests.planning import realize


def plan_of(stack: str, subnet: str, joins: str | None = None) -> StackPlan:
    parsed = parse_stack("services: {web: {command: sleep 1}}\n", source="linkd.yaml",
                         project_name=stack)
    plan = realize(parsed, {"default": IPv4Network(subnet)})
    if joins is not None:  # its default network is `joins`'s (an external network)
        plan = dataclasses.replace(plan, networks=tuple(
            dataclasses.replace(n, owner=(joins, n.key)) for n in plan.networks))
    return plan


def save(plan: StackPlan, status: ContainerStatus) -> None:
    containers = tuple(ContainerState(c.name, status=status, pid=1234)
                       for c in plan.containers)
    store.save(StackState(plan, "/x/linkd.yaml", "up", 1, containers))


class Told:
    """The publisher's side: what the follower asked DNS to serve."""

    def __init__(self) -> None:
        self.neighbours: tuple[StackPlan, ...] = ()

    def set_neighbours(self, plans: tuple[StackPlan, ...],
                       pending: frozenset[tuple[str, str]]) -> None:
        self.neighbours = plans


@pytest.fixture
def decodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    monkeypatch.setenv("LINKD_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setattr(shared, "_decoded", {})
    counted: Counter[str] = Counter()
    load = store.load

    def counting(stack: str) -> StackState:
        counted[stack] += 1
        return load(stack)

    monkeypatch.setattr(store, "load", counting)
    return counted


def test_a_stack_apart_is_decoded_again_only_when_its_plan_changes(
        decodes: Counter[str]) -> None:
    mine, apart, joined = (plan_of("a", "10.88.0.0/24"), plan_of("b", "10.88.1.0/24"),
                           plan_of("c", "10.88.0.0/24", joins="a"))
    save(mine, "running")
    store.save_lease(Lease("b"))
    told = Told()
    follower = shared.Neighbours(
        LiveStack("a", "/x/linkd.yaml", lambda *_: None, plan=mine), told)  # type: ignore[arg-type]
    for n in range(5):  # both others change state, as containers starting do
        save(apart, "running" if n % 2 else "created")
        save(joined, "running" if n % 2 else "created")
        follower.refresh()
    assert decodes["b"] == 1  # found to share nothing once, then left alone
    assert decodes["c"] == 5  # its containers are served: read at every change
    assert [p.stack for p in told.neighbours] == ["c"]
    store.save_lease(Lease("b", subnets=(("default", IPv4Network("10.88.2.0/24")),)))
    save(apart, "running")
    follower.refresh()
    assert decodes["b"] == 2  # a new plan: looked at again


async def test_a_stack_of_this_process_is_followed_at_once_not_at_the_next_look(
        decodes: Counter[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """What the daemon's stacks do for each other: a stack that came up or went says so,
    and the others' zones follow before its `up` or `down` returns (a stack elsewhere is
    seen at the follower's next look, which this test puts off for good)."""
    monkeypatch.setattr(shared, "FOLLOW_INTERVAL", 3600.0)
    mine, joined = plan_of("a", "10.88.0.0/24"), plan_of("c", "10.88.0.0/24", joins="a")
    save(mine, "running")
    told = Told()
    live = LiveStack("a", "/x/linkd.yaml", lambda *_: None, plan=mine)
    follower = shared.Neighbours(live, told)  # type: ignore[arg-type]
    async with asyncio.TaskGroup() as tasks:
        live.tasks = tasks
        follower.refresh()
        follower.start()
        try:
            save(joined, "running")
            shared.tell_neighbours("c")  # c is up
            assert [p.stack for p in told.neighbours] == ["c"]
            store.remove_stack_dir("c")
            shared.tell_neighbours("c")  # c is gone
            assert told.neighbours == ()
        finally:
            await follower.stop()
    save(joined, "running")
    shared.tell_neighbours("c")  # a stopped follower is told nothing
    assert told.neighbours == ()
