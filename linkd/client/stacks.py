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

This module is the API's face; the parts are `loading` (a file or a dict to what the
daemon is sent, through linkd.loader), `async_form` (`AsyncStack`, `AsyncService`,
`AsyncContainer`), `sync_form` (`Stack`, `Service`, `Container`, `StackUp`) and
`container_exec` (`exec`).
"""

from __future__ import annotations

import contextlib

from linkd.client.async_form import LIVE, AsyncContainer, AsyncService, AsyncStack, WaitFor
from linkd.client.loading import Loaded, Source, StackWarning, load, unique_name
from linkd.client.sync_form import Container, Service, Stack, StackUp
from linkd.errors import LinkdError

__all__ = [
    "AsyncContainer", "AsyncService", "AsyncStack", "Container", "Loaded", "Service", "Source",
    "Stack", "StackUp", "StackWarning", "WaitFor", "down_all", "live", "load", "unique_name",
]  # fmt: skip


def live() -> list[Stack]:
    """The stacks this process brought up and has not taken down yet."""
    return [stack.sync for stack in LIVE.values()]


def down_all() -> None:
    """Take down every stack this process brought up (newest first)."""
    for stack in reversed(live()):
        with contextlib.suppress(LinkdError, OSError):
            stack.down()
