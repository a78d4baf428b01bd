"""The node's VXLAN table in the host's namespace: only the cluster's nodes may send VXLAN
here (what it holds and why: linkd.core.overlay_firewall).

`ensure_overlay_firewall(peers)` makes the table say exactly `peers`, in one nf_tables
transaction sent over netlink (`linkd.runtime.kernel.nft`, as the stacks' tables are):
declare the table, its two sets and its chain (each left as it is if it is there), flush
the sets and the chain, add the peers and the two rules anew. The table is never deleted
on the way, so the chain's hook stays registered (no RCU wait, no moment without it) and a
peer that stays a peer never stops being one: packets see the old set or the new one.
The same transaction makes a missing table, and repairs one changed by hand (a rule
added or deleted, an element added, the policy or the dormant flag changed). What it
cannot declare over (a chain `input` at another hook or priority, a set of another
type) makes the kernel refuse it; then the table is replaced whole instead (declare,
delete, define: `linkd.runtime.kernel.firewall.replace_batch`). Chains or sets added to
the table under other names stay until that happens; they cannot undo its drops.

`remove_overlay_firewall()` deletes the table; none is fine. The netlink work blocks, so
the coroutines run it in a thread, which shares the daemon's namespace: the host's.
"""

from __future__ import annotations

import asyncio
import logging

from linkd.core import nftables, overlay_firewall
from linkd.core.overlay import VXLAN_PORT, IPAddress
from linkd.errors import KernelError
from linkd.runtime.kernel import firewall, nft

log = logging.getLogger("linkd")


def update_batch(table: nftables.Table) -> nft.Batch:
    """The transaction that makes the existing (or missing) `table` hold exactly what it
    says, in place: sets and chains declared, emptied and filled."""
    family = nft.FAMILIES[table.family]
    batch = nft.Batch(family).declare_table(table.name)
    ids = firewall.set_ids_of(table)
    for named in table.sets:
        batch.set(table.name, named.name, named.type, ids[named.name])
        batch.flush_set(table.name, named.name)
        firewall.add_elements(batch, table.name, named, ids[named.name])
    for chain in table.chains:
        firewall.add_chain(batch, table.name, chain)
        batch.flush_chain(table.name, chain.name)
    for chain in table.chains:
        for number, rule in enumerate(chain.rules, start=1):
            batch.rule(table.name, chain.name, firewall.encode_rule(family, rule, ids),
                       f"add rule {number} of chain {chain.name} ({rule.text()})")
    return batch


def apply(table: nftables.Table) -> bool:
    """Make `table` so in the current thread's namespace: in place, or replaced whole
    when the kernel refuses that (something of its names is not what linkd makes).
    Returns True when it was replaced. Raises KernelError naming the table and the step
    that failed."""
    try:
        nft.commit(update_batch(table))
        return False
    except OSError as exc:
        log.warning("nftables: table %s %s could not be updated in place (%s); replacing "
                    "it", table.family, table.name, exc)
    try:
        nft.commit(firewall.replace_batch(table))
    except OSError as exc:
        raise KernelError(f"table {table.family} {table.name}: {exc.strerror or exc}",
                          exc.errno) from None
    return True


async def ensure_overlay_firewall(peers: frozenset[IPAddress], port: int = VXLAN_PORT
                                  ) -> None:
    """Only `peers` (the other nodes' underlay addresses) may send VXLAN to UDP `port`
    of this node. Idempotent: the same peers again change nothing that matters."""
    await asyncio.to_thread(apply, overlay_firewall.table(peers, port))


async def remove_overlay_firewall() -> None:
    """Delete the node's VXLAN table; none is fine."""
    await asyncio.to_thread(firewall.delete_table, overlay_firewall.FAMILY,
                            overlay_firewall.TABLE)
