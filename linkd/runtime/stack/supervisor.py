"""Bring a stack up, keep it running, take it down: the runtime of `linkd up`.

How it works:
1. Under the global lock, the supervisor gathers what is taken (host routes, other
   stacks' subnets), picks subnets, realizes the plan (`linkd.core.plan.realize`) and records
   it in the stack's state file before touching the kernel, so a crash at any later
   point leaves a record of what to remove.
2. It observes the kernel (links, namespaces) and its processes, asks
   `linkd.core.reconcile.plan_up` for actions and applies them in order: bridges, namespaces,
   veths, addresses, then container processes wave by wave (`depends_on`).
3. While up, one monitor task per container waits for its process and applies the
   restart policy. SIGINT/SIGTERM (Ctrl-C, or `linkd down` from elsewhere) set the stop
   event.
4. Teardown observes again and applies `plan_down`, best effort: every step runs, the
   failures are collected and reported together. It runs for a failed `up` too, so a
   failure part-way leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from linkd.conventions.schema import Convention
from linkd.core import bindings, firewall, health, ipam, names, restart
from linkd.core.hosts import hosts_file
from linkd.core.model import Stack
from linkd.core.plan import ContainerPlan, StackPlan, lease_of, realize
from linkd.core.reconcile import (
    Action,
    ConfigureNetns,
    EnsureBridge,
    EnsureNetns,
    EnsureVeth,
    Observed,
    RemoveBridge,
    RemoveLink,
    RemoveNetns,
    StartContainer,
    StopContainer,
    plan_down,
    plan_up,
)
from linkd.core.state import ContainerState, StackState, StackStatus
from linkd.dns.zone import build_zone, forwards_for, held_back, requester_of, rezone
from linkd.errors import ConflictError, ContainerError, LinkdError, TeardownError
from linkd.runtime.containers import process, rootfs
from linkd.runtime.containers.health import HealthChecks
from linkd.runtime.images import image_store
from linkd.runtime.kernel import cgroups, forwarding
from linkd.runtime.kernel.firewall import StackFirewall, publish_ports, remove_table, set_localnet
from linkd.runtime.kernel.firewall import tables as firewall_tables
from linkd.runtime.kernel.netlink import Kernel
from linkd.runtime.stack import store
from linkd.runtime.stack.conventions import load_conventions
from linkd.runtime.stack.dns_server import DnsServer, upstreams_from_resolv_conf
from linkd.runtime.stack.state_writer import StateWriter

log = logging.getLogger("linkd")

Report = Callable[[str, str], None]  # (object, what happened), for progress displays
Conventions = dict[str, Convention]  # by name, as linkd.core.plan.realize takes them
START_CONCURRENCY = 8  # containers of one wave starting at once

RESOLV_CONF = (
    "# linkd's DNS server: the stack's names (also in /etc/hosts), others forwarded\n"
    "# to the host's resolvers.\n"
    "nameserver 127.0.0.11\n"
    "options ndots:0\n"
)


@dataclass(frozen=True, slots=True)
class UpOptions:
    abort_on_exit: frozenset[str] = frozenset()  # services whose exit stops the stack
    exit_code_from: str | None = None


class Supervisor:
    def __init__(
        self, stack_name: str, source: str, report: Report, *, survive: bool = False,
        kernel: Kernel | None = None,
    ) -> None:
        self.stack = stack_name
        self.source = source
        self.report = report
        # Containers outlive this process (the daemon: a restarted one adopts them).
        self.survive = survive
        self._dns_for: set[str] = set()  # containers whose resolver this process serves
        self._shim_index: dict[str, tuple[int, int]] | None = None
        # The daemon shares one Kernel (its sockets, its namespace helper process) among
        # its stacks: a Kernel of one's own costs a fork of the daemon per stack.
        self._own_kernel = kernel is None
        self.kernel = Kernel() if kernel is None else kernel
        self.firewall = StackFirewall(stack_name)  # its nft table: isolation, ports
        self.plan: StackPlan | None = None
        self._served: StackPlan | None = None  # what the DNS zone serves: plan less the gone
        self.status: StackStatus = "starting"
        self._changing = asyncio.Lock()  # held by update and repair: one at a time
        self.processes: dict[str, process.ContainerProcess] = {}
        self.states: dict[str, ContainerState] = {}
        self.user_stopped: set[str] = set()
        self.exits: asyncio.Queue[tuple[str, int, bool]] = asyncio.Queue()
        self._monitors: dict[str, asyncio.Task[None]] = {}
        self._warm: dict[str, process.WarmShim] = {}  # shims started ahead, by container
        # Set by `run` for the supervisor's lifetime: every monitor task lives in it, so
        # none outlives `up`, and a monitor that fails ends `up` instead of vanishing.
        self.tasks: asyncio.TaskGroup | None = None
        self.dns: DnsServer | None = None
        self._dns_tasks: dict[str, list[asyncio.Task[None]]] = {}  # per container
        # Called with every lifecycle and DNS change (the daemon's event stream).
        self.on_event: Callable[[dict[str, object]], None] | None = None
        self.health = HealthChecks(self._on_probe)  # probe loops (linkd.runtime.containers.health)
        self.notices: list[str] = []  # changes to the host's settings, said once
        self.writer = StateWriter(self.snapshot)

    # -- state ---------------------------------------------------------------------

    def snapshot(self) -> StackState | None:
        """The stack's state as it is now (what the state file will hold)."""
        if self.plan is None:
            return None
        containers = tuple(
            self.states.get(c.name, ContainerState(c.name)) for c in self.plan.containers
        )
        return StackState(self.plan, self.source, self.status, os.getpid(), containers)

    def save(self) -> None:
        """The state changed: the state file follows soon (linkd.runtime.stack.state_writer);
        `await self.writer.flush()` where it must be on disk before going on."""
        self.writer.changed()

    def set_state(self, name: str, **changes: object) -> None:
        current = self.states.get(name, ContainerState(name))
        self.states[name] = replace(current, **changes)  # type: ignore[arg-type]
        self.save()
        if "status" in changes and self.states[name].status != current.status:
            self.health.wake()  # dependency waits look again
            self.publish_zone()
            self.publish_bindings(changed=name)
            now = self.states[name]
            self.emit(
                type="lifecycle",
                container=name,
                status=now.status,
                exit_code=now.exit_code,
                restarts=now.restarts,
            )

    async def ensure_host(self, plan: StackPlan) -> None:
        """Forwarding on, and room in a FORWARD chain that drops (linkd.core.forwarding);
        what was turned on is said once, in the output of the `up` that did it."""
        for notice in await forwarding.ensure(plan):
            self.notices.append(notice)
            self.report("host", notice)

    def take_notices(self) -> list[str]:
        """The notices since the last call (the daemon hands them to the `up` that
        caused them)."""
        notices, self.notices = self.notices, []
        return notices

    def emit(self, **event: object) -> None:
        if self.on_event is not None:
            self.on_event({"stack": self.stack, "time": time.time(), **event})

    # -- up ------------------------------------------------------------------------

    async def prepare(self, stack: Stack) -> StackPlan:
        """Pick subnets and record the plan, holding the global lock meanwhile."""
        stack, conventions = await self._resolve(stack)
        async with store.locked_async(store.root() / "lock"):
            plan = await self._plan(stack, conventions)
            self.plan = plan
            await self.writer.flush()  # on disk before the kernel is touched
            store.save_lease(lease_of(plan))
        # The mount point of every container's live bindings (it hides the host's copy).
        Path(bindings.DIRECTORY).mkdir(parents=True, exist_ok=True)
        zone = build_zone([plan], domain=plan.dns.domain, pending=self._pending(plan))
        self.dns = DnsServer(zone, _upstreams(plan))
        self._served = plan
        return plan

    async def _plan(self, stack: Stack, conventions: Conventions) -> StackPlan:
        """The plan of `stack`: its lease's subnets and addresses where still free
        (its own bridges' routes do not count as taken), others' leases avoided."""
        own = {n.bridge for n in self.plan.networks} if self.plan is not None else set()
        taken = [
            (net, who)
            for net, who in await self._taken_subnets()
            if not any(who == f"host route via {bridge}" for bridge in own)
        ]
        lease = store.load_lease(stack.name)
        # Other stacks' leases are held for them while they are down.
        held = [
            subnet
            for other in store.leases()
            if other.stack != stack.name
            for _, subnet in other.subnets
        ]
        subnets = ipam.pick_subnets(
            stack.networks,
            taken,
            previous=lease.subnet_map() if lease else None,
            reserved=held,
        )
        plan = realize(
            stack, subnets, workdir=str(self._base), conventions=conventions, lease=lease
        )
        return publish_ports(plan, self.plan)  # host ports decided, or refused

    async def _resolve(self, stack: Stack) -> tuple[Stack, Conventions]:
        """`stack` with its images merged in (loaded into the store if they are paths)
        and the conventions it uses, read off the event loop and before the global lock
        is taken: a long image load must not hold up every other stack's `up`."""
        def read() -> tuple[Stack, Conventions]:
            resolved = image_store.resolve_stack(stack, self._base)
            return resolved, load_conventions(resolved, self._base)

        return await asyncio.to_thread(read)

    @property
    def _base(self) -> Path:
        return Path(self.source).parent

    def publish_zone(self) -> None:
        """Swap in a zone without the containers that have stopped for good.

        A restarting container keeps its records (it comes back at the same address);
        one that exited is removed at once, and comes back when it starts again.
        """
        if self.dns is None or self.plan is None or self.status == "stopping":
            return  # during teardown DNS is already off; rebuilding per stop is waste
        gone = [n for n, st in self.states.items() if st.status in ("exited", "failed")]
        served = self.plan.without(gone)
        zone = rezone(self.dns.zone, [self._served or self.plan], [served], self._pending(served))
        self._served = served
        if zone is not self.dns.zone:
            self.dns.set_zone(zone)
            self.emit(type="dns", serial=zone.serial, gone=sorted(gone))

    def _pending(self, plan: StackPlan) -> frozenset[tuple[str, str]]:
        """Containers with a healthcheck that are not running and healthy: DNS holds
        them back from their service's names."""
        return held_back(plan, self.states)

    def _on_probe(self, name: str, before: health.Health | None, now: health.Health) -> None:
        """After every probe: a change of health is saved, served and announced."""
        if before is None or before.status != now.status:
            self.set_state(name, health=now.status)
            self.publish_zone()
            last = now.last
            self.emit(
                type="health", container=name, health=now.status,
                failing_streak=now.failing_streak,
                exit_code=last.exit_code if last else None,
                output=last.output if last else "",
            )
            self.report(f"container {name}", f"{now.status} ({health.failure_reason(now)})")
        self.health.wake()

    def publish_bindings(self, changed: str) -> None:
        """Rewrite the live bindings of every container linking to `changed`'s service."""
        if self.plan is None or self.status == "stopping":
            return
        service = self.plan.container(changed).service
        for c in self.plan.containers:
            if any(s == service for _, s in c.links):
                directory = store.container_dir(self.stack, c.name)
                write_bindings(directory, self.plan, c, self.running())

    def running(self) -> set[str]:
        return {n for n, st in self.states.items() if st.status == "running"}

    async def _taken_subnets(self) -> list[tuple[ipam.IPNetwork, str]]:
        taken = list(await self.kernel.routes())
        for other in store.stacks():
            if other == self.stack:
                continue
            try:
                other_state = store.load(other)
            except LinkdError:
                continue
            for net in other_state.plan.networks:
                taken.append((net.subnet, f"stack {other} network {net.key}"))
        return taken

    async def observe(self) -> Observed:
        running = frozenset(n for n, p in self.processes.items() if p.returncode is None)
        return Observed(
            links=await self.kernel.links(),
            netns=self.kernel.netns_names(names.netns_prefix(self.stack)),
            running=running,
        )

    async def up(self, stack: Stack) -> None:
        plan = await self.prepare(stack)
        await self._bring_up(plan, plan_up(plan, await self.observe()))
        self.status = "up"
        await self.writer.flush()

    async def _bring_up(self, plan: StackPlan, actions: list[Action]) -> None:
        """Apply `actions` for `plan`, the slowest steps side by side: the host's
        forwarding (iptables commands) and the stack's nftables table are made while
        bridges, namespaces and veths are, and the first containers' shims start
        meanwhile (warm, waiting at their gates). No container starts before the
        forwarding and the isolation rules are in place."""
        self.kernel.prefetch_netns(a.netns for a in actions if isinstance(a, EnsureNetns))
        self._warm_shims(actions)
        host = asyncio.ensure_future(self._host_ready(plan))
        try:
            await self.apply_all(actions, before_start=host)
            await host
        finally:
            if not host.done():
                host.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await host
            self._discard_warm()
        set_localnet(plan)  # the bridges exist now

    async def _host_ready(self, plan: StackPlan) -> None:
        uplinks = await self.kernel.default_route_devices()
        async with asyncio.TaskGroup() as both:
            both.create_task(self.ensure_host(plan))
            both.create_task(self.firewall.ensure(plan, uplinks))  # isolation

    def _warm_shims(self, actions: list[Action]) -> None:
        """Start the shims of the containers that start without waiting for another
        (process.WarmShim): their interpreters start while the network is wired, and
        wait to be told to go on."""
        starts = [a.container for a in actions
                  if isinstance(a, StartContainer) and not a.container.depends_on]
        for container in starts[:START_CONCURRENCY]:
            directory = store.container_dir(self.stack, container.name)
            store.private_dirs(directory)
            # Where the container's files are, as its start will say (process_spec): a
            # warm shim only serves the start whose spec path is its own.
            files = process_spec(directory, container)
            try:
                self._warm[container.name] = process.warm(files.run_dir, files.log_path)
            except ContainerError:
                return  # started the usual way then, which says what is wrong

    def _discard_warm(self) -> None:
        for shim in self._warm.values():
            shim.discard()
        self._warm.clear()

    async def update(self, stack: Stack) -> dict[str, list[str]]:
        """Change the running stack to `stack`, touching only what changed: containers
        whose plan is the same keep running (same process, same address); changed ones
        are recreated (stopped, their namespace rebuilt, started); removed ones go; new
        services and networks come. Returns the containers in each of those groups.
        """
        async with self._changing:  # no repair meanwhile: it would restore the old plan
            return await self._update(stack)

    async def _update(self, stack: Stack) -> dict[str, list[str]]:
        assert self.plan is not None and self.dns is not None
        old = self.plan
        stack, conventions = await self._resolve(stack)
        async with store.locked_async(store.root() / "lock"):
            new = await self._plan(stack, conventions)
        before = {c.name: c for c in old.containers}
        after = {c.name: c for c in new.containers}
        removed = [n for n in before if n not in after]
        changed = [n for n in before if n in after and before[n] != after[n]]
        added = [n for n in after if n not in before]
        kept = [n for n in before if n in after and before[n] == after[n]]
        # Stop what goes or changes, newest dependencies first, then free their names.
        for name in reversed([c.name for c in old.containers if c.name in removed + changed]):
            await self.stop(name)
        await self.stop_dns(removed + changed)
        for name in changed:
            self.kernel.remove_netns(before[name].netns)  # rebuilt from the new plan
            self.user_stopped.discard(name)
            self.states.pop(name, None)
        await self._veths_gone([i.host_ifname for n in changed for i in before[n].interfaces])
        for name in removed:
            self.states.pop(name, None)
            self.processes.pop(name, None)
        async with store.locked_async(store.root() / "lock"):
            self.plan = new
            await self.writer.flush()
            store.save_lease(lease_of(new))
        self.dns.set_upstreams(_upstreams(new))
        observed = await self.observe()
        running = frozenset(n for n, p in self.processes.items() if p.returncode is None)
        actions = plan_up(new, replace(observed, running=running), previous=old)
        self._served = old
        self.publish_zone()  # the zone follows the new plan from here
        await self._bring_up(new, actions)
        for name in kept:  # their peers may have changed: what they re-read must follow
            write_bindings(store.container_dir(self.stack, name), new, after[name],
                           self.running())
        self.status = "up"
        await self.writer.flush()
        summary = {"added": added, "changed": changed, "removed": removed, "kept": kept}
        self.report(f"stack {self.stack}", "updated: " + ", ".join(
            f"{k} {len(v)}" for k, v in summary.items()))
        return summary

    async def _veths_gone(self, veths: list[str], timeout: float = 5.0) -> None:
        """Wait until these host veths are gone: the kernel deletes a removed
        namespace's veths from a work queue, a moment after the namespace goes, and a
        veth recreated under the same name before that would be taken for done."""
        deadline = asyncio.get_running_loop().time() + timeout
        while veths and set(veths) & set(await self.kernel.links()):
            if asyncio.get_running_loop().time() > deadline:
                for veth in veths:
                    await self.kernel.remove_link(veth)
                return
            await asyncio.sleep(0.01)

    async def apply_all(
        self, actions: list[Action], *, before_start: Awaitable[None] | None = None
    ) -> None:
        """Apply in order, except that the containers of one start wave start together
        (at most START_CONCURRENCY at once): each waits for its shim, a fresh Python,
        to report, and those waits overlap. Every start of a wave is awaited before an
        error is raised, so none is left half-started when the stack is torn down.
        `before_start` is awaited before the first container starts."""
        assert self.plan is not None
        waves = {svc: i for i, wave in enumerate(self.plan.start_waves) for svc in wave}
        gate = asyncio.Semaphore(START_CONCURRENCY)

        async def start(action: StartContainer) -> None:
            async with gate:
                await self.apply(action)

        batch: list[StartContainer] = []

        async def flush() -> None:
            nonlocal before_start
            if before_start is not None:
                await before_start
                before_start = None
            results = await asyncio.gather(*(start(a) for a in batch), return_exceptions=True)
            batch.clear()
            for result in results:
                if isinstance(result, BaseException):
                    raise result

        for action in actions:
            if isinstance(action, StartContainer):
                wave = waves.get(action.container.service)
                if batch and waves.get(batch[0].container.service) != wave:
                    await flush()
                batch.append(action)
                continue
            if batch:
                await flush()
            await self.apply(action)
        if batch:
            await flush()

    async def recover(self, state: StackState) -> None:
        """Take the stack over from a supervisor that died, from its state file and the
        kernel: adopt the containers still running (none is restarted that did not need
        it), hand those that died meanwhile to their restart policy, recreate what is
        missing (a bridge or veth deleted by hand, steps a crash cut short), start what
        never started, and serve DNS in every container again.
        """
        plan = state.plan
        self.plan = self._served = plan
        self.states = {c.name: c for c in state.containers}
        self.dns = DnsServer(build_zone([plan], domain=plan.dns.domain), _upstreams(plan))
        self.publish_zone()
        observed = await self.observe()
        handled: set[str] = set()
        for container in plan.containers:
            current = self.states.get(container.name) or ContainerState(container.name)
            if current.status in ("exited", "failed"):
                handled.add(container.name)  # stopped for good before: stays so
                continue
            if container.netns not in observed.netns:
                continue  # its namespace is gone: a process left in it reaches no one
            proc = await self._adopt(container, current)
            if proc is not None:
                handled.add(container.name)
                self.processes[container.name] = proc
                assert self.tasks is not None, "recover runs inside run()"
                self._monitors[container.name] = self.tasks.create_task(
                    self._monitor(container, proc, restarts=current.restarts),
                    name=f"monitor {container.name}",
                )
                # Probed afresh: the health the dead supervisor saw is not known now.
                first = self._start_health(
                    container, proc.init_pid, current.started_at or time.time()
                )
                self.states[container.name] = replace(
                    self.states[container.name], health=first.status if first else None
                )
        for leftover in {c.name for c in plan.containers} - handled:
            await self._kill_lost(plan.container(leftover))
        actions = plan_up(plan, replace(observed, running=frozenset(handled)))
        self.kernel.prefetch_netns(a.netns for a in actions if isinstance(a, EnsureNetns))
        await self.apply_all(actions)
        await self.ensure_host(plan)
        await self.firewall.ensure(plan, await self.kernel.default_route_devices())
        present = observed.netns | {a.netns for a in actions if isinstance(a, EnsureNetns)}
        for container in plan.containers:
            if container.name not in self._dns_for and container.netns in present:
                await self.serve_dns(container)
        self._shim_index = None
        self.status = "up"
        await self.writer.flush()
        self.report(f"stack {self.stack}", f"recovered ({len(handled)} containers adopted)")

    async def repair(self) -> int:
        """Recreate kernel objects of this stack that went missing while it runs (a veth
        or bridge deleted by hand): the level-based check the daemon runs periodically.
        Processes are left to their monitors; returns the number of repairs."""
        if self.plan is None or self.status != "up" or self._changing.locked():
            return 0
        async with self._changing:
            return await self._repair(self.plan)

    async def _repair(self, plan: StackPlan) -> int:
        observed = await self.observe()
        everyone = frozenset(c.name for c in plan.containers)
        actions = [
            a
            for a in plan_up(plan, replace(observed, running=everyone))
            if isinstance(a, EnsureBridge | EnsureVeth | ConfigureNetns)
        ]
        for action in actions:
            if isinstance(action, ConfigureNetns):
                # Addresses and routes only: its resolver is still served (the
                # namespace, and the sockets in it, never went away).
                await self.kernel.configure_netns(action.container)
            else:
                await self.apply(action)
        await self.ensure_host(plan)  # a dockerd started since may drop what we forward
        repairs = len(actions) + await self.firewall.repair(
            plan, await self.kernel.default_route_devices())
        if repairs:
            self.report(f"stack {self.stack}", f"repaired {repairs} kernel objects")
        return repairs

    def _shims(self) -> dict[str, tuple[int, int]]:
        """Running containers by run directory, scanned once per recovery."""
        if self._shim_index is None:
            self._shim_index = process.running_shims()
        return self._shim_index

    async def _adopt(
        self, container: ContainerPlan, current: ContainerState
    ) -> process.ContainerProcess | None:
        spec = self.process_spec(container)
        if current.pid is not None and current.init_pid is not None:
            try:
                return await process.adopt(spec, current.pid, current.init_pid)
            except ContainerError as exc:
                self.report(f"container {container.name}", f"not adopted: {exc}")
        # Started, but its PIDs never reached the state file: find it by its spec.
        found = self._shims().get(spec.run_dir)
        if found is None:
            return None
        try:
            proc = await process.adopt(spec, *found)
        except ContainerError:
            return None
        self.set_state(container.name, status="running", pid=found[0], init_pid=found[1])
        return proc

    async def _kill_lost(self, container: ContainerPlan) -> None:
        """A container that cannot be adopted and will be started afresh: end what may
        be left of it, by PID, only if that PID is still its shim."""
        current = self.states.get(container.name)
        if current is not None:
            _kill_leftover(self.stack, current)
        run_dir = str(store.container_dir(self.stack, container.name))
        found = self._shims().get(run_dir)
        if found is not None:  # checked again through a pidfd: the PID may be reused
            process.kill_shim(found[0], run_dir)

    async def apply(self, action: Action) -> None:
        match action:
            case EnsureBridge(network):
                await self.kernel.ensure_bridge(network)
                self.report(f"network {network.name}", f"bridge {network.bridge} {network.subnet}")
            case EnsureNetns(netns):
                await self.kernel.ensure_netns(netns)
            case EnsureVeth(netns, interface):
                await self.kernel.ensure_veth(netns, interface)
            case ConfigureNetns(container):
                await self.kernel.configure_netns(container)
                await self.serve_dns(container)
                self.write_files(container)
                self.report(f"container {container.name}", "network ready")
            case StartContainer(container):
                await self.wait_for_dependencies(container)
                await self.start(container)
            case StopContainer(name):
                await self.stop(name)
            case RemoveNetns(netns):
                self.kernel.remove_netns(netns)
            case RemoveLink(name):
                await self.kernel.remove_link(name)
            case RemoveBridge(name):
                await self.kernel.remove_bridge(name)

    async def serve_dns(self, container: ContainerPlan) -> None:
        """linkd's resolver at 127.0.0.11:53 inside the container, before it starts."""
        if self.dns is None or self.tasks is None:
            return
        before = self.states.get(container.name)
        udp, tcp = await self.kernel.dns_sockets(
            container.netns, before.dns_ports if before is not None else None
        )
        self._dns_for.add(container.name)
        ports = (udp.getsockname()[1], tcp.getsockname()[1])
        if before is None or before.dns_ports != ports:
            # Saved with the next state change (its start follows at once): one write
            # of the state file per container, not two.
            self.states[container.name] = replace(
                before or ContainerState(container.name), dns_ports=ports
            )
        # Queries reach these sockets over the container's loopback: say who asks.
        me = requester_of(self.stack, container)
        out = forwards_for(container)
        self._dns_tasks.setdefault(container.name, []).extend([
            self.tasks.create_task(self.dns.serve_udp(udp, requester_override=me, forward=out)),
            self.tasks.create_task(self.dns.serve_tcp(tcp, requester_override=me, forward=out)),
        ])

    async def stop_dns(self, names: Iterable[str]) -> None:
        """Close the resolver sockets of these containers: they live in the containers'
        namespaces and would keep them, and their veths, alive after removal."""
        names = list(names)
        tasks = [t for n in names for t in self._dns_tasks.pop(n, [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._dns_for.difference_update(names)

    def write_files(self, container: ContainerPlan) -> None:
        assert self.plan is not None, "files are written after prepare()"
        directory = store.container_dir(self.stack, container.name)
        write_container_files(directory, self.plan, container, self.running())

    def process_spec(self, container: ContainerPlan) -> process.ProcessSpec:
        spec = process_spec(
            store.container_dir(self.stack, container.name),
            container,
            keep_dirs=_under_tmp(str(Path(self.source).parent)),
        )
        # Limits, and an image's root filesystem and runtime (linkd.runtime.containers.rootfs).
        return rootfs.prepare(replace(spec, survive_parent=self.survive), container, self.stack)

    async def start(self, container: ContainerPlan) -> None:
        proc = await self._launch(container, restarts=0)
        self.report(f"container {container.name}", "started")
        assert self.tasks is not None, "Supervisor.start runs inside run()"
        self._monitors[container.name] = self.tasks.create_task(
            self._monitor(container, proc), name=f"monitor {container.name}"
        )

    async def _launch(self, container: ContainerPlan, *, restarts: int) -> process.ContainerProcess:
        try:
            proc = await process.start(self.process_spec(container),
                                       self._warm.pop(container.name, None))
        except ContainerError as exc:
            self.set_state(container.name, status="failed", error=str(exc))
            raise
        self.processes[container.name] = proc
        started_at = time.time()
        first = self._start_health(container, proc.init_pid, started_at)
        self.set_state(
            container.name,
            status="running",
            pid=proc.pid,
            init_pid=proc.init_pid,
            started_at=started_at,
            exit_code=None,
            error=None,
            restarts=restarts,
            health=first.status if first else None,
        )
        return proc

    def _start_health(
        self, container: ContainerPlan, init_pid: int, started_at: float
    ) -> health.Health | None:
        assert self.tasks is not None, "health checks run inside run()"
        directory = store.container_dir(self.stack, container.name)
        return self.health.start(self.tasks, container, directory, init_pid, started_at)

    async def wait_for_dependencies(self, container: ContainerPlan) -> None:
        """Compose's `depends_on` conditions (`service_started` holds by the start
        waves). A failed `required: false` dependency is a warning and start goes on."""
        assert self.plan is not None
        service = container.service
        for dependency in container.depends_on:
            peers = self.plan.of_service(dependency.service)
            failure = ""
            if dependency.condition == "service_completed_successfully":
                for peer in peers:
                    proc = self.processes.get(peer.name)
                    code = await proc.wait() if proc is not None else None
                    if code != 0:
                        failure = (
                            f"service {service} depends on {dependency.service} completing "
                            f"successfully, but {peer.name} exited with code {code}"
                        )
                        break
            elif dependency.condition == "service_healthy":
                failure = await self._wait_healthy(service, dependency.service, peers)
            if failure and dependency.required:
                raise ContainerError(failure)
            if failure and container.replica == 1:
                self.report(f"container {container.name}",
                            f"warning: {failure}; starting anyway (required: false)")

    async def _wait_healthy(self, service: str, dependency: str,
                            peers: tuple[ContainerPlan, ...]) -> str:
        """Until every container of `dependency` is healthy: "" then, else why not."""
        while True:
            changed = self.health.changed()
            states = [(p, self.states.get(p.name, ContainerState(p.name))) for p in peers]
            verdict, why = health.healthy_verdict(service, dependency, (
                health.Peer(p.name, st.status, st.exit_code, health.enabled(p.healthcheck),
                            self.health.current.get(p.name))
                for p, st in states
            ))
            if verdict != "wait":
                return why
            await changed.wait()

    async def _monitor(
        self, container: ContainerPlan, proc: process.ContainerProcess, restarts: int = 0
    ) -> None:
        backoff = 0
        while True:
            code = await proc.wait()
            await self.health.stop(container.name)
            started = self.states[container.name].started_at or time.time()
            ran_for = time.time() - started
            backoff = restart.backoff_after_run(backoff, ran_for)
            delay = restart.next_delay(
                container.restart,
                code,
                restarts=restarts,
                backoff=backoff,
                stopped_by_user=container.name in self.user_stopped,
            )
            final = delay is None
            self.set_state(
                container.name,
                status="exited" if final else "restarting",
                exit_code=code,
            )
            self.report(f"container {container.name}", f"exited with code {code}")
            self.exits.put_nowait((container.name, code, final))
            if final:
                return
            assert delay is not None
            await asyncio.sleep(delay)
            restarts += 1
            backoff += 1
            try:
                proc = await self._launch(container, restarts=restarts)
            except ContainerError as exc:
                self.exits.put_nowait((container.name, exc.exit_code, True))
                return
            self.report(f"container {container.name}", f"restarted ({restarts})")

    async def stop(self, name: str) -> None:
        self.user_stopped.add(name)
        monitor = self._monitors.pop(name, None)
        if monitor is not None:
            monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await monitor
        await self.health.stop(name)
        proc = self.processes.get(name)
        if proc is None or proc.returncode is not None:
            return
        container = self.plan.container(name) if self.plan else None
        sig = signal.Signals[container.stop_signal] if container else signal.SIGTERM
        grace = container.stop_grace_period if container else 10.0
        code = await proc.stop(sig, grace)
        self.set_state(name, status="exited", exit_code=code)
        self.report(f"container {name}", f"stopped (exit code {code})")

    # -- supervise -----------------------------------------------------------------

    async def supervise(self, stop: asyncio.Event, options: UpOptions) -> int:
        """Run until `stop` is set, or a service in `abort_on_exit` exits for good."""
        exit_code = 0
        stop_task = asyncio.create_task(stop.wait())
        try:
            while True:
                exit_task = asyncio.create_task(self.exits.get())
                done, _ = await asyncio.wait(
                    {stop_task, exit_task}, return_when=asyncio.FIRST_COMPLETED
                )
                if exit_task not in done:
                    exit_task.cancel()
                    return exit_code
                name, code, final = exit_task.result()
                service = self.plan.container(name).service if self.plan else name
                if final and service in options.abort_on_exit:
                    if options.exit_code_from in (None, service):
                        exit_code = code
                    return exit_code
        finally:
            stop_task.cancel()

    # -- down ----------------------------------------------------------------------

    async def teardown(self) -> None:
        """Remove everything of the stack, collecting failures rather than stopping."""
        self.status = "stopping"
        self.save()
        await self._cancel_restarts()
        # DNS first (as netavark does): its sockets live in the containers' namespaces
        # and would keep them, and their veths, alive after they are removed.
        await self.stop_dns(list(self._dns_tasks))
        await self.health.stop_all()
        self._discard_warm()
        await self.kernel.settle(names.netns_prefix(self.stack))  # none appears later
        observed = await self.observe()
        actions = plan_down(self.stack, self.plan, observed)
        errors: list[BaseException] = []
        for group in _stop_groups(actions):
            results = await asyncio.gather(
                *(self._apply_logged(a) for a in group), return_exceptions=True
            )
            errors += [r for r in results if isinstance(r, BaseException)]
        for monitor in self._monitors.values():
            monitor.cancel()
        try:
            await self.firewall.remove()
        except LinkdError as exc:
            errors.append(exc)
        if self._own_kernel:
            self.kernel.close()
        else:
            self.kernel.forget_stack(names.netns_prefix(self.stack))
        errors += await forwarding.release()
        errors += await asyncio.to_thread(cgroups.remove_stack, self.stack)
        if errors:
            self.status = "failed"
            await self.writer.flush()
            raise TeardownError(f"linkd down {self.stack}", errors)
        await self.writer.close()  # no late change may bring the directory back
        store.remove_stack_dir(self.stack)
        self.report(f"stack {self.stack}", "removed")

    async def _cancel_restarts(self) -> None:
        """Containers waiting to restart never start again once teardown began: their
        monitors are cancelled in the backoff, or mid-launch (which kills what was
        started). Else one could start after the kernel was observed for teardown, in a
        namespace already unlinked, and keep it and its veth alive."""
        waiting = [
            (name, monitor) for name, monitor in self._monitors.items()
            if self.states.get(name, ContainerState(name)).status == "restarting"
        ]
        for name, monitor in waiting:
            self._monitors.pop(name, None)
            monitor.cancel()
        for _, monitor in waiting:
            with contextlib.suppress(asyncio.CancelledError):
                await monitor

    async def _apply_logged(self, action: Action) -> None:
        try:
            await self.apply(action)
        except Exception as exc:  # a teardown step failing must not stop the others
            log.warning("teardown step %s failed: %s", type(action).__name__, exc)
            raise


def write_container_files(
    directory: Path, plan: StackPlan, container: ContainerPlan, running: Collection[str] = ()
) -> None:
    """The files bind-mounted over /etc/hosts, /etc/hostname and /etc/resolv.conf, and
    the live bindings (`running`: the containers running now)."""
    directory.mkdir(parents=True, exist_ok=True)
    write_bindings(directory, plan, container, running)
    store.write_atomic(directory / "hosts", hosts_file(plan, container).encode(), durable=False)
    store.write_atomic(directory / "hostname", f"{container.hostname}\n".encode(), durable=False)
    store.write_atomic(directory / "resolv.conf", RESOLV_CONF.encode(), durable=False)


def write_bindings(
    directory: Path, plan: StackPlan, container: ContainerPlan, running: Collection[str]
) -> None:
    """/run/linkd/links.env and links.json inside the container, replaced atomically."""
    target = directory / "bindings"
    target.mkdir(parents=True, exist_ok=True)
    store.write_atomic(target / bindings.ENV_FILE, bindings.links_env(container).encode(),
                       durable=False)
    document = bindings.links_json(plan, container, running)
    store.write_atomic(target / bindings.JSON_FILE, document.encode(), durable=False)


def process_spec(
    directory: Path, container: ContainerPlan, *, keep_dirs: tuple[str, ...] = ()
) -> process.ProcessSpec:
    """How the shim runs `container`, with its files in `directory`."""
    return process.ProcessSpec(
        name=container.name,
        netns=container.netns,
        hostname=container.hostname,
        argv=container.argv,
        env=container.env,
        working_dir=container.working_dir,
        user=container.user,
        bind_files=(
            (str(directory / "hosts"), "/etc/hosts"),
            (str(directory / "hostname"), "/etc/hostname"),
            (str(directory / "resolv.conf"), "/etc/resolv.conf"),
        ),
        log_path=str(directory / "log"),
        run_dir=str(directory),
        keep_dirs=keep_dirs,
        bind_dirs=((str(directory / "bindings"), bindings.DIRECTORY),),
    )


def _upstreams(plan: StackPlan) -> list[tuple[str, int]]:
    """The stack's `x-linkd: dns: upstreams`, else the host's resolv.conf servers."""
    if plan.dns.upstreams is not None:
        return [(u.host, u.port) for u in plan.dns.upstreams]
    try:
        return upstreams_from_resolv_conf(Path("/etc/resolv.conf").read_text())
    except OSError:
        return []


def _under_tmp(directory: str) -> tuple[str, ...]:
    """The stack's directory, if it lies under /tmp, which every container has privately.

    Containers run commands from the host's filesystem in that directory by default, so
    it stays visible inside; the rest of /tmp does not.
    """
    return (directory,) if directory.startswith("/tmp/") else ()


def _stop_groups(actions: list[Action]) -> list[list[Action]]:
    """Consecutive stops of the same wave run together; everything else runs alone."""
    groups: list[list[Action]] = []
    for action in actions:
        previous = groups[-1][-1] if groups else None
        if (
            isinstance(action, StopContainer)
            and isinstance(previous, StopContainer)
            and previous.wave == action.wave
        ):
            groups[-1].append(action)
        else:
            groups.append([action])
    return groups


async def run(
    stack: Stack,
    source: str,
    options: UpOptions,
    report: Report,
    *,
    on_up: Callable[[Supervisor], None] | None = None,
    before_down: Callable[[], Awaitable[None]] | None = None,
) -> int:
    """`linkd up` in the foreground: up, supervise until stopped, then always down.

    `on_up` runs once everything is started; `before_down` before teardown begins (the
    CLI uses it to show the last output of the containers before they are stopped).
    """
    try:
        lock = store.locked(store.supervisor_lock(stack.name), wait=False)
        lock.__enter__()
    except BlockingIOError:
        raise ConflictError(
            f"stack {stack.name} is already up; `linkd down -p {stack.name}` first, "
            "or pick another name with -p"
        ) from None
    try:
        return await _supervised(stack, source, options, report, on_up, before_down)
    finally:
        lock.__exit__(None, None, None)


async def _supervised(
    stack: Stack,
    source: str,
    options: UpOptions,
    report: Report,
    on_up: Callable[[Supervisor], None] | None,
    before_down: Callable[[], Awaitable[None]] | None,
) -> int:
    supervisor = Supervisor(stack.name, source, report)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    received: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig.name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    async with asyncio.TaskGroup() as supervisor.tasks:
        return await _up_and_supervise(
            stack, supervisor, stop, received, options, on_up, before_down
        )


async def _up_and_supervise(
    stack: Stack,
    supervisor: Supervisor,
    stop: asyncio.Event,
    received: list[str],
    options: UpOptions,
    on_up: Callable[[Supervisor], None] | None,
    before_down: Callable[[], Awaitable[None]] | None,
) -> int:
    loop = asyncio.get_running_loop()

    async def shielded_before_down() -> None:
        # A second Ctrl-C must not cut teardown in half (netavark ignores it too).
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: None)
        if before_down is not None:
            await before_down()

    try:
        code = await lifecycle(
            stack,
            supervisor,
            stop,
            options,
            on_up=on_up,
            before_down=shielded_before_down,
            interrupted_by=lambda: received[0] if received else "a stop request",
        )
        # Ctrl-C ends `up` as a shell would report it; `linkd down` elsewhere is a
        # normal end.
        return 130 if received and received[0] == "SIGINT" else code
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def lifecycle(
    stack: Stack,
    supervisor: Supervisor,
    stop: asyncio.Event,
    options: UpOptions,
    *,
    on_up: Callable[[Supervisor], None] | None = None,
    before_down: Callable[[], Awaitable[None]] | None = None,
    interrupted_by: Callable[[], str] = lambda: "a stop request",
) -> int:
    """One stack's life inside a running event loop: clean what an earlier supervisor
    left, come up (cut short if `stop` is set meanwhile), supervise until `stop` or an
    abort, and always tear down. Runs inside `supervisor.tasks` (a TaskGroup).

    Returns the exit code `up` reports (130 when interrupted while coming up).
    """
    report = supervisor.report
    try:
        await _cleanup_leftovers(stack.name, supervisor)
        up = asyncio.create_task(supervisor.up(stack))
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({up, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if up not in done:
            up.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await up
            report(f"stack {stack.name}", f"interrupted by {interrupted_by()} while coming up")
            return 130
        stopper.cancel()
        up.result()
        if on_up is not None:
            on_up(supervisor)
        return await supervisor.supervise(stop, options)
    finally:
        try:
            if before_down is not None:
                await before_down()
        finally:
            await supervisor.teardown()


async def remove_orphans(kernel: Kernel, report: Report) -> None:
    """Remove namespaces and links of stacks this run directory knows (they have a
    lease) but no longer runs (they have no state): what a crash between creating
    objects and recording them, or a failed teardown, left behind.

    Only names derived from those leases are touched, so the stacks of another run
    directory ($LINKD_RUN_DIR), a benchmark's objects or anything else are never seen
    as orphans."""
    running = set(store.stacks())
    links = await kernel.links()
    tables = await firewall_tables()
    shims = process.running_shims()
    for lease in store.leases():
        if lease.stack in running:
            continue
        for container in {c for _, c, _, _ in lease.addresses}:
            run_dir = str(store.container_dir(lease.stack, container))
            found = shims.get(run_dir)
            if found is not None:  # checked again through a pidfd: the PID may be reused
                process.kill_shim(found[0], run_dir)
                report(f"container {lease.stack}/{container}", "killed (orphan)")
        for netns in kernel.netns_names(names.netns_prefix(lease.stack)):
            kernel.remove_netns(netns)
            report(f"namespace {netns}", "removed (orphan)")
        for network, container, _, _ in lease.addresses:
            veth = names.host_veth_name(lease.stack, container, network)
            if veth in links:
                await kernel.remove_link(veth)
                report(f"link {veth}", "removed (orphan)")
        for network, _ in lease.subnets:
            bridge = names.bridge_name(lease.stack, network)
            if bridge in links:
                await kernel.remove_bridge(bridge)
                report(f"bridge {bridge}", "removed (orphan)")
        if firewall.table_name(lease.stack) in tables:
            await remove_table(lease.stack)
            report(f"table {firewall.table_name(lease.stack)}", "removed (orphan)")
    for exc in await forwarding.release():
        report("host", f"cleanup failed: {exc}")


async def _cleanup_leftovers(stack: str, supervisor: Supervisor) -> None:
    """Remove what an earlier supervisor of this stack left when it died."""
    try:
        previous = store.load(stack)
    except LinkdError:
        previous = None
    netns = Kernel.netns_names(names.netns_prefix(stack))
    if previous is None and not netns:
        return
    await down_unsupervised(stack, supervisor.report)


async def down_unsupervised(stack: str, report: Report) -> None:
    """Tear down a stack whose supervisor is gone, from its state file and the kernel.

    Its container processes are not our children: each is ended by PID, and only after
    checking that the PID still runs linkd's shim for that very container.
    """
    try:
        previous: StackState | None = store.load(stack)
    except LinkdError:
        previous = None
    kernel = Kernel()
    errors: list[BaseException] = []
    try:
        observed = Observed(
            links=await kernel.links(),
            netns=kernel.netns_names(names.netns_prefix(stack)),
            running=frozenset(),
        )
        if previous is not None:
            for container in previous.containers:
                try:
                    _kill_leftover(stack, container)
                except OSError as exc:
                    errors.append(exc)
        for action in plan_down(stack, previous.plan if previous else None, observed):
            try:
                match action:
                    case RemoveNetns(netns):
                        kernel.remove_netns(netns)
                    case RemoveLink(name):
                        await kernel.remove_link(name)
                    case RemoveBridge(name):
                        await kernel.remove_bridge(name)
            except LinkdError as exc:
                errors.append(exc)
        try:
            await remove_table(stack)
        except LinkdError as exc:
            errors.append(exc)
    finally:
        kernel.close()
    errors += await forwarding.release()
    errors += await asyncio.to_thread(cgroups.remove_stack, stack)
    if errors:
        raise TeardownError(f"linkd down {stack}", errors)
    store.remove_stack_dir(stack)
    report(f"stack {stack}", "removed")


def _kill_leftover(stack: str, container: ContainerState) -> None:
    # Through pidfds, and only what process.open_shim identifies as this container's.
    # Init first and alone when it is there: its shim then reaps it and exits on its own
    # (killing both at once would leave init a zombie for the host's PID 1).
    run_dir = str(store.container_dir(stack, container.name))
    if container.init_pid is not None and process.kill_shim(
            container.init_pid, run_dir, init=True):
        return
    if container.pid is not None:
        process.kill_shim(container.pid, run_dir)
