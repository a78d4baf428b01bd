"""The daemon's HTTP API (aiohttp) over the `Daemon`; shapes and errors: linkd.core.api_schema.

Whoever can use the API is root on this host (a stack runs any command), so it is served
on a unix socket only root can use (mode 0600, created under a umask that leaves no
window); optionally also on TCP bound to loopback, guarded by linkd.runtime.daemon.api_tcp: a
bearer token on every request, `Host` checked against DNS rebinding, cross-origin
requests refused. A wrong `--tcp` stops the daemon before it recovers any stack.

Stack files arrive in request bodies from whoever holds that power, and are parsed off
the event loop (`parse_off_loop`), within a time budget, so DNS, supervision and other
requests go on meanwhile; they are loaded as the command line and the Python API load
theirs (linkd.loader), env files they name read as bounded regular files, the files
their `include:` and `extends:` name only beneath the stack's directory.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hmac
import importlib.resources
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from linkd import loader
from linkd.core import health
from linkd.core.api_schema import (
    ROUTES,
    ApiError,
    openapi,
    parse_create,
    parse_flag,
    parse_tail,
)
from linkd.core.model import Stack
from linkd.core.plan import hide_secrets
from linkd.core.state import to_plain
from linkd.dns import answers
from linkd.dns.snapshot import Address, Zone
from linkd.dns.zone import build_zone, requester_of
from linkd.errors import ConflictError, ConventionError, LinkdError, SpecError, user_error
from linkd.runtime.containers import logs
from linkd.runtime.daemon import api_tcp
from linkd.runtime.daemon.daemon import Daemon, daemon_lock
from linkd.runtime.stack import store

if TYPE_CHECKING:
    from linkd.core.cluster import ClusterConfig

log = logging.getLogger("linkd")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
DAEMON: web.AppKey[Daemon] = web.AppKey("daemon", Daemon)


def make_app(daemon: Daemon, *, tcp: api_tcp.Listener | None = None) -> web.Application:
    """The API; `tcp` is the TCP listener it serves, whose checks it then applies."""
    app = web.Application(middlewares=[_errors, *([_tcp_guard(tcp)] if tcp else [])])
    app[DAEMON] = daemon
    handlers: dict[str, Handler] = {
        "openapi": get_openapi,
        "listStacks": list_stacks,
        "createStack": create_stack,
        "getStack": get_stack,
        "putStack": put_stack,
        "applyStack": apply_stack,
        "deleteStack": delete_stack,
        "listContainers": list_containers,
        "getContainer": get_container,
        "getLogs": get_logs,
        "stopContainer": container_action("stop"),
        "startContainer": container_action("start"),
        "restartContainer": container_action("restart"),
        "listNetworks": list_networks,
        "getDns": get_dns,
        "getNames": get_names,
        "events": events,
        "listNodes": list_nodes,
        "getGraph": get_graph,
    }
    for method, path, operation, _, _ in ROUTES:
        app.router.add_route(method, path, handlers[operation], name=operation)
    app.router.add_get("/ui/", ui_file)
    app.router.add_get("/ui/{file}", ui_file)
    return app


# -- errors and auth -------------------------------------------------------------------------


def error_body(status: int, message: str, problems: list[dict[str, Any]]) -> dict[str, Any]:
    return {"error": {"status": status, "message": message, "problems": problems}}


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        problems: list[dict[str, Any]] = [
            {"path": p, "line": None, "message": m} for p, m in exc.problems
        ]
        return web.json_response(error_body(exc.status, str(exc), problems), status=exc.status)
    except (LinkdError, BaseExceptionGroup) as exc:
        # Task groups wrap what their tasks raise: the API's one place to unwrap.
        error = user_error(exc)
        if not isinstance(error, LinkdError):
            raise  # a bug: aiohttp logs its traceback and answers 500
        return _linkd_error(error)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return web.json_response(error_body(exc.status, exc.reason, []), status=exc.status)


def _linkd_error(exc: LinkdError) -> web.Response:
    if isinstance(exc, (SpecError, ConventionError)):
        problems = [
            {"path": p, "line": line, "message": m} for p, line, m in exc.problems
        ]
        return web.json_response(error_body(422, "invalid stack spec", problems), status=422)
    body = error_body(exc.status, str(exc), [])
    progress = getattr(exc, "progress", None)
    if progress:
        body["error"]["progress"] = progress
    return web.json_response(body, status=exc.status)


def _tcp_guard(listener: api_tcp.Listener) -> Any:
    """The TCP listener's checks, in order: `Host` (DNS rebinding), `Origin` (a web
    page's requests), the bearer token."""
    expected = f"Bearer {listener.token}".encode()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        # request.host would fall back to the socket's address: read the header itself.
        refused = api_tcp.host_problem(listener, request.headers.get("Host"))
        refused = refused or api_tcp.origin_problem(listener, request.headers.get("Origin"))
        if refused:
            return web.json_response(error_body(403, refused, []), status=403)
        given = request.headers.get("Authorization", "").encode("utf-8", "replace")
        if not hmac.compare_digest(given, expected):
            where = f" (in {listener.token_file})" if listener.token_file else ""
            message = f"missing or wrong bearer token: send Authorization: Bearer <token>{where}"
            return web.json_response(error_body(401, message, []), status=401)
        return await handler(request)

    return check


# -- stacks --------------------------------------------------------------------------------


async def get_openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi())


async def list_stacks(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    return web.json_response([_summary(daemon, name) for name in daemon.names()])


async def _stack_from(request: web.Request, name: str | None) -> tuple[Stack, Path]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, "the body is not JSON", [("body", str(exc))]) from None
    except RecursionError:
        raise ApiError(400, "the body is not JSON linkd reads", [("body", _TOO_DEEP)]) from None
    if name is not None and isinstance(body, dict):
        if body.get("name", name) != name:
            raise ApiError(400, "invalid request", [("body.name", f"must be {name}, as the path")])
        body = {**body, "name": name}
    try:
        wanted = parse_create(body)
    except RecursionError:  # json.dumps of a "spec" nested past Python's limit
        raise ApiError(400, "invalid request", [("body.spec", _TOO_DEEP)]) from None
    source = loader.StackSource(
        wanted.text,
        source=wanted.source,
        directory=Path(wanted.directory),
        project_name=wanted.name,
        default_project=wanted.default_project,
        environment=wanted.environment,
        env_files=wanted.env_files,
        overrides=wanted.overrides,
        confined=True,  # include: and extends: files only beneath `directory`
    )
    stack = await parse_off_loop(lambda check: loader.load(source, check=check))
    return stack, source.directory


_TOO_DEEP = "nested too deeply (linkd reads stack files up to 64 levels)"
PARSE_BUDGET = 10.0  # seconds a stack may take to parse; it is stopped after that
# Parses run here, two at a time, so that a flood of them neither stalls the event loop
# (DNS, the API, supervision) nor takes the default executor the supervisor uses.
_PARSERS = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="linkd-parse")


class _Stopped(Exception):
    """Raised in a parse through its `check` callback: over budget, or not wanted."""


async def parse_off_loop(parse: Callable[[Callable[[], None]], Stack]) -> Stack:
    """`parse(check)` in a parser thread, within `PARSE_BUDGET` seconds.

    The budget starts when a parser thread takes the work; `check`, which the stack parser
    calls as it goes, raises once it is spent, or once the request is gone. Waiting for a
    free thread counts too, up to another budget. Over budget is a `SpecError` (422).
    """
    budget = PARSE_BUDGET
    unwanted = threading.Event()
    deadline = 0.0

    def check() -> None:
        if unwanted.is_set() or time.monotonic() > deadline:
            raise _Stopped

    def run() -> Stack:
        nonlocal deadline
        deadline = time.monotonic() + budget
        check()
        return parse(check)

    try:
        async with asyncio.timeout(2 * budget):
            return await asyncio.get_running_loop().run_in_executor(_PARSERS, run)
    except (_Stopped, TimeoutError):
        raise SpecError(
            [("(file)", None, f"parsing the stack took longer than {budget:g} s, the daemon's "
              "limit, and was stopped; a stack file this slow to read is too large or too "
              "intricate (`linkd config` reads it the same way, without the limit)")],
            "request body",
        ) from None  # fmt: skip
    finally:
        unwanted.set()  # a parse still running (cancelled, timed out) stops at its next check


async def create_stack(request: web.Request) -> web.Response:
    stack, directory = await _stack_from(request, None)
    daemon = request.app[DAEMON]
    state = await daemon.create(stack, str(directory / "api.yaml"))
    body = _with_notices(daemon, stack.name, hide_secrets(to_plain(state)))
    return web.json_response(body, status=201)


async def put_stack(request: web.Request) -> web.Response:
    stack, directory = await _stack_from(request, request.match_info["stack"])
    body, status = await _create_or_update(request.app[DAEMON], stack, directory)
    return web.json_response(body, status=status)


async def apply_stack(request: web.Request) -> web.Response:
    """`linkd up -d`: the stack file's text as it is, parsed here (so the command line
    imports no parser); what the parse warns of comes back in `warnings`."""
    stack, directory = await _stack_from(request, None)
    body, status = await _create_or_update(request.app[DAEMON], stack, directory)
    return web.json_response({**body, "warnings": list(stack.warnings)}, status=status)


async def _create_or_update(daemon: Daemon, stack: Stack, directory: Path
                            ) -> tuple[dict[str, Any], int]:
    if stack.name not in daemon.stacks:
        state = await daemon.create(stack, str(directory / "api.yaml"))
        return _with_notices(daemon, stack.name, hide_secrets(to_plain(state))), 201
    summary = await daemon.update(stack)
    body = {**hide_secrets(to_plain(daemon.state(stack.name))), "changes": summary}
    return _with_notices(daemon, stack.name, body), 200


def _with_notices(daemon: Daemon, name: str, body: dict[str, Any]) -> dict[str, Any]:
    """`notices`: what this up changed on the host (forwarding turned on), to be said."""
    return {**body, "notices": daemon.hosted(name).supervisor.take_notices()}


async def get_stack(request: web.Request) -> web.Response:
    daemon, name = request.app[DAEMON], request.match_info["stack"]
    body = hide_secrets(to_plain(daemon.state(name)))
    spread = await daemon.spread.view(name) if daemon.spread is not None else None
    if spread is not None:  # a stack spanning nodes: where each container runs
        body["cluster"] = spread
    return web.json_response(body)


async def delete_stack(request: web.Request) -> web.Response:
    name = request.match_info["stack"]
    supervisor = request.app[DAEMON].hosted(name).supervisor
    await request.app[DAEMON].delete(name)
    # What its down left on purpose (a bridge another stack's containers are on).
    return web.json_response({"removed": name, "notices": supervisor.take_notices()})


def _summary(daemon: Daemon, name: str) -> dict[str, Any]:
    hosted = daemon.hosted(name)
    sup = hosted.supervisor
    return {
        "name": name,
        "status": sup.status,
        "source": sup.source,
        "containers": {n: st.status for n, st in sorted(sup.states.items())},
    }


# -- containers ----------------------------------------------------------------------------


async def list_containers(request: web.Request) -> web.Response:
    daemon, name = request.app[DAEMON], request.match_info["stack"]
    state = daemon.state(name)
    found = [to_plain(c) for c in state.containers]
    spread = await daemon.spread.view(name) if daemon.spread is not None else None
    if spread is not None:  # a stack spanning nodes: the other nodes' containers too
        found = [{**c, "node": spread["node"]} for c in found] + [
            {"name": r["name"], "status": r["status"], "node": r["node"]}
            for r in spread["remote"]]
    return web.json_response(found)


async def get_container(request: web.Request) -> web.Response:
    stack, name = request.match_info["stack"], request.match_info["container"]
    state = request.app[DAEMON].state(stack)
    hosted = request.app[DAEMON].hosted(stack)
    request.app[DAEMON]._container(hosted, name)
    probes = hosted.supervisor.health.current.get(name)  # live: streak and last probes
    return web.json_response({
        "plan": hide_secrets(to_plain(state.plan.container(name))),
        "state": to_plain(state.container(name)),
        "health": health.to_plain(probes) if probes is not None else None,
    })


def container_action(action: str) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        daemon = request.app[DAEMON]
        stack, name = request.match_info["stack"], request.match_info["container"]
        method = {
            "stop": daemon.stop_container,
            "start": daemon.start_container,
            "restart": daemon.restart_container,
        }[action]
        await method(stack, name)
        return web.json_response(to_plain(daemon.state(stack).container(name)))

    return handle


async def get_logs(request: web.Request) -> web.StreamResponse:
    daemon = request.app[DAEMON]
    stack, name = request.match_info["stack"], request.match_info["container"]
    daemon._container(daemon.hosted(stack), name)
    follow = parse_flag(request.query.get("follow"), "query.follow")
    tail = parse_tail(request.query.get("tail"), "query.tail")
    path = store.log_path(stack, name)
    response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
    await response.prepare(request)
    # Read in log reader threads, never on this loop (it answers DNS too).
    async with contextlib.aclosing(
        logs.chunks(path, lambda: follow and stack in daemon.stacks, tail=tail)
    ) as chunks:
        async for chunk in chunks:
            await response.write(chunk)
    await response.write_eof()
    return response


async def list_networks(request: web.Request) -> web.Response:
    state = request.app[DAEMON].state(request.match_info["stack"])
    return web.json_response([to_plain(n) for n in state.plan.networks])


def _asking(request: web.Request) -> tuple[Zone, Address]:
    """The zone the container's DNS server holds, and the container as its requester."""
    daemon = request.app[DAEMON]
    stack, name = request.match_info["stack"], request.match_info["container"]
    container = daemon._container(daemon.hosted(stack), name)
    sup = daemon.hosted(stack).supervisor
    zone = sup.dns.zone if sup.dns is not None else build_zone([])
    return zone, requester_of(stack, container)


def _records(found: answers.Lookup) -> list[dict[str, object]]:
    return [{"name": n, "type": t, "ttl": ttl, "data": d} for n, t, ttl, d in found.records]


async def get_dns(request: web.Request) -> web.Response:
    zone, requester = _asking(request)
    lookup = request.query.get("name")
    if not lookup:
        raise ApiError(400, "invalid request", [("query.name", "the name to look up")])
    try:
        found = answers.lookup(zone, lookup, request.query.get("type", "A"), requester)
    except ValueError as exc:
        raise ApiError(400, "invalid request", [("query.type", str(exc))]) from None
    return web.json_response({
        "explain": list(found.explain),
        "rcode": found.rcode,
        "forwarded": found.forwarded,
        "records": _records(found),
    })


async def get_names(request: web.Request) -> web.Response:
    zone, requester = _asking(request)
    reachable = []
    for name in answers.reachable_names(zone, requester):
        four, six = (answers.lookup(zone, name, t, requester) for t in ("A", "AAAA"))
        reachable.append({"name": name, "rcode": four.rcode,
                          "records": _records(four) + _records(six)})
    return web.json_response(reachable)


async def get_graph(request: web.Request) -> web.Response:
    from linkd.core import graph_formats, topology

    fmt = request.query.get("format", "svg")
    if fmt not in graph_formats.FORMATS:
        raise ApiError(400, "invalid request", [
            ("query.format", f"one of {', '.join(graph_formats.FORMATS)}")])
    state = request.app[DAEMON].state(request.match_info["stack"])
    kinds = {"svg": "image/svg+xml", "dot": "text/vnd.graphviz", "mermaid": "text/plain"}
    return web.Response(text=graph_formats.render(topology.topology(state), fmt),
                        content_type=kinds[fmt])


# -- the page --------------------------------------------------------------------------------

UI_FILES = {"": ("index.html", "text/html"), "index.html": ("index.html", "text/html"),
            "ui.js": ("ui.js", "text/javascript"), "ui.css": ("ui.css", "text/css")}


async def ui_file(request: web.Request) -> web.Response:
    """The page's files, from the package (linkd/ui); only these names, never a path."""
    found = UI_FILES.get(request.match_info.get("file", ""))
    if found is None:
        raise web.HTTPNotFound()
    name, kind = found
    text = importlib.resources.files("linkd.ui").joinpath(name).read_text(encoding="utf-8")
    return web.Response(text=text, content_type=kind, headers={
        "Cache-Control": "no-store",
        # Its own files only: no script, style or connection to anywhere else.
        "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                                   "style-src 'self'; script-src 'self'; "
                                   "connect-src 'self'; frame-ancestors 'none'",
        "X-Content-Type-Options": "nosniff"})


# -- events --------------------------------------------------------------------------------


async def events(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    async with request.app[DAEMON].events.subscribe() as queue:
        await response.write(b": linkd events\n\n")  # lets a client know it is subscribed
        while True:
            event = await queue.get()
            data = json.dumps(event, default=str)
            await response.write(f"event: {event['type']}\ndata: {data}\n\n".encode())


# -- the cluster ---------------------------------------------------------------------------


async def list_nodes(request: web.Request) -> web.Response:
    cluster = request.app[DAEMON].cluster
    if cluster is None:
        raise ConflictError(
            "this daemon is not in a cluster: start it with `linkd daemon --cluster "
            "http://ETCD1:2379,http://ETCD2:2379,...` (docs/cluster.md)")
    return web.json_response(await cluster.view())


# -- serving -------------------------------------------------------------------------------


async def serve(
    socket_path: Path,
    *,
    tcp: str | None = None,
    token_file: str | os.PathLike[str] | None = None,
    token: str | None = None,
    on_ready: Callable[[], None] | None = None,
    cluster: ClusterConfig | None = None,
) -> None:
    """Run a Daemon behind the API until SIGTERM or SIGINT, then take every stack down.

    With `cluster`, the daemon is a node of that cluster (linkd.runtime.cluster, imported
    only then): it registers before it recovers any stack (a name a live node holds stops
    it there), keeps its lease alive while it serves, and leaves first when it stops.

    `tcp` ("127.0.0.1:8080", "[::1]:8080") also serves loopback TCP with the token from
    `token_file` (or `token`, given by a program), else a new one (linkd.runtime.daemon.api_tcp);
    all of it is checked, and the port bound, before any stack is recovered.
    Raises ConflictError if another daemon holds this run directory, UsageError for a
    `tcp` or token that cannot be used.
    """
    try:
        lock = store.locked(daemon_lock(), wait=False)
        fd = lock.__enter__()
    except BlockingIOError:
        holder = _lock_holder()
        raise ConflictError(
            f"another linkd daemon{holder} already serves {store.root()}; stop it first, "
            "or give this one its own directory with LINKD_RUN_DIR"
        ) from None
    listener = None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        if tcp is not None:  # before recovery: giving up later would take stacks down
            listener = api_tcp.prepare(tcp, token_file, token)
        await _serve_locked(socket_path, listener, on_ready, cluster)
    finally:
        if listener is not None:
            listener.sock.close()
        lock.__exit__(None, None, None)


async def _serve_locked(
    socket_path: Path,
    listener: api_tcp.Listener | None,
    on_ready: Callable[[], None] | None,
    cluster: ClusterConfig | None = None,
) -> None:
    daemon = Daemon()
    runners = [web.AppRunner(make_app(daemon))]
    if listener is not None:
        runners.append(web.AppRunner(make_app(daemon, tcp=listener)))
    for runner in runners:
        await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        if cluster is not None:
            # aetcd: only for a cluster's node
            from linkd.runtime.cluster import endpoints, membership, overlay_networks
            from linkd.runtime.cluster.overlay_sync import OverlaySync
            from linkd.runtime.cluster.stacks import ClusterStacks

            daemon.cluster = await membership.join(cluster)
            daemon.overlay = await overlay_networks.start(daemon.cluster, daemon.kernel)
            if daemon.overlay is not None:
                daemon.overlay_sync = OverlaySync(
                    daemon.overlay, endpoints.for_member(daemon.cluster), daemon.kernel,
                    lambda: [h.supervisor for h in daemon.stacks.values()])
                daemon.overlay_sync.start()
                daemon.spread = ClusterStacks(daemon, daemon.cluster, daemon.overlay,
                                              daemon.overlay_sync.endpoints)
        recovered = await daemon.recover()
        if recovered:
            log.info("recovered stacks: %s", ", ".join(recovered))
        if daemon.spread is not None:
            daemon.spread.start()  # this node's shares of stacks spanning nodes
        socket_path.parent.mkdir(parents=True, exist_ok=True)
        socket_path.unlink(missing_ok=True)  # stale: the lock says no daemon runs
        old_umask = os.umask(0o177)  # the socket is born 0600: root only, no window
        try:
            await web.UnixSite(runners[0], str(socket_path)).start()
        finally:
            os.umask(old_umask)
        if listener is not None:
            await web.SockSite(runners[1], listener.sock).start()
            log.info("linkd daemon also serving %s (bearer token required)", listener.url)
        # The repair loop is the daemon's own task: cancelled and awaited before the
        # stacks go down; it logs and survives whatever a repair raises, and an error of
        # the loop itself (a bug) ends the daemon instead of vanishing unseen.
        async with asyncio.TaskGroup() as tasks:
            repairing = tasks.create_task(daemon.reconcile_forever(), name="repair")
            keeping = tasks.create_task(daemon.cluster.run(), name="cluster") \
                if daemon.cluster is not None else None
            log.info("linkd daemon %d serving %s", os.getpid(), socket_path)
            if on_ready is not None:
                on_ready()
            await stop.wait()
            repairing.cancel()
            if keeping is not None:
                keeping.cancel()
        log.info("linkd daemon stopping: taking every stack down")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: None)  # a second signal cannot cut teardown
        if daemon.spread is not None:
            await daemon.spread.stop()  # no share is started from here
        if daemon.overlay_sync is not None:
            await daemon.overlay_sync.stop()  # nothing published anew from here
        if daemon.cluster is not None:
            await daemon.cluster.leave()  # gone from the cluster at once, then stacks down
        await daemon.shutdown()
        if daemon.overlay is not None:
            await daemon.overlay.close()  # after the stacks gave their addresses back
        for runner in runners:
            await runner.cleanup()
        socket_path.unlink(missing_ok=True)


def _lock_holder() -> str:
    try:
        pid = daemon_lock().read_text().strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""
