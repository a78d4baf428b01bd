"""A stack of several files through the daemon's HTTP API, without the kernel: the files
given (`overrides`) are merged by the daemon, and the files `include:` and `extends:`
name are read only beneath the stack's directory (issue 16 §4). Each request here is
refused before anything is created (a 422), so nothing runs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from linkd.runtime.daemon import api
from linkd.runtime.daemon.daemon import Daemon


@pytest.fixture
async def client() -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(api.make_app(Daemon()))) as c:
        yield c


async def problems_of(client: TestClient[Any, Any], body: dict[str, Any]) -> list[Any]:
    response = await client.put("/v1/stacks", json=body)
    assert response.status == 422, await response.text()
    found: list[Any] = (await response.json())["error"]["problems"]
    return found


async def test_the_daemon_merges_the_files_sent_and_names_the_one_at_fault(
        client: TestClient[Any, Any], tmp_path: Path) -> None:
    body = {
        "yaml": "services:\n  web:\n    command: sleep 1\n    ports: ['8080:80']\n",
        "source": "compose.yaml", "name": "s", "directory": str(tmp_path),
        "overrides": [
            {"source": "compose.override.yaml",
             "yaml": "services:\n  web:\n    ports: !reset []\n  db: {}\n"},
            {"source": "ci.yaml", "yaml": "services:\n  web:\n    restart: sometimes\n"},
        ],
    }
    found = await problems_of(client, body)
    assert [(p["path"], p["line"]) for p in found] == [("services.web.restart", None),
                                                       ("services.db", None)]
    assert found[0]["message"].startswith("in ci.yaml, line 3:")
    assert found[1]["message"].startswith("in compose.override.yaml, line 4:")


async def test_the_daemon_reads_included_files_only_beneath_the_directory(
        client: TestClient[Any, Any], tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (tmp_path / "outside.yml").write_text("services:\n  db: {command: sleep 1}\n")
    (app / "lib.yml").write_text("services:\n  db: {command: sleep 1, restart: bad}\n")
    body = {"yaml": "include: [../outside.yml, lib.yml]\nservices:\n  web: {command: x}\n",
            "source": "compose.yaml", "name": "s", "directory": str(app)}
    found = await problems_of(client, body)
    messages = [(p["path"], p["message"]) for p in found]
    assert ("include[0]", "cannot read ../outside.yml: is outside the stack's directory "
            f"{app}, and a stack sent to the daemon is read only beneath its directory; move "
            "the file there (or run `linkd up` in the foreground)") in messages
    # the file beneath it is read: its own problem is said, in its own file
    assert any(path == "services.db.restart" and message.startswith("in lib.yml, line 2:")
               for path, message in messages), messages
