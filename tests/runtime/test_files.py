"""Reading files users name (linkd.files): only regular files (or pipes where
asked), bounded, UTF-8 or an error naming the file; and the CLI says so without a
traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from linkd import files


def test_a_regular_file_is_read(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("A=é\n")
    assert files.read_text(tmp_path / "a") == "A=é\n"


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda p: os.mkfifo(p), "is a named pipe (FIFO), not a regular file"),
        (lambda p: p.symlink_to("/dev/zero"), "is a character device, not a regular file"),
        (lambda p: p.mkdir(), "is a directory, not a regular file"),
        (lambda p: None, "No such file or directory"),
        (lambda p: p.write_bytes(b"x" * (files.MAX_BYTES + 1)), "has 1048577 bytes; linkd"),
        (lambda p: p.write_bytes(b"ok\nA=\xc3\x28\n"), "not UTF-8 text (byte 0xc3 at line 2, "),
    ],
    ids=["fifo", "dev-zero", "directory", "missing", "too-big", "not-utf-8"],
)
def test_anything_else_is_refused_at_once_naming_the_file(
    tmp_path: Path, make: object, fragment: str
) -> None:
    path = tmp_path / "x.env"
    make(path)  # type: ignore[operator]
    started = time.monotonic()
    with pytest.raises(files.FileProblem) as info:
        files.read_text(path)
    assert time.monotonic() - started < 1  # a FIFO without a writer does not block
    assert fragment in str(info.value.strerror)
    assert str(path) in str(info.value)
    assert isinstance(info.value, OSError)  # what the parser's env_file reports


def test_a_pipe_is_read_when_asked_and_bounded(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def write(data: bytes) -> None:
        with open(fifo, "wb") as out:
            out.write(data)

    writer = threading.Thread(target=write, args=(b"services: {}\n",))
    writer.start()
    time.sleep(0.1)  # the writer is waiting in open() for a reader
    assert files.read_text(fifo, pipes=True) == "services: {}\n"
    writer.join()
    writer = threading.Thread(target=write, args=(b"x" * 5000,))
    writer.start()
    time.sleep(0.1)
    with pytest.raises(files.FileProblem, match="has more; linkd reads at most 1000 bytes"):
        files.read_text(fifo, pipes=True, limit=1000)
    writer.join()


def linkd_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "linkd", "config", "-f", str(path)],
        capture_output=True, text=True, timeout=60, cwd=path.parent,
    )  # fmt: skip


def test_the_cli_names_a_stack_file_it_cannot_read_without_a_traceback(tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b"services:\n  w:\n    command: caf\xe9\n")
    fifo_env = tmp_path / "fifo.yaml"
    fifo_env.write_text("services:\n  w: {command: x, env_file: x.env}\n")
    os.mkfifo(tmp_path / "x.env")
    (tmp_path / "dir.yaml").mkdir()
    for path, fragment in (
        (latin1, "is not UTF-8 text (byte 0xe9 at line 3, column 17)"),
        (fifo_env, 'cannot read env file "x.env": is a named pipe (FIFO)'),
        (tmp_path / "dir.yaml", "is a directory"),
        (tmp_path / "missing.yaml", "No such file or directory"),
    ):
        done = linkd_config(path)
        assert done.returncode != 0, path
        assert "Traceback" not in done.stderr, done.stderr
        assert path.name in done.stderr and fragment in done.stderr, done.stderr
