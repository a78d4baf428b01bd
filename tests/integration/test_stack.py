"""A whole stack through the real CLI: namespaces, bridges, veths, processes, names."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.integration.conftest import Linkd, settled, snapshot

SERVE = (
    "/usr/bin/python3 -c \"import socket,os;"
    "s=socket.create_server(('::',PORT),family=socket.AF_INET6,dualstack_ipv6=True);"
    "[c.sendall(os.uname().nodename.encode()) or c.close() for c in iter(lambda:s.accept()[0],0)]\""
)


def serve(port: int) -> str:
    return SERVE.replace("PORT", str(port))


CONNECT = """
import socket, sys
for name in sys.argv[1:]:
    with socket.create_connection((name, 9000), timeout=5) as c:
        print(name, "->", c.recv(100).decode())
"""


def connect(linkd: Linkd, service: str, *names: str) -> dict[str, str]:
    result = linkd.exec(service, "/usr/bin/python3", "-c", CONNECT, *names)
    return dict(line.split(" -> ") for line in result.stdout.splitlines())


def test_two_services_talk_over_tcp_by_name(linkd: Linkd) -> None:
    linkd.write(f"""
        services:
          server:
            command: {serve(9000)}
          client:
            command: sleep 300
    """)
    up = linkd.up()
    assert "server-1" in up.stdout and "running" in up.stdout
    linkd.wait_listening("server", 9000)
    assert connect(linkd, "client", "server", "server-1") == {
        "server": "server-1",
        "server-1": "server-1",
    }
    linkd.down()
    assert not any(n.startswith(f"linkd-{linkd.project}.") for n in snapshot().netns)


def test_a_service_on_two_networks_is_reachable_on_both(linkd: Linkd) -> None:
    linkd.write(f"""
        services:
          hub:
            command: {serve(9000)}
            networks: [left, right]
          l:
            command: sleep 300
            networks: [left]
          r:
            command: sleep 300
            networks: [right]
        networks:
          left:
          right:
    """)
    linkd.up()
    linkd.wait_listening("hub", 9000)
    assert connect(linkd, "l", "hub") == {"hub": "hub-1"}
    assert connect(linkd, "r", "hub", "hub.right") == {"hub": "hub-1", "hub.right": "hub-1"}
    interfaces = linkd.exec("hub", "cat", "/proc/net/dev").stdout
    assert "eth0" in interfaces and "eth1" in interfaces
    # l and r share no network: neither name nor address reaches across.
    hosts = linkd.exec("l", "cat", "/etc/hosts").stdout
    assert " r-1" not in hosts and "\tr " not in hosts
    lookup = linkd.py("l", "import socket; socket.getaddrinfo('r', 9000)", check=False)
    assert lookup.returncode != 0 and "gaierror" in lookup.stderr


def test_three_replicas_are_all_reachable_by_name_and_behind_the_service(linkd: Linkd) -> None:
    linkd.write(f"""
        services:
          web:
            command: {serve(9000)}
            scale: 3
          client:
            command: sleep 300
    """)
    up = linkd.up()
    for n in (1, 2, 3):
        assert f"web-{n}" in up.stdout
        linkd.wait_listening(f"web-{n}", 9000)
    assert connect(linkd, "client", "web-1", "web-2", "web-3") == {
        f"web-{n}": f"web-{n}" for n in (1, 2, 3)
    }
    # The system resolver gives every replica's address for the service name.
    got = linkd.py("client", """
        import socket
        print(sorted({a[4][0] for a in socket.getaddrinfo('web', 9000, socket.AF_INET)}))
    """).stdout
    assert len(eval(got)) == 3


def test_container_namespaces_hostname_and_files(linkd: Linkd) -> None:
    linkd.write("""
        services:
          box:
            command: sleep 300
            hostname: boxy
            environment:
              GREETING: hello
            working_dir: /tmp
    """)
    linkd.up()
    assert linkd.exec("box", "hostname").stdout.strip() == "boxy"
    assert linkd.exec("box", "cat", "/etc/hostname").stdout.strip() == "boxy"
    assert linkd.exec("box", "sh", "-c", "echo $GREETING").stdout.strip() == "hello"
    assert linkd.exec("box", "pwd").stdout.strip() == "/tmp"
    # Own PID namespace: the command is PID 2 under linkd's init.
    pids = linkd.exec("box", "sh", "-c", "ls /proc | grep -E '^[0-9]+$'").stdout.split()
    assert "1" in pids and len(pids) < 10
    linkd.exec("box", "touch", "/tmp/only-inside")
    assert not os.path.exists("/tmp/only-inside")
    assert os.uname().nodename != "boxy"
    exit_code = linkd.exec("box", "sh", "-c", "exit 7", check=False).returncode
    assert exit_code == 7


def test_ps_logs_inspect_and_config(linkd: Linkd) -> None:
    linkd.write("""
        services:
          talker:
            command: sh -c 'echo line-one; echo line-two >&2; sleep 300'
    """)
    linkd.up()
    deadline = time.monotonic() + 5
    while "line-two" not in linkd.run("logs", "-p", linkd.project, "talker").stdout:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert linkd.run("logs", "-p", linkd.project, "-n", "1", "talker").stdout == "line-two\n"
    assert linkd.run("logs", "-p", linkd.project, "--tail", "0", "talker").stdout == ""
    refused = linkd.run("logs", "-p", linkd.project, "--tail", "-3", "talker", check=False)
    assert refused.returncode != 0 and "--tail" in refused.stderr
    ps = linkd.run("ps", "-p", linkd.project).stdout
    assert "talker-1" in ps and "running" in ps
    inspected = json.loads(linkd.run("inspect", "-p", linkd.project, "talker").stdout)
    assert inspected[0]["plan"]["netns"] == f"linkd-{linkd.project}.talker-1"
    assert inspected[0]["state"]["status"] == "running"
    config = linkd.run("config", "-p", linkd.project).stdout
    assert "talker:" in config and f"name: {linkd.project}" in config


def test_on_failure_restarts_up_to_its_limit(linkd: Linkd) -> None:
    linkd.write("""
        services:
          flaky:
            command: sh -c 'echo try; exit 3'
            restart: on-failure:2
          steady:
            command: sh -c 'exit 4'
            restart: "no"
    """)
    linkd.up()
    deadline = time.monotonic() + 10
    while True:
        state = {c["name"]: c for c in json.loads(
            linkd.run("inspect", "-p", linkd.project).stdout)["containers"]}
        if state["flaky-1"]["status"] == "exited" and state["steady-1"]["status"] == "exited":
            break
        assert time.monotonic() < deadline, state
        time.sleep(0.1)
    assert state["flaky-1"]["restarts"] == 2 and state["flaky-1"]["exit_code"] == 3
    assert state["steady-1"]["restarts"] == 0 and state["steady-1"]["exit_code"] == 4
    logs = linkd.run("logs", "-p", linkd.project, "flaky").stdout
    assert logs.count("try") == 3


def test_always_restarts_and_stop_uses_the_stop_signal(linkd: Linkd) -> None:
    linkd.write("""
        services:
          again:
            command: sh -c 'sleep 0.2; exit 0'
            restart: always
          stubborn:
            command: sh -c 'trap "" TERM; trap "echo got-int; exit 0" INT; sleep 300 & wait'
            stop_signal: SIGINT
            stop_grace_period: 5s
    """)
    linkd.up()
    deadline = time.monotonic() + 10
    while True:
        doc = json.loads(linkd.run("inspect", "-p", linkd.project, "again").stdout)
        if doc[0]["state"]["restarts"] >= 2:
            break
        assert time.monotonic() < deadline
        time.sleep(0.1)
    started = time.monotonic()
    linkd.down()
    assert time.monotonic() - started < 4  # SIGINT ended it; no wait for the grace period


def test_a_failure_part_way_through_up_leaves_nothing(linkd: Linkd) -> None:
    before = snapshot()
    linkd.write("""
        services:
          first:
            command: sleep 300
          second:
            command: /nonexistent/program
            depends_on: [first]
    """)
    result = linkd.run("up", "-d", "-p", linkd.project, check=False)
    assert result.returncode != 0
    assert "/nonexistent/program" in result.stderr
    assert "first-1: started" in result.stderr  # it did get part-way
    assert settled(before).kernel().empty()
    assert "is not up" in linkd.run("down", "-p", linkd.project).stdout


def test_two_stacks_with_the_same_file_run_side_by_side(linkd: Linkd) -> None:
    linkd.write(f"""
        services:
          server:
            command: {serve(9000)}
          client:
            command: sleep 300
    """)
    other = linkd.project + "b"
    linkd.up()
    try:
        linkd.run("up", "-d", "-p", other)
        linkd.wait_listening("server", 9000)
        addresses = []
        for project in (linkd.project, other):
            doc = json.loads(linkd.run("inspect", "-p", project, "server").stdout)
            addresses.append(doc[0]["plan"]["interfaces"][0]["address"])
        assert addresses[0] != addresses[1]
        assert connect(linkd, "client", "server") == {"server": "server-1"}
    finally:
        linkd.run("down", "--forget", "-p", other)


def test_up_again_changes_nothing_and_a_second_supervisor_is_refused(linkd: Linkd) -> None:
    linkd.write("""
        services:
          one:
            command: sleep 300
    """)
    linkd.up()
    before = linkd.run("ps", "-p", linkd.project).stdout
    again = linkd.up()  # the daemon compares the file with what runs: nothing changed
    assert "updated" not in again.stdout
    assert linkd.run("ps", "-p", linkd.project).stdout == before
    pid = linkd.run("inspect", "-p", linkd.project, "one").stdout
    assert pid == linkd.run("inspect", "-p", linkd.project, "one").stdout
    foreground = linkd.run("up", "-p", linkd.project, check=False, timeout=30)
    assert foreground.returncode != 0 and "already up" in foreground.stderr


def test_ipv6_dual_stack(linkd: Linkd) -> None:
    linkd.write(f"""
        services:
          server:
            command: {serve(9000)}
          client:
            command: sleep 300
        networks:
          default:
            enable_ipv6: true
    """)
    linkd.up()
    linkd.wait_listening("server", 9000)
    got = linkd.py("client", """
        import socket
        addr = socket.getaddrinfo('server', 9000, socket.AF_INET6)[0][4]
        with socket.create_connection(addr[:2], timeout=5) as c:
            print(addr[0], c.recv(100).decode())
    """).stdout.split()
    assert got[0].startswith("fd") and got[1] == "server-1"


def test_invalid_stack_file_creates_nothing(linkd: Linkd) -> None:
    before = snapshot()
    linkd.write("""
        services:
          web:
            command: sleep 1
            ports: ["80:x"]
            links: [nothere]
    """)
    result = linkd.run("up", "-d", "-p", linkd.project, check=False)
    assert result.returncode == 2
    assert "services.web.ports[0]" in result.stderr and "line 5" in result.stderr
    assert "services.web.links[0]" in result.stderr
    assert (snapshot() - before).empty()


def test_foreground_up_exits_with_the_code_of_exit_code_from(linkd: Linkd) -> None:
    linkd.write(f"""
        services:
          server:
            command: {serve(9000)}
          checker:
            command: >-
              /usr/bin/python3 -c "import socket,time,sys; time.sleep(0.3);
              socket.create_connection(('server', 9000), timeout=5); sys.exit(5)"
            depends_on: [server]
    """)
    result = linkd.run("up", "-p", linkd.project, "--exit-code-from", "checker", check=False)
    assert result.returncode == 5, result.stdout + result.stderr
    assert "checker-1" in result.stdout


def test_an_image_not_in_the_store_is_refused_and_nothing_is_created(linkd: Linkd) -> None:
    before = snapshot()
    linkd.write("""
        services:
          db:
            image: postgres:16
    """)
    result = linkd.run("up", "-d", "-p", linkd.project, check=False)
    assert result.returncode != 0
    assert "image postgres:16 is not in the store" in result.stderr, result.stderr
    assert "linkd image load" in result.stderr
    assert settled(before).kernel().empty()


def test_ctrl_c_on_a_foreground_up_takes_the_stack_down(linkd: Linkd) -> None:
    import signal
    import subprocess
    import sys

    from tests.integration.conftest import REPO

    before = snapshot()
    linkd.write("""
        services:
          a:
            command: sleep 300
          b:
            command: sleep 300
            depends_on: [a]
    """)
    up = subprocess.Popen(
        [sys.executable, "-m", "linkd", "up", "-p", linkd.project],
        cwd=linkd.directory, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert up.stdout is not None
    for line in up.stdout:
        if line.startswith("STACK"):  # the table: everything is up
            break
    up.send_signal(signal.SIGINT)
    rest = up.stdout.read()
    assert up.wait(timeout=30) == 130
    assert "container b-1: stopped" in rest and "container a-1: stopped" in rest
    assert rest.index("b-1: stopped") < rest.index("a-1: stopped")  # reverse dependency order
    assert settled(before).kernel().empty()


def test_a_stack_under_tmp_sees_its_directory_but_not_the_rest_of_tmp(tmp_path: Path) -> None:
    import secrets

    import tests.integration.conftest as conftest

    runner = conftest.Linkd(tmp_path, "t" + secrets.token_hex(4))
    secret = tmp_path.parent / f"host-only-{runner.project}"
    secret.write_text("host")
    (tmp_path / "data.txt").write_text("from the stack directory\n")
    runner.write("""
        services:
          reader:
            command: sleep 300
    """)
    try:
        runner.up()
        assert runner.exec("reader", "cat", "data.txt").stdout == "from the stack directory\n"
        assert runner.exec("reader", "pwd").stdout.strip() == str(tmp_path)
        hidden = runner.exec("reader", "cat", str(secret), check=False)
        assert hidden.returncode != 0
        runner.exec("reader", "touch", "/tmp/made-inside")
        assert not os.path.exists("/tmp/made-inside")
    finally:
        runner.run("down", "--forget", "-p", runner.project, check=False)
        secret.unlink()


def test_compose_names_with_underscores_dots_and_a_long_project_name(linkd: Linkd) -> None:
    """What real Compose files use: `matomo_db`, `peer0.org1.example.com`, and a project
    named after a long directory: reached by name through the system resolver."""
    long = Linkd(linkd.directory, linkd.project + "-" + "x" * 60)
    long.write(f"""
        services:
          matomo_db:
            command: {serve(9000)}
          peer0.org1.example.com:
            command: {serve(9000)}
          client:
            command: sleep 300
    """)
    try:
        long.up()
        long.wait_listening("matomo_db", 9000)
        long.wait_listening("peer0.org1.example.com", 9000)
        assert connect(long, "client", "matomo_db", "peer0.org1.example.com") == {
            "matomo_db": "matomo_db-1",
            "peer0.org1.example.com": "peer0.org1.example.com-1",
        }
    finally:
        long.run("down", "--forget", "-p", long.project, check=False)
    assert not any(n.startswith(f"linkd-{long.project}.") for n in snapshot().netns)


def test_the_projects_env_file_reaches_the_containers_through_the_daemon(
    linkd: Linkd, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compose's `.env` beside the stack file, `--env-file` instead of it, and the shell's
    environment over both: through `up -d` (the daemon reads the files) and `config`."""
    linkd.write("""
        services:
          app:
            command: sleep 300
            environment: {MODE: "${MODE:?set MODE in .env}", LEVEL: "${LEVEL:-none}"}
    """)
    (linkd.directory / ".env").write_text("MODE=from-dotenv\nLEVEL=3\n")
    (linkd.directory / "ci.env").write_text("MODE=from-ci\n")
    monkeypatch.delenv("MODE", raising=False)
    monkeypatch.delenv("LEVEL", raising=False)
    config = linkd.run("config", "--env-file", "ci.env").stdout
    assert "MODE: from-ci" in config and "LEVEL: none" in config
    monkeypatch.setenv("LEVEL", "from-shell")
    linkd.up()
    env = linkd.exec("app", "/usr/bin/env").stdout.splitlines()
    assert "MODE=from-dotenv" in env and "LEVEL=from-shell" in env
    missing = linkd.run("config", "--env-file", "nowhere.env", check=False)
    assert missing.returncode != 0 and "nowhere.env" in missing.stderr


def test_container_name_names_the_container_in_dns_ps_and_its_hostname(linkd: Linkd) -> None:
    linkd.write(f"""
        services:
          db:
            command: {serve(9000)}
            container_name: shop_mysql
          client:
            command: sleep 300
    """)
    linkd.up()
    linkd.wait_listening("db", 9000)
    assert connect(linkd, "client", "shop_mysql", "db") == {
        "shop_mysql": "shop_mysql", "db": "shop_mysql"}  # nodename: the container's name
    assert "shop_mysql" in linkd.run("ps", "-p", linkd.project).stdout


def test_extra_hosts_resolve_inside_the_container(linkd: Linkd) -> None:
    linkd.write("""
        services:
          app:
            command: sleep 300
            extra_hosts: ["legacy.db:10.99.0.5", "host.docker.internal:host-gateway"]
    """)
    linkd.up()
    gateway = json.loads(linkd.run("inspect", "-p", linkd.project).stdout)[
        "plan"]["containers"][0]["interfaces"][0]["gateway"]
    out = linkd.py("app", """
        import socket
        for name in ("legacy.db", "host.docker.internal"):
            print(name, socket.getaddrinfo(name, 80, socket.AF_INET)[0][4][0])
    """).stdout.split()
    assert out == ["legacy.db", "10.99.0.5", "host.docker.internal", gateway]


def test_ps_filters_containers_by_label(linkd: Linkd) -> None:
    linkd.write("""
        services:
          web: {command: sleep 300, labels: {tier: front}}
          db: {command: sleep 300, labels: [tier=back]}
    """)
    linkd.up()
    front = linkd.run("ps", "-p", linkd.project, "--filter", "label=tier=front").stdout
    assert "web-1" in front and "db-1" not in front
    assert json.loads(linkd.run("inspect", "-p", linkd.project).stdout)["plan"][
        "containers"][1]["labels"] == [["tier", "back"]]
    bad = linkd.run("ps", "-p", linkd.project, "--filter", "status=running", check=False)
    assert bad.returncode != 0 and "expected label=KEY" in bad.stderr


def test_ulimits_apply_to_the_containers_command(linkd: Linkd) -> None:
    show = ("import resource as r, time; print(r.getrlimit(r.RLIMIT_NOFILE), "
            "r.getrlimit(r.RLIMIT_CORE), flush=True); time.sleep(300)")
    linkd.write(f"""
        services:
          app:
            command: ["/usr/bin/python3", "-c", "{show}"]
            ulimits:
              nofile: {{soft: 1234, hard: 4321}}
              core: -1
    """)
    linkd.up()
    deadline = time.monotonic() + 10
    while "(1234" not in (log := linkd.run("logs", "-p", linkd.project, "app").stdout):
        assert time.monotonic() < deadline, log
        time.sleep(0.05)
    assert "(1234, 4321) (-1, -1)" in log


def test_profiles_from_the_command_line_and_the_environment(
    linkd: Linkd, monkeypatch: pytest.MonkeyPatch
) -> None:
    linkd.write("""
        services:
          web: {command: sleep 300}
          debug: {command: sleep 300, profiles: [debug]}
    """)
    monkeypatch.delenv("COMPOSE_PROFILES", raising=False)
    assert "debug:" not in linkd.run("config").stdout
    assert "debug:" in linkd.run("config", "--profile", "debug").stdout
    monkeypatch.setenv("COMPOSE_PROFILES", "debug")
    linkd.up()  # through the daemon: the environment carries the profiles
    ps = linkd.run("ps", "-p", linkd.project).stdout
    assert "debug-1" in ps and "web-1" in ps


def test_tmpfs_is_the_containers_own_and_a_missing_host_target_is_named(
    linkd: Linkd,
) -> None:
    """A host command's tmpfs hides the host's directory in the container alone."""
    linkd.write("""
        services:
          app:
            command: sleep 300
            tmpfs: ["/mnt:size=1m,mode=0700"]
    """)
    linkd.up()
    inside = linkd.exec("app", "/bin/sh", "-c",
                        "echo hi > /mnt/linkd-test && grep ' /mnt ' /proc/self/mounts").stdout
    assert "tmpfs /mnt tmpfs" in inside and "size=1024k" in inside and "noexec" in inside
    assert not Path("/mnt/linkd-test").exists()  # written in the container's tmpfs only
    linkd.write("""
        services:
          app:
            command: sleep 300
            tmpfs: ["/linkd-no-such-dir"]
    """)
    failed = linkd.run("up", "-d", "-p", linkd.project, check=False)
    assert failed.returncode != 0 and "/linkd-no-such-dir is not a directory" in failed.stderr
