"""This node's place in the cluster: its record in etcd, held by a lease it keeps alive.

`join` registers the node (linkd.core.cluster says where and how the record is written):
a new lease, then a transaction that writes the record only if its key is absent, or
holds this daemon's own record (its `instance` token). A name a live node holds is
refused with a ConflictError naming that node; a node killed without leaving holds its
name until its lease expires. An etcd that cannot be reached at start is no reason not
to start: the node runs disconnected and joins when etcd answers.

`run` keeps the lease alive every TTL/3 for as long as the daemon lives. When etcd stops
answering (two keep-alives in a row failed: one may just have been on a member that
died) the node is `disconnected`: said once in the log, its stacks, containers and DNS
untouched, the other nodes shown as last seen, state `unknown`. It keeps trying, and
once etcd answers it registers again under a new lease (the old one may have expired
meanwhile, and a name freed by that expiry may have been taken: then `conflict`, said
once, and tried again until the name is free).

`leave` revokes the lease, so the node's record goes at once (SIGTERM), not a TTL later.

Other records a node writes under its lease (linkd.runtime.cluster.endpoints) read the
current one (`lease`) and are told when it changes (`on_lease`): after a new
registration they must be written again under the new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from linkd.core.cluster import (
    ClusterConfig,
    NodeRecord,
    RecordError,
    decode_record,
    encode_record,
    node_key,
    node_to_plain,
    nodes_prefix,
)
from linkd.errors import ConflictError, UsageError
from linkd.runtime.cluster.etcd import Etcd, EtcdUnavailable, resolve, route_source

log = logging.getLogger("linkd")

FAILURES_TO_LOSE = 2  # keep-alives failed in a row before the node says it is disconnected


class Membership:
    """This node in the cluster `config` names; its `state` is one of
    linkd.core.cluster.CONNECTION_STATES."""

    def __init__(self, config: ClusterConfig, address: str, *,
                 resolved: list[tuple[str, int]], started: float | None = None) -> None:
        self.config = config
        self.record = NodeRecord(
            config.name, address, dict(config.labels), _version(),
            started if started is not None else time.time(), "ready", secrets.token_hex(8),
        )
        self.key = node_key(config.name, config.prefix)
        self.interval = config.ttl / 3
        self.timeout = min(2.0, self.interval)  # of one call to etcd
        self.state = "joining"
        self.since = time.time()
        self.error: str | None = None
        self._resolved = resolved
        self._etcd: Etcd | None = None
        self._lease_id: int | None = None
        self._lease_watchers: list[Callable[[], None]] = []
        self._failures = 0
        self._seen: list[NodeRecord] = []  # the nodes as last read
        self._invalid: list[dict[str, str]] = []
        self._more = False
        self._read_at: float | None = None

    # -- the lease, for what else the node writes under it ---------------------------

    @property
    def lease(self) -> int | None:
        """The lease the node's record is under now; None while it is not registered."""
        return self._lease_id

    def on_lease(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` whenever `lease` changes; returns what stops that."""
        self._lease_watchers.append(callback)
        return lambda: self._lease_watchers.remove(callback)

    def new_client(self) -> Etcd:
        """A client of the cluster's etcd of its own (a channel apart from this one's)."""
        return Etcd(self._resolved, self.timeout)

    @property
    def _lease(self) -> int | None:
        return self._lease_id

    @_lease.setter
    def _lease(self, lease: int | None) -> None:
        changed = lease != self._lease_id
        self._lease_id = lease
        for callback in list(self._lease_watchers) if changed else ():
            try:
                callback()
            except Exception:  # another part's bug must not cost the node its place
                log.exception("node %s: a lease watcher failed", self.config.name)

    # -- joining and leaving ---------------------------------------------------------

    async def register(self) -> None:
        """Write this node's record under a new lease. ConflictError if a live node holds
        the name; EtcdUnavailable if etcd cannot be asked."""
        etcd = self._client()
        old = self._lease
        lease = await etcd.grant(self.config.ttl)
        try:
            value = encode_record(self.record)
            written, held = await etcd.create(self.key, value, lease)
            if not written and held is not None and self._ours(held[0]):
                written = await etcd.replace(self.key, value, lease, held[1])
            if not written:
                raise ConflictError(self._taken(held[0] if held else None))
        except BaseException:
            with contextlib.suppress(EtcdUnavailable):
                await etcd.revoke(lease)
            raise
        self._lease = lease
        if old is not None and old != lease:
            with contextlib.suppress(EtcdUnavailable):
                await etcd.revoke(old)  # holds no key now: the put moved it to `lease`
        self._connected()

    async def leave(self) -> None:
        """Revoke the lease (the record goes with it) and close the client; best-effort:
        a node that cannot reach etcd as it stops leaves when its lease expires."""
        lease, self._lease = self._lease, None
        if lease is not None and self._etcd is not None:
            try:
                await self._etcd.revoke(lease)
                log.info("node %s left the cluster", self.config.name)
            except EtcdUnavailable as exc:
                log.warning("node %s: could not leave the cluster (%s); its record goes "
                            "when its lease expires, within %d s", self.config.name, exc,
                            self.config.ttl)
        await self._close()

    async def run(self) -> None:
        """Keep the lease alive, and register again after a loss, until cancelled."""
        while True:
            await asyncio.sleep(await self.tick())

    async def tick(self) -> float:
        """One keep-alive (or registration); the seconds until the next."""
        try:
            if self._lease is None:
                await self.register()
            else:
                ttl = await self._client().keep_alive(self._lease)
                if ttl <= 0:
                    log.warning("node %s: its lease expired; registering again",
                                self.config.name)
                    self._lease = None
                    return 0
                self._connected()
            return self.interval
        except EtcdUnavailable as exc:
            self._failed(str(exc))
        except ConflictError as exc:
            self._conflict(str(exc))
        except Exception as exc:  # a bug here must not end the daemon
            log.exception("node %s: keeping its place in the cluster failed (a bug, please "
                          "report it); trying again", self.config.name)
            self._failed(f"{type(exc).__name__}: {exc}")
        return min(1.0, self.interval)

    # -- what the API shows ----------------------------------------------------------

    async def view(self) -> dict[str, Any]:
        """GET /v1/nodes: the nodes in etcd, read now if etcd answers this node, else as
        last read (the others' state `unknown`: this node cannot vouch for them)."""
        answering = self.state in ("ready", "conflict")  # etcd answered the last call
        if answering:
            try:
                await self.refresh()
            except EtcdUnavailable as exc:
                self.error = str(exc)
        fresh = answering and self._read_at is not None and self._read_at >= self.since
        nodes = []
        own_seen = False
        for record in self._seen:
            own = record.name == self.config.name and record.instance == self.record.instance
            own_seen = own_seen or own
            state = self.state if own else (None if fresh else "unknown")
            nodes.append(node_to_plain(record, own=own, state=state))
        if not own_seen:
            nodes.append(node_to_plain(self.record, own=True, state=self.state))
        nodes.sort(key=lambda n: str(n["name"]))
        return {
            "node": self.config.name,
            "state": self.state,
            "since": self.since,
            "error": self.error,
            "endpoints": [str(e) for e in self.config.endpoints],
            "ttl": self.config.ttl,
            "read_at": self._read_at,
            "nodes": nodes,
            "invalid": list(self._invalid),
            "truncated": self._more,
        }

    async def nodes(self) -> list[NodeRecord]:
        """The live nodes, read now (EtcdUnavailable if etcd cannot be asked): each
        holds its record under a lease, so a dead one is gone within its TTL."""
        await self.refresh()
        return [r for r in self._seen if r.state == "ready"]

    async def refresh(self) -> None:
        """Read every node's record; what is not a record is kept aside, with why."""
        items, more = await self._client().read_prefix(nodes_prefix(self.config.prefix))
        seen, invalid = [], []
        for key, value in items:
            try:
                seen.append(decode_record(key, value, self.config.prefix))
            except RecordError as exc:
                invalid.append({"key": key[:200].decode("utf-8", "replace"),
                                "error": str(exc)})
        self._seen, self._invalid, self._more = seen, invalid, more
        self._read_at = time.time()

    # -- state -------------------------------------------------------------------------

    def _client(self) -> Etcd:
        if self._etcd is None:
            self._etcd = self.new_client()
        return self._etcd

    async def _close(self) -> None:
        etcd, self._etcd = self._etcd, None
        if etcd is not None:
            await etcd.close()

    def _ours(self, value: bytes) -> bool:
        try:
            held = decode_record(self.key, value, self.config.prefix)
        except RecordError:
            return False
        return held.instance == self.record.instance

    def _taken(self, value: bytes | None) -> str:
        name = self.config.name
        key = self.key.decode()
        if value is None:
            return f"node name {name}: etcd refused the record under {key}; try again"
        try:
            held = decode_record(self.key, value, self.config.prefix)
        except RecordError as exc:
            return (f"node name {name}: etcd holds something else under {key} ({exc}); "
                    f"remove it (etcdctl del {key}) or give this node another --node-name")
        return (f"node name {name} is held by a live node at {held.address} (linkd "
                f"{held.version}, up since {time.ctime(held.started)}): give this node "
                "another --node-name, or stop that one (a node killed without leaving "
                f"holds its name until its lease expires, {self.config.ttl} s at most)")

    def _set(self, state: str, error: str | None) -> None:
        if state != self.state:
            self.since = time.time()
        self.state, self.error = state, error

    def _connected(self) -> None:
        self._failures = 0
        if self.state in ("disconnected", "conflict"):
            log.info("node %s is back in the cluster (%s)", self.config.name,
                     ", ".join(str(e) for e in self.config.endpoints))
        elif self.state == "joining":
            log.info("node %s joined the cluster at %s as %s", self.config.name,
                     ", ".join(str(e) for e in self.config.endpoints), self.record.address)
        self._set("ready", None)

    def _failed(self, reason: str) -> None:
        self._failures += 1
        if self.state == "ready" and self._failures < FAILURES_TO_LOSE:
            return  # one call on a member that just died: the next goes to another
        if self.state != "disconnected":
            log.warning("node %s lost the cluster (%s): its stacks keep running as they "
                        "are; trying again every %.1f s", self.config.name, reason,
                        min(1.0, self.interval))
        self._set("disconnected", reason)
        # Register anew when etcd answers: the lease may have expired by then. A channel
        # of its own, too: gRPC's may be waiting out a backoff.
        self._lease_lost()

    def _lease_lost(self) -> None:
        etcd, self._etcd = self._etcd, None
        if etcd is not None:
            task = asyncio.get_running_loop().create_task(etcd.close())
            _closing.add(task)
            task.add_done_callback(_closing.discard)
        self._lease = None

    def _conflict(self, reason: str) -> None:
        if self.state != "conflict":
            log.error("node %s cannot register: %s", self.config.name, reason)
        self._set("conflict", reason)


def _version() -> str:
    """The installed linkd's version, as other nodes see it."""
    from importlib import metadata

    try:
        return metadata.version("linkd")
    except metadata.PackageNotFoundError:
        return "unknown"


_closing: set[asyncio.Task[None]] = set()  # clients being closed in the background


async def join(config: ClusterConfig, *, wait: float | None = None) -> Membership:
    """This node, registered; or, if etcd cannot be reached within `wait` seconds
    (default: the TTL), running disconnected, retrying in `run`. ConflictError if a live
    node holds the name: the daemon does not start."""
    resolved = resolve(config.endpoints)
    address = config.address
    if address is None:
        host, port = resolved[0]
        try:
            address = route_source(host, port)
        except OSError as exc:
            raise UsageError(f"--node-address: no route to etcd at {config.endpoints[0]} "
                             f"({exc.strerror or exc}); give the address other nodes reach "
                             "this one at") from None
    member = Membership(config, address, resolved=resolved)
    deadline = time.monotonic() + (wait if wait is not None else config.ttl)
    while True:
        try:
            await member.register()
            return member
        except EtcdUnavailable as exc:
            if time.monotonic() >= deadline:
                member._set("disconnected", str(exc))
                member._lease_lost()
                log.warning("node %s cannot reach etcd at %s (%s): running disconnected, "
                            "trying again every %.1f s", config.name,
                            ", ".join(str(e) for e in config.endpoints), exc,
                            min(1.0, member.interval))
                return member
        except BaseException:
            await member._close()
            raise
        await asyncio.sleep(min(1.0, member.interval))
