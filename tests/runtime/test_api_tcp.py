"""The API's TCP listener: `--tcp` checked (and its port bound) before any stack is
recovered, the token file's rules, a generated token, and the `Host` and `Origin` checks
on a daemon really serving loopback TCP."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession

from linkd.errors import UsageError
from linkd.runtime.daemon import api, api_tcp
from linkd.runtime.daemon.daemon import Daemon

TOKEN = "0123456789abcdef" * 4  # 64 characters


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def token_file(directory: Path, text: str = TOKEN, mode: int = 0o600) -> Path:
    path = directory / "token"
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


# --- --tcp ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["127.0.0.1:8080", "127.1.2.3:1", "[::1]:80", "127.0.0.1:0"])
def test_loopback_addresses_are_taken(text: str) -> None:
    address, port = api_tcp.parse_address(text)
    assert address.is_loopback and 0 <= port <= 65535


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("localhost:8080", "not an IP address"),
        ("0.0.0.0:8080", "not a loopback address"),
        ("192.168.1.1:8080", "not a loopback address"),
        ("[::]:8080", "not a loopback address"),
        ("::1:8080", "in brackets"),
        ("127.0.0.1", "expected ADDR:PORT"),
        ("127.0.0.1:http", "expected ADDR:PORT"),
        ("127.0.0.1:70000", "expected ADDR:PORT"),
        (":8080", "expected ADDR:PORT"),
    ],
)
def test_other_addresses_are_refused_naming_the_option(text: str, fragment: str) -> None:
    with pytest.raises(UsageError, match=r"^--tcp ") as info:
        api_tcp.parse_address(text)
    assert fragment in str(info.value)


def test_a_port_in_use_is_refused() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        address, _ = api_tcp.parse_address(f"127.0.0.1:{port}")
        with pytest.raises(UsageError, match="in use by another program"):
            api_tcp.bind(address, port)


# --- the token -------------------------------------------------------------------------------


def test_a_good_token_file_is_read(tmp_path: Path) -> None:
    assert api_tcp.read_token(token_file(tmp_path)) == TOKEN


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o660])
def test_a_token_file_group_or_others_can_reach_is_refused(tmp_path: Path, mode: int) -> None:
    path = token_file(tmp_path, mode=mode)
    with pytest.raises(UsageError, match=f"mode {mode:04o} lets group or others") as info:
        api_tcp.read_token(path)
    assert f"chmod 600 {path}" in str(info.value)


def test_a_token_file_of_another_user_is_refused(tmp_path: Path) -> None:
    path = token_file(tmp_path)
    os.chown(path, 65534, 65534)
    with pytest.raises(UsageError, match="owned by uid 65534"):
        api_tcp.read_token(path)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("x" * 31, "has 31 bytes; it needs at least 32"),
        ("", "has 0 bytes"),
        ("x" * 20 + " " + "x" * 20, "printable ASCII characters without spaces"),
        ("é" * 20, "printable ASCII"),
    ],
)
def test_a_short_or_odd_token_is_refused(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(UsageError, match=r"^--token-file ") as info:
        api_tcp.read_token(token_file(tmp_path, text))
    assert fragment in str(info.value)


def test_a_token_file_that_is_not_a_regular_file_is_refused_without_blocking(
    tmp_path: Path,
) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(UsageError, match="named pipe"):
        api_tcp.read_token(fifo)
    with pytest.raises(UsageError, match="No such file"):
        api_tcp.read_token(tmp_path / "missing")


def test_a_new_token_is_256_bits_in_a_new_0600_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LINKD_RUN_DIR", str(tmp_path))
    old = tmp_path / api_tcp.TOKEN_NAME
    old.write_text("old\n")
    old.chmod(0o644)
    old_inode = old.stat().st_ino
    token, path = api_tcp.new_token()
    assert path == old
    assert path.read_text() == token + "\n"
    assert len(bytes.fromhex(token)) == 32
    info = path.stat()
    assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_ino != old_inode
    assert api_tcp.read_token(path) == token
    assert api_tcp.new_token()[0] != token


# --- ordering: nothing is recovered before --tcp is known to work ---------------------------


@pytest.mark.parametrize(
    "wrong", ["address", "name", "port in use", "token mode", "short token"], ids=lambda w: w
)
async def test_a_wrong_tcp_stops_the_daemon_before_it_recovers_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wrong: str
) -> None:
    monkeypatch.setenv("LINKD_RUN_DIR", str(tmp_path))
    recovered: list[bool] = []

    async def recover(self: Daemon) -> list[str]:
        recovered.append(True)
        return []

    monkeypatch.setattr(Daemon, "recover", recover)
    with contextlib.ExitStack() as stack:
        port = free_port()
        tcp, path = f"127.0.0.1:{port}", token_file(tmp_path)
        if wrong == "address":
            tcp = f"0.0.0.0:{port}"
        elif wrong == "name":
            tcp = f"localhost:{port}"
        elif wrong == "port in use":
            taken = stack.enter_context(socket.socket())
            taken.bind(("127.0.0.1", port))
            taken.listen()
        elif wrong == "token mode":
            path.chmod(0o644)
        else:
            path = token_file(tmp_path, "short")
        with pytest.raises(UsageError):
            await api.serve(tmp_path / "linkd.sock", tcp=tcp, token_file=path)
    assert recovered == []
    assert not (tmp_path / "linkd.sock").exists()


# --- a daemon serving TCP ----------------------------------------------------------------


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, **tcp: Any) -> AsyncIterator[None]:
    ready = asyncio.Event()
    task = asyncio.create_task(api.serve(tmp_path / "linkd.sock", on_ready=ready.set, **tcp))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def ask(port: int, headers: dict[str, str]) -> tuple[int, Any]:
    async with (
        ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/v1/stacks", headers=headers) as response,
    ):
        return response.status, await response.json()


async def test_the_tcp_listener_checks_host_origin_and_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LINKD_RUN_DIR", str(tmp_path))
    port = free_port()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with serving(tmp_path, tcp=f"127.0.0.1:{port}", token_file=token_file(tmp_path)):
        assert await ask(port, auth) == (200, [])
        assert (await ask(port, {**auth, "Host": f"localhost:{port}"}))[0] == 200
        assert (await ask(port, {**auth, "Origin": f"http://127.0.0.1:{port}"}))[0] == 200
        status, body = await ask(port, {})
        assert status == 401 and "bearer token" in body["error"]["message"]
        for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1:{port + 1}",
                     "127.0.0.1", f"localhost.evil.example:{port}"):  # fmt: skip
            status, body = await ask(port, {**auth, "Host": host})
            assert status == 403, host
            assert "DNS rebinding" in body["error"]["message"], host
        for origin in ("http://evil.example", f"http://localhost:{port + 1}", "null",
                       f"https://127.0.0.1:{port}"):  # fmt: skip
            status, body = await ask(port, {**auth, "Origin": origin})
            assert status == 403, origin
            assert "cross-origin request" in body["error"]["message"], origin
        # The unix socket is root's alone; it needs none of this.
        from aiohttp import UnixConnector

        async with (
            ClientSession(connector=UnixConnector(path=str(tmp_path / "linkd.sock"))) as s,
            s.get("http://whatever/v1/stacks", headers={"Origin": "http://x"}) as response,
        ):
            assert response.status == 200


async def test_without_a_token_file_the_daemon_makes_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("LINKD_RUN_DIR", str(tmp_path))
    port = free_port()
    caplog.set_level("INFO", logger="linkd")
    async with serving(tmp_path, tcp=f"[::1]:{port}" if socket.has_ipv6 else f"127.0.0.1:{port}"):
        path = tmp_path / api_tcp.TOKEN_NAME
        assert f"token (256 bits) written to {path}" in caplog.text
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        token = path.read_text().strip()
        host = "[::1]" if socket.has_ipv6 else "127.0.0.1"
        async with (
            ClientSession() as session,
            session.get(f"http://{host}:{port}/v1/stacks",
                        headers={"Authorization": f"Bearer {token}"}) as response,
        ):  # fmt: skip
            assert response.status == 200
