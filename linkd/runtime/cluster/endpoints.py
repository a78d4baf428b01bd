"""Endpoint records in etcd: this node's published under its lease, everyone's watched
into a cache (linkd.core.cluster_endpoints says what a record is and where it lives).

Local side, level-based. `want(record)` and `unwant(...)` only change what this node
wants published, in memory, and wake the publisher, which compares that with what
etcd holds under this node's name (as the watch below saw it, plus what it wrote
itself that the watch has not shown yet) and puts what is missing, different, or under
another lease, and deletes what is no longer wanted. Records go under the node's lease
(linkd.runtime.cluster.membership): a node that dies takes its records with it when
the lease expires, and a node that registers again under a new lease (etcd came back
after the old one expired) has everything put again under the new one. Nothing is
written while the node holds no lease, or holds one etcd says is gone.

Remote side: the prefix followed into a cache key -> EndpointRecord
(linkd.runtime.cluster.follow: read, then watched; bad records left out and said once;
the last known state kept while etcd cannot be reached, for DNS and VXLAN entries);
`on_change` callbacks run after each change of the cache was applied.

`stop()` deletes nothing (a daemon that stops revokes its lease, which takes the
records); `withdraw_all()` deletes this node's records now.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from linkd.core.cluster import DEFAULT_PREFIX, RecordError
from linkd.core.cluster_endpoints import (
    ENDPOINT_LIMIT,
    EndpointKey,
    EndpointRecord,
    decode_endpoint,
    encode_endpoint,
    endpoint_key,
    endpoint_key_of,
    endpoints_prefix,
    parse_endpoint_key,
    plan_publish,
)
from linkd.runtime.cluster.etcd import (
    MAX_SNAPSHOT,
    Etcd,
    EtcdUnavailable,
    Event,
    LeaseGone,
    Snapshot,
)
from linkd.runtime.cluster.follow import RETRY, Follow, backoff
from linkd.runtime.cluster.membership import Membership
from linkd.runtime.tasks import cancel_all

log = logging.getLogger("linkd")

MAX_RECORDS = MAX_SNAPSHOT  # records the cache holds; what is beyond is said, not read


class LeaseHolder(Protocol):
    """What holds the node's lease (linkd.runtime.cluster.membership.Membership)."""

    @property
    def lease(self) -> int | None: ...

    def on_lease(self, callback: Callable[[], None]) -> Callable[[], None]: ...


Written = tuple[bytes, int] | None  # (value, lease) put, or None: deleted


class Endpoints:
    """Node `node`'s endpoint records and everyone's, under `prefix`; `connect` makes
    the etcd client (one of its own: a watch stream and the puts share it)."""

    def __init__(self, node: str, leases: LeaseHolder, connect: Callable[[], Etcd],
                 prefix: str = DEFAULT_PREFIX, *, retry: float = RETRY) -> None:
        self.node = node
        self.prefix = prefix
        self.retry = retry
        self._leases = leases
        self._connect = connect
        self._head = endpoints_prefix(prefix)
        self._etcd: Etcd | None = None
        # local side
        self._wanted: dict[bytes, bytes] = {}
        self._own: dict[bytes, tuple[bytes, int]] = {}  # this node's keys, as etcd holds them
        self._sent: dict[bytes, tuple[Written, int]] = {}  # written, at revision
        self._dead_lease: int | None = None
        self._wake = asyncio.Event()
        self._publishing = asyncio.Lock()
        # remote side
        self._follow: Follow[EndpointRecord] = Follow(
            "endpoint record", node, self._head,
            lambda key, value: decode_endpoint(key, value, prefix), self._client,
            limit=MAX_RECORDS, max_value=ENDPOINT_LIMIT, retry=retry,
            on_snapshot=self._snapshot_read, on_event=self._event_seen)
        self._tasks: list[asyncio.Task[None]] = []
        self._unsubscribe: Callable[[], None] | None = None
        self._sorted: tuple[int, list[EndpointRecord]] | None = None  # (version, records)

    # -- what this node publishes -------------------------------------------------------

    def want(self, record: EndpointRecord) -> None:
        """Publish `record` (replacing this container's record on its network)."""
        if record.node != self.node:
            raise ValueError(f"node {self.node} cannot publish a record of node {record.node}")
        self._wanted[endpoint_key_of(record, self.prefix)] = encode_endpoint(record)
        self._wake.set()

    def unwant(self, network: str, stack: str, container: str) -> None:
        """No longer publish this container's record on `network` (none is no error)."""
        key = endpoint_key(EndpointKey(network, self.node, stack, container), self.prefix)
        if self._wanted.pop(key, None) is not None:
            self._wake.set()

    def wanted(self) -> int:
        return len(self._wanted)

    async def withdraw_all(self) -> None:
        """Publish nothing, and delete every record of this node's now (a clean stop).
        EtcdUnavailable if etcd cannot be asked: the lease's end takes them then."""
        self._wanted.clear()
        async with self._publishing:
            keys = set(self._own) | {k for k, (w, _) in self._sent.items() if w is not None}
            for key in sorted(keys):
                self._sent[key] = (None, await self._client().delete(key))

    async def _publish(self) -> None:
        """Put and delete what makes etcd hold what this node wants, once."""
        lease = self._leases.lease
        if lease is None or lease == self._dead_lease or not self._revision:
            return  # no lease to write under, or this node's records not read yet
        async with self._publishing:
            held = dict(self._own)
            for key, (written, revision) in list(self._sent.items()):
                if revision <= self._revision:
                    del self._sent[key]  # the watch has shown it (or what came after)
                elif written is None:
                    held.pop(key, None)
                else:
                    held[key] = written
            plan = plan_publish(self._wanted, held, lease)
            etcd = self._client()
            for key in plan.puts:
                value = self._wanted.get(key)
                if value is None:
                    continue  # unwanted meanwhile: the next pass deletes it if it is there
                try:
                    revision = await etcd.put(key, value, lease)
                except LeaseGone:
                    log.info("node %s: its lease ended; its endpoint records are published "
                             "again once it registers anew", self.node)
                    self._dead_lease = lease
                    return
                self._sent[key] = ((value, lease), revision)
            for key in plan.deletes:
                if key not in self._wanted:
                    self._sent[key] = (None, await etcd.delete(key))

    async def _publisher(self) -> None:
        self._wake.set()
        failures = 0
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._publish()
                failures = 0
                continue
            except EtcdUnavailable:
                failures += 1
            except Exception:  # a bug here must not stop publishing for good
                log.exception("node %s: publishing its endpoint records failed (a bug, "
                              "please report it); trying again", self.node)
                failures += 1
            await asyncio.sleep(backoff(failures, self.retry))
            self._wake.set()

    def _lease_changed(self) -> None:
        self._dead_lease = None
        self._wake.set()

    # -- what every node published ------------------------------------------------------

    def records(self) -> list[EndpointRecord]:
        """Every record believed, this node's too, in key order: the same list until they
        change (every pass and every stack's DNS asks; not to be changed by the caller)."""
        version = self._follow.version
        if self._sorted is None or self._sorted[0] != version:
            cache = self._follow.items()
            self._sorted = (version, [cache[k] for k in sorted(cache)])
        return self._sorted[1]

    def invalid(self) -> dict[bytes, str]:
        """What is under the prefix and left out, with why."""
        return self._follow.invalid()

    @property
    def state(self) -> str:
        """"starting", then "watching", or "disconnected" (the cache kept)."""
        return self._follow.state

    @property
    def revision(self) -> int:
        return self._follow.revision

    @property
    def _revision(self) -> int:
        return self._follow.revision

    def on_change(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` (no arguments, not a coroutine) after each change of `records()`;
        returns what stops that."""
        return self._follow.on_change(callback)

    def _snapshot_read(self, snapshot: Snapshot) -> None:
        self._own = {kv.key: (kv.value, kv.lease) for kv in snapshot.items
                     if self._is_own(kv.key)}
        self._wake.set()

    def _event_seen(self, event: Event) -> None:
        if not self._is_own(event.key):
            return
        if event.value is None:
            self._own.pop(event.key, None)
        else:
            self._own[event.key] = (event.value, event.lease)
        self._wake.set()

    def _is_own(self, key: bytes) -> bool:
        try:
            return parse_endpoint_key(key, self.prefix).node == self.node
        except RecordError:
            return False

    # -- running --------------------------------------------------------------------------

    def start(self) -> None:
        """Start publishing and watching, as tasks of the running loop."""
        if self._tasks:
            return
        self._unsubscribe = self._leases.on_lease(self._lease_changed)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._follow.run(), name=f"endpoints-watch-{self.node}"),
                       loop.create_task(self._publisher(), name=f"endpoints-publish-{self.node}")]

    async def stop(self) -> None:
        """Stop both and close the client; deletes nothing (see `withdraw_all`)."""
        tasks, self._tasks = self._tasks, []
        await cancel_all(tasks)
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        etcd, self._etcd = self._etcd, None
        if etcd is not None:
            await etcd.close()

    def _client(self) -> Etcd:
        if self._etcd is None:
            self._etcd = self._connect()
        return self._etcd


def for_member(member: Membership) -> Endpoints:
    """The endpoint records of the node `member` stands for, on a client of their own."""
    return Endpoints(member.config.name, member, member.new_client, member.config.prefix)
