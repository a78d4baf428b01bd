"""Reading and following container logs (the files the shim's output goes to).

Following polls the files every 100 ms rather than using inotify: it needs no extra
dependency, survives a log file that does not exist yet (a container not started) and
costs nothing measurable for the handful of files a terminal can show.

Log files are opened and read in threads of their own (`READERS`), never on the event
loop: the loop that reads them also answers DNS (the daemon's, a foreground `up`'s) and
the API, and a read of a large log from a cold disk would stall every answer meanwhile.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
from collections.abc import AsyncGenerator, Callable, Sequence
from pathlib import Path
from typing import BinaryIO, TypeVar

POLL = 0.1
CHUNK = 65536  # bytes a log read streams at a time
# A handful: reads of regular files end quickly, and they never take the default
# executor the supervisor's other blocking steps use.
READERS = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="linkd-logs")

T = TypeVar("T")


async def _off_loop(work: Callable[[], T]) -> T:
    return await asyncio.get_running_loop().run_in_executor(READERS, work)


def start_of_last_lines(f: BinaryIO, lines: int, *, block: int = CHUNK) -> int:
    """The offset in the seekable `f` where its last `lines` lines begin (a last line
    without its newline counts), read backwards a block at a time: `docker logs --tail N`
    of a log of any size reads only what it shows."""
    end = f.seek(0, 2)
    if lines <= 0 or end == 0:
        return end
    # A final newline ends the last line rather than starting one after it.
    f.seek(end - 1)
    stop = end - 1 if f.read(1) == b"\n" else end
    found = 0
    at = stop
    while at > 0:
        start = max(0, at - block)
        f.seek(start)
        data = f.read(at - start)
        cut = len(data)
        while (cut := data.rfind(b"\n", 0, cut)) >= 0:
            found += 1
            if found == lines:
                return start + cut + 1
        at = start
    return 0


async def chunks(path: Path, more: Callable[[], bool], *,
                 tail: int | None = None) -> AsyncGenerator[bytes, None]:
    """`path`'s bytes (its last `tail` lines, if given), `CHUNK` at a time; at its end,
    while `more()` holds, what is appended to it (looked for every `POLL` seconds). Use it
    in `contextlib.aclosing`, which closes the file when the reader stops early."""
    f: BinaryIO = await _off_loop(lambda: path.open("rb"))
    try:
        if tail is not None:
            last = tail
            await _off_loop(lambda: f.seek(start_of_last_lines(f, last)))
        while True:
            chunk = await _off_loop(lambda: f.read(CHUNK))
            if chunk:
                yield chunk
            elif more():
                await asyncio.sleep(POLL)
            else:
                return
    finally:
        f.close()


def _read_from(path: Path, offset: int) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read()


async def follow(
    sources: Sequence[tuple[str, Path]],
    emit: Callable[[str, str], None],
    stop: asyncio.Event,
    *,
    from_start: bool = True,
    tail: int | None = None,
) -> None:
    """Call `emit(name, line)` for each complete line appended to each file until `stop`
    (from each file's last `tail` lines, if given).

    Lines still in the files when `stop` is set are emitted before returning.
    """
    offsets = {name: 0 if from_start else _size(path) for name, path in sources}
    if tail is not None:
        for name, path in sources:
            offsets[name] = await _off_loop(functools.partial(_tail_offset, path, tail))
    partial = {name: b"" for name, _ in sources}
    while True:
        stopping = stop.is_set()
        for name, path in sources:
            try:
                chunk = await _off_loop(functools.partial(_read_from, path, offsets[name]))
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


def _tail_offset(path: Path, lines: int) -> int:
    try:
        with path.open("rb") as f:
            return start_of_last_lines(f, lines)
    except FileNotFoundError:
        return 0


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
