"""The daemon's HTTP API without the kernel: routes against the OpenAPI document, every
kind of bad request, authentication, and the one-daemon-per-directory lock."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, UnixConnector
from aiohttp.test_utils import TestClient, TestServer

from linkd.api_schema import ROUTES, openapi
from linkd.errors import ConflictError
from linkd.runtime import api
from linkd.runtime.daemon import Daemon


@pytest.fixture
async def client() -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(api.make_app(Daemon()))) as c:
        yield c


def test_the_openapi_document_describes_exactly_the_routes_served() -> None:
    app = api.make_app(Daemon())
    served = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
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
    async with TestClient(TestServer(api.make_app(Daemon(), token="s3cret"))) as c:
        body = await error_of(await c.get("/v1/stacks"), 401)
        assert "bearer token" in body["message"]
        await error_of(await c.get("/v1/stacks", headers={"Authorization": "Bearer no"}), 401)
        ok = await c.get("/v1/stacks", headers={"Authorization": "Bearer s3cret"})
        assert ok.status == 200


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
