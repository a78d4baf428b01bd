"""The stack's nftables table in the host's namespace, and its host ports.

`StackFirewall.ensure(plan)` replaces the stack's table (`linkd.core.firewall.table`) in one
nf_tables transaction sent over netlink (`linkd.runtime.kernel.nft`; linkd never runs the nft
tool, which a host may lack) and turns route_localnet on for the bridges a published
port leads to. Right after, it reads the table back (`nft.table_state`: the table, its
chains and its rules as the kernel lists them, without handles and counters) and keeps
that; `repair` reads it again and applies the table anew when the two differ (a table
deleted, a chain flushed, a rule added or changed by hand). `remove` deletes the table
(none is fine). Nothing here touches any other table, chain or sysctl of the host: only
`inet linkd-<stack>` and `net.ipv4.conf.<linkd bridge>.route_localnet`.

The transaction is nft's "declare, delete, define" (NEWTABLE, DELTABLE, then the table
anew), so whatever the table held before, a partial one included, is replaced whole or
not at all; a missing table is first tried with an exclusive create instead, which
spares the kernel's RCU wait that any transaction deleting a table pays (see
`nft.replace_dns_redirect`). The netlink work blocks (a commit that deletes a table
waits 8-24 ms for the kernel), so the coroutines run it in a thread: the thread shares
the daemon's namespace, the host's.

`publish_ports(plan)` decides host ports before anything is created: a fixed host port
is refused when another stack publishes it or a socket of the host holds it (tried by
binding it; the error names the process), and a container port without a host port gets
one the kernel hands out (bind to port 0), as Docker does.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import assert_never

from linkd.core import firewall, nftables
from linkd.core.model import Protocol
from linkd.core.plan import StackPlan
from linkd.errors import ConflictError, KernelError, LinkdError
from linkd.runtime.kernel import nft
from linkd.runtime.stack import store

log = logging.getLogger("linkd")

SYSCTL = Path("/proc/sys/net/ipv4/conf")
TableState = tuple[bytes, ...]


# -- the table over netlink ---------------------------------------------------------------


def encode_rule(family: int, rule: nftables.Rule,
                set_ids: Mapping[str, int] | None = None) -> nft.Rule:
    """`rule` as nf_tables expressions, for a table of `family` (NFPROTO_*); `set_ids`:
    the batch's ids of the sets the rule names (`set_ids_of`)."""
    out = nft.Rule(family)
    for match in rule.matches:
        match match:
            case nftables.Interface(direction, name, negate):
                out.interface(direction, name, negate)
            case nftables.Family(version):
                out.nfproto(nft.NFPROTO_IPV4 if version == 4 else nft.NFPROTO_IPV6)
            case nftables.Address(field, network, negate):
                out.address(field, network.network_address.packed, network.prefixlen, negate)
            case nftables.Port(protocol, first, last):
                out.dport(nft.L4PROTOS[protocol], first, last)
            case nftables.Icmpv6Type(name):
                out.icmpv6_type(nftables.ICMPV6_TYPES[name])
            case nftables.ConntrackState(states):
                out.ct_any(nft.NFT_CT_STATE, sum(nftables.CT_STATES[s] for s in set(states)))
            case nftables.ConntrackStatus(status):
                out.ct_any(nft.NFT_CT_STATUS, nftables.CT_STATUS[status])
            case nftables.LocalDestination():
                out.local_destination()
            case nftables.InterfaceKind(direction, kind):
                out.interface_kind(direction, kind)
            case nftables.InSet(field, name, version, negate):
                out.lookup(field, 4 if version == 4 else 16, name,
                           (set_ids or {}).get(name), negate)
            case _:
                assert_never(match)
    statement = rule.statement
    match statement:
        case nftables.Accept():
            out.verdict("accept")
        case nftables.Drop():
            out.verdict("drop")
        case nftables.Jump(chain):
            out.verdict("jump", chain)
        case nftables.Notrack():
            out.notrack()
        case nftables.Masquerade():
            out.masquerade()
        case nftables.Dnat(address, port):
            out.dnat(address.packed, port)
        case _:
            assert_never(statement)
    return out


def replace_batch(table: nftables.Table, exclusive: bool = False) -> nft.Batch:
    """The transaction that replaces `table` whole (declare, delete, define), or with
    `exclusive` the one that creates it and fails (EEXIST) if there is one."""
    family = nft.FAMILIES[table.family]
    batch = nft.Batch(family)
    if exclusive:
        batch.create_table(table.name, exclusive=True)
    else:
        batch.declare_table(table.name).delete_table(table.name).create_table(table.name)
    ids = set_ids_of(table)
    for named in table.sets:  # and every set: a rule may name one
        add_set(batch, table.name, named, ids[named.name])
    for chain in table.chains:  # every chain first: a rule may jump to a later one
        add_chain(batch, table.name, chain)
    for chain in table.chains:
        for number, rule in enumerate(chain.rules, start=1):
            batch.rule(table.name, chain.name, encode_rule(family, rule, ids),
                       f"add rule {number} of chain {chain.name} ({rule.text()})")
    return batch


def add_chain(batch: nft.Batch, table: str, chain: nftables.Chain) -> None:
    """Declare `chain` (a base chain with its hook) in `batch`."""
    if chain.hook is None:
        batch.chain(table, chain.name)
    else:
        hook = chain.hook
        batch.chain(table, chain.name, hook.type, hook.hook, hook.priority, hook.policy)


def set_ids_of(table: nftables.Table) -> dict[str, int]:
    """The id each set of `table` has in a batch that makes it (1, 2, ... as nft numbers
    them): its elements and the rules that name it refer to it by that id too."""
    return {named.name: number for number, named in enumerate(table.sets, start=1)}


def add_set(batch: nft.Batch, table: str, named: nftables.AddressSet, set_id: int) -> None:
    """Declare the set and add its elements."""
    batch.set(table, named.name, named.type, set_id)
    add_elements(batch, table, named, set_id)


def add_elements(batch: nft.Batch, table: str, named: nftables.AddressSet,
                 set_id: int) -> None:
    if named.elements:  # none: no message (the kernel wants a list with an element)
        batch.elements(table, named.name, set_id, [a.packed for a in named.sorted()])


def _failed(family: str, name: str, exc: OSError) -> KernelError:
    return KernelError(f"table {family} {name}: {exc.strerror or exc}", exc.errno)


def replace_table(table: nftables.Table) -> TableState | None:
    """Replace `table` in the current thread's namespace; returns what the kernel then
    lists of it. Raises KernelError naming the table and the step that failed."""
    try:
        try:
            nft.commit(replace_batch(table, exclusive=True))
        except FileExistsError:  # only the exclusive create can say so
            nft.commit(replace_batch(table))
        return nft.table_state(nft.FAMILIES[table.family], table.name)
    except OSError as exc:
        raise _failed(table.family, table.name, exc) from None


def delete_table(family: str, name: str) -> None:
    """Delete the table; none is fine (it is declared in the same transaction)."""
    try:
        nft.commit(nft.Batch(nft.FAMILIES[family]).declare_table(name).delete_table(name))
    except OSError as exc:
        raise _failed(family, name, exc) from None


def live_state(family: str, name: str) -> TableState | None:
    try:
        return nft.table_state(nft.FAMILIES[family], name)
    except OSError as exc:
        raise _failed(family, name, exc) from None


async def tables() -> list[str]:
    """linkd's tables in the host's namespace: the stacks' (`linkd-<stack>`) and the
    node's own (`linkd-_overlay`; `firewall.stack_of_table` tells them apart)."""
    try:
        names = await asyncio.to_thread(nft.table_names, nft.FAMILIES[firewall.FAMILY])
    except OSError as exc:
        log.warning("nftables: could not list the %s tables: %s", firewall.FAMILY, exc)
        return []
    return [name for name in names if name.startswith(firewall.TABLE_PREFIX)]


async def remove_table(stack: str) -> None:
    await asyncio.to_thread(delete_table, firewall.FAMILY, firewall.table_name(stack))


def set_localnet(plan: StackPlan) -> int:
    """route_localnet=1 on the plan's bridges that need it and exist; returns how many
    were changed (0 when all were set already)."""
    changed = 0
    for bridge in firewall.localnet_bridges(plan):
        path = SYSCTL / bridge / "route_localnet"
        try:
            if path.read_text().strip() != "1":
                path.write_text("1\n")
                changed += 1
        except FileNotFoundError:
            continue  # not created yet: set after the bridges are
    return changed


class StackFirewall:
    """One stack's table, kept equal to its plan."""

    def __init__(self, stack: str) -> None:
        self.stack = stack
        self._applied: TableState | None = None  # the table right after our last apply
        self._wanted: nftables.Table | None = None  # what that apply asked for

    async def ensure(self, plan: StackPlan, uplinks: frozenset[str] = frozenset()) -> None:
        """The stack's table for `plan`; `uplinks`: the host's default-route devices."""
        if not firewall.wanted(plan):
            await self.remove()
            return
        wanted = firewall.table(plan, uplinks)
        self._applied = await asyncio.to_thread(replace_table, wanted)
        self._wanted = wanted
        set_localnet(plan)

    async def repair(self, plan: StackPlan, uplinks: frozenset[str] = frozenset()) -> int:
        """Apply again if the table is not what was applied (deleted or changed by
        hand) or the host's uplinks moved; set route_localnet again on recreated
        bridges. Returns the repairs."""
        if not firewall.wanted(plan):
            return 0
        repairs = set_localnet(plan)
        live = await asyncio.to_thread(
            live_state, firewall.FAMILY, firewall.table_name(self.stack)
        )
        stale = self._wanted != firewall.table(plan, uplinks)
        if self._applied is None or live != self._applied or stale:
            await self.ensure(plan, uplinks)
            repairs += 1
        return repairs

    async def remove(self) -> None:
        await remove_table(self.stack)
        self._applied = None


# -- host ports ---------------------------------------------------------------------------


def publish_ports(plan: StackPlan, previous: StackPlan | None = None) -> StackPlan:
    """`plan` with every host port decided, or an error before anything is created."""
    if not any(p.published for c in plan.containers for p in c.ports):
        return plan  # nothing to decide: no other stack's state needs reading
    firewall.check_plan_ports(plan)
    taken = firewall.holders(_other_plans(plan.stack))
    firewall.check_published(plan, taken)
    _check_bindable(plan)
    return firewall.assign_host_ports(plan, _allocate, taken, previous)


def _other_plans(stack: str) -> list[StackPlan]:
    plans = []
    for other in store.stacks():
        if other == stack:
            continue
        try:
            plans.append(store.load(other).plan)
        except LinkdError:
            continue
    return plans


def _socket(protocol: Protocol) -> socket.socket:
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(socket.AF_INET, kind)
    if protocol == "tcp":  # a connection in TIME_WAIT holds nothing
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return sock


def _allocate(protocol: Protocol, host_ip: str | None) -> int:
    with _socket(protocol) as sock:
        sock.bind((host_ip or "0.0.0.0", 0))
        port: int = sock.getsockname()[1]
        return port


def _check_bindable(plan: StackPlan) -> None:
    problems = []
    for c in plan.containers:
        for p in c.ports:
            if (not p.published or p.host_start is None or p.host_end is None
                    or p.protocol == "sctp"):
                continue
            for port in range(p.host_start, p.host_end + 1):
                where = p.host_ip or "0.0.0.0"
                try:
                    with _socket(p.protocol) as sock:
                        sock.bind((where, port))
                except OSError as exc:
                    if exc.errno == errno.EADDRNOTAVAIL:
                        problems.append(
                            f"service {c.service}: host address {where} of port {port} "
                            "is not an address of this host"
                        )
                    else:
                        problems.append(
                            f"service {c.service}: host port {port}/{p.protocol} on {where} "
                            f"is already in use by {holder(p.protocol, port)}"
                        )
                    break
    if problems:
        raise ConflictError("; ".join(problems))


def holder(protocol: str, port: int) -> str:
    """The process holding a host port, from /proc/net and the processes' fds."""
    inodes = set()
    for name in (protocol, protocol + "6"):
        try:
            lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if int(local.rsplit(":", 1)[1], 16) != port:
                continue
            if protocol == "tcp" and state != "0A":  # LISTEN
                continue
            inodes.add(f"socket:[{inode}]")
    if not inodes:
        return "another socket"
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{entry}/fd"):
                if os.readlink(f"/proc/{entry}/fd/{fd}") in inodes:
                    comm = Path(f"/proc/{entry}/comm").read_text().strip()
                    return f"process {entry} ({comm})"
        except OSError:
            continue
    return "another socket"
