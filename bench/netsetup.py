"""Four ways to wire N containers to a bridge, each a small class with setup(n)/teardown().

The work is the same for each: a network namespace per container, a veth whose peer is
`eth0` inside it, the host end enslaved to one bridge, an IPv4 address on `eth0`, `lo` and
`eth0` up, a default route via the bridge's address.

- `LinkdKernel`  linkd's own runtime: `linkd.runtime.kernel.netlink.Kernel`, plans from
                  `linkd.core.plan.realize`, calls in the order the reconciler emits them.
- `IpBatch`      the floor: host side in one `ip -batch`, one `ip -n NS -batch` per container.
- `Cni`          CNI reference plugins: `bridge` + `host-local`, one exec per ADD/DEL.
- `Netavark`     podman's netavark, run inside a throwaway "host" namespace (see its docstring).

Teardown ends, for every implementation, when the kernel has removed the host-side veths
and the bridge is gone. Deleting a namespace hands its veths to a kernel work queue, so
`IpBatch` and `LinkdKernel` poll until the bridge has no ports left.

Every kernel object carries a bench prefix (`lkbench`, or linkd's own names for the stack
`lkbench`), and `cleanup()` removes whatever an implementation may have left, idempotently.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from ipaddress import IPv4Network
from pathlib import Path
from typing import Protocol

NETNS_DIR = Path("/run/netns")
SYS_NET = Path("/sys/class/net")
POLL = 0.002  # seconds between two looks at /sys while waiting for the kernel
SETTLE = 30.0  # give up waiting for the kernel after this long (an error, not a result)

CNI_PATH = "/usr/lib/cni"
NETAVARK = "/usr/lib/podman/netavark"


class BenchError(RuntimeError):
    pass


class NetSetup(Protocol):
    name: str  # the row label in the table

    def prepare(self, n: int) -> None:
        """Untimed: whatever must exist before `setup` (plans, config files, sandboxes)."""

    async def setup(self, n: int) -> None: ...

    async def teardown(self) -> None: ...

    def cleanup(self) -> None:
        """Remove every object this implementation may have made; never raises."""


# -- helpers ----------------------------------------------------------------------------


def run(argv: Sequence[str], *, stdin: str | None = None, env: dict[str, str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), input=stdin, env=env, capture_output=True, text=True,
                          check=False)
    if check and proc.returncode != 0:
        raise BenchError(f"{' '.join(argv)} exited {proc.returncode}: "
                         f"{(proc.stderr or proc.stdout).strip()}")
    return proc


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def link_exists(name: str) -> bool:
    return (SYS_NET / name).exists()


def bridge_ports(bridge: str) -> list[str] | None:
    """Ports of a host-namespace bridge from sysfs (cheap: no netlink dump), None if absent."""
    try:
        return os.listdir(SYS_NET / bridge / "brif")
    except FileNotFoundError:
        return None


def wait_until(done: Callable[[], bool], what: str) -> None:
    """Poll `done` until it returns true."""
    deadline = time.monotonic() + SETTLE
    while not done():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {SETTLE:.0f} s waiting for {what}")
        time.sleep(POLL)


def remove_netns_quietly(names: Sequence[str]) -> None:
    for name in names:
        if netns_exists(name):
            run(["ip", "netns", "delete", name], check=False)


def remove_links_quietly(names: Sequence[str]) -> None:
    for name in names:
        if link_exists(name):
            run(["ip", "link", "delete", name], check=False)


def our_netns(prefix: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def address(subnet: IPv4Network, index: int) -> str:
    """The container address of container `index` (0-based): .2 upwards; .1 is the bridge."""
    return str(subnet.network_address + 2 + index)


# -- linkd ------------------------------------------------------------------------------


class LinkdKernel:
    """linkd's runtime, step by step as `Supervisor.apply` runs the reconciler's actions."""

    name = "linkd (`linkd.runtime.kernel.netlink.Kernel`)"
    stack = "lkbench"

    def __init__(self, subnet: IPv4Network) -> None:
        from linkd.core.plan import StackPlan

        self.subnet = subnet
        self.plan: StackPlan | None = None
        self.plan_seconds = 0.0  # what `realize` cost, untimed but reported

    def prepare(self, n: int) -> None:
        from linkd.core.model import Attachment, Network, Service, Stack
        from linkd.core.plan import realize

        stack = Stack(
            name=self.stack,
            services=(Service(name="c", command=("sleep", "60"),
                              networks=(Attachment("default"),), replicas=n),),
            networks=(Network("default"),),
        )
        started = time.perf_counter()
        self.plan = realize(stack, {"default": self.subnet})
        self.plan_seconds = time.perf_counter() - started

    async def setup(self, n: int) -> None:
        from linkd.runtime.kernel.netlink import Kernel

        assert self.plan is not None and len(self.plan.containers) == n
        kernel = Kernel()
        try:
            # As `linkd up` does (Supervisor.up): the namespace helper starts making the
            # namespaces at once, and keeps ahead while bridges and veths are made here.
            kernel.prefetch_netns(c.netns for c in self.plan.containers)
            for network in self.plan.networks:
                await kernel.ensure_bridge(network)
            for container in self.plan.containers:
                await kernel.ensure_netns(container.netns)
                for interface in container.interfaces:
                    await kernel.ensure_veth(container.netns, interface)
                await kernel.configure_netns(container)
        finally:
            kernel.close()

    async def teardown(self) -> None:
        from linkd.runtime.kernel.netlink import Kernel

        assert self.plan is not None
        kernel = Kernel()
        try:
            for container in self.plan.containers:
                kernel.remove_netns(container.netns)
            for network in self.plan.networks:
                await kernel.remove_bridge(network.bridge)
        finally:
            kernel.close()
        # remove_bridge waits for the ports to go (or gives up after its settle time and
        # deletes the bridge anyway): make sure the veths are really gone.
        veths = [i.host_ifname for c in self.plan.containers for i in c.interfaces]
        wait_until(lambda: not any(link_exists(v) for v in veths), "linkd's veths to go")

    def cleanup(self) -> None:
        from linkd.core import names

        remove_netns_quietly(our_netns(names.netns_prefix(self.stack)))
        bridge = names.bridge_name(self.stack, "default")
        ports = bridge_ports(bridge) or []
        remove_links_quietly([p for p in ports if p.startswith(names.VETH_PREFIX)])
        remove_links_quietly([bridge])


# -- ip -batch --------------------------------------------------------------------------


class IpBatch:
    """The floor: iproute2 batches, the fewest execs that can do the job."""

    name = "`ip -batch` floor (host side in one batch, one `ip -n NS -batch` per container)"
    bridge = "lkbench-ip"
    netns_prefix = "lkbench-ip-"

    def __init__(self, subnet: IPv4Network) -> None:
        self.subnet = subnet
        self.n = 0

    def _netns(self, i: int) -> str:
        return f"{self.netns_prefix}{i}"

    def prepare(self, n: int) -> None:
        self.n = n

    async def setup(self, n: int) -> None:
        self.n = n
        gateway = address(self.subnet, -1)
        prefix = self.subnet.prefixlen
        host = [
            f"link add {self.bridge} type bridge",
            f"addr add {gateway}/{prefix} dev {self.bridge}",
            f"link set {self.bridge} up",
        ]
        for i in range(n):
            ns, veth = self._netns(i), f"lkbip{i}"
            host += [
                f"netns add {ns}",
                f"link add {veth} type veth peer name eth0 netns {ns}",
                f"link set {veth} master {self.bridge} up",
            ]
        run(["ip", "-batch", "-"], stdin="\n".join(host) + "\n")
        for i in range(n):
            inside = (
                "link set lo up\n"
                f"addr add {address(self.subnet, i)}/{prefix} dev eth0\n"
                "link set eth0 up\n"
                f"route add default via {gateway}\n"
            )
            run(["ip", "-n", self._netns(i), "-batch", "-"], stdin=inside)

    async def teardown(self) -> None:
        run(["ip", "-batch", "-"],
            stdin="".join(f"netns delete {self._netns(i)}\n" for i in range(self.n)))
        wait_until(lambda: not bridge_ports(self.bridge), f"bridge {self.bridge} to empty")
        run(["ip", "link", "delete", self.bridge])

    def cleanup(self) -> None:
        remove_netns_quietly(our_netns(self.netns_prefix))
        remove_links_quietly([p for p in bridge_ports(self.bridge) or [] if p.startswith("lk")])
        remove_links_quietly([self.bridge])


# -- CNI --------------------------------------------------------------------------------


class Cni:
    """CNI reference plugins exec'd as a runtime would: `bridge` (host-local IPAM), then
    `loopback` for `lo` (the bridge plugin leaves `lo` down; containerd and CRI-O run the
    loopback plugin for it). DEL runs `bridge` only; loopback's DEL does nothing."""

    name = "CNI plugins (`bridge` + `host-local`, + `loopback` for lo; one exec per call)"
    bridge = "lkbench-cni"
    netns_prefix = "lkbench-cni-"

    def __init__(self, subnet: IPv4Network) -> None:
        self.subnet = subnet
        self.n = 0
        self.tmp: Path | None = None
        self.config = ""
        self.loopback = json.dumps({"cniVersion": "1.0.0", "name": "lo", "type": "loopback"})

    def _netns(self, i: int) -> str:
        return f"{self.netns_prefix}{i}"

    def _env(self, command: str, i: int) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": f"lkbench{i:08d}",
            "CNI_NETNS": str(NETNS_DIR / self._netns(i)),
            "CNI_IFNAME": "eth0",
            "CNI_PATH": CNI_PATH,
        }

    def prepare(self, n: int) -> None:
        self.n = n
        self.tmp = Path(tempfile.mkdtemp(prefix="lkbench-cni-"))
        self.config = json.dumps({
            "cniVersion": "1.0.0",
            "name": "lkbench-cni",
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": True,
            "ipMasq": False,
            "ipam": {
                "type": "host-local",
                "subnet": str(self.subnet),
                "routes": [{"dst": "0.0.0.0/0"}],  # the default route via the gateway
                "dataDir": str(self.tmp / "ipam"),
            },
        })

    async def setup(self, n: int) -> None:
        for i in range(n):
            run(["ip", "netns", "add", self._netns(i)])
            run([f"{CNI_PATH}/bridge"], stdin=self.config, env=self._env("ADD", i))
            lo_env = dict(self._env("ADD", i), CNI_IFNAME="lo")
            run([f"{CNI_PATH}/loopback"], stdin=self.loopback, env=lo_env)

    async def teardown(self) -> None:
        for i in range(self.n):
            run([f"{CNI_PATH}/bridge"], stdin=self.config, env=self._env("DEL", i))
            run(["ip", "netns", "delete", self._netns(i)])
        # DEL leaves the bridge, as CNI's bridge plugin always does.
        wait_until(lambda: not bridge_ports(self.bridge), f"bridge {self.bridge} to empty")
        run(["ip", "link", "delete", self.bridge])

    def cleanup(self) -> None:
        remove_netns_quietly(our_netns(self.netns_prefix))
        # The plugin names host veths vethXXXXXXXX; ours are exactly the bridge's ports.
        remove_links_quietly(bridge_ports(self.bridge) or [])
        remove_links_quietly([self.bridge])
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None


# -- netavark ---------------------------------------------------------------------------


class Netavark:
    """netavark as podman runs it (setup/teardown per container, static IPs from the caller).

    Debian's netavark has no `none` firewall driver (`NETAVARK_FW=none` fails with
    "Must provide a valid firewall backend"), and its iptables driver would change the host's
    firewall and turn on ip_forward. So every netavark call runs inside a throwaway network
    namespace `lkbench-nvhost` (`nsenter --net=...`) that plays the host: the bridge, the
    host veths, the iptables rules and the sysctls land there and vanish with it. The
    containers' namespaces are ordinary /run/netns entries, as with podman.
    """

    name = "netavark (iptables driver, confined to a throwaway host netns)"
    bridge = "lkbench-nv"
    netns_prefix = "lkbench-nv-"
    sandbox = "lkbench-nvhost"

    def __init__(self, subnet: IPv4Network) -> None:
        self.subnet = subnet
        self.n = 0
        self.tmp: Path | None = None

    def _netns(self, i: int) -> str:
        return f"{self.netns_prefix}{i}"

    def _options(self, i: int) -> str:
        network = {
            "dns_enabled": False,
            "driver": "bridge",
            "id": "6c6b62656e6368" + "0" * 50,  # 64 hex digits, as podman's ids
            "internal": False,
            "ipv6_enabled": False,
            "name": "lkbench",
            "network_interface": self.bridge,
            "subnets": [{"gateway": address(self.subnet, -1), "subnet": str(self.subnet)}],
        }
        return json.dumps({
            "container_id": f"lkbench{i:08d}",
            "container_name": f"c{i}",
            "networks": {"lkbench": {"interface_name": "eth0",
                                     "static_ips": [address(self.subnet, i)]}},
            "network_info": {"lkbench": network},
        })

    def _netavark(self, command: str, i: int) -> None:
        assert self.tmp is not None
        run(["nsenter", f"--net={NETNS_DIR / self.sandbox}", NETAVARK,
             "--config", str(self.tmp), "--rootless", "false",
             command, str(NETNS_DIR / self._netns(i))],
            stdin=self._options(i))

    def prepare(self, n: int) -> None:
        self.n = n
        self.tmp = Path(tempfile.mkdtemp(prefix="lkbench-nv-"))
        remove_netns_quietly([self.sandbox])
        run(["ip", "netns", "add", self.sandbox])

    async def setup(self, n: int) -> None:
        for i in range(n):
            run(["ip", "netns", "add", self._netns(i)])
            self._netavark("setup", i)

    async def teardown(self) -> None:
        for i in range(self.n):
            self._netavark("teardown", i)
            run(["ip", "netns", "delete", self._netns(i)])
        # netavark deletes the bridge with the last container; check, in the sandbox.
        left = run(["ip", "-n", self.sandbox, "-o", "link", "show"]).stdout
        if self.bridge in left or "veth" in left:
            raise BenchError(f"netavark left links behind in {self.sandbox}: {left}")

    def cleanup(self) -> None:
        remove_netns_quietly(our_netns(self.netns_prefix))
        remove_netns_quietly([self.sandbox])
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None


def leftovers() -> list[str]:
    """Every netns and host link with a bench prefix that still exists."""
    from linkd.core import names

    found = our_netns("lkbench") + our_netns(names.netns_prefix(LinkdKernel.stack))
    bridge = names.bridge_name(LinkdKernel.stack, "default")
    links = [n for n in os.listdir(SYS_NET) if n.startswith("lkbench") or n.startswith("lkbip")]
    if link_exists(bridge):
        links.append(bridge)
    return found + links
