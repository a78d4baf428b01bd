"""Isolation and published ports with real processes in real containers.

Every reachability check sends real TCP, UDP and ICMP (a raw-socket echo request) and
waits at most a second for the answer; the checks of one probe run in parallel. The
"outside" is a namespace this test creates, joined to the host by a veth pair on
198.18.x.0/30 (RFC 2544's benchmarking range): its server sees who connects, and it has
no route to linkd's subnets, so an answer proves the masquerade.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from linkd.runtime.stack import store
from tests.integration.conftest import Linkd, fresh_linkd

SERVER = r"""
import os, socket, sys, threading
name = os.uname().nodename
def tcp(port):
    s = socket.create_server(("0.0.0.0", port))
    while True:
        c, peer = s.accept()
        c.sendall(f"{name} {peer[0]}".encode())
        c.close()
def udp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    while True:
        data, peer = s.recvfrom(100)
        s.sendto(f"{name} {peer[0]}".encode(), peer)
for spec in sys.argv[1:]:
    port, proto = spec.split("/")
    threading.Thread(target=tcp if proto == "tcp" else udp, args=(int(port),)).start()
"""

PROBE = r"""
import json, os, socket, struct, sys, threading, time
def tcp(a, p, i):
    with socket.create_connection((a, p), timeout=1) as c:
        return c.recv(100).decode()
def udp(a, p, i):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1)
        s.sendto(b"x", (a, p))
        return s.recv(100).decode()
def csum(b):
    total = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF
def icmp(a, p, i):
    ident = (os.getpid() * 31 + i) & 0xFFFF
    body = struct.pack("!BBHHH", 8, 0, 0, ident, 1) + b"linkd!"
    packet = struct.pack("!BBHHH", 8, 0, csum(body), ident, 1) + b"linkd!"
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
        s.settimeout(1)
        s.sendto(packet, (a, 0))
        deadline = time.monotonic() + 1
        while time.monotonic() < deadline:
            data, peer = s.recvfrom(1500)
            ihl = (data[0] & 15) * 4
            kind, _, _, got, _ = struct.unpack("!BBHHH", data[ihl:ihl + 8])
            if kind == 0 and got == ident and peer[0] == a:
                return "pong"
    raise TimeoutError
results = {}
def run(i, target):
    proto, addr, port = target.split(":")
    try:
        results[target] = {"tcp": tcp, "udp": udp, "icmp": icmp}[proto](addr, int(port), i)
    except OSError:
        results[target] = None
threads = [threading.Thread(target=run, args=(i, t)) for i, t in enumerate(sys.argv[1:])]
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps(results))
"""


def probe_in(linkd: Linkd, service: str, *targets: str) -> dict[str, str | None]:
    out = linkd.exec(service, "/usr/bin/python3", "-c", PROBE, *targets).stdout
    result: dict[str, str | None] = json.loads(out)
    return result


def probe_host(*targets: str, netns: str | None = None) -> dict[str, str | None]:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    out = subprocess.run([*prefix, sys.executable, "-c", PROBE, *targets],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    result: dict[str, str | None] = json.loads(out)
    return result


def all_ways(address: str, tcp: int = 7000, udp: int = 7001) -> list[str]:
    return [f"tcp:{address}:{tcp}", f"udp:{address}:{udp}", f"icmp:{address}:0"]


def addresses(linkd: Linkd) -> dict[tuple[str, str], str]:
    """(container, network) -> address, and (network, "gateway") -> gateway."""
    plan = json.loads(linkd.run("inspect", "-p", linkd.project).stdout)["plan"]
    found = {}
    for c in plan["containers"]:
        for i in c["interfaces"]:
            found[(c["name"], i["network"])] = i["address"]
            found[(i["network"], "gateway")] = i["gateway"]
    return found


def table(project: str) -> str | None:
    listed = subprocess.run(["nft", "list", "table", "inet", f"linkd-{project}"],
                            capture_output=True, text=True)
    return listed.stdout if listed.returncode == 0 else None


def linkd_tables() -> set[str]:
    listed = subprocess.run(["nft", "list", "tables", "inet"], capture_output=True, text=True)
    return {line.split()[-1] for line in listed.stdout.splitlines()
            if line.split()[-1].startswith("linkd-")}


@pytest.fixture(autouse=True)
def leaves_no_table() -> Iterator[None]:
    """Runs after each test's stacks are down (fixtures end in reverse order)."""
    before = linkd_tables()
    yield
    left = linkd_tables() - before
    for name in left:  # made by this test: a stack's table
        subprocess.run(["nft", "delete", "table", "inet", name], capture_output=True)
    assert not left, f"tables left: {left}"


@dataclass
class Outside:
    netns: str
    host_address: str  # the host's end of the veth
    address: str  # the server's, inside the namespace
    port: int = 9999


@pytest.fixture
def outside() -> Iterator[Outside]:
    tag = secrets.token_hex(3)
    netns, link = f"fwout-{tag}", f"fwo{tag}"
    x = int(tag[:2], 16)
    host_address, address = f"198.18.{x}.1", f"198.18.{x}.2"

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)

    server = None
    try:
        ip("netns", "add", netns)
        ip("link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", netns)
        ip("addr", "add", f"{host_address}/30", "dev", link)
        ip("link", "set", link, "up")
        ip("-n", netns, "addr", "add", f"{address}/30", "dev", "eth0")
        ip("-n", netns, "link", "set", "eth0", "up")
        ip("-n", netns, "link", "set", "lo", "up")
        server = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", SERVER,
                                   "9999/tcp"])
        deadline = time.monotonic() + 10
        while probe_host(f"tcp:{address}:9999", netns=netns)[f"tcp:{address}:9999"] is None:
            assert time.monotonic() < deadline, "the outside server did not start"
            time.sleep(0.05)
        yield Outside(netns, host_address, address)
    finally:
        if server is not None:
            server.kill()  # started by this fixture
            server.wait()
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)


@pytest.fixture
def other() -> Iterator[Linkd]:
    """A second stack, in a directory of its own."""
    with fresh_linkd() as runner:
        yield runner


def write_server(linkd: Linkd) -> None:
    (linkd.directory / "srv.py").write_text(SERVER)


def free_ports(count: int) -> int:
    """The first of `count` consecutive ports free for TCP and UDP right now."""
    for base in range(21000 + secrets.randbelow(20000), 60000, 7):
        try:
            with contextlib.ExitStack() as held:
                for port in range(base, base + count):
                    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                        s = held.enter_context(socket.socket(socket.AF_INET, kind))
                        s.bind(("0.0.0.0", port))
            return base
        except OSError:
            continue
    raise AssertionError("no free ports")


def test_containers_reach_only_what_they_share_and_internal_has_no_way_out(
    linkd: Linkd, other: Linkd, outside: Outside
) -> None:
    write_server(linkd)
    write_server(other)
    serve = "python3 srv.py 7000/tcp 7001/udp"
    linkd.write(f"""
        services:
          a: {{command: {serve}, networks: [front]}}
          b: {{command: {serve}, networks: [front, back]}}
          # NET_ADMIN: c changes its own routes below (containers lack it by default)
          c: {{command: {serve}, networks: [back], cap_add: [NET_ADMIN]}}
        networks:
          front:
          back: {{internal: true}}
    """)
    other.write(f"""
        services:
          d: {{command: {serve}}}
    """)
    linkd.up()
    other.up()
    for service in ("a", "b", "c"):
        linkd.wait_listening(service, 7000)
    other.wait_listening("d", 7000)
    at = addresses(linkd)
    d = addresses(other)[("d-1", "default")]
    a_front, b_front = at[("a-1", "front")], at[("b-1", "front")]
    b_back, c_back = at[("b-1", "back")], at[("c-1", "back")]
    far = f"tcp:{outside.address}:{outside.port}"

    # a shares front with b: everything passes; c (back only) and d (another stack):
    # nothing does. The outside answers a through the masquerade.
    seen = probe_in(linkd, "a", *all_ways(b_front), *all_ways(c_back), *all_ways(d), far)
    assert all(seen[t] for t in all_ways(b_front)), seen
    assert seen[f"tcp:{b_front}:7000"] == f"b-1 {a_front}"  # no NAT between peers
    assert not any(seen[t] for t in all_ways(c_back) + all_ways(d)), seen
    answer = seen[far]
    assert answer is not None and answer.split()[1] == outside.host_address, seen

    # b reaches c on back and a on front; d reaches nothing of this stack.
    seen = probe_in(linkd, "b", *all_ways(c_back), *all_ways(a_front))
    assert all(seen.values()), seen
    seen = probe_in(other, "d", *all_ways(a_front), *all_ways(b_back), *all_ways(c_back))
    assert not any(seen.values()), seen

    # c, on an internal network only, has no way out even with a default route: not to
    # the outside, not to the host (the gateway), not to front.
    back_gateway = at[("back", "gateway")]
    linkd.exec("c", "ip", "route", "add", "default", "via", back_gateway)
    seen = probe_in(linkd, "c", far, *all_ways(a_front), f"tcp:{back_gateway}:22",
                    f"icmp:{back_gateway}:0", *all_ways(b_back))
    assert seen == {**{t: None for t in seen}, **{t: seen[t] for t in all_ways(b_back)}}
    assert all(seen[t] for t in all_ways(b_back)), seen
    # The host reaches every container, internal ones included.
    seen = probe_host(*all_ways(c_back), *all_ways(a_front))
    assert all(seen.values()), seen


@pytest.fixture
def host_server() -> Iterator[int]:
    """A server of the host's own (TCP on the first two ports, UDP on the third)."""
    base = free_ports(3)
    server = subprocess.Popen([sys.executable, "-c", SERVER, f"{base}/tcp", f"{base + 1}/tcp",
                               f"{base + 2}/udp"])
    try:
        deadline = time.monotonic() + 10
        while probe_host(f"tcp:127.0.0.1:{base}")[f"tcp:127.0.0.1:{base}"] is None:
            assert time.monotonic() < deadline, "the host's server did not start"
            time.sleep(0.05)
        yield base
    finally:
        server.kill()  # started by this fixture
        server.wait()


def test_the_hosts_services_are_reached_only_on_the_ports_the_stack_allows(
    linkd: Linkd, host_server: int
) -> None:
    allowed, closed, udp = host_server, host_server + 1, host_server + 2
    linkd.write(f"""
        services:
          a: {{command: sleep 300, networks: [front]}}
          c: {{command: sleep 300, networks: [back]}}
        networks:
          front:
          back: {{internal: true}}
        x-linkd:
          host: ["{allowed}"]
    """)
    linkd.up()
    at = addresses(linkd)
    front, back = at[("front", "gateway")], at[("back", "gateway")]
    seen = probe_in(linkd, "a", f"tcp:{front}:{allowed}", f"tcp:{front}:{closed}",
                    f"udp:{front}:{udp}", f"icmp:{front}:0")
    assert seen.pop(f"tcp:{front}:{allowed}") is not None, seen
    assert seen == {t: None for t in seen}  # nothing else of the host's
    # An internal network reaches nothing of the host's, allowed ports included.
    seen = probe_in(linkd, "c", f"tcp:{back}:{allowed}", f"tcp:{front}:{allowed}")
    assert seen == {t: None for t in seen}
    # The host still reaches the containers (replies to it pass).
    assert all(probe_host(f"icmp:{at[('a-1', 'front')]}:0").values())


def test_published_ports_from_the_host_containers_and_outside(
    linkd: Linkd, outside: Outside
) -> None:
    write_server(linkd)
    base = free_ports(6)
    p1, p2, r, p4 = base, base + 1, base + 2, base + 5  # r..r+2 a range
    linkd.write(f"""
        services:
          web:
            command: python3 srv.py 80/tcp 81/tcp 8000/tcp 8001/tcp 8002/tcp 53/udp 82/tcp
            networks: [front]
            ports: ["{p1}:80", "127.0.0.1:{p2}:81", "{r}-{r + 2}:8000-8002", "{p4}:53/udp", "82"]
          client: {{command: sleep 300, networks: [front]}}
          far: {{command: sleep 300, networks: [side]}}
        networks:
          front:
          side:
    """)
    linkd.up()
    linkd.wait_listening("web", 80)
    at = addresses(linkd)
    gw, side_gw, web = at[("front", "gateway")], at[("side", "gateway")], at[("web-1", "front")]
    random_port = linkd.run("port", "-p", linkd.project, "web", "82").stdout.strip()
    assert random_port.startswith("0.0.0.0:"), random_port
    rp = int(random_port.split(":")[1])
    udp_port = linkd.run("port", "-p", linkd.project, "web", "53/udp").stdout.strip()
    assert udp_port == f"0.0.0.0:{p4}"
    assert linkd.run("port", "-p", linkd.project, "web", "81").stdout.strip() == f"127.0.0.1:{p2}"

    # From the host: loopback (masqueraded to the gateway) and a host address (the
    # bridge's gateway address is one), every form.
    seen = probe_host(
        f"tcp:127.0.0.1:{p1}", f"tcp:{gw}:{p1}", f"tcp:127.0.0.1:{p2}", f"tcp:{gw}:{p2}",
        *(f"tcp:127.0.0.1:{r + i}" for i in range(3)), f"udp:127.0.0.1:{p4}",
        f"udp:{gw}:{p4}", f"tcp:127.0.0.1:{rp}", f"tcp:{outside.host_address}:{p1}",
    )
    assert seen.pop(f"tcp:{gw}:{p2}") is None  # published on 127.0.0.1 only
    assert seen[f"tcp:127.0.0.1:{p1}"] == f"web-1 {gw}", seen
    assert seen[f"tcp:{gw}:{p1}"] == f"web-1 {gw}", seen
    assert all(v and v.startswith("web-1 ") for v in seen.values()), seen

    # Hairpin: a container of the same network through the host address (masqueraded,
    # else web would answer client directly).
    client = at[("client-1", "front")]
    seen = probe_in(linkd, "client", f"tcp:{gw}:{p1}", f"udp:{gw}:{p4}")
    assert seen == {f"tcp:{gw}:{p1}": f"web-1 {gw}", f"udp:{gw}:{p4}": f"web-1 {gw}"}, (
        seen, client)
    # From another network: in through the published port only (masqueraded on the way
    # out of side, as Docker does), never straight to web's address.
    seen = probe_in(linkd, "far", f"tcp:{side_gw}:{p1}", f"tcp:{gw}:{r + 1}",
                    f"tcp:{web}:80", f"tcp:{side_gw}:{p2}")
    assert seen == {f"tcp:{side_gw}:{p1}": f"web-1 {gw}", f"tcp:{gw}:{r + 1}": f"web-1 {gw}",
                    f"tcp:{web}:80": None, f"tcp:{side_gw}:{p2}": None}, seen

    # From the outside, to the host's address there; never straight to the container.
    seen = probe_host(f"tcp:{outside.host_address}:{p1}", f"tcp:{web}:80", netns=outside.netns)
    assert seen == {f"tcp:{outside.host_address}:{p1}": f"web-1 {outside.address}",
                    f"tcp:{web}:80": None}, seen


def test_a_taken_or_twice_published_host_port_is_refused_before_anything_exists(
    linkd: Linkd, other: Linkd
) -> None:
    port = free_ports(2)
    with socket.create_server(("127.0.0.1", port)):
        linkd.write(f"""
            services:
              web: {{command: sleep 300, ports: ["{port}:80"]}}
        """)
        failed = linkd.run("up", "-d", "-p", linkd.project, check=False)
        assert failed.returncode != 0
        message = failed.stdout + failed.stderr
        assert f"service web: host port {port}/tcp" in message, message
        assert f"in use by process {os.getpid()}" in message, message
    assert table(linkd.project) is None
    assert not [n for n in os.listdir("/run/netns") if n.startswith(f"linkd-{linkd.project}.")]

    linkd.up()
    other.write(f"""
        services:
          api: {{command: sleep 300, ports: ["{port}:8080"]}}
    """)
    failed = other.run("up", "-d", "-p", other.project, check=False)
    message = failed.stdout + failed.stderr
    assert failed.returncode != 0
    assert (f"service api: host port {port}/tcp on all addresses is already published by "
            f"stack {linkd.project} service web") in message, message
    assert table(other.project) is None


def test_the_table_is_repaired_and_goes_with_down_and_with_crash_recovery(
    linkd: Linkd,
) -> None:
    from tests.integration.test_recovery import kill_daemon, restart_daemon

    linkd.write("""
        services:
          web: {command: sleep 300, ports: ["80"]}
    """)
    linkd.up()
    listed = table(linkd.project)
    assert listed is not None and "dnat ip to" in listed
    # Deleted by hand: the daemon's reconcile puts it back.
    subprocess.run(["nft", "delete", "table", "inet", f"linkd-{linkd.project}"], check=True)
    deadline = time.monotonic() + 10
    while table(linkd.project) != listed:
        assert time.monotonic() < deadline, "the table was not repaired"
        time.sleep(0.1)
    linkd.down()
    assert table(linkd.project) is None

    # A daemon killed with -9, the stack's state lost: the next daemon removes the
    # table with the rest of the stack's orphans.
    linkd.up()
    assert table(linkd.project) is not None
    kill_daemon()
    assert table(linkd.project) is not None
    shutil.rmtree(store.stack_dir(linkd.project))
    restart_daemon()
    assert table(linkd.project) is None
