"""The nf_tables encoder (`linkd.runtime.kernel.nft`), byte for byte what nft sends.

Recorded facts: each rule's expressions below are what nft 1.0.6 put in its NEWRULE
message for the rule's text (read from its batch with `strace -e write=3 nft -f`), with
what `nft --debug=netlink` prints for each as a comment. The integration tests
(test_nft_firewall.py) check the same cases against the nft tool on this machine, and
that the kernel holds the same objects for whole tables. No root needed here.
"""

from __future__ import annotations

from ipaddress import IPv4Address
from ipaddress import ip_network as net

import pytest

from linkd.core import nftables
from linkd.core.nftables import (
    Accept,
    Address,
    ConntrackState,
    ConntrackStatus,
    Dnat,
    Drop,
    Family,
    Icmpv6Type,
    Interface,
    Jump,
    LocalDestination,
    Masquerade,
    Notrack,
    Port,
    rule,
)
from linkd.runtime.kernel import firewall as runtime_firewall
from linkd.runtime.kernel import nft
from linkd.runtime.kernel.nft import readback, transactions, wire

BRIDGE = "lkb-39b0b05959"

# (rule, the payload of each NFTA_LIST_ELEM of its NFTA_RULE_EXPRESSIONS, in hex)
GOLDEN: list[tuple[nftables.Rule, list[str]]] = [
    (  # iifname "lkb-39b0b05959" accept
        rule(Interface("iif", BRIDGE), Accept()),
        [
            # [ meta load iifname => reg 1 ]
            "090001006d657461000000001400028008000200000000060800010000000001",
            # [ cmp eq reg 1 0x2d626b6c 0x30623933 0x39353062 0x00003935 ]
            "08000100636d70002c0002800800010000000001080002000000000018000380140001006c6b622d"
            "333962306230353935390000",
            # [ immediate reg 0 accept ]
            "0e000100696d6d6564696174650000001c0002800800010000000000100002800c00028008000100"
            "00000001",
        ],
    ),
    (  # oifname "lkb-*" drop
        rule(Interface("oif", "lkb-*"), Drop()),
        [
            # [ meta load oifname => reg 1 ]
            "090001006d657461000000001400028008000200000000070800010000000001",
            # [ cmp eq reg 1 0x2d626b6c ]
            "08000100636d700020000280080001000000000108000200000000000c000380080001006c6b622d",
            # [ immediate reg 0 drop ]
            "0e000100696d6d6564696174650000001c0002800800010000000000100002800c00028008000100"
            "00000000",
        ],
    ),
    (  # oifname != "lkb-39b0b05959" drop
        rule(Interface("oif", BRIDGE, negate=True), Drop()),
        [
            # [ meta load oifname => reg 1 ]
            "090001006d657461000000001400028008000200000000070800010000000001",
            # [ cmp neq reg 1 0x2d626b6c 0x30623933 0x39353062 0x00003935 ]
            "08000100636d70002c0002800800010000000001080002000000000118000380140001006c6b622d"
            "333962306230353935390000",
            # [ immediate reg 0 drop ]
            "0e000100696d6d6564696174650000001c0002800800010000000000100002800c00028008000100"
            "00000000",
        ],
    ),
    (  # meta nfproto ipv4 fib daddr type local jump published
        rule(Family(4), LocalDestination(), Jump("published")),
        [
            # [ meta load nfproto => reg 1 ]
            "090001006d6574610000000014000280080002000000000f0800010000000001",
            # [ cmp eq reg 1 0x00000002 ]
            "08000100636d700020000280080001000000000108000200000000000c0003800500010002000000",
            # [ fib daddr type => reg 1 ]
            "08000100666962001c000280080003000000000208000200000000030800010000000001",
            # [ cmp eq reg 1 0x00000002 ]
            "08000100636d700020000280080001000000000108000200000000000c0003800800010002000000",
            # [ immediate reg 0 jump -> published ]
            "0e000100696d6d6564696174650000002c0002800800010000000000200002801c00028008000100"
            "fffffffd0e0002007075626c6973686564000000",
        ],
    ),
    (  # ip daddr 10.87.0.0/24 ip daddr != 10.87.0.1 notrack
        rule(Address("daddr", net("10.87.0.0/24")),
             Address("daddr", net("10.87.0.1"), negate=True), Notrack()),
        [
            # [ meta load nfproto => reg 1 ]
            "090001006d6574610000000014000280080002000000000f0800010000000001",
            # [ cmp eq reg 1 0x00000002 ]
            "08000100636d700020000280080001000000000108000200000000000c0003800500010002000000",
            # [ payload load 3b @ network header + 16 => reg 1 ]
            "0c0001007061796c6f61640024000280080001000000000108000200000000010800030000000010"
            "0800040000000003",
            # [ cmp eq reg 1 0x0000570a ]
            "08000100636d700020000280080001000000000108000200000000000c000380070001000a570000",
            # [ payload load 4b @ network header + 16 => reg 1 ]
            "0c0001007061796c6f61640024000280080001000000000108000200000000010800030000000010"
            "0800040000000004",
            # [ cmp neq reg 1 0x0100570a ]
            "08000100636d700020000280080001000000000108000200000000010c000380080001000a570001",
            # [ notrack ]
            "0c0001006e6f747261636b00",
        ],
    ),
    (  # ip saddr 10.87.16.0/20 masquerade
        rule(Address("saddr", net("10.87.16.0/20")), Masquerade()),
        [
            # [ meta load nfproto => reg 1 ]
            "090001006d6574610000000014000280080002000000000f0800010000000001",
            # [ cmp eq reg 1 0x00000002 ]
            "08000100636d700020000280080001000000000108000200000000000c0003800500010002000000",
            # [ payload load 4b @ network header + 12 => reg 1 ]
            "0c0001007061796c6f6164002400028008000100000000010800020000000001080003000000000c"
            "0800040000000004",
            # [ bitwise reg 1 = ( reg 1 & 0x00f0ffff ) ^ 0x00000000 ]
            "0c000100626974776973650034000280080001000000000108000200000000010800030000000004"
            "0c00048008000100fffff0000c0005800800010000000000",
            # [ cmp eq reg 1 0x0010570a ]
            "08000100636d700020000280080001000000000108000200000000000c000380080001000a571000",
            # [ masq ]
            "090001006d6173710000000004000280",
        ],
    ),
    (  # ip6 daddr fd00:87::/64 ip6 daddr != fd00:87::1 notrack
        rule(Address("daddr", net("fd00:87::/64")),
             Address("daddr", net("fd00:87::1"), negate=True), Notrack()),
        [
            # [ meta load nfproto => reg 1 ]
            "090001006d6574610000000014000280080002000000000f0800010000000001",
            # [ cmp eq reg 1 0x0000000a ]
            "08000100636d700020000280080001000000000108000200000000000c000380050001000a000000",
            # [ payload load 8b @ network header + 24 => reg 1 ]
            "0c0001007061796c6f61640024000280080001000000000108000200000000010800030000000018"
            "0800040000000008",
            # [ cmp eq reg 1 0x870000fd 0x00000000 ]
            "08000100636d70002400028008000100000000010800020000000000100003800c000100fd000087"
            "00000000",
            # [ payload load 16b @ network header + 24 => reg 1 ]
            "0c0001007061796c6f61640024000280080001000000000108000200000000010800030000000018"
            "0800040000000010",
            # [ cmp neq reg 1 0x870000fd 0x00000000 0x00000000 0x01000000 ]
            "08000100636d70002c000280080001000000000108000200000000011800038014000100fd000087"
            "000000000000000000000001",
            # [ notrack ]
            "0c0001006e6f747261636b00",
        ],
    ),
    (  # ip6 saddr fd00:87::/61 masquerade
        rule(Address("saddr", net("fd00:87::/61")), Masquerade()),
        [
            # [ meta load nfproto => reg 1 ]
            "090001006d6574610000000014000280080002000000000f0800010000000001",
            # [ cmp eq reg 1 0x0000000a ]
            "08000100636d700020000280080001000000000108000200000000000c000380050001000a000000",
            # [ payload load 16b @ network header + 8 => reg 1 ]
            "0c0001007061796c6f61640024000280080001000000000108000200000000010800030000000008"
            "0800040000000010",
            # [ bitwise reg 1 = ( reg 1 & 0xffffffff 0xf8ffffff 0x00000000 0x00000000 )
            #   ^ 0x00000000 0x00000000 0x00000000 0x00000000 ]
            "0c00010062697477697365004c000280080001000000000108000200000000010800030000000010"
            "1800048014000100fffffffffffffff8000000000000000018000580140001000000000000000000"
            "0000000000000000",
            # [ cmp eq reg 1 0x870000fd 0x00000000 0x00000000 0x00000000 ]
            "08000100636d70002c000280080001000000000108000200000000001800038014000100fd000087"
            "000000000000000000000000",
            # [ masq ]
            "090001006d6173710000000004000280",
        ],
    ),
    (  # ip daddr 127.0.0.0/8 drop
        rule(Address("daddr", net("127.0.0.0/8")), Drop()),
        [
            # [ meta load nfproto => reg 1 ]
            "090001006d6574610000000014000280080002000000000f0800010000000001",
            # [ cmp eq reg 1 0x00000002 ]
            "08000100636d700020000280080001000000000108000200000000000c0003800500010002000000",
            # [ payload load 1b @ network header + 16 => reg 1 ]
            "0c0001007061796c6f61640024000280080001000000000108000200000000010800030000000010"
            "0800040000000001",
            # [ cmp eq reg 1 0x0000007f ]
            "08000100636d700020000280080001000000000108000200000000000c000380050001007f000000",
            # [ immediate reg 0 drop ]
            "0e000100696d6d6564696174650000001c0002800800010000000000100002800c00028008000100"
            "00000000",
        ],
    ),
    (  # tcp dport 5432 accept
        rule(Port("tcp", 5432, 5432), Accept()),
        [
            # [ meta load l4proto => reg 1 ]
            "090001006d657461000000001400028008000200000000100800010000000001",
            # [ cmp eq reg 1 0x00000006 ]
            "08000100636d700020000280080001000000000108000200000000000c0003800500010006000000",
            # [ payload load 2b @ transport header + 2 => reg 1 ]
            "0c0001007061796c6f61640024000280080001000000000108000200000000020800030000000002"
            "0800040000000002",
            # [ cmp eq reg 1 0x00003815 ]
            "08000100636d700020000280080001000000000108000200000000000c0003800600010015380000",
            # [ immediate reg 0 accept ]
            "0e000100696d6d6564696174650000001c0002800800010000000000100002800c00028008000100"
            "00000001",
        ],
    ),
    (  # ip daddr 192.0.2.2 udp dport 8000-8010 accept
        rule(Address("daddr", net("192.0.2.2")), Port("udp", 8000, 8010), Accept()),
        [
            # [ meta load nfproto => reg 1 ]
            "090001006d6574610000000014000280080002000000000f0800010000000001",
            # [ cmp eq reg 1 0x00000002 ]
            "08000100636d700020000280080001000000000108000200000000000c0003800500010002000000",
            # [ payload load 4b @ network header + 16 => reg 1 ]
            "0c0001007061796c6f61640024000280080001000000000108000200000000010800030000000010"
            "0800040000000004",
            # [ cmp eq reg 1 0x020200c0 ]
            "08000100636d700020000280080001000000000108000200000000000c00038008000100c0000202",
            # [ meta load l4proto => reg 1 ]
            "090001006d657461000000001400028008000200000000100800010000000001",
            # [ cmp eq reg 1 0x00000011 ]
            "08000100636d700020000280080001000000000108000200000000000c0003800500010011000000",
            # [ payload load 2b @ transport header + 2 => reg 1 ]
            "0c0001007061796c6f61640024000280080001000000000108000200000000020800030000000002"
            "0800040000000002",
            # [ cmp gte reg 1 0x0000401f ]
            "08000100636d700020000280080001000000000108000200000000050c000380060001001f400000",
            # [ cmp lte reg 1 0x00004a1f ]
            "08000100636d700020000280080001000000000108000200000000030c000380060001001f4a0000",
            # [ immediate reg 0 accept ]
            "0e000100696d6d6564696174650000001c0002800800010000000000100002800c00028008000100"
            "00000001",
        ],
    ),
    (  # sctp dport 9 accept
        rule(Port("sctp", 9, 9), Accept()),
        [
            # [ meta load l4proto => reg 1 ]
            "090001006d657461000000001400028008000200000000100800010000000001",
            # [ cmp eq reg 1 0x00000084 ]
            "08000100636d700020000280080001000000000108000200000000000c0003800500010084000000",
            # [ payload load 2b @ transport header + 2 => reg 1 ]
            "0c0001007061796c6f61640024000280080001000000000108000200000000020800030000000002"
            "0800040000000002",
            # [ cmp eq reg 1 0x00000900 ]
            "08000100636d700020000280080001000000000108000200000000000c0003800600010000090000",
            # [ immediate reg 0 accept ]
            "0e000100696d6d6564696174650000001c0002800800010000000000100002800c00028008000100"
            "00000001",
        ],
    ),
    (  # icmpv6 type nd-neighbor-solicit accept
        rule(Icmpv6Type("nd-neighbor-solicit"), Accept()),
        [
            # [ meta load nfproto => reg 1 ]
            "090001006d6574610000000014000280080002000000000f0800010000000001",
            # [ cmp eq reg 1 0x0000000a ]
            "08000100636d700020000280080001000000000108000200000000000c000380050001000a000000",
            # [ meta load l4proto => reg 1 ]
            "090001006d657461000000001400028008000200000000100800010000000001",
            # [ cmp eq reg 1 0x0000003a ]
            "08000100636d700020000280080001000000000108000200000000000c000380050001003a000000",
            # [ payload load 1b @ transport header + 0 => reg 1 ]
            "0c0001007061796c6f61640024000280080001000000000108000200000000020800030000000000"
            "0800040000000001",
            # [ cmp eq reg 1 0x00000087 ]
            "08000100636d700020000280080001000000000108000200000000000c0003800500010087000000",
            # [ immediate reg 0 accept ]
            "0e000100696d6d6564696174650000001c0002800800010000000000100002800c00028008000100"
            "00000001",
        ],
    ),
    (  # ct state established,related accept
        rule(ConntrackState(("established", "related")), Accept()),
        [
            # [ ct load state => reg 1 ]
            "07000100637400001400028008000200000000000800010000000001",
            # [ bitwise reg 1 = ( reg 1 & 0x00000006 ) ^ 0x00000000 ]
            "0c000100626974776973650034000280080001000000000108000200000000010800030000000004"
            "0c00048008000100060000000c0005800800010000000000",
            # [ cmp neq reg 1 0x00000000 ]
            "08000100636d700020000280080001000000000108000200000000010c0003800800010000000000",
            # [ immediate reg 0 accept ]
            "0e000100696d6d6564696174650000001c0002800800010000000000100002800c00028008000100"
            "00000001",
        ],
    ),
    (  # ct status dnat accept
        rule(ConntrackStatus("dnat"), Accept()),
        [
            # [ ct load status => reg 1 ]
            "07000100637400001400028008000200000000020800010000000001",
            # [ bitwise reg 1 = ( reg 1 & 0x00000020 ) ^ 0x00000000 ]
            "0c000100626974776973650034000280080001000000000108000200000000010800030000000004"
            "0c00048008000100200000000c0005800800010000000000",
            # [ cmp neq reg 1 0x00000000 ]
            "08000100636d700020000280080001000000000108000200000000010c0003800800010000000000",
            # [ immediate reg 0 accept ]
            "0e000100696d6d6564696174650000001c0002800800010000000000100002800c00028008000100"
            "00000001",
        ],
    ),
    (  # tcp dport 8080 dnat ip to 10.87.0.2:80
        rule(Port("tcp", 8080, 8080), Dnat(IPv4Address("10.87.0.2"), 80)),
        [
            # [ meta load l4proto => reg 1 ]
            "090001006d657461000000001400028008000200000000100800010000000001",
            # [ cmp eq reg 1 0x00000006 ]
            "08000100636d700020000280080001000000000108000200000000000c0003800500010006000000",
            # [ payload load 2b @ transport header + 2 => reg 1 ]
            "0c0001007061796c6f61640024000280080001000000000108000200000000020800030000000002"
            "0800040000000002",
            # [ cmp eq reg 1 0x0000901f ]
            "08000100636d700020000280080001000000000108000200000000000c000380060001001f900000",
            # [ immediate reg 1 0x0200570a ]
            "0e000100696d6d6564696174650000001800028008000100000000010c000280080001000a570002",
            # [ immediate reg 2 0x00005000 ]
            "0e000100696d6d6564696174650000001800028008000100000000020c0002800600010000500000",
            # [ nat dnat ip addr_min reg 1 proto_min reg 2 flags 0x2 ]
            "080001006e6174002c00028008000100000000010800020000000002080003000000000108000500"
            "000000020800070000000002",
        ],
    ),
    (  # tcp dport 8000-8002 dnat ip to 10.87.0.2
        rule(Port("tcp", 8000, 8002), Dnat(IPv4Address("10.87.0.2"))),
        [
            # [ meta load l4proto => reg 1 ]
            "090001006d657461000000001400028008000200000000100800010000000001",
            # [ cmp eq reg 1 0x00000006 ]
            "08000100636d700020000280080001000000000108000200000000000c0003800500010006000000",
            # [ payload load 2b @ transport header + 2 => reg 1 ]
            "0c0001007061796c6f61640024000280080001000000000108000200000000020800030000000002"
            "0800040000000002",
            # [ cmp gte reg 1 0x0000401f ]
            "08000100636d700020000280080001000000000108000200000000050c000380060001001f400000",
            # [ cmp lte reg 1 0x0000421f ]
            "08000100636d700020000280080001000000000108000200000000030c000380060001001f420000",
            # [ immediate reg 1 0x0200570a ]
            "0e000100696d6d6564696174650000001800028008000100000000010c000280080001000a570002",
            # [ nat dnat ip addr_min reg 1 ]
            "080001006e6174001c000280080001000000000108000200000000020800030000000001",
        ],
    ),
]


def expressions(encoded: bytes) -> list[str]:
    """The payload of each list element of an NFTA_RULE_EXPRESSIONS attribute, in hex."""
    ((kind, elements),) = nft.attributes(encoded)
    assert kind == wire.NFTA_RULE_EXPRESSIONS
    return [payload.hex() for _, payload in nft.attributes(elements)]


@pytest.mark.parametrize(("rule_", "golden"), GOLDEN, ids=[r.text() for r, _ in GOLDEN])
def test_each_expression_kind_is_encoded_as_nft_encodes_it(
    rule_: nftables.Rule, golden: list[str]
) -> None:
    encoded = runtime_firewall.encode_rule(nft.NFPROTO_INET, rule_).encode()
    assert expressions(encoded) == golden


# The DNS redirect of the namespace helper, in an `ip` table: `ip daddr 127.0.0.11 udp
# dport 53 dnat to 127.0.0.11:40001`. No `meta nfproto` check (the family says it).
DNS_UDP_RULE = (
    "340001800c0001007061796c6f61640024000280080001000000000108000200000000010800030000"
    "00001008000400000000042c00018008000100636d7000200002800800010000000001080002000000"
    "00000c000380080001007f00000b24000180090001006d657461000000001400028008000200000000"
    "1008000100000000012c00018008000100636d7000200002800800010000000001080002000000000"
    "00c0003800500010011000000340001800c0001007061796c6f616400240002800800010000000001"
    "0800020000000002080003000000000208000400000000022c00018008000100636d70002000028008"
    "0001000000000108000200000000000c00038006000100003500002c0001800e000100696d6d656469"
    "6174650000001800028008000100000000010c000280080001007f00000b2c0001800e000100696d6d"
    "6564696174650000001800028008000100000000020c000280060001009c41000038000180080001006e"
    "6174002c000280080001000000000108000200000000020800030000000001080005000000000208"
    "00070000000002"
)


def parse(batch: nft.Batch) -> list[tuple[int, int, int, bytes]]:
    """(type, flags, sequence number, body after the nfgenmsg) of each message."""
    data, _ = batch.encode()
    found = []
    offset = 0
    while offset < len(data):
        length = int.from_bytes(data[offset:offset + 4], "little")
        kind = int.from_bytes(data[offset + 4:offset + 6], "little")
        flags = int.from_bytes(data[offset + 6:offset + 8], "little")
        seq = int.from_bytes(data[offset + 8:offset + 12], "little")
        found.append((kind, flags, seq, data[offset + 16:offset + length]))
        offset += length
    assert offset == len(data)
    return found


def test_the_dns_redirect_rules_are_the_ones_nft_makes() -> None:
    batch = nft.dns_redirect_batch("linkd_dns", "127.0.0.11", 40001, 40002)
    rules = [body for kind, _, _, body in parse(batch) if kind == 0xA00 | wire.NFT_MSG_NEWRULE]
    assert len(rules) == 2
    udp = dict(nft.attributes(rules[0][4:]))[wire.NFTA_RULE_EXPRESSIONS]
    assert udp.hex() == DNS_UDP_RULE
    tcp = dict(nft.attributes(rules[1][4:]))[wire.NFTA_RULE_EXPRESSIONS]
    assert tcp == udp.replace(bytes([5, 0, 1, 0, 17]), bytes([5, 0, 1, 0, 6])).replace(
        (40001).to_bytes(2, "big"), (40002).to_bytes(2, "big"))


# What nft sent for `table inet lkt6 { chain postrouting { type nat hook postrouting
# priority srcnat; policy accept; } chain published { } }` (NEWTABLE, NEWCHAIN x2): the
# nfgenmsg (family inet) and the attributes.
NFT_TABLE_BODY = "01000000090001006c6b7436000000000800020000000000"
NFT_DELETE_BODY = "01000000090001006c6b743600000000"
NFT_BASE_CHAIN_BODY = (
    "01000000090001006c6b74360000000010000300706f7374726f7574696e6700080007006e6174000800"
    "05000000000114000480080001000000000408000200000000" "64"
)
NFT_CHAIN_BODY = "01000000090001006c6b7436000000000e0003007075626c6973686564000000"

LKT6 = nftables.Table("inet", "lkt6", (
    nftables.Chain("postrouting", nftables.Hook("nat", "postrouting", 100)),
    nftables.Chain("published", None),
))


def test_a_replacing_batch_declares_deletes_and_defines_and_asks_one_acknowledgement() -> None:
    messages = parse(runtime_firewall.replace_batch(LKT6))
    subsystem = wire.NFNL_SUBSYS_NFTABLES << 8
    assert [(kind, flags, seq) for kind, flags, seq, _ in messages] == [
        (wire.NFNL_MSG_BATCH_BEGIN, wire.NLM_F_REQUEST, 1),
        (subsystem | wire.NFT_MSG_NEWTABLE, wire.NLM_F_REQUEST | wire.NLM_F_CREATE, 2),
        (subsystem | wire.NFT_MSG_DELTABLE, wire.NLM_F_REQUEST, 3),
        (subsystem | wire.NFT_MSG_NEWTABLE, wire.NLM_F_REQUEST | wire.NLM_F_CREATE, 4),
        (subsystem | wire.NFT_MSG_NEWCHAIN, wire.NLM_F_REQUEST | wire.NLM_F_CREATE, 5),
        (subsystem | wire.NFT_MSG_NEWCHAIN,
         wire.NLM_F_REQUEST | wire.NLM_F_CREATE | wire.NLM_F_ACK, 6),  # the last asks
        (wire.NFNL_MSG_BATCH_END, wire.NLM_F_REQUEST, 7),
    ]
    bodies = [body.hex() for _, _, _, body in messages]
    # The batch's own messages name the subsystem (res_id, big-endian).
    assert bodies[0] == bodies[-1] == "0000000a"
    assert bodies[1:-1] == [NFT_TABLE_BODY, NFT_DELETE_BODY, NFT_TABLE_BODY,
                            NFT_BASE_CHAIN_BODY, NFT_CHAIN_BODY]
    _, what = runtime_firewall.replace_batch(LKT6).encode()
    assert what == {
        1: "start the batch", 2: "declare table lkt6", 3: "delete table lkt6",
        4: "create table lkt6",
        5: "create chain postrouting (nat hook postrouting priority 100)",
        6: "create chain published", 7: "commit the batch",
    }


def test_a_new_table_is_created_exclusively_and_rules_follow_every_chain() -> None:
    table = nftables.Table("inet", "lkt7", (
        nftables.Chain("prerouting", nftables.Hook("nat", "prerouting", -100),
                       (rule(Family(4), LocalDestination(), Jump("published")),)),
        nftables.Chain("published", None, (rule(Port("tcp", 80, 80), Dnat(
            IPv4Address("10.0.0.2"), 8080)),)),
    ))
    batch = runtime_firewall.replace_batch(table, exclusive=True)
    messages = parse(batch)
    kinds = [kind & 0xFF for kind, _, _, _ in messages[1:-1]]
    assert kinds == [wire.NFT_MSG_NEWTABLE, wire.NFT_MSG_NEWCHAIN, wire.NFT_MSG_NEWCHAIN,
                     wire.NFT_MSG_NEWRULE, wire.NFT_MSG_NEWRULE]  # the jump's target exists
    assert messages[1][1] == wire.NLM_F_REQUEST | wire.NLM_F_CREATE | wire.NLM_F_EXCL
    _, what = batch.encode()
    assert what[5] == ("add rule 1 of chain prerouting "
                       "(meta nfproto ipv4 fib daddr type local jump published)")
    assert what[6] == "add rule 1 of chain published (tcp dport 80 dnat ip to 10.0.0.2:8080)"


def test_addresses_need_a_prefix_and_one_ip_version_per_rule() -> None:
    with pytest.raises(ValueError, match="prefix /0"):
        nft.Rule(nft.NFPROTO_INET).address("daddr", bytes(4), 0)
    with pytest.raises(ValueError, match="both IPv4 and IPv6"):
        runtime_firewall.encode_rule(nft.NFPROTO_INET, rule(
            Address("saddr", net("10.0.0.0/8")), Address("daddr", net("fd00::/8")), Accept()))
    with pytest.raises(ValueError, match="two transport protocols"):
        runtime_firewall.encode_rule(nft.NFPROTO_INET, rule(
            Port("tcp", 1, 1), Port("udp", 1, 1), Accept()))
    # In an ip table an IPv6 address can never match either.
    with pytest.raises(ValueError):
        runtime_firewall.encode_rule(nft.NFPROTO_IPV4, rule(
            Address("saddr", net("fd00::/8")), Accept()))


def test_answers_and_listings_are_parsed_and_volatile_attributes_dropped() -> None:
    # An NLMSG_ERROR for sequence number 7 with ENOENT, then an acknowledgement of 8.
    def error(seq: int, code: int) -> bytes:
        request = (16).to_bytes(4, "little") + bytes(4) + seq.to_bytes(4, "little") + bytes(4)
        body = code.to_bytes(4, "little", signed=True) + request
        return (16 + len(body)).to_bytes(4, "little") + (2).to_bytes(2, "little") + bytes(10) + body

    assert transactions._acks(error(7, -2) + error(8, 0)) == [(7, -2), (8, 0)]
    chain = (wire.string(wire.NFTA_CHAIN_TABLE, "t") + wire.attr(wire.NFTA_CHAIN_HANDLE, bytes(8))
             + wire.string(wire.NFTA_CHAIN_NAME, "c") + wire.u32(wire.NFTA_CHAIN_USE, 3))
    attrs = nft.attributes(chain)
    assert [kind for kind, _ in attrs] == [1, 2, 3, 6]
    assert readback._stable(wire.NFT_MSG_GETCHAIN, attrs) == (
        wire.string(wire.NFTA_CHAIN_TABLE, "t") + wire.string(wire.NFTA_CHAIN_NAME, "c"))


def test_every_kind_of_match_and_statement_is_covered() -> None:
    kinds = {type(m) for r, _ in GOLDEN for m in r.matches} | {
        type(r.statement) for r, _ in GOLDEN}
    assert kinds == {Interface, Family, Address, Port, Icmpv6Type, ConntrackState,
                     ConntrackStatus, LocalDestination, Accept, Drop, Jump, Notrack,
                     Masquerade, Dnat}
