"""nf_tables over netlink: linkd's one encoder of nftables rules, and the talk with the kernel.

Two users. The namespace helper writes each container's DNS redirect (`replace_dns_redirect`,
in the container's namespace); `linkd.runtime.kernel.firewall` writes each stack's table in the
host's namespace. Neither runs the nft tool: a host may have none (Debian without the
nftables package), and a fork and exec costs 7-20 ms where a batch costs ~0.1.

**Rules.** `Rule` builds the expressions of one rule match by match, exactly as nft 1.0.6
encodes the same text (compare `nft --debug=netlink`), so `nft list table` shows the same
rules whichever way they arrived:

    iifname "br0"          meta load iifname; cmp eq "br0" NUL-padded to IFNAMSIZ (16)
    oifname "lkb-*"        meta load oifname; cmp eq "lkb-" (a prefix: no NUL)
    ip daddr 10.0.0.0/24   [meta load nfproto; cmp eq ipv4]; payload load 3b @ network
                           header + 16; cmp eq 10.0.0 (a prefix on a byte boundary loads
                           only its bytes; any other: the whole address, bitwise & mask)
    tcp dport 80-90        [meta load l4proto; cmp eq tcp]; payload load 2b @ transport
                           header + 2; cmp gte 80; cmp lte 90
    icmpv6 type 135        [nfproto ipv6; l4proto ipv6-icmp]; payload 1b @ transport + 0
    ct state est,rel       ct load state; bitwise & 6 ^ 0; cmp neq 0 (host byte order)
    fib daddr type local   fib daddr type; cmp eq RTN_LOCAL (host byte order)
    dnat ip to A:P         immediate reg 1 A; immediate reg 2 P; nat dnat ip reg 1 reg 2

The bracketed checks are the dependencies nft adds: an IPv4 address in an `inet` table
must not be read from an IPv6 header, a port only from its protocol's header. Like nft,
a rule adds each only once, and none that the table's family or an earlier match of the
rule already implies.

**Transactions.** A `Batch` is one nfnetlink batch: every message in it applies or none
does. The kernel handles the batch inside `send`, so its answers are queued when that
returns. It answers a failing message with its error whether asked or not, and only the
last message asks for an acknowledgement: the kernel answers in order, so that
acknowledgement, with no error before it, means the batch was read to its end and
committed (a failed commit is reported against the batch's first message). Answers that
no longer fit the socket's buffer make the next read fail with ENOBUFS, an error too.

**Reading back.** `dump` asks for every object of a kind (tables, chains, rules of one
table) and collects the answers up to NLMSG_DONE, starting again if the kernel says the
ruleset changed while it answered (NLM_F_DUMP_INTR). `table_state` is what a table holds
without handles and counters: equal states mean equal tables.

The socket belongs to the network namespace of the thread that opens it: the helper opens
it while it is inside a container's namespace, so the DNS rules land there.

Kernel constants: include/uapi/linux/netfilter/nf_tables.h, nfnetlink.h, netlink.h,
nf_conntrack_common.h. No imports beyond `_socket`: this module is loaded into the
namespace helper.
"""

from __future__ import annotations

import _socket
import os
import sys

NETLINK_NETFILTER = 12
SOL_NETLINK, NETLINK_CAP_ACK = 270, 10
SO_SNDBUFFORCE = 32
NLMSG_ERROR, NLMSG_DONE = 2, 3
EIO, ENOBUFS = 5, 105
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP_INTR = 0x1, 0x4, 0x10
NLM_F_DUMP = 0x300
NLM_F_EXCL, NLM_F_CREATE, NLM_F_APPEND = 0x200, 0x400, 0x800
NLA_F_NESTED = 0x8000

NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 16, 17
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWTABLE, NFT_MSG_GETTABLE, NFT_MSG_DELTABLE = 0, 1, 2
NFT_MSG_NEWCHAIN, NFT_MSG_GETCHAIN = 3, 4
NFT_MSG_NEWRULE, NFT_MSG_GETRULE = 6, 7
NFPROTO_UNSPEC, NFPROTO_INET, NFPROTO_IPV4, NFPROTO_IPV6 = 0, 1, 2, 10
FAMILIES = {"inet": NFPROTO_INET, "ip": NFPROTO_IPV4}

NFTA_TABLE_NAME, NFTA_TABLE_FLAGS = 1, 2
NFTA_CHAIN_TABLE, NFTA_CHAIN_HANDLE, NFTA_CHAIN_NAME, NFTA_CHAIN_HOOK = 1, 2, 3, 4
NFTA_CHAIN_POLICY, NFTA_CHAIN_USE, NFTA_CHAIN_TYPE, NFTA_CHAIN_COUNTERS = 5, 6, 7, 8
NFTA_HOOK_HOOKNUM, NFTA_HOOK_PRIORITY = 1, 2
NFTA_RULE_TABLE, NFTA_RULE_CHAIN, NFTA_RULE_HANDLE, NFTA_RULE_EXPRESSIONS = 1, 2, 3, 4
NFTA_LIST_ELEM = 1
NFTA_EXPR_NAME, NFTA_EXPR_DATA = 1, 2
NFTA_DATA_VALUE, NFTA_DATA_VERDICT = 1, 2
NFTA_VERDICT_CODE, NFTA_VERDICT_CHAIN = 1, 2
# Hook numbers of the inet/ip families (NF_INET_*).
HOOKS = {"prerouting": 0, "input": 1, "forward": 2, "output": 3, "postrouting": 4}
NF_DROP, NF_ACCEPT, NFT_JUMP = 0, 1, -3
POLICIES = {"drop": NF_DROP, "accept": NF_ACCEPT}

NFT_REG_VERDICT, NFT_REG_1, NFT_REG_2 = 0, 1, 2
NFT_PAYLOAD_NETWORK_HEADER, NFT_PAYLOAD_TRANSPORT_HEADER = 1, 2
NFT_CMP_EQ, NFT_CMP_NEQ, NFT_CMP_LTE, NFT_CMP_GTE = 0, 1, 3, 5
NFT_META_IIFNAME, NFT_META_OIFNAME, NFT_META_NFPROTO, NFT_META_L4PROTO = 6, 7, 15, 16
NFT_META_IIFKIND, NFT_META_OIFKIND = 26, 27
NFT_CT_STATE, NFT_CT_STATUS = 0, 2
NFTA_FIB_F_DADDR, NFT_FIB_RESULT_ADDRTYPE, RTN_LOCAL = 0x2, 3, 2
NFT_NAT_DNAT = 1
NF_NAT_RANGE_PROTO_SPECIFIED = 0x2
IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMPV6, IPPROTO_SCTP = 6, 17, 58, 132
L4PROTOS = {"tcp": IPPROTO_TCP, "udp": IPPROTO_UDP, "sctp": IPPROTO_SCTP}
IFNAMSIZ = 16

_NATIVE = sys.byteorder  # netlink headers, and some nf_tables registers (ct, fib)


# -- attributes ---------------------------------------------------------------------------


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    header = length.to_bytes(2, _NATIVE) + kind.to_bytes(2, _NATIVE)
    return header + payload + b"\0" * (-length % 4)


def _nest(kind: int, *attrs: bytes) -> bytes:
    return _attr(kind | NLA_F_NESTED, b"".join(attrs))


def _u32(kind: int, value: int) -> bytes:
    return _attr(kind, value.to_bytes(4, "big", signed=value < 0))


def _str(kind: int, text: str) -> bytes:
    return _attr(kind, text.encode() + b"\0")


def _data(kind: int, value: bytes) -> bytes:
    return _nest(kind, _attr(NFTA_DATA_VALUE, value))


def attributes(data: bytes) -> list[tuple[int, bytes]]:
    """(type without the nested flag, payload) of each attribute in `data`."""
    found = []
    offset = 0
    while offset + 4 <= len(data):
        length = int.from_bytes(data[offset:offset + 2], _NATIVE)
        kind = int.from_bytes(data[offset + 2:offset + 4], _NATIVE)
        if length < 4:
            break
        found.append((kind & ~NLA_F_NESTED, data[offset + 4:offset + length]))
        offset += (length + 3) & ~3
    return found


# -- expressions --------------------------------------------------------------------------
# Attribute numbers are the kernel's NFTA_<EXPR>_* (in the order nft sends them).


def _expr(name: str, *attrs: bytes) -> bytes:
    return _nest(NFTA_LIST_ELEM, _str(NFTA_EXPR_NAME, name), _nest(NFTA_EXPR_DATA, *attrs))


def _meta(key: int) -> bytes:
    return _expr("meta", _u32(2, key), _u32(1, NFT_REG_1))  # _KEY, _DREG


def _cmp(op: int, value: bytes) -> bytes:
    return _expr("cmp", _u32(1, NFT_REG_1), _u32(2, op), _data(3, value))  # _SREG, _OP, _DATA


def _payload(base: int, offset: int, length: int) -> bytes:
    # _DREG, _BASE, _OFFSET, _LEN
    return _expr("payload", _u32(1, NFT_REG_1), _u32(2, base), _u32(3, offset), _u32(4, length))


def _bitwise(mask: bytes) -> bytes:
    """reg 1 = (reg 1 & mask) ^ 0: _SREG, _DREG, _LEN, _MASK, _XOR."""
    return _expr("bitwise", _u32(1, NFT_REG_1), _u32(2, NFT_REG_1), _u32(3, len(mask)),
                 _data(4, mask), _data(5, bytes(len(mask))))


def _ct(key: int) -> bytes:
    return _expr("ct", _u32(2, key), _u32(1, NFT_REG_1))  # _KEY, _DREG


def _immediate(register: int, value: bytes) -> bytes:
    return _expr("immediate", _u32(1, register), _data(2, value))  # _DREG, _DATA


def _verdict(code: int, chain: str | None = None) -> bytes:
    target = [_str(NFTA_VERDICT_CHAIN, chain)] if chain is not None else []
    return _expr("immediate", _u32(1, NFT_REG_VERDICT),
                 _nest(2, _nest(NFTA_DATA_VERDICT, _u32(NFTA_VERDICT_CODE, code), *target)))


def _native32(value: int) -> bytes:
    return value.to_bytes(4, _NATIVE)


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
        return _nest(NFTA_RULE_EXPRESSIONS, *self.expressions)

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
            _expr("fib", _u32(3, NFTA_FIB_F_DADDR), _u32(2, NFT_FIB_RESULT_ADDRTYPE),
                  _u32(1, NFT_REG_1)),
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
        self.expressions.append(_nest(NFTA_LIST_ELEM, _str(NFTA_EXPR_NAME, "notrack")))
        return self

    def masquerade(self) -> Rule:
        self.expressions.append(_expr("masq"))
        return self

    def dnat(self, packed: bytes, port: int | None = None) -> Rule:
        """`dnat ip to ADDRESS[:PORT]`: _TYPE, _FAMILY, _REG_ADDR_MIN[, _REG_PROTO_MIN,
        _FLAGS]; without a port the packet keeps its own."""
        self.expressions.append(_immediate(NFT_REG_1, packed))
        nat = [_u32(1, NFT_NAT_DNAT), _u32(2, NFPROTO_IPV4), _u32(3, NFT_REG_1)]
        if port is not None:
            self.expressions.append(_immediate(NFT_REG_2, port.to_bytes(2, "big")))
            nat += [_u32(5, NFT_REG_2), _u32(7, NF_NAT_RANGE_PROTO_SPECIFIED)]
        self.expressions.append(_expr("nat", *nat))
        return self


# -- batches ------------------------------------------------------------------------------


def _message(kind: int, flags: int, seq: int, family: int, body: bytes,
             res_id: int = 0) -> bytes:
    length = 16 + 4 + len(body)
    return (
        length.to_bytes(4, _NATIVE) + kind.to_bytes(2, _NATIVE)
        + (NLM_F_REQUEST | flags).to_bytes(2, _NATIVE)
        + seq.to_bytes(4, _NATIVE) + (0).to_bytes(4, _NATIVE)  # port id: the kernel's
        + bytes([family, 0]) + res_id.to_bytes(2, "big")  # nfgenmsg, NFNETLINK_V0
        + body
    )


class Batch:
    """The messages of one transaction on tables of one family, each with what it does
    (for the error that names the step that failed)."""

    def __init__(self, family: int) -> None:
        self.family = family
        self.steps: list[tuple[int, int, str, bytes]] = []  # kind, flags, label, body

    def declare_table(self, table: str) -> Batch:
        """Create `table` if it is missing; leave it as it is if not."""
        body = _str(NFTA_TABLE_NAME, table) + _u32(NFTA_TABLE_FLAGS, 0)
        self.steps.append((NFT_MSG_NEWTABLE, NLM_F_CREATE, f"declare table {table}", body))
        return self

    def create_table(self, table: str, exclusive: bool = False) -> Batch:
        """Create `table`; with `exclusive` the batch fails (EEXIST) if it exists."""
        flags = NLM_F_CREATE | (NLM_F_EXCL if exclusive else 0)
        body = _str(NFTA_TABLE_NAME, table) + _u32(NFTA_TABLE_FLAGS, 0)
        self.steps.append((NFT_MSG_NEWTABLE, flags, f"create table {table}", body))
        return self

    def delete_table(self, table: str) -> Batch:
        body = _str(NFTA_TABLE_NAME, table)
        self.steps.append((NFT_MSG_DELTABLE, 0, f"delete table {table}", body))
        return self

    def chain(self, table: str, name: str, kind: str | None = None, hook: str | None = None,
              priority: int = 0, policy: str = "accept") -> Batch:
        """A regular chain, or with `kind` ("filter", "nat") and `hook` a base chain."""
        body = _str(NFTA_CHAIN_TABLE, table) + _str(NFTA_CHAIN_NAME, name)
        label = f"create chain {name}"
        if kind is not None and hook is not None:
            body += (_str(NFTA_CHAIN_TYPE, kind) + _u32(NFTA_CHAIN_POLICY, POLICIES[policy])
                     + _nest(NFTA_CHAIN_HOOK, _u32(NFTA_HOOK_HOOKNUM, HOOKS[hook]),
                             _u32(NFTA_HOOK_PRIORITY, priority)))
            label += f" ({kind} hook {hook} priority {priority})"
        self.steps.append((NFT_MSG_NEWCHAIN, NLM_F_CREATE, label, body))
        return self

    def rule(self, table: str, chain: str, rule: Rule, label: str) -> Batch:
        body = _str(NFTA_RULE_TABLE, table) + _str(NFTA_RULE_CHAIN, chain) + rule.encode()
        self.steps.append((NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, label, body))
        return self

    def encode(self) -> tuple[bytes, dict[int, str]]:
        """The batch's bytes, and what each message does by sequence number."""
        parts = [_message(NFNL_MSG_BATCH_BEGIN, 0, 1, NFPROTO_UNSPEC, b"", NFNL_SUBSYS_NFTABLES)]
        what = {1: "start the batch"}
        last = len(self.steps) + 1
        for seq, (kind, flags, label, body) in enumerate(self.steps, start=2):
            ack = NLM_F_ACK if seq == last else 0
            parts.append(_message(NFNL_SUBSYS_NFTABLES << 8 | kind, flags | ack, seq,
                                  self.family, body))
            what[seq] = label
        parts.append(_message(NFNL_MSG_BATCH_END, 0, last + 1, NFPROTO_UNSPEC, b"",
                              NFNL_SUBSYS_NFTABLES))
        what[last + 1] = "commit the batch"
        return b"".join(parts), what


def _open() -> _socket.socket:
    try:
        sock = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW | _socket.SOCK_CLOEXEC,
                              NETLINK_NETFILTER)
    except OSError as exc:
        raise OSError(exc.errno, f"open a NETLINK_NETFILTER socket: {exc.strerror}") from None
    # An error's answer carries only the failing message's header, not all of it.
    sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
    return sock


def commit(batch: Batch) -> None:
    """Send `batch` in the current thread's network namespace. Raises OSError naming
    the step that failed (FileExistsError, FileNotFoundError, ... by its errno)."""
    data, what = batch.encode()
    last = max(what) - 1  # the message that asks for the acknowledgement
    sock = _open()
    try:
        if len(data) > 64 * 1024:  # the kernel refuses a message above the send buffer
            sock.setsockopt(_socket.SOL_SOCKET, SO_SNDBUFFORCE, 2 * len(data))
        sock.send(data)
        sock.setblocking(False)  # every answer is queued already: read until none is left
        errors: list[tuple[int, int]] = []
        acknowledged = False
        while True:
            try:
                answer = sock.recv(65536)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != ENOBUFS:
                    raise
                raise OSError(ENOBUFS, "nftables: the kernel's answers to the batch were "
                                       "lost (receive buffer full)") from None
            for seq, error in _acks(answer):
                if error:
                    errors.append((seq, error))
                elif seq == last:
                    acknowledged = True
        if errors:
            seq, error = min(errors)
            raise OSError(-error, f"{what.get(seq, f'message {seq}')}: {os.strerror(-error)}")
        if not acknowledged:
            raise OSError(EIO, f"{what[last]}: no acknowledgement")
    finally:
        sock.close()


def _acks(data: bytes) -> list[tuple[int, int]]:
    """(sequence number, error) of each NLMSG_ERROR message in `data` (error 0: ack)."""
    return [
        # The request's header follows the error: its sequence number is at offset 8.
        (int.from_bytes(body[12:16], _NATIVE), int.from_bytes(body[:4], _NATIVE, signed=True))
        for kind, _, body in _messages(data)
        if kind == NLMSG_ERROR and len(body) >= 4 + 16
    ]


def _messages(data: bytes) -> list[tuple[int, int, bytes]]:
    """(type, flags, payload after the netlink header) of each message in `data`."""
    found = []
    offset = 0
    while offset + 16 <= len(data):
        length = int.from_bytes(data[offset:offset + 4], _NATIVE)
        if length < 16:
            break
        kind = int.from_bytes(data[offset + 4:offset + 6], _NATIVE)
        flags = int.from_bytes(data[offset + 6:offset + 8], _NATIVE)
        found.append((kind, flags, data[offset + 16:offset + length]))
        offset += (length + 3) & ~3
    return found


# -- reading back -------------------------------------------------------------------------


def dump(kind: int, family: int, body: bytes = b"", attempts: int = 5) -> list[bytes]:
    """The attributes (after the nfgenmsg header) of every object NFT_MSG_GET<kind>
    lists in `family`, filtered by `body` where the kernel filters (rules by table)."""
    for _ in range(attempts):
        sock = _open()
        try:
            sock.settimeout(5)  # the kernel answers at once; never hang a caller
            sock.send(_message(NFNL_SUBSYS_NFTABLES << 8 | kind, NLM_F_DUMP, 1, family, body))
            found, interrupted = _read_dump(sock)
        finally:
            sock.close()
        if not interrupted:  # else the ruleset changed while the kernel answered: again
            return found
    raise OSError(EIO, "nftables: the ruleset kept changing while it was listed")


def _read_dump(sock: _socket.socket) -> tuple[list[bytes], bool]:
    found: list[bytes] = []
    interrupted = False
    while True:
        for kind, flags, payload in _messages(sock.recv(1 << 20)):
            interrupted |= bool(flags & NLM_F_DUMP_INTR)
            if kind == NLMSG_DONE:
                return found, interrupted
            if kind == NLMSG_ERROR:
                error = int.from_bytes(payload[:4], _NATIVE, signed=True)
                if error:
                    raise OSError(-error, f"nftables: list: {os.strerror(-error)}")
            if kind >> 8 == NFNL_SUBSYS_NFTABLES:
                found.append(payload[4:])


def _name(attrs: list[tuple[int, bytes]], kind: int) -> str | None:
    for got, payload in attrs:
        if got == kind:
            return payload.rstrip(b"\0").decode(errors="replace")
    return None


def table_names(family: int) -> list[str]:
    """The names of the tables of `family` in the current network namespace."""
    names = (_name(attributes(body), NFTA_TABLE_NAME) for body in dump(NFT_MSG_GETTABLE, family))
    return [name for name in names if name is not None]


# What changes while a table stays the same: handles, use counts, counters, padding.
_VOLATILE = {
    NFT_MSG_GETTABLE: {3, 4, 5},  # _USE, _HANDLE, _PAD
    NFT_MSG_GETCHAIN: {NFTA_CHAIN_HANDLE, NFTA_CHAIN_USE, NFTA_CHAIN_COUNTERS, 9},  # 9: _PAD
    NFT_MSG_GETRULE: {NFTA_RULE_HANDLE, 6, 8},  # _POSITION, _PAD
}


def _stable(kind: int, attrs: list[tuple[int, bytes]]) -> bytes:
    return b"".join(
        _attr(got, payload) for got, payload in attrs if got not in _VOLATILE[kind]
    )


def table_state(family: int, table: str) -> tuple[bytes, ...] | None:
    """What `table` holds, as the kernel lists it without handles and counters: the
    table, then its chains, then its rules in order. Equal states are equal tables. None
    when there is no such table."""
    state = []
    for kind, key, body in (
        (NFT_MSG_GETTABLE, NFTA_TABLE_NAME, b""),
        (NFT_MSG_GETCHAIN, NFTA_CHAIN_TABLE, b""),
        (NFT_MSG_GETRULE, NFTA_RULE_TABLE, _str(NFTA_RULE_TABLE, table)),
    ):
        for found in dump(kind, family, body):
            attrs = attributes(found)
            if _name(attrs, key) == table:
                state.append(_stable(kind, attrs))
        if not state:
            return None
    return tuple(state)


# -- the DNS redirect of the namespace helper ---------------------------------------------


def dns_redirect_batch(table: str, address: str, udp_port: int, tcp_port: int,
                       replace: bool = False) -> Batch:
    """The batch that creates `table` (fails with EEXIST if there is one), or with
    `replace` the one that replaces it: `ip daddr ADDRESS udp|tcp dport 53 dnat to
    ADDRESS:PORT` in a nat output chain."""
    addr = _socket.inet_aton(address)
    batch = Batch(NFPROTO_IPV4)
    if replace:  # nft's "declare, delete, define"
        batch.declare_table(table).delete_table(table).create_table(table)
    else:
        batch.create_table(table, exclusive=True)
    batch.chain(table, "output", "nat", "output", -100)
    for name, port in (("udp", udp_port), ("tcp", tcp_port)):
        rule = Rule(NFPROTO_IPV4).address("daddr", addr, 32).dport(L4PROTOS[name], 53, 53)
        batch.rule(table, "output", rule.dnat(addr, port), f"add the {name} dnat rule")
    return batch


def replace_dns_redirect(table: str, address: str, udp_port: int, tcp_port: int) -> None:
    """In the current thread's network namespace: `table` holding only the chain that
    sends `address`:53 to `udp_port` and `tcp_port`. Raises OSError naming the step
    that failed.

    Two batches, not always nft's one: a transaction that deletes a table makes the
    kernel's commit wait for RCU grace periods (8-24 ms here, even for a table declared
    in the same batch: that wait, not the fork and exec, was most of what `nft -f` cost
    a container). A new namespace has no table to delete; only when the table exists
    (EEXIST, nothing changed) does the replacing batch follow.
    """
    try:
        commit(dns_redirect_batch(table, address, udp_port, tcp_port))
    except FileExistsError:
        commit(dns_redirect_batch(table, address, udp_port, tcp_port, replace=True))
