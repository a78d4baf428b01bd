"""The DNS redirect the namespace helper writes over netlink (real namespaces, nf_tables).

The nft tool is used here only as the oracle: linkd itself never runs it."""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

from linkd.errors import KernelError
from linkd.runtime.kernel import nshelper
from linkd.runtime.kernel.netlink import NamespaceHelper

DNS_RULES = """\
table ip linkd_dns
delete table ip linkd_dns
table ip linkd_dns {{
  chain output {{
    type nat hook output priority -100; policy accept;
    ip daddr 127.0.0.11 udp dport 53 dnat to 127.0.0.11:{udp}
    ip daddr 127.0.0.11 tcp dport 53 dnat to 127.0.0.11:{tcp}
  }}
}}
"""


def scratch_netns() -> str:
    name = "lkt-" + secrets.token_hex(4)
    subprocess.run(["ip", "netns", "add", name], check=True)
    return name


@pytest.fixture
def netns() -> Iterator[str]:
    name = scratch_netns()
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


async def dns_sockets(netns: str, verb: str = "dns") -> tuple[socket.socket, socket.socket]:
    helper = NamespaceHelper()  # forked now: it sees what a test monkeypatched
    try:
        udp, tcp = await helper.request_fds(verb, netns, 2)
    finally:
        helper.close()
    return socket.socket(fileno=udp), socket.socket(fileno=tcp)


def ports(udp: socket.socket, tcp: socket.socket) -> tuple[int, int]:
    return udp.getsockname()[1], tcp.getsockname()[1]


def nft(netns: str, *args: str, stdin: str | None = None) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", netns, "nft", *args],
        input=stdin, capture_output=True, text=True, check=True,
    ).stdout


def table_json(netns: str) -> list[dict[str, Any]]:
    """`nft -j list table`, without what differs between two equal tables."""
    items = json.loads(nft(netns, "-j", "list", "table", "ip", nshelper.NFT_TABLE))["nftables"]
    found = []
    for item in items:
        if "metainfo" in item:
            continue
        ((kind, body),) = item.items()
        found.append({kind: {k: v for k, v in body.items() if k != "handle"}})
    return found


def tables(netns: str) -> list[str]:
    return [line for line in nft(netns, "list", "tables").splitlines() if line.strip()]


async def test_the_rules_equal_what_the_nft_tool_makes(netns: str) -> None:
    udp, tcp = await dns_sockets(netns)
    udp_port, tcp_port = ports(udp, tcp)
    try:
        ours = table_json(netns)
        text = nft(netns, "list", "table", "ip", nshelper.NFT_TABLE)
        # The nft tool's version of the same rules, in a second namespace.
        other = scratch_netns()
        try:
            nft(other, "-f", "-", stdin=DNS_RULES.format(udp=udp_port, tcp=tcp_port))
            assert ours == table_json(other)
            assert text == nft(other, "list", "table", "ip", nshelper.NFT_TABLE)
        finally:
            subprocess.run(["ip", "netns", "del", other], check=False)
    finally:
        udp.close()
        tcp.close()
    assert "type nat hook output priority -100; policy accept;" in text
    assert f"udp dport 53 dnat to 127.0.0.11:{udp_port}" in text
    assert f"tcp dport 53 dnat to 127.0.0.11:{tcp_port}" in text


async def test_a_second_call_replaces_the_table_with_the_new_ports(netns: str) -> None:
    first = await dns_sockets(netns)
    second = await dns_sockets(netns)  # the first still holds its ports: new ones
    try:
        assert ports(*first) != ports(*second)
        assert tables(netns) == [f"table ip {nshelper.NFT_TABLE}"]
        text = nft(netns, "list", "table", "ip", nshelper.NFT_TABLE)
        udp_port, tcp_port = ports(*second)
        assert text.count("dnat to") == 2
        assert f"udp dport 53 dnat to 127.0.0.11:{udp_port}" in text
        assert f"tcp dport 53 dnat to 127.0.0.11:{tcp_port}" in text
    finally:
        for sock in (*first, *second):
            sock.close()


async def test_udp_and_tcp_to_port_53_reach_the_sockets(netns: str) -> None:
    udp, tcp = await dns_sockets(netns)
    try:
        client = textwrap.dedent("""
            import socket
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            u.sendto(b"over udp", ("127.0.0.11", 53))
            t = socket.create_connection(("127.0.0.11", 53), timeout=5)
            t.sendall(b"over tcp")
            t.close()
        """)
        subprocess.run(["ip", "netns", "exec", netns, "python3", "-c", client],
                       check=True, timeout=30)
        udp.settimeout(5)
        tcp.settimeout(5)
        assert udp.recv(100) == b"over udp"
        conn, _ = tcp.accept()
        with conn:
            conn.settimeout(5)
            assert conn.recv(100) == b"over tcp"
    finally:
        udp.close()
        tcp.close()


def netlink_fails(*args: object) -> None:
    raise OSError(95, "create table linkd_dns: forced to fail by the test")


async def test_a_failure_names_the_namespace_and_the_step_and_runs_no_tool(
    netns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nshelper.nft, "replace_dns_redirect", netlink_fails)
    with pytest.raises(KernelError) as failed:
        await dns_sockets(netns)
    monkeypatch.undo()
    assert str(failed.value) == (
        f"dns netns {netns}: nftables rules for DNS in namespace {netns}: "
        "create table linkd_dns: forced to fail by the test"
    )
    assert failed.value.errno == 95
    assert subprocess.run(["ip", "netns", "exec", netns, "nft", "list", "tables"],
                          capture_output=True, text=True, check=True).stdout == ""


async def test_the_rules_need_no_nft_tool(netns: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")  # the helper is forked after this
    udp, tcp = await dns_sockets(netns)
    monkeypatch.undo()
    try:
        text = nft(netns, "list", "table", "ip", nshelper.NFT_TABLE)
        udp_port, tcp_port = ports(udp, tcp)
        assert f"udp dport 53 dnat to 127.0.0.11:{udp_port}" in text
        assert f"tcp dport 53 dnat to 127.0.0.11:{tcp_port}" in text
    finally:
        udp.close()
        tcp.close()
