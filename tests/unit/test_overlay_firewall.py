"""The node's VXLAN table (linkd.core.overlay_firewall) as data and as text, its name
against the stacks' names, and its messages byte for byte as nft sends them.

The recorded bodies below are what nft 1.0.6 sent here for the same objects (read from
its batch with `strace -e write=3 nft -f`, the nfgenmsg header left out); the integration
tests (test_overlay_firewall.py) check them against this machine's nft again, and that
the kernel ends up holding the same table either way.
"""

from __future__ import annotations

from ipaddress import IPv6Address, ip_address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from linkd.core import firewall, nftables, overlay_firewall
from linkd.core.nftables import AddressSet, Drop, InSet, Port, rule
from linkd.runtime.kernel import firewall as runtime_firewall
from linkd.runtime.kernel import nft
from linkd.runtime.kernel.nft import wire
from linkd.runtime.kernel.overlay_firewall import update_batch
from linkd.spec.values import Bad, check_stack_name, normalize_project_name
from tests.unit.test_nft_encoding import expressions, parse

GOLDEN = """\
table inet linkd-_overlay {
\tset peers4 {
\t\ttype ipv4_addr
\t\telements = { 10.0.0.9, 198.19.7.2, 198.19.7.3 }
\t}
\tset peers6 {
\t\ttype ipv6_addr
\t\telements = { fd00:19::2 }
\t}
\tchain input {
\t\ttype filter hook input priority -10; policy accept;
\t\tudp dport 4789 ip saddr != @peers4 drop
\t\tudp dport 4789 ip6 saddr != @peers6 drop
\t}
}
"""


def test_the_table_is_golden() -> None:
    peers = [ip_address(a) for a in (
        "198.19.7.3", "198.19.7.2", "fd00:19::2", "198.19.7.2",  # a duplicate
        "::ffff:10.0.0.9",  # IPv4-mapped: an IPv4 packet's source
    )]
    peers.append(IPv6Address("fd00:19::2%eth0"))  # a scope is no part of the source
    assert overlay_firewall.ruleset(frozenset(peers)) == GOLDEN


def test_without_peers_the_sets_are_empty_and_every_vxlan_packet_is_dropped() -> None:
    table = overlay_firewall.table(frozenset())
    assert table.sets == (AddressSet("peers4", 4), AddressSet("peers6", 6))
    assert "elements" not in table.text()  # nft refuses an empty list
    (chain,) = table.chains
    assert chain.rules == (
        rule(Port("udp", 4789, 4789), InSet("saddr", "peers4", 4, negate=True), Drop()),
        rule(Port("udp", 4789, 4789), InSet("saddr", "peers6", 6, negate=True), Drop()),
    )


def test_nothing_is_accepted_here_and_only_the_vxlan_port_is_dropped() -> None:
    """A drop here must not touch other traffic, and an accept would end only this chain
    but says nothing the policy does not: the chain holds drops of UDP to the port only."""
    table = overlay_firewall.table(frozenset({ip_address("198.19.7.2")}), port=8472)
    (chain,) = table.chains
    assert chain.hook == nftables.Hook("filter", "input", -10, "accept")
    for r in chain.rules:
        assert r.statement == Drop()
        assert Port("udp", 8472, 8472) in r.matches
    with pytest.raises(ValueError, match="not a UDP port"):
        overlay_firewall.table(frozenset(), port=0)


def test_a_set_holds_addresses_of_its_own_version_only() -> None:
    with pytest.raises(ValueError, match="IPv4 addresses only"):
        AddressSet("peers4", 4, frozenset({ip_address("fd00::1")}))


STACK_NAMES = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,40}", fullmatch=True)


@given(STACK_NAMES)
def test_no_stack_name_makes_the_node_table_and_stacks_keep_theirs(stack: str) -> None:
    assert check_stack_name(stack) == stack
    assert firewall.table_name(stack) != overlay_firewall.TABLE
    assert firewall.stack_of_table(firewall.table_name(stack)) == stack


def test_the_node_table_is_linkd_s_but_no_stack_s() -> None:
    assert overlay_firewall.TABLE == "linkd-_overlay"
    assert overlay_firewall.TABLE.startswith(firewall.TABLE_PREFIX)  # the leak checks see it
    assert firewall.stack_of_table(overlay_firewall.TABLE) is None
    with pytest.raises(Bad, match="starts with a letter or digit"):
        check_stack_name("_overlay")
    assert normalize_project_name("_overlay") == "overlay"  # a directory's name neither


# -- bytes -----------------------------------------------------------------------------

# `ip saddr != @peers4 drop` and `ip6 saddr @peers6 drop` (no inversion: no _FLAGS).
LOOKUP_GOLDEN = [
    (rule(InSet("saddr", "peers4", 4, negate=True), Drop()), {"peers4": 1}, [
        # [ meta load nfproto => reg 1 ]
        "090001006d6574610000000014000280080002000000000f0800010000000001",
        # [ cmp eq reg 1 0x00000002 ]
        "08000100636d700020000280080001000000000108000200000000000c0003800500010002000000",
        # [ payload load 4b @ network header + 12 => reg 1 ]
        "0c0001007061796c6f6164002400028008000100000000010800020000000001080003000000000c"
        "0800040000000004",
        # [ lookup reg 1 set peers4 0x1 ]
        "0b0001006c6f6f6b757000002800028008000200000000010b000100706565727334000008000400"
        "000000010800050000000001",
        # [ immediate reg 0 drop ]
        "0e000100696d6d6564696174650000001c0002800800010000000000100002800c00028008000100"
        "00000000",
    ]),
    (rule(InSet("saddr", "peers6", 6), Drop()), {"peers6": 2}, [
        # [ meta load nfproto => reg 1 ]
        "090001006d6574610000000014000280080002000000000f0800010000000001",
        # [ cmp eq reg 1 0x0000000a ]
        "08000100636d700020000280080001000000000108000200000000000c000380050001000a000000",
        # [ payload load 16b @ network header + 8 => reg 1 ]
        "0c0001007061796c6f6164002400028008000100000000010800020000000001080003000000000"
        "80800040000000010",
        # [ lookup reg 1 set peers6 ]
        "0b0001006c6f6f6b757000002000028008000200000000010b00010070656572733600000800040"
        "000000002",
        # [ immediate reg 0 drop ]
        "0e000100696d6d6564696174650000001c0002800800010000000000100002800c00028008000100"
        "00000000",
    ]),
]


@pytest.mark.parametrize(("rule_", "ids", "golden"), LOOKUP_GOLDEN,
                         ids=[r.text() for r, _, _ in LOOKUP_GOLDEN])
def test_a_set_lookup_is_encoded_as_nft_encodes_it(
        rule_: nftables.Rule, ids: dict[str, int], golden: list[str]) -> None:
    encoded = runtime_firewall.encode_rule(nft.NFPROTO_INET, rule_, ids).encode()
    assert expressions(encoded) == golden


def test_a_lookup_in_a_rule_that_already_reads_ipv6_is_refused() -> None:
    with pytest.raises(ValueError, match="both IPv4 and IPv6"):
        runtime_firewall.encode_rule(nft.NFPROTO_INET, rule(
            InSet("saddr", "peers6", 6), InSet("saddr", "peers4", 4), Drop()))


# Table `lkt` with `set peers4 { type ipv4_addr; elements = { 198.19.1.2, 198.19.1.3 } }`
# and `set peers6 { type ipv6_addr; }`; then `flush set inet lkt peers4`, `flush chain inet
# lkt input`: each message's type and body as nft sent it.
SET_MESSAGES = {
    "new set peers4": (wire.NFT_MSG_NEWSET,
                       "080001006c6b74000b000200706565727334000008000300000000000800040000"
                       "000007080005000000000408000a00000000010a000d000004020000000000"),
    "elements of peers4": (wire.NFT_MSG_NEWSETELEM,
                           "080001006c6b74000b0002007065657273340000080004000000000124000380"
                           "100001800c00018008000100c6130102100002800c00018008000100c6130103"),
    "new set peers6": (wire.NFT_MSG_NEWSET,
                       "080001006c6b74000b000200706565727336000008000300000000000800040000"
                       "000008080005000000001008000a00000000020a000d000004020000000000"),
    "flush set peers4": (wire.NFT_MSG_DELSETELEM,
                         "0b0002007065657273340000080001006c6b7400"),
    "flush chain input": (wire.NFT_MSG_DELRULE, "080001006c6b74000a000200696e707574000000"),
}


def _bodies(batch: nft.Batch) -> list[tuple[int, str]]:
    """(message type, body after the nfgenmsg header) of each nf_tables message."""
    return [(kind & 0xFF, body[4:].hex()) for kind, _, _, body in parse(batch)
            if kind >> 8 == wire.NFNL_SUBSYS_NFTABLES]


def test_sets_their_elements_and_the_flushes_are_encoded_as_nft_encodes_them() -> None:
    four = AddressSet("peers4", 4, frozenset({ip_address("198.19.1.3"),
                                              ip_address("198.19.1.2")}))
    batch = nft.Batch(nft.NFPROTO_INET)
    runtime_firewall.add_set(batch, "lkt", four, 1)
    runtime_firewall.add_set(batch, "lkt", AddressSet("peers6", 6), 2)  # no elements message
    batch.flush_set("lkt", "peers4").flush_chain("lkt", "input")
    assert _bodies(batch) == list(SET_MESSAGES.values())


def test_the_update_changes_sets_and_rules_in_place_and_deletes_nothing() -> None:
    table = overlay_firewall.table(frozenset({ip_address("198.19.1.2")}))
    kinds = [kind for kind, _ in _bodies(update_batch(table))]
    assert kinds == [
        wire.NFT_MSG_NEWTABLE,
        wire.NFT_MSG_NEWSET, wire.NFT_MSG_DELSETELEM, wire.NFT_MSG_NEWSETELEM,  # peers4
        wire.NFT_MSG_NEWSET, wire.NFT_MSG_DELSETELEM,  # peers6: empty, nothing to add
        wire.NFT_MSG_NEWCHAIN, wire.NFT_MSG_DELRULE,
        wire.NFT_MSG_NEWRULE, wire.NFT_MSG_NEWRULE,
    ]
    _, flags, _, _ = parse(update_batch(table))[1]
    assert not flags & wire.NLM_F_EXCL  # declared: what exists is kept


def test_replacing_the_table_makes_its_sets_before_its_rules() -> None:
    table = overlay_firewall.table(frozenset({ip_address("fd00::2")}))
    kinds = [kind for kind, _ in _bodies(runtime_firewall.replace_batch(table))]
    assert kinds == [
        wire.NFT_MSG_NEWTABLE, wire.NFT_MSG_DELTABLE, wire.NFT_MSG_NEWTABLE,
        wire.NFT_MSG_NEWSET, wire.NFT_MSG_NEWSET, wire.NFT_MSG_NEWSETELEM,
        wire.NFT_MSG_NEWCHAIN, wire.NFT_MSG_NEWRULE, wire.NFT_MSG_NEWRULE,
    ]
