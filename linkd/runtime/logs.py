"""Reading and following container logs (the files the shim's output goes to).

Following polls the files every 100 ms rather than using inotify: it needs no extra
dependency, survives a log file that does not exist yet (a container not started) and
costs nothing measurable for the handful of files a terminal can show.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path

POLL = 0.1


async def follow(
    sources: Sequence[tuple[str, Path]],
    emit: Callable[[str, str], None],
    stop: asyncio.Event,
    *,
    from_start: bool = True,
) -> None:
    """Call `emit(name, line)` for each complete line appended to each file until `stop`.

    Lines still in the files when `stop` is set are emitted before returning.
    """
    offsets = {name: 0 if from_start else _size(path) for name, path in sources}
    partial = {name: b"" for name, _ in sources}
    while True:
        stopping = stop.is_set()
        for name, path in sources:
            try:
                with path.open("rb") as f:
                    f.seek(offsets[name])
                    chunk = f.read()
            except FileNotFoundError:
                continue
            offsets[name] += len(chunk)
            data = partial[name] + chunk
            *lines, partial[name] = data.split(b"\n")
            for line in lines:
                emit(name, line.decode(errors="replace"))
        if stopping:
            for name, rest in partial.items():
                if rest:
                    emit(name, rest.decode(errors="replace"))
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), POLL)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
