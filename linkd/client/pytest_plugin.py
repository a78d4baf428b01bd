"""linkd's pytest plugin: stacks for tests, up per session, module or test.

Registered by the `linkd` entry point (group `pytest11`), so installing linkd enables it;
with plugin autoloading off, pass `-p linkd`. Two ways to get a stack:

A fixture made in a conftest.py (or a test module), any scope; the fixture's name is the
name it is assigned to, and a relative path is taken from the file that makes it:

    from linkd.client import waits
    from linkd.client.pytest_plugin import stack_fixture

    shop = stack_fixture("stack.yaml", scope="module",
                         wait={"api": waits.http(8080, "/health")})

    def test_api(shop):
        urllib.request.urlopen(shop["api"].url(8080, "/items/x"))

    async def test_api_async(shop):  # the same stack's async form: the loop stays free
        await shop.aio["api"].exec("cat", "/etc/hostname")

A marker, with the `linkd_stack` fixture (one stack per test; a relative path is taken
from the test file's directory; the marker takes `Stack.up`'s arguments):

    @pytest.mark.linkd_stack("stack.yaml", wait={"kv": waits.port(7000)})
    def test_kv(linkd_stack): ...

What the plugin guarantees:

- Names: every stack of a run is named `<run prefix>-<n>`, the prefix (`p` and 6 hex
  digits) being this process's own, so parallel runs and pytest-xdist workers never
  collide.
- Teardown: a stack goes down (and its address lease is forgotten) when its fixture's
  scope ends, whether its tests passed or failed, and on Ctrl-C; any stack of this
  process still up at the end of the session goes then.
- A killed run: the prefix is recorded in `/run/linkd/pytest/<prefix>.json` with the
  PID (and start time) of the process that made it before its first stack is created.
  At the start of every session, stacks whose prefix belongs to a process that is gone
  (a run killed by SIGKILL, say) are taken down, their leases and the record removed.
- Async tests: a fixture gives the sync form (`Stack`); `stack.aio` is its async form
  (`AsyncStack`), whose coroutines leave the test's event loop free. The fixtures stay
  sync on purpose: the async form holds nothing bound to an event loop, so a module or
  session-scoped stack serves each test's own loop, whatever pytest-asyncio's loop scope.
- Host names: the stack's names resolve in the test process as in its containers
  (`Stack.names`, on unless `host_names=False`), so `http://api:8080/` works from a test.
- Reports: a test that fails gets the output of every container of the stacks it used
  attached to its report (sections `linkd logs: STACK CONTAINER`); a stack whose wait
  timed out attaches the output of its containers as they were then.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sys
from collections.abc import Generator, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from linkd import paths
from linkd.client import stacks
from linkd.client.api import Client
from linkd.client.stacks import AsyncStack, Source, Stack, WaitFor
from linkd.client.waits import WaitTimeout
from linkd.errors import LinkdError

LOG_TAIL = 20_000  # characters of each container's output attached to a report


def records_dir() -> Path:
    return paths.root() / "pytest"


def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot): tells a PID reused apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


class Run:
    """This process's stack names, and the record that lets a later run clean up."""

    def __init__(self) -> None:
        self.prefix: str | None = None
        self.count = 0

    def next_name(self) -> str:
        if self.prefix is None:
            self.prefix = self._record()
        self.count += 1
        return f"{self.prefix}-{self.count}"

    def _record(self) -> str:
        directory = records_dir()
        paths.private_dirs(directory)  # 0700, like the run directory it is in
        data = json.dumps(
            {"pid": os.getpid(), "start": _start_time(os.getpid()), "argv": sys.argv}
        ).encode()
        while True:
            prefix = f"p{secrets.token_hex(3)}"
            try:
                # 0600: the record holds the test run's argv, which may carry secrets.
                fd = os.open(directory / f"{prefix}.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                             0o600)
            except FileExistsError:
                continue
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            return prefix

    def finish(self) -> None:
        """Take down what this process left up, then drop the record."""
        stacks.down_all()
        if self.prefix is not None and not stacks.live():
            (records_dir() / f"{self.prefix}.json").unlink(missing_ok=True)
            self.prefix = None


RUN = Run()


def clean_killed_runs() -> list[str]:
    """Take down the stacks of runs whose process is gone; return their names."""
    try:
        records = sorted(records_dir().glob("*.json"))
    except OSError:
        return []
    removed: list[str] = []
    for record in records:
        try:
            data = json.loads(record.read_bytes())
            pid, start = int(data["pid"]), data.get("start")
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being written, or not ours: leave it
        if _start_time(pid) is not None and _start_time(pid) == start:
            continue  # that run is alive
        removed += _remove_prefix(record.stem)
        record.unlink(missing_ok=True)
    return removed


def _remove_prefix(prefix: str) -> list[str]:
    mine = f"{prefix}-"
    client = Client()
    names = {n for n in paths.stacks() if n.startswith(mine)}
    if client.available():
        names |= {s["name"] for s in client.request("GET", "/v1/stacks")
                  if str(s["name"]).startswith(mine)}
    for name in sorted(names):
        with contextlib.suppress(LinkdError, OSError):
            Stack(name, Path("/"), client).down()
    with contextlib.suppress(OSError):
        for lease in (paths.root() / "leases").glob(f"{mine}*.msgpack"):
            lease.unlink(missing_ok=True)
    return sorted(names)


# -- fixtures --------------------------------------------------------------------------------


def _resolve(source: Source, base: Path) -> Source:
    if isinstance(source, Mapping):
        return source
    path = Path(source)
    return path if path.is_absolute() else base / path


@contextlib.contextmanager
def _stack(
    source: Source, wait: WaitFor | None, directory: str | None, host_names: bool = True
) -> Iterator[Stack]:
    up = Stack.up(source, name=RUN.next_name(), wait=wait, directory=directory)
    with up as stack, stack.names() if host_names else contextlib.nullcontext():
        yield stack


def stack_fixture(
    source: Source,
    *,
    scope: str = "module",
    wait: WaitFor | None = None,
    directory: str | None = None,
    name: str | None = None,
    host_names: bool = True,
) -> Any:
    """A fixture bringing up `source` (a stack file, relative to the calling file, or a
    Compose-shaped dict) once per `scope`, after `wait`; assign it in a conftest.py or a
    test module (the fixture is named as the variable, or `name`). With `host_names`,
    the test process resolves the stack's names as its containers do (`Stack.names`)."""
    caller = sys._getframe(1).f_globals.get("__file__")
    base = Path(caller).resolve().parent if caller else Path.cwd()
    resolved = _resolve(source, base)

    def fixture() -> Iterator[Stack]:
        with _stack(resolved, wait, directory, host_names) as stack:
            yield stack

    return pytest.fixture(scope=scope, name=name)(fixture)  # type: ignore[call-overload]


@pytest.fixture
def linkd_stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    """The stack of the test's `@pytest.mark.linkd_stack(source, wait=..., directory=...)`
    marker, up for that test only."""
    marker = request.node.get_closest_marker("linkd_stack")
    if marker is None or not marker.args:
        raise pytest.UsageError(
            "the linkd_stack fixture needs a @pytest.mark.linkd_stack(\"stack.yaml\") marker"
        )
    source = _resolve(marker.args[0], request.path.parent)
    kwargs = marker.kwargs
    with _stack(source, kwargs.get("wait"), kwargs.get("directory"),
                kwargs.get("host_names", True)) as stack:
        yield stack


# -- hooks -----------------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "linkd_stack(source, wait=None, directory=None, host_names=True): bring a linkd "
        "stack up for this test, as the linkd_stack fixture",
    )


def pytest_sessionstart(session: pytest.Session) -> None:
    if records_dir().is_dir():
        clean_killed_runs()


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    RUN.finish()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if not report.failed or report.when == "teardown":
        return report
    used = {id(v): v for v in map(_sync_form, getattr(item, "funcargs", {}).values())
            if isinstance(v, Stack)}
    for stack in used.values():
        if stack in stacks.live():
            with contextlib.suppress(LinkdError, OSError):
                _attach(report, stack.name, stack.logs())
    error = call.excinfo.value if call.excinfo is not None else None
    if isinstance(error, WaitTimeout) and error.logs:
        _attach(report, "(wait timed out)", error.logs)
    return report


def _sync_form(value: object) -> object:
    # The report hook is sync: a fixture of the user's own may give the async form.
    return value.sync if isinstance(value, AsyncStack) else value


def _attach(report: pytest.TestReport, stack: str, logs: Mapping[str, str]) -> None:
    for container, text in logs.items():
        if len(text) > LOG_TAIL:
            text = "...\n" + text[-LOG_TAIL:]
        report.sections.append((f"linkd logs: {stack} {container}", text or "(no output)\n"))
