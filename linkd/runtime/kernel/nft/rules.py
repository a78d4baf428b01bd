"""nf_tables rule expressions, built match by match exactly as nft 1.0.6 encodes them.

`Rule` builds the expressions of one rule (compare `nft --debug=netlink`), so `nft list
table` shows the same rules whichever way they arrived:

    iifname "br0"          meta load iifname; cmp eq "br0" NUL-padded to IFNAMSIZ (16)
    oifname "lkb-*"        meta load oifname; cmp eq "lkb-" (a prefix: no NUL)
    ip daddr 10.0.0.0/24   [meta load nfproto; cmp eq ipv4]; payload load 3b @ network
                           header + 16; cmp eq 10.0.0 (a prefix on a byte boundary loads
                           only its bytes; any other: the whole address, bitwise & mask)
    tcp dport 80-90        [meta load l4proto; cmp eq tcp]; payload load 2b @ transport
                           header + 2; cmp gte 80; cmp lte 90
    ip saddr != @peers4    [meta load nfproto; cmp eq ipv4]; payload load 4b @ network
                           header + 12; lookup set peers4 (inverted: not an element)
    icmpv6 type 135        [nfproto ipv6; l4proto ipv6-icmp]; payload 1b @ transport + 0
    ct state est,rel       ct load state; bitwise & 6 ^ 0; cmp neq 0 (host byte order)
    fib daddr type local   fib daddr type; cmp eq RTN_LOCAL (host byte order)
    dnat ip to A:P         immediate reg 1 A; immediate reg 2 P; nat dnat ip reg 1 reg 2

The bracketed checks are the dependencies nft adds: an IPv4 address in an `inet` table
must not be read from an IPv6 header, a port only from its protocol's header. Like nft,
a rule adds each only once, and none that the table's family or an earlier match of the
rule already implies.
"""

from __future__ import annotations

from linkd.runtime.kernel.nft.wire import (
    IFNAMSIZ,
    IPPROTO_ICMPV6,
    NATIVE,
    NF_ACCEPT,
    NF_DROP,
    NF_NAT_RANGE_PROTO_SPECIFIED,
    NFPROTO_INET,
    NFPROTO_IPV4,
    NFPROTO_IPV6,
    NFT_CMP_EQ,
    NFT_CMP_GTE,
    NFT_CMP_LTE,
    NFT_CMP_NEQ,
    NFT_FIB_RESULT_ADDRTYPE,
    NFT_JUMP,
    NFT_LOOKUP_F_INV,
    NFT_META_IIFKIND,
    NFT_META_IIFNAME,
    NFT_META_L4PROTO,
    NFT_META_NFPROTO,
    NFT_META_OIFKIND,
    NFT_META_OIFNAME,
    NFT_NAT_DNAT,
    NFT_PAYLOAD_NETWORK_HEADER,
    NFT_PAYLOAD_TRANSPORT_HEADER,
    NFT_REG_1,
    NFT_REG_2,
    NFT_REG_VERDICT,
    NFTA_DATA_VERDICT,
    NFTA_EXPR_DATA,
    NFTA_EXPR_NAME,
    NFTA_FIB_F_DADDR,
    NFTA_LIST_ELEM,
    NFTA_RULE_EXPRESSIONS,
    NFTA_VERDICT_CHAIN,
    NFTA_VERDICT_CODE,
    RTN_LOCAL,
    data_value,
    nest,
    string,
    u32,
)

# -- expressions --------------------------------------------------------------------------
# Attribute numbers are the kernel's NFTA_<EXPR>_* (in the order nft sends them).


def _expr(name: str, *attrs: bytes) -> bytes:
    return nest(NFTA_LIST_ELEM, string(NFTA_EXPR_NAME, name), nest(NFTA_EXPR_DATA, *attrs))


def _meta(key: int) -> bytes:
    return _expr("meta", u32(2, key), u32(1, NFT_REG_1))  # _KEY, _DREG


def _cmp(op: int, value: bytes) -> bytes:
    return _expr("cmp", u32(1, NFT_REG_1), u32(2, op), data_value(3, value))  # _SREG, _OP, _DATA


def _payload(base: int, offset: int, length: int) -> bytes:
    # _DREG, _BASE, _OFFSET, _LEN
    return _expr("payload", u32(1, NFT_REG_1), u32(2, base), u32(3, offset), u32(4, length))


def _bitwise(mask: bytes) -> bytes:
    """reg 1 = (reg 1 & mask) ^ 0: _SREG, _DREG, _LEN, _MASK, _XOR."""
    return _expr("bitwise", u32(1, NFT_REG_1), u32(2, NFT_REG_1), u32(3, len(mask)),
                 data_value(4, mask), data_value(5, bytes(len(mask))))


def _ct(key: int) -> bytes:
    return _expr("ct", u32(2, key), u32(1, NFT_REG_1))  # _KEY, _DREG


def _immediate(register: int, value: bytes) -> bytes:
    return _expr("immediate", u32(1, register), data_value(2, value))  # _DREG, _DATA


def _verdict(code: int, chain: str | None = None) -> bytes:
    target = [string(NFTA_VERDICT_CHAIN, chain)] if chain is not None else []
    return _expr("immediate", u32(1, NFT_REG_VERDICT),
                 nest(2, nest(NFTA_DATA_VERDICT, u32(NFTA_VERDICT_CODE, code), *target)))


def _native32(value: int) -> bytes:
    return value.to_bytes(4, NATIVE)


class Rule:
    """The expressions of one rule, built as nft builds them (see the module docstring).

    Each method adds a match or a statement and returns the rule, so a rule reads like
    its text: `Rule(NFPROTO_INET).interface("iif", "br0").verdict("accept")`.
    """

    def __init__(self, family: int) -> None:
        self.family = family
        self.expressions: list[bytes] = []
        # What the rule has established so far: an ip table sees only IPv4.
        self._nfproto: int | None = family if family != NFPROTO_INET else None
        self._l4proto: int | None = None

    def encode(self) -> bytes:
        """The rule's NFTA_RULE_EXPRESSIONS attribute."""
        return nest(NFTA_RULE_EXPRESSIONS, *self.expressions)

    # matches

    def interface(self, direction: str, name: str, negate: bool = False) -> Rule:
        """`iifname`/`oifname` (direction "iif"/"oif"); a name ending in `*` is a prefix."""
        key = NFT_META_IIFNAME if direction == "iif" else NFT_META_OIFNAME
        value = name[:-1].encode() if name.endswith("*") else name.encode().ljust(IFNAMSIZ, b"\0")
        self.expressions += [_meta(key), _cmp(NFT_CMP_NEQ if negate else NFT_CMP_EQ, value)]
        return self

    def interface_kind(self, direction: str, kind: str) -> Rule:
        """`meta iifkind|oifkind "KIND"` (the device's rtnl kind: "bridge", "veth")."""
        key = NFT_META_IIFKIND if direction == "iif" else NFT_META_OIFKIND
        self.expressions += [_meta(key), _cmp(NFT_CMP_EQ, kind.encode().ljust(IFNAMSIZ, b"\0"))]
        return self

    def nfproto(self, nfproto: int) -> Rule:
        """`meta nfproto ipv4|ipv6`."""
        self.expressions += [_meta(NFT_META_NFPROTO), _cmp(NFT_CMP_EQ, bytes([nfproto]))]
        self._nfproto = nfproto
        return self

    def address(self, field: str, packed: bytes, prefix: int, negate: bool = False) -> Rule:
        """`ip|ip6 saddr|daddr ADDRESS/PREFIX` (field "saddr"/"daddr"; the version is the
        length of `packed`: 4 or 16 bytes)."""
        size = len(packed)
        self._need_nfproto(NFPROTO_IPV4 if size == 4 else NFPROTO_IPV6)
        offset = {(4, "saddr"): 12, (4, "daddr"): 16, (16, "saddr"): 8, (16, "daddr"): 24}
        op = NFT_CMP_NEQ if negate else NFT_CMP_EQ
        if not 0 < prefix <= size * 8:
            raise ValueError(f"prefix /{prefix} of a {size * 8}-bit address")
        if prefix % 8 == 0:
            whole = prefix // 8
            self.expressions += [
                _payload(NFT_PAYLOAD_NETWORK_HEADER, offset[size, field], whole),
                _cmp(op, packed[:whole]),
            ]
        else:
            mask = (((1 << prefix) - 1) << (size * 8 - prefix)).to_bytes(size, "big")
            network = bytes(a & m for a, m in zip(packed, mask, strict=True))
            self.expressions += [
                _payload(NFT_PAYLOAD_NETWORK_HEADER, offset[size, field], size),
                _bitwise(mask),
                _cmp(op, network),
            ]
        return self

    def lookup(self, field: str, size: int, name: str, set_id: int | None = None,
               negate: bool = False) -> Rule:
        """`ip|ip6 saddr|daddr [!=] @NAME`: the address (of `size` bytes: 4 or 16) is an
        element of the table's set NAME. _SREG, _SET, _SET_ID (the set's id in the batch
        that makes it, as nft sends it; the kernel finds the set by name first), _FLAGS."""
        self._need_nfproto(NFPROTO_IPV4 if size == 4 else NFPROTO_IPV6)
        offset = {(4, "saddr"): 12, (4, "daddr"): 16, (16, "saddr"): 8, (16, "daddr"): 24}
        attrs = [u32(2, NFT_REG_1), string(1, name)]
        if set_id is not None:
            attrs.append(u32(4, set_id))
        if negate:
            attrs.append(u32(5, NFT_LOOKUP_F_INV))
        self.expressions += [_payload(NFT_PAYLOAD_NETWORK_HEADER, offset[size, field], size),
                             _expr("lookup", *attrs)]
        return self

    def dport(self, l4proto: int, first: int, last: int) -> Rule:
        """`tcp|udp|sctp dport FIRST[-LAST]` (the port is at offset 2 in all three)."""
        self._need_l4proto(l4proto)
        self.expressions.append(_payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2))
        if first == last:
            self.expressions.append(_cmp(NFT_CMP_EQ, first.to_bytes(2, "big")))
        else:
            self.expressions += [_cmp(NFT_CMP_GTE, first.to_bytes(2, "big")),
                                 _cmp(NFT_CMP_LTE, last.to_bytes(2, "big"))]
        return self

    def icmpv6_type(self, kind: int) -> Rule:
        self._need_nfproto(NFPROTO_IPV6)
        self._need_l4proto(IPPROTO_ICMPV6)
        self.expressions += [_payload(NFT_PAYLOAD_TRANSPORT_HEADER, 0, 1),
                             _cmp(NFT_CMP_EQ, bytes([kind]))]
        return self

    def ct_any(self, key: int, bits: int) -> Rule:
        """`ct state A,B` (key NFT_CT_STATE) or `ct status S` (NFT_CT_STATUS): any of
        `bits` is set."""
        self.expressions += [_ct(key), _bitwise(_native32(bits)),
                             _cmp(NFT_CMP_NEQ, _native32(0))]
        return self

    def local_destination(self) -> Rule:
        """`fib daddr type local`: _FLAGS, _RESULT, _DREG; the type is host byte order."""
        self.expressions += [
            _expr("fib", u32(3, NFTA_FIB_F_DADDR), u32(2, NFT_FIB_RESULT_ADDRTYPE),
                  u32(1, NFT_REG_1)),
            _cmp(NFT_CMP_EQ, _native32(RTN_LOCAL)),
        ]
        return self

    def _need_nfproto(self, nfproto: int) -> None:
        if self._nfproto is None:
            self.nfproto(nfproto)
        elif self._nfproto != nfproto:
            raise ValueError("a rule matching both IPv4 and IPv6 headers matches nothing")

    def _need_l4proto(self, l4proto: int) -> None:
        if self._l4proto is None:
            self.expressions += [_meta(NFT_META_L4PROTO), _cmp(NFT_CMP_EQ, bytes([l4proto]))]
            self._l4proto = l4proto
        elif self._l4proto != l4proto:
            raise ValueError("a rule matching two transport protocols matches nothing")

    # statements

    def verdict(self, name: str, chain: str | None = None) -> Rule:
        """`accept`, `drop`, or `jump CHAIN`."""
        codes = {"accept": NF_ACCEPT, "drop": NF_DROP, "jump": NFT_JUMP}
        self.expressions.append(_verdict(codes[name], chain))
        return self

    def notrack(self) -> Rule:
        self.expressions.append(nest(NFTA_LIST_ELEM, string(NFTA_EXPR_NAME, "notrack")))
        return self

    def masquerade(self) -> Rule:
        self.expressions.append(_expr("masq"))
        return self

    def dnat(self, packed: bytes, port: int | None = None) -> Rule:
        """`dnat ip to ADDRESS[:PORT]`: _TYPE, _FAMILY, _REG_ADDR_MIN[, _REG_PROTO_MIN,
        _FLAGS]; without a port the packet keeps its own."""
        self.expressions.append(_immediate(NFT_REG_1, packed))
        nat = [u32(1, NFT_NAT_DNAT), u32(2, NFPROTO_IPV4), u32(3, NFT_REG_1)]
        if port is not None:
            self.expressions.append(_immediate(NFT_REG_2, port.to_bytes(2, "big")))
            nat += [u32(5, NFT_REG_2), u32(7, NF_NAT_RANGE_PROTO_SPECIFIED)]
        self.expressions.append(_expr("nat", *nat))
        return self
