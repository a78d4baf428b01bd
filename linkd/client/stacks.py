"""linkd from Python: bring a stack up for a test, reach its services, take it down.

    with linkd.Stack.up("stack.yaml", wait={"web": waits.http(8080, "/health")}) as stack:
        urllib.request.urlopen(stack["web"].url(8080, "/health"))

    async with linkd.Stack.up({"services": {"kv": {"command": "python3 kv.py"}}}) as stack:
        print(stack["kv"].address, await stack["kv"].logs())

The stack runs in the linkd daemon (started if none runs, as `linkd up -d` does): a stack
file is read, interpolated with this process's environment and normalized here, exactly
as `linkd up -d` does, then sent with `PUT /v1/stacks/{name}`; a dict in Compose shape
is a stack built in Python, its relative paths taken from `directory` (default: the
current directory). Each `Stack.up` gets a name of its own (`t` and 8 hex digits) unless
given one, so parallel test processes never collide. Leaving the `with` block takes the
stack down and forgets its address lease (`linkd down --forget`), also on an exception,
on Ctrl-C (KeyboardInterrupt) and on task cancellation.

**Reaching services from the host.** Container addresses are routed from the host
through linkd's bridges, so a process on the host reaches a service at
`stack["web"].address` (its first replica's IPv4 address on its first network);
`stack["web"].url(8080, "/x")` builds `http://ADDRESS:8080/x`. The host's resolver
does not know the stack's names: configure host-side clients from
`stack.env_for_host()` (the link variables, as `linkd env SERVICE --host` prints them:
`LINKD_DB_HOST=10.87.0.2`, `LINKD_DB_URL=tcp://...`, or Docker's or Kubernetes'
variables per the stack's conventions), which are the very variables the containers get,
so one configuration works inside and outside. `stack.resolve("db", from_service="web")`
asks linkd's DNS what a container's lookup of a name gives.

**Sync and async.** `with` gives a `Stack`, whose methods block until done; `async with`
gives an `AsyncStack`, whose methods that ask the daemon or a container (`exec`, `logs`,
the waits, `resolve`, `env_for_host`, `state`) are coroutines that leave the event loop
free for the clients and servers a test runs beside them:

    async with linkd.Stack.up("stack.yaml") as stack:
        await stack["web"].wait(waits.http(8080, "/health"))
        done = await stack["web"].exec("cat", "/etc/hostname")

There is one implementation, the async one: a `Stack` runs its `AsyncStack`'s coroutines
to their end on an event loop of its own (in another thread when the calling thread's
loop is running), so both forms behave alike. `stack.aio` is a `Stack`'s async form
(what an async test does with a sync fixture's stack). The plan (services, replicas,
addresses) is fixed while a stack is up and is read once, when it comes up.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar
from urllib.parse import quote

from linkd import loader, paths
from linkd.client import host_names, waits
from linkd.client.api import Client, DaemonError, ensure_daemon
from linkd.core.plan import ContainerPlan, StackPlan
from linkd.core.state import StackState, from_plain
from linkd.errors import LinkdError, NotFoundError
from linkd.spec.dump import stack_to_dict

Source = str | os.PathLike[str] | Mapping[str, Any]
WaitFor = Mapping[str, waits.Wait | Sequence[waits.Wait]]
Loaded = tuple[str, dict[str, Any], Path]  # what `load` returns

T = TypeVar("T")
P = ParamSpec("P")

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


class StackWarning(UserWarning):
    """A warning of the stack file (an unknown key, say), as `linkd up` prints them."""


def unique_name(prefix: str = "t") -> str:
    """A stack name no other test process will pick: `prefix` and 8 hex digits."""
    return f"{prefix}{secrets.token_hex(4)}"


def load(
    source: Source, *, name: str | None = None, directory: str | os.PathLike[str] | None = None
) -> Loaded:
    """(name, normalized spec, directory) of a stack file or a Compose-shaped dict,
    parsed and normalized as `linkd up -d` does (`linkd config`'s form)."""
    project_name = name if name is not None else unique_name()
    if isinstance(source, Mapping):
        base = Path(directory if directory is not None else os.getcwd()).resolve()
        stack_source = loader.local_source(
            json.dumps(dict(source)),  # JSON is YAML: one parser, one set of errors
            source="stack built in Python",
            directory=base,
            project_name=project_name,
        )
    else:
        stack_source = loader.read_file(Path(source), project_name=project_name,
                                        directory=directory)
    stack = loader.load(stack_source)
    where = stack_source.source
    for warning in stack.warnings:
        warnings.warn(f"linkd: {where}: {warning}", StackWarning, stacklevel=3)
    return stack.name, stack_to_dict(stack), stack_source.directory


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
        _LIVE[stack_name] = stack
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
        _LIVE.pop(self.name, None)
        paths.forget_lease(self.name)

    @property
    def sync(self) -> Stack:
        """The same stack for sync code (its methods block until done)."""
        if self._sync is None:
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
        cmd = [sys.executable, "-m", "linkd", "exec", "-p", self.stack.name, self.plan.name,
               "--", *argv]
        env = dict(os.environ)
        path = env.get("PYTHONPATH")
        env["PYTHONPATH"] = f"{_PACKAGE_ROOT}{os.pathsep}{path}" if path else _PACKAGE_ROOT
        process = await asyncio.create_subprocess_exec(
            *cmd, stdin=None if input is None else asyncio.subprocess.PIPE,  # run()'s default
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
            cwd=str(self.stack.directory),
        )
        out, err = bytearray(), bytearray()
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(
                    _feed(process.stdin, input), _drain(process.stdout, out),
                    _drain(process.stderr, err),
                )
                code = await process.wait()
        except BaseException as exc:  # a timeout, or cancelled: the command goes too
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await asyncio.shield(process.wait())
            if isinstance(exc, TimeoutError):
                raise subprocess.TimeoutExpired(cmd, timeout or 0, _text(out), _text(err)
                                                ) from None
            raise
        done = subprocess.CompletedProcess(cmd, code, _text(out), _text(err))
        if check:
            done.check_returncode()
        return done


async def _feed(stdin: asyncio.StreamWriter | None, text: str | None) -> None:
    if stdin is None or text is None:
        return
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # it did not read it all
        stdin.write(text.encode())
        await stdin.drain()
    stdin.close()


async def _drain(stream: asyncio.StreamReader | None, into: bytearray) -> None:
    """Collect a pipe's output as it comes: what came before a timeout is kept."""
    while stream is not None and (chunk := await stream.read(65536)):
        into += chunk


def _text(data: bytes | bytearray) -> str:
    # subprocess's text mode: universal newlines
    return bytes(data).decode(errors="replace").replace("\r\n", "\n").replace("\r", "\n")


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


# -- the sync form: the same coroutines, run to their end ------------------------------------


def _blocking(work: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine of the async form to its end on an event loop of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        # A loop factory, so that the Runner neither sets this thread's event loop nor
        # resets it to None after (it would clobber one a framework set); Ctrl-C
        # cancels the coroutine (which cleans up) and is then raised here.
        with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
            return runner.run(work)
    # Sync code called from a coroutine (a sync fixture's stack in an async test): it
    # blocks that loop, as any sync call does, and runs its own in another thread.
    with ThreadPoolExecutor(1, thread_name_prefix="linkd-sync") as pool:
        return pool.submit(lambda: _blocking(work)).result()


def _blocks(
    method: Callable[Concatenate[Any, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[Any, P], T]:
    """The sync form of an async form's method: it runs `method` on `self._impl` (the
    object of the async form this one stands for) to its end. One implementation, so
    the two forms cannot drift apart."""

    @functools.wraps(method)
    def run(self: Any, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return _blocking(method(self._impl, *args, **kwargs))

    return run


class Stack:
    """A stack the linkd daemon runs, for sync code (what `with Stack.up` gives);
    `stack["web"]` is one of its services. Each method runs the async form's coroutine
    (`stack.aio`, an `AsyncStack`: see its methods) to its end."""

    def __init__(self, name: str, directory: Path, client: Client) -> None:
        self._impl = AsyncStack(name, directory, client)
        self._impl._sync = self

    @classmethod
    def _of(cls, impl: AsyncStack) -> Stack:
        stack = cls.__new__(cls)
        stack._impl = impl
        return stack

    @property
    def name(self) -> str:
        return self._impl.name

    @property
    def directory(self) -> Path:
        return self._impl.directory

    @property
    def client(self) -> Client:
        return self._impl.client

    @property
    def aio(self) -> AsyncStack:
        """The same stack for async code: coroutines that leave the event loop free
        (what an async test does with a sync fixture's stack)."""
        self._plan()
        return self._impl

    # -- up and down -------------------------------------------------------------------

    @classmethod
    def up(
        cls,
        source: Source,
        *,
        name: str | None = None,
        wait: WaitFor | None = None,
        directory: str | os.PathLike[str] | None = None,
    ) -> StackUp:
        """Bring a stack up, and take it down when the block is left: `with` gives a
        `Stack`, `async with` an `AsyncStack`. `source` is a stack file or a
        Compose-shaped dict; `wait` maps service names to wait strategies, satisfied
        (by every replica) before the block is entered."""
        return StackUp(source, name=name, wait=wait, directory=directory)

    @classmethod
    def start(
        cls,
        source: Source,
        *,
        name: str | None = None,
        wait: WaitFor | None = None,
        directory: str | os.PathLike[str] | None = None,
        client: Client | None = None,
    ) -> Stack:
        """Bring a stack up and return it; the caller owns `down()` (prefer `up`).
        On any failure, including the wait, the stack is taken down before raising."""
        loaded = load(source, name=name, directory=directory)
        return _blocking(AsyncStack._start(loaded, wait, client)).sync

    def down(self) -> None:
        """Take the stack down and forget its lease. Idempotent; a Ctrl-C in the middle
        does not stop it (it finishes, then the interrupt is raised)."""
        if self._impl._down:
            return
        interrupted: BaseException | None = None
        for _ in range(3):
            try:
                _blocking(self._impl._delete())
                break
            except KeyboardInterrupt as exc:  # finish taking the stack down first
                interrupted = exc
        self._impl._forget()
        if interrupted is not None:
            raise interrupted

    # -- what the plan says, and what runs ------------------------------------------------

    def _plan(self) -> StackPlan:
        # A stack named by hand (`Stack(name, ...)`, not started here) reads it now.
        plan = self._impl._plan
        return plan if plan is not None else _blocking(self._impl.refresh())

    @property
    def services(self) -> list[str]:
        return _services(self._plan())

    def __getitem__(self, service: str) -> Service:
        self._plan()
        return Service(self, self._impl[service].name)

    service = __getitem__

    @property
    def dns_domain(self) -> str:
        self._plan()
        return self._impl.dns_domain

    def names(self) -> contextlib.AbstractContextManager[None]:
        """While the block runs, this process resolves the stack's names (`api`,
        `db.backend`, `api.STACK.linkd`) through linkd's DNS, as the containers do: see
        `linkd.client.host_names`. The pytest plugin's fixtures turn it on for their tests."""
        return host_names.active(self)

    state = _blocks(AsyncStack.state)
    logs = _blocks(AsyncStack.logs)
    container_logs = _blocks(AsyncStack.container_logs)
    env_for_host = _blocks(AsyncStack.env_for_host)
    resolve = _blocks(AsyncStack.resolve)
    host_lookup = _blocks(AsyncStack.host_lookup)
    wait = _blocks(AsyncStack.wait)
    wait_healthy = _blocks(AsyncStack.wait_healthy)

    async def wait_async(self, wait: WaitFor) -> None:
        """`wait` for async code holding the sync form (`stack.aio.wait`)."""
        await self.aio.wait(wait)

    def __repr__(self) -> str:
        return f"<linkd.Stack {self.name}>"


class Service:
    """A service of a stack that is up, for sync code: see `AsyncService`."""

    def __init__(self, stack: Stack, name: str) -> None:
        self.stack = stack
        self.name = name
        self._impl = AsyncService(stack._impl, name)

    @property
    def containers(self) -> tuple[ContainerPlan, ...]:
        return self._impl.containers

    @property
    def address(self) -> str:
        """The first replica's IPv4 address on its first network."""
        return self._impl.address

    @property
    def addresses(self) -> list[str]:
        """Every replica's IPv4 address on its first network, in replica order."""
        return self._impl.addresses

    def url(self, port: int, path: str = "/") -> str:
        return self._impl.url(port, path)

    def replica(self, index: int) -> Container:
        return Container(self.stack, self._impl.replica(index).plan)

    exec = _blocks(AsyncService.exec)
    logs = _blocks(AsyncService.logs)
    wait = _blocks(AsyncService.wait)
    wait_healthy = _blocks(AsyncService.wait_healthy)

    def __repr__(self) -> str:
        return f"<linkd.Service {self.stack.name}/{self.name}>"


class Container:
    """One replica, for sync code: see `AsyncContainer`."""

    def __init__(self, stack: Stack, plan: ContainerPlan) -> None:
        self.stack = stack
        self.plan = plan
        self._impl = AsyncContainer(stack._impl, plan)

    @property
    def service(self) -> str:
        return self.plan.service

    @property
    def container(self) -> str:
        return self.plan.name

    @property
    def address(self) -> str:
        return self._impl.address

    status = _blocks(AsyncContainer.status)
    health = _blocks(AsyncContainer.health)
    logs = _blocks(AsyncContainer.logs)
    wait_for = _blocks(AsyncContainer.wait_for)
    exec = _blocks(AsyncContainer.exec)


class StackUp:
    """What `Stack.up` returns: a context manager, for `with` (a `Stack`) and for
    `async with` (an `AsyncStack`)."""

    def __init__(
        self, source: Source, *, name: str | None, wait: WaitFor | None,
        directory: str | os.PathLike[str] | None,
    ) -> None:
        self._args = (source, name, wait, directory)
        self._stack: AsyncStack | None = None

    def _load(self) -> Loaded:
        source, name, _, directory = self._args
        return load(source, name=name, directory=directory)

    def __enter__(self) -> Stack:
        self._stack = _blocking(AsyncStack._start(self._load(), self._args[2], None))
        return self._stack.sync

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._stack is not None:
            self._stack.sync.down()

    async def __aenter__(self) -> AsyncStack:
        start = AsyncStack._start(self._load(), self._args[2], None)
        self._stack = await _finish(start, on_cancel=AsyncStack.down)
        return self._stack

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._stack is not None:
            await _finish(self._stack.down())


async def _finish(
    work: Coroutine[Any, Any, T], *, on_cancel: Callable[[T], Awaitable[object]] | None = None
) -> T:
    """Await `work` to its end even if this task is cancelled meanwhile (a stack half
    up or half down is not to be left): then `on_cancel(result)` runs and the
    cancellation goes on."""
    future = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            result = await future
            if on_cancel is not None:
                await on_cancel(result)
        raise


# Stacks this process brought up and has not taken down yet (the pytest plugin takes
# down any left at the end of the session).
_LIVE: dict[str, AsyncStack] = {}


def live() -> list[Stack]:
    return [stack.sync for stack in _LIVE.values()]


def down_all() -> None:
    """Take down every stack this process brought up (newest first)."""
    for stack in reversed(live()):
        with contextlib.suppress(LinkdError, OSError):
            stack.down()
