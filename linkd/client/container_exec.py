"""Running a command inside a container from a user's program, as `subprocess.run`
would with `capture_output=True, text=True`: what `AsyncContainer.exec` (and the sync
form's, and `waits.command`) does.

The command is `linkd exec` in a child process (this interpreter, this linkd on its
`PYTHONPATH`), an asyncio subprocess so that the event loop goes on meanwhile. Its output
is collected as it comes, so what came before a timeout is kept; a timeout or a
cancellation kills it, and a timeout is `subprocess.TimeoutExpired` as `run` says it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from pathlib import Path

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


async def run(
    stack: str, container: str, argv: tuple[str, ...], *, directory: Path,
    input: str | None, timeout: float | None, check: bool,
) -> subprocess.CompletedProcess[str]:
    """`argv` run in `container` of `stack` (`linkd exec`), from `directory`."""
    cmd = [sys.executable, "-m", "linkd", "exec", "-p", stack, container, "--", *argv]
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = f"{_PACKAGE_ROOT}{os.pathsep}{path}" if path else _PACKAGE_ROOT
    process = await asyncio.create_subprocess_exec(
        *cmd, stdin=None if input is None else asyncio.subprocess.PIPE,  # run()'s default
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        cwd=str(directory),
    )
    out, err = bytearray(), bytearray()
    try:
        async with asyncio.timeout(timeout):
            await asyncio.gather(
                _feed(process.stdin, input), _drain(process.stdout, out),
                _drain(process.stderr, err),
            )
            code = await process.wait()
    except BaseException as exc:  # a timeout, or cancelled: the command goes too
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await asyncio.shield(process.wait())
        if isinstance(exc, TimeoutError):
            raise subprocess.TimeoutExpired(cmd, timeout or 0, _text(out), _text(err)
                                            ) from None
        raise
    done = subprocess.CompletedProcess(cmd, code, _text(out), _text(err))
    if check:
        done.check_returncode()
    return done


async def _feed(stdin: asyncio.StreamWriter | None, text: str | None) -> None:
    if stdin is None or text is None:
        return
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # it did not read it all
        stdin.write(text.encode())
        await stdin.drain()
    stdin.close()


async def _drain(stream: asyncio.StreamReader | None, into: bytearray) -> None:
    """Collect a pipe's output as it comes: what came before a timeout is kept."""
    while stream is not None and (chunk := await stream.read(65536)):
        into += chunk


def _text(data: bytes | bytearray) -> str:
    # subprocess's text mode: universal newlines
    return bytes(data).decode(errors="replace").replace("\r\n", "\n").replace("\r", "\n")
