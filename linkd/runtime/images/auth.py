"""Answering a registry's `WWW-Authenticate` challenge (Docker's registry auth spec).

A registry that wants more than an anonymous request answers 401 with a challenge:

    Bearer realm="https://auth.example/token",service="reg.example",scope="repository:a/b:pull"
        a token from the realm: GET realm?service=...&scope=... (with Basic user:password
        when there are credentials, anonymously when not); with an identity token, the
        OAuth2 form POST (grant_type=refresh_token) Docker uses. The answer's `token` or
        `access_token` goes in `Authorization: Bearer` of every request after.
    Basic realm="..."
        `Authorization: Basic base64(user:password)` on every request.

Credentials are looked up only when a challenge asks for them (no credential helper runs
for a registry that serves anonymously), at most once per pull. They go over plain HTTP
only to a realm linkd would speak plain HTTP to anyway (loopback, or listed insecure).
No secret and no token is logged or put in a message: `AuthFailure` says which registry,
whether credentials were sent and from where, and what to run.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import aiohttp

from linkd.core.docker_config import Credentials
from linkd.runtime.images.credentials import Found

TOKEN_LIMIT = 64 << 10
CLIENT_ID = "linkd"

Lookup = Callable[[], Awaitable[Found | None]]


class AuthFailure(Exception):
    """Why a challenge could not be answered; the caller names the pull or login.
    `refused`: the token service turned down the credentials that were sent."""

    def __init__(self, detail: str, *, refused: bool = False) -> None:
        super().__init__(detail)
        self.refused = refused


_PARAM = re.compile(r'([A-Za-z_]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """(scheme lower-cased, parameters) of a `WWW-Authenticate` header (RFC 7235)."""
    kind, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3))
              for m in _PARAM.finditer(rest)}
    return kind.lower(), {k: v.replace('\\"', '"') for k, v in params.items()}


def basic(creds: Credentials) -> str:
    return "Basic " + base64.b64encode(
        f"{creds.username}:{creds.password}".encode()).decode()


class Auth:
    """The credentials of one registry (`server`: a reference's domain, as `linkd
    login` names it) for one pull or login: looked up by `lookup` when first needed."""

    def __init__(self, server: str, lookup: Lookup, *,
                 plain_http_ok: Callable[[str], bool]) -> None:
        self.server = server
        self._lookup = lookup
        self._found: Found | None = None
        self._looked = False
        self.plain_http_ok = plain_http_ok

    async def found(self) -> Found | None:
        if not self._looked:
            self._found = await self._lookup()
            self._looked = True
        return self._found

    def used(self) -> Found | None:
        """The credentials looked up so far (None when none were, or there are none)."""
        return self._found

    def hint(self, status: int = 401) -> str:
        """What a 401 (or 403) means and what to run, given what was sent."""
        if self._found is None:
            return (f"the registry wants credentials, and linkd has none for "
                    f"{self.server}; run `linkd login {self.server}`")
        user = self._found.credentials.username
        who = f" (user {user})" if user else " (an identity token)"
        if status == 403:
            return (f"the credentials for {self.server}{who} from {self._found.origin} "
                    "are not allowed this; log in as a user who may pull it "
                    f"(`linkd login {self.server}`)")
        return (f"the registry refused the credentials for {self.server}{who} from "
                f"{self._found.origin}; check them and run `linkd login {self.server}`")

    async def answer(self, session: aiohttp.ClientSession, challenge: str,
                     default_scope: str | None) -> str:
        """The `Authorization` value that answers `challenge`."""
        kind, params = parse_challenge(challenge)
        if kind == "basic":
            found = await self.found()
            if found is None or not found.credentials.password:
                raise AuthFailure(f"HTTP 401: {self.hint()}" if found is None else
                                  f"HTTP 401: the registry wants a user and password "
                                  f"(Basic), and linkd has only an identity token for "
                                  f"{self.server}; run `linkd login {self.server}`")
            return basic(found.credentials)
        realm = params.get("realm", "")
        if kind != "bearer" or not realm.startswith(("https://", "http://")):
            raise AuthFailure(f"HTTP 401 with a challenge linkd does not answer "
                              f"({kind.capitalize() or 'none'}"
                              f"{'' if realm else ', no realm'})")
        scope = params.get("scope") or default_scope
        token = await self._token(session, realm, params.get("service"), scope)
        return f"Bearer {token}"

    async def _token(self, session: aiohttp.ClientSession, realm: str,
                     service: str | None, scope: str | None) -> str:
        found = await self.found()
        creds = found.credentials if found else None
        if creds and realm.startswith("http://") and not self.plain_http_ok(
                urlsplit(realm).netloc):
            raise AuthFailure(f"the token realm {realm} is plain HTTP on another host; "
                              "linkd sends no credentials there (list it in "
                              "LINKD_INSECURE_REGISTRIES if it is meant)")
        try:
            if creds and creds.identity_token:
                form = {"grant_type": "refresh_token", "refresh_token": creds.identity_token,
                        "client_id": CLIENT_ID, **({"service": service} if service else {}),
                        **({"scope": scope} if scope else {})}
                request = session.post(realm, data=form)
            else:
                query = {**({"service": service} if service else {}),
                         **({"scope": scope} if scope else {}),
                         **({"account": creds.username} if creds and creds.username else {})}
                headers = {"Authorization": basic(creds)} if creds and creds.password else {}
                request = session.get(realm, params=query, headers=headers)
            async with request as resp:
                if resp.status in (401, 403):
                    raise AuthFailure(f"token from {realm}: HTTP {resp.status} "
                                      f"{resp.reason}: {self.hint()}", refused=bool(creds))
                if resp.status != 200:
                    raise AuthFailure(f"token from {realm}: HTTP {resp.status} {resp.reason}")
                body = await resp.content.read(TOKEN_LIMIT + 1)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AuthFailure(f"token from {realm}: {type(exc).__name__}: "
                              f"{exc or 'timed out'}") from None
        try:
            doc = json.loads(body) if len(body) <= TOKEN_LIMIT else None
        except (ValueError, UnicodeDecodeError):
            doc = None
        token = (doc.get("token") or doc.get("access_token")) if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token or not token.isprintable():
            raise AuthFailure(f"token from {realm}: the answer holds no token")
        return token

