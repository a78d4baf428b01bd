"""The daemon's HTTP API without the kernel: routes against the OpenAPI document, every
kind of bad request, authentication, stack parsing off the event loop within its budget,
env files that could block or flood it, and the one-daemon-per-directory lock. (The TCP
listener's own checks: test_api_tcp.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, UnixConnector
from aiohttp.test_utils import TestClient, TestServer

from linkd.core.api_schema import ROUTES, openapi
from linkd.errors import ConflictError
from linkd.runtime.daemon import api, api_tcp
from linkd.runtime.daemon.daemon import Daemon
from linkd.spec import stack_file


@pytest.fixture
async def client() -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(api.make_app(Daemon()))) as c:
        yield c


def test_the_openapi_document_describes_exactly_the_routes_served() -> None:
    app = api.make_app(Daemon())
    every_route = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    # The topology page's static files are not API: everything else is described.
    page = {("GET", "/ui/"), ("GET", "/ui/{file}")}
    assert page <= every_route
    served = every_route - page
    document = openapi()
    described = {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
    }
    assert served == described
    assert len(described) == len(ROUTES)
    for path, operations in document["paths"].items():
        for operation in operations.values():
            parameters = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert parameters == set(path.replace("}", "{").split("{")[1::2])


async def test_openapi_is_served(client: TestClient[Any, Any]) -> None:
    response = await client.get("/v1/openapi.json")
    assert response.status == 200
    assert (await response.json())["info"]["version"] == "v1"


async def error_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status == status, await response.text()
    body: dict[str, Any] = (await response.json())["error"]
    assert body["status"] == status
    return body


async def test_no_stacks_and_unknown_ones_are_404(client: TestClient[Any, Any]) -> None:
    assert await (await client.get("/v1/stacks")).json() == []
    for method, path in (
        ("GET", "/v1/stacks/shop"),
        ("DELETE", "/v1/stacks/shop"),
        ("GET", "/v1/stacks/shop/containers"),
        ("GET", "/v1/stacks/shop/containers/web-1"),
        ("GET", "/v1/stacks/shop/containers/web-1/logs"),
        ("POST", "/v1/stacks/shop/containers/web-1/stop"),
        ("POST", "/v1/stacks/shop/containers/web-1/start"),
        ("POST", "/v1/stacks/shop/containers/web-1/restart"),
        ("GET", "/v1/stacks/shop/networks"),
        ("GET", "/v1/stacks/shop/containers/web-1/dns?name=db"),
    ):
        body = await error_of(await client.request(method, path), 404)
        assert "no stack shop" in body["message"], (method, path)
    body = await error_of(await client.get("/v1/nothing"), 404)
    assert body["message"] == "Not Found"


@pytest.mark.parametrize(
    ("payload", "path", "fragment"),
    [
        (b"not json", "body", "Expecting value"),
        (b"[1, 2]", "body", "expected an object"),
        (b'{"spec": 3}', "body.spec", "expected an object"),
        (b'{"yaml": 3}', "body.yaml", "expected a string"),
        (b'{"spec": {}, "yaml": "x"}', "body", "exactly one of"),
        (b"{}", "body", "exactly one of"),
        (b'{"spec": {}, "name": "Bad Name"}', "body.name", "stack name"),
        (b'{"spec": {}, "directory": "relative"}', "body.directory", "absolute"),
        (b'{"spec": {}, "colour": "blue"}', "body.colour", "unknown field"),
    ],
)
async def test_bad_create_requests_are_400_naming_the_field(
    client: TestClient[Any, Any], payload: bytes, path: str, fragment: str
) -> None:
    body = await error_of(await client.post("/v1/stacks", data=payload), 400)
    assert any(p["path"] == path and fragment in p["message"] for p in body["problems"]), body


async def test_an_invalid_spec_is_422_with_the_stack_file_path(
    client: TestClient[Any, Any],
) -> None:
    spec = {"services": {"web": {"command": "sleep 1", "ports": ["80:x"]}}}
    body = await error_of(await client.post("/v1/stacks", json={"spec": spec, "name": "s"}), 422)
    assert [p["path"] for p in body["problems"]] == ["services.web.ports[0]"]
    yaml_body = {"yaml": "services:\n  web: {command: sleep 1}\n  db: {}\n", "name": "s"}
    body = await error_of(await client.post("/v1/stacks", json=yaml_body), 422)
    assert body["problems"][0]["path"] == "services.db"
    assert body["problems"][0]["line"] == 3


async def test_tcp_needs_the_bearer_token() -> None:
    token = "s3cret-" + "x" * 32
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    listener = api_tcp.Listener(IPv4Address("127.0.0.1"), port, socket.socket(), token, None)
    app = api.make_app(Daemon(), tcp=listener)
    async with TestClient(TestServer(app, host="127.0.0.1", port=port)) as c:
        body = await error_of(await c.get("/v1/stacks"), 401)
        assert "bearer token" in body["message"]
        await error_of(await c.get("/v1/stacks", headers={"Authorization": "Bearer no"}), 401)
        ok = await c.get("/v1/stacks", headers={"Authorization": f"Bearer {token}"})
        assert ok.status == 200
    listener.sock.close()


# --- stack parsing stays off the event loop ---------------------------------------------


async def test_another_request_is_answered_while_a_slow_parse_runs_and_the_budget_stops_it(
    client: TestClient[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api, "PARSE_BUDGET", 1.0)
    left = threading.Event()

    def slow_parse(*args: Any, check: Callable[[], None], **kw: Any) -> Any:
        try:
            for _ in range(1000):  # 10 s at most, if nothing stopped it
                check()
                time.sleep(0.01)  # a thread that holds no event loop
            raise AssertionError("the budget did not stop the parse")
        finally:
            left.set()

    monkeypatch.setattr(stack_file, "parse_stack", slow_parse)
    started = time.monotonic()
    posting = asyncio.create_task(client.post("/v1/stacks", json={"spec": {}, "name": "s"}))
    await asyncio.sleep(0.1)
    listed = await client.get("/v1/stacks")
    assert listed.status == 200 and await listed.json() == []
    assert not posting.done()  # answered during the parse, not after it
    body = await error_of(await posting, 422)
    assert 1.0 <= time.monotonic() - started < 3
    assert "took longer than 1 s" in body["problems"][0]["message"]
    assert await asyncio.to_thread(left.wait, 2)  # the parse itself stopped


async def test_a_real_parse_over_budget_is_422(
    client: TestClient[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api, "PARSE_BUDGET", 0.02)
    services = {f"s{i}": {"command": "x", "environment": {f"V{j}": "v" for j in range(20)}}
                for i in range(2000)}  # fmt: skip
    body = await error_of(await client.post("/v1/stacks", json={"spec": {"services": services}}),
                          422)  # fmt: skip
    assert "took longer than 0.02 s" in body["problems"][0]["message"]


async def test_a_merge_key_bomb_is_422_at_once(client: TestClient[Any, Any]) -> None:
    lines = ["a: &a {k: v}"] + [
        f"l{i}: &l{i} {{<<: [{','.join([f'*{p}'] * 9)}]}}"
        for i, p in enumerate(["a"] + [f"l{i}" for i in range(1, 8)], 1)
    ]
    text = "\n".join([*lines, "services: {w: {<<: *l8, command: x}}"]) + "\n"
    started = time.monotonic()
    body = await error_of(await client.post("/v1/stacks", json={"yaml": text, "name": "s"}), 422)
    assert time.monotonic() - started < 2
    assert "YAML nodes" in body["problems"][0]["message"]


async def test_a_json_body_nested_too_deeply_is_400(client: TestClient[Any, Any]) -> None:
    deep = b'{"spec": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    body = await error_of(await client.post("/v1/stacks", data=deep), 400)
    assert "nested too deeply" in body["problems"][0]["message"]


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda d: os.mkfifo(d / "x.env"), "is a named pipe (FIFO), not a regular file"),
        (lambda d: (d / "x.env").symlink_to("/dev/zero"), "is a character device"),
        (lambda d: (d / "x.env").mkdir(), "is a directory"),
        (lambda d: (d / "x.env").write_bytes(b"A=1\nB=\xff\n"), "not UTF-8 text (byte 0xff at "
         "line 2, column 3)"),
        (lambda d: (d / "x.env").write_bytes(b"#" * (2 << 20)), "linkd reads at most"),
        (lambda d: None, "No such file or directory"),
    ],
    ids=["fifo", "dev-zero", "directory", "not-utf-8", "too-big", "missing"],
)
async def test_env_files_are_regular_bounded_and_never_block(
    client: TestClient[Any, Any],
    tmp_path: Path,
    make: Callable[[Path], object],
    fragment: str,
) -> None:
    make(tmp_path)
    spec_body = {"services": {"w": {"command": "x", "env_file": "x.env"}}}
    payload = {"spec": spec_body, "name": "s", "directory": str(tmp_path)}
    started = time.monotonic()
    body = await error_of(await client.post("/v1/stacks", json=payload), 422)
    assert time.monotonic() - started < 2
    ((problem),) = body["problems"]
    assert problem["path"] == "services.w.env_file"
    assert 'cannot read env file "x.env"' in problem["message"]
    assert fragment in problem["message"], problem


async def test_a_second_daemon_on_the_same_directory_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LINKD_RUN_DIR", str(tmp_path))
    socket = tmp_path / "linkd.sock"
    ready = asyncio.Event()
    first = asyncio.create_task(api.serve(socket, on_ready=ready.set))
    await asyncio.wait_for(ready.wait(), 10)
    assert socket.stat().st_mode & 0o777 == 0o600  # root only
    async with (
        ClientSession(connector=UnixConnector(path=str(socket))) as session,
        session.get("http://linkd/v1/stacks") as response,
    ):
        assert await response.json() == []
    with pytest.raises(ConflictError, match=rf"another linkd daemon \(pid {os.getpid()}\)"):
        await api.serve(tmp_path / "second.sock")
    first.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await first
    assert not socket.exists()  # the first one cleaned up after itself
