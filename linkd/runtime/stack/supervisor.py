"""Bring a stack up, keep it in the shape its plan says, take it down: the reconciler of
one stack, and the parts it is made of.

How it works:
1. `prepare`: the images and conventions are resolved, then under the global lock the
   planner (`planner.claim`) picks subnets and host ports and the plan is recorded in
   the stack's state file before the kernel is touched, so a crash at any later point
   leaves a record of what to remove.
2. `up`: it observes the kernel (links, namespaces) and its processes, asks
   `linkd.core.reconcile.plan_up` for actions and applies them in order: bridges,
   namespaces, veths, addresses, then container processes wave by wave (`depends_on`);
   the host's forwarding and the stack's nftables table are made meanwhile.
3. While up, `containers` (linkd.runtime.stack.containers) monitors and restarts the
   processes; every change of a container's state goes through the `publisher`
   (state file, DNS zone, live bindings, events); `repair` recreates what went missing.
4. `teardown` (linkd.runtime.stack.teardown, the one path every removal takes) stops
   the processes, then removes namespaces, veths, bridges, the table and cgroups.

A supervisor that died is replaced by one that `recover`s the stack
(linkd.runtime.stack.recovery); the life of a stack around all of this, foreground or in
the daemon, is linkd.runtime.stack.lifecycle.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from linkd.core import bindings, cluster_stacks, names, overlay_plan
from linkd.core.model import Stack
from linkd.core.plan import ContainerPlan, StackPlan
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
    plan_up,
)
from linkd.core.state import ContainerState, StackState, StackStatus
from linkd.errors import TeardownError
from linkd.runtime.containers import process
from linkd.runtime.containers.health import HealthChecks
from linkd.runtime.images.pull import Transfer
from linkd.runtime.kernel import forwarding, vxlan
from linkd.runtime.kernel.firewall import StackFirewall, set_localnet
from linkd.runtime.kernel.netlink import Kernel
from linkd.runtime.stack import planner, recovery, store, teardown
from linkd.runtime.stack.container_files import write_bindings, write_etc_files
from linkd.runtime.stack.containers import START_CONCURRENCY, Containers
from linkd.runtime.stack.dns_server import DnsServer
from linkd.runtime.stack.live import LiveStack, Report
from linkd.runtime.stack.publisher import OnEvent, Publisher
from linkd.runtime.stack.resolvers import Resolvers
from linkd.runtime.stack.shared import Neighbours, tell_neighbours

if TYPE_CHECKING:  # etcd's client is loaded by a cluster daemon only
    from linkd.runtime.cluster.overlay_networks import OverlayNetworks


class Supervisor:
    def __init__(
        self, stack_name: str, source: str, report: Report, *, survive: bool = False,
        kernel: Kernel | None = None,
    ) -> None:
        self.stack = stack_name
        self.live = LiveStack(stack_name, source, report)
        self.publisher = Publisher(self.live)
        # survive: containers outlive this process (the daemon: a restarted one adopts them).
        self.containers = Containers(self.live, self.publisher, survive=survive)
        # The daemon shares one Kernel (its sockets, its namespace helper process) among
        # its stacks: a Kernel of one's own costs a fork of the daemon per stack.
        self._own_kernel = kernel is None
        self.kernel = Kernel() if kernel is None else kernel
        self.firewall = StackFirewall(stack_name)  # its nft table: isolation, ports
        self._changing = asyncio.Lock()  # held by update and repair: one at a time
        self.resolvers = Resolvers(self.live, self.publisher, self.kernel)
        # Other stacks' containers on the networks it shares, in its DNS (external networks)
        self.neighbours = Neighbours(self.live, self.publisher)
        self.notices: list[str] = []  # changes to the host's settings, said once
        self.transfer: Transfer | None = None  # a live display of image pulls' bytes
        # A cluster daemon's overlay networks (`driver: overlay` spans nodes); None: a
        # single host's linkd, on which such a network is a bridge like the others
        self.overlay: OverlayNetworks | None = None
        # The containers this node runs of a stack spanning nodes (linkd.core.cluster_stacks);
        # None: all of them
        self.only: frozenset[str] | None = None

    # -- what the daemon and the API read ----------------------------------------------

    @property
    def source(self) -> str:
        return self.live.source

    @property
    def plan(self) -> StackPlan | None:
        return self.live.plan

    @property
    def status(self) -> StackStatus:
        return self.live.status

    @property
    def states(self) -> dict[str, ContainerState]:
        return self.live.states

    @property
    def processes(self) -> dict[str, process.ContainerProcess]:
        return self.live.processes

    @property
    def dns(self) -> DnsServer | None:
        return self.publisher.dns

    @property
    def health(self) -> HealthChecks:
        return self.containers.health

    @property
    def user_stopped(self) -> set[str]:
        return self.containers.user_stopped

    @property
    def report(self) -> Report:
        return self.live.report

    @report.setter
    def report(self, report: Report) -> None:
        self.live.report = report

    @property
    def tasks(self) -> asyncio.TaskGroup | None:
        return self.live.tasks

    @tasks.setter
    def tasks(self, tasks: asyncio.TaskGroup | None) -> None:
        self.live.tasks = tasks

    @property
    def on_event(self) -> OnEvent | None:
        return self.publisher.on_event

    @on_event.setter
    def on_event(self, on_event: OnEvent | None) -> None:
        self.publisher.on_event = on_event

    def snapshot(self) -> StackState | None:
        """The stack's state as it is now (what the state file will hold)."""
        return self.live.snapshot()

    def _notice(self, subject: str, message: str) -> None:
        """Said in the output, and handed to the command that caused it (the daemon's)."""
        self.notices.append(f"{subject}: {message}")
        self.report(subject, message)

    def take_notices(self) -> list[str]:
        """The notices since the last call (the daemon hands them to the `up` that
        caused them)."""
        notices, self.notices = self.notices, []
        return notices

    # -- up ------------------------------------------------------------------------

    async def prepare(self, stack: Stack) -> StackPlan:
        """Plan the stack and record the plan, holding the global lock meanwhile."""
        stack, conventions = await planner.resolve(stack, self.live.base, self.report,
                                                   self.transfer, self.only)
        self.containers.elsewhere = cluster_stacks.elsewhere(stack, self.only)
        if self.overlay is None and (spanning := overlay_plan.overlay_networks(stack)):
            self._notice(f"network {spanning[0].name}", "driver overlay spans nodes on a "
                         "cluster daemon (linkd daemon --cluster); here it is a bridge on "
                         "this host")
        if self.overlay is None and (placed := [s for s in stack.services if s.placement]):
            self._notice(f"service {placed[0].name}", "deploy.placement.constraints place "
                         "services on a cluster daemon's nodes (linkd daemon --cluster); "
                         "here every service runs on this host")
        async with planner.claim(self.kernel, stack, conventions, self.live.base,
                                 self.live.plan, self.overlay, self.only) as plan:
            self.live.plan = plan
            await self.publisher.writer.flush()  # on disk before the kernel is touched
        # The mount point of every container's live bindings (it hides the host's copy).
        Path(bindings.DIRECTORY).mkdir(parents=True, exist_ok=True)
        self.neighbours.refresh()
        self.publisher.serve(plan)
        self.neighbours.start()
        return plan

    async def up(self, stack: Stack) -> None:
        plan = await self.prepare(stack)
        await self._bring_up(plan, plan_up(plan, await self.observe()))
        self.live.status = "up"
        await self.publisher.writer.flush()
        tell_neighbours(self.stack)

    async def observe(self) -> Observed:
        running = frozenset(n for n, p in self.processes.items() if p.returncode is None)
        return Observed(
            links=await self.kernel.links(),
            netns=self.kernel.netns_names(names.netns_prefix(self.stack)),
            running=running,
        )

    async def ensure_host(self, plan: StackPlan) -> None:
        """Forwarding on, and room in a FORWARD chain that drops (linkd.core.forwarding);
        what was turned on is said once, in the output of the `up` that did it."""
        for notice in await forwarding.ensure(plan):
            self.notices.append(notice)
            self.report("host", notice)

    async def _bring_up(self, plan: StackPlan, actions: list[Action]) -> None:
        """Apply `actions` for `plan`, the slowest steps side by side: the host's
        forwarding (iptables commands) and the stack's nftables table are made while
        bridges, namespaces and veths are, and the first containers' shims start
        meanwhile (warm, waiting at their gates). No container starts before the
        forwarding and the isolation rules are in place."""
        self.kernel.prefetch_netns(a.netns for a in actions if isinstance(a, EnsureNetns))
        self.containers.warm(actions)
        host = asyncio.ensure_future(self._host_ready(plan))
        try:
            await self.apply_all(actions, before_start=host)
            await host
        finally:
            if not host.done():
                host.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await host
            self.containers.discard_warm()
        set_localnet(plan)  # the bridges exist now

    async def _host_ready(self, plan: StackPlan) -> None:
        uplinks = await self.kernel.default_route_devices()
        async with asyncio.TaskGroup() as both:
            both.create_task(self.ensure_host(plan))
            both.create_task(self.firewall.ensure(plan, uplinks))  # isolation

    async def apply_all(
        self, actions: list[Action], *, before_start: Awaitable[None] | None = None
    ) -> None:
        """Apply `actions`: the network steps in order, and the container starts (the
        plan puts them last) beside them, each as soon as its own container's network
        is ready, so that shims start while later containers are still wired. The
        containers of one start wave start together (at most START_CONCURRENCY at
        once), a wave only once the one before has started; every start of a wave is
        awaited before an error is raised, so none is left half-started when the stack
        is torn down. `before_start` is awaited before the first container starts."""
        first = next((i for i, a in enumerate(actions) if isinstance(a, StartContainer)),
                     len(actions))
        steps, starts = actions[:first], actions[first:]
        if not all(isinstance(a, StartContainer) for a in starts):
            raise AssertionError("the plan puts every container start last")
        ready = {a.container.name: asyncio.Event()
                 for a in steps if isinstance(a, ConfigureNetns)}
        wiring: asyncio.Future[object] = asyncio.ensure_future(self._apply_steps(steps, ready))
        try:
            await self._start_waves(
                [a for a in starts if isinstance(a, StartContainer)], ready, wiring,
                before_start)
            await wiring
        except asyncio.CancelledError:
            wiring.cancel()
            raise
        finally:
            # A netlink request cut short would leave its reply to the next one: the
            # steps in flight finish even when a start failed (they take milliseconds).
            await asyncio.wait([wiring])
            if not wiring.cancelled():
                wiring.exception()  # retrieved: raised above, or a start's error won

    async def _apply_steps(self, steps: list[Action], ready: dict[str, asyncio.Event]
                           ) -> None:
        for action in steps:
            await self.apply(action)
            if isinstance(action, ConfigureNetns):
                ready[action.container.name].set()

    async def _start_waves(
        self, starts: list[StartContainer], ready: dict[str, asyncio.Event],
        wiring: asyncio.Future[object], before_start: Awaitable[None] | None,
    ) -> None:
        assert self.plan is not None
        waves = {svc: i for i, wave in enumerate(self.plan.start_waves) for svc in wave}
        gate = asyncio.Semaphore(START_CONCURRENCY)

        async def start(action: StartContainer) -> None:
            await self._network_ready(action.container.name, ready, wiring)
            async with gate:
                await self.apply(action)

        batches: list[list[StartContainer]] = []
        for action in starts:
            wave = waves.get(action.container.service)
            if not batches or waves.get(batches[-1][0].container.service) != wave:
                batches.append([])
            batches[-1].append(action)
        for batch in batches:
            if before_start is not None:
                await before_start
                before_start = None
            results = await asyncio.gather(*(start(a) for a in batch), return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise result

    @staticmethod
    async def _network_ready(name: str, ready: dict[str, asyncio.Event],
                             wiring: asyncio.Future[object]) -> None:
        """Until `name`'s network is configured; a container this run does not
        configure waits for every step. The steps' error if they failed first."""
        event = ready.get(name)
        if event is not None:
            waiter: asyncio.Future[object] = asyncio.ensure_future(event.wait())
            either: set[asyncio.Future[object]] = {waiter, wiring}
            try:
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
            if event.is_set():
                return
        await asyncio.shield(wiring)  # raises the steps' error

    async def apply(self, action: Action) -> None:
        match action:
            case EnsureBridge(network):
                await self.kernel.ensure_bridge(network)
                if network.overlay is not None:
                    await vxlan.ensure_vxlan(self.kernel, overlay_plan.device_of(network))
                self.report(f"network {network.name}", f"bridge {network.bridge} {network.subnet}")
            case EnsureNetns(netns):
                await self.kernel.ensure_netns(netns)
            case EnsureVeth(netns, interface):
                await self.kernel.ensure_veth(netns, interface)
            case ConfigureNetns(container):
                # Its /etc files in a thread meanwhile: creating files costs 0.05-0.3 ms
                # each, five per container, and the loop has the netlink work to do.
                files = asyncio.ensure_future(self._write_etc_files(container))
                try:
                    if container.owns_netns():  # else another's, or the host's
                        await self.kernel.configure_netns(container)
                        await self.resolvers.serve(container)
                finally:
                    await asyncio.wait([files])
                files.result()
                self.report(f"container {container.name}", "network ready")
            case StartContainer(container):
                await self.containers.wait_for_dependencies(container)
                await self.containers.start(container)
            case StopContainer(name):
                await self.containers.stop(name)
            case RemoveNetns() | RemoveLink() | RemoveBridge():
                await teardown.remove(self.kernel, action, self.stack, self._notice)

    # -- update --------------------------------------------------------------------

    async def update(self, stack: Stack) -> dict[str, list[str]]:
        """Change the running stack to `stack`, touching only what changed: containers
        whose plan is the same keep running (same process, same address); changed ones
        are recreated (stopped, their namespace rebuilt, started); removed ones go; new
        services and networks come. Returns the containers in each of those groups.
        """
        async with self._changing:  # no repair meanwhile: it would restore the old plan
            return await self._update(stack)

    async def _update(self, stack: Stack) -> dict[str, list[str]]:
        old = self.plan
        assert old is not None and self.dns is not None
        stack, conventions = await planner.resolve(stack, self.live.base, self.report,
                                                   self.transfer, self.only)
        self.containers.elsewhere = cluster_stacks.elsewhere(stack, self.only)
        # The global lock from the plan to its record: no other stack may take the
        # subnets and ports this one is about to move to. What the new plan replaces is
        # stopped first, under it: recorded before then, a crash would leave the state
        # file naming containers whose processes still run the old configuration.
        async with planner.claim(self.kernel, stack, conventions, self.live.base, old,
                                 self.overlay, self.only) as new:
            before = {c.name: c for c in old.containers}
            after = {c.name: c for c in new.containers}
            removed = [n for n in before if n not in after]
            changed = [n for n in before if n in after and before[n] != after[n]]
            # A container sharing a changed one's namespace would keep the old one.
            changed += [n for n in before if n in after and n not in changed
                        and not after[n].owns_netns() and after[n].netns
                        and any(after[c].netns == after[n].netns for c in changed)]
            added = [n for n in after if n not in before]
            kept = [n for n in before if n in after and n not in changed]
            await self._remove_replaced(old, removed, changed)
            self.live.plan = new
            await self.publisher.writer.flush()
        observed = await self.observe()
        running = frozenset(n for n, p in self.processes.items() if p.returncode is None)
        actions = plan_up(new, replace(observed, running=running), previous=old)
        self.publisher.follow(old, new)  # the zone follows the new plan from here
        self.neighbours.refresh()  # its networks may have changed
        await self._bring_up(new, actions)
        self.publisher.rewrite_bindings(kept)  # their peers may have changed
        if self.overlay is not None:
            for error in await self.overlay.release(old, kept=new):
                self.report(f"stack {self.stack}", str(error))
        self.live.status = "up"
        await self.publisher.writer.flush()
        tell_neighbours(self.stack)
        summary = {"added": added, "changed": changed, "removed": removed, "kept": kept}
        self.report(f"stack {self.stack}", "updated: " + ", ".join(
            f"{k} {len(v)}" for k, v in summary.items()))
        return summary

    async def _remove_replaced(self, old: StackPlan, removed: list[str],
                               changed: list[str]) -> None:
        """Stop what goes or changes, newest dependencies first, then free their names;
        changed containers' namespaces go (rebuilt from the new plan)."""
        for name in reversed([c.name for c in old.containers if c.name in removed + changed]):
            await self.containers.stop(name)
        await self.resolvers.stop(removed + changed)
        for name in changed:
            if old.container(name).owns_netns():  # never the namespace it shares
                self.kernel.remove_netns(old.container(name).netns)
            self.user_stopped.discard(name)
            self.states.pop(name, None)
        await self._veths_gone(
            [i.host_ifname for n in changed for i in old.container(n).interfaces])
        for name in removed:
            self.states.pop(name, None)
            self.processes.pop(name, None)

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

    # -- recover and repair --------------------------------------------------------

    async def recover(self, state: StackState) -> None:
        """Take the stack over from a supervisor that died (linkd.runtime.stack.recovery)."""
        await recovery.recover(self, state)

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

    # -- each container's DNS and files --------------------------------------------

    async def _write_etc_files(self, container: ContainerPlan) -> None:
        plan = self.plan
        assert plan is not None, "files are written after prepare()"
        directory = self.live.container_dir(container.name)
        # The live bindings on the loop: a peer's start rewrites them there too, and a
        # write from a thread could land after it with what was running before.
        store.private_dirs(directory)
        write_bindings(directory, plan, container, self.live.running(),
                       self.publisher.elsewhere)
        await asyncio.to_thread(write_etc_files, directory, plan, container)

    async def start(self, container: ContainerPlan) -> None:
        await self.containers.start(container)

    async def stop(self, name: str) -> None:
        await self.containers.stop(name)

    # -- down ----------------------------------------------------------------------

    async def teardown(self) -> None:
        """Remove everything of the stack (linkd.runtime.stack.teardown), collecting
        failures rather than stopping."""
        self.live.status = "stopping"
        self.publisher.save()
        await self.containers.cancel_restarts()
        await self.neighbours.stop()
        # DNS first (as netavark does): its sockets live in the containers' namespaces
        # and would keep them, and their veths, alive after they are removed.
        await self.resolvers.stop_all()
        await self.containers.health.stop_all()
        self.containers.discard_warm()
        running = frozenset(n for n, p in self.processes.items() if p.returncode is None)
        errors = await teardown.remove_stack(
            self.kernel, self.stack, self.plan, running=running, apply=self.apply)
        self.containers.unwatch_all()
        if self.overlay is not None and self.plan is not None:
            # Not a failure of `down`: an address left held (etcd unreachable) is this
            # stack's sticky one, and is taken back by its next `up`.
            for error in await self.overlay.release(self.plan):
                self.report(f"stack {self.stack}", f"{error} (left in the registry)")
        if self._own_kernel:
            self.kernel.close()
        else:
            self.kernel.forget_stack(names.netns_prefix(self.stack))
        if errors:
            self.live.status = "failed"
            await self.publisher.writer.flush()
            raise TeardownError(f"linkd down {self.stack}", errors)
        await self.publisher.writer.close()  # no late change may bring the directory back
        store.remove_stack_dir(self.stack)
        tell_neighbours(self.stack)
        self.report(f"stack {self.stack}", "removed")
