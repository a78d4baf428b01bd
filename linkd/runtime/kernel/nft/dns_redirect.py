"""The DNS redirect of the namespace helper: 127.0.0.11:53 of a container, sent to the
sockets of linkd's DNS server, written in the container's network namespace.
"""

from __future__ import annotations

import _socket

from linkd.runtime.kernel.nft.rules import Rule
from linkd.runtime.kernel.nft.transactions import Batch, commit
from linkd.runtime.kernel.nft.wire import L4PROTOS, NFPROTO_IPV4


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
