"""Running a command inside a container from a user's program, as `subprocess.run`
would with `capture_output=True, text=True`: what `AsyncContainer.exec` (and the sync
form's, and `waits.command`) does.

The command is `linkd exec` in a child process (this interpreter, this linkd on its
`PYTHONPATH`), an asyncio subprocess so that the event loop goes on meanwhile. Its output
is collected as it comes, so what came before a timeout is kept; a timeout or a
cancellation kills it, and a timeout is `subprocess.TimeoutExpired` as `run` says it.

`linkd exec` becomes the shim that runs the command, and killing the shim ends the
command's whole process group (linkd.runtime.containers.shim_entry). What the output
pipes still hold then comes at once; a process that left that group (a daemon) may keep
them open for ever, and is not waited for: after a kill this waits for the exit of
`linkd exec` itself, and for the pipes only briefly. (asyncio's `Process.wait()` would
wait for the pipes too, on Python 3.11; hence a protocol of our own.)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from pathlib import Path

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
# After a kill: how long the pipes may take to say EOF (all that is still in them is
# there already once the command's group is dead; only a stray process keeps them open).
_PIPES_AFTER_KILL = 0.5


async def run(
    stack: str, container: str, argv: tuple[str, ...], *, directory: Path,
    input: str | None, timeout: float | None, check: bool,
) -> subprocess.CompletedProcess[str]:
    """`argv` run in `container` of `stack` (`linkd exec`), from `directory`."""
    cmd = [sys.executable, "-m", "linkd", "exec", "-p", stack, container, "--", *argv]
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = f"{_PACKAGE_ROOT}{os.pathsep}{path}" if path else _PACKAGE_ROOT
    loop = asyncio.get_running_loop()
    transport, collected = await loop.subprocess_exec(
        lambda: _Collected(loop), *cmd,
        stdin=None if input is None else subprocess.PIPE,  # run()'s default
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=str(directory),
    )
    try:
        try:
            async with asyncio.timeout(timeout):
                _feed(transport, input)
                await asyncio.shield(collected.closed)
        except BaseException as exc:  # a timeout, or cancelled: the command goes too
            with contextlib.suppress(ProcessLookupError):
                transport.kill()
            await asyncio.shield(collected.exited)
            if isinstance(exc, TimeoutError):
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_PIPES_AFTER_KILL):
                        await asyncio.shield(collected.closed)
                raise subprocess.TimeoutExpired(
                    cmd, timeout or 0, _text(collected.out), _text(collected.err)) from None
            raise
    finally:
        transport.close()  # the pipes, if a stray process still holds them
    code = transport.get_returncode()
    assert code is not None  # `closed` comes after the exit
    done = subprocess.CompletedProcess(cmd, code, _text(collected.out), _text(collected.err))
    if check:
        done.check_returncode()
    return done


class _Collected(asyncio.SubprocessProtocol):
    """The output as it comes, and two moments: `exited` (the process, reaped) and
    `closed` (that and every pipe at EOF)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.out, self.err = bytearray(), bytearray()
        self.exited: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        (self.out if fd == 1 else self.err).extend(
            data.encode() if isinstance(data, str) else data)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.process_exited()  # it comes after the exit; said again for the waiters' sake
        if not self.closed.done():
            self.closed.set_result(None)


def _feed(transport: asyncio.SubprocessTransport, text: str | None) -> None:
    """Write `text` to stdin and close it; a command that does not read it all is no
    error (the pipe transport drops what it cannot write once the reader is gone)."""
    stdin = transport.get_pipe_transport(0)
    if isinstance(stdin, asyncio.WriteTransport) and text is not None:
        stdin.write(text.encode())
        stdin.close()


def _text(data: bytes | bytearray) -> str:
    # subprocess's text mode: universal newlines
    return bytes(data).decode(errors="replace").replace("\r\n", "\n").replace("\r", "\n")
