"""The kernel's link removals reach the daemon as they happen, by name."""

from __future__ import annotations

import asyncio
import secrets
import subprocess

from linkd.runtime.kernel.link_events import LinkWatch


async def test_a_removed_link_of_linkds_is_reported_by_name() -> None:
    ours, peer = f"lkt-{secrets.token_hex(4)}", f"lkt-{secrets.token_hex(4)}"
    seen: list[str] = []
    arrived = asyncio.Event()

    def removed(name: str) -> None:
        seen.append(name)
        if name == ours:
            arrived.set()

    watch = LinkWatch(removed)
    watch.start()
    try:
        subprocess.run(["ip", "link", "add", ours, "type", "veth", "peer", "name", peer],
                       check=True)
        subprocess.run(["ip", "link", "del", ours], check=True)  # its peer goes with it
        await asyncio.wait_for(arrived.wait(), 5)
        await asyncio.sleep(0.05)
    finally:
        watch.close()
        subprocess.run(["ip", "link", "del", ours], capture_output=True)
    assert ours in seen and peer in seen
    assert all(name.startswith("lk") for name in seen)
