"""Whole containers through linkd's runtime: namespaces + network + a running process.

One container at a time, as `linkd up` starts them: the network steps of
`linkd.runtime.kernel.netlink.Kernel` (netns, veth, bridge port, address, routes), the three files
the supervisor bind-mounts (hosts, hostname, resolv.conf), then
`linkd.runtime.containers.process.start`, which returns once `sleep 60` has been exec'd inside new
UTS/IPC/PID/mount namespaces. The clock stops when `start` returns.

Everything lives under the stack `lkbenchc` (netns `linkd-lkbenchc.c-N`, linkd's `lkb-`/
`lkv-` link names for that stack) and a temporary directory; `cleanup` stops the processes
(by their pidfds, through `ContainerProcess.stop`) and removes the namespaces and bridge.
"""

from __future__ import annotations

import shutil
import signal
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

from netsetup import bridge_ports, link_exists, remove_links_quietly, remove_netns_quietly

STACK = "lkbenchc"


@dataclass
class ContainerResult:
    total: list[float] = field(default_factory=list)  # seconds per container, end to end
    network: list[float] = field(default_factory=list)  # the Kernel steps
    files: list[float] = field(default_factory=list)  # hosts, hostname, resolv.conf (fsynced)
    process: list[float] = field(default_factory=list)  # process.start alone
    stop: float = 0.0  # stopping all of them (SIGTERM, concurrently), seconds

    def median_ms(self, which: list[float]) -> float:
        return statistics.median(which) * 1000


def _plan(count: int, subnet: IPv4Network) -> Any:
    from linkd.core.model import Attachment, Network, Service, Stack
    from linkd.core.plan import realize

    stack = Stack(
        name=STACK,
        services=(Service(name="c", command=("sleep", "60"),
                          networks=(Attachment("default"),), replicas=count),),
        networks=(Network("default"),),
    )
    return realize(stack, {"default": subnet})


async def measure(count: int, subnet: IPv4Network) -> ContainerResult:
    import asyncio

    from linkd.runtime.containers import process
    from linkd.runtime.kernel.netlink import Kernel
    from linkd.runtime.stack import container_files

    plan = _plan(count, subnet)
    result = ContainerResult()
    # Under /run, beside linkd's own /run/linkd, so fsync costs what it costs linkd here.
    tmp = Path(tempfile.mkdtemp(prefix="lkbench-ctr-", dir="/run"))
    kernel = Kernel()
    procs: list[Any] = []
    sockets: list[Any] = []
    try:
        for network in plan.networks:
            await kernel.ensure_bridge(network)
        for container in plan.containers:
            directory = tmp / container.name
            started = time.perf_counter()
            await kernel.ensure_netns(container.netns)
            for interface in container.interfaces:
                await kernel.ensure_veth(container.netns, interface)
            await kernel.configure_netns(container)
            # linkd's resolver at 127.0.0.11:53 inside the container, as `linkd up` does.
            sockets += await kernel.dns_sockets(container.netns)
            wired = time.perf_counter()
            container_files.write_container_files(directory, plan, container)  # as `linkd up` does
            written = time.perf_counter()
            spec = container_files.process_spec(directory, container)
            procs.append(await process.start(spec))
            done = time.perf_counter()
            result.total.append(done - started)
            result.network.append(wired - started)
            result.files.append(written - wired)
            result.process.append(done - written)
        started = time.perf_counter()
        await asyncio.gather(*(p.stop(signal.SIGTERM, 5.0) for p in procs))
        result.stop = time.perf_counter() - started
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        for sock in sockets:  # they would keep the namespaces alive
            sock.close()
        for container in plan.containers:
            kernel.remove_netns(container.netns)
        for network in plan.networks:
            await kernel.remove_bridge(network.bridge)
        kernel.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def cleanup() -> None:
    """Best effort, for leftovers of an interrupted run (processes died with their shim)."""
    import os

    from linkd.core import names

    netns_dir = Path("/run/netns")
    prefix = names.netns_prefix(STACK)
    if netns_dir.exists():
        remove_netns_quietly(sorted(n for n in os.listdir(netns_dir) if n.startswith(prefix)))
    bridge = names.bridge_name(STACK, "default")
    ports = bridge_ports(bridge) or []
    remove_links_quietly([p for p in ports if p.startswith(names.VETH_PREFIX)])
    if link_exists(bridge):
        remove_links_quietly([bridge])


def leftovers() -> list[str]:
    import os

    from linkd.core import names

    netns_dir = Path("/run/netns")
    prefix = names.netns_prefix(STACK)
    found = sorted(n for n in os.listdir(netns_dir) if n.startswith(prefix)) \
        if netns_dir.exists() else []
    bridge = names.bridge_name(STACK, "default")
    return found + ([bridge] if link_exists(bridge) else [])
