"""Reading nf_tables back: every object of a kind, and what a table holds.

`dump` asks for every object of a kind (tables, chains, rules of one table) and collects
the answers up to NLMSG_DONE, starting again if the kernel says the ruleset changed
while it answered (NLM_F_DUMP_INTR). `table_state` is what a table holds without handles
and counters: equal states mean equal tables.
"""

from __future__ import annotations

import _socket
import os

from linkd.runtime.kernel.nft.wire import (
    EIO,
    NATIVE,
    NFNL_SUBSYS_NFTABLES,
    NFT_MSG_GETCHAIN,
    NFT_MSG_GETRULE,
    NFT_MSG_GETTABLE,
    NFTA_CHAIN_COUNTERS,
    NFTA_CHAIN_HANDLE,
    NFTA_CHAIN_TABLE,
    NFTA_CHAIN_USE,
    NFTA_RULE_HANDLE,
    NFTA_RULE_TABLE,
    NFTA_TABLE_NAME,
    NLM_F_DUMP,
    NLM_F_DUMP_INTR,
    NLMSG_DONE,
    NLMSG_ERROR,
    attr,
    attributes,
    message,
    messages,
    open_socket,
    string,
)


def dump(kind: int, family: int, body: bytes = b"", attempts: int = 5) -> list[bytes]:
    """The attributes (after the nfgenmsg header) of every object NFT_MSG_GET<kind>
    lists in `family`, filtered by `body` where the kernel filters (rules by table)."""
    for _ in range(attempts):
        sock = open_socket()
        try:
            sock.settimeout(5)  # the kernel answers at once; never hang a caller
            sock.send(message(NFNL_SUBSYS_NFTABLES << 8 | kind, NLM_F_DUMP, 1, family, body))
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
        for kind, flags, payload in messages(sock.recv(1 << 20)):
            interrupted |= bool(flags & NLM_F_DUMP_INTR)
            if kind == NLMSG_DONE:
                return found, interrupted
            if kind == NLMSG_ERROR:
                error = int.from_bytes(payload[:4], NATIVE, signed=True)
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
        attr(got, payload) for got, payload in attrs if got not in _VOLATILE[kind]
    )


def table_state(family: int, table: str) -> tuple[bytes, ...] | None:
    """What `table` holds, as the kernel lists it without handles and counters: the
    table, then its chains, then its rules in order. Equal states are equal tables. None
    when there is no such table."""
    state = []
    for kind, key, body in (
        (NFT_MSG_GETTABLE, NFTA_TABLE_NAME, b""),
        (NFT_MSG_GETCHAIN, NFTA_CHAIN_TABLE, b""),
        (NFT_MSG_GETRULE, NFTA_RULE_TABLE, string(NFTA_RULE_TABLE, table)),
    ):
        for found in dump(kind, family, body):
            attrs = attributes(found)
            if _name(attrs, key) == table:
                state.append(_stable(kind, attrs))
        if not state:
            return None
    return tuple(state)
