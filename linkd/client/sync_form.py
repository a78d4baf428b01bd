"""The Python API's sync form: `Stack` (what `with linkd.Stack.up(...)` gives),
`Service` and `Container`, and `StackUp`, the context manager `Stack.up` returns for
`with` and `async with` alike.

Not a second implementation: each method that asks the daemon or a container runs the
async form's coroutine (linkd.client.async_form) to its end on an event loop of its own
(`_blocks`), each attribute the plan fixes is the async form's, read through (`_Reads`),
and each plain method is the async form's, called through (`_calls`). So the two forms
cannot drift apart; what is left here is what differs: the sync objects a sync method
hands out (`Service`, `Container`), and taking a stack down through a Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, cast, overload

from linkd.client import host_names
from linkd.client.api import Client
from linkd.client.async_form import (
    AsyncContainer,
    AsyncService,
    AsyncStack,
    WaitFor,
)
from linkd.client.loading import Loaded, Source, load
from linkd.core.plan import ContainerPlan, StackPlan

T = TypeVar("T")
P = ParamSpec("P")


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


def _calls(method: Callable[Concatenate[Any, P], T]) -> Callable[Concatenate[Any, P], T]:
    """The async form's plain (not async) method, called on `self._impl`."""

    @functools.wraps(method)
    def call(self: Any, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return method(self._impl, *args, **kwargs)

    return call


class _Reads(Generic[T]):
    """The async form's read-only attribute (a property), read on `self._impl`.

    Given as `_Reads(AsyncService.address)`: mypy sees a property read on its class as
    its getter, which gives `T`; at run time it is the property itself."""

    def __init__(self, attribute: Callable[[Any], T]) -> None:
        self._property = cast(property, attribute)
        self.__doc__ = self._property.__doc__

    @overload
    def __get__(self, obj: None, owner: type[Any]) -> _Reads[T]: ...

    @overload
    def __get__(self, obj: object, owner: type[Any]) -> T: ...

    def __get__(self, obj: Any, owner: type[Any]) -> T | _Reads[T]:
        if obj is None:
            return self
        value: T = self._property.__get__(obj._impl)
        return value

    def __set__(self, obj: object, value: object) -> None:
        raise AttributeError("read-only: it is the async form's")  # as a property's


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
        return self.aio.services

    def __getitem__(self, service: str) -> Service:
        return Service(self, self.aio[service].name)

    service = __getitem__

    @property
    def dns_domain(self) -> str:
        return self.aio.dns_domain

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

    containers = _Reads(AsyncService.containers)
    address = _Reads(AsyncService.address)
    addresses = _Reads(AsyncService.addresses)
    url = _calls(AsyncService.url)

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

    service = _Reads(AsyncContainer.service)
    container = _Reads(AsyncContainer.container)
    address = _Reads(AsyncContainer.address)

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
