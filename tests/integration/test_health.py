"""Healthchecks with real containers: every `test` form, timeouts, retries, start_period
and start_interval; `depends_on` conditions ordering start-up; DNS answering only healthy
instances (resolved with getaddrinfo inside a peer container); `ps` and the API.

Intervals are 0.05-0.2 s, and every wait is a wait-until on the daemon's API.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

from linkd.client.api import Client
from tests.integration.conftest import Linkd

FAST = "interval: 0.1s\n              timeout: 2s\n              retries: 2"


def api(path: str) -> Any:
    return Client().request("GET", path)


def containers(linkd: Linkd) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in api(f"/v1/stacks/{linkd.project}/containers")}


def until(what: str, condition: Callable[[], Any], timeout: float = 15) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout} s")
        time.sleep(0.02)


def health_of(linkd: Linkd, name: str) -> str | None:
    return containers(linkd)[name]["health"]  # type: ignore[no-any-return]


def wait_health(linkd: Linkd, name: str, status: str, timeout: float = 15) -> None:
    until(f"{name} {status}", lambda: health_of(linkd, name) == status, timeout)


def inspect(linkd: Linkd, name: str) -> dict[str, Any]:
    return api(f"/v1/stacks/{linkd.project}/containers/{name}")  # type: ignore[no-any-return]


def lookup(linkd: Linkd, asker: str, name: str) -> dict[str, Any]:
    path = f"/v1/stacks/{linkd.project}/containers/{asker}/dns?name={name}"
    return api(path)  # type: ignore[no-any-return]


def addresses(answer: dict[str, Any]) -> set[str]:
    return {r["data"] for r in answer.get("records", []) if r["type"] == "A"}


GETADDRINFO = """
import socket, sys
for name in sys.argv[1:]:
    try:
        found = sorted({a[4][0] for a in socket.getaddrinfo(name, 80, socket.AF_INET)})
        print(name, " ".join(found))
    except socket.gaierror as e:
        print(name, "error", e.errno)
"""


def getaddrinfo(linkd: Linkd, asker: str, *names: str) -> dict[str, str]:
    """What glibc's getaddrinfo gives inside `asker`: addresses, or `error ERRNO`."""
    result = linkd.exec(asker, "/usr/bin/python3", "-c", GETADDRINFO, *names)
    return dict(line.split(" ", 1) for line in result.stdout.splitlines())


def test_every_test_form_runs_inside_the_container_and_ps_and_the_api_show_health(
    linkd: Linkd,
) -> None:
    linkd.write(f"""
        services:
          cmd:
            command: sleep 300
            healthcheck:
              test: ["CMD", "cat", "/etc/hostname"]
              {FAST}
          shell:
            command: sleep 300
            healthcheck:
              test: ["CMD-SHELL", "test \\"$$(hostname)\\" = shell-1 && echo inside"]
              {FAST}
          string:
            command: sleep 300
            healthcheck:
              test: echo "$$GREETING" from $$(hostname)
              {FAST}
            environment: {{GREETING: hi}}
          none:
            command: sleep 300
            healthcheck:
              test: ["NONE"]
          disabled:
            command: sleep 300
            healthcheck:
              disable: true
          plain:
            command: sleep 300
    """)
    linkd.up()
    for name in ("cmd-1", "shell-1", "string-1"):
        wait_health(linkd, name, "healthy")
    found = containers(linkd)
    assert [found[n]["health"] for n in ("none-1", "disabled-1", "plain-1")] == [None] * 3
    # The probes ran in the container's namespaces, with its environment.
    assert inspect(linkd, "cmd-1")["health"]["log"][-1]["output"] == "cmd-1\n"
    assert inspect(linkd, "shell-1")["health"]["log"][-1]["output"] == "inside\n"
    assert inspect(linkd, "string-1")["health"]["log"][-1]["output"] == "hi from string-1\n"
    detail = inspect(linkd, "cmd-1")
    assert detail["state"]["health"] == "healthy" and detail["health"]["failing_streak"] == 0
    assert 1 <= len(detail["health"]["log"]) <= 5
    assert inspect(linkd, "plain-1")["health"] is None
    table = linkd.run("ps", "-p", linkd.project).stdout
    rows = {line.split()[2]: line for line in table.splitlines()[1:]}
    assert rows["cmd-1"].endswith("running (healthy)"), table
    assert rows["plain-1"].endswith("running"), table


def test_failing_and_timed_out_probes_go_unhealthy_after_retries(linkd: Linkd) -> None:
    linkd.write(f"""
        services:
          failing:
            command: sleep 300
            healthcheck:
              test: ["CMD-SHELL", "echo broken >&2; exit 3"]
              {FAST}
          slow:
            command: sleep 300
            healthcheck:
              test: ["CMD", "sleep", "30"]
              interval: 0.05s
              timeout: 0.2s
              retries: 2
          missing:
            command: sleep 300
            healthcheck:
              test: ["CMD", "no-such-probe"]
              {FAST}
    """)
    linkd.up()
    for name in ("failing-1", "slow-1", "missing-1"):
        wait_health(linkd, name, "unhealthy")
    failing = inspect(linkd, "failing-1")["health"]
    assert failing["failing_streak"] >= 2
    assert failing["log"][-1]["exit_code"] == 3 and failing["log"][-1]["output"] == "broken\n"
    slow = inspect(linkd, "slow-1")["health"]["log"][-1]
    assert slow["exit_code"] == -1
    assert slow["output"] == "Health check exceeded timeout (200ms)"
    assert 0.19 < slow["end"] - slow["start"] < 1.5  # killed at the timeout, not after 30 s
    missing = inspect(linkd, "missing-1")["health"]["log"][-1]
    assert missing["exit_code"] == 127 and "no-such-probe" in missing["output"]
    table = linkd.run("ps", "-p", linkd.project).stdout
    assert "running (unhealthy)" in table


def test_start_period_forgives_failures_and_start_interval_probes_fast(linkd: Linkd) -> None:
    # Each container becomes ready 0.8 s after it starts (its own file in the stack's
    # directory); its probe fails until then.
    ready_later = 'sh -c "sleep 0.8; touch ready-$$(hostname); exec sleep 300"'
    probe = '["CMD-SHELL", "test -f ready-$$(hostname)"]'
    linkd.write(f"""
        services:
          patient:
            command: {ready_later}
            healthcheck:
              test: {probe}
              interval: 0.05s
              retries: 1
              start_period: 30s
              start_interval: 0.05s
          impatient:
            command: {ready_later}
            healthcheck:
              test: {probe}
              interval: 0.05s
              retries: 1
          quick:
            command: {ready_later}
            healthcheck:
              test: {probe}
              interval: 60s
              start_period: 30s
              start_interval: 0.05s
    """)
    linkd.up()
    wait_health(linkd, "impatient-1", "unhealthy")
    assert health_of(linkd, "patient-1") == "starting"  # failures inside start_period
    for name in ("patient-1", "impatient-1", "quick-1"):
        wait_health(linkd, name, "healthy", timeout=10)
    patient = inspect(linkd, "patient-1")["health"]
    assert patient["failing_streak"] == 0
    assert [p["exit_code"] for p in patient["log"]][-1] == 0
    # Healthy through start_interval probes: with the 60 s interval it would still be
    # starting.
    assert len(inspect(linkd, "quick-1")["health"]["log"]) >= 2


def test_service_healthy_starts_the_dependent_only_once_the_dependency_is_healthy(
    linkd: Linkd,
) -> None:
    linkd.write("""
        services:
          db:
            command: sh -c "sleep 0.5; touch db-ready; exec sleep 300"
            deploy: {replicas: 2}
            healthcheck:
              test: ["CMD", "test", "-f", "db-ready"]
              interval: 0.05s
              retries: 100
          app:
            command: >-
              sh -c "if test -f db-ready; then echo after > app-saw;
              else echo before > app-saw; fi; exec sleep 300"
            depends_on:
              db: {condition: service_healthy}
          watcher:
            command: sleep 300
            depends_on:
              db: {condition: service_started}
    """)
    started = time.monotonic()
    linkd.up()
    assert time.monotonic() - started >= 0.5
    assert (linkd.directory / "app-saw").read_text() == "after\n"
    found = containers(linkd)
    assert found["db-1"]["health"] == found["db-2"]["health"] == "healthy"
    assert found["app-1"]["status"] == found["watcher-1"]["status"] == "running"


def test_service_healthy_fails_clearly_when_the_dependency_goes_unhealthy(
    linkd: Linkd,
) -> None:
    linkd.write("""
        services:
          db:
            command: sleep 300
            healthcheck:
              test: ["CMD-SHELL", "echo 'connection refused on 5432'; exit 1"]
              interval: 0.05s
              retries: 2
          app:
            command: sleep 300
            depends_on:
              db: {condition: service_healthy}
    """)
    result = linkd.run("up", "-d", "-p", linkd.project, check=False)
    assert result.returncode != 0
    message = result.stdout + result.stderr
    assert "service app depends on db being healthy, but db-1 is unhealthy" in message
    assert "connection refused on 5432" in message


def test_service_healthy_fails_when_the_dependency_exits(linkd: Linkd) -> None:
    linkd.write("""
        services:
          db:
            command: sh -c "sleep 0.2; exit 4"
            healthcheck:
              test: ["CMD", "false"]
              interval: 10s
          app:
            command: sleep 300
            depends_on:
              db: {condition: service_healthy}
    """)
    result = linkd.run("up", "-d", "-p", linkd.project, check=False)
    assert result.returncode != 0
    assert "but db-1 exited with code 4 before it was healthy" in result.stdout + result.stderr


def test_an_optional_dependency_that_fails_is_a_warning_and_start_goes_on(
    linkd: Linkd,
) -> None:
    linkd.write("""
        services:
          cache:
            command: sleep 300
            healthcheck:
              test: ["CMD", "false"]
              interval: 0.05s
              retries: 1
          migrate:
            command: sh -c "exit 2"
          app:
            command: sleep 300
            depends_on:
              cache: {condition: service_healthy, required: false}
              migrate: {condition: service_completed_successfully, required: false}
              search: {condition: service_started, required: false}
    """)
    up = linkd.up()
    assert "optional dependency on unknown service search" in up.stdout + up.stderr
    found = containers(linkd)
    assert found["app-1"]["status"] == "running"
    assert found["cache-1"]["health"] == "unhealthy"


def test_dns_answers_only_healthy_instances_and_all_names_every_instance(
    linkd: Linkd,
) -> None:
    # A replica is healthy unless a file named after it exists in the stack's directory.
    linkd.write("""
        services:
          web:
            command: sleep 300
            deploy: {replicas: 2}
            networks:
              default: {aliases: [www]}
            healthcheck:
              test: ["CMD-SHELL", "test ! -f sick-$$(hostname)"]
              interval: 0.05s
              retries: 1
          never:
            command: sleep 300
            healthcheck:
              test: ["CMD", "false"]
              interval: 0.05s
              retries: 1000
          client:
            command: sleep 300
    """)
    linkd.up()
    wait_health(linkd, "web-1", "healthy")
    wait_health(linkd, "web-2", "healthy")
    web1 = addresses(lookup(linkd, "client-1", "web-1"))
    web2 = addresses(lookup(linkd, "client-1", "web-2"))
    both = web1 | web2
    seen = getaddrinfo(linkd, "client", "web", "www", "_all.web", "web-2", "never")
    assert seen["web"].split() == sorted(both) and seen["www"].split() == sorted(both)
    assert seen["_all.web"].split() == sorted(both)
    # Not healthy yet: "temporary failure" (EAI_AGAIN), not "no such name" (EAI_NONAME).
    assert seen["never"] == f"error {socket.EAI_AGAIN}"
    assert lookup(linkd, "client-1", "never")["rcode"] == "SERVFAIL"
    assert addresses(lookup(linkd, "client-1", "_all.never"))

    (linkd.directory / "sick-web-2").touch()
    wait_health(linkd, "web-2", "unhealthy")
    seen = getaddrinfo(linkd, "client", "web", "www", "_all.web", "web-2")
    assert seen["web"].split() == sorted(web1) and seen["www"].split() == sorted(web1)
    assert seen["_all.web"].split() == sorted(both)
    assert seen["web-2"].split() == sorted(web2)  # container names resolve regardless
    assert addresses(lookup(linkd, "client-1", "web")) == web1

    (linkd.directory / "sick-web-2").unlink()
    healthy_again = time.monotonic()
    until("web back in DNS", lambda: addresses(lookup(linkd, "client-1", "web")) == both)
    assert time.monotonic() - healthy_again < 5
    assert getaddrinfo(linkd, "client", "web")["web"].split() == sorted(both)


def test_probes_stop_with_the_container_and_start_again_with_it(linkd: Linkd) -> None:
    linkd.write("""
        services:
          web:
            command: sleep 300
            healthcheck:
              test: ["CMD", "true"]
              interval: 0.05s
          client:
            command: sleep 300
    """)
    linkd.up()
    wait_health(linkd, "web-1", "healthy")
    base = f"/v1/stacks/{linkd.project}/containers/web-1"
    stopped = Client().request("POST", f"{base}/stop")
    assert stopped["status"] == "exited"
    count = len(inspect(linkd, "web-1")["health"]["log"])
    time.sleep(0.3)  # several intervals: no probe may run for a stopped container
    assert len(inspect(linkd, "web-1")["health"]["log"]) == count
    assert lookup(linkd, "client-1", "web")["rcode"] == "NXDOMAIN"
    started = Client().request("POST", f"{base}/start")
    assert started["health"] == "starting"
    wait_health(linkd, "web-1", "healthy")
    assert lookup(linkd, "client-1", "web")["rcode"] == "NOERROR"


def test_health_changes_reach_the_event_stream(linkd: Linkd) -> None:
    import asyncio
    import json

    from aiohttp import ClientSession, UnixConnector

    from linkd.runtime.daemon.daemon import socket_path

    linkd.write("""
        services:
          client:
            command: sleep 300
    """)
    linkd.up()  # the daemon runs from here

    async def watch() -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        connector = UnixConnector(path=str(socket_path()))
        async with ClientSession(connector=connector) as s, s.get(
            "http://linkd/v1/events"
        ) as response:
            linkd.write("""
                services:
                  client:
                    command: sleep 300
                  web:
                    command: sleep 300
                    healthcheck:
                      test: ["CMD", "true"]
                      interval: 0.05s
            """)
            await asyncio.to_thread(linkd.up)
            async for line in response.content:
                if line.startswith(b"data: "):
                    events.append(json.loads(line[6:]))
                    if events[-1].get("type") == "health":
                        return events
        return events

    events = asyncio.run(asyncio.wait_for(watch(), 20))
    last = events[-1]
    assert last["container"] == "web-1" and last["health"] == "healthy"
    assert last["exit_code"] == 0 and last["stack"] == linkd.project
