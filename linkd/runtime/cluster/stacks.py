"""Stacks that span nodes, on a cluster daemon: placed where `up` runs, written to etcd,
and each node's share run by that node (linkd.core.cluster_stacks says what a record is).

The origin's side (`create`, `update`, `before_down`, called by the daemon for the API):
`up` places the stack over the live nodes (their records in etcd). A stack whose
containers all land here runs as on a single host, and nothing is written. One that
spans nodes has its own networks made overlay networks (`spanning`) and its record
written under `stacks/<stack>`, without a lease (the desired state outlives the origin's
daemon), before its share here runs: the other nodes run theirs meanwhile, which this
one's may wait for (`depends_on`); a failure here takes the record back. An update
places it again and writes the record with the next generation, first too. `down` on
the origin deletes the record (every node takes its share down), then its own share; on
another node it is refused, naming the origin.

Every node's side (`run`): the records are followed (linkd.runtime.cluster.follow) and,
level-based, on every change and every RESYNC seconds, each record of another origin
with containers placed here is run as a stack of the same name with those containers
(`Supervisor.only`): created, or updated when the generation changes; taken down when
the record goes or leaves nothing here. A share that cannot run here (an image or a
bind source missing, a local stack of that name) is refused: logged, said under
`shares/<stack>/<node>` for the origin's `ps` (and for `refusal`, which ends a wait for a
dependency placed there), and the addresses the origin claimed for its containers given
back. Each share starts in a task of its own: one whose containers wait for another
node's (`depends_on`, linkd.runtime.stack.containers) holds up no other stack here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from linkd.core.cluster_shares import (
    ShareStatus,
    decode_share,
    encode_share,
    remote_rows,
    share_key,
    shares_prefix,
)
from linkd.core.cluster_stacks import (
    RECORD_LIMIT,
    StackRecord,
    decode_stack,
    encode_stack,
    placement,
    share,
    spanning,
    spans,
    stack_key,
    stacks_prefix,
)
from linkd.core.model import Stack
from linkd.core.overlay import overlay_id
from linkd.core.placement import NodeFacts
from linkd.core.state import StackState
from linkd.errors import ConflictError, LinkdError
from linkd.runtime.cluster.etcd import Etcd, EtcdUnavailable
from linkd.runtime.cluster.follow import Follow
from linkd.runtime.cluster.membership import Membership
from linkd.runtime.tasks import cancel_all

if TYPE_CHECKING:
    from linkd.runtime.cluster.endpoints import Endpoints
    from linkd.runtime.cluster.overlay_networks import OverlayNetworks
    from linkd.runtime.daemon.daemon import Daemon

log = logging.getLogger("linkd")

RESYNC = 5.0  # seconds between passes when nothing said it changed
MAX_STACKS = 1024  # stacks' records a node reads


class ClusterStacks:
    def __init__(self, daemon: Daemon, member: Membership, overlay: OverlayNetworks,
                 endpoints: Endpoints | None) -> None:
        self.daemon = daemon
        self.member = member
        self.overlay = overlay
        self.endpoints = endpoints
        self.node = member.config.name
        self.prefix = member.config.prefix
        self._etcd: Etcd | None = None
        self._follow: Follow[StackRecord] = Follow(
            "stack record", self.node, stacks_prefix(self.prefix),
            lambda key, value: decode_stack(key, value, self.prefix), self._client,
            limit=MAX_STACKS, max_value=RECORD_LIMIT)
        self._wake = asyncio.Event()
        self._follow.on_change(self._wake.set)
        self._published: dict[str, StackRecord] = {}  # by this node, the origin
        self._applied: dict[str, int] = {}  # shares run here: the generation
        self._refused: dict[str, int] = {}  # shares refused here: the generation
        self._said: dict[str, ShareStatus] = {}  # what this node says of its shares
        self._said_under: dict[str, int] = {}  # ... written under that lease
        self._tasks: list[asyncio.Task[None]] = []
        self._starting: dict[str, asyncio.Task[None]] = {}  # shares being started here

    # -- the origin's side ---------------------------------------------------------------

    async def create(self, stack: Stack, source: str) -> StackState:
        stack, where = await self._place(stack)
        if where is None:
            return await self.daemon.create_here(stack, source)
        self.daemon.refuse_existing(stack.name)
        # The record first: the other nodes start their shares beside this one's, which
        # may wait for theirs (`depends_on` a service placed elsewhere).
        await self._publish(stack, where, source)
        try:
            return await self.daemon.create_here(stack, source, share(where, self.node))
        except BaseException:
            await self._withdraw(stack.name)  # every node takes its share down
            raise

    async def update(self, stack: Stack) -> dict[str, list[str]]:
        self._refuse_foreign(stack.name, "up")
        stack, where = await self._place(stack)
        hosted = self.daemon.hosted(stack.name)
        hosted.supervisor.only = share(where, self.node) if where is not None else None
        if where is not None:  # first, as for `create`: this share may wait for theirs
            await self._publish(stack, where, hosted.supervisor.source)
        return await self.daemon.update_here(stack)

    async def refusal(self, name: str) -> str | None:
        """Why a node refuses its share of stack `name`'s latest generation, if one does
        (what a container waiting for a dependency placed there needs to know)."""
        record = self._published.get(name) or self.record(name)
        if record is None:
            return None
        head = shares_prefix(self.prefix) + f"{name}/".encode()
        try:
            items, _ = await self._client().read_prefix(head)
        except EtcdUnavailable:
            return None  # not known now: asked again by the next look
        for key, value in items:
            with contextlib.suppress(LinkdError, ValueError):
                status = decode_share(key, value, self.prefix)
                if status.error is not None and status.generation == record.generation:
                    return f"node {status.node} refuses its share: {status.error}"
        return None

    async def _withdraw(self, name: str) -> None:
        """Take the stack's record back (a failed `up` on its origin); best effort."""
        try:
            await self._client().delete(stack_key(name, self.prefix))
        except EtcdUnavailable as exc:
            log.warning("stack %s: its record stays in the cluster (%s); `linkd down -p %s` "
                        "takes it back", name, exc, name)
        self._published.pop(name, None)

    async def before_down(self, name: str) -> None:
        """Refuse the `down` of another node's stack; delete this node's record (every
        node takes its share down)."""
        if self._refuse_foreign(name, "down") is None:
            return
        try:
            await self._client().delete(stack_key(name, self.prefix))
        except EtcdUnavailable as exc:
            raise LinkdError(f"stack {name}: cannot remove it from the cluster ({exc}); "
                             "the other nodes keep their shares: try again") from None
        self._published.pop(name, None)
        log.info("stack %s: removed from the cluster; every node takes its share down", name)

    def _refuse_foreign(self, name: str, command: str) -> StackRecord | None:
        """The stack's record; ConflictError if another node brought it up."""
        record = self._published.get(name) or self.record(name)
        if record is not None and record.origin != self.node:
            raise ConflictError(
                f"stack {name} spans nodes and was brought up on node {record.origin}: run "
                f"`linkd {command} -p {name}` there (it changes every node's share)")
        return record

    def record(self, name: str) -> StackRecord | None:
        """The stack's record, as this node last saw it."""
        for record in self._follow.items().values():
            if record.stack.name == name:
                return record
        return None

    async def view(self, name: str) -> dict[str, Any] | None:
        """What `ps` adds for a stack spanning nodes: where each container runs and the
        other nodes' containers; None for a stack that does not span nodes."""
        record = self._published.get(name) or self.record(name)
        if record is None:
            return None
        shares: dict[str, ShareStatus] = {}
        head = shares_prefix(self.prefix) + f"{name}/".encode()
        try:
            items, _ = await self._client().read_prefix(head)
        except EtcdUnavailable as exc:
            log.info("stack %s: shares not read (%s)", name, exc)
            items = []
        for key, value in items:
            with contextlib.suppress(LinkdError, ValueError):
                status = decode_share(key, value, self.prefix)
                shares[status.node] = status
        endpoints = self.endpoints.records() if self.endpoints is not None else []
        rows = remote_rows(record, self.node, endpoints, shares)
        return {
            "node": self.node, "origin": record.origin, "generation": record.generation,
            "placement": dict(sorted(record.placement.items())),
            "remote": [{"name": r.name, "service": r.service, "node": r.node,
                        "interfaces": [{"network": n, "address": a} for n, a in r.addresses],
                        "status": r.status} for r in rows],
        }

    async def _place(self, stack: Stack) -> tuple[Stack, dict[str, str] | None]:
        """`stack` as it runs (its networks spanning nodes if it does) and where each
        container runs; None: all here, as on a single host."""
        before = self._published.get(stack.name)
        if before is None and not any(s.placement for s in stack.services):
            return stack, None
        try:
            records = await self.member.nodes()
        except EtcdUnavailable as exc:
            raise LinkdError(f"stack {stack.name}: cannot place its services, etcd does not "
                             f"answer ({exc}); try again when it does") from None
        nodes = [NodeFacts(r.name, node_id=r.name, labels=r.labels) for r in records]
        if not any(n.hostname == self.node for n in nodes):
            nodes.append(NodeFacts(self.node, node_id=self.node,
                                   labels=dict(self.member.config.labels)))
        where = placement(stack, nodes, self.node)  # SpecError: nothing made anywhere
        if before is None and not spans(where, self.node):
            return stack, None
        return spanning(stack), where

    async def _publish(self, stack: Stack, where: dict[str, str], source: str) -> None:
        before = self._published.get(stack.name) or self.record(stack.name)
        generation = before.generation + 1 if before is not None else 1
        record = StackRecord(stack, self.node, generation, where, source)
        await self._client().put(stack_key(stack.name, self.prefix), encode_stack(record), 0)
        self._published[stack.name] = record
        log.info("stack %s: generation %d in the cluster, on nodes %s", stack.name,
                 generation, ", ".join(sorted(set(where.values()))))

    # -- every node's side ---------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._follow.run(), name="stacks-watch"),
                       loop.create_task(self._run(), name="stacks")]

    async def stop(self) -> None:
        """Stop following (the shares run here go down with the daemon's stacks)."""
        tasks, self._tasks = self._tasks, []
        starting, self._starting = list(self._starting.values()), {}
        await cancel_all(tasks + starting)
        etcd, self._etcd = self._etcd, None
        if etcd is not None:
            await etcd.close()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RESYNC):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.reconcile()
            except Exception:  # a pass that failed is retried by the next: log and go on
                log.exception("stacks across nodes: a pass failed")

    async def reconcile(self) -> None:
        """Run this node's share of every stack of another origin, once."""
        if self._follow.state != "watching":
            return  # not read yet, or etcd gone: what runs keeps running as it is
        records = {r.stack.name: r for r in self._follow.items().values()
                   if r.origin != self.node}
        for name, task in list(self._starting.items()):
            record = records.get(name)
            wanted = record is not None and bool(share(record.placement, self.node))
            if not wanted:  # gone while it started (and waited, maybe)
                task.cancel()
                await asyncio.wait([task])
            if task.done():
                del self._starting[name]
                if not wanted and name in self._applied:
                    await self._down(name)  # an update cut short: its share goes
        for name, record in sorted(records.items()):
            if name in self._starting:
                continue  # still starting (it may wait for another node): looked at after
            mine = share(record.placement, self.node)
            if name in self._applied and name not in self.daemon.stacks:
                del self._applied[name]  # it ended on its own: run it again
            if not mine:
                if name in self._applied:
                    await self._down(name)
                continue
            if record.generation in (self._applied.get(name), self._refused.get(name)):
                continue
            # Each share in a task of its own: one whose containers wait for another
            # node's (`depends_on`) holds up no other stack here.
            task = asyncio.get_running_loop().create_task(self._start_share(record, mine),
                                                          name=f"share-{name}")
            task.add_done_callback(lambda _: self._wake.set())
            self._starting[name] = task
        for name in [n for n in self._applied if n not in records and n not in self._starting]:
            await self._down(name)
        for name in [n for n in self._refused if n not in records]:
            del self._refused[name]
            await self._unsay(name)
        await self._say_all()

    async def _start_share(self, record: StackRecord, mine: frozenset[str]) -> None:
        try:
            await self._run_share(record, mine)
        except Exception:  # the next pass tries again; a bug must not go unsaid
            log.exception("stack %s: running this node's share failed (a bug, please "
                          "report it)", record.stack.name)

    async def _run_share(self, record: StackRecord, mine: frozenset[str]) -> None:
        name = record.stack.name
        try:
            if name in self._applied:
                self.daemon.hosted(name).supervisor.only = mine
                await self.daemon.update_here(record.stack)
                log.info("stack %s: this node's share updated to generation %d", name,
                         record.generation)
            elif name in self.daemon.stacks:
                raise ConflictError(f"a stack named {name} runs on node {self.node} already, "
                                    "not from the cluster: take it down there, or rename one")
            else:
                try:
                    await self.daemon.create_here(record.stack, record.source, mine)
                except asyncio.CancelledError:  # its record went meanwhile: so does it
                    with contextlib.suppress(LinkdError):
                        await self.daemon.delete_here(name)
                    raise
                log.info("stack %s: this node runs %s (generation %d, from node %s)", name,
                         ", ".join(sorted(mine)), record.generation, record.origin)
        except LinkdError as exc:
            log.warning("stack %s: node %s refuses its share (%s): %s", name, self.node,
                        ", ".join(sorted(mine)), exc)
            self._applied.pop(name, None)
            self._refused[name] = record.generation
            self._said[name] = ShareStatus(name, self.node, record.generation, str(exc))
            self._said_under.pop(name, None)
            await self._give_back(record, mine)
            return
        self._applied[name] = record.generation
        self._refused.pop(name, None)
        self._said[name] = ShareStatus(name, self.node, record.generation, None)
        self._said_under.pop(name, None)

    async def _down(self, name: str) -> None:
        self._applied.pop(name, None)
        if name in self.daemon.stacks:
            try:
                await self.daemon.delete_here(name)
                log.info("stack %s: this node's share taken down", name)
            except LinkdError as exc:
                log.warning("stack %s: taking this node's share down: %s", name, exc)
        await self._unsay(name)

    async def _give_back(self, record: StackRecord, mine: frozenset[str]) -> None:
        """The addresses the origin (and every node) claimed for the containers this
        node does not run: released, so that the last `down` finds the network unused."""
        stack = record.stack
        for service in stack.services:
            for attachment in service.networks:
                network = next((n for n in stack.networks if n.name == attachment.network),
                               None)
                if network is None or network.external:
                    continue
                for replica in range(1, service.replicas + 1):
                    container = service.container(replica)
                    if container not in mine:
                        continue
                    try:
                        await self.overlay.registry.release_address(
                            overlay_id(stack.name, network.name), f"{stack.name}/{container}")
                    except LinkdError as exc:
                        log.info("stack %s: address of %s not given back: %s", stack.name,
                                 container, exc)

    # -- what this node says of its shares ----------------------------------------------

    async def _say_all(self) -> None:
        lease = self.member.lease
        if lease is None:
            return
        for name, status in list(self._said.items()):
            if self._said_under.get(name) == lease:
                continue
            try:
                await self._client().put(share_key(name, self.node, self.prefix),
                                         encode_share(status), lease)
            except LinkdError as exc:
                log.info("stack %s: this node's share not said (%s)", name, exc)
                return
            self._said_under[name] = lease

    async def _unsay(self, name: str) -> None:
        self._said.pop(name, None)
        self._said_under.pop(name, None)
        with contextlib.suppress(LinkdError):
            await self._client().delete(share_key(name, self.node, self.prefix))

    def _client(self) -> Etcd:
        if self._etcd is None:
            self._etcd = self.member.new_client()
        return self._etcd
