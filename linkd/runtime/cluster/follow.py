"""A prefix of etcd followed into a cache of decoded records: what every node keeps of
the records other nodes write (endpoint records, stacks' records).

One range read of the whole prefix, at a revision, then a watch from the next revision,
into a cache key -> record. A record that does not decode is left out (never believed)
and logged, once per change of what is wrong with it; beyond MAX_INVALID of them they
are counted, not kept. A broken stream is opened again from the last revision seen; a
history compacted meanwhile means a full read again, which replaces the cache. While
etcd cannot be reached the cache is kept as it is: the last known state keeps serving.
`on_change` callbacks run after each change of the cache was applied.

What a user of it needs of the raw keys (the endpoint records' publisher tracks its own
node's keys and their leases) it gets through `on_snapshot` and `on_event`, called
before the cache changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Generic, TypeVar

from linkd.core.cluster import RecordError
from linkd.runtime.cluster.etcd import Etcd, EtcdUnavailable, Event, Snapshot, WatchCompacted

log = logging.getLogger("linkd")

MAX_INVALID = 1024  # records left out that are kept (and logged) with why; the rest counted
RETRY = 1.0  # seconds between attempts while etcd does not answer

T = TypeVar("T")


def backoff(failures: int, retry: float) -> float:
    """Seconds before attempt `failures` + 1: none after the first failure (a call on a
    member that just died: the next goes to another), then longer, up to `retry`."""
    return 0 if failures <= 1 else min(retry, 0.1 * 2 ** (failures - 2))


class Follow(Generic[T]):
    """The records under `head`, decoded by `decode(key, value)` (RecordError: left out),
    as node `node` sees them; `what` names one in the log ("endpoint record")."""

    def __init__(self, what: str, node: str, head: bytes,
                 decode: Callable[[bytes, bytes], T], client: Callable[[], Etcd], *,
                 limit: int, max_value: int, retry: float = RETRY,
                 on_snapshot: Callable[[Snapshot], None] | None = None,
                 on_event: Callable[[Event], None] | None = None) -> None:
        self.what = what
        self.node = node
        self.head = head
        self.limit = limit
        self.max_value = max_value
        self.retry = retry
        self.state = "starting"  # then "watching", or "disconnected" (the cache kept)
        self._decode = decode
        self._client = client
        self._on_snapshot = on_snapshot
        self._on_event = on_event
        self._cache: dict[bytes, T] = {}
        self._bad: dict[bytes, str] = {}
        self._unshown = 0  # records left out beyond MAX_INVALID
        self._revision = 0  # of etcd, that the cache shows; 0: not read yet
        self.version = 0  # one more on every change of the cache
        self._callbacks: list[Callable[[], None]] = []

    # -- what is read -------------------------------------------------------------------

    def items(self) -> dict[bytes, T]:
        """Every record believed, by key (a copy)."""
        return dict(self._cache)

    def invalid(self) -> dict[bytes, str]:
        """What is under the prefix and left out, with why."""
        return dict(self._bad)

    @property
    def revision(self) -> int:
        return self._revision

    def on_change(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` (no arguments, not a coroutine) after each change of the cache;
        returns what stops that."""
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback)

    # -- following ----------------------------------------------------------------------

    async def run(self) -> None:
        """Read, then watch, until cancelled."""
        failures = 0
        while True:
            try:
                etcd = self._client()
                if not self._revision:
                    self._replace(await etcd.snapshot(self.head, self.limit,
                                                      max_value=self.max_value))
                async with contextlib.aclosing(etcd.watch(self.head, self._revision + 1)
                                               ) as batches:
                    async for batch in batches:
                        if not batch:  # the stream is open
                            self._watching()
                            failures = 0
                        self._apply(batch)
            except WatchCompacted as exc:
                log.info("node %s: reading every %s again (%s)", self.node, self.what, exc)
                self._revision = 0
            except EtcdUnavailable as exc:
                failures += 1
                self._disconnected(str(exc))
                await asyncio.sleep(backoff(failures, self.retry))
            except Exception:
                log.exception("node %s: watching %ss failed (a bug, please report it); "
                              "reading them all again", self.node, self.what)
                self._revision = 0
                await asyncio.sleep(self.retry)

    def _replace(self, snapshot: Snapshot) -> None:
        if snapshot.truncated:
            log.warning("node %s: more than %d %ss under %s; the rest are not read",
                        self.node, self.limit, self.what, self.head.decode())
        cache: dict[bytes, T] = {}
        before, self._bad, self._unshown = self._bad, {}, 0
        for kv in snapshot.items:
            try:
                cache[kv.key] = self._decode(kv.key, kv.value)
            except RecordError as exc:
                self._left_out(kv.key, str(exc), before.get(kv.key))
        changed = cache != self._cache
        if self._on_snapshot is not None:
            self._on_snapshot(snapshot)
        self._cache = cache
        self._revision = snapshot.revision
        if changed:
            self._changed()

    def _apply(self, batch: list[Event]) -> None:
        changed = False
        for event in batch:
            self._revision = max(self._revision, event.revision)
            if self._on_event is not None:
                self._on_event(event)
            known = self._bad.pop(event.key, None)
            if event.value is None:
                changed |= self._cache.pop(event.key, None) is not None
                continue
            try:
                if event.key not in self._cache and len(self._cache) >= self.limit:
                    raise RecordError(f"{event.key[:160]!r}: over the {self.limit} "
                                      f"{self.what}s a node reads")
                record = self._decode(event.key, event.value)
            except RecordError as exc:
                self._left_out(event.key, str(exc), known)
                changed |= self._cache.pop(event.key, None) is not None
                continue
            if self._cache.get(event.key) != record:
                self._cache[event.key] = record
                changed = True
        if changed:
            self._changed()

    def _left_out(self, key: bytes, error: str, known: str | None) -> None:
        """Keep `key` out of the cache, and say why when that is news (`known`: what was
        said of it before). A flood of bad records is counted, not kept."""
        if len(self._bad) >= MAX_INVALID:
            if not self._unshown:
                log.warning("node %s: over %d %ss left out; the rest are not shown",
                            self.node, MAX_INVALID, self.what)
            self._unshown += 1
            return
        if known != error:
            log.warning("%s left out: %s", self.what, error)
        self._bad[key] = error

    def _changed(self) -> None:
        self.version += 1
        for callback in list(self._callbacks):
            try:
                callback()
            except Exception:
                log.exception("node %s: a watcher of %ss failed", self.node, self.what)

    def _watching(self) -> None:
        if self.state == "disconnected":
            log.info("node %s: watching %ss again, from revision %d",
                     self.node, self.what, self._revision)
        self.state = "watching"

    def _disconnected(self, reason: str) -> None:
        if self.state != "disconnected":
            log.warning("node %s: lost the %ss' watch (%s); keeping the %d records last "
                        "seen", self.node, self.what, reason, len(self._cache))
        self.state = "disconnected"
