"""linkd from Python: bring a stack up for a test, reach its services, take it down.

    async with linkd.Stack.up("stack.yaml", wait={"web": waits.http(8080, "/health")}) as stack:
        urllib.request.urlopen(stack["web"].url(8080, "/health"))

    with linkd.Stack.up({"services": {"kv": {"command": "python3 kv.py"}}}) as stack:
        print(stack["kv"].address, stack["kv"].logs())

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

The methods are synchronous (each a request on the daemon's unix socket, or a
subprocess for `exec`); in async code, `Stack.up` waits in a thread, and
`await stack.wait_async({...})` does the same later.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote

from linkd import host_names, spec, waits
from linkd.errors import LinkdError, NotFoundError
from linkd.plan import ContainerPlan, StackPlan
from linkd.runtime import files, store
from linkd.runtime.client import Client, DaemonError, ensure_daemon
from linkd.state import StackState, from_plain

Source = str | os.PathLike[str] | Mapping[str, Any]
WaitFor = Mapping[str, waits.Wait | Sequence[waits.Wait]]

T = TypeVar("T")

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])


class StackWarning(UserWarning):
    """A warning of the stack file (an unknown key, say), as `linkd up` prints them."""


def unique_name(prefix: str = "t") -> str:
    """A stack name no other test process will pick: `prefix` and 8 hex digits."""
    return f"{prefix}{secrets.token_hex(4)}"


def load(
    source: Source, *, name: str | None = None, directory: str | os.PathLike[str] | None = None
) -> tuple[str, dict[str, Any], Path]:
    """(name, normalized spec, directory) of a stack file or a Compose-shaped dict,
    parsed and normalized as `linkd up -d` does (`linkd config`'s form)."""
    if isinstance(source, Mapping):
        text = json.dumps(dict(source))  # JSON is YAML: one parser, one set of errors
        base = Path(directory if directory is not None else os.getcwd()).resolve()
        where = "stack built in Python"
    else:
        file = Path(source)
        try:  # bounded, UTF-8, a regular file or a pipe: a clear error otherwise
            text = files.read_text(file, pipes=True)
        except OSError as exc:
            raise NotFoundError(f"cannot read stack file {file}: {exc.strerror}") from exc
        base = Path(directory).resolve() if directory is not None else file.resolve().parent
        where = str(file)
    stack = spec.parse_stack(
        text,
        source=where,
        project_name=name if name is not None else unique_name(),
        default_project=base.name,
        host_env=dict(os.environ),
        read_text=files.env_file_reader(base),  # env files: regular and bounded
    )
    for warning in stack.warnings:
        warnings.warn(f"linkd: {where}: {warning}", StackWarning, stacklevel=3)
    return stack.name, spec.stack_to_dict(stack), base


class Stack:
    """A stack the linkd daemon runs; `stack["web"]` is one of its services."""

    def __init__(self, name: str, directory: Path, client: Client) -> None:
        self.name = name
        self.directory = directory
        self.client = client
        self._down = False
        self._cached_plan: StackPlan | None = None  # networks and replicas, for names()

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
        """Bring a stack up as the context manager (sync or async) returns it, and take
        it down when the block is left. `source` is a stack file or a Compose-shaped
        dict; `wait` maps service names to wait strategies, satisfied (by every
        replica) before the block is entered."""
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
        stack_name, body_spec, base = load(source, name=name, directory=directory)
        stack = cls(stack_name, base, client or Client())
        _LIVE[stack_name] = stack
        started = time.monotonic()
        try:
            ensure_daemon(stack.client)
            stack.client.request(
                "PUT",
                f"/v1/stacks/{stack_name}",
                {"name": stack_name, "spec": body_spec, "directory": str(base)},
            )
            if wait:
                stack.wait(wait, started=started)
        except BaseException as exc:
            if isinstance(exc, waits.WaitTimeout):
                with contextlib.suppress(Exception):
                    exc.logs = stack.logs()
            with contextlib.suppress(Exception):
                stack.down()
            raise
        return stack

    def down(self) -> None:
        """Take the stack down and forget its lease. Idempotent; a Ctrl-C in the middle
        does not stop it (it finishes, then the interrupt is raised)."""
        if self._down:
            return
        interrupted: BaseException | None = None
        for _ in range(3):
            try:
                self._delete()
                break
            except KeyboardInterrupt as exc:  # finish taking the stack down first
                interrupted = exc
        self._down = True
        _LIVE.pop(self.name, None)
        store.forget_lease(self.name)
        if interrupted is not None:
            raise interrupted

    def _delete(self) -> None:
        # A daemon that died meanwhile left the containers running: a new one adopts
        # them before it answers, and then takes them down.
        ensure_daemon(self.client)
        try:
            self.client.request("DELETE", f"/v1/stacks/{self.name}")
        except DaemonError as exc:
            if exc.status != 404:
                raise

    # -- what runs -----------------------------------------------------------------------

    def state(self) -> StackState:
        """The plan and the containers' states, from the daemon."""
        return from_plain(StackState, self.client.request("GET", f"/v1/stacks/{self.name}"))

    @property
    def services(self) -> list[str]:
        seen: dict[str, None] = {}
        for container in self.state().plan.containers:
            seen.setdefault(container.service)
        return list(seen)

    def __getitem__(self, service: str) -> Service:
        plan = self.state().plan
        if not plan.of_service(service):
            raise NotFoundError(
                f"stack {self.name} has no service {service}; it has "
                f"{', '.join(sorted({c.service for c in plan.containers}))}"
            )
        return Service(self, service)

    def logs(self) -> dict[str, str]:
        """Every container's output so far, by container name."""
        return {c.name: self.container_logs(c.name) for c in self.state().plan.containers}

    def container_logs(self, container: str) -> str:
        return _get_text(self.client, f"/v1/stacks/{self.name}/containers/{container}/logs")

    def env_for_host(self, service: str | None = None) -> dict[str, str]:
        """The link variables a process on the host uses to reach the services: those
        `service`'s containers get (`linkd env SERVICE --host`), or, without a service,
        those of every service (the first service that sets a variable wins)."""
        plan = self.state().plan
        if service is not None and not plan.of_service(service):
            raise NotFoundError(f"stack {self.name} has no service {service}")
        result: dict[str, str] = {}
        for container in plan.containers:
            if container.replica != 1 or service not in (None, container.service):
                continue
            linked = {name for name, _, _ in container.env_sources}
            for name, value in container.env:
                if name in linked:
                    result.setdefault(name, value)
        return result

    def resolve(self, name: str, *, from_service: str, qtype: str = "A") -> list[str]:
        """The addresses `from_service`'s first container gets for `name` from linkd's
        DNS (empty for NXDOMAIN, or a name linkd forwards)."""
        container = self[from_service].containers[0].name
        answer = self.client.request(
            "GET",
            f"/v1/stacks/{self.name}/containers/{container}/dns"
            f"?name={quote(name)}&type={quote(qtype)}",
        )
        return [r["data"] for r in answer["records"] if r["type"] == qtype.upper()]

    # -- names on the host ---------------------------------------------------------------

    def names(self) -> contextlib.AbstractContextManager[None]:
        """While the block runs, this process resolves the stack's names (`api`,
        `db.backend`, `api.STACK.linkd`) through linkd's DNS, as the containers do: see
        `linkd.host_names`. The pytest plugin's fixtures turn it on for their tests."""
        return host_names.active(self)

    @property
    def dns_domain(self) -> str:
        return f"{self.name}.{self._plan().dns.domain}"

    def host_lookup(self, name: str, family: int = socket.AF_UNSPEC) -> list[str]:
        """The addresses a container on the stack's networks gets for `name` (none for
        a name the stack does not have)."""
        qtypes: tuple[str, ...]
        if family == socket.AF_INET:
            qtypes = ("A",)
        elif family == socket.AF_INET6:
            qtypes = ("AAAA",)
        else:
            qtypes = ("A", "AAAA") if self._has_ipv6() else ("A",)
        for viewer in self._viewers():
            found: list[str] = []
            for qtype in qtypes:
                answer = self.client.request(
                    "GET",
                    f"/v1/stacks/{self.name}/containers/{viewer}/dns"
                    f"?name={quote(name)}&type={qtype}",
                )
                found += [r["data"] for r in answer["records"] if r["type"] == qtype]
            if found:
                return found
        return []

    def _plan(self) -> StackPlan:
        if self._cached_plan is None:
            self._cached_plan = self.state().plan
        return self._cached_plan

    def _has_ipv6(self) -> bool:
        return any(i.address6 is not None for c in self._plan().containers for i in c.interfaces)

    def _viewers(self) -> list[str]:
        """Few containers whose networks together are all the stack's (the first
        replica of each service, greedily): what they see is what the host sees."""
        uncovered = {n.key for n in self._plan().networks}
        candidates = [c for c in self._plan().containers if c.replica == 1 and c.interfaces]
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

    # -- waiting -------------------------------------------------------------------------

    def wait(self, wait: WaitFor, *, started: float | None = None) -> None:
        """Wait until each service's strategies hold for every replica; timeouts count
        from `started` (default: now), so they behave as if all waited at once."""
        started = time.monotonic() if started is None else started
        for service, strategies in wait.items():
            self[service].wait(strategies, started=started)

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Wait until every container with a healthcheck is healthy."""
        started = time.monotonic()
        for container in self.state().plan.containers:
            if container.healthcheck is not None and container.healthcheck.test:
                Container(self, container).wait_for(waits.healthy(timeout=timeout), started)

    async def wait_async(self, wait: WaitFor) -> None:
        await asyncio.to_thread(self.wait, wait)

    def __repr__(self) -> str:
        return f"<linkd.Stack {self.name}>"


class Service:
    """A service of a stack that is up: its replicas' addresses, output and commands."""

    def __init__(self, stack: Stack, name: str) -> None:
        self.stack = stack
        self.name = name

    @property
    def containers(self) -> tuple[ContainerPlan, ...]:
        return self.stack.state().plan.of_service(self.name)

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

    def replica(self, index: int) -> Container:
        for container in self.containers:
            if container.replica == index:
                return Container(self.stack, container)
        raise NotFoundError(
            f"service {self.name} of stack {self.stack.name} has no replica {index}"
        )

    def exec(
        self, *argv: str, index: int = 1, input: str | None = None, timeout: float | None = None,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside a replica (as `linkd exec`): output captured as text."""
        return self.replica(index).exec(*argv, input=input, timeout=timeout, check=check)

    def logs(self) -> str:
        """The output of every replica; lines prefixed with the container's name when
        there are several."""
        containers = self.containers
        if len(containers) == 1:
            return self.stack.container_logs(containers[0].name)
        return "".join(
            "".join(f"{c.name} | {line}\n" for line in self.stack.container_logs(c.name)
                    .splitlines())
            for c in containers
        )

    def wait(
        self, strategies: waits.Wait | Sequence[waits.Wait], *, started: float | None = None
    ) -> None:
        """Wait until every strategy holds for every replica (see linkd.waits)."""
        started = time.monotonic() if started is None else started
        listed = [strategies] if isinstance(strategies, waits.Wait) else list(strategies)
        for container in self.containers:
            target = Container(self.stack, container)
            for strategy in listed:
                strategy.until_ready(target, started=started)

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Wait until every replica's healthcheck passes (WaitTimeout naming the last
        probe's result otherwise)."""
        self.wait(waits.healthy(timeout=timeout))

    def __repr__(self) -> str:
        return f"<linkd.Service {self.stack.name}/{self.name}>"


class Container:
    """One replica; what wait strategies probe (`linkd.waits.Target`)."""

    def __init__(self, stack: Stack, plan: ContainerPlan) -> None:
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

    def status(self) -> str:
        return str(self.stack.state().container(self.plan.name).status)

    def health(self) -> str | None:
        return self.stack.state().container(self.plan.name).health

    def logs(self) -> str:
        return self.stack.container_logs(self.plan.name)

    def wait_for(self, strategy: waits.Wait, started: float | None = None) -> None:
        strategy.until_ready(self, started=started)

    def exec(
        self, *argv: str, input: str | None = None, timeout: float | None = None,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ)
        path = env.get("PYTHONPATH")
        env["PYTHONPATH"] = f"{_PACKAGE_ROOT}{os.pathsep}{path}" if path else _PACKAGE_ROOT
        return subprocess.run(
            [sys.executable, "-m", "linkd", "exec", "-p", self.stack.name, self.plan.name,
             "--", *argv],
            input=input, capture_output=True, text=True, timeout=timeout, check=check, env=env,
            cwd=str(self.stack.directory),
        )


def _first_address(container: ContainerPlan) -> str:
    if not container.interfaces:
        raise LinkdError(f"container {container.name} has no network (network_mode: none)")
    return str(container.interfaces[0].address)


class StackUp:
    """What `Stack.up` returns: a context manager, for `with` and for `async with`."""

    def __init__(
        self, source: Source, *, name: str | None, wait: WaitFor | None,
        directory: str | os.PathLike[str] | None,
    ) -> None:
        self._args = (source, name, wait, directory)
        self._stack: Stack | None = None

    def _start(self) -> Stack:
        source, name, wait, directory = self._args
        return Stack.start(source, name=name, wait=wait, directory=directory)

    def __enter__(self) -> Stack:
        self._stack = self._start()
        return self._stack

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._stack is not None:
            self._stack.down()

    async def __aenter__(self) -> Stack:
        self._stack = await _finish_in_thread(self._start, on_cancel=_down_started)
        return self._stack

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._stack is not None:
            await _finish_in_thread(self._stack.down)


def _down_started(stack: Stack) -> None:
    stack.down()


async def _finish_in_thread(
    work: Callable[[], T], *, on_cancel: Callable[[T], object] | None = None
) -> T:
    """Run `work` in a thread and see it finish even if this task is cancelled
    meanwhile: then `on_cancel(result)` runs (also in a thread) and the cancellation
    goes on."""
    future = asyncio.ensure_future(asyncio.to_thread(work))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            result = await future
            if on_cancel is not None:
                await asyncio.to_thread(on_cancel, result)
        raise


def _get_text(client: Client, path: str) -> str:
    """A GET whose answer is text (the logs endpoint), with the daemon's errors."""
    return client.request_raw("GET", path).decode(errors="replace")


# Stacks this process brought up and has not taken down yet (the pytest plugin takes
# down any left at the end of the session).
_LIVE: dict[str, Stack] = {}


def live() -> list[Stack]:
    return list(_LIVE.values())


def down_all() -> None:
    """Take down every stack this process brought up (newest first)."""
    for stack in reversed(live()):
        with contextlib.suppress(LinkdError, OSError):
            stack.down()
