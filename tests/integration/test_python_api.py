"""linkd.Stack and linkd.client.waits against the real daemon: sync and async forms, a stack
built in Python, what a service handle gives, every wait strategy passing and timing
out, and teardown whatever happens inside the block."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.request
from pathlib import Path

import pytest

from linkd import Stack
from linkd.client import waits
from linkd.client.api import Client
from linkd.client.stacks import StackUp
from linkd.errors import LinkdError, NotFoundError, SpecError
from linkd.runtime.stack.store import lease_path
from tests.integration.conftest import Linkd

APP = """\
import json, os, sys, signal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        status = 200 if self.path in ("/", "/health") else 404
        body = json.dumps({"path": self.path, "host": os.uname().nodename}).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("0.0.0.0", 8080), Handler)
print("app ready on 8080", flush=True)
server.serve_forever()
"""

STACK = """\
services:
  db:
    command: python3 -u -c "import time; print('db says hello'); time.sleep(300)"
    expose: ["5432"]
  web:
    command: python3 -u app.py
    expose: ["8080"]
    scale: 2
    links: [db]
    stop_grace_period: 2s
"""

waits_map = dict[str, waits.Wait | list[waits.Wait]]

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(url: str) -> tuple[int, dict[str, str]]:
    with OPENER.open(url, timeout=5) as response:
        return response.status, json.loads(response.read())


def hosted() -> set[str]:
    return {s["name"] for s in Client().request("GET", "/v1/stacks")}


def write_app(linkd: Linkd) -> Path:
    (linkd.directory / "app.py").write_text(APP)
    return linkd.write(STACK)


def test_sync_form_from_a_stack_file_and_what_a_service_gives(linkd: Linkd) -> None:
    file = write_app(linkd)
    with linkd_up(file, linkd, wait={"web": [waits.http(8080, "/health")]}) as stack:
        assert stack.name == linkd.project and stack.name in hosted()
        web = stack["web"]
        assert len(web.addresses) == 2 and web.address == web.addresses[0]
        assert web.url(8080, "health") == f"http://{web.address}:8080/health"
        status, body = get(web.url(8080, "/health"))  # the host reaches the container
        assert status == 200 and body["host"] == "web-1"
        assert get(f"http://{web.addresses[1]}:8080/")[1]["host"] == "web-2"

        done = web.exec("cat", "/etc/hostname")
        assert done.returncode == 0 and done.stdout.strip() == "web-1"
        assert web.exec("cat", "/etc/hostname", index=2).stdout.strip() == "web-2"
        assert web.exec("sh", "-c", "exit 3").returncode == 3

        assert "db says hello" in stack["db"].logs()
        assert "web-1 | app ready on 8080" in web.logs()  # two replicas: prefixed
        assert set(stack.logs()) == {"db-1", "web-1", "web-2"}

        env = stack.env_for_host("web")
        assert env["LINKD_DB_HOST"] == stack["db"].address
        assert env["LINKD_DB_URL"] == f"tcp://{stack['db'].address}:5432"
        assert "PATH" not in env and stack.env_for_host() == env
        assert stack.resolve("db", from_service="web") == [stack["db"].address]
        assert sorted(stack.resolve("web", from_service="db")) == sorted(web.addresses)
        assert stack.services == ["db", "web"]
        with pytest.raises(NotFoundError, match="has no service nope"):
            stack["nope"]
    assert stack.name not in hosted()
    assert not lease_path(stack.name).exists()  # forgotten, as `linkd down --forget`


def linkd_up(file: Path, runner: Linkd, wait: waits_map | None = None) -> StackUp:
    return Stack.up(file, name=runner.project, wait=wait)


async def test_async_form_with_a_stack_built_in_python(linkd: Linkd) -> None:
    (linkd.directory / "app.py").write_text(APP)
    spec = {
        "services": {
            "web": {"command": "python3 -u app.py", "expose": ["8080"]},
            "client": {"command": ["sleep", "300"], "links": ["web:api"]},
        }
    }
    wait = {"web": waits.http(8080, "/health")}
    async with Stack.up(spec, directory=linkd.directory, wait=wait) as stack:
        assert stack.name.startswith("t") and len(stack.name) == 9  # a unique name
        assert stack.name in hosted()
        status, body = await asyncio.to_thread(get, stack["web"].url(8080))
        assert status == 200 and body["host"] == "web-1"
        assert (await stack.env_for_host())["LINKD_API_HOST"] == stack["web"].address
        await stack.wait({"client": waits.command("true")})
    assert stack.name not in hosted()


def test_the_host_resolves_the_stacks_names_while_names_is_active(linkd: Linkd) -> None:
    file = write_app(linkd)
    with linkd_up(file, linkd, wait={"web": waits.http(8080, "/health")}) as stack:
        web, db = stack["web"], stack["db"]
        with pytest.raises(socket.gaierror):
            socket.getaddrinfo("web", 8080)
        with stack.names():
            found = {a[4][0] for a in socket.getaddrinfo("web", 8080, type=socket.SOCK_STREAM)}
            assert found == set(web.addresses)  # every replica, as a container sees them
            assert socket.gethostbyname("db") == db.address
            assert socket.gethostbyname_ex("web-2")[2] == [web.addresses[1]]
            fqdn = f"db.{stack.name}.linkd"
            assert socket.getaddrinfo(fqdn, None, socket.AF_INET)[0][4][0] == db.address
            # Clients that know nothing of linkd use the same names as the containers.
            assert get("http://web-1:8080/health")[1]["host"] == "web-1"
            # Other names are the host resolver's: unchanged, and no invented answers.
            assert socket.gethostbyname("localhost") == "127.0.0.1"
            assert socket.getaddrinfo("127.0.0.1", 80)[0][4][0] == "127.0.0.1"
            with pytest.raises(socket.gaierror):
                socket.getaddrinfo("nosuchservice", 80)
        with pytest.raises(socket.gaierror):
            socket.gethostbyname("db")
    assert socket.getaddrinfo is socket.__dict__["getaddrinfo"]


def test_default_names_differ_per_up(linkd: Linkd) -> None:
    spec = {"services": {"a": {"command": "sleep 300"}}}
    with Stack.up(spec) as one, Stack.up(spec) as two:
        assert one.name != two.name and {one.name, two.name} <= hosted()
        assert one["a"].address != two["a"].address


def test_every_wait_strategy_passes(linkd: Linkd) -> None:
    file = write_app(linkd)
    wait = {
        "web": [
            waits.port(8080),
            waits.http(8080, "/health", status=200),
            waits.http(8080, "/missing", status=404),
            waits.log(r"app ready on \d+"),
        ],
        "db": waits.command("python3", "-c", "print('ok')"),
    }
    with linkd_up(file, linkd, wait=wait) as stack:
        # Every replica was waited for: both answer now, at once.
        for address in stack["web"].addresses:
            with socket.create_connection((address, 8080), timeout=1):
                pass


IDLE = {
    "services": {
        "idle": {"command": ["python3", "-u", "-c",
                             "import time; print('idle here'); time.sleep(300)"]},
    }
}


def test_every_wait_strategy_times_out_naming_service_strategy_and_last_output(
    linkd: Linkd,
) -> None:
    with Stack.up(IDLE, name=linkd.project, directory=linkd.directory) as stack:
        idle = stack["idle"]
        address = idle.address
        cases: list[tuple[waits.Wait, list[str]]] = [
            (waits.port(8080, timeout=0.3),
             ["port 8080", f"{address}:8080", "Connection refused"]),
            (waits.http(8080, "/health", timeout=0.3),
             [f"GET http://{address}:8080/health", "HTTP 200", "Connection refused"]),
            (waits.log(r"^never$", timeout=0.3),
             ["a log line matching '^never$'", "0 matching line(s)", "idle here"]),
            (waits.command("sh", "-c", "echo not yet; exit 4", timeout=1.5),
             ["command 'sh -c echo not yet; exit 4'", "exit 4: not yet"]),
        ]
        for strategy, words in cases:
            with pytest.raises(waits.WaitTimeout) as caught:
                idle.wait(strategy)
            message = str(caught.value)
            assert message.startswith("service idle: not ready after"), message
            for word in words:
                assert word in message, (word, message)
            assert caught.value.service == "idle" and caught.value.container == "idle-1"


def test_a_wait_that_times_out_in_up_takes_the_stack_down_and_keeps_the_logs(
    linkd: Linkd,
) -> None:
    with (
        pytest.raises(waits.WaitTimeout, match="service idle: not ready") as caught,
        Stack.up(IDLE, name=linkd.project, directory=linkd.directory,
                       wait={"idle": waits.port(9, timeout=0.5)}),
    ):
        pytest.fail("the block must not be entered")
    assert "idle here" in caught.value.logs["idle-1"]
    assert linkd.project not in hosted()


def test_a_container_that_exits_fails_its_wait_at_once(linkd: Linkd) -> None:
    spec = {"services": {"gone": {"command": "sh -c 'echo bye; exit 3'"}}}
    with Stack.up(spec, name=linkd.project, directory=linkd.directory) as stack:
        with pytest.raises(waits.WaitTimeout, match="container gone-1 is exited") as caught:
            stack["gone"].wait(waits.port(80, timeout=30))
        assert caught.value.last.startswith("connect ")  # what the probe saw


def test_teardown_after_an_exception_and_after_ctrl_c_in_the_block(linkd: Linkd) -> None:
    spec = {"services": {"a": {"command": "sleep 300"}}}
    for error in (RuntimeError("boom"), KeyboardInterrupt()):
        name = None
        with pytest.raises(type(error)):  # noqa: SIM117
            with Stack.up(spec, directory=linkd.directory) as stack:
                name = stack.name
                assert name in hosted()
                raise error
        assert name is not None and name not in hosted()
        assert not lease_path(name).exists()


async def test_teardown_when_the_task_is_cancelled(linkd: Linkd) -> None:
    spec = {"services": {"a": {"command": "sleep 300"}}}
    names: list[str] = []
    entered = asyncio.Event()

    async def use() -> None:
        async with Stack.up(spec, directory=linkd.directory) as stack:
            names.append(stack.name)
            entered.set()
            await asyncio.sleep(300)

    task = asyncio.create_task(use())
    await asyncio.wait_for(entered.wait(), 60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert names and names[0] not in hosted()


def test_an_invalid_stack_says_what_and_creates_nothing(linkd: Linkd) -> None:
    bad = {"services": {"web": {"command": "true", "ports": ["80:x"]}}}
    with (
        pytest.raises(SpecError, match=r"services\.web\.ports\[0\]"),
        Stack.up(bad, name=linkd.project),
    ):
        pass
    assert linkd.project not in hosted()


def test_wait_healthy_uses_the_containers_own_healthchecks(linkd: Linkd) -> None:
    spec = {
        "services": {
            "ok": {"command": "sleep 300", "healthcheck": {
                "test": ["CMD-SHELL", "test -e /tmp/ready || { touch /tmp/ready; exit 1; }"],
                "interval": "100ms", "retries": 5}},
            "bad": {"command": "sleep 300", "healthcheck": {
                "test": ["CMD-SHELL", "echo not yet; exit 1"], "interval": "100ms"}},
            "plain": {"command": "sleep 300"},
        }
    }
    with Stack.up(spec, directory=linkd.directory) as stack:
        stack["ok"].wait_healthy(timeout=10)
        assert stack["ok"].replica(1).health() == "healthy"
        unready = r"service bad: .*healthcheck.*health: (starting|unhealthy)"
        with pytest.raises(waits.WaitTimeout, match=unready):
            stack.wait_healthy(timeout=1)
        with pytest.raises(LinkdError, match="service plain has no healthcheck"):
            stack["plain"].wait_healthy(timeout=1)
