"""The stack's nftables table in the host's namespace, and its host ports.

`StackFirewall.ensure(plan)` replaces the stack's table (`linkd.firewall.ruleset`) in
one `nft -f -` transaction and turns route_localnet on for the bridges a published port
leads to; it remembers what `nft list table` said right after, and `repair` compares
with a fresh listing (a table deleted or flushed by hand differs) and applies again.
`remove` deletes the table (none is fine). Nothing here touches any other table, chain
or sysctl of the host: only `inet linkd-<stack>` and
`net.ipv4.conf.<linkd bridge>.route_localnet`.

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
from pathlib import Path

from linkd import firewall
from linkd.errors import ConflictError, KernelError, LinkdError
from linkd.model import Protocol
from linkd.plan import StackPlan
from linkd.runtime import store

log = logging.getLogger("linkd")

NFT = "nft"
SYSCTL = Path("/proc/sys/net/ipv4/conf")


async def _nft(*args: str, script: str | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        NFT, *args,
        stdin=asyncio.subprocess.PIPE if script is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(script.encode() if script is not None else None)
    return proc.returncode or 0, out.decode(), err.decode()


async def apply(script: str, what: str) -> None:
    try:
        code, _, err = await _nft("-f", "-", script=script)
    except FileNotFoundError:
        raise KernelError(
            f"{what}: the nft tool is missing; install Debian's nftables package"
        ) from None
    if code != 0:
        raise KernelError(f"{what}: nft failed: {err.strip()}")


async def listing(stack: str) -> str | None:
    """`nft list table` of the stack's table; None when there is none."""
    code, out, _ = await _nft("list", "table", firewall.FAMILY, firewall.table_name(stack))
    return out if code == 0 else None


async def tables() -> list[str]:
    """linkd's tables in the host's namespace (`linkd-<stack>`)."""
    code, out, _ = await _nft("list", "tables", firewall.FAMILY)
    if code != 0:
        return []
    found = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "table" and parts[2].startswith(firewall.TABLE_PREFIX):
            found.append(parts[2])
    return found


async def remove_table(stack: str) -> None:
    await apply(firewall.delete_script(stack), f"table {firewall.table_name(stack)}")


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
        self._applied: str | None = None  # the listing right after our last apply

    async def ensure(self, plan: StackPlan) -> None:
        if not firewall.wanted(plan):
            await self.remove()
            return
        await apply(firewall.replace_script(plan), f"table {firewall.table_name(self.stack)}")
        set_localnet(plan)
        self._applied = await listing(self.stack)

    async def repair(self, plan: StackPlan) -> int:
        """Apply again if the table is not what was applied (deleted or changed by
        hand); set route_localnet again on recreated bridges. Returns the repairs."""
        if not firewall.wanted(plan):
            return 0
        repairs = set_localnet(plan)
        if await listing(self.stack) != self._applied or self._applied is None:
            await self.ensure(plan)
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
