"""The runtime's side of networks shared between stacks (linkd.core.shared_networks): the
other stacks' state, read from their state files, for the planner, teardown and DNS.

Stacks run in different processes (a foreground `linkd up`, the daemon), so what one
knows of the others is their state files. `other_states` reads them, each decoded again
only when its file changed (a stack's file is replaced on every change of a container's
state; the others are read from a cache keyed by inode, mtime and size).

`Neighbours` keeps one stack's DNS zone told of the other stacks' containers on the
networks they share: level-based, it looks at the state files' signatures every
FOLLOW_INTERVAL and rebuilds the zone when what it would add changed. A container of
another stack starting on a shared network is answered here within about that interval
(after its own stack has saved its state). Stacks of one process (the daemon's) need not
wait for that look: a stack that came up, changed or went says so (`tell_neighbours`),
and the others rebuild their zones before its `up`, update or `down` returns, so that
right after `linkd down` of one stack no other stack of the daemon answers its names.

`kept` says why a bridge must stay when a stack goes: another stack up made it, or has
containers on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from linkd.core import shared_networks
from linkd.core.plan import StackPlan
from linkd.core.state import StackState
from linkd.dns.zone import held_back
from linkd.errors import LinkdError
from linkd.runtime.stack import store
from linkd.runtime.stack.live import LiveStack
from linkd.runtime.stack.publisher import Publisher

log = logging.getLogger("linkd")

FOLLOW_INTERVAL = 0.5  # seconds between looks at the other stacks' state files

Signature = tuple[tuple[str, int, int, int, int], ...]

_decoded: dict[str, tuple[tuple[int, int, int, int], StackState]] = {}
_signature: tuple[float, Signature] | None = None  # (when, what): one look per interval
_following: set[Neighbours] = set()  # this process's stacks following the others


def other_states(stack: str, only: str | None = None) -> list[StackState]:
    """The states of the stacks up other than `stack` (unreadable ones left out); `only`:
    of that one stack alone."""
    found = []
    for other in [only] if only is not None else store.stacks():
        if other == stack:
            continue
        key = store.file_identity(store.state_path(other))
        cached = _decoded.get(other)
        if key is not None and cached is not None and cached[0] == key:
            found.append(cached[1])
            continue
        try:
            state = store.load(other)
        except LinkdError:
            continue
        if key is not None:
            _decoded[other] = (key, state)
        found.append(state)
    if only is None:
        for gone in set(_decoded) - set(store.stacks()):
            _decoded.pop(gone, None)
    return found


def signature(stack: str) -> Signature:
    """What changes when another stack's state does: its files' identities. Taken at
    most once per FOLLOW_INTERVAL in a process (the daemon's stacks share it)."""
    global _signature
    now = time.monotonic()
    if _signature is None or now - _signature[0] >= FOLLOW_INTERVAL / 2:
        _signature = (now, tuple((s, *(store.file_identity(store.state_path(s))
                                       or (0, 0, 0, 0))) for s in store.stacks()))
    return tuple(entry for entry in _signature[1] if entry[0] != stack)


def tell_neighbours(stack: str) -> None:
    """`stack` has come up, changed or gone (its state file says so already): the other
    stacks of this process take it into their zones now."""
    global _signature
    _signature = None  # their next look is a new one too
    for follower in [f for f in _following if f.live.name != stack]:
        try:
            follower.refresh()
        except Exception:  # a bad state file of another stack: its own look retries
            log.exception("stack %s: reading the other stacks' state failed",
                          follower.live.name)


def kept(stack: str, bridge: str) -> str | None:
    """Why `bridge` must outlive `stack`'s removal: the other stacks that made it or have
    containers on it; None when `stack` may remove it."""
    users = shared_networks.users(bridge, (s.plan for s in other_states(stack)), stack)
    if not users:
        return None
    return f"in use by stack{'s' if len(users) > 1 else ''} {', '.join(users)}"


class Neighbours:
    """Other stacks' containers on the networks one stack shares with them, kept in its
    DNS zone (linkd.dns.zone scopes them to the shared networks)."""

    def __init__(self, live: LiveStack, publisher: Publisher) -> None:
        self.live = live
        self.publisher = publisher
        self._task: asyncio.Task[None] | None = None
        # other stacks sharing no network with this one, by their lease file's identity
        self._apart: dict[str, tuple[int, int, int, int]] = {}
        self._apart_of: StackPlan | None = None
        # by id: (another stack's plan, this one's, its part of the neighbours), as the
        # last refresh made them
        self._parts: dict[int, tuple[StackPlan, StackPlan, StackPlan | None]] = {}
        # A cluster daemon's: the containers of other nodes on the stack's overlay
        # networks, and those of them held back (linkd.runtime.cluster.overlay_sync)
        self.remote: Callable[[StackPlan], tuple[tuple[StackPlan, ...],
                                                 frozenset[tuple[str, str]]]] | None = None
        # this node's other stacks' part, as the last refresh found it
        self._local: tuple[tuple[StackPlan, ...], frozenset[tuple[str, str]]] = ((),
                                                                                frozenset())

    def refresh(self) -> None:
        plan = self.live.plan
        if plan is None:
            return
        if plan is not self._apart_of:
            self._apart, self._apart_of = {}, plan  # an update: every stack looked at anew
        parts: list[StackPlan] = []
        pending: set[tuple[str, str]] = set()
        memo, self._parts = self._parts, {}
        for state in self._sharing(plan):
            gone = [c.name for c in state.containers if c.status in ("exited", "failed")]
            theirs = state.plan.without(gone)
            pending |= held_back(theirs, {c.name: c for c in state.containers})
            # A stack whose state did not change is the same decoded plan (other_states'
            # cache): its part is the same object, which the zone skips (rezone).
            known = memo.get(id(theirs))
            if known is not None and known[0] is theirs and known[1] is plan:
                part = known[2]
            else:
                part = shared_networks.shared_part(plan, theirs)
            self._parts[id(theirs)] = (theirs, plan, part)
            if part is not None:
                parts.append(part)
        near = tuple(parts)
        ids = {(p.stack, c.name) for p in near for c in p.containers}
        self._local = (near, frozenset(pending & ids))
        self.refresh_remote()

    def refresh_remote(self) -> None:
        """The zone told of the other nodes' containers anew (their records changed),
        with this node's other stacks as the last `refresh` found them."""
        plan = self.live.plan
        if plan is None:
            return
        near, pending = self._local
        if self.remote is not None:  # other nodes' containers on its overlay networks
            far, held = self.remote(plan)
            near, pending = near + far, pending | held
            self.publisher.set_elsewhere(tuple(
                c for p in far if p.stack == plan.stack for c in p.containers))
        self.publisher.set_neighbours(near, pending)

    def _sharing(self, plan: StackPlan) -> list[StackState]:
        """The states of the other stacks that share a network with `plan`. A stack found
        to share none is not decoded again until its plan changes, which saves its lease
        (under the planner's lock): its state file changes with every container's state,
        and decoding every other stack's, every interval, made `up` of many stacks slow."""
        found = []
        for other in store.stacks():
            if other == self.live.name:
                continue
            lease = store.file_identity(store.lease_path(other))
            if lease is not None and self._apart.get(other) == lease:
                continue
            for state in other_states(self.live.name, only=other):
                if shared_networks.shares(plan, state.plan):
                    found.append(state)
                    self._apart.pop(other, None)
                elif lease is not None:
                    self._apart[other] = lease
        return found

    def start(self) -> None:
        """Follow the other stacks from now on (in the stack's task group)."""
        tasks = self.live.tasks
        if tasks is None or self._task is not None:
            return
        self._task = tasks.create_task(self._follow())
        _following.add(self)

    async def stop(self) -> None:
        _following.discard(self)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _follow(self) -> None:
        seen = signature(self.live.name)
        while True:
            await asyncio.sleep(FOLLOW_INTERVAL)
            now = signature(self.live.name)
            if now == seen:
                continue
            seen = now
            try:
                self.refresh()
            except Exception:  # a bad state file of another stack: try again next time
                log.exception("stack %s: reading the other stacks' state failed",
                              self.live.name)
