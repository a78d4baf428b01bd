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

Remote side. One range read of the whole prefix, at a revision, then a watch from the
next revision, into a cache key -> EndpointRecord. A record that does not decode is
left out (never believed) and logged, once per change of what is wrong with it. A
broken stream is opened again from the last revision seen; a history compacted
meanwhile means a full read again, which replaces the cache. While etcd cannot be
reached the cache is kept as it is: the last known state keeps serving (DNS, VXLAN
entries). `on_change` callbacks run after each change of the cache was applied.

`stop()` deletes nothing (a daemon that stops revokes its lease, which takes the
records); `withdraw_all()` deletes this node's records now.
"""

from __future__ import annotations

import asyncio
import contextlib
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
    WatchCompacted,
)
from linkd.runtime.cluster.membership import Membership

log = logging.getLogger("linkd")

MAX_RECORDS = MAX_SNAPSHOT  # records the cache holds; what is beyond is said, not read
MAX_INVALID = 1024  # records left out that are kept (and logged) with why; the rest counted
RETRY = 1.0  # seconds between attempts while etcd does not answer


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
        self.state = "starting"  # then "watching", or "disconnected" (the cache kept)
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
        self._cache: dict[bytes, EndpointRecord] = {}
        self._bad: dict[bytes, str] = {}
        self._unshown = 0  # records left out beyond MAX_INVALID
        self._revision = 0  # of etcd, that the cache shows; 0: not read yet
        self._callbacks: list[Callable[[], None]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._unsubscribe: Callable[[], None] | None = None

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
            await asyncio.sleep(self._backoff(failures))
            self._wake.set()

    def _backoff(self, failures: int) -> float:
        """Seconds before attempt `failures` + 1: none after the first failure (a call on
        a member that just died: the next goes to another), then longer, up to `retry`."""
        return 0 if failures <= 1 else min(self.retry, 0.1 * 2 ** (failures - 2))

    def _lease_changed(self) -> None:
        self._dead_lease = None
        self._wake.set()

    # -- what every node published ------------------------------------------------------

    def records(self) -> list[EndpointRecord]:
        """Every record believed, this node's too, in key order."""
        return [self._cache[k] for k in sorted(self._cache)]

    def invalid(self) -> dict[bytes, str]:
        """What is under the prefix and left out, with why."""
        return dict(self._bad)

    @property
    def revision(self) -> int:
        return self._revision

    def on_change(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` (no arguments, not a coroutine) after each change of `records()`;
        returns what stops that."""
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback)

    async def _watcher(self) -> None:
        failures = 0
        while True:
            try:
                etcd = self._client()
                if not self._revision:
                    self._replace(await etcd.snapshot(self._head, MAX_RECORDS,
                                                      max_value=ENDPOINT_LIMIT))
                async with contextlib.aclosing(etcd.watch(self._head, self._revision + 1)
                                               ) as batches:
                    async for batch in batches:
                        if not batch:  # the stream is open
                            self._watching()
                            failures = 0
                        self._apply(batch)
            except WatchCompacted as exc:
                log.info("node %s: reading every endpoint record again (%s)", self.node, exc)
                self._revision = 0
            except EtcdUnavailable as exc:
                failures += 1
                self._disconnected(str(exc))
                await asyncio.sleep(self._backoff(failures))
            except Exception:
                log.exception("node %s: watching endpoint records failed (a bug, please "
                              "report it); reading them all again", self.node)
                self._revision = 0
                await asyncio.sleep(self.retry)

    def _replace(self, snapshot: Snapshot) -> None:
        if snapshot.truncated:
            log.warning("node %s: more than %d endpoint records under %s; the rest are not "
                        "read", self.node, MAX_RECORDS, self._head.decode())
        cache: dict[bytes, EndpointRecord] = {}
        own: dict[bytes, tuple[bytes, int]] = {}
        before, self._bad, self._unshown = self._bad, {}, 0
        for kv in snapshot.items:
            if self._is_own(kv.key):
                own[kv.key] = (kv.value, kv.lease)
            try:
                cache[kv.key] = decode_endpoint(kv.key, kv.value, self.prefix)
            except RecordError as exc:
                self._left_out(kv.key, str(exc), before.get(kv.key))
        changed = cache != self._cache
        self._cache, self._own = cache, own
        self._revision = snapshot.revision
        self._wake.set()
        if changed:
            self._changed()

    def _apply(self, batch: list[Event]) -> None:
        changed = own_touched = False
        for event in batch:
            self._revision = max(self._revision, event.revision)
            if self._is_own(event.key):
                own_touched = True
                if event.value is None:
                    self._own.pop(event.key, None)
                else:
                    self._own[event.key] = (event.value, event.lease)
            known = self._bad.pop(event.key, None)
            if event.value is None:
                changed |= self._cache.pop(event.key, None) is not None
                continue
            try:
                if event.key not in self._cache and len(self._cache) >= MAX_RECORDS:
                    raise RecordError(f"{event.key[:160]!r}: over the {MAX_RECORDS} "
                                      "endpoint records a node reads")
                record = decode_endpoint(event.key, event.value, self.prefix)
            except RecordError as exc:
                self._left_out(event.key, str(exc), known)
                changed |= self._cache.pop(event.key, None) is not None
                continue
            if self._cache.get(event.key) != record:
                self._cache[event.key] = record
                changed = True
        if own_touched:
            self._wake.set()
        if changed:
            self._changed()

    def _left_out(self, key: bytes, error: str, known: str | None) -> None:
        """Keep `key` out of the cache, and say why when that is news (`known`: what was
        said of it before). A flood of bad records is counted, not kept."""
        if len(self._bad) >= MAX_INVALID:
            if not self._unshown:
                log.warning("node %s: over %d endpoint records left out; the rest are not "
                            "shown", self.node, MAX_INVALID)
            self._unshown += 1
            return
        if known != error:
            log.warning("endpoint record left out: %s", error)
        self._bad[key] = error

    def _is_own(self, key: bytes) -> bool:
        try:
            return parse_endpoint_key(key, self.prefix).node == self.node
        except RecordError:
            return False

    def _changed(self) -> None:
        for callback in list(self._callbacks):
            try:
                callback()
            except Exception:
                log.exception("node %s: an endpoint records watcher failed", self.node)

    def _watching(self) -> None:
        if self.state == "disconnected":
            log.info("node %s: watching endpoint records again, from revision %d",
                     self.node, self._revision)
        self.state = "watching"

    def _disconnected(self, reason: str) -> None:
        if self.state != "disconnected":
            log.warning("node %s: lost the endpoint records' watch (%s); keeping the %d "
                        "records last seen", self.node, reason, len(self._cache))
        self.state = "disconnected"

    # -- running --------------------------------------------------------------------------

    def start(self) -> None:
        """Start publishing and watching, as tasks of the running loop."""
        if self._tasks:
            return
        self._unsubscribe = self._leases.on_lease(self._lease_changed)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._watcher(), name=f"endpoints-watch-{self.node}"),
                       loop.create_task(self._publisher(), name=f"endpoints-publish-{self.node}")]

    async def stop(self) -> None:
        """Stop both and close the client; deletes nothing (see `withdraw_all`)."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
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
