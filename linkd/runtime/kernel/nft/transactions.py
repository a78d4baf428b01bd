"""nf_tables transactions: a `Batch` of messages, committed all or nothing.

A `Batch` is one nfnetlink batch: every message in it applies or none does. The kernel
handles the batch inside `send`, so its answers are queued when that returns. It answers
a failing message with its error whether asked or not, and only the last message asks
for an acknowledgement: the kernel answers in order, so that acknowledgement, with no
error before it, means the batch was read to its end and committed (a failed commit is
reported against the batch's first message). Answers that no longer fit the socket's
buffer make the next read fail with ENOBUFS, an error too.
"""

from __future__ import annotations

import _socket
import os

from linkd.runtime.kernel.nft.rules import Rule
from linkd.runtime.kernel.nft.wire import (
    EIO,
    ENOBUFS,
    HOOKS,
    NATIVE,
    NFNL_MSG_BATCH_BEGIN,
    NFNL_MSG_BATCH_END,
    NFNL_SUBSYS_NFTABLES,
    NFPROTO_UNSPEC,
    NFT_MSG_DELRULE,
    NFT_MSG_DELSETELEM,
    NFT_MSG_DELTABLE,
    NFT_MSG_NEWCHAIN,
    NFT_MSG_NEWRULE,
    NFT_MSG_NEWSET,
    NFT_MSG_NEWSETELEM,
    NFT_MSG_NEWTABLE,
    NFTA_CHAIN_HOOK,
    NFTA_CHAIN_NAME,
    NFTA_CHAIN_POLICY,
    NFTA_CHAIN_TABLE,
    NFTA_CHAIN_TYPE,
    NFTA_HOOK_HOOKNUM,
    NFTA_HOOK_PRIORITY,
    NFTA_RULE_CHAIN,
    NFTA_RULE_TABLE,
    NFTA_SET_ELEM_KEY,
    NFTA_SET_ELEM_LIST_ELEMENTS,
    NFTA_SET_ELEM_LIST_SET,
    NFTA_SET_ELEM_LIST_SET_ID,
    NFTA_SET_ELEM_LIST_TABLE,
    NFTA_SET_FLAGS,
    NFTA_SET_ID,
    NFTA_SET_KEY_LEN,
    NFTA_SET_KEY_TYPE,
    NFTA_SET_NAME,
    NFTA_SET_TABLE,
    NFTA_SET_USERDATA,
    NFTA_TABLE_FLAGS,
    NFTA_TABLE_NAME,
    NLM_F_ACK,
    NLM_F_APPEND,
    NLM_F_CREATE,
    NLM_F_EXCL,
    NLMSG_ERROR,
    POLICIES,
    SET_KEY_TYPES,
    SET_USERDATA_BIG_ENDIAN_KEY,
    SO_SNDBUFFORCE,
    attr,
    data_value,
    message,
    messages,
    nest,
    open_socket,
    string,
    u32,
)


class Batch:
    """The messages of one transaction on tables of one family, each with what it does
    (for the error that names the step that failed)."""

    def __init__(self, family: int) -> None:
        self.family = family
        self.steps: list[tuple[int, int, str, bytes]] = []  # kind, flags, label, body

    def declare_table(self, table: str) -> Batch:
        """Create `table` if it is missing; leave it as it is if not."""
        body = string(NFTA_TABLE_NAME, table) + u32(NFTA_TABLE_FLAGS, 0)
        self.steps.append((NFT_MSG_NEWTABLE, NLM_F_CREATE, f"declare table {table}", body))
        return self

    def create_table(self, table: str, exclusive: bool = False) -> Batch:
        """Create `table`; with `exclusive` the batch fails (EEXIST) if it exists."""
        flags = NLM_F_CREATE | (NLM_F_EXCL if exclusive else 0)
        body = string(NFTA_TABLE_NAME, table) + u32(NFTA_TABLE_FLAGS, 0)
        self.steps.append((NFT_MSG_NEWTABLE, flags, f"create table {table}", body))
        return self

    def delete_table(self, table: str) -> Batch:
        body = string(NFTA_TABLE_NAME, table)
        self.steps.append((NFT_MSG_DELTABLE, 0, f"delete table {table}", body))
        return self

    def chain(self, table: str, name: str, kind: str | None = None, hook: str | None = None,
              priority: int = 0, policy: str = "accept") -> Batch:
        """A regular chain, or with `kind` ("filter", "nat") and `hook` a base chain."""
        body = string(NFTA_CHAIN_TABLE, table) + string(NFTA_CHAIN_NAME, name)
        label = f"create chain {name}"
        if kind is not None and hook is not None:
            body += (string(NFTA_CHAIN_TYPE, kind) + u32(NFTA_CHAIN_POLICY, POLICIES[policy])
                     + nest(NFTA_CHAIN_HOOK, u32(NFTA_HOOK_HOOKNUM, HOOKS[hook]),
                             u32(NFTA_HOOK_PRIORITY, priority)))
            label += f" ({kind} hook {hook} priority {priority})"
        self.steps.append((NFT_MSG_NEWCHAIN, NLM_F_CREATE, label, body))
        return self

    def rule(self, table: str, chain: str, rule: Rule, label: str) -> Batch:
        body = string(NFTA_RULE_TABLE, table) + string(NFTA_RULE_CHAIN, chain) + rule.encode()
        self.steps.append((NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, label, body))
        return self

    def flush_chain(self, table: str, chain: str) -> Batch:
        """Delete every rule of `chain` (nft's `flush chain`)."""
        body = string(NFTA_RULE_TABLE, table) + string(NFTA_RULE_CHAIN, chain)
        self.steps.append((NFT_MSG_DELRULE, 0, f"flush chain {chain}", body))
        return self

    def set(self, table: str, name: str, key_type: str, set_id: int) -> Batch:
        """Declare the named set `name` of addresses (`key_type` "ipv4_addr" or
        "ipv6_addr"; a set of that name and type is left as it is). `set_id` names it
        to the other messages of this batch."""
        number, length = SET_KEY_TYPES[key_type]
        body = (string(NFTA_SET_TABLE, table) + string(NFTA_SET_NAME, name)
                + u32(NFTA_SET_FLAGS, 0) + u32(NFTA_SET_KEY_TYPE, number)
                + u32(NFTA_SET_KEY_LEN, length) + u32(NFTA_SET_ID, set_id)
                + attr(NFTA_SET_USERDATA, SET_USERDATA_BIG_ENDIAN_KEY))
        self.steps.append((NFT_MSG_NEWSET, NLM_F_CREATE, f"create set {name} ({key_type})",
                           body))
        return self

    def flush_set(self, table: str, name: str) -> Batch:
        """Delete every element of set `name` (nft's `flush set`: no element list)."""
        body = string(NFTA_SET_ELEM_LIST_SET, name) + string(NFTA_SET_ELEM_LIST_TABLE, table)
        self.steps.append((NFT_MSG_DELSETELEM, 0, f"flush set {name}", body))
        return self

    def elements(self, table: str, name: str, set_id: int, keys: list[bytes]) -> Batch:
        """Add `keys` (packed addresses) to set `name`; one already there is fine."""
        # Numbered 1, 2, ... as nft numbers them; the kernel reads a list's items whatever
        # their numbers.
        listed = b"".join(nest(number, data_value(NFTA_SET_ELEM_KEY, key))
                          for number, key in enumerate(keys, start=1))
        body = (string(NFTA_SET_ELEM_LIST_TABLE, table) + string(NFTA_SET_ELEM_LIST_SET, name)
                + u32(NFTA_SET_ELEM_LIST_SET_ID, set_id)
                + nest(NFTA_SET_ELEM_LIST_ELEMENTS, listed))
        self.steps.append((NFT_MSG_NEWSETELEM, NLM_F_CREATE,
                           f"add {len(keys)} elements to set {name}", body))
        return self

    def encode(self) -> tuple[bytes, dict[int, str]]:
        """The batch's bytes, and what each message does by sequence number."""
        parts = [message(NFNL_MSG_BATCH_BEGIN, 0, 1, NFPROTO_UNSPEC, b"", NFNL_SUBSYS_NFTABLES)]
        what = {1: "start the batch"}
        last = len(self.steps) + 1
        for seq, (kind, flags, label, body) in enumerate(self.steps, start=2):
            ack = NLM_F_ACK if seq == last else 0
            parts.append(message(NFNL_SUBSYS_NFTABLES << 8 | kind, flags | ack, seq,
                                  self.family, body))
            what[seq] = label
        parts.append(message(NFNL_MSG_BATCH_END, 0, last + 1, NFPROTO_UNSPEC, b"",
                              NFNL_SUBSYS_NFTABLES))
        what[last + 1] = "commit the batch"
        return b"".join(parts), what


def commit(batch: Batch) -> None:
    """Send `batch` in the current thread's network namespace. Raises OSError naming
    the step that failed (FileExistsError, FileNotFoundError, ... by its errno)."""
    data, what = batch.encode()
    last = max(what) - 1  # the message that asks for the acknowledgement
    sock = open_socket()
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
        (int.from_bytes(body[12:16], NATIVE), int.from_bytes(body[:4], NATIVE, signed=True))
        for kind, _, body in messages(data)
        if kind == NLMSG_ERROR and len(body) >= 4 + 16
    ]
