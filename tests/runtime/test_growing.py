"""The blob a pull's unpacking reads while its download writes it
(linkd.runtime.images.growing): the reader waits for bytes not written yet, sees the end
only when the download says the blob is whole and checked, and is stopped when the
download fails or starts over under it. Real files and threads; no network."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from linkd.runtime.images.growing import Abandoned, GrowingBlob


class Download:
    """Writes a file the way registry.Repository.blob does, telling `blob` as it goes."""

    def __init__(self, path: Path, blob: GrowingBlob) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self.blob = blob
        self.count = 0

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)
        self.count += len(data)
        self.blob.grew(self.count)

    def start_over(self) -> None:
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        self.count = 0
        self.blob.grew(0)


def reading(blob: GrowingBlob, chunk: int = 3) -> tuple[threading.Thread, list[object]]:
    """A thread reading `blob` to its end; what it read (bytes), or what it raised."""
    got: list[object] = []

    def run() -> None:
        try:
            while data := blob.read(chunk):
                got.append(data)
        except Abandoned as exc:
            got.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, got


def eventually(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 5
    while not check():
        assert time.monotonic() < deadline
        time.sleep(0.005)


def test_the_reader_waits_for_bytes_and_ends_only_when_the_blob_is_whole(
        tmp_path: Path) -> None:
    blob = GrowingBlob(tmp_path / "b")
    download = Download(tmp_path / "b", blob)
    thread, got = reading(blob)
    download.write(b"abcdef")
    eventually(lambda: b"".join(g for g in got if isinstance(g, bytes)) == b"abcdef")
    time.sleep(0.05)
    assert thread.is_alive()  # all written was read, but no end was said: it waits
    download.write(b"gh")
    blob.finish()
    thread.join(5)
    assert not thread.is_alive() and b"".join(got) == b"abcdefgh"  # type: ignore[arg-type]
    assert blob.read() == b""  # and stays at its end
    blob.close()


def test_a_failed_download_stops_the_reader(tmp_path: Path) -> None:
    blob = GrowingBlob(tmp_path / "b")
    download = Download(tmp_path / "b", blob)
    thread, got = reading(blob)
    download.write(b"abc")
    eventually(lambda: bool(got))
    blob.fail()
    thread.join(5)
    assert isinstance(got[-1], Abandoned)
    blob.finish()  # too late: a failed blob stays failed
    with pytest.raises(Abandoned):
        blob.read()
    blob.close()


def test_starting_over_under_a_reader_that_read_some_stops_it(tmp_path: Path) -> None:
    blob = GrowingBlob(tmp_path / "b")
    download = Download(tmp_path / "b", blob)
    thread, got = reading(blob)
    download.write(b"old-bytes")
    eventually(lambda: bool(got))
    download.start_over()  # what the reader read is not the blob any more
    download.write(b"new-bytes-and-more")
    blob.finish()
    thread.join(5)
    assert isinstance(got[-1], Abandoned)
    blob.close()


def test_starting_over_before_anything_was_read_is_no_harm(tmp_path: Path) -> None:
    blob = GrowingBlob(tmp_path / "b")
    download = Download(tmp_path / "b", blob)
    download.write(b"old")
    download.start_over()
    download.write(b"new")
    blob.finish()
    assert blob.read() == b"new" and blob.read() == b""
    blob.close()
