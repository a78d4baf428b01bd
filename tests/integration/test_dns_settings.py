"""`x-linkd: dns:` (zone domain, upstreams), forwarding, and who may forward at all.

Real containers ask linkd's resolver at 127.0.0.11; the upstream is a DNS server this
test runs on the host's loopback (never an outside server).
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator

import pytest
from dnslib import QTYPE, RR, A, DNSRecord

from tests.integration.conftest import Linkd

# Run inside a container with the system python (no dnslib there): one raw query to
# linkd's resolver, printing the rcode and the answers' addresses as JSON.
ASK = """
import json, random, socket, struct, sys
name, qtype = sys.argv[1], {"A": 1, "AAAA": 28}[sys.argv[2]]
qid = random.randrange(65536)
q = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\\0"
q += struct.pack("!HH", qtype, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(8)
s.sendto(q, ("127.0.0.11", 53))
r = s.recv(4096)
rcode, ancount = r[3] & 15, struct.unpack_from("!H", r, 6)[0]
# Walk the answer records that follow the echoed question; keep the A addresses.
addrs = []
i = len(q)
for _ in range(ancount):
    while r[i] and r[i] < 0xC0:
        i += r[i] + 1
    i += 2 if r[i] >= 0xC0 else 1
    rtype, _, _, size = struct.unpack_from("!HHIH", r, i)
    i += 10
    if rtype == 1:
        addrs.append(socket.inet_ntoa(r[i:i + 4]))
    i += size
print(json.dumps({"id_ok": r[:2] == q[:2], "rcode": rcode, "addresses": addrs}))
"""


def ask(linkd: Linkd, service: str, name: str, qtype: str = "A") -> dict[str, object]:
    out = linkd.exec(service, "/usr/bin/python3", "-c", ASK, name, qtype).stdout
    result: dict[str, object] = json.loads(out)
    assert result["id_ok"]
    return result


class Upstream:
    """A UDP DNS server on 127.0.0.1 answering every A query with one fixed address."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.sock.settimeout(0.05)
        self.seen: list[str] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            query = DNSRecord.parse(data)
            self.seen.append(str(query.q.qname))
            reply = query.reply()
            if query.q.qtype == QTYPE.A:
                reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A(self.address), ttl=30))
            self.sock.sendto(reply.pack(), peer)

    def close(self) -> None:
        """Stop, then close: the port is really closed afterwards (a socket closed under
        a blocked recvfrom would stay bound until that call returns)."""
        self.stopping.set()
        self.thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream("192.0.2.10")  # TEST-NET-1: only ever an answer, never a destination
    try:
        yield server
    finally:
        server.close()


def test_custom_domain_and_forwarding_to_the_stack_upstream(
    linkd: Linkd, upstream: Upstream
) -> None:
    linkd.write(f"""
        x-linkd:
          dns:
            domain: shop.internal
            upstreams: ["127.0.0.1:{upstream.port}"]
        services:
          web:
            command: sleep 300
          client:
            command: sleep 300
    """)
    linkd.up()
    web = ask(linkd, "client", f"web.default.{linkd.project}.shop.internal")
    assert web["rcode"] == 0 and len(web["addresses"]) == 1  # type: ignore[arg-type]
    # The default zone is not served any more: that name is forwarded, like any other.
    old = ask(linkd, "client", f"web.default.{linkd.project}.linkd")
    assert old["addresses"] == ["192.0.2.10"]
    # A name outside the zone goes to the upstream, through the system resolver too.
    got = linkd.py("client", """
        import socket
        print(socket.getaddrinfo('api.example.test', 443, socket.AF_INET)[0][4][0])
    """).stdout.strip()
    assert got == "192.0.2.10"
    assert "api.example.test." in upstream.seen
    # In-zone and single-label names never reach it.
    assert ask(linkd, "client", f"nothere.{linkd.project}.shop.internal")["rcode"] == 3
    assert ask(linkd, "client", "nothere")["rcode"] == 3
    assert not any("nothere" in name for name in upstream.seen)
    # linkd dns tells the same story.
    explained = linkd.run("dns", "-p", linkd.project, "api.example.test", "--from", "client")
    assert "forwarded" in explained.stdout


def test_servfail_when_the_upstream_is_down(linkd: Linkd, upstream: Upstream) -> None:
    linkd.write(f"""
        x-linkd: {{dns: {{upstreams: ["127.0.0.1:{upstream.port}"]}}}}
        services:
          client:
            command: sleep 300
    """)
    linkd.up()
    assert ask(linkd, "client", "up.example.test")["addresses"] == ["192.0.2.10"]
    upstream.close()
    down = ask(linkd, "client", "down.example.test")
    assert down["rcode"] == 2  # SERVFAIL
    # Local names still answer while the upstream is gone.
    assert ask(linkd, "client", "client")["rcode"] == 0


def test_no_forwarding_without_a_route_out(linkd: Linkd, upstream: Upstream) -> None:
    linkd.write(f"""
        x-linkd: {{dns: {{upstreams: ["127.0.0.1:{upstream.port}"]}}}}
        networks:
          sealed: {{internal: true}}
        services:
          inside:
            command: sleep 300
            networks: [sealed]
          solo:
            command: sleep 300
            network_mode: none
    """)
    linkd.up()
    # An internal network: its own names resolve, the outside is REFUSED.
    assert ask(linkd, "inside", "inside")["rcode"] == 0
    assert ask(linkd, "inside", "leak.example.test")["rcode"] == 5
    # Loopback only: its own names, through linkd's resolver, are loopback.
    for name in ("solo", "solo-1"):
        got = ask(linkd, "solo", name)
        assert got == {"id_ok": True, "rcode": 0, "addresses": ["127.0.0.1"]}, name
    assert ask(linkd, "solo", "inside")["rcode"] == 3  # it shares no network with it
    assert ask(linkd, "solo", "leak.example.test")["rcode"] == 5
    assert upstream.seen == []
    resolved = linkd.py("solo", """
        import socket
        print(socket.getaddrinfo('solo', 80, socket.AF_INET)[0][4][0])
    """).stdout.strip()
    assert resolved == "127.0.0.1"
