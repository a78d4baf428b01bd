"""zstd layers (`application/vnd.oci.image.layer.v1.tar+zstd`), decompressed by the
`zstd` command (Debian's package `zstd`): Python 3.11 has no zstd module, and linkd adds
no compiled dependency for one.

`ZstdReader` is a readable stream of the decompressed bytes of `source`: it runs
`zstd -d -c` and feeds it `source` while it reads its output, both in the caller's
thread (a selector over the two pipes, stdin non-blocking), so every byte of the blob
still passes through the caller's `source` (which hashes it) and nothing else reads it.
The caller bounds what it reads (`linkd.runtime.images.layers.verify_layer`: the layer's
expansion and the image's size, as for gzip) and closes the reader, which kills the
process: a bomb stops at the limit. zstd itself is held to a 128 MiB window
(`--memory=128MB`, its default, said explicitly: a frame may ask for up to 2 GiB). A
stream zstd cannot read (garbage, truncated) ends with its exit status and its first
words on stderr, raised as `ZstdError`.
"""

from __future__ import annotations

import io
import os
import selectors
import shutil
import subprocess
import tempfile
from typing import IO, Any

PACKAGE = "zstd"
MAGIC = b"\x28\xb5\x2f\xfd"
WINDOW_MB = 128
_CHUNK = 1 << 20


class ZstdError(Exception):
    """zstd could not decompress the stream; the message is its own."""


class ZstdMissing(Exception):
    """No `zstd` command on PATH."""


class ZstdReader(io.RawIOBase):
    def __init__(self, source: IO[bytes]) -> None:
        command = shutil.which("zstd")
        if command is None:
            raise ZstdMissing(f"zstd layers are decompressed by the zstd command, which is "
                              f"not installed (apt-get install {PACKAGE})")
        self.source = source
        self.errors = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        try:
            self.proc = subprocess.Popen(
                [command, "-d", "-c", "-q", f"--memory={WINDOW_MB}MB"], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=self.errors, close_fds=True)
        except BaseException:
            self.errors.close()
            raise
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.feed = self.proc.stdin.fileno()
        self.out = self.proc.stdout.fileno()
        os.set_blocking(self.feed, False)
        self.pending = memoryview(b"")
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.feed, selectors.EVENT_WRITE)
        self.selector.register(self.out, selectors.EVENT_READ)
        self.feeding = True
        self.ended = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self.ended:
            for key, _ in self.selector.select():
                if key.fd == self.out:
                    n = os.readv(self.out, [buffer])
                    if n:
                        return n
                    self._end()
                    return 0
                self._feed()
        return 0

    def _feed(self) -> None:
        if not self.pending:
            chunk = self.source.read(_CHUNK)
            if not chunk:
                self._stop_feeding()
                return
            self.pending = memoryview(chunk)
        try:
            n = os.write(self.feed, self.pending)
        except BlockingIOError:
            return
        except BrokenPipeError:  # zstd gave up: its exit status says why
            self._stop_feeding()
            return
        self.pending = self.pending[n:]

    def _stop_feeding(self) -> None:
        if self.feeding:
            self.feeding = False
            self.selector.unregister(self.feed)
            assert self.proc.stdin is not None
            self.proc.stdin.close()

    def _end(self) -> None:
        self.ended = True
        if self.proc.wait() != 0:
            self.errors.seek(0)
            said = "; ".join(_lines(self.errors.read(4096).decode("utf-8", "replace")))
            raise ZstdError(f"zstd: {said or f'exit status {self.proc.returncode}'}")

    def close(self) -> None:
        if self.closed:
            return
        try:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            for pipe in (self.proc.stdin, self.proc.stdout):
                if pipe is not None:
                    pipe.close()
            self.selector.close()
            self.errors.close()
        finally:
            super().close()


def _lines(said: str) -> list[str]:
    """zstd's complaint, without its name for stdin and its advice on options (they
    are not the user's to give: the window is linkd's limit)."""
    found = []
    for line in said.splitlines():
        line = line.strip().removeprefix("zstd:").strip()
        line = line.removeprefix("/*stdin*\\").lstrip(" :").strip()
        if line and not line.startswith("Use --"):
            found.append(line)
    return found
