"""The node's VXLAN table made by linkd's runtime inside a simulated node, as the daemon
will make it there (`python -m tests.overlay_firewall_node ensure|remove JSON`, run
through the node's `SimulatedHost.run`; driven by tests/integration/test_overlay_firewall.py).
"""

from __future__ import annotations

import asyncio
import json
import sys
from ipaddress import ip_address
from typing import Any

from linkd.core.overlay import VXLAN_PORT
from linkd.runtime.kernel.overlay_firewall import (
    ensure_overlay_firewall,
    remove_overlay_firewall,
)


async def main(op: str, args: dict[str, Any]) -> None:
    if op == "ensure":
        peers = frozenset(ip_address(p) for p in args["peers"])
        await ensure_overlay_firewall(peers, args.get("port", VXLAN_PORT))
    elif op == "remove":
        await remove_overlay_firewall()
    else:
        raise SystemExit(f"unknown operation {op}")
    print(json.dumps({}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], json.loads(sys.argv[2])))
