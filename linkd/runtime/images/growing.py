"""A blob file read on a thread while the event loop downloads it into place.

A pull verifies and unpacks each layer as its bytes arrive rather than after: the
download (linkd.runtime.images.registry, on the loop) writes the file and says how much
it holds (`grew`); the unpacking (linkd.runtime.images.image_store.unpack_fetched, on a
thread) reads it through a `GrowingBlob`, which waits for bytes that are not there yet.

The reader's end of the file is the download's verdict, not the file's: `read` returns
EOF only after `finish`, which the download calls once the whole blob, of its size, is
there. The reader hashes what it reads and checks the blob's digest at EOF, before the
layer's tar (the verified copy `load` parses) is read at all. A download that fails
(`fail`), or starts the blob over after the reader may have read some of it (`grew`
with a smaller count: a retry whose registry would not resume), ends the reading with
`Abandoned`.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any


class Abandoned(Exception):
    """The download failed, or started over: what was read of it is not the blob."""


class GrowingBlob:
    """The reading side is a binary file object for one thread; the writing side
    (`grew`, `finish`, `fail`) is the download's."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._changed = threading.Condition()
        self._held = 0  # bytes the download has written
        self._state = "growing"  # then "whole", or "failed"
        self._pos = 0
        self._fd: int | None = None

    # -- the download's side ----------------------------------------------------------

    def grew(self, count: int) -> None:
        """The file holds `count` bytes of the blob now; fewer than before: it started
        over."""
        with self._changed:
            if count < self._held and self._pos > 0:
                self._state = "failed"
            self._held = count
            self._changed.notify_all()

    def finish(self) -> None:
        """The blob is whole, and its digest and size checked."""
        with self._changed:
            if self._state == "growing":
                self._state = "whole"
            self._changed.notify_all()

    def fail(self) -> None:
        with self._changed:
            if self._state == "growing":
                self._state = "failed"
            self._changed.notify_all()

    # -- the reader's side ------------------------------------------------------------

    def read(self, size: int = -1) -> bytes:
        with self._changed:
            while self._state == "growing" and self._pos >= self._held:
                self._changed.wait()
            if self._state == "failed":
                raise Abandoned(f"{self.path.name}: the download failed or started over")
            want = self._held - self._pos if size < 0 else min(size, self._held - self._pos)
        if want <= 0:
            return b""  # whole, and all of it read
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        data = os.pread(self._fd, want, self._pos)
        self._pos += len(data)
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> GrowingBlob:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
