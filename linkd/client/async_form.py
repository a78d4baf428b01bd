"""The Python API's async form, the one implementation: `AsyncStack` (what `async with
linkd.Stack.up(...)` gives), `AsyncService` and `AsyncContainer`.

What asks the daemon or a container is a coroutine (daemon requests on asyncio sockets,
`exec` an asyncio subprocess, wait probes); what the plan fixes while a stack is up (its
services, replicas, addresses) is read from the plan as it was when the stack came up.
The sync form (linkd.client.sync_form) runs these coroutines to their end, and reads
these attributes. linkd.client.stacks tells the whole API's story.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import quote

from linkd import paths
from linkd.client import container_exec, waits
from linkd.client.api import Client, DaemonError, ensure_daemon
from linkd.client.loading import Loaded, Source, load
from linkd.core.plan import ContainerPlan, StackPlan
from linkd.core.state import StackState, from_plain
from linkd.errors import LinkdError, NotFoundError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from linkd.client.sync_form import Stack

WaitFor = Mapping[str, waits.Wait | Sequence[waits.Wait]]

# Stacks this process brought up and has not taken down yet (the pytest plugin takes
# down any left at the end of the session).
LIVE: dict[str, AsyncStack] = {}


class AsyncStack:
    """A stack the linkd daemon runs, as async code sees it (what `async with Stack.up`
    gives): `stack["web"]` is one of its services. What asks the daemon or a container
    is a coroutine; what the plan fixes while the stack is up (its services, replicas,
    addresses) is read from the plan as it was when the stack came up.

    This is the one implementation: the sync `Stack` runs these coroutines to their end.
    Nothing here is bound to an event loop (each request opens its own connection), so
    one stack serves every loop: a session-scoped fixture's stack in each test's own."""

    def __init__(
        self, name: str, directory: Path, client: Client, plan: StackPlan | None = None
    ) -> None:
        self.name = name
        self.directory = directory
        self.client = client
        self._plan = plan
        self._down = False
        self._sync: Stack | None = None

    # -- up and down -------------------------------------------------------------------

    @classmethod
    async def start(
        cls,
        source: Source,
        *,
        name: str | None = None,
        wait: WaitFor | None = None,
        directory: str | os.PathLike[str] | None = None,
        client: Client | None = None,
    ) -> AsyncStack:
        """`Stack.start`, awaited (prefer `async with Stack.up(...)`)."""
        return await cls._start(load(source, name=name, directory=directory), wait, client)

    @classmethod
    async def _start(cls, loaded: Loaded, wait: WaitFor | None, client: Client | None
                     ) -> AsyncStack:
        stack_name, body_spec, base = loaded
        stack = cls(stack_name, base, client or Client())
        LIVE[stack_name] = stack
        started = time.monotonic()
        try:
            await asyncio.to_thread(ensure_daemon, stack.client)  # may start one: it polls
            await stack.client.request_async(
                "PUT",
                f"/v1/stacks/{stack_name}",
                {"name": stack_name, "spec": body_spec, "directory": str(base)},
            )
            await stack.refresh()
            if wait:
                await stack.wait(wait, started=started)
        except BaseException as exc:
            if isinstance(exc, waits.WaitTimeout):
                with contextlib.suppress(Exception):
                    exc.logs = await stack.logs()
            with contextlib.suppress(Exception):
                await stack.down()
            raise
        return stack

    async def down(self) -> None:
        """Take the stack down and forget its lease. Idempotent."""
        if not self._down:
            await self._delete()
            self._forget()

    async def _delete(self) -> None:
        # A daemon that died meanwhile left the containers running: a new one adopts
        # them before it answers, and then takes them down.
        await asyncio.to_thread(ensure_daemon, self.client)
        try:
            await self.client.request_async("DELETE", f"/v1/stacks/{self.name}")
        except DaemonError as exc:
            if exc.status != 404:
                raise

    def _forget(self) -> None:
        self._down = True
        LIVE.pop(self.name, None)
        paths.forget_lease(self.name)

    @property
    def sync(self) -> Stack:
        """The same stack for sync code (its methods block until done)."""
        if self._sync is None:
            # Here, not at the top: the sync form is built on this module.
            from linkd.client.sync_form import Stack

            self._sync = Stack._of(self)
        return self._sync

    # -- what runs -----------------------------------------------------------------------

    async def state(self) -> StackState:
        """The plan and the containers' states, from the daemon."""
        return from_plain(
            StackState, await self.client.request_async("GET", f"/v1/stacks/{self.name}")
        )

    async def refresh(self) -> StackPlan:
        """Read the plan again (services, replicas, addresses) from the daemon."""
        self._plan = (await self.state()).plan
        return self._plan

    async def _loaded(self) -> StackPlan:
        return self._plan if self._plan is not None else await self.refresh()

    @property
    def plan(self) -> StackPlan:
        if self._plan is None:
            raise LinkdError(f"stack {self.name}: its plan was not read yet "
                             "(await stack.refresh())")
        return self._plan

    @property
    def services(self) -> list[str]:
        return _services(self.plan)

    def service(self, name: str) -> AsyncService:
        if not self.plan.of_service(name):
            raise NotFoundError(
                f"stack {self.name} has no service {name}; it has "
                f"{', '.join(sorted(self.services))}"
            )
        return AsyncService(self, name)

    __getitem__ = service

    async def logs(self) -> dict[str, str]:
        """Every container's output so far, by container name."""
        plan = await self._loaded()
        return {c.name: await self.container_logs(c.name) for c in plan.containers}

    async def container_logs(self, container: str) -> str:
        path = f"/v1/stacks/{self.name}/containers/{container}/logs"
        return (await self.client.request_raw_async("GET", path)).decode(errors="replace")

    async def env_for_host(self, service: str | None = None) -> dict[str, str]:
        """The link variables a process on the host uses to reach the services: those
        `service`'s containers get (`linkd env SERVICE --host`), or, without a service,
        those of every service (the first service that sets a variable wins). Read
        from the daemon's plan as it is now."""
        return _host_env(self.name, (await self.state()).plan, service)

    async def resolve(self, name: str, *, from_service: str, qtype: str = "A") -> list[str]:
        """The addresses `from_service`'s first container gets for `name` from linkd's
        DNS (empty for NXDOMAIN, or a name linkd forwards)."""
        await self._loaded()
        return await self._dns(self[from_service].containers[0].name, name, qtype)

    async def _dns(self, container: str, name: str, qtype: str) -> list[str]:
        answer = await self.client.request_async(
            "GET",
            f"/v1/stacks/{self.name}/containers/{container}/dns"
            f"?name={quote(name)}&type={quote(qtype)}",
        )
        return [r["data"] for r in answer["records"] if r["type"] == qtype.upper()]

    # -- names on the host ---------------------------------------------------------------

    def names(self) -> contextlib.AbstractContextManager[None]:
        """`Stack.names`: the hook answers from a resolver thread (asyncio's
        getaddrinfo runs in one), so it asks the daemon as sync code does."""
        return self.sync.names()

    @property
    def dns_domain(self) -> str:
        return f"{self.name}.{self.plan.dns.domain}"

    async def host_lookup(self, name: str, family: int = socket.AF_UNSPEC) -> list[str]:
        """The addresses a container on the stack's networks gets for `name` (none for
        a name the stack does not have)."""
        plan = await self._loaded()
        for viewer in _viewers(plan):
            found: list[str] = []
            for qtype in _qtypes(plan, family):
                found += await self._dns(viewer, name, qtype)
            if found:
                return found
        return []

    # -- waiting -------------------------------------------------------------------------

    async def wait(self, wait: WaitFor, *, started: float | None = None) -> None:
        """Wait until each service's strategies hold for every replica; timeouts count
        from `started` (default: now), so they behave as if all waited at once."""
        started = time.monotonic() if started is None else started
        await self._loaded()
        for service, strategies in wait.items():
            await self[service].wait(strategies, started=started)

    async def wait_healthy(self, timeout: float = 60.0) -> None:
        """Wait until every container with a healthcheck is healthy."""
        started = time.monotonic()
        for container in (await self._loaded()).containers:
            if container.healthcheck is not None and container.healthcheck.test:
                await AsyncContainer(self, container).wait_for(
                    waits.healthy(timeout=timeout), started
                )

    def __repr__(self) -> str:
        return f"<linkd.AsyncStack {self.name}>"


class AsyncService:
    """A service of a stack that is up: its replicas' addresses, and coroutines for
    their output, commands and waits."""

    def __init__(self, stack: AsyncStack, name: str) -> None:
        self.stack = stack
        self.name = name

    @property
    def containers(self) -> tuple[ContainerPlan, ...]:
        return self.stack.plan.of_service(self.name)

    @property
    def address(self) -> str:
        """The first replica's IPv4 address on its first network."""
        return self.replica(1).address

    @property
    def addresses(self) -> list[str]:
        """Every replica's IPv4 address on its first network, in replica order."""
        return [_first_address(c) for c in self.containers]

    def url(self, port: int, path: str = "/") -> str:
        return f"http://{self.address}:{port}/{path.lstrip('/')}"

    def replica(self, index: int) -> AsyncContainer:
        for container in self.containers:
            if container.replica == index:
                return AsyncContainer(self.stack, container)
        raise NotFoundError(
            f"service {self.name} of stack {self.stack.name} has no replica {index}"
        )

    async def exec(
        self, *argv: str, index: int = 1, input: str | None = None, timeout: float | None = None,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside a replica (as `linkd exec`): output captured as text."""
        return await self.replica(index).exec(*argv, input=input, timeout=timeout, check=check)

    async def logs(self) -> str:
        """The output of every replica; lines prefixed with the container's name when
        there are several."""
        containers = self.containers
        if len(containers) == 1:
            return await self.stack.container_logs(containers[0].name)
        prefixed = []
        for c in containers:
            text = await self.stack.container_logs(c.name)
            prefixed += [f"{c.name} | {line}\n" for line in text.splitlines()]
        return "".join(prefixed)

    async def wait(
        self, strategies: waits.Wait | Sequence[waits.Wait], *, started: float | None = None
    ) -> None:
        """Wait until every strategy holds for every replica (see linkd.client.waits)."""
        started = time.monotonic() if started is None else started
        listed = [strategies] if isinstance(strategies, waits.Wait) else list(strategies)
        for container in self.containers:
            target = AsyncContainer(self.stack, container)
            for strategy in listed:
                await strategy.until_ready(target, started=started)

    async def wait_healthy(self, timeout: float = 60.0) -> None:
        """Wait until every replica's healthcheck passes (WaitTimeout naming the last
        probe's result otherwise)."""
        await self.wait(waits.healthy(timeout=timeout))

    def __repr__(self) -> str:
        return f"<linkd.AsyncService {self.stack.name}/{self.name}>"


class AsyncContainer:
    """One replica; what wait strategies probe (`linkd.client.waits.Target`)."""

    def __init__(self, stack: AsyncStack, plan: ContainerPlan) -> None:
        self.stack = stack
        self.plan = plan

    @property
    def service(self) -> str:
        return self.plan.service

    @property
    def container(self) -> str:
        return self.plan.name

    @property
    def address(self) -> str:
        return _first_address(self.plan)

    async def status(self) -> str:
        return str((await self.stack.state()).container(self.plan.name).status)

    async def health(self) -> str | None:
        return (await self.stack.state()).container(self.plan.name).health

    async def logs(self) -> str:
        return await self.stack.container_logs(self.plan.name)

    async def wait_for(self, strategy: waits.Wait, started: float | None = None) -> None:
        await strategy.until_ready(self, started=started)

    async def exec(
        self, *argv: str, input: str | None = None, timeout: float | None = None,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside the container (`linkd exec`), as `subprocess.run` would with
        `capture_output=True, text=True`: TimeoutExpired after `timeout` (the command
        is killed), CalledProcessError with `check`. A cancelled exec kills it too."""
        return await container_exec.run(
            self.stack.name, self.plan.name, argv, directory=self.stack.directory,
            input=input, timeout=timeout, check=check,
        )


# -- what the plan says (for both forms) -----------------------------------------------------


def _first_address(container: ContainerPlan) -> str:
    if not container.interfaces:
        raise LinkdError(f"container {container.name} has no network (network_mode: none)")
    return str(container.interfaces[0].address)


def _services(plan: StackPlan) -> list[str]:
    seen: dict[str, None] = {}
    for container in plan.containers:
        seen.setdefault(container.service)
    return list(seen)


def _host_env(stack: str, plan: StackPlan, service: str | None) -> dict[str, str]:
    if service is not None and not plan.of_service(service):
        raise NotFoundError(f"stack {stack} has no service {service}")
    result: dict[str, str] = {}
    for container in plan.containers:
        if container.replica != 1 or service not in (None, container.service):
            continue
        linked = {name for name, _, _ in container.env_sources}
        for name, value in container.env:
            if name in linked:
                result.setdefault(name, value)
    return result


def _qtypes(plan: StackPlan, family: int) -> tuple[str, ...]:
    if family == socket.AF_INET:
        return ("A",)
    if family == socket.AF_INET6:
        return ("AAAA",)
    has_ipv6 = any(i.address6 is not None for c in plan.containers for i in c.interfaces)
    return ("A", "AAAA") if has_ipv6 else ("A",)


def _viewers(plan: StackPlan) -> list[str]:
    """Few containers whose networks together are all the stack's (the first replica
    of each service, greedily): what they see is what the host sees."""
    uncovered = {n.key for n in plan.networks}
    candidates = [c for c in plan.containers if c.replica == 1 and c.interfaces]
    chosen: list[str] = []
    while uncovered and candidates:
        best = max(candidates, key=lambda c: len(uncovered & {i.network for i in c.interfaces}))
        gain = uncovered & {i.network for i in best.interfaces}
        if not gain:
            break
        chosen.append(best.name)
        uncovered -= gain
        candidates.remove(best)
    return chosen
