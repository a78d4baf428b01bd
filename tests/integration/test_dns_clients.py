"""linkd's DNS server as real clients see it inside real containers: dig, nslookup, glibc.

test_dns.py covers the basics through the system resolver and `linkd dns`; this file
asks the way users do, with Debian's `dig` and `nslookup` (bind9-dnsutils, installed by
scripts/dev) and with glibc's getaddrinfo/gethostbyaddr, and checks the answers'
contents: every replica, the aa flag and TTL, the round robin, TCP, SRV with its
additional section, PTR, NXDOMAIN vs NODATA, scoping across networks, link aliases, and
a user's own DNS server on port 53.

One stack serves the whole module (bringing it up per test would cost more than the
tests); its fixture takes it down and fails if anything of it is left behind. The tests
only query it, they never change it.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import Linkd, remove_leftovers, settled, snapshot

STACK = """
    services:
      web:
        command: sleep 3600
        scale: 3
        expose: ["8080"]
        networks: [front]
      db:
        command: sleep 3600
        networks:
          back:
            aliases: [database]
      client:
        command: sleep 3600
        networks: [front]
        links: ["other:peer"]
      other:
        command: sleep 3600
        networks: [front]
      both:
        command: sleep 3600
        networks: [front, back]
      ownsdns:
        command: /usr/bin/python3 fakedns.py
        networks: [front]
    networks:
      front:
      back:
"""

# A user's DNS server on port 53 of its container: every A question gets 192.0.2.53.
FAKE_DNS = """
    import socket
    import struct

    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("0.0.0.0", 53))
    print("bound 53", flush=True)
    while True:
        query, peer = udp.recvfrom(4096)
        end = 12
        while query[end]:
            end += 1 + query[end]
        question = query[12 : end + 5]
        header = query[:2] + b"\\x84\\x00" + struct.pack(">HHHH", 1, 1, 0, 0)
        record = b"\\xc0\\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + bytes([192, 0, 2, 53])
        udp.sendto(header + question + record, peer)
"""
USER_ANSWER = "192.0.2.53"


@dataclass(frozen=True)
class Stack:
    linkd: Linkd
    addresses: dict[str, dict[str, str]]  # container -> network -> IPv4 address

    @property
    def name(self) -> str:
        return self.linkd.project

    def address(self, container: str, network: str = "front") -> str:
        return self.addresses[container][network]

    def fqdn(self, name: str, network: str = "front") -> str:
        return f"{name}.{network}.{self.name}.linkd"


def _require_clients() -> None:
    # Containers run the host's binaries: what the host lacks, no container has.
    missing = [tool for tool in ("dig", "nslookup") if shutil.which(tool) is None]
    if missing:
        pytest.fail(
            f"{' and '.join(missing)} missing: run scripts/dev (it installs Debian's "
            "bind9-dnsutils) before the integration tests",
            pytrace=False,
        )


@pytest.fixture(scope="module")
def stack(kernel_lock: None) -> Iterator[Stack]:
    _require_clients()
    directory = Path(tempfile.mkdtemp(prefix="linkd-test-", dir="/var/tmp"))
    runner = Linkd(directory, "t" + secrets.token_hex(4))
    before = snapshot()
    try:
        runner.write(STACK)
        runner.write(FAKE_DNS, name="fakedns.py")
        runner.up()
        addresses: dict[str, dict[str, str]] = {}
        for service in ("web", "db", "client", "other", "both", "ownsdns"):
            for c in json.loads(runner.run("inspect", "-p", runner.project, service).stdout):
                addresses[c["plan"]["name"]] = {
                    i["network"]: i["address"] for i in c["plan"]["interfaces"]
                }
        deadline = time.monotonic() + 10
        while "bound 53" not in runner.run("logs", "-p", runner.project, "ownsdns").stdout:
            assert time.monotonic() < deadline, "the user's DNS server never bound port 53"
            time.sleep(0.05)
        yield Stack(runner, addresses)
    finally:
        runner.run("down", "--forget", "-p", runner.project, check=False)
        shutil.rmtree(directory, ignore_errors=True)
        left = settled(before)
        if not left.empty():
            remove_leftovers(left)
            pytest.fail(f"the DNS clients' stack left linkd objects behind: {left}")


# -- dig --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RR:
    name: str
    ttl: int
    type: str
    data: str


@dataclass(frozen=True)
class Dig:
    status: str
    flags: frozenset[str]
    answer: tuple[RR, ...]
    authority: tuple[RR, ...]
    additional: tuple[RR, ...]
    server: str
    text: str

    def data(self, rrtype: str) -> list[str]:
        return [r.data for r in self.answer if r.type == rrtype]


def dig(stack: Stack, container: str, *args: str) -> Dig:
    """`dig ARGS` run inside a container (service-index, e.g. web-2 is web --index 2)."""
    service, _, index = container.rpartition("-")
    result = stack.linkd.run(
        "exec", "-p", stack.name, "--index", index, service, "--",
        "dig", "+tries=1", "+time=3", *args,
    )
    return parse_dig(result.stdout)


def parse_dig(text: str) -> Dig:
    status = re.search(r"->>HEADER<<-.*status: (\w+)", text)
    flags = re.search(r"^;; flags: ([^;]*);", text, re.M)
    server = re.search(r"^;; SERVER: (.*)$", text, re.M)
    assert status and flags and server, f"dig gave no answer:\n{text}"
    sections: dict[str, list[RR]] = {"ANSWER": [], "AUTHORITY": [], "ADDITIONAL": []}
    current: list[RR] | None = None
    for line in text.splitlines():
        header = re.match(r";; (\w+) SECTION:", line)
        if header:
            current = sections.get(header.group(1))
        elif not line.strip():
            current = None
        elif current is not None:
            name, ttl, _cls, rrtype, data = line.split(None, 4)
            current.append(RR(name, int(ttl), rrtype, data.strip()))
    return Dig(
        status.group(1),
        frozenset(flags.group(1).split()),
        tuple(sections["ANSWER"]),
        tuple(sections["AUTHORITY"]),
        tuple(sections["ADDITIONAL"]),
        server.group(1),
        text,
    )


def replicas(stack: Stack) -> set[str]:
    return {stack.address(f"web-{i}") for i in (1, 2, 3)}


def test_dig_a_for_a_service_lists_every_replica_authoritatively_with_ttl_1(
    stack: Stack,
) -> None:
    for name in ("web", "web.front", stack.fqdn("web") + "."):
        got = dig(stack, "client-1", name)
        assert got.status == "NOERROR", got.text
        assert "aa" in got.flags, got.text
        assert "127.0.0.11#53" in got.server  # resolv.conf's nameserver, as Docker's
        assert sorted(got.data("A")) == sorted(replicas(stack)), got.text
        assert {r.ttl for r in got.answer} == {1}, got.text
    single = dig(stack, "client-1", "web-2")
    assert single.data("A") == [stack.address("web-2")], single.text


def test_dig_answers_rotate_the_replicas_round_robin(stack: Stack) -> None:
    loop = "for i in 1 2 3 4 5 6; do dig +tries=1 +time=3 +short web; echo --; done"
    out = stack.linkd.exec("client", "sh", "-c", loop).stdout
    answers = [block.split() for block in out.split("--")[:-1]]
    assert len(answers) == 6, out
    for answer in answers:
        assert sorted(answer) == sorted(replicas(stack)), out  # always all of them
    firsts = [answer[0] for answer in answers]
    assert len(set(firsts)) > 1, f"the first address never changes: {firsts}"


def test_dig_over_tcp_gives_the_same_answer(stack: Stack) -> None:
    tcp = dig(stack, "client-1", "+tcp", "web")
    assert tcp.server.endswith("(TCP)"), tcp.text
    assert tcp.status == "NOERROR" and "aa" in tcp.flags, tcp.text
    assert sorted(tcp.data("A")) == sorted(replicas(stack)), tcp.text
    srv = dig(stack, "client-1", "+tcp", "SRV", "_8080._tcp.web")
    assert len(srv.data("SRV")) == 3 and len(srv.additional) >= 3, srv.text


def test_dig_srv_gives_the_exposed_port_and_the_targets_addresses(stack: Stack) -> None:
    got = dig(stack, "client-1", "SRV", "_8080._tcp.web")
    assert got.status == "NOERROR" and "aa" in got.flags, got.text
    targets = {}
    for data in got.data("SRV"):
        priority, weight, port, name = data.split()
        assert port == "8080", got.text
        targets[name] = (priority, weight)
    wanted = {stack.fqdn(f"web-{i}") + "." for i in (1, 2, 3)}
    assert set(targets) == wanted, got.text
    additional = {r.name: r.data for r in got.additional if r.type == "A"}
    assert additional == {
        stack.fqdn(f"web-{i}") + ".": stack.address(f"web-{i}") for i in (1, 2, 3)
    }, got.text
    # The target names themselves resolve to the same addresses.
    target = dig(stack, "client-1", stack.fqdn("web-3"))
    assert target.data("A") == [stack.address("web-3")], target.text


def test_dig_reverse_gives_the_container_network_stack_name(stack: Stack) -> None:
    got = dig(stack, "client-1", "-x", stack.address("web-2"))
    assert got.status == "NOERROR" and "aa" in got.flags, got.text
    assert got.data("PTR") == [stack.fqdn("web-2") + "."], got.text
    assert {r.ttl for r in got.answer} == {1}, got.text
    # A container on two networks: each address names its own network.
    both = dig(stack, "client-1", "-x", stack.address("both-1", "front"))
    assert both.data("PTR") == [stack.fqdn("both-1") + "."], both.text
    back = dig(stack, "both-1", "-x", stack.address("db-1", "back"))
    assert back.data("PTR") == [stack.fqdn("db-1", "back") + "."], back.text
    # An address on a network the requester does not share: not even its name leaks.
    hidden = dig(stack, "client-1", "-x", stack.address("db-1", "back"))
    assert hidden.status == "NXDOMAIN" and not hidden.answer, hidden.text


def test_dig_unknown_name_is_nxdomain_with_the_soa(stack: Stack) -> None:
    for name in ("nothere", f"nothere.{stack.name}.linkd", f"web.nonet.{stack.name}.linkd"):
        got = dig(stack, "client-1", name)
        assert got.status == "NXDOMAIN", got.text
        assert "aa" in got.flags and not got.answer, got.text
        soa = [r for r in got.authority if r.type == "SOA"]
        assert len(soa) == 1 and soa[0].name == "linkd.", got.text
        assert soa[0].data.startswith("ns.linkd. hostmaster.linkd."), got.text


def test_dig_existing_name_without_the_type_is_nodata(stack: Stack) -> None:
    # The network is IPv4 only: `web` exists, it has no AAAA.
    for args in (("AAAA", "web"), ("AAAA", stack.fqdn("web")), ("MX", "web")):
        got = dig(stack, "client-1", *args)
        assert got.status == "NOERROR", got.text  # not NXDOMAIN: the name exists
        assert not got.answer and "aa" in got.flags, got.text
        assert [r.type for r in got.authority] == ["SOA"], got.text
    # The stack's own label is an empty non-terminal: NODATA too (RFC 8020).
    ent = dig(stack, "client-1", f"{stack.name}.linkd")
    assert ent.status == "NOERROR" and not ent.answer, ent.text


def test_dig_names_of_a_network_not_shared_are_nxdomain(stack: Stack) -> None:
    db = stack.address("db-1", "back")
    names = ("db", "db-1", "database", "db.back", stack.fqdn("db", "back"))
    for name in names:
        hidden = dig(stack, "client-1", name)
        if name == "db.back":
            # NAME.NETWORK outside the zone is forwarded, as Docker does; the simulated
            # host the tests run in has no upstream, so the answer is a failure.
            assert hidden.status in ("NXDOMAIN", "SERVFAIL") and not hidden.answer
        else:
            assert hidden.status == "NXDOMAIN" and not hidden.answer, hidden.text
        seen = dig(stack, "both-1", name)  # on front and back: it sees db
        assert seen.status == "NOERROR" and seen.data("A") == [db], seen.text
    # And `both` sees front's names too, with the address on front.
    front = dig(stack, "both-1", "client")
    assert front.data("A") == [stack.address("client-1")], front.text


def test_dig_link_alias_resolves_only_in_the_linking_container(stack: Stack) -> None:
    linked = dig(stack, "client-1", "peer")
    assert linked.status == "NOERROR" and "aa" in linked.flags, linked.text
    assert linked.data("A") == [stack.address("other-1")], linked.text
    for container in ("web-1", "other-1", "both-1"):
        got = dig(stack, container, "peer")
        assert got.status == "NXDOMAIN" and not got.answer, (container, got.text)


def test_a_users_dns_server_on_port_53_still_answers_beside_linkd(stack: Stack) -> None:
    own = stack.address("ownsdns-1")
    # Its peers reach it on its address, port 53: linkd takes only 127.0.0.11:53.
    from_peer = dig(stack, "client-1", f"@{own}", "anything.example")
    assert from_peer.data("A") == [USER_ANSWER], from_peer.text
    # Inside its own container, on loopback, it answers too...
    from_itself = dig(stack, "ownsdns-1", "@127.0.0.1", "anything.example")
    assert from_itself.data("A") == [USER_ANSWER], from_itself.text
    # ...while the container's resolver, 127.0.0.11:53, is still linkd's.
    linkd_answer = dig(stack, "ownsdns-1", "web")
    assert linkd_answer.server.startswith("127.0.0.11#53"), linkd_answer.text
    assert sorted(linkd_answer.data("A")) == sorted(replicas(stack)), linkd_answer.text


# -- nslookup -----------------------------------------------------------------------------


def test_nslookup_resolves_services_addresses_and_reports_nxdomain(stack: Stack) -> None:
    got = stack.linkd.exec("client", "nslookup", "web").stdout
    assert re.search(r"^Server:\s+127\.0\.0\.11$", got, re.M), got
    assert set(re.findall(r"^Address: (\S+)$", got, re.M)) == replicas(stack), got
    reverse = stack.linkd.exec("client", "nslookup", stack.address("web-2")).stdout
    assert f"name = {stack.fqdn('web-2')}." in reverse, reverse
    missing = stack.linkd.exec("client", "nslookup", "nothere", check=False)
    assert missing.returncode != 0, missing
    assert "NXDOMAIN" in missing.stdout, missing


# -- glibc: getaddrinfo, gethostbyaddr ----------------------------------------------------


def test_getaddrinfo_tells_nxdomain_from_nodata(stack: Stack) -> None:
    # Fully qualified names are in no hosts file: only linkd's DNS answers them.
    web, stack_label = stack.fqdn("web"), f"{stack.name}.linkd"
    got = stack.linkd.py("client", f"""
        import json, socket

        def lookup(name, family):
            try:
                return sorted({{a[4][0] for a in socket.getaddrinfo(name, 80, family)}})
            except socket.gaierror as e:
                return e.errno

        I4, I6, ANY = socket.AF_INET, socket.AF_INET6, socket.AF_UNSPEC
        print(json.dumps({{
            "EAI_NONAME": socket.EAI_NONAME,
            "EAI_NODATA": socket.EAI_NODATA,
            "web4": lookup("{web}", I4),
            "webany": lookup("{web}", ANY),
            "web6": lookup("{web}", I6),
            "ent4": lookup("{stack_label}", I4),
            "missing4": lookup("nothere.{stack_label}", I4),
            "missing6": lookup("nothere.{stack_label}", I6),
            "missingany": lookup("nothere.{stack_label}", ANY),
            "hidden": lookup("db.back.{stack_label}", ANY),
        }}))
    """).stdout
    r = json.loads(got)
    assert r["web4"] == r["webany"] == sorted(replicas(stack)), r
    # NODATA (the name exists, not with that type): glibc says EAI_NODATA,
    # "No address associated with hostname".
    assert r["web6"] == r["EAI_NODATA"], r
    assert r["ent4"] == r["EAI_NODATA"], r
    # NXDOMAIN: EAI_NONAME, "Name or service not known", whatever the family.
    assert r["missing4"] == r["missing6"] == r["missingany"] == r["EAI_NONAME"], r
    assert r["hidden"] == r["EAI_NONAME"], r  # another network's name does not exist


def test_gethostbyaddr_through_dns_gives_the_ptr_name(stack: Stack) -> None:
    # The hosts file lists every peer and glibc reads it first; a container whose hosts
    # file lacks a peer asks DNS, so the lookup is restricted to NSS's dns service.
    got = stack.linkd.py("client", f"""
        import ctypes, json, socket

        def by_address(address):
            try:
                return list(socket.gethostbyaddr(address))
            except socket.herror as e:
                return str(e)

        files_first = by_address("{stack.address('web-2')}")
        assert ctypes.CDLL(None).__nss_configure_lookup(b"hosts", b"dns") == 0
        print(json.dumps([
            files_first,
            by_address("{stack.address('web-2')}"),
            by_address("{stack.address('db-1', 'back')}"),
        ]))
    """).stdout
    files_first, dns, hidden = json.loads(got)
    assert dns == [stack.fqdn("web-2"), [], [stack.address("web-2")]], got
    # The hosts file and the PTR agree on the container.
    assert files_first[0] == "web-2", got
    assert hidden == "[Errno 1] Unknown host", got
