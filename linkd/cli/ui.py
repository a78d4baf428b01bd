"""`linkd ui [--port N]`: the daemon's topology page (served at /ui/ on its unix socket)
made reachable for a browser, on 127.0.0.1 only, until interrupted.

A small server in this process passes GET requests for /ui/ and /v1/ on to the daemon's
socket, and nothing else: the page is read-only, and so is the way to it. Every request
carries the random token of this run (`?token=`, in the URL printed), the event stream
too; a request whose Host is not this address (DNS rebinding: a name of an attacker's
pointed at 127.0.0.1), or that another origin's page makes (`Origin`, `Sec-Fetch-Site`),
is refused. Nothing opens a browser.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import re
import secrets
import signal
import urllib.parse
from collections.abc import Awaitable, Callable

from aiohttp import ClientSession, ClientTimeout, UnixConnector, web

from linkd import paths
from linkd.errors import NotFoundError

FORWARDED = ("Content-Type", "Content-Security-Policy", "Cache-Control",
             "X-Content-Type-Options")
TOKEN: web.AppKey[str] = web.AppKey("token", str)
SESSION: web.AppKey[ClientSession] = web.AppKey("session", ClientSession)
PORT: web.AppKey[list[int]] = web.AppKey("port", list[int])


def cmd_ui(args: argparse.Namespace) -> int:
    socket_path = paths.socket_path()
    if not socket_path.exists():
        raise NotFoundError(f"no linkd daemon answers at {socket_path}: `linkd up -d` starts "
                            "one, or `linkd daemon`")
    asyncio.run(_serve(args.port, str(socket_path)))
    return 0


async def _serve(port: int, socket_path: str) -> None:
    app = web.Application(middlewares=[_guard])
    app[TOKEN] = secrets.token_urlsafe(24)
    app[PORT] = [port]
    app.router.add_get("/ui/", _pass_on)
    app.router.add_get("/ui/{tail:.*}", _pass_on)
    app.router.add_get("/v1/{tail:.*}", _pass_on)
    async with ClientSession(connector=UnixConnector(path=socket_path),
                             timeout=ClientTimeout(total=None, sock_connect=5)) as session:
        app[SESSION] = session
        # A browser that goes away ends its request (the event stream waits for events
        # otherwise), and an interrupt ends the rest within a second.
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True,
                               shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        app[PORT][0] = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        print(f"http://127.0.0.1:{app[PORT][0]}/ui/?token={app[TOKEN]}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()


@web.middleware
async def _guard(request: web.Request,
                 handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                 ) -> web.StreamResponse:
    port = request.app[PORT][0]
    here = {f"127.0.0.1:{port}", f"localhost:{port}"}
    if request.host not in here:
        raise web.HTTPForbidden(text="this address only (Host): the page is not served under "
                                     "other names\n")
    origin = request.headers.get("Origin")
    if origin is not None and origin not in {f"http://{h}" for h in here}:
        raise web.HTTPForbidden(text="requests from other origins are refused\n")
    if request.headers.get("Sec-Fetch-Site") == "cross-site":
        raise web.HTTPForbidden(text="requests from other sites are refused\n")
    given = request.query.get("token", "")
    if not hmac.compare_digest(given.encode(), request.app[TOKEN].encode()):
        raise web.HTTPForbidden(text="the token of this `linkd ui` run is required "
                                     "(?token=, in the URL it printed)\n")
    return await handler(request)


# The page's own files, as index.html names them (`src="ui.js"`): each gets the token.
_PAGE_FILE = re.compile(r'\b(src|href)="([\w.-]+)"')


async def _pass_on(request: web.Request) -> web.StreamResponse:
    """The daemon's answer to the same GET (less the token), streamed as it comes; the
    page's HTML with the token added to the files it loads, which need it too."""
    query = [(k, v) for k, v in request.query.items() if k != "token"]
    async with request.app[SESSION].get(f"http://linkd{request.path}", params=query) as got:
        headers = {k: got.headers[k] for k in FORWARDED if k in got.headers}
        if request.path.startswith("/ui/") and got.content_type == "text/html":
            token = urllib.parse.quote(request.app[TOKEN])
            page = _PAGE_FILE.sub(lambda m: f'{m[1]}="{m[2]}?token={token}"',
                                  await got.text())
            return web.Response(status=got.status, text=page, headers=headers)
        response = web.StreamResponse(status=got.status, headers=headers)
        await response.prepare(request)
        async for chunk in got.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response
