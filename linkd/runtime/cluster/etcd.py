"""etcd, as the few calls a node makes: the one module that imports aetcd.

aetcd's client talks to ONE gRPC target. Given every endpoint as one `ipv4:` (or
`ipv6:`) target with gRPC's round-robin policy, calls go to members that answer, so a
member that dies costs at most the call that was on it (reference/components.md
measured it). gRPC's resolver schemes take addresses only: host names are resolved
here, once, when the client opens. Reconnection backoff is capped at a second, so a
node notices within about a second that etcd is back.

Every failure to reach etcd, or of etcd to answer (no leader, a timeout), comes out as
`EtcdUnavailable`; the caller decides what losing the cluster means.

A watch (`Etcd.watch`) is a gRPC stream of its own, read with aetcd's stubs rather than
its Watcher: that one hands events over one by one (a batch's end is lost), cannot ask
etcd for fragments, and sends no "require a leader" metadata, without which a watch on
a member cut off from the others' quorum waits silently forever (measured here: with
it, etcd ends the stream about two seconds after its member lost the leader). Only
opening the stream is bounded by the client's timeout; a quiet stream is a healthy one.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from types import TracebackType

import aetcd
import aetcd.rpc

from linkd.core.cluster import Endpoint
from linkd.errors import LinkdError, UsageError
from linkd.runtime.kernel import netlink

MAX_KEYS = 1024  # keys one prefix read returns; what is beyond is said, not read
MAX_MESSAGE = 4 << 20  # bytes of one gRPC answer: a bound on what a read can hold
PAGE = 512  # keys per answer of a snapshot (halved while an answer is over MAX_MESSAGE)
MAX_SNAPSHOT = 65536  # keys one snapshot returns; what is beyond is said, not read
# etcd ends a watch stream whose member has lost its leader, rather than leave it quiet
_REQUIRE_LEADER = (("hasleader", "true"),)

_OPTIONS = {
    "grpc.lb_policy_name": "round_robin",
    "grpc.initial_reconnect_backoff_ms": 200,
    "grpc.min_reconnect_backoff_ms": 200,
    "grpc.max_reconnect_backoff_ms": 1000,
    "grpc.max_receive_message_length": MAX_MESSAGE,
    "grpc.enable_http_proxy": 0,  # etcd is reached directly, never through $http_proxy
    # A member whose machine vanished sends no reset: pings find it, within 15 s, where a
    # quiet watch stream would otherwise wait on it forever. Not more often than etcd's
    # --grpc-keepalive-min-time (5 s by default) allows, and not only twice per quiet
    # spell (gRPC's default), since a quiet watch is the point.
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
    "grpc.http2.max_pings_without_data": 0,
}


class EtcdUnavailable(LinkdError):
    """etcd cannot be reached, or cannot answer (no quorum, a timeout)."""

    status = 503


class LeaseGone(LinkdError):
    """A put under a lease that etcd no longer has (expired or revoked)."""

    status = 503


class WatchCompacted(LinkdError):
    """The history a watch was to start from is gone (compacted away, or etcd's revision
    is behind it: a cluster restored from an older backup): read the prefix again."""

    status = 503

    def __init__(self, message: str, revision: int) -> None:
        super().__init__(message)
        self.revision = revision  # the oldest revision etcd still has (0: unknown)


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: bytes
    value: bytes
    lease: int  # 0: none
    revision: int  # of its last change


@dataclass(frozen=True, slots=True)
class Event:
    """A key put (`value` is its new value) or deleted (`value` is None) at `revision`."""

    key: bytes
    value: bytes | None
    lease: int
    revision: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    items: list[KeyValue]  # in key order
    revision: int  # etcd's revision they were read at: a watch goes on from the next
    truncated: bool  # there were more than the limit


# What a transaction compares and does (`Etcd.txn`): linkd's few cases, kept here so
# nothing else knows aetcd's types.


@dataclass(frozen=True, slots=True)
class Absent:
    """The key does not exist."""

    key: bytes


@dataclass(frozen=True, slots=True)
class Holds:
    """The key exists and holds `value`."""

    key: bytes
    value: bytes


@dataclass(frozen=True, slots=True)
class Unchanged:
    """The key was last changed at `revision` (0: it does not exist)."""

    key: bytes
    revision: int


@dataclass(frozen=True, slots=True)
class NoneUnder:
    """No key starts with `prefix`."""

    prefix: bytes


@dataclass(frozen=True, slots=True)
class Put:
    key: bytes
    value: bytes


@dataclass(frozen=True, slots=True)
class Delete:
    key: bytes
    prefix: bool = False  # every key starting with `key`


@dataclass(frozen=True, slots=True)
class Get:
    key: bytes


Compare = Absent | Holds | Unchanged | NoneUnder
Operation = Put | Delete | Get
Found = tuple[bytes, int] | None  # what a Get read: (value, mod revision), or nothing


def resolve(endpoints: Sequence[Endpoint]) -> list[tuple[str, int]]:
    """Every endpoint as (IP address, port); UsageError for a name that does not resolve."""
    resolved: list[tuple[str, int]] = []
    for endpoint in endpoints:
        try:
            ipaddress.ip_address(endpoint.host)
            resolved.append((endpoint.host, endpoint.port))
            continue
        except ValueError:
            pass
        try:
            infos = socket.getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise UsageError(f"--cluster {endpoint}: {endpoint.host} does not resolve "
                             f"({exc.strerror or exc})") from None
        resolved.append((str(infos[0][4][0]), endpoint.port))
    return resolved


def target(resolved: Sequence[tuple[str, int]]) -> tuple[str, int]:
    """The gRPC target for `resolved`, split as aetcd joins it: (host, port), host holding
    every address but the last port. Mixed IPv4 and IPv6 endpoints are refused: one
    gRPC target holds one family."""
    families = {ipaddress.ip_address(host).version for host, _ in resolved}
    if len(families) > 1:
        raise UsageError("--cluster: give etcd endpoints of one address family (all "
                         "IPv4 or all IPv6)")
    if families == {4}:
        joined = ",".join(f"{host}:{port}" for host, port in resolved)
        return "ipv4:" + joined.rsplit(":", 1)[0], resolved[-1][1]
    joined = ",".join(f"[{host}]:{port}" for host, port in resolved)
    return "ipv6:" + joined.rsplit(":", 1)[0], resolved[-1][1]


def route_source(host: str, port: int) -> str:
    """The address this host sends from to reach (host, port): the route's source, asked
    of the kernel by connecting a UDP socket (which sends nothing)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect((host, port))
        return str(sock.getsockname()[0])


class Etcd:
    """One client of the cluster's etcd; `timeout` bounds every call, in seconds."""

    def __init__(self, resolved: Sequence[tuple[str, int]], timeout: float) -> None:
        host, port = target(resolved)
        self.timeout = timeout
        netlink.grpc_runs_here()  # its threads make a fork of this process unsafe
        self._client = aetcd.Client(host, port, timeout=timeout, options=dict(_OPTIONS))

    async def close(self) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                await self._client.close()
        except (TimeoutError, aetcd.ClientError):
            pass  # a channel that cannot even close holds nothing worth waiting for

    async def grant(self, ttl: int) -> int:
        """A new lease of `ttl` seconds: its id."""
        async with self._calling():
            lease = await self._client.lease(ttl)
        return int(lease.id)

    async def keep_alive(self, lease: int) -> int:
        """Refresh `lease`: the seconds it now has, 0 if it had already expired."""
        async with self._calling():
            reply = await self._client.refresh_lease(lease)
        return int(reply.TTL) if reply is not None else 0

    async def revoke(self, lease: int) -> None:
        """Revoke `lease`: its keys go at once. One already gone is no error."""
        async with self._calling():
            try:
                await self._client.revoke_lease(lease)
            except aetcd.ClientError as exc:
                if "not found" not in str(exc):
                    raise

    async def create(self, key: bytes, value: bytes, lease: int
                     ) -> tuple[bool, tuple[bytes, int] | None]:
        """Put `value` under `key` with `lease` only if the key is absent: (True, None),
        or (False, (the value it holds, its mod revision)), read in the same transaction."""
        t = self._client.transactions
        async with self._calling():
            done, answers = await self._client.transaction(
                compare=[t.create(key) == 0],
                success=[t.put(key, value, lease=lease)],
                failure=[t.get(key)],
            )
        if done:
            return True, None
        found = answers[0] if answers else []
        if not found:
            return False, None
        held, meta = found[0]
        return False, (bytes(held), int(meta.mod_revision))

    async def replace(self, key: bytes, value: bytes, lease: int, revision: int) -> bool:
        """Put `value` under `key` with `lease` only if the key is unchanged since
        `revision`: whether it was."""
        t = self._client.transactions
        async with self._calling():
            done, _ = await self._client.transaction(
                compare=[t.mod(key) == revision],
                success=[t.put(key, value, lease=lease)],
                failure=[],  # aetcd iterates it: None is a TypeError
            )
        return bool(done)

    async def get(self, key: bytes) -> Found:
        """The value under `key` and its mod revision, or None."""
        async with self._calling():
            got = await self._client.get(key)
        if got is None:
            return None
        return bytes(got.value), int(got.mod_revision)

    async def txn(self, compare: Sequence[Compare], success: Sequence[Operation],
                  failure: Sequence[Operation] = ()) -> tuple[bool, list[Found]]:
        """One transaction: whether every comparison held, and what each Get of the
        branch that ran read, in order."""
        t = self._client.transactions
        checks = []
        for c in compare:
            if isinstance(c, Absent):
                checks.append(t.create(c.key) == 0)
            elif isinstance(c, Holds):
                checks.append(t.value(c.key) == c.value)
            elif isinstance(c, Unchanged):
                checks.append(t.mod(c.key) == c.revision)
            else:
                # etcd compares an empty range as one absent key: created at revision 0
                end = aetcd.utils.prefix_range_end(c.prefix)
                checks.append(t.create(c.prefix, end) == 0)
        async with self._calling():
            done, answers = await self._client.transaction(
                compare=checks, success=self._ops(success), failure=self._ops(failure))
        ran = success if done else failure
        gets = [a for op, a in zip(ran, answers, strict=True) if isinstance(op, Get)]
        found: list[Found] = []
        for answer in gets:
            if answer:
                value, meta = answer[0]
                found.append((bytes(value), int(meta.mod_revision)))
            else:
                found.append(None)
        return bool(done), found

    def _ops(self, operations: Sequence[Operation]) -> list[object]:
        t = self._client.transactions
        ops: list[object] = []
        for op in operations:
            if isinstance(op, Put):
                ops.append(t.put(op.key, op.value))
            elif isinstance(op, Delete):
                end = aetcd.utils.prefix_range_end(op.key) if op.prefix else None
                ops.append(t.delete(op.key, end))
            else:
                ops.append(t.get(op.key))
        return ops

    async def read_prefix(self, prefix: bytes) -> tuple[list[tuple[bytes, bytes]], bool]:
        """The keys under `prefix` with their values, at most MAX_KEYS of them, and
        whether there were more."""
        request = aetcd.rpc.RangeRequest(
            key=prefix, range_end=aetcd.utils.prefix_range_end(prefix), limit=MAX_KEYS,
            sort_order=aetcd.rpc.RangeRequest.ASCEND,
            sort_target=aetcd.rpc.RangeRequest.KEY,
        )
        async with self._calling():
            await self._client.connect()
            answer = await self._client.kvstub.Range(
                request, timeout=self.timeout, metadata=self._client.metadata)
        return [(bytes(kv.key), bytes(kv.value)) for kv in answer.kvs], bool(answer.more)

    async def put(self, key: bytes, value: bytes, lease: int) -> int:
        """Put `value` under `key`, attached to `lease` (moved to it if the key was under
        another): the revision it was written at. LeaseGone if the lease is."""
        async with self._calling():
            try:
                done = await self._client.put(key, value, lease=lease)
            except aetcd.ClientError as exc:
                if "lease not found" in str(exc):
                    raise LeaseGone(f"etcd has no lease {lease:x} (expired or revoked)"
                                    ) from None
                raise
        return int(done.header.revision)

    async def delete(self, key: bytes) -> int:
        """Delete `key` (one that is not there is no error): etcd's revision after it."""
        async with self._calling():
            await self._client.connect()
            answer = await self._client.kvstub.DeleteRange(
                aetcd.rpc.DeleteRangeRequest(key=key), timeout=self.timeout,
                metadata=self._client.metadata)
        return int(answer.header.revision)

    async def snapshot(self, prefix: bytes, limit: int = MAX_SNAPSHOT,
                       max_value: int | None = None) -> Snapshot:
        """Every key under `prefix` (at most `limit`) with its value and lease, all as of
        one revision, read a page at a time. A value over `max_value` bytes is cut to
        `max_value` + 1 (enough to tell it is too long, without holding it)."""
        end = aetcd.utils.prefix_range_end(prefix)
        items: list[KeyValue] = []
        revision, start, page = 0, prefix, PAGE
        while True:
            request = aetcd.rpc.RangeRequest(
                key=start, range_end=end, limit=min(page, limit + 1 - len(items)),
                revision=revision, sort_order=aetcd.rpc.RangeRequest.ASCEND,
                sort_target=aetcd.rpc.RangeRequest.KEY)
            async with self._calling():
                await self._client.connect()
                try:
                    answer = await self._client.kvstub.Range(
                        request, timeout=self.timeout, metadata=self._client.metadata)
                except aetcd.rpc.AioRpcError as exc:
                    # values too big for one answer: fewer at a time (one always fits:
                    # etcd's own request limit is below MAX_MESSAGE)
                    if exc.code() == aetcd.rpc.StatusCode.RESOURCE_EXHAUSTED and page > 1:
                        page //= 2
                        continue
                    raise
            revision = revision or int(answer.header.revision)
            cut = None if max_value is None else max_value + 1
            items.extend(KeyValue(bytes(kv.key), bytes(kv.value[:cut]), int(kv.lease),
                                  int(kv.mod_revision)) for kv in answer.kvs)
            if len(items) > limit:
                return Snapshot(items[:limit], revision, True)
            if not answer.more or not answer.kvs:
                return Snapshot(items, revision, False)
            start = items[-1].key + b"\0"

    async def watch(self, prefix: bytes, start: int) -> AsyncGenerator[list[Event], None]:
        """The changes under `prefix` from revision `start` on: first an empty batch once
        etcd has accepted the watch, then a batch per answer of etcd's (whole revisions),
        until the stream breaks: then EtcdUnavailable, or WatchCompacted when the history
        from `start` is gone. Use it in `contextlib.aclosing`, so that leaving early ends
        the stream."""
        request = aetcd.rpc.WatchRequest(create_request=aetcd.rpc.WatchCreateRequest(
            key=prefix, range_end=aetcd.utils.prefix_range_end(prefix),
            start_revision=start, fragment=True))
        call = None
        try:
            async with self._calling():
                await self._client.connect()
                call = aetcd.rpc.WatchStub(self._client.channel).Watch(
                    metadata=(self._client.metadata or ()) + _REQUIRE_LEADER)
                await call.write(request)
                created = await call.read()
                if not isinstance(created, aetcd.rpc.WatchResponse):
                    raise EtcdUnavailable("etcd ended the watch as it began")
            assert call is not None
            if created.compact_revision:
                raise WatchCompacted(f"etcd compacted its history up to revision "
                                     f"{created.compact_revision}, beyond {start}",
                                     int(created.compact_revision))
            if created.canceled or not created.created:
                raise EtcdUnavailable(f"etcd refused the watch: {created.cancel_reason[:200]}")
            if 0 < int(created.header.revision) < start - 1:
                raise WatchCompacted(f"etcd is at revision {created.header.revision}, behind "
                                     f"{start - 1} (restored from an older backup?)", 0)
            yield []
            # A batch is bounded by what one etcd request can change (a transaction, a
            # range deleted, a lease's keys), which etcd bounds; no limit of ours here.
            events: list[Event] = []
            while True:
                async with _Calling(None):
                    answer = await call.read()
                if not isinstance(answer, aetcd.rpc.WatchResponse):
                    raise EtcdUnavailable("etcd ended the watch")
                if answer.compact_revision:
                    raise WatchCompacted(f"etcd compacted its history up to revision "
                                         f"{answer.compact_revision}, beyond {start}",
                                         int(answer.compact_revision))
                if answer.canceled:
                    raise EtcdUnavailable(f"etcd ended the watch: {answer.cancel_reason[:200]}")
                for e in answer.events:
                    deleted = e.type == aetcd.rpc.Event.DELETE
                    events.append(Event(bytes(e.kv.key), None if deleted else bytes(e.kv.value),
                                        int(e.kv.lease), int(e.kv.mod_revision)))
                if answer.fragment:
                    continue  # the rest of this revision is in the next answers
                if events:
                    yield events
                events = []
        finally:
            if call is not None:
                call.cancel()

    def _calling(self) -> _Calling:
        return _Calling(self.timeout)


class _Calling:
    """Every error of a call to etcd as EtcdUnavailable; the call bounded in time (gRPC's
    own deadline, and this one around what aetcd does beside it), unless `timeout` is
    None (a watch stream, quiet for as long as nothing changes)."""

    def __init__(self, timeout: float | None) -> None:
        self._timeout = asyncio.timeout(timeout + 0.5 if timeout is not None else None)

    async def __aenter__(self) -> None:
        await self._timeout.__aenter__()

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool:
        try:
            await self._timeout.__aexit__(kind, exc, tb)
        except TimeoutError:
            raise EtcdUnavailable("etcd did not answer in time") from None
        if exc is not None and (isinstance(exc, aetcd.ClientError | aetcd.rpc.AioRpcError)
                                or _of_grpc(exc)):
            raise EtcdUnavailable(_reason(exc)) from None
        return False


def _of_grpc(exc: BaseException) -> bool:
    """gRPC's own errors beside its status codes: a call on a channel closed under it (a
    client dropped after a loss while a read was on it), say."""
    return isinstance(exc, Exception) and type(exc).__module__.startswith("grpc")


def _reason(exc: BaseException) -> str:
    details = exc.details() if isinstance(exc, aetcd.rpc.AioRpcError) else str(exc)
    text = (details or type(exc).__name__).split("\n", 1)[0]
    return text[:200]
