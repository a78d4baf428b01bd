"""What a stack needs the host to forward, and linkd's place in another firewall's
FORWARD chain. Pure: `linkd.runtime.kernel.forwarding` reads and writes the host.

Forwarding. A container reaches the outside (and a published port is reached from it)
only if the host routes between linkd's bridges and its uplinks: `net.ipv4.ip_forward`
for every stack with a non-internal network (published ports need one too), and
`net.ipv6.conf.all.forwarding` when such a network has IPv6. A new kernel starts with both
off; Docker and Podman turn them on, and so does linkd, saying so once.

Another firewall's FORWARD chain. Docker sets the iptables FORWARD policy to DROP when it
turns forwarding on, and administrators often do the same; a drop in any chain of the
forward hook is final, so that policy would drop everything linkd's containers send out
and receive, and, with br_netfilter, even what they send each other on one bridge. Where
the host's iptables `filter` table has a FORWARD chain that can drop (a DROP policy, or
any rule that is not linkd's), linkd puts its own chain first in it:

    -A FORWARD -j LINKD-FORWARD            (inserted at the top, once)
    -A LINKD-FORWARD -i lkb-+ -j ACCEPT    (from linkd's bridges)
    -A LINKD-FORWARD -o lkb-+ -j ACCEPT    (to linkd's bridges)

Accepting there only spares linkd's traffic from that chain's verdict: linkd's own
nftables table for each stack still drops what a stack may not do (its forward chain
sees the same packets), including linkd containers reaching other software's bridges
directly, so a dockerd's containers keep the isolation its DROP policy gave them. A host
whose FORWARD chain is empty with policy ACCEPT (or has no iptables at all) gets nothing.
"""

from __future__ import annotations

from linkd.core.plan import StackPlan

CHAIN = "LINKD-FORWARD"
BRIDGES = "lkb-+"  # iptables' wildcard: every linkd bridge
JUMP = ("-A", "FORWARD", "-j", CHAIN)
RULES = (("-i", BRIDGES, "-j", "ACCEPT"), ("-o", BRIDGES, "-j", "ACCEPT"))


def families_needing_forwarding(plan: StackPlan) -> frozenset[int]:
    """4 and/or 6: the IP versions the host must forward for the stack's way out."""
    families: set[int] = set()
    for network in plan.networks:
        if network.internal:
            continue  # no way out, nothing routed
        families.add(4)
        if network.subnet6 is not None:
            families.add(6)
    return frozenset(families)


def _lines(listing: str) -> list[tuple[str, ...]]:
    return [tuple(line.split()) for line in listing.splitlines() if line.strip()]


def forward_chain_can_drop(listing: str) -> bool:
    """From `iptables -S FORWARD`: whether that chain can drop what linkd forwards (a
    DROP policy, or a rule other than linkd's jump, which may jump to one that drops)."""
    for line in _lines(listing):
        if line[:2] == ("-P", "FORWARD") and line[2:] != ("ACCEPT",):
            return True
        if line[:2] == ("-A", "FORWARD") and line != JUMP:
            return True
    return False


def has_jump(listing: str) -> bool:
    """From `iptables -S FORWARD`: linkd's jump is in the chain."""
    return JUMP in _lines(listing)


def restore_script(with_jump: bool) -> str:
    """For `iptables-restore --noflush`: linkd's chain, created or emptied, with its
    rules, and the jump at the top of FORWARD when it is missing; one transaction."""
    lines = ["*filter", f":{CHAIN} - [0:0]"]
    lines += [" ".join(("-A", CHAIN, *rule)) for rule in RULES]
    if with_jump:
        lines.append(f"-I FORWARD 1 -j {CHAIN}")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def chain_listing_is_ours(listing: str) -> bool:
    """From `iptables -S LINKD-FORWARD`: the chain holds exactly linkd's rules."""
    rules = [line for line in _lines(listing) if line[:1] == ("-A",)]
    return rules == [("-A", CHAIN, *rule) for rule in RULES]
