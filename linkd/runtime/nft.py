"""The DNS redirect of `nshelper.dns_sockets`, sent to nf_tables over netlink.

What `nft -f` makes of `nshelper._dns_rules`, byte for byte the same objects (compare
`nft --debug=netlink`), sent as one nfnetlink batch on a NETLINK_NETFILTER socket
instead of running the tool (a fork and exec, 7-20 ms a container). The socket belongs
to the network namespace of the thread that opens it: the helper opens it while it is
inside the container's namespace, so the rules land there.

One batch is one transaction: the table, its chain and two rules all apply or none
does. Where the table exists already, the batch is nft's "declare, delete, define": a
NEWTABLE (create if missing), DELTABLE, NEWTABLE, chain, rules (see
`replace_dns_redirect` for why that is not the only batch). Every message asks for an
acknowledgement (or gets its error), which the kernel queues before `send` returns; a
missing one is a failure too.

Kernel constants: include/uapi/linux/netfilter/nf_tables.h, nfnetlink.h, netlink.h.
No imports beyond `_socket`: this module is loaded into the namespace helper.
"""

from __future__ import annotations

import _socket
import os
import sys

NETLINK_NETFILTER = 12
NLMSG_ERROR = 2
EIO = 5
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLM_F_EXCL, NLM_F_CREATE, NLM_F_APPEND = 0x200, 0x400, 0x800
NLA_F_NESTED = 0x8000

NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 16, 17
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWTABLE, NFT_MSG_DELTABLE, NFT_MSG_NEWCHAIN, NFT_MSG_NEWRULE = 0, 2, 3, 6
NFPROTO_IPV4 = 2

NFTA_TABLE_NAME, NFTA_TABLE_FLAGS = 1, 2
NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME, NFTA_CHAIN_HOOK = 1, 3, 4
NFTA_CHAIN_POLICY, NFTA_CHAIN_TYPE = 5, 7
NFTA_HOOK_HOOKNUM, NFTA_HOOK_PRIORITY = 1, 2
NFTA_RULE_TABLE, NFTA_RULE_CHAIN, NFTA_RULE_EXPRESSIONS = 1, 2, 4
NFTA_LIST_ELEM = 1
NFTA_EXPR_NAME, NFTA_EXPR_DATA = 1, 2
NFTA_DATA_VALUE = 1
NF_INET_LOCAL_OUT = 3
NF_ACCEPT = 1

NFT_REG_1, NFT_REG_2 = 1, 2
NFT_PAYLOAD_NETWORK_HEADER, NFT_PAYLOAD_TRANSPORT_HEADER = 1, 2
NFT_CMP_EQ = 0
NFT_META_L4PROTO = 16
NFT_NAT_DNAT = 1
NF_NAT_RANGE_PROTO_SPECIFIED = 0x2
IPPROTO_TCP, IPPROTO_UDP = 6, 17

_NATIVE = sys.byteorder  # netlink headers; nf_tables' own integers are big-endian


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


def _expr(name: str, *attrs: bytes) -> bytes:
    return _nest(NFTA_LIST_ELEM, _str(NFTA_EXPR_NAME, name), _nest(NFTA_EXPR_DATA, *attrs))


def _payload(base: int, offset: int, length: int) -> bytes:
    # NFTA_PAYLOAD_DREG, _BASE, _OFFSET, _LEN
    return _expr("payload", _u32(1, NFT_REG_1), _u32(2, base), _u32(3, offset), _u32(4, length))


def _cmp_eq(value: bytes) -> bytes:
    # NFTA_CMP_SREG, _OP, _DATA
    return _expr("cmp", _u32(1, NFT_REG_1), _u32(2, NFT_CMP_EQ),
                 _nest(3, _attr(NFTA_DATA_VALUE, value)))


def _immediate(register: int, value: bytes) -> bytes:
    # NFTA_IMMEDIATE_DREG, _DATA
    return _expr("immediate", _u32(1, register), _nest(2, _attr(NFTA_DATA_VALUE, value)))


def _dnat_rule(address: bytes, protocol: int, port: int) -> bytes:
    """`ip daddr ADDRESS <protocol> dport 53 dnat to ADDRESS:PORT`, as nft encodes it."""
    return b"".join([
        _payload(NFT_PAYLOAD_NETWORK_HEADER, 16, 4),  # ip daddr
        _cmp_eq(address),
        _expr("meta", _u32(2, NFT_META_L4PROTO), _u32(1, NFT_REG_1)),  # _KEY, _DREG
        _cmp_eq(bytes([protocol])),
        _payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2),  # udp/tcp dport
        _cmp_eq((53).to_bytes(2, "big")),
        _immediate(NFT_REG_1, address),
        _immediate(NFT_REG_2, port.to_bytes(2, "big")),
        # NFTA_NAT_TYPE, _FAMILY, _REG_ADDR_MIN, _REG_PROTO_MIN, _FLAGS
        _expr("nat", _u32(1, NFT_NAT_DNAT), _u32(2, NFPROTO_IPV4), _u32(3, NFT_REG_1),
              _u32(5, NFT_REG_2), _u32(7, NF_NAT_RANGE_PROTO_SPECIFIED)),
    ])


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


def dns_redirect_batch(table: str, address: str, udp_port: int, tcp_port: int,
                       replace: bool = False) -> tuple[bytes, dict[int, str]]:
    """The batch that creates `table` (fails with EEXIST if there is one), or with
    `replace` the one that replaces it, and what each message does by sequence number."""
    addr = _socket.inet_aton(address)
    chain = "output"
    new_table = _str(NFTA_TABLE_NAME, table) + _u32(NFTA_TABLE_FLAGS, 0)
    steps = [
        (NFT_MSG_NEWTABLE, NLM_F_CREATE, f"declare table {table}", new_table),
        (NFT_MSG_DELTABLE, 0, f"delete table {table}", _str(NFTA_TABLE_NAME, table)),
        (NFT_MSG_NEWTABLE, NLM_F_CREATE, f"create table {table}", new_table),
    ] if replace else [
        (NFT_MSG_NEWTABLE, NLM_F_CREATE | NLM_F_EXCL, f"create table {table}", new_table),
    ]
    steps.append((
        NFT_MSG_NEWCHAIN, NLM_F_CREATE, f"create chain {chain} (nat hook output)",
        _str(NFTA_CHAIN_TABLE, table) + _str(NFTA_CHAIN_NAME, chain)
        + _str(NFTA_CHAIN_TYPE, "nat") + _u32(NFTA_CHAIN_POLICY, NF_ACCEPT)
        + _nest(NFTA_CHAIN_HOOK, _u32(NFTA_HOOK_HOOKNUM, NF_INET_LOCAL_OUT),
                _u32(NFTA_HOOK_PRIORITY, -100)),
    ))
    for protocol, name, port in ((IPPROTO_UDP, "udp", udp_port), (IPPROTO_TCP, "tcp", tcp_port)):
        steps.append((
            NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, f"add the {name} dnat rule",
            _str(NFTA_RULE_TABLE, table) + _str(NFTA_RULE_CHAIN, chain)
            + _nest(NFTA_RULE_EXPRESSIONS, _dnat_rule(addr, protocol, port)),
        ))
    unspec = 0
    parts = [_message(NFNL_MSG_BATCH_BEGIN, 0, 1, unspec, b"", NFNL_SUBSYS_NFTABLES)]
    what = {1: "start the batch"}
    for seq, (kind, flags, label, body) in enumerate(steps, start=2):
        parts.append(_message(NFNL_SUBSYS_NFTABLES << 8 | kind, flags | NLM_F_ACK, seq,
                              NFPROTO_IPV4, body))
        what[seq] = label
    end = len(steps) + 2
    parts.append(_message(NFNL_MSG_BATCH_END, 0, end, unspec, b"", NFNL_SUBSYS_NFTABLES))
    what[end] = "commit the batch"
    return b"".join(parts), what


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
        _commit(*dns_redirect_batch(table, address, udp_port, tcp_port))
    except FileExistsError:
        _commit(*dns_redirect_batch(table, address, udp_port, tcp_port, replace=True))


def _commit(batch: bytes, what: dict[int, str]) -> None:
    sock = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW | _socket.SOCK_CLOEXEC,
                          NETLINK_NETFILTER)
    try:
        # The kernel handles the batch inside `send`: its replies are queued when that
        # returns (nft reads them the same way, without waiting).
        sock.setblocking(False)
        sock.send(batch)
        pending = {seq for seq in what if seq not in (1, max(what))}  # those with ACK
        errors: list[tuple[int, int]] = []
        while True:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                break
            for seq, error in _acks(data):
                pending.discard(seq)
                if error:
                    errors.append((seq, error))
        if errors:
            seq, error = errors[0]
            raise OSError(-error, f"nftables {what.get(seq, f'message {seq}')}: "
                                  f"{os.strerror(-error)}")
        if pending:
            raise OSError(EIO, f"nftables {what[min(pending)]}: no acknowledgement")
    finally:
        sock.close()


def _acks(data: bytes) -> list[tuple[int, int]]:
    """(sequence number, error) of each NLMSG_ERROR message in `data` (error 0: ack)."""
    found = []
    offset = 0
    while offset + 16 <= len(data):
        length = int.from_bytes(data[offset:offset + 4], _NATIVE)
        kind = int.from_bytes(data[offset + 4:offset + 6], _NATIVE)
        if length < 16:
            break
        if kind == NLMSG_ERROR and length >= 16 + 4 + 16:
            error = int.from_bytes(data[offset + 16:offset + 20], _NATIVE, signed=True)
            # The request's header follows: its sequence number is at offset 8 of it.
            seq = int.from_bytes(data[offset + 28:offset + 32], _NATIVE)
            found.append((seq, error))
        offset += (length + 3) & ~3
    return found
