"""The stack's state file, kept current with the supervisor's changes, off the event loop.

A stack changes state in bursts: `up` of 500 containers is a thousand status changes
(starting, running) in a few seconds, and a health probe can change one every 100 ms.
Writing the whole state per change, on the loop that also answers DNS, made `up` of N
containers cost O(N²) encoding, all of it on that loop.

So a change only marks the state dirty. One writer task at a time takes a snapshot
(frozen data, cheap to take on the loop) and encodes and writes it in a worker thread;
changes that arrive meanwhile are coalesced into the next write. Writes stay in order,
and the file never goes backwards: each write holds everything changed before it began.

What must be on disk at a given point awaits `flush()`: the plan before the kernel is
touched (so a crash leaves a record of what to remove), and the state an API answer or
a `down` relies on. `close()` ends writing for good, before the stack's directory goes:
a late change must not bring it back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from linkd.core.state import StackState
from linkd.runtime.stack import store

log = logging.getLogger("linkd")


class StateWriter:
    def __init__(self, snapshot: Callable[[], StackState | None]) -> None:
        self._snapshot = snapshot
        self._dirty = False
        self._closed = False
        self._writer: asyncio.Task[None] | None = None

    def changed(self) -> None:
        """The state changed: it will be written soon."""
        if self._closed:
            return
        self._dirty = True
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_while_dirty())

    async def flush(self) -> None:
        """Return once every change made before this call is on disk."""
        self.changed()
        while self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)
        if self._writer is not None and self._writer.done() and not self._writer.cancelled():
            self._writer.result()  # a failed write is the caller's error

    async def close(self) -> None:
        """Write what is pending, then never again."""
        try:
            if self._writer is not None and not self._writer.done():
                await asyncio.shield(self._writer)
        finally:
            self._closed = True
            self._dirty = False

    async def _write_while_dirty(self) -> None:
        while self._dirty and not self._closed:
            self._dirty = False
            state = self._snapshot()
            if state is None:
                continue
            try:
                await asyncio.to_thread(store.save, state)
            except OSError as exc:
                # Kept dirty: the next change, or flush, tries again; flush says why.
                self._dirty = True
                log.warning("stack %s: writing its state failed: %s", state.plan.stack, exc)
                raise
