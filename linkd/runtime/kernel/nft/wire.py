"""The nf_tables wire: the kernel's numbers, netlink attributes and messages, the socket.

Kernel constants: include/uapi/linux/netfilter/nf_tables.h, nfnetlink.h, netlink.h,
nf_conntrack_common.h. Netlink headers and attribute headers are in host byte order
(`NATIVE`), as are some nf_tables registers (ct, fib); values in attributes are big-endian.

The socket belongs to the network namespace of the thread that opens it: the namespace
helper opens it while it is inside a container's namespace, so the DNS rules land there.
"""

from __future__ import annotations

import _socket
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
NFT_MSG_NEWRULE, NFT_MSG_GETRULE, NFT_MSG_DELRULE = 6, 7, 8
NFT_MSG_NEWSET, NFT_MSG_NEWSETELEM, NFT_MSG_DELSETELEM = 9, 12, 14
NFPROTO_UNSPEC, NFPROTO_INET, NFPROTO_IPV4, NFPROTO_IPV6 = 0, 1, 2, 10
FAMILIES = {"inet": NFPROTO_INET, "ip": NFPROTO_IPV4}

NFTA_TABLE_NAME, NFTA_TABLE_FLAGS = 1, 2
NFTA_CHAIN_TABLE, NFTA_CHAIN_HANDLE, NFTA_CHAIN_NAME, NFTA_CHAIN_HOOK = 1, 2, 3, 4
NFTA_CHAIN_POLICY, NFTA_CHAIN_USE, NFTA_CHAIN_TYPE, NFTA_CHAIN_COUNTERS = 5, 6, 7, 8
NFTA_HOOK_HOOKNUM, NFTA_HOOK_PRIORITY = 1, 2
NFTA_RULE_TABLE, NFTA_RULE_CHAIN, NFTA_RULE_HANDLE, NFTA_RULE_EXPRESSIONS = 1, 2, 3, 4
NFTA_LIST_ELEM = 1
NFTA_SET_TABLE, NFTA_SET_NAME, NFTA_SET_FLAGS, NFTA_SET_KEY_TYPE = 1, 2, 3, 4
NFTA_SET_KEY_LEN, NFTA_SET_ID, NFTA_SET_USERDATA = 5, 10, 13
NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET = 1, 2
NFTA_SET_ELEM_LIST_ELEMENTS, NFTA_SET_ELEM_LIST_SET_ID = 3, 4
NFTA_SET_ELEM_KEY = 1
# nft's numbers for a set's key type (its datatypes, not the kernel's: the kernel keeps
# them for nft to list the set), and its key length in bytes.
SET_KEY_TYPES = {"ipv4_addr": (7, 4), "ipv6_addr": (8, 16)}
# nft's userdata of a set: its key's byte order (NFTNL_UDATA_SET_KEYBYTEORDER, one TLV
# of type 0, length 4, BYTEORDER_BIG_ENDIAN in host order).
SET_USERDATA_BIG_ENDIAN_KEY = bytes([0, 4]) + (2).to_bytes(4, sys.byteorder)
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
NFT_LOOKUP_F_INV = 1
NF_NAT_RANGE_PROTO_SPECIFIED = 0x2
IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMPV6, IPPROTO_SCTP = 6, 17, 58, 132
L4PROTOS = {"tcp": IPPROTO_TCP, "udp": IPPROTO_UDP, "sctp": IPPROTO_SCTP}
IFNAMSIZ = 16

NATIVE = sys.byteorder  # netlink headers, and some nf_tables registers (ct, fib)


# -- attributes ---------------------------------------------------------------------------


def attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    header = length.to_bytes(2, NATIVE) + kind.to_bytes(2, NATIVE)
    return header + payload + b"\0" * (-length % 4)


def nest(kind: int, *attrs: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(attrs))


def u32(kind: int, value: int) -> bytes:
    return attr(kind, value.to_bytes(4, "big", signed=value < 0))


def string(kind: int, text: str) -> bytes:
    return attr(kind, text.encode() + b"\0")


def data_value(kind: int, value: bytes) -> bytes:
    return nest(kind, attr(NFTA_DATA_VALUE, value))


def attributes(data: bytes) -> list[tuple[int, bytes]]:
    """(type without the nested flag, payload) of each attribute in `data`."""
    found = []
    offset = 0
    while offset + 4 <= len(data):
        length = int.from_bytes(data[offset:offset + 2], NATIVE)
        kind = int.from_bytes(data[offset + 2:offset + 4], NATIVE)
        if length < 4:
            break
        found.append((kind & ~NLA_F_NESTED, data[offset + 4:offset + length]))
        offset += (length + 3) & ~3
    return found


# -- messages -----------------------------------------------------------------------------


def message(kind: int, flags: int, seq: int, family: int, body: bytes,
             res_id: int = 0) -> bytes:
    length = 16 + 4 + len(body)
    return (
        length.to_bytes(4, NATIVE) + kind.to_bytes(2, NATIVE)
        + (NLM_F_REQUEST | flags).to_bytes(2, NATIVE)
        + seq.to_bytes(4, NATIVE) + (0).to_bytes(4, NATIVE)  # port id: the kernel's
        + bytes([family, 0]) + res_id.to_bytes(2, "big")  # nfgenmsg, NFNETLINK_V0
        + body
    )


def messages(data: bytes) -> list[tuple[int, int, bytes]]:
    """(type, flags, payload after the netlink header) of each message in `data`."""
    found = []
    offset = 0
    while offset + 16 <= len(data):
        length = int.from_bytes(data[offset:offset + 4], NATIVE)
        if length < 16:
            break
        kind = int.from_bytes(data[offset + 4:offset + 6], NATIVE)
        flags = int.from_bytes(data[offset + 6:offset + 8], NATIVE)
        found.append((kind, flags, data[offset + 16:offset + length]))
        offset += (length + 3) & ~3
    return found


def open_socket() -> _socket.socket:
    try:
        sock = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW | _socket.SOCK_CLOEXEC,
                              NETLINK_NETFILTER)
    except OSError as exc:
        raise OSError(exc.errno, f"open a NETLINK_NETFILTER socket: {exc.strerror}") from None
    # An error's answer carries only the failing message's header, not all of it.
    sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
    return sock
