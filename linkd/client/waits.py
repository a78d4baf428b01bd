"""Wait strategies, as Testcontainers users know them, run from the host.

Each strategy probes one container of a stack that is up, from the host, at the
container's own address (linkd routes the host to every container through its bridges):

    waits.port(5432)                          # a TCP connect succeeds
    waits.http(8080, "/health", status=200)   # an HTTP GET answers with that status
    waits.log(r"ready to accept")             # a line of the container's output matches
    waits.command("pg_isready")               # a command run inside it exits 0

Every strategy has a `timeout` (seconds, counted from when the wait began) and an
`interval` between probes. A wait that runs out raises `WaitTimeout`, naming the service,
the container, the strategy and the last thing the probe saw (a connection error, the
last status and body, the log's last lines, the command's output). A container that
exits while it is waited for fails the wait at once.

`linkd.Stack.up(..., wait={"web": waits.http(8080, "/health")})` waits for every listed
service (each replica) before it returns; `stack["web"].wait(...)` waits later.

Probes are coroutines (asyncio sockets and subprocesses; urllib's GET in a thread), so
in the async form (`async with Stack.up(...)`) a wait leaves the event loop free for the
clients and servers a test runs beside it; the sync form runs the same coroutines on an
event loop of its own (`linkd.client.sync_form`), so both wait exactly alike.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Protocol

from linkd.errors import LinkdError

LAST_MAX = 600  # characters of the last output kept for the error message


class WaitTimeout(LinkdError):
    """A wait strategy was not satisfied in time (or its container exited)."""

    def __init__(
        self, service: str, container: str, strategy: str, timeout: float, last: str,
        *, exited: str | None = None,
    ) -> None:
        self.service = service
        self.container = container
        self.strategy = strategy
        self.timeout = timeout
        self.last = last
        self.logs: dict[str, str] = {}  # container -> output, filled by Stack.up
        why = (
            f"container {container} {exited}" if exited
            else f"not ready after {timeout:g}s"
        )
        super().__init__(
            f"service {service}: {why}, waiting for {strategy}; "
            f"last: {last or 'nothing seen yet'}"
        )


class Unfinished(Exception):
    """A probe the deadline cut short; says how far it got."""


class Target(Protocol):
    """One container of a stack that is up, as a strategy sees it."""

    @property
    def service(self) -> str: ...

    @property
    def container(self) -> str: ...

    @property
    def address(self) -> str: ...

    async def status(self) -> str: ...

    async def health(self) -> str | None: ...

    async def logs(self) -> str: ...

    async def exec(
        self, *argv: str, timeout: float | None = None
    ) -> subprocess.CompletedProcess[str]: ...


class Wait(ABC):
    """A readiness probe; subclasses say what they wait for and probe once."""

    timeout: float
    interval: float

    @abstractmethod
    def describe(self, target: Target) -> str:
        """What is waited for, e.g. `HTTP 200 from http://10.87.0.2:8080/health`."""

    @abstractmethod
    async def probe(self, target: Target, remaining: float) -> tuple[bool, str]:
        """One attempt within `remaining` seconds: (satisfied, what was seen); raises
        Unfinished when the time ran out before the attempt could tell."""

    async def until_ready(self, target: Target, *, started: float | None = None) -> None:
        """Probe until satisfied; raise WaitTimeout when `timeout` has passed since
        `started` (a `time.monotonic()` value; default: now)."""
        deadline = (time.monotonic() if started is None else started) + self.timeout
        last = ""
        while True:
            remaining = max(deadline - time.monotonic(), 0.05)
            try:
                ok, seen = await self.probe(target, remaining)
            except Unfinished as cut:  # keep what a finished probe saw, if any did
                ok, seen = False, last or str(cut)
            if ok:
                return
            last = _clip(seen) or last
            status = await target.status()
            if status in ("exited", "failed"):
                raise WaitTimeout(
                    target.service, target.container, self.describe(target), self.timeout,
                    last, exited=f"is {status}",
                )
            if time.monotonic() + self.interval > deadline:
                raise WaitTimeout(
                    target.service, target.container, self.describe(target), self.timeout, last
                )
            await asyncio.sleep(self.interval)


def _reason(exc: BaseException) -> str:
    """What went wrong, in the words of the C library ("Connection refused"): asyncio's
    own messages ("Connect call failed ('10.87.0.2', 80)") hide the errno's name."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)
    return str(exc) or type(exc).__name__


def _clip(text: str) -> str:
    text = text.strip()
    return text if len(text) <= LAST_MAX else "..." + text[-LAST_MAX:]


@dataclass(frozen=True)
class Port(Wait):
    port: int
    timeout: float = 30.0
    interval: float = 0.1

    def describe(self, target: Target) -> str:
        return f"port {self.port} (TCP connect to {target.address}:{self.port})"

    async def probe(self, target: Target, remaining: float) -> tuple[bool, str]:
        try:
            async with asyncio.timeout(min(remaining, 2.0)):
                _, writer = await asyncio.open_connection(target.address, self.port)
        except OSError as exc:  # TimeoutError too
            return False, f"connect {target.address}:{self.port}: {_reason(exc)}"
        writer.close()
        return True, ""


@dataclass(frozen=True)
class Healthy(Wait):
    """The container's own healthcheck (the stack file's or the image's) says healthy."""

    timeout: float = 60.0
    interval: float = 0.05

    def describe(self, target: Target) -> str:
        return "its healthcheck to pass"

    async def probe(self, target: Target, remaining: float) -> tuple[bool, str]:
        status = await target.health()
        if status is None:
            raise LinkdError(
                f"service {target.service} has no healthcheck: give it one, or wait with "
                "waits.port, waits.http, waits.log or waits.command"
            )
        return status == "healthy", f"health: {status}"


# Container addresses are local: never send a probe through the host's HTTP proxy.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get(url: str, timeout: float) -> tuple[int, bytes]:
    """Status and the start of the body of a GET, an error status included."""
    try:
        with _OPENER.open(url, timeout=timeout) as response:
            return response.status, response.read(LAST_MAX)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(LAST_MAX)


@dataclass(frozen=True)
class Http(Wait):
    port: int
    path: str = "/"
    status: int = 200
    timeout: float = 30.0
    interval: float = 0.1

    def url(self, target: Target) -> str:
        return f"http://{target.address}:{self.port}/{self.path.lstrip('/')}"

    def describe(self, target: Target) -> str:
        return f"HTTP {self.status} from GET {self.url(target)}"

    async def probe(self, target: Target, remaining: float) -> tuple[bool, str]:
        # urllib in a thread, not an asyncio HTTP client: it keeps urllib's behaviour
        # (redirects followed, no proxy), and aiohttp would be an import the reading
        # CLI commands must not be able to reach (see pyproject's import contracts).
        url = self.url(target)
        try:
            code, body = await asyncio.to_thread(_get, url, min(remaining, 5.0))
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            return False, f"GET {url}: {reason}"
        text = body.decode(errors="replace").strip()
        return code == self.status, f"HTTP {code}" + (f": {text}" if text else "")


@dataclass(frozen=True)
class Log(Wait):
    pattern: str
    times: int = 1
    timeout: float = 30.0
    interval: float = 0.1

    def describe(self, target: Target) -> str:
        times = f" {self.times} times" if self.times > 1 else ""
        return f"a log line matching {self.pattern!r}{times}"

    async def probe(self, target: Target, remaining: float) -> tuple[bool, str]:
        text = await target.logs()
        regex = re.compile(self.pattern)
        found = sum(1 for line in text.splitlines() if regex.search(line))
        if found >= self.times:
            return True, ""
        tail = "\n".join(text.splitlines()[-5:])
        return False, f"{found} matching line(s); output ends: {tail}" if tail else "no output"


@dataclass(frozen=True)
class Command(Wait):
    argv: tuple[str, ...]
    timeout: float = 30.0
    interval: float = 0.2

    def describe(self, target: Target) -> str:
        return f"command {' '.join(self.argv)!r} to exit 0 in {target.container}"

    async def probe(self, target: Target, remaining: float) -> tuple[bool, str]:
        try:
            done = await target.exec(*self.argv, timeout=remaining)
        except subprocess.TimeoutExpired:
            raise Unfinished(f"still running after {remaining:.1f}s") from None
        output = (done.stdout + done.stderr).strip()
        return done.returncode == 0, f"exit {done.returncode}" + (f": {output}" if output else "")


def port(port: int, *, timeout: float = 30.0, interval: float = 0.1) -> Port:
    """Wait until a TCP connection to the container's `port` succeeds."""
    return Port(port, timeout, interval)


def http(
    port: int, path: str = "/", *, status: int = 200, timeout: float = 30.0,
    interval: float = 0.1,
) -> Http:
    """Wait until `GET http://ADDRESS:port/path` answers with `status`."""
    return Http(port, path, status, timeout, interval)


def log(pattern: str, *, times: int = 1, timeout: float = 30.0, interval: float = 0.1) -> Log:
    """Wait until `times` lines of the container's output match the regex `pattern`."""
    re.compile(pattern)  # a bad pattern fails here, not after the timeout
    return Log(pattern, times, timeout, interval)


def healthy(*, timeout: float = 60.0, interval: float = 0.05) -> Healthy:
    """Wait until the container's healthcheck reports healthy."""
    return Healthy(timeout, interval)


def command(*argv: str, timeout: float = 30.0, interval: float = 0.2) -> Command:
    """Wait until `argv`, run inside the container (as `linkd exec`), exits 0."""
    if not argv:
        raise ValueError("waits.command needs a command")
    return Command(tuple(argv), timeout, interval)
