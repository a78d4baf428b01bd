"""The host's forwarding switches and linkd's chain in its iptables FORWARD chain (the
rules and the reasons are in `linkd.core.forwarding`).

`ensure(plan)` turns forwarding on for the IP versions the stack needs and returns one
notice per switch it turned (the caller prints it: said once, since the switch stays
on), then makes room in a FORWARD chain that can drop. `release()` takes linkd's chain out
of iptables once no linkd bridge is left on the host (whichever run directory made it),
and leaves the forwarding switches as they are: by then other software may rely on them
(Docker and Podman also leave them on). Both are idempotent; `ensure` also serves the
daemon's periodic check, so a dockerd started after linkd (turning the policy to DROP)
is answered within one check.

The iptables commands are whichever `iptables` / `ip6tables` the host has (nft or legacy
backend), the same ones a dockerd uses; with none installed no iptables rule can exist,
and nothing is done. Listing a chain never creates a table.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import shutil
from pathlib import Path

from linkd.core import forwarding
from linkd.core.plan import StackPlan
from linkd.errors import KernelError

log = logging.getLogger("linkd")

SWITCHES = {
    4: Path("/proc/sys/net/ipv4/ip_forward"),
    6: Path("/proc/sys/net/ipv6/conf/all/forwarding"),
}
TOOLS = {4: ("iptables", "iptables-restore"), 6: ("ip6tables", "ip6tables-restore")}
SYS_NET = Path("/sys/class/net")
WAIT = ("-w", "5")  # wait for the xtables lock that dockerd holds while it works


def _notice(family: int) -> str:
    if family == 4:
        return ("IPv4 forwarding was off on this host: turned it on "
                "(net.ipv4.ip_forward=1) for containers' way out and published ports; "
                "it stays on after down (see docs/host.md)")
    return ("IPv6 forwarding was off on this host: turned it on "
            "(net.ipv6.conf.all.forwarding=1); interfaces with accept_ra=1 now ignore "
            "router advertisements (set accept_ra=2 on an uplink that needs them; see "
            "docs/host.md)")


def turn_on(families: frozenset[int]) -> list[str]:
    """Set the forwarding switches of `families` to 1; a notice for each one changed."""
    notices = []
    for family in sorted(families):
        switch = SWITCHES[family]
        try:
            if switch.read_text().strip() == "1":
                continue
            switch.write_text("1\n")
        except FileNotFoundError:
            if family == 6:
                continue  # IPv6 disabled on this host: no IPv6 network can come up either
            raise
        except OSError as exc:
            raise KernelError(f"cannot turn on forwarding ({switch}): {exc.strerror}; "
                              "linkd must run as root in the host's network namespace"
                              ) from exc
        notices.append(_notice(family))
    return notices


@functools.cache
def _tool(name: str) -> str | None:
    return shutil.which(name)


async def _run(argv: list[str], script: str | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if script is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(script.encode() if script is not None else None)
    return proc.returncode or 0, out.decode(), err.decode()


async def ensure_chain(family: int) -> bool:
    """linkd's chain first in the FORWARD chain of `family`'s iptables, where that chain
    can drop; True when something was (re)written."""
    lister, restorer = (_tool(name) for name in TOOLS[family])
    if lister is None or restorer is None:
        return False  # no iptables on this host: no FORWARD chain of its can drop
    code, listing, err = await _run([lister, *WAIT, "-S", "FORWARD"])
    if code != 0:
        log.warning("%s -S FORWARD failed: %s", lister, err.strip())
        return False
    if not forwarding.forward_chain_can_drop(listing):
        return False
    jump = forwarding.has_jump(listing)
    if jump:
        code, ours, _ = await _run([lister, *WAIT, "-S", forwarding.CHAIN])
        if code == 0 and forwarding.chain_listing_is_ours(ours):
            return False
    code, _, err = await _run([restorer, *WAIT, "--noflush"],
                              script=forwarding.restore_script(with_jump=not jump))
    if code != 0:
        raise KernelError(f"cannot add linkd's chain {forwarding.CHAIN} to the host's "
                          f"{lister} FORWARD chain: {err.strip()}")
    log.info("%s: %s first in FORWARD (the chain can drop linkd's traffic)", lister,
             forwarding.CHAIN)
    return True


async def ensure(plan: StackPlan) -> list[str]:
    """Forwarding and the FORWARD chain as `plan` needs them; the notices to print."""
    families = forwarding.families_needing_forwarding(plan)
    notices = turn_on(families)
    for family in sorted(families):
        await ensure_chain(family)
    return notices


def bridges_left() -> bool:
    try:
        return any(name.startswith("lkb-") for name in os.listdir(SYS_NET))
    except FileNotFoundError:
        return False


async def release() -> list[BaseException]:
    """Take linkd's chain out of iptables when no linkd bridge is left; the failures."""
    if bridges_left():
        return []
    errors: list[BaseException] = []
    for family in (4, 6):
        lister = _tool(TOOLS[family][0])
        if lister is None:
            continue
        code, listing, _ = await _run([lister, *WAIT, "-S", "FORWARD"])
        if code != 0:
            continue
        for _ in range(listing.count(f"-j {forwarding.CHAIN}")):
            await _run([lister, *WAIT, "-D", "FORWARD", "-j", forwarding.CHAIN])
        code, _, _ = await _run([lister, *WAIT, "-S", forwarding.CHAIN])
        if code != 0:
            continue  # no chain of ours
        await _run([lister, *WAIT, "-F", forwarding.CHAIN])
        code, _, err = await _run([lister, *WAIT, "-X", forwarding.CHAIN])
        if code != 0:
            errors.append(KernelError(f"cannot remove {lister} chain {forwarding.CHAIN}: "
                                      f"{err.strip()}"))
    return errors
