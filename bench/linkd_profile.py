"""Where linkd's per-container setup time goes: each `Kernel` step and the calls inside it.

Wraps (in this process only, for one run, restored afterwards) with timers:

- the `Kernel` steps the reconciler's actions map to (`ensure_bridge`, `ensure_netns`,
  `ensure_veth`, `configure_netns`); they run one after the other, so they add up;
- inside them: `AsyncIPRoute` requests (labelled with their command, `link('add')`...),
  the namespace helper of linkd's runtime if it has one (`NamespaceHelper.request` and its
  start-up), and pyroute2's forking helpers (`netns.create`, `netns.create_socket`) if
  they are called at all.

Inner times are inclusive, and requests sent together (`asyncio.gather`) overlap, so the
inner rows of one step need not add up to it. Whatever does not exist in the linkd under
test is simply not wrapped, so the profile follows the code as it changes.

Run alone: `bench/run --profile-only --profile N`.
"""

from __future__ import annotations

import contextvars
import functools
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from ipaddress import IPv4Network
from typing import Any

from netsetup import LinkdKernel

STEPS = ("ensure_bridge", "ensure_netns", "ensure_veth", "configure_netns")
REQUESTS = ("link", "addr", "route")  # labelled with their command
IPR_METHODS = ("link", "addr", "route")  # link_lookup is a link("get") inside pyroute2

_step: contextvars.ContextVar[str] = contextvars.ContextVar("step", default="(outside)")


class _Recorder:
    def __init__(self) -> None:
        self.steps: dict[str, list[float]] = defaultdict(list)
        self.inner: dict[tuple[str, str], list[float]] = defaultdict(list)
        self.saved: list[tuple[object, str, object]] = []

    def _patch(self, owner: object, attr: str, new: object) -> None:
        self.saved.append((owner, attr, getattr(owner, attr)))
        setattr(owner, attr, new)

    def restore(self) -> None:
        for owner, attr, old in reversed(self.saved):
            setattr(owner, attr, old)
        self.saved.clear()

    def step(self, owner: object, attr: str) -> None:
        fn = getattr(owner, attr, None)
        if fn is None:
            return

        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            token = _step.set(attr)
            started = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                self.steps[attr].append(time.perf_counter() - started)
                _step.reset(token)

        self._patch(owner, attr, wrapper)

    def call(self, owner: object, attr: str, label: str, *, is_async: bool) -> None:
        fn: Callable[..., Any] | None = getattr(owner, attr, None)
        if fn is None:
            return

        def name(args: tuple[Any, ...]) -> str:
            if attr in REQUESTS and len(args) > 1:
                return f"{label}({args[1]!r})"
            return label

        if is_async:
            @functools.wraps(fn)
            async def awrapper(*args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return await fn(*args, **kwargs)
                finally:
                    self.inner[(_step.get(), name(args))].append(time.perf_counter() - started)

            self._patch(owner, attr, awrapper)
        else:
            @functools.wraps(fn)
            def swrapper(*args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    self.inner[(_step.get(), name(args))].append(time.perf_counter() - started)

            self._patch(owner, attr, swrapper)


async def profile(n: int, subnet: IPv4Network) -> str:
    from pyroute2 import AsyncIPRoute
    from pyroute2 import netns as pyroute2_netns

    import linkd.runtime.kernel.netlink as netlink

    rec = _Recorder()
    for attr in STEPS:
        rec.step(netlink.Kernel, attr)
    for attr in IPR_METHODS:
        rec.call(AsyncIPRoute, attr, f"AsyncIPRoute.{attr}", is_async=True)
    helper = getattr(netlink, "NamespaceHelper", None)
    if helper is not None:
        rec.call(helper, "request", "NamespaceHelper.request (netns + socket, via helper)",
                 is_async=True)
        rec.call(helper, "_start", "NamespaceHelper._start (start the helper process)",
                 is_async=False)
    # Module attributes, looked up at call time (by linkd and by pyroute2.netlink.core).
    rec.call(pyroute2_netns, "create", "pyroute2.netns.create (forks)", is_async=False)
    rec.call(pyroute2_netns, "create_socket", "pyroute2.netns.create_socket (forks unless"
             " given a fileno)", is_async=False)

    impl = LinkdKernel(subnet)
    impl.prepare(n)
    try:
        started = time.perf_counter()
        await impl.setup(n)
        total = time.perf_counter() - started
    finally:
        rec.restore()
        try:
            await impl.teardown()
        finally:
            impl.cleanup()

    per = total / n * 1000
    stepped = sum(sum(v) for v in rec.steps.values()) / n * 1000
    lines = [
        f"### Where linkd's setup time goes (N={n}, one run, {per:.1f} ms per container)",
        "",
        "| `Kernel` step / call inside it (inclusive) | calls | median ms | ms per container |",
        "|---|---|---|---|",
    ]
    for step in sorted(rec.steps, key=lambda s: -sum(rec.steps[s])):
        values = rec.steps[step]
        lines.append(f"| **`Kernel.{step}`** | {len(values)} | "
                     f"{statistics.median(values) * 1000:.2f} | "
                     f"**{sum(values) / n * 1000:.2f}** |")
        inner = [(label, v) for (s, label), v in rec.inner.items() if s == step]
        for label, values in sorted(inner, key=lambda kv: -sum(kv[1])):
            lines.append(f"| &nbsp;&nbsp;`{label}` | {len(values)} | "
                         f"{statistics.median(values) * 1000:.2f} | "
                         f"{sum(values) / n * 1000:.2f} |")
    lines.append(f"| outside the steps (bench loop, Kernel() and close) | | | "
                 f"{per - stepped:.2f} |")
    first = next((v[0] for (_, label), v in rec.inner.items()
                  if label.startswith("NamespaceHelper.request")), None)
    if first is not None:
        lines += ["", f"The first helper request took {first * 1000:.1f} ms (it waits for the"
                  " helper process to start); the median is in the table."]
    lines += [
        "",
        "Inner rows are inclusive; requests sent together overlap, so they need not add up"
        " to their step. Steps run one after the other and do add up.",
    ]
    return "\n".join(lines) + "\n"
