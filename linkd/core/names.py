"""Deterministic names for every kernel object linkd creates.

Every object carries a linkd prefix so leaks are easy to find and cleanup never touches
anything else:

- bridges            `lkb-` + 10 hex digits of sha256(stack, network)
- host-side veths    `lkv-` + 10 hex digits of sha256(stack, container, network)
- VXLAN devices      `lkx-` + 10 hex digits of sha256(stack, network), one per overlay
  network on every node that has a container on it (linkd.core.overlay)
- network namespaces `linkd-<stack>.<container>` (a file under /run/netns; the container
  part hashed where the whole would be longer than a file name)

Interface names are at most 15 characters (IFNAMSIZ - 1), hence the hash rather than the
readable names. The `.` in namespace names cannot occur in a stack name, so the prefix
`linkd-<stack>.` selects exactly one stack's namespaces.
"""

from __future__ import annotations

import hashlib
import ipaddress

LINK_PREFIX = "lk"
BRIDGE_PREFIX = "lkb-"
VETH_PREFIX = "lkv-"
VXLAN_PREFIX = "lkx-"
NETNS_PREFIX = "linkd-"
IFNAME_MAX = 15


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def bridge_name(stack: str, network: str) -> str:
    return BRIDGE_PREFIX + _digest("bridge", stack, network)[:10]


def host_veth_name(stack: str, container: str, network: str) -> str:
    return VETH_PREFIX + _digest("veth", stack, container, network)[:10]


def vxlan_name(stack: str, network: str) -> str:
    return VXLAN_PREFIX + _digest("vxlan", stack, network)[:10]


NAME_MAX = 255  # bytes of a file name: a namespace is a file under /run/netns


def netns_name(stack: str, container: str) -> str:
    """`linkd-<stack>.<container>`; where that is longer than a file name may be, the
    container's part is a hash (the stack's prefix stays: it selects the stack)."""
    name = f"{NETNS_PREFIX}{stack}.{container}"
    if len(name.encode()) <= NAME_MAX:
        return name
    return f"{NETNS_PREFIX}{stack}.{_digest('netns', stack, container)[:16]}"


def netns_prefix(stack: str) -> str:
    return f"{NETNS_PREFIX}{stack}."


def container_from_netns(stack: str, netns: str) -> str | None:
    prefix = netns_prefix(stack)
    return netns[len(prefix) :] if netns.startswith(prefix) else None


def bridge_mac(stack: str, network: str) -> str:
    """A fixed, locally administered unicast MAC for a bridge.

    Without one, a bridge takes the lowest MAC of its ports and changes it as containers
    come and go; peers then hold a stale ARP entry for the gateway for up to minutes.
    """
    raw = bytes.fromhex(_digest("mac", stack, network)[:12])
    first = (raw[0] & 0xFC) | 0x02  # locally administered, unicast
    return ":".join(f"{b:02x}" for b in bytes([first]) + raw[1:])


def address_mac(address: ipaddress.IPv4Address) -> str:
    """A container's MAC on an overlay network, from its address (as Docker's overlay
    driver makes them: 02:42 then the four bytes): every node then knows it from the
    address alone, and it never changes while the address does not."""
    return "02:42:" + ":".join(f"{b:02x}" for b in address.packed)
