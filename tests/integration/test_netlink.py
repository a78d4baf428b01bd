"""linkd's kernel steps are idempotent, and refuse what is not theirs (real netlink)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from linkd.core import names
from linkd.core.plan import InterfacePlan, NetworkPlan
from linkd.errors import KernelError
from linkd.runtime.kernel.netlink import Kernel

REPO = Path(__file__).resolve().parents[2]


def network(tag: str) -> NetworkPlan:
    return NetworkPlan(
        key="n",
        name=f"t{tag}_n",
        bridge=names.bridge_name(f"t{tag}", "n"),
        bridge_mac=names.bridge_mac(f"t{tag}", "n"),
        subnet=IPv4Network("10.87.250.0/24"),
        gateway=IPv4Address("10.87.250.1"),
        internal=False,
    )


async def test_ensure_bridge_twice_then_remove_twice(kernel: Kernel) -> None:
    net = network(secrets.token_hex(3))
    try:
        await kernel.ensure_bridge(net)
        await kernel.ensure_bridge(net)
        links = await kernel.links()
        assert links[net.bridge].kind == "bridge"
        addresses = subprocess.run(
            ["ip", "-o", "addr", "show", "dev", net.bridge], capture_output=True, text=True
        ).stdout
        assert addresses.count("10.87.250.1/24") == 1
    finally:
        await kernel.remove_bridge(net.bridge)
    await kernel.remove_bridge(net.bridge)  # deleting what is gone succeeds
    await kernel.remove_link("lkv-neverthere")
    assert net.bridge not in await kernel.links()


async def test_a_foreign_link_with_our_name_is_refused(kernel: Kernel) -> None:
    net = network(secrets.token_hex(3))
    peer = "lkt" + secrets.token_hex(3)
    subprocess.run(["ip", "link", "add", net.bridge, "type", "veth", "peer", "name", peer],
                   check=True)
    try:
        with pytest.raises(KernelError, match=f"a veth link named {net.bridge} already exists"):
            await kernel.ensure_bridge(net)
    finally:
        subprocess.run(["ip", "link", "del", net.bridge], check=True)


async def test_veth_into_a_namespace_is_idempotent(kernel: Kernel) -> None:
    tag = secrets.token_hex(3)
    net = network(tag)
    netns = names.netns_name(f"t{tag}", "c-1")
    iface = InterfacePlan(
        network="n",
        ifname="eth0",
        host_ifname=names.host_veth_name(f"t{tag}", "c-1", "n"),
        bridge=net.bridge,
        address=IPv4Address("10.87.250.2"),
        prefixlen=24,
        gateway=net.gateway,
        default_route=True,
    )
    try:
        await kernel.ensure_bridge(net)
        await kernel.ensure_netns(netns)
        await kernel.ensure_netns(netns)
        await kernel.ensure_veth(netns, iface)
        await kernel.ensure_veth(netns, iface)
        assert (await kernel.links())[iface.host_ifname].master == net.bridge
        assert await kernel.ports(net.bridge) == [iface.host_ifname]
    finally:
        kernel.remove_netns(netns)
        kernel.remove_netns(netns)
        await kernel.remove_bridge(net.bridge)


async def test_namespace_helper_refuses_bad_and_duplicate_names() -> None:
    from linkd.runtime.kernel.netlink import NamespaceHelper

    helper = NamespaceHelper()
    name = names.netns_name("t" + secrets.token_hex(3), "c-1")
    try:
        with pytest.raises(KernelError, match="bad namespace name"):
            await helper.request("create", "../etc")
        fd = await helper.request("create", name)
        import os

        os.close(fd)
        with pytest.raises(KernelError, match="File exists"):
            await helper.request("create", name)
        with pytest.raises(KernelError, match="No such file"):
            await helper.request("open", name + "-missing")
    finally:
        helper.close()
        subprocess.run(["ip", "netns", "del", name], check=False)


async def test_a_namespace_helper_that_died_is_replaced_for_the_next_request() -> None:
    """The daemon shares one helper among all its stacks: one that died (killed, or
    failed) must not fail every namespace made after it."""
    import os
    import signal
    import time

    stack = "t" + secrets.token_hex(3)
    kernel = Kernel()
    try:
        pid = kernel._helper._pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z":  # dead, unreaped
            assert time.monotonic() < deadline
            time.sleep(0.01)
        await kernel.ensure_netns(names.netns_name(stack, "c-1"))
        assert Kernel.netns_names(names.netns_prefix(stack)) == {names.netns_name(stack, "c-1")}
        assert kernel._helper._pid not in (None, pid)
    finally:
        kernel.remove_netns(names.netns_name(stack, "c-1"))
        kernel.close()


async def test_prefetched_namespaces_are_ready_and_an_abandoned_prefetch_is_cleanable() -> None:
    stack = "t" + secrets.token_hex(3)
    wanted = [names.netns_name(stack, f"c-{i}") for i in range(5)]
    kernel = Kernel()
    try:
        kernel.prefetch_netns(wanted)
        for netns in wanted:
            await kernel.ensure_netns(netns)
        assert Kernel.netns_names(names.netns_prefix(stack)) == frozenset(wanted)
        # Abandon a second prefetch half-way, as a failed `up` would.
        more = [names.netns_name(stack, f"d-{i}") for i in range(5)]
        kernel.prefetch_netns(more)
        await kernel.ensure_netns(more[0])
    finally:
        kernel.close()
    import asyncio

    await asyncio.sleep(0.05)  # let the cancelled prefetches finish cancelling
    made = Kernel.netns_names(names.netns_prefix(stack))
    assert frozenset(wanted) | {more[0]} <= made
    cleaner = Kernel()
    for netns in made:  # what teardown does: remove whatever the prefix finds
        cleaner.remove_netns(netns)
    cleaner.close()
    assert Kernel.netns_names(names.netns_prefix(stack)) == frozenset()


GRPC_THEN_NAMESPACE = """
import asyncio, os, sys
from linkd.errors import LinkdError
from linkd.runtime.cluster.etcd import Etcd
from linkd.runtime.kernel.netlink import Kernel

async def main(netns):
    # A cluster daemon's etcd client, its gRPC channel's threads running (no etcd there).
    etcd = Etcd([("127.0.0.1", 9)], 0.3)
    try:
        await etcd.grant(5)
    except LinkdError:
        pass
    kernel = Kernel()
    try:
        await kernel.ensure_netns(netns)
        helper = kernel._helper._pid
        with open(f"/proc/{helper}/cmdline", "rb") as f:
            print("helper runs:", f.read().split(b"\\0")[2].decode())
        print("made:", os.path.exists(f"/run/netns/{netns}"))
    finally:
        kernel.remove_netns(netns)
        kernel.close()
        await etcd.close()

asyncio.run(main(sys.argv[1]))
"""


def test_a_process_running_grpc_starts_its_namespace_helper_without_fork() -> None:
    """A forked child of a process with gRPC's threads can be aborted by their fork
    handlers (a cluster daemon's helper died of SIGABRT): once the etcd client is made,
    the helper is a new interpreter, and serves as the forked one does."""
    netns = "lkt" + secrets.token_hex(4)
    done = subprocess.run([sys.executable, "-c", GRPC_THEN_NAMESPACE, netns],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert "made: True" in done.stdout, done.stdout
    # its own program, not a copy of this one's
    assert "helper runs: from linkd.runtime.kernel import nshelper" in done.stdout, done.stdout
    assert not Path(f"/run/netns/{netns}").exists()
