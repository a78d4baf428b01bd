"""What follows from a change of a container's state, in one place.

`Publisher.set_state` is the supervisor's one on-change hook. A container starting,
exiting, restarting or changing health changes what others see of it, and each of those
follows from here:

* the state file, soon and off the event loop (`linkd.runtime.stack.state_writer`);
* dependency waits (`depends_on: condition: service_healthy`), woken to look again;
* the DNS zone: a container that stopped for good leaves it, one not yet healthy is held
  back from its service's names (`linkd.dns.zone.held_back`);
* the live bindings files of every container linking to its service;
* an event on the daemon's stream.

Also the stack's DNS server (created with the plan, its zone swapped on every change).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from linkd.core import health
from linkd.core.plan import ContainerPlan, StackPlan
from linkd.dns.zone import build_zone, held_back, rezone
from linkd.runtime.stack.container_files import write_bindings
from linkd.runtime.stack.dns_server import DnsServer, upstreams_from_resolv_conf
from linkd.runtime.stack.live import LiveStack
from linkd.runtime.stack.state_writer import StateWriter

OnEvent = Callable[[dict[str, object]], None]


class Publisher:
    def __init__(self, live: LiveStack) -> None:
        self.live = live
        self.writer = StateWriter(live.snapshot)
        self.dns: DnsServer | None = None
        self._served: StackPlan | None = None  # what the DNS zone serves: plan less the gone
        # Other stacks' containers on networks this one shares (linkd.runtime.stack.shared),
        # and those of them not healthy yet: served beside its own.
        self.neighbours: tuple[StackPlan, ...] = ()
        self._neighbours_pending: frozenset[tuple[str, str]] = frozenset()
        # The stack's containers on other nodes (a stack spanning a cluster's nodes),
        # named in the live bindings of those linking to them.
        self.elsewhere: tuple[ContainerPlan, ...] = ()
        # Called with every lifecycle and DNS change (the daemon's event stream).
        self.on_event: OnEvent | None = None
        # Wakes whoever waits for a change of state (dependency waits); set by the owner.
        self.wake: Callable[[], None] = lambda: None

    def save(self) -> None:
        """The state changed: the state file follows soon; `await self.writer.flush()`
        where it must be on disk before going on."""
        self.writer.changed()

    def set_state(self, name: str, **changes: object) -> None:
        current = self.live.state(name)
        now = replace(current, **changes)  # type: ignore[arg-type]
        self.live.states[name] = now
        self.save()
        if "status" in changes and now.status != current.status:
            self.wake()
            self.publish_zone()
            self.publish_bindings(changed=name)
            self.emit(
                type="lifecycle",
                container=name,
                status=now.status,
                exit_code=now.exit_code,
                restarts=now.restarts,
            )

    def emit(self, **event: object) -> None:
        if self.on_event is not None:
            self.on_event({"stack": self.live.name, "time": time.time(), **event})

    # -- DNS -----------------------------------------------------------------------------

    def serve(self, plan: StackPlan) -> DnsServer:
        """The stack's DNS server for `plan`, with what is not yet healthy held back."""
        zone = build_zone([plan, *self.neighbours], domain=plan.dns.domain,
                          pending=self._pending(plan))
        self.dns = DnsServer(zone, upstreams(plan))
        self._served = plan
        return self.dns

    def follow(self, old: StackPlan, new: StackPlan) -> None:
        """The zone follows `new` from here (an update): names of `old` that `new` does
        not have go."""
        assert self.dns is not None
        self.dns.set_upstreams(upstreams(new))
        self._served = old
        self.publish_zone()

    def publish_zone(self) -> None:
        """Swap in a zone without the containers that have stopped for good.

        A restarting container keeps its records (it comes back at the same address);
        one that exited is removed at once, and comes back when it starts again.
        """
        plan = self.live.plan
        if self.dns is None or plan is None or self.live.status == "stopping":
            return  # during teardown DNS is already off; rebuilding per stop is waste
        gone = [n for n, st in self.live.states.items() if st.status in ("exited", "failed")]
        served = plan.without(gone)
        near = list(self.neighbours)
        zone = rezone(self.dns.zone, [self._served or plan, *near], [served, *near],
                      self._pending(served))
        self._served = served
        if zone is not self.dns.zone:
            self.dns.set_zone(zone)
            self.emit(type="dns", serial=zone.serial, gone=sorted(gone))

    def set_neighbours(self, plans: tuple[StackPlan, ...],
                       pending: frozenset[tuple[str, str]]) -> None:
        """Serve these containers of other stacks too (the networks it shares with them);
        `pending`: those of them not healthy yet."""
        if plans == self.neighbours and pending == self._neighbours_pending:
            return
        before = self.neighbours
        if pending != self._neighbours_pending:
            self.wake()  # a dependency on another node may be healthy now
        self.neighbours, self._neighbours_pending = plans, pending
        plan = self.live.plan
        if self.dns is None or plan is None or self.live.status == "stopping":
            return
        served = self._served or plan
        # Only the containers that came or went: a new container of another stack (or
        # node) answers without a rebuild of every name the zone has.
        zone = rezone(self.dns.zone, [served, *before], [served, *plans],
                      self._pending(served))
        if zone is not self.dns.zone:
            self.dns.set_zone(zone)
            self.emit(type="dns", serial=zone.serial, gone=[])

    def pending_elsewhere(self) -> set[str]:
        """The stack's containers on other nodes held back by their healthcheck."""
        return {name for stack, name in self._neighbours_pending if stack == self.live.name}

    def _pending(self, served: StackPlan) -> frozenset[tuple[str, str]]:
        return held_back(served, self.live.states) | self._neighbours_pending

    def on_probe(self, name: str, before: health.Health | None, now: health.Health) -> None:
        """After every probe: a change of health is saved, served and announced."""
        if before is None or before.status != now.status:
            self.set_state(name, health=now.status)
            self.publish_zone()
            last = now.last
            self.emit(
                type="health", container=name, health=now.status,
                failing_streak=now.failing_streak,
                exit_code=last.exit_code if last else None,
                output=last.output if last else "",
            )
            self.live.report(f"container {name}",
                             f"{now.status} ({health.failure_reason(now)})")
        self.wake()

    # -- live bindings -------------------------------------------------------------------

    def publish_bindings(self, changed: str) -> None:
        """Rewrite the live bindings of every container linking to `changed`'s service."""
        plan = self.live.plan
        if plan is None or self.live.status == "stopping":
            return
        service = plan.container(changed).service
        self.rewrite_bindings([c.name for c in plan.containers
                               if any(s == service for _, s in c.links)])

    def rewrite_bindings(self, names: list[str]) -> None:
        """The live bindings of these containers, anew (their peers may have changed)."""
        plan = self.live.plan
        assert plan is not None
        running = self.live.running()
        for name in names:
            write_bindings(self.live.container_dir(name), plan, plan.container(name), running,
                           self.elsewhere)

    def set_elsewhere(self, containers: tuple[ContainerPlan, ...]) -> None:
        """The stack's containers running on other nodes now (a stack spanning a cluster's
        nodes); the live bindings of the containers linking to theirs follow."""
        if containers == self.elsewhere:
            return
        services = {c.service for c in (*self.elsewhere, *containers)}
        self.elsewhere = containers
        self.wake()  # a dependency on another node may be met
        plan = self.live.plan
        if plan is None or self.live.status == "stopping":
            return
        self.rewrite_bindings([c.name for c in plan.containers
                               if any(s in services for _, s in c.links)])


def upstreams(plan: StackPlan) -> list[tuple[str, int]]:
    """The stack's `x-linkd: dns: upstreams`, else the host's resolv.conf servers."""
    if plan.dns.upstreams is not None:
        return [(u.host, u.port) for u in plan.dns.upstreams]
    try:
        return upstreams_from_resolv_conf(Path("/etc/resolv.conf").read_text())
    except OSError:
        return []
