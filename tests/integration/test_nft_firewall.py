"""The stack firewall over netlink, against the kernel and with the nft tool as the oracle.

linkd never runs the nft tool; these tests do, to judge what linkd wrote:

- for generated plans, the table linkd writes over netlink in one scratch namespace and
  the table `nft -f` makes of `linkd.core.firewall.ruleset(plan)` in another list the same
  (`nft list table`), and the kernel holds the same objects (`nft.table_state`);
- the unit tests' golden expressions are what this machine's nft sends (read with strace);
- repair notices a deleted table, a flushed or deleted chain and an added rule; removing
  a missing table succeeds; errors name the table and the failing step;
- a stack comes up with isolation, a published port and DNS in a simulated host where
  no nft tool can run, and its table is the one its plan describes.

Scratch namespaces are `lkt-...`, made and deleted here. The firewall's code runs in a
thread of its own that has entered one (`in_netns`): a netlink socket belongs to the
namespace of the thread that opens it, and threads it starts inherit it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from ipaddress import IPv4Network
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from linkd.core import firewall, nftables
from linkd.core.plan import StackPlan
from linkd.errors import KernelError
from linkd.runtime.kernel import firewall as runtime_firewall
from linkd.runtime.kernel import nft
from linkd.runtime.kernel.nft import wire
from linkd.runtime.stack import store
from linkd.spec.stack_file import parse_stack
from tests.planning import realize
from tests.simhost import simulated_host
from tests.unit.test_nft_encoding import GOLDEN, expressions

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def scratch_netns() -> Iterator[str]:
    name = "lkt-" + secrets.token_hex(4)
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def in_netns(netns: str, work: Callable[[], T]) -> T:
    """`work()` in a thread of its own inside `netns`."""
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {netns}")
            finally:
                os.close(fd)
            outcome["value"] = work()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


def nft_tool(netns: str, *args: str, stdin: str | None = None,
             check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", netns, "nft", *args], input=stdin,
                          capture_output=True, text=True, check=check)


def listing(netns: str, name: str) -> str:
    """`nft list table inet NAME`; empty when there is no such table."""
    return nft_tool(netns, "list", "table", "inet", name, check=False).stdout


def load_text(netns: str, table: nftables.Table) -> None:
    """The oracle: `nft -f` of the table's text, replacing any table of that name."""
    nft_tool(netns, "-f", "-", stdin=(
        f"table inet {table.name}\ndelete table inet {table.name}\n{table.text()}"))


# -- generated plans ----------------------------------------------------------------------

SUBNETS = ["10.87.{i}.0/24", "10.88.{j}.0/20", "10.89.{i}.64/26", "172.20.{j}.0/23",
           "10.90.{i}.128/25"]
SUBNETS6 = ["fd00:87:{i}::/64", "fd00:88:{i}::/112", "fd00:89:{i}::/120",
            "fd00:8a:{i}::/100"]


@st.composite
def stack_files(draw: st.DrawFn) -> tuple[str, dict[str, IPv4Network]]:
    """A stack file and its networks' subnets: internal or not, IPv6 or not, services
    on some of them, published ports of every form, host access entries."""
    names = draw(st.lists(st.sampled_from(["front", "back", "side"]), min_size=1,
                          max_size=3, unique=True))
    lines = ["services:"]
    subnets: dict[str, IPv4Network] = {}
    networks = ["networks:"]
    internal: set[str] = set()
    for i, name in enumerate(names):
        subnets[name] = IPv4Network(draw(st.sampled_from(SUBNETS)).format(i=i, j=i * 16))
        options = []
        if draw(st.booleans()):
            internal.add(name)
            options.append("internal: true")
        if draw(st.booleans()):
            subnet6 = draw(st.sampled_from(SUBNETS6)).format(i=i)
            options.append(f'enable_ipv6: true, ipam: {{config: [{{subnet: "{subnet6}"}}]}}')
        networks.append(f"  {name}: {{{', '.join(options)}}}")
    host_ports = iter(range(20000, 30000, 40))
    for s in range(draw(st.integers(1, 3))):
        on = draw(st.lists(st.sampled_from(names), min_size=1, unique=True))
        ports: list[str] = []
        if set(on) - internal:  # only a service with a way in can publish
            for _ in range(draw(st.integers(0, 3))):
                ports.append(draw(port_specs(next(host_ports))))
        lines.append(f"  s{s}: {{command: x, networks: [{', '.join(on)}], "
                     f"ports: [{', '.join(ports)}]}}")
    host = draw(st.lists(st.sampled_from([
        '"5432"', '"53/udp"', '"192.0.2.2:8000-8010/udp"', '"9000-9001"', '"192.0.2.3:7"',
    ]), unique=True, max_size=3))
    text = "\n".join(lines + networks) + f"\nx-linkd: {{host: [{', '.join(host)}]}}\n"
    return text, subnets


@st.composite
def port_specs(draw: st.DrawFn, host: int) -> str:
    where = draw(st.sampled_from(["", "127.0.0.1:", "192.0.2.7:"]))
    proto = draw(st.sampled_from(["", "/udp", "/tcp", "/sctp"]))
    width = draw(st.integers(0, 3))
    container = draw(st.sampled_from([80, 8000, host]))
    if width == 0:
        return f'"{where}{host}:{container}{proto}"'
    return f'"{where}{host}-{host + width}:{container}-{container + width}{proto}"'


def plan_of(text: str, subnets: dict[str, IPv4Network], name: str) -> StackPlan:
    stack = parse_stack(text, source="linkd.yaml", project_name=name)
    return realize(stack, subnets)


def test_netlink_and_the_nft_tool_make_the_same_table() -> None:
    with scratch_netns() as ours, scratch_netns() as theirs:

        @settings(max_examples=40, deadline=None,
                  suppress_health_check=[HealthCheck.too_slow])
        @given(stack_files(), st.sampled_from(["lkta", "lktb"]))
        def same_table(stack_file: tuple[str, dict[str, IPv4Network]], name: str) -> None:
            plan = plan_of(*stack_file, name=name)
            table = firewall.table(plan)
            # Over a table of the same name from an earlier example: replaced whole.
            applied = in_netns(ours, lambda: runtime_firewall.replace_table(table))
            load_text(theirs, table)
            assert listing(ours, table.name) == listing(theirs, table.name)
            state = in_netns(theirs, lambda: nft.table_state(nft.NFPROTO_INET, table.name))
            assert applied == state

        same_table()


def test_the_golden_expressions_are_what_nft_sends_here() -> None:
    """The unit tests' recorded facts, checked against this machine's nft."""
    assert shutil.which("strace") is not None, (
        "strace is not installed (scripts/dev test installs it): nft's batch cannot be read")
    with scratch_netns() as netns:
        for rule, golden in GOLDEN:
            script = ("table inet lkt\ndelete table inet lkt\ntable inet lkt {\n"
                      f"chain c {{\n{rule.text()}\n}}\nchain published {{\n}}\n}}\n")
            traced = subprocess.run(
                ["ip", "netns", "exec", netns, "strace", "-e", "trace=sendmsg",
                 "-e", "write=3", "nft", "-f", "-"],
                input=script, capture_output=True, text=True, check=True).stderr
            assert sent_rules(traced) == [golden], rule.text()


def nft_messages(traced: str) -> list[tuple[int, bytes]]:
    """(message type, body after the nfgenmsg header) of each nf_tables message of the
    last batch in strace's hex dump of nft's sendmsg calls."""
    dumps: list[bytearray] = []
    for line in traced.splitlines():
        found = re.match(r"^ \| ([0-9a-f]{5})  ", line)
        if found:
            if int(found.group(1), 16) == 0:
                dumps.append(bytearray())
            dumps[-1] += bytes.fromhex(line[10:58].replace(" ", ""))
    batch = bytes(dumps[-1])
    messages = []
    offset = 0
    while offset < len(batch):
        length = int.from_bytes(batch[offset:offset + 4], sys.byteorder)
        kind = int.from_bytes(batch[offset + 4:offset + 6], sys.byteorder)
        if kind >> 8 == wire.NFNL_SUBSYS_NFTABLES:
            messages.append((kind & 0xFF, batch[offset + 20:offset + length]))
        offset += (length + 3) & ~3
    return messages


def sent_rules(traced: str) -> list[list[str]]:
    """The expressions of each NEWRULE message in strace's dump of nft's last sendmsg."""
    rules = []
    for kind, body in nft_messages(traced):
        if kind == wire.NFT_MSG_NEWRULE:
            attrs = dict(nft.attributes(body))
            rules.append(expressions(wire.attr(wire.NFTA_RULE_EXPRESSIONS | wire.NLA_F_NESTED,
                                               attrs[wire.NFTA_RULE_EXPRESSIONS])))
    return rules


# -- repair, remove, errors ---------------------------------------------------------------

SHOP = """
services:
  web: {command: x, networks: [front, back], ports: ["8080:80"]}
networks:
  front:
  back: {internal: true}
x-linkd: {host: ["5432"]}
"""


def test_repair_notices_what_was_changed_by_hand_and_remove_needs_no_table() -> None:
    plan = plan_of(SHOP, {"front": IPv4Network("10.87.0.0/24"),
                          "back": IPv4Network("10.87.1.0/24")}, name="lktshop")
    name = firewall.table_name("lktshop")
    with scratch_netns() as netns:
        nft_tool(netns, "add", "table", "inet", "lkt_other")  # not linkd's

        async def scenario() -> None:
            wall = runtime_firewall.StackFirewall("lktshop")
            await wall.ensure(plan)
            applied = listing(netns, name)
            assert await wall.repair(plan) == 0
            assert await runtime_firewall.tables() == [name]
            for change in (
                ["delete", "table", "inet", name],
                ["flush", "chain", "inet", name, "forward"],
                ["add", "rule", "inet", name, "input", "tcp", "dport", "22", "accept"],
                ["delete", "rule", "inet", name, "published", "handle",
                 handle_of(netns, name, "published")],
                ["add", "chain", "inet", name, "extra"],
                ["add", "table", "inet", name, "{", "flags", "dormant;", "}"],
            ):
                nft_tool(netns, *change)
                assert listing(netns, name) != applied, change
                assert await wall.repair(plan) == 1, change
                assert listing(netns, name) == applied, change
                assert await wall.repair(plan) == 0, change
            await wall.remove()
            await wall.remove()  # a missing table is fine
            await runtime_firewall.remove_table("lktshop")
            assert await runtime_firewall.tables() == []

        in_netns(netns, lambda: asyncio.run(scenario()))
        assert nft_tool(netns, "list", "tables").stdout == "table inet lkt_other\n"


def handle_of(netns: str, table: str, chain: str) -> str:
    text = nft_tool(netns, "-a", "list", "chain", "inet", table, chain).stdout
    found = re.search(r"# handle (\d+)\n\s*\}", text)
    assert found is not None, text
    return found.group(1)


def test_a_failed_transaction_names_the_step_and_changes_nothing() -> None:
    good = nftables.Table("inet", "linkd-lktbad", (
        nftables.Chain("input", nftables.Hook("filter", "input", 0), (
            nftables.rule(nftables.Port("tcp", 22, 22), nftables.Accept()),)),
    ))
    bad_chain = nftables.Table("inet", "linkd-lktbad", (
        nftables.Chain("input", nftables.Hook("filter", "input", 0)),
        nftables.Chain("bad", nftables.Hook("nat", "forward", 0)),
    ))
    bad_jump = nftables.Table("inet", "linkd-lktbad", (
        nftables.Chain("input", nftables.Hook("filter", "input", 0), (
            nftables.rule(nftables.Jump("missing")),)),
    ))
    with scratch_netns() as netns:
        with pytest.raises(KernelError) as failed:
            in_netns(netns, lambda: runtime_firewall.replace_table(bad_chain))
        assert str(failed.value) == ("table inet linkd-lktbad: create chain bad (nat hook "
                                     "forward priority 0): Operation not supported")
        assert nft_tool(netns, "list", "tables").stdout == ""  # not even the table
        in_netns(netns, lambda: runtime_firewall.replace_table(good))
        before = listing(netns, "linkd-lktbad")
        with pytest.raises(KernelError) as failed:
            in_netns(netns, lambda: runtime_firewall.replace_table(bad_jump))
        assert str(failed.value) == ("table inet linkd-lktbad: add rule 1 of chain input "
                                     "(jump missing): No such file or directory")
        assert listing(netns, "linkd-lktbad") == before  # all or nothing


# -- a host without the nft tool ----------------------------------------------------------


def test_a_stack_comes_up_on_a_host_without_the_nft_tool(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.integration.test_hosts import Stack, check_stack, outside

    tool = shutil.which("nft")
    assert tool is not None, "the tests need the nft tool as their oracle"
    with simulated_host() as host, outside(host):
        # In the host's own mount table: every path to the tool is a file nobody can run.
        blank = host.run_dir / "no-nft"
        blank.write_text("")
        blank.chmod(0o644)
        for path in {tool, os.path.realpath(tool), "/usr/sbin/nft", "/sbin/nft"}:
            if os.path.exists(path):
                host.run("mount", "--bind", str(blank), path)
        assert host.run(sys.executable, "-c", "import shutil; print(shutil.which('nft'))"
                        ).stdout == "None\n"
        assert host.run("nft", "list", "tables", check=False).returncode != 0
        stack = Stack(host)
        stack.up()
        try:
            check_stack(stack)  # isolation, names, the published port, the way out
            name = firewall.table_name(stack.name)
            in_host = nft_tool(host.netns, "list", "table", "inet", name).stdout
            monkeypatch.setenv("LINKD_RUN_DIR", str(host.run_dir))
            plan = store.load(stack.name).plan
            monkeypatch.undo()
            assert "dnat ip to" in in_host and "masquerade" in in_host, in_host
            with scratch_netns() as oracle:
                # The simulated host leaves through eth0, its uplink.
                load_text(oracle, firewall.table(plan, frozenset({"eth0"})))
                assert in_host == listing(oracle, name)
            tables = nft_tool(host.netns, "list", "tables").stdout
            assert tables == f"table inet {name}\n", tables  # DNS: in the containers' own
        finally:
            stack.down()
        assert nft_tool(host.netns, "list", "tables").stdout == ""

