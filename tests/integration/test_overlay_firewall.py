"""The node's VXLAN table (linkd.core.overlay_firewall, linkd.runtime.kernel.overlay_firewall)
against the kernel, with the nft tool as the oracle, and against a real intruder.

- In scratch namespaces (`lkt-...`, made and deleted here): the table linkd writes over
  netlink lists as the one `nft -f` makes of its text, for changing peers, and a change
  of peers is made in place (the table, its sets and its chain keep their handles); a
  table changed by hand is made right; removing it leaves no table; the recorded bytes of
  the unit tests are what this machine's nft sends.
- Two simulated nodes and an intruder on one underlay segment (a bridge of the
  session's): node B's containers reach node A's over VXLAN with the table on both; a
  VXLAN datagram the intruder crafts (an Ethernet frame for A's container, its source
  address forged as B's container's) reaches A's container without the table, is
  dropped with it, gets through once the intruder's address is in the set, and again
  after the table is removed.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import secrets
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from ipaddress import ip_address
from pathlib import Path
from typing import IO

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from linkd.core import firewall, overlay, overlay_firewall
from linkd.core.overlay import IPAddress
from linkd.runtime.kernel import firewall as runtime_firewall
from linkd.runtime.kernel import nft
from linkd.runtime.kernel import overlay_firewall as runtime_overlay_firewall
from linkd.runtime.kernel.nft import wire
from tests.integration.conftest import REPO, snapshot
from tests.integration.test_nft_firewall import (
    in_netns,
    listing,
    load_text,
    nft_messages,
    nft_tool,
    scratch_netns,
)
from tests.integration.test_vxlan import SERVER, UNDERLAY_MTU, Node
from tests.simhost import SimulatedHost, ip, simulated_host
from tests.unit.test_nft_encoding import expressions
from tests.unit.test_overlay_firewall import LOOKUP_GOLDEN, SET_MESSAGES

TABLE = overlay_firewall.TABLE


def apply(netns: str, peers: frozenset[IPAddress]) -> bool:
    """The table for `peers` in `netns`, as the runtime makes it; True if replaced whole."""
    table = overlay_firewall.table(peers)
    return in_netns(netns, lambda: runtime_overlay_firewall.apply(table))


def handles(netns: str) -> dict[str, str]:
    """The handles of the table, its sets and its chain (`nft -a list`): new handles are
    new objects."""
    text = nft_tool(netns, "-a", "list", "table", "inet", TABLE).stdout
    return {m[1].strip(): m[2] for m in re.finditer(r"^\s*((?:table|set|chain) [^{]*)\{ # handle "
                                                    r"(\d+)", text, re.MULTILINE)}


def state(netns: str) -> tuple[bytes, ...] | None:
    return in_netns(netns, lambda: nft.table_state(nft.NFPROTO_INET, TABLE))


POOL = [ip_address(a) for a in (
    "198.19.0.1", "198.19.0.2", "198.19.3.7", "10.0.0.1", "192.0.2.200", "203.0.113.4",
    "fd00:19::1", "fd00:19::2", "2001:db8::7", "fe80::1",
)]


def test_netlink_and_the_nft_tool_make_the_same_table_and_peers_change_in_place() -> None:
    with scratch_netns() as ours, scratch_netns() as theirs:
        assert apply(ours, frozenset()) is False  # created in place: nothing to replace
        first = handles(ours)
        assert set(first) == {f"table inet {TABLE}", "set peers4", "set peers6",
                              "chain input"}, first

        @settings(max_examples=25, deadline=None,
                  suppress_health_check=[HealthCheck.too_slow])
        @given(st.lists(st.frozensets(st.sampled_from(POOL), max_size=6), min_size=1,
                        max_size=4))
        def same_table(changes: list[frozenset[IPAddress]]) -> None:
            for peers in changes:
                assert apply(ours, peers) is False
                load_text(theirs, overlay_firewall.table(peers))
                assert listing(ours, TABLE) == listing(theirs, TABLE)
                assert state(ours) == state(theirs)
                assert handles(ours) == first  # the same objects: changed in place

        same_table()


# (what is done by hand, as an `nft -f` script; whether the table must be replaced whole)
BY_HAND = [
    ("add rule inet T input udp dport 4789 accept", False),
    ("flush chain inet T input", False),
    ("add element inet T peers4 { 203.0.113.9 }", False),
    ("flush set inet T peers6", False),
    ("add chain inet T input { type filter hook input priority -10; policy drop; }", False),
    ("add table inet T { flags dormant; }", False),
    ("flush chain inet T input\ndelete chain inet T input", False),
    ("delete table inet T", False),
    ("delete table inet T\ntable inet T { chain input { type filter hook input priority 0; }; }",
     True),
    ("delete table inet T\ntable inet T { set peers4 { type ipv6_addr; }; }", True),
    ("delete table inet T\ntable inet T { set peers4 { type ipv4_addr; flags interval; }; }",
     True),
    ("delete table inet T\ntable inet T { chain input { type nat hook input priority -10; }; }",
     True),
]


def test_a_table_changed_by_hand_is_made_right() -> None:
    peers = frozenset({ip_address("198.19.0.2"), ip_address("fd00:19::2")})
    with scratch_netns() as ours, scratch_netns() as theirs:
        load_text(theirs, overlay_firewall.table(peers))
        wanted = listing(theirs, TABLE)
        for script, replaced in BY_HAND:
            apply(ours, peers)
            nft_tool(ours, "-f", "-", stdin=script.replace(" T", f" {TABLE}") + "\n")
            assert listing(ours, TABLE) != wanted, script
            assert apply(ours, peers) is replaced, script
            assert listing(ours, TABLE) == wanted, script
            assert state(ours) == state(theirs), script
            assert apply(ours, peers) is False, script  # and now it is linkd's again


def test_the_table_is_linkd_s_and_no_stack_s_and_removing_it_leaves_none() -> None:
    with scratch_netns() as netns:
        nft_tool(netns, "add", "table", "inet", "lkt_other")  # not linkd's

        async def scenario() -> None:
            await runtime_overlay_firewall.ensure_overlay_firewall(
                frozenset({ip_address("198.19.0.2")}))
            await runtime_overlay_firewall.ensure_overlay_firewall(
                frozenset({ip_address("198.19.0.2")}))
            assert await runtime_firewall.tables() == [TABLE]  # what cleanup looks for
            assert firewall.stack_of_table(TABLE) is None
            await runtime_overlay_firewall.remove_overlay_firewall()
            await runtime_overlay_firewall.remove_overlay_firewall()  # none: fine
            assert await runtime_firewall.tables() == []

        in_netns(netns, lambda: asyncio.run(scenario()))
        assert nft_tool(netns, "list", "tables").stdout == "table inet lkt_other\n"


# -- the recorded bytes -------------------------------------------------------------------


def sent_messages(traced: str) -> list[tuple[int, str]]:
    """(type, body after the nfgenmsg header in hex) of each nf_tables message in the
    last batch nft sent (strace's hex dump of its sendmsg)."""
    return [(kind, body.hex()) for kind, body in nft_messages(traced)]


def traced_nft(netns: str, script: str) -> list[tuple[int, str]]:
    traced = subprocess.run(
        ["ip", "netns", "exec", netns, "strace", "-e", "trace=sendmsg", "-e", "write=3",
         "nft", "-f", "-"], input=script, capture_output=True, text=True, check=True).stderr
    return sent_messages(traced)


def test_the_recorded_bytes_are_what_nft_sends_here() -> None:
    assert shutil.which("strace") is not None, (
        "strace is not installed (scripts/dev test installs it): nft's batch cannot be read")
    with scratch_netns() as netns:
        made = traced_nft(netns, textwrap.dedent("""\
            table inet lkt {
              set peers4 { type ipv4_addr; elements = { 198.19.1.2, 198.19.1.3 }; }
              set peers6 { type ipv6_addr; }
              chain input {
                type filter hook input priority -10; policy accept;
                ip saddr != @peers4 drop
                ip6 saddr @peers6 drop
              }
            }
            """))
        flushed = traced_nft(netns, "flush set inet lkt peers4\nflush chain inet lkt input\n")
    recorded = list(SET_MESSAGES.values())
    assert [m for m in made if m[0] in (wire.NFT_MSG_NEWSET, wire.NFT_MSG_NEWSETELEM)] == \
        recorded[:3]
    assert [m for m in flushed if m[0] != wire.NFT_MSG_NEWTABLE] == recorded[3:]
    rules = [body for kind, body in made if kind == wire.NFT_MSG_NEWRULE]
    for body, (rule_, _, golden) in zip(rules, LOOKUP_GOLDEN, strict=True):
        attrs = dict(nft.attributes(bytes.fromhex(body)))
        assert expressions(wire.attr(wire.NFTA_RULE_EXPRESSIONS | wire.NLA_F_NESTED,
                                     attrs[wire.NFTA_RULE_EXPRESSIONS])) == golden, rule_.text()


# -- two nodes and an intruder ------------------------------------------------------------

LISTEN = textwrap.dedent(r"""
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((sys.argv[1], 7002))
    print("listening", flush=True)
    while True:
        data, peer = s.recvfrom(2048)
        print(data.decode(errors="replace"), peer[0], flush=True)
""")

# A VXLAN datagram made by hand (RFC 7348 §5: flags with the I bit, the VNI): an Ethernet
# frame for the container's MAC carrying an IPv4 UDP datagram to its listener, the source
# forged as another container's. Sent three times from an ordinary UDP socket.
INJECT = textwrap.dedent(r"""
    import json, socket, struct, sys
    a = json.loads(sys.argv[1])
    def checksum(data):
        total = sum(struct.unpack(f"!{len(data) // 2}H", data))
        while total >> 16:
            total = (total & 0xFFFF) + (total >> 16)
        return ~total & 0xFFFF
    payload = a["marker"].encode()
    udp = struct.pack("!HHHH", 40000, 7002, 8 + len(payload), 0) + payload
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
                         socket.inet_aton(a["src"]), socket.inet_aton(a["dst"]))
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    frame = (bytes.fromhex(a["mac"].replace(":", "")) + bytes.fromhex("020000c0ffee")
             + b"\x08\x00" + header + udp)
    vxlan = struct.pack("!II", 0x08 << 24, a["vni"] << 8)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(3):
        s.sendto(vxlan + frame, (a["node"], 4789))
""")


class Lines:
    """What a process prints, line by line, read in a thread (waits have deadlines)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[bytes]) -> None:
        for line in stream:
            self.lines.put(line.decode(errors="replace").strip())

    def wait_for(self, text: str, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                return None
            if text in line:
                return line
        return None


class Underlay:
    """Two nodes and an intruder on one segment: a bridge of the session's, a veth from
    it into each host (198.19.<x>.1, .2 and .66 /24)."""

    def __init__(self, tag: str, hosts: dict[str, SimulatedHost]) -> None:
        self.bridge = f"lkt{tag}w"
        self.ends = [f"lkt{tag}{c}" for c in "abi"]
        x = int(tag[:2], 16)
        self.addresses = {name: f"198.19.{x}.{n}" for name, n in
                          (("a", 1), ("b", 2), ("intruder", 66))}
        ip("link", "add", self.bridge, "type", "bridge")
        ip("link", "set", self.bridge, "up")
        for end, (name, host) in zip(self.ends, hosts.items(), strict=True):
            inside = end + "u"
            ip("link", "add", end, "type", "veth", "peer", "name", inside)
            ip("link", "set", end, "master", self.bridge, "up")
            ip("link", "set", inside, "netns", host.netns)
            ip("addr", "add", f"{self.addresses[name]}/24", "dev", inside, netns=host.netns)
            ip("link", "set", inside, "mtu", str(UNDERLAY_MTU), "up", netns=host.netns)

    def remove(self) -> None:
        for name in (*self.ends, self.bridge):
            subprocess.run(["ip", "link", "del", name], capture_output=True)


@pytest.fixture
def cluster() -> Iterator[tuple[Node, Node, SimulatedHost, Underlay]]:
    tag = secrets.token_hex(3)
    stack = "t" + tag
    common = {"stack": stack, "network": "over", "subnet": "10.91.0.0/24",
              "vni": overlay.allocate_vni(overlay.overlay_id(stack, "over"), ())}
    with simulated_host() as host_a, simulated_host() as host_b, \
            simulated_host() as intruder:
        underlay = Underlay(tag, {"a": host_a, "b": host_b, "intruder": intruder})
        try:
            a = Node(host_a, {**common, "container": "a-1", "address": "10.91.0.10",
                              "local": underlay.addresses["a"]})
            b = Node(host_b, {**common, "container": "b-1", "address": "10.91.0.20",
                              "local": underlay.addresses["b"]})
            yield a, b, intruder, underlay
        finally:
            underlay.remove()


def ensure(node: Node, *peers: str) -> None:
    node.host.run(sys.executable, "-m", "tests.overlay_firewall_node", "ensure",
                  json.dumps({"peers": list(peers)}))


def remove(node: Node) -> None:
    node.host.run(sys.executable, "-m", "tests.overlay_firewall_node", "remove", "{}")


def tables(node: Node) -> str:
    return node.host.run("nft", "list", "tables").stdout


def test_only_the_nodes_in_the_set_get_vxlan_to_a_node_s_containers(
        cluster: tuple[Node, Node, SimulatedHost, Underlay]) -> None:
    a, b, intruder, underlay = cluster
    baseline = {node: node.op("leaks") for node in (a, b)}
    for node in (a, b):
        node.facts = node.op("setup")
    everyone = [a.endpoint(), b.endpoint()]
    for node in (a, b):
        assert node.op("sync", endpoints=everyone)["changes"] == 2

    processes: list[subprocess.Popen[bytes]] = []

    def in_a(script: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            a.host.command(a.in_container(sys.executable, "-c", script, a.args["address"])),
            env=a.host.env(), stdout=subprocess.PIPE, cwd=a.host.run_dir)
        processes.append(proc)
        return proc

    sent = 0

    def intruder_sends() -> tuple[str, int]:
        """A marker the intruder sent to A's container, and A's VXLAN packets before."""
        nonlocal sent
        sent += 1
        marker = f"injected-{sent}-{secrets.token_hex(4)}"
        before = a.vxlan_rx_packets()
        intruder.run(sys.executable, "-c", INJECT, json.dumps({
            "marker": marker, "mac": a.facts["mac"], "src": b.args["address"],
            "dst": a.args["address"], "vni": a.args["vni"], "node": a.args["local"]}))
        return marker, before

    def b_reaches_a() -> None:
        reached = b.probe(a.args["address"], 64, overlay.overlay_mtu(UNDERLAY_MTU) - 28)
        assert reached["tcp"] == "b" and reached["64"] == "64", reached
        assert len(reached) == 3 and "OSError" not in reached.values(), reached

    try:
        server, listener = in_a(SERVER), in_a(LISTEN)
        assert server.stdout is not None and server.stdout.readline() == b"listening\n"
        assert listener.stdout is not None
        heard = Lines(listener.stdout)
        assert heard.wait_for("listening", 10) is not None

        # Without the table: B reaches A, and so does the intruder's frame, forged source
        # and all (else the rest would prove nothing).
        b_reaches_a()
        marker, _ = intruder_sends()
        assert heard.wait_for(marker, 5) == f"{marker} {b.args['address']}"

        # The table on both nodes, each allowing the other: B's containers still reach
        # A's (and A's answers reach B); the intruder's datagrams are dropped before the
        # VXLAN device sees them.
        ensure(a, underlay.addresses["b"])
        ensure(b, underlay.addresses["a"])
        in_place = a.host.run("nft", "-a", "list", "table", "inet", overlay_firewall.TABLE
                              ).stdout.splitlines()[0]
        b_reaches_a()
        marker, before = intruder_sends()
        assert heard.wait_for(marker, 2) is None
        assert a.vxlan_rx_packets() == before

        # The set decides, not a blanket drop: with the intruder's address in it, its
        # frames get through; taken out again, they do not. Changed in place.
        ensure(a, underlay.addresses["b"], underlay.addresses["intruder"])
        marker, before = intruder_sends()
        assert heard.wait_for(marker, 5) is not None
        assert a.vxlan_rx_packets() > before
        ensure(a, underlay.addresses["b"])
        marker, before = intruder_sends()
        assert heard.wait_for(marker, 2) is None
        assert a.vxlan_rx_packets() == before
        assert a.host.run("nft", "-a", "list", "table", "inet", overlay_firewall.TABLE
                          ).stdout.splitlines()[0] == in_place
        b_reaches_a()

        # Removed: no table is left, and nothing of it keeps dropping.
        for node in (a, b):
            remove(node)
            remove(node)
            assert tables(node) == ""
        marker, _ = intruder_sends()
        assert heard.wait_for(marker, 5) is not None
        b_reaches_a()
    finally:
        for proc in processes:
            proc.kill()
            proc.wait()

    for node in (a, b):
        node.op("teardown")
        assert node.op("leaks") == baseline[node]


def test_a_failing_test_of_the_cluster_leaves_nothing(tmp_path: Path) -> None:
    """The fixture takes the hosts and the underlay with it when a test fails midway, and
    the tables go with the hosts' namespaces."""
    before = snapshot()
    made = tmp_path / "made.json"
    test_file = tmp_path / "test_inner.py"
    test_file.write_text(textwrap.dedent(f'''
        import json
        from tests.integration.test_overlay_firewall import cluster, ensure, tables  # noqa: F401

        def test_fails_with_tables_up(cluster):
            a, b, intruder, underlay = cluster
            a.facts = a.op("setup")
            ensure(a, underlay.addresses["b"])
            assert "linkd-_overlay" in tables(a)
            with open({str(made)!r}, "w") as out:
                json.dump([a.host.netns, b.host.netns, intruder.netns, underlay.bridge,
                           *underlay.ends], out)
            assert False, "this test fails on purpose with the tables up"
    '''))
    inner = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "--rootdir", str(REPO), "--confcutdir", str(REPO / "tests"),
         "-p", "tests.integration.conftest", str(test_file)],
        cwd=REPO, capture_output=True, text=True, timeout=180,
    )
    assert "1 failed" in inner.stdout, inner.stdout + inner.stderr
    assert "this test fails on purpose" in inner.stdout
    assert (snapshot() - before).empty()
    netns = set(os.listdir("/run/netns"))
    links = set(os.listdir("/sys/class/net"))
    for name in json.loads(made.read_text()):
        assert name not in netns and name not in links, name
