"""Reading a file a user named (a stack file, an env file, a token file): bounded, and only
if it is what it should be.

A path in a stack file can name anything: a FIFO (opening it for reading blocks until a
writer comes, reading it until the writer writes: the parse, and the daemon's event loop,
stalled), `/dev/zero` (endless: memory), a directory, a log of gigabytes. `read_text`
opens with O_NONBLOCK (so a FIFO opens at once instead of waiting for a writer), asks the
descriptor what it is (fstat on the open file, so nothing can be swapped in between the
check and the read), refuses anything but a regular file (a pipe too, where the caller
allows one: `linkd up -f /dev/stdin`), reads at most `limit` bytes, decodes UTF-8
strictly, and says what is wrong in a sentence.

Every failure is a `FileProblem`, an `OSError` whose `strerror` is that sentence and whose
`filename` is the path, so a caller that already reports `OSError.strerror` (the stack
parser's env files, the CLI's stack file) says the right thing unchanged.

`read_bounded` (at most `limit` + 1 bytes of a descriptor) is the runtime's too: the
image code reads a file of strangers' layers the same way (`linkd.runtime.images.beneath`).
This module imports nothing of linkd's.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections.abc import Callable
from pathlib import Path

MAX_BYTES = 1 << 20  # 1 MiB: the API's largest request body, so the same stacks fit both


class FileProblem(OSError):
    """A file that cannot be read as asked; `strerror` says why in a sentence."""

    def __init__(self, code: int, sentence: str, path: str) -> None:
        super().__init__(code, sentence, path)

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


def read_text(path: str | os.PathLike[str], *, limit: int = MAX_BYTES, pipes: bool = False) -> str:
    """The UTF-8 text of the regular file `path` (or a pipe, with `pipes`), at most
    `limit` bytes; raises `FileProblem` saying what is wrong."""
    return decode(read_bytes(path, limit=limit, pipes=pipes), str(path))


def read_bytes(
    path: str | os.PathLike[str],
    *,
    limit: int = MAX_BYTES,
    pipes: bool = False,
    vet: Callable[[os.stat_result], None] | None = None,
) -> bytes:
    """`read_text` without the decoding. `vet(stat)`, when given, sees the open file's
    status before anything is read, and raises to refuse it (a token file's mode)."""
    name = str(path)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise FileProblem(exc.errno or errno.EIO, exc.strerror or str(exc), name) from None
    try:
        info = os.fstat(fd)
        if stat.S_ISFIFO(info.st_mode) and pipes:
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        elif not stat.S_ISREG(info.st_mode):
            allowed = "a regular file or a pipe" if pipes else "a regular file"
            code = errno.EISDIR if stat.S_ISDIR(info.st_mode) else errno.EINVAL
            raise FileProblem(code, f"is {_kind(info.st_mode)}, not {allowed}", name)
        elif info.st_size > limit:
            raise FileProblem(errno.EFBIG, _too_big(info.st_size, limit), name)
        if vet is not None:
            vet(info)
        data = read_bounded(fd, limit)
        if len(data) > limit:  # it grew, or a pipe kept giving
            raise FileProblem(errno.EFBIG, _too_big(None, limit), name)
        return data
    except FileProblem:
        raise
    except OSError as exc:
        raise FileProblem(exc.errno or errno.EIO, exc.strerror or str(exc), name) from None
    finally:
        os.close(fd)


def decode(data: bytes, name: str) -> str:
    """`data` as UTF-8, or a `FileProblem` naming the first bad byte's line and column."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[: exc.start]
        line = before.count(b"\n") + 1
        column = exc.start - (before.rfind(b"\n") + 1) + 1
        sentence = (
            f"is not UTF-8 text (byte 0x{data[exc.start]:02x} at line {line}, column "
            f"{column}); save it as UTF-8"
        )
        raise FileProblem(errno.EILSEQ, sentence, name) from None


def _too_big(size: int | None, limit: int) -> str:
    has = f"has {size} bytes" if size is not None else "has more"
    return f"{has}; linkd reads at most {limit} bytes ({limit >> 20} MiB) of such a file"


# By the type bits of st_mode: one lookup names every kind.
_KINDS = {
    stat.S_IFREG: "a regular file",
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a named pipe (FIFO)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def _kind(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), "an unknown kind of file")


def read_bounded(fd: int, limit: int) -> bytes:
    """What `fd` gives from its offset on, but never more than `limit` + 1 bytes: a
    result longer than `limit` says the file is over it, without reading the rest (a
    file that grows, a pipe that keeps giving, `/dev/zero`)."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit and (chunk := os.read(fd, min(1 << 16, limit + 1 - size))):
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def env_file_reader(base: Path, *, limit: int = MAX_BYTES) -> Callable[[str], str]:
    """The `read_text` a stack parse needs: a name from the stack file, relative to the
    stack's directory `base` (or absolute), read as a regular file of at most `limit`."""

    def read(name: str) -> str:
        return read_text(base / name, limit=limit)

    return read
