"""`linkd login` and `linkd logout`: credentials checked against the registry, then kept
where Docker keeps them (linkd.runtime.images.credentials).

A login asks the registry's `/v2/` with the challenge flow of a pull
(linkd.runtime.images.auth, no scope: the token only has to be granted) and writes
nothing unless the registry let it in. The server is named as `docker login` names it:
`host[:port]`, Docker Hub by default (`docker.io`; its key in the file is
`https://index.docker.io/v1/`); a URL (`https://host:port/`) is read as its host.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import aiohttp

from linkd.core import docker_config as dc
from linkd.core import reference
from linkd.core.docker_config import Credentials
from linkd.errors import CredentialError, UsageError
from linkd.runtime.images import credentials
from linkd.runtime.images.auth import Auth, AuthFailure
from linkd.runtime.images.credentials import Found
from linkd.runtime.images.registry import scheme

_ORIGIN = "the command line"


def server_name(text: str | None) -> str:
    """`linkd login`'s SERVER as a registry host (`docker.io` for Docker Hub)."""
    host = dc.hostname(text or reference.DEFAULT_DOMAIN)
    if not host or any(c.isspace() or c in "@?#" for c in host):
        raise UsageError(f"SERVER {text!r}: not a registry host (HOST[:PORT])")
    return host


def api_host(server: str) -> str:
    return reference.DOCKER_HUB_API if server == reference.DEFAULT_DOMAIN else server


async def verify(server: str, creds: Credentials, env: Mapping[str, str] = os.environ
                 ) -> None:
    """Raise CredentialError unless the registry `server` accepts `creds`."""
    host = api_host(server)
    url = f"{scheme(host, env)}://{host}/v2/"
    refused = (f"login to {server}: the registry refused "
               f"{'user ' + creds.username if creds.username else 'the identity token'}")

    async def given() -> Found | None:
        return Found(creds, _ORIGIN)

    auth = Auth(server, given, plain_http_ok=lambda h: scheme(h, env) == "http")
    timeout = aiohttp.ClientTimeout(total=60, sock_connect=30)
    try:
        async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as session:
            async with session.get(url) as resp:
                status, challenge = resp.status, resp.headers.get("WWW-Authenticate", "")
            if status == 401:
                try:
                    authorization = await auth.answer(session, challenge, None)
                except AuthFailure as exc:
                    if exc.refused:
                        raise CredentialError(f"{refused} (its token service said no); "
                                              "nothing was written") from None
                    raise CredentialError(f"login to {server}: {exc}") from None
                async with session.get(url, headers={"Authorization": authorization}) as resp:
                    status = resp.status
                if status in (401, 403):
                    raise CredentialError(f"{refused} (HTTP {status}); nothing was written")
            if status >= 300:
                raise CredentialError(f"login to {server}: {url}: HTTP {status}; is it a "
                                      "registry?")
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise CredentialError(f"login to {server}: {url}: {type(exc).__name__}: "
                              f"{exc or 'timed out'}") from None


async def login(server: str, creds: Credentials, env: Mapping[str, str] = os.environ) -> str:
    """Check `creds` against `server`, then keep them; returns where they went."""
    await verify(server, creds, env)
    return await credentials.save_login(server, creds, env)


async def logout(server: str, env: Mapping[str, str] = os.environ) -> list[str]:
    return await credentials.remove_login(server, env)
