"""Keeps a cluster daemon's overlay networks in step with every node's containers:
level-based, one pass whenever something changed (a container of a stack here, a record
of any node's) and every RESYNC seconds regardless.

A pass:
1. publishes this node's endpoint records (linkd.core.overlay_peers.local_records from
   the stacks it runs) through linkd.runtime.cluster.endpoints, which puts them under
   the node's lease and deletes those it no longer wants;
2. lets VXLAN in from the nodes those records are on, and no other source (the node's
   nft table, linkd.runtime.kernel.overlay_firewall), and programs each local VXLAN
   device with the FDB and neighbour entries for the containers on other nodes
   (linkd.runtime.kernel.vxlan.sync_forwarding: only what differs is changed);
3. when other nodes' records changed, refreshes their part of the DNS neighbours of
   each stack on an overlay network, which read the records through `neighbours_of`
   (linkd.runtime.stack.shared.Neighbours.remote); this comes first in the pass, so that
   a name answers as soon as its record is here.

What the cache holds stays while etcd is gone: the last known containers keep their
names and their tunnels until etcd says otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address

from linkd.core import overlay_peers
from linkd.core.cluster_endpoints import EndpointRecord
from linkd.core.overlay import ForwardingState
from linkd.core.plan import StackPlan
from linkd.errors import LinkdError
from linkd.runtime.cluster.endpoints import Endpoints
from linkd.runtime.cluster.overlay_networks import OverlayNetworks
from linkd.runtime.kernel import vxlan
from linkd.runtime.kernel.netlink import Kernel
from linkd.runtime.kernel.overlay_firewall import ensure_overlay_firewall, remove_overlay_firewall
from linkd.runtime.stack.supervisor import Supervisor
from linkd.runtime.tasks import cancel_all

log = logging.getLogger("linkd")

RESYNC = 5.0  # seconds between passes when nothing said it changed

Neighbourhood = tuple[tuple[StackPlan, ...], frozenset[tuple[str, str]]]


@dataclass
class _View:
    """What a pass and every stack's DNS derive from one list of records, derived once:
    the records change a few times a second at most, and are read many times for each."""

    records: list[EndpointRecord]
    remote: list[EndpointRecord]  # those of the other nodes
    # by the asking stack's overlay networks and DNS settings
    neighbours: dict[object, Neighbourhood] = field(default_factory=dict)
    peers: frozenset[IPv4Address | IPv6Address] | None = None  # the other nodes' VTEPs
    grouped: Mapping[str, list[EndpointRecord]] | None = None  # by network


class OverlaySync:
    def __init__(self, overlay: OverlayNetworks, endpoints: Endpoints, kernel: Kernel,
                 stacks: Callable[[], Sequence[Supervisor]]) -> None:
        self.overlay = overlay
        self.endpoints = endpoints
        self.kernel = kernel
        self.stacks = stacks
        self._dirty = asyncio.Event()
        self._changed: set[str] | None = None  # stacks to publish anew; None: every one
        # by stack, what this node publishes for it: (network, container) -> record
        self._published: dict[str, dict[tuple[str, str], EndpointRecord]] = {}
        self._task: asyncio.Task[None] | None = None
        self._said: set[str] = set()  # forwarding problems logged (once each)
        self._peers: frozenset[IPv4Address | IPv6Address] | None = None  # in the firewall
        # what the last pass programmed from: every record, and the devices by network
        self._forwarded: tuple[list[EndpointRecord], dict[str, str]] | None = None
        self._remote: list[EndpointRecord] | None = None  # ... of the other nodes
        self._seen: _View | None = None  # derived from the records last read
        self._held: dict[str, ForwardingState] = {}  # each device's entries, as programmed
        self._unsubscribe = endpoints.on_change(self._records_changed)

    def changed(self, stack: str | None = None) -> None:
        """Something a pass looks at changed (a container of `stack`; None: anything,
        the records of other nodes): one pass soon (a burst is one pass)."""
        if stack is None or self._changed is None:
            self._changed = None if stack is None else {stack}
        else:
            self._changed.add(stack)
        self._dirty.set()

    def _records_changed(self) -> None:
        self._dirty.set()  # other nodes' records: this node's own are not to publish anew

    def neighbours_of(self, plan: StackPlan) -> Neighbourhood:
        """Other nodes' containers on `plan`'s overlay networks (for its DNS); the stacks
        of this node on the same networks with the same settings share one answer."""
        view = self._view()
        key = (tuple(n for n in plan.networks if n.overlay is not None), plan.dns,
               plan.host_access)
        found = view.neighbours.get(key)
        if found is None:
            found = view.neighbours[key] = overlay_peers.neighbour_plans(
                plan, view.remote, self.overlay.node)
        return found

    def _view(self) -> _View:
        records = self.endpoints.records()
        if self._seen is None or self._seen.records is not records:
            self._seen = _View(records, [r for r in records if r.node != self.overlay.node])
        return self._seen

    def start(self) -> None:
        """Follow from now on. The node's VXLAN firewall comes with the first pass (no
        peer until then: no VXLAN is taken in)."""
        self.endpoints.start()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="overlay")

    async def stop(self) -> None:
        """Stop following; the records go with the node's lease (or `withdraw`)."""
        task, self._task = self._task, None
        await cancel_all([task] if task is not None else [])
        self._unsubscribe()
        await self.endpoints.stop()
        await remove_overlay_firewall()  # the VXLAN devices go with their stacks

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RESYNC):
                    await self._dirty.wait()
            full = not self._dirty.is_set()  # the periodic pass: trust nothing remembered
            self._dirty.clear()
            if full:
                self._changed = None
            try:
                await self.sync(full=full)
            except Exception:  # a pass that failed is retried by the next: log and go on
                log.exception("overlay networks: a sync pass failed")

    async def sync(self, *, full: bool = True) -> None:
        """One pass. Not `full`: the forwarding entries are compared with what this node
        last programmed rather than read back (a pass on every change stays cheap; the
        periodic one repairs what was changed behind linkd's back)."""
        supervisors = list(self.stacks())
        changed, self._changed = self._changed, set()
        if self._publish([sup for sup in supervisors if changed is None or sup.stack in changed],
                         {sup.stack for sup in supervisors}):
            await asyncio.sleep(0)  # the publisher sends its puts before this pass goes on
        view = self._view()
        if view.remote != self._remote or full:
            self._remote = view.remote
            # DNS first: a name answers as soon as its record is here; the tunnel's
            # entries follow in the same pass. This node's own records are not its
            # neighbours (its stacks know their own containers).
            for sup in supervisors:
                if sup.plan is not None and any(n.overlay for n in sup.plan.networks):
                    sup.neighbours.refresh_remote()
            await asyncio.sleep(0)  # the DNS queries that waited are answered first
        await self._forward(supervisors, view, full)

    def _publish(self, changed: Sequence[Supervisor], hosted: set[str]) -> bool:
        """This node's records of the stacks that `changed` (only theirs: a container's
        start costs its own stack's records, not every stack's), none of the stacks no
        longer `hosted`. Whether anything is to be written."""
        news = False
        for sup in changed:
            state = sup.snapshot()
            records = overlay_peers.local_records(
                self.overlay.node, self.overlay.local, [state] if state is not None else [])
            news |= self._replace(sup.stack, {(r.network, r.container): r for r in records})
        for gone in self._published.keys() - hosted:
            news |= self._replace(gone, {})
        return news

    def _replace(self, stack: str, wanted: dict[tuple[str, str], EndpointRecord]) -> bool:
        before = self._published.pop(stack, {})
        news = False
        for key, record in wanted.items():
            if before.get(key) != record:
                self.endpoints.want(record)
                news = True
        for network, container in before.keys() - wanted.keys():
            self.endpoints.unwant(network, stack, container)
            news = True
        if wanted:
            self._published[stack] = wanted
        return news

    async def _forward(self, supervisors: Sequence[Supervisor], view: _View, full: bool
                       ) -> None:
        records = view.records
        devices: dict[str, str] = {}  # VXLAN device -> its network's id
        for sup in supervisors:
            plan = sup.plan
            if plan is None or sup.status not in ("starting", "up"):
                continue
            for net in plan.networks:
                if net.overlay is not None:
                    devices[net.overlay.vxlan] = net.overlay.id
        if not full and self._forwarded == (records, devices):
            return  # what the pass before programmed is what is wanted still
        # Only the nodes whose containers this node's devices reach may send it VXLAN.
        if view.peers is None:
            view.peers = frozenset(r.underlay for r in view.remote)
        peers = view.peers
        if peers != self._peers or full:
            await ensure_overlay_firewall(peers)
            self._peers = peers
        if view.grouped is None:
            view.grouped = overlay_peers.by_network(records)
        grouped = view.grouped
        for gone in self._held.keys() - devices.keys():
            del self._held[gone]
        complete = True
        for device, network in sorted(devices.items()):
            desired = overlay_peers.forwarding(network, grouped.get(network, []),
                                               self.overlay.local)
            for problem in set(desired.problems) - self._said:
                log.warning("overlay network %s: %s", network, problem)
            self._said = set(desired.problems)
            held = None if full else self._held.get(device)
            if held == desired.state:
                continue
            try:
                changes = await vxlan.sync_forwarding(self.kernel, device, desired.state, held)
            except LinkdError as exc:  # not made yet, or removed meanwhile: the next pass
                self._held.pop(device, None)
                log.debug("overlay network %s: %s", network, exc)
                complete = False
                continue
            if not changes.empty():
                log.debug("overlay network %s: %s", network, changes)
            self._held[device] = desired.state
        self._forwarded = (records, devices) if complete else None
