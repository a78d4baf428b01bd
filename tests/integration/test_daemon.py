"""The daemon with real stacks: `up -d` hands stacks to it, the API drives containers,
the event stream reports what happens, and concurrent requests end consistent."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, ClientTimeout, UnixConnector

from linkd.runtime.daemon.daemon import socket_path
from tests.integration.conftest import REPO, Linkd, daemon_pids, fresh_linkd, settled, snapshot

STACK = """
    services:
      db:
        command: /usr/bin/python3 -u -c "print('db says hello'); import time; time.sleep(300)"
        expose: ["5432"]
      web:
        command: sleep 300
        links: [db]
"""


def session() -> ClientSession:
    return ClientSession(
        connector=UnixConnector(path=str(socket_path())), timeout=ClientTimeout(total=120)
    )


async def call(s: ClientSession, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    async with s.request(method, f"http://linkd{path}", **kw) as response:
        text = await response.text()
        try:
            return response.status, json.loads(text)
        except json.JSONDecodeError:
            return response.status, text


def test_up_d_hands_the_stack_to_the_daemon_and_the_api_drives_it(linkd: Linkd) -> None:
    linkd.write(STACK)
    linkd.up()
    assert daemon_pids(), "up -d started no daemon"
    asyncio.run(drive(linkd.project))
    assert "is not up" not in linkd.run("ps", "-p", linkd.project).stdout
    linkd.down()  # through the API
    assert linkd.project not in linkd.run("ps", "-a").stdout


async def drive(stack: str) -> None:
    async with session() as s:
        status, stacks = await call(s, "GET", "/v1/stacks")
        assert status == 200 and stack in {x["name"] for x in stacks}
        status, state = await call(s, "GET", f"/v1/stacks/{stack}")
        assert status == 200 and {c["name"] for c in state["containers"]} == {"db-1", "web-1"}
        base = f"/v1/stacks/{stack}/containers"

        events: list[dict[str, Any]] = []
        subscribed = asyncio.Event()

        async def listen() -> None:
            async with s.get("http://linkd/v1/events") as response:
                assert response.headers["Content-Type"] == "text/event-stream"
                async for line in response.content:
                    subscribed.set()
                    if line.startswith(b"data: "):
                        events.append(json.loads(line[6:]))

        listener = asyncio.create_task(listen())
        await asyncio.wait_for(subscribed.wait(), 10)

        status, stopped = await call(s, "POST", f"{base}/db-1/stop")
        assert status == 200 and stopped["status"] == "exited"
        # db-1 left the zone: web-1's lookup of db is NXDOMAIN now.
        status, answer = await call(s, "GET", f"{base}/web-1/dns", params={"name": "db"})
        assert status == 200 and answer["rcode"] == "NXDOMAIN"
        status, started = await call(s, "POST", f"{base}/db-1/start")
        assert status == 200 and started["status"] == "running"
        status, again = await call(s, "POST", f"{base}/db-1/start")
        assert status == 409 and "already running" in again["error"]["message"]
        status, restarted = await call(s, "POST", f"{base}/db-1/restart")
        assert status == 200 and restarted["status"] == "running"
        assert restarted["pid"] != started["pid"]
        status, answer = await call(s, "GET", f"{base}/web-1/dns", params={"name": "db"})
        assert answer["rcode"] == "NOERROR" and answer["records"][0]["type"] == "A"
        assert any("db" in line for line in answer["explain"])

        status, logs = await call(s, "GET", f"{base}/db-1/logs")
        assert status == 200 and "db says hello" in logs
        status, networks = await call(s, "GET", f"/v1/stacks/{stack}/networks")
        assert status == 200 and [n["key"] for n in networks] == ["default"]
        status, bad = await call(s, "GET", f"{base}/db-1/logs", params={"follow": "maybe"})
        assert status == 400 and bad["error"]["problems"][0]["path"] == "query.follow"
        status, missing = await call(s, "GET", f"{base}/nope-1")
        assert status == 404 and "no container nope-1" in missing["error"]["message"]

        await asyncio.sleep(0.2)
        listener.cancel()
        seen = [(e["type"], e.get("container"), e.get("status")) for e in events]
        assert ("lifecycle", "db-1", "exited") in seen
        assert ("lifecycle", "db-1", "running") in seen
        assert any(kind == "dns" for kind, _, _ in seen)
        assert all(e["stack"] == stack for e in events)


def test_fifty_concurrent_requests_creating_and_deleting_stacks_end_consistent() -> None:
    before = snapshot()
    names = [f"c{secrets.token_hex(3)}{i}" for i in range(25)]
    directory = Path(tempfile.mkdtemp(prefix="linkd-test-", dir="/var/tmp"))
    try:
        results = asyncio.run(churn(names, str(directory)))
        assert results["created"] == set(names), results
        assert results["deleted"] == set(names), results
        assert results["left"] == []
    finally:
        for name in names:  # whatever happened, nothing of these stays
            Linkd(directory, name).run("down", "--forget", "-p", name, check=False)
        shutil.rmtree(directory, ignore_errors=True)
    assert settled(before).empty()


async def churn(names: list[str], directory: str) -> dict[str, Any]:
    Linkd(Path(directory), "x").run("ps", "-a", check=False)
    async with session() as s:
        if (await call(s, "GET", "/v1/stacks"))[0] != 200:
            raise AssertionError("no daemon (the first test starts it)")

        async def create(name: str) -> str | None:
            spec = {"services": {"a": {"command": "sleep 300"}, "b": {"command": "sleep 300"}}}
            body = {"name": name, "spec": spec, "directory": directory}
            status, _ = await call(s, "POST", "/v1/stacks", json=body)
            return name if status == 201 else None

        async def delete(name: str) -> str | None:
            status, _ = await call(s, "DELETE", f"/v1/stacks/{name}")
            return name if status == 200 else None

        created = await asyncio.gather(*(create(n) for n in names))
        deleted = await asyncio.gather(*(delete(n) for n in names))
        for name in names:
            Linkd(Path(directory), name).run("down", "--forget", "-p", name, check=False)
        _, left = await call(s, "GET", "/v1/stacks")
        return {
            "created": {n for n in created if n},
            "deleted": {n for n in deleted if n},
            "left": [x["name"] for x in left if x["name"] in names],
        }


def test_up_on_a_changed_file_changes_only_what_changed(linkd: Linkd) -> None:
    linkd.write("""
        services:
          a: {command: sleep 300}
          b: {command: sleep 300, environment: {MODE: one}}
          gone: {command: sleep 300}
    """)
    linkd.up()
    before = container_states(linkd)
    addresses = inspect_addresses(linkd)
    linkd.write("""
        services:
          a: {command: sleep 300}
          b: {command: sleep 300, environment: {MODE: two}}
          c: {command: sleep 300}
    """)
    result = linkd.up()
    assert "added: c-1" in result.stdout and "changed: b-1" in result.stdout
    assert "removed: gone-1" in result.stdout and "kept: a-1" in result.stdout
    after = container_states(linkd)
    assert set(after) == {"a-1", "b-1", "c-1"}
    assert after["a-1"]["pid"] == before["a-1"]["pid"]  # untouched
    assert after["b-1"]["pid"] != before["b-1"]["pid"]  # recreated with its new env
    assert "MODE=two" in linkd.exec("b", "/usr/bin/env").stdout
    new_addresses = inspect_addresses(linkd)
    assert new_addresses["a-1"] == addresses["a-1"] and new_addresses["b-1"] == addresses["b-1"]
    # gone's namespace went, c is resolvable from the untouched a.
    netns = [n for n in os.listdir("/run/netns") if n.startswith(f"linkd-{linkd.project}.")]
    assert sorted(netns) == sorted(f"linkd-{linkd.project}.{n}" for n in ("a-1", "b-1", "c-1"))
    code = "import socket; print(socket.gethostbyname('c'), socket.gethostbyname('b'))"
    got = linkd.py("a", code).stdout.split()
    assert got == [new_addresses["c-1"], new_addresses["b-1"]]


def inspect_addresses(linkd: Linkd) -> dict[str, str]:
    document = json.loads(linkd.run("inspect", "-p", linkd.project).stdout)
    return {c["name"]: c["interfaces"][0]["address"] for c in document["plan"]["containers"]}


def container_states(linkd: Linkd) -> dict[str, dict[str, Any]]:
    document = json.loads(linkd.run("inspect", "-p", linkd.project).stdout)
    return {c["name"]: c for c in document["containers"]}


def subnets(linkd: Linkd) -> dict[str, str]:
    document = json.loads(linkd.run("inspect", "-p", linkd.project).stdout)
    return {n["key"]: n["subnet"] for n in document["plan"]["networks"]}


def test_a_stack_coming_up_during_an_update_never_takes_the_updates_subnet(
    linkd: Linkd,
) -> None:
    """The update's new network is claimed from its planning to its record: a stack that
    plans meanwhile (here while the update waits out a stop's grace period) waits, and
    gets another subnet."""
    slow_stop = 'sh -c "trap \\"\\" TERM; sleep 300"'
    linkd.write(f"""
        services:
          a: {{command: '{slow_stop}', stop_grace_period: 3s}}
    """)
    linkd.up()
    linkd.write(f"""
        services:
          a:
            command: '{slow_stop}'
            stop_grace_period: 3s
            environment: {{CHANGED: "yes"}}
            networks: [default, extra]
        networks:
          extra: {{}}
    """)
    with fresh_linkd() as other:
        other.write("services: {b: {command: sleep 300}}")
        update = subprocess.Popen(
            [sys.executable, "-m", "linkd", "up", "-d", "-p", linkd.project],
            cwd=linkd.directory, env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        try:
            time.sleep(1.0)  # the update is stopping `a` now, for its 3 s grace period
            other.up()
        finally:
            output, _ = update.communicate(timeout=60)
        assert update.returncode == 0, output
        mine, theirs = subnets(linkd), subnets(other)
        assert set(mine) == {"default", "extra"}
        assert not set(mine.values()) & set(theirs.values()), (mine, theirs)
