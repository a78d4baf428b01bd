"""Progress of `linkd up`/`down`: a live block on a terminal, plain lines otherwise.

On a terminal each object (network, container) keeps one line that is rewritten in
place as it moves on, like `docker compose up`; in a pipe or a log file every event is
its own line, so CI logs stay readable.
"""

from __future__ import annotations

import time
from typing import TextIO

BAR = 30  # characters of a download's bar


def megabytes(size: int) -> str:
    """`size` bytes as the image commands say sizes: `12.3 MB`."""
    return f"{size / 1e6:.1f} MB"


class Progress:
    def __init__(self, out: TextIO, *, live: bool) -> None:
        self.out = out
        self.live = live
        self.lines: dict[str, str] = {}
        self.drawn = 0
        self.started = time.monotonic()

    def event(self, subject: str, what: str) -> None:
        elapsed = time.monotonic() - self.started
        if not self.live:
            print(f"{subject}: {what}", file=self.out, flush=True)
            return
        self.lines[subject] = f"{what} ({elapsed:.1f}s)"
        self._draw()

    def transfer(self, subject: str, got: int, total: int) -> None:
        """A layer's download so far, as a bar: on a terminal only (a log gets the
        milestones `event` is told)."""
        if not self.live:
            return
        filled = BAR * got // total if total else BAR
        self.lines[subject] = (f"[{'=' * filled}{'>' if filled < BAR else ''}"
                               f"{' ' * (BAR - filled - 1)}] {megabytes(got)}/{megabytes(total)}")
        self._draw()

    def _draw(self) -> None:
        width = max(len(s) for s in self.lines)
        if self.drawn:
            self.out.write(f"\x1b[{self.drawn}F")  # back to the first line of the block
        for subject, what in self.lines.items():
            self.out.write(f"\x1b[2K {subject:<{width}}  {what}\n")
        self.drawn = len(self.lines)
        self.out.flush()

    def finish(self) -> None:
        """Leave the block as it is; later output goes below it."""
        self.lines.clear()
        self.drawn = 0
