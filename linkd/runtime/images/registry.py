"""One repository of an OCI distribution registry, over its /v2/ HTTP API (aiohttp).

What a pull asks (distribution-spec, "Pulling manifests" and "Pulling blobs"):

    GET /v2/<path>/manifests/<tag or digest>   Accept: the four manifest types below;
                                               a registry answers 404 to a request for
                                               an OCI manifest that does not accept it
    GET /v2/<path>/blobs/<digest>              the config and each layer (often a
                                               redirect to other storage, followed)

Manifests are read whole, at most 8 MiB; blobs are streamed into a file, hashed and
counted as they come, and refused the moment they run past their descriptor's size. A
schema-1 manifest (`application/vnd.docker.distribution.manifest.v1+*`, Docker before
1.10) is refused: it carries no config and no diff_ids to check layers against.

Transport: which endpoints a pull tries (mirrors, HTTPS, plain HTTP for a registry on
loopback or listed insecure) and their TLS are linkd.runtime.images.transport's; a
`Repository` speaks to the one it is given. 5xx, 429 and broken
connections are retried with exponential backoff, a blob from where it broke off (HTTP
Range) when the registry serves ranges. A 401 is answered once per pull by the challenge
flow of Docker's registry auth spec (linkd.runtime.images.auth: a Bearer token from the
challenge's realm, anonymous or with the credentials Docker's config.json holds for the
registry, or Basic); a 401 or 403 after that says which registry, whether credentials
were sent, and to run `linkd login HOST`. A token goes only to the registry: a blob's
redirect to other storage is followed without it (aiohttp drops `Authorization` across
origins), and no message carries it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TypeVar

import aiohttp

from linkd.core import image_format as fmt
from linkd.core.image_format import Descriptor
from linkd.errors import ImageError, RegistryError
from linkd.runtime.images import credentials, transport
from linkd.runtime.images.auth import Auth, AuthFailure
from linkd.runtime.images.auth import parse_challenge as parse_challenge  # tests use it here
from linkd.runtime.images.layers import check_digest

SCHEMA1_TYPES = frozenset({
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
})
MANIFEST_ACCEPT = ", ".join(
    [fmt.OCI_INDEX, fmt.OCI_MANIFEST, fmt.DOCKER_LIST, fmt.DOCKER_MANIFEST])
MANIFEST_LIMIT = 8 << 20
_CHUNK = 1 << 16
_T = TypeVar("_T")


def scheme(host: str, env: Mapping[str, str] = os.environ) -> str:
    """`http` for a registry plain HTTP is allowed to (on loopback, or listed insecure
    in the registries file or LINKD_INSECURE_REGISTRIES), else `https`: where a token
    realm may be asked over plain HTTP, and where `linkd login` checks credentials."""
    return "http" if transport.load_config(env).plain_http(host) else "https"


async def _no_credentials() -> credentials.Found | None:
    return None


def auth_for(server: str, env: Mapping[str, str] = os.environ) -> Auth:
    """The credentials Docker's config holds for `server` (a reference's domain, as
    `linkd login` names it), looked up when a registry first asks."""

    async def lookup() -> credentials.Found | None:
        return await credentials.lookup(server, env)

    return Auth(server, lookup, plain_http_ok=lambda host: scheme(host, env) == "http")


async def _read(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body, but never more than `limit` + 1 bytes of it (so an oversized one is
    known as such without being held)."""
    parts: list[bytes] = []
    count = 0
    async for chunk in resp.content.iter_chunked(_CHUNK):
        parts.append(chunk)
        count += len(chunk)
        if count > limit:
            break
    return b"".join(parts)[:limit + 1]


class _Retry(Exception):
    """A failure worth another attempt: a 5xx, a 429, a broken connection."""


def _media_type(header: str | None, body: bytes) -> str:
    media = (header or "").partition(";")[0].strip()
    if media and media not in ("application/json", "text/plain"):
        return media
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return media
    if isinstance(doc, dict):
        if doc.get("schemaVersion") == 1:
            return next(iter(SCHEMA1_TYPES))
        if isinstance(doc.get("mediaType"), str):
            return str(doc["mediaType"])
        if "manifests" in doc:
            return fmt.OCI_INDEX
    return fmt.OCI_MANIFEST if media in ("", "application/json") else media


class _Received:
    """What a blob's download has received so far: its length and running hash (none
    when the digest is checked by whoever reads the file)."""

    def __init__(self, *, hashed: bool = True) -> None:
        self.hashed = hashed
        self.restart()

    def restart(self) -> None:
        self.count = 0
        self.hash = hashlib.sha256() if self.hashed else None

    def add(self, chunk: bytes) -> None:
        self.count += len(chunk)
        if self.hash is not None:
            self.hash.update(chunk)


class Repository:
    """One repository (`path`) on one registry (`host`), for one pull (`label`: the
    reference, for messages). `auth` answers the registry's challenge (anonymously
    when it holds no credentials); the answer is kept for the pull's other requests."""

    attempts = 4
    backoff = 0.25  # seconds before the second attempt, doubling after each
    renew_after = 60.0  # seconds after which a 401 to a Bearer token asks for a new one

    def __init__(self, session: aiohttp.ClientSession, host: str, path: str, label: str, *,
                 env: Mapping[str, str] = os.environ, auth: Auth | None = None) -> None:
        self.session = session
        self.host = host
        self.path = path
        self.label = label
        self.base = f"{scheme(host, env)}://{host}/v2/{path}"
        self.auth = auth or Auth(host, _no_credentials,
                                 plain_http_ok=lambda h: scheme(h, env) == "http")
        self.authorization: str | None = None
        self._challenged = False
        self._answered_at = 0.0
        self._auth_lock = asyncio.Lock()

    def error(self, detail: str) -> RegistryError:
        return RegistryError(self.host, self.label, detail)

    async def _retrying(self, what: str, attempt: Callable[[], Awaitable[_T]]) -> _T:
        for n in range(self.attempts):
            try:
                return await attempt()
            except _Retry as exc:
                if n + 1 == self.attempts:
                    raise self.error(f"{what}: {exc} (gave up after {self.attempts} "
                                     "attempts)") from None
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError,
                    TimeoutError) as exc:
                if n + 1 == self.attempts:
                    raise self.error(f"{what}: {type(exc).__name__}: {exc or 'timed out'} "
                                     f"(gave up after {self.attempts} attempts)") from None
            await asyncio.sleep(self.backoff * 2 ** n)
        raise AssertionError("unreachable")

    def _headers(self, accept: str | None, extra: Mapping[str, str]) -> dict[str, str]:
        headers = {"Accept": accept} if accept else {}
        headers.update(extra)
        if self.authorization:
            headers["Authorization"] = self.authorization
        return headers

    async def _open(self, url: str, what: str, accept: str | None = None, *,
                    extra: Mapping[str, str] | None = None) -> aiohttp.ClientResponse:
        """The response to a GET, 2xx; the caller releases it. Raises _Retry for what
        may pass, RegistryError for what will not."""
        headers = self._headers(accept, extra or {})
        resp = await self.session.get(url, headers=headers)
        if resp.status == 401 and self._may_answer(headers.get("Authorization")):
            challenge = resp.headers.get("WWW-Authenticate", "")
            resp.release()
            await self._authenticate(challenge, headers.get("Authorization"))
            resp = await self.session.get(url, headers=self._headers(accept, extra or {}))
        if resp.status >= 500 or resp.status == 429:
            resp.release()
            raise _Retry(f"HTTP {resp.status} {resp.reason}")
        if resp.status >= 300:
            detail = await self._explain(resp)
            resp.release()
            raise self.error(f"{what}: HTTP {resp.status} {resp.reason}{detail}")
        return resp

    def _may_answer(self, sent: str | None) -> bool:
        """Whether a 401 to a request that carried `sent` is worth answering: the first
        of the pull, one sent before the answer came, or a Bearer token old enough to
        have expired (Docker Hub's last 5 minutes; a pull of large layers lasts more)."""
        if not self._challenged or sent != self.authorization:
            return True
        return bool(sent and sent.startswith("Bearer ")
                    and time.monotonic() - self._answered_at > self.renew_after)

    async def _authenticate(self, challenge: str, sent: str | None) -> None:
        """Answer the registry's challenge, once for the pull: the layers fetched at
        once wait for the first of them to do it."""
        async with self._auth_lock:
            if self._challenged and self.authorization != sent:
                return  # answered while this request was under way
            try:
                self.authorization = await self.auth.answer(
                    self.session, challenge, f"repository:{self.path}:pull")
            except AuthFailure as exc:
                raise self.error(str(exc)) from None
            self._challenged = True
            self._answered_at = time.monotonic()

    async def _explain(self, resp: aiohttp.ClientResponse) -> str:
        """The registry's own words (distribution-spec error codes), if it gave any."""
        try:
            doc = json.loads(await _read(resp, 64 << 10))
            errors = doc.get("errors") or []
            said = "; ".join(f"{e.get('code', '')}: {e.get('message', '')}" for e in errors
                             if isinstance(e, dict))
        except (ValueError, AttributeError, aiohttp.ClientError, UnicodeDecodeError):
            said = ""
        hint = (" (the registry does not know this repository or tag)"
                if resp.status == 404 else
                f" ({self.auth.hint(resp.status)})" if resp.status in (401, 403) else "")
        return f" ({said}){hint}" if said else hint

    async def manifest(self, ref: str, expect: Descriptor | None = None) -> tuple[str, bytes]:
        """(media type, bytes) of the manifest or index `ref` names; checked against
        `ref` when it is a digest, and against `expect` (a descriptor from an index)."""
        what = f"manifest {ref}"

        async def attempt() -> tuple[str, bytes, str]:
            resp = await self._open(f"{self.base}/manifests/{ref}", what, MANIFEST_ACCEPT)
            try:
                body = await _read(resp, MANIFEST_LIMIT)
                header = resp.headers.get("Content-Type")
                said = resp.headers.get("Docker-Content-Digest", "")
            finally:
                resp.release()
            if len(body) > MANIFEST_LIMIT:
                raise ImageError(self.label, what, "size", "a manifest larger than 8 MiB")
            return _media_type(header, body), body, said

        media, body, said = await self._retrying(what, attempt)
        if media in SCHEMA1_TYPES:
            raise self.error(f"{what} is a schema 1 manifest ({media}), which linkd does "
                             "not read: it has no config to check layers against; push the "
                             "image again with a current tool (it writes schema 2 or OCI)")
        if media not in fmt.INDEX_TYPES | fmt.MANIFEST_TYPES:
            raise self.error(f"{what}: not an image manifest or index: {media or 'no type'}")
        got = "sha256:" + hashlib.sha256(body).hexdigest()
        if ref.startswith("sha256:"):
            check_digest(self.label, what, got, ref)
        elif said.startswith("sha256:"):  # by tag: the digest the registry says it has
            check_digest(self.label, what, got, said)
        if expect is not None and len(body) != expect.size:
            raise ImageError(self.label, what, "size mismatch",
                             f"{len(body)} bytes, the index says {expect.size}")
        return media, body

    async def blob(self, desc: Descriptor, dest: Path, entry: str,
                   received: Callable[[int], None] | None = None, *,
                   digest_checked_by_reader: bool = False) -> None:
        """Stream the blob `desc` into `dest`, checking its size as it comes and its
        digest at the end; nothing is kept of a blob that fails. A retry after a broken
        connection asks only for the rest (HTTP Range), and starts again if the registry
        sends the whole blob instead (a 200, not a 206). `received` is told the bytes
        held so far after each chunk, and 0 when the file starts over (a progress
        display, a reader of the growing file). `digest_checked_by_reader`: the caller's
        reader of the file hashes every byte of it anyway and checks the digest before
        it uses any (a pull's unpacking): the size is checked here, the digest there,
        off the event loop."""
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600)
        got = _Received(hashed=not digest_checked_by_reader)

        async def attempt() -> None:
            extra = {"Range": f"bytes={got.count}-"} if got.count else {}
            resp = await self._open(f"{self.base}/blobs/{desc.digest}", entry, extra=extra)
            try:
                if got.count and (resp.status != 206 or not resp.headers.get(
                        "Content-Range", "").startswith(f"bytes {got.count}-")):
                    # The whole blob again (200), or another range: start over.
                    os.ftruncate(fd, 0)
                    os.lseek(fd, 0, os.SEEK_SET)
                    got.restart()
                    if received is not None:
                        received(0)  # a reader of the file starts over too
                    if resp.status == 206:
                        raise _Retry("the registry sent another range than asked for")
                async for chunk in resp.content.iter_chunked(_CHUNK):
                    if got.count + len(chunk) > desc.size:
                        raise ImageError(self.label, entry, "size mismatch",
                                         f"more than {desc.size} bytes, the size its "
                                         "descriptor says")
                    os.write(fd, chunk)
                    got.add(chunk)
                    if received is not None:
                        received(got.count)
            finally:
                resp.release()

        try:
            try:
                await self._retrying(entry, attempt)
            finally:
                os.close(fd)
            if got.count != desc.size:
                raise ImageError(self.label, entry, "size mismatch",
                                 f"{got.count} bytes, the descriptor says {desc.size}")
            if got.hash is not None:
                check_digest(self.label, entry, "sha256:" + got.hash.hexdigest(),
                             desc.digest)
        except BaseException:
            dest.unlink(missing_ok=True)
            raise

    async def small_blob(self, desc: Descriptor, entry: str) -> bytes:
        """A config blob, read whole (at most 8 MiB) and checked."""
        if desc.size > MANIFEST_LIMIT:
            raise ImageError(self.label, entry, "size", "a config larger than 8 MiB")

        async def attempt() -> bytes:
            resp = await self._open(f"{self.base}/blobs/{desc.digest}", entry)
            try:
                return await _read(resp, desc.size)
            finally:
                resp.release()

        data = await self._retrying(entry, attempt)
        if len(data) != desc.size:
            raise ImageError(self.label, entry, "size mismatch",
                             f"{len(data)} bytes, the descriptor says {desc.size}")
        check_digest(self.label, entry, "sha256:" + hashlib.sha256(data).hexdigest(),
                     desc.digest)
        return data
