"""How a pull reaches its registry: the registries file, TLS per registry, and the
endpoints tried in turn (docker.io's mirrors; HTTPS before plain HTTP).

**Configuration.** `load_config` reads the registries file (`$LINKD_REGISTRIES_CONFIG`,
else `/etc/linkd/registries.json`, which may be missing) with its environment, parsed
by `linkd.core.registry_config`; that module says what the keys mean and in what order
`endpoints` tries what.

**TLS.** Each HTTPS endpoint gets an `ssl.SSLContext` of its own: the system's trust
store, plus the files of the registry's directory in Docker's certs.d layout, found as
`<dir>/<host[:port]>/` in the first of `/etc/linkd/certs.d` and `/etc/docker/certs.d`
that has one (`$LINKD_CERTS_D`, colon-separated, replaces that list):

    *.crt              CA certificates (PEM) trusted for this registry, beside the system's
    NAME.cert NAME.key a client certificate and its key (PEM), for registries that ask
                       for one; a .cert without its .key, or a .key without its .cert, is
                       an error naming both; of several pairs the first by name is used

Each file is read at most 1 MiB. A registry listed insecure gets a context that checks
no certificate and reads no certs.d (as Docker does). The context serves the session's
every request, so a blob redirected to other storage is verified the same way.

**Endpoints** (`pull_from`). Each is tried with a session of its own. An HTTPS endpoint,
and a mirror with an endpoint after it, is first asked `GET /v2/` once, without retries
(as Docker pings a registry before pulling), so a registry that does not speak TLS or a
mirror that is down costs one connection, not four attempts with backoff. Then:

- HTTPS, then HTTP (a registry that may be spoken to over plain HTTP): HTTP is tried only
  when the HTTPS connection failed without the server speaking TLS (a plain-HTTP server's
  answer to a TLS hello, a refused connection). A certificate that is not trusted, or a
  TLS alert (a client certificate required), is the pull's error: the server speaks TLS,
  and plain HTTP would only hide why.
- a docker.io mirror that fails in any way (no connection, TLS, a 404, 5xx after the
  retries, a wrong digest) is left for the next endpoint, as Docker does; the last
  endpoint's error says what each one before it answered.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import aiohttp

from linkd import files
from linkd.core import registry_config
from linkd.core.registry_config import Endpoint, RegistryConfig
from linkd.errors import ImageError, RegistryError, UsageError

CERTS_ENV = "LINKD_CERTS_D"
CERTS_DIRS = (Path("/etc/linkd/certs.d"), Path("/etc/docker/certs.d"))
FILE_LIMIT = 1 << 20
CONFIG_LIMIT = 1 << 20
_T = TypeVar("_T")
log = logging.getLogger("linkd")


def load_config(env: Mapping[str, str] = os.environ) -> RegistryConfig:
    """The registries file with its environment; no file at the default path is an
    empty one, a missing file named by `$LINKD_REGISTRIES_CONFIG` an error."""
    named = env.get(registry_config.CONFIG_ENV, "")
    path = named or registry_config.DEFAULT_CONFIG
    try:
        text: str | None = files.read_text(path, limit=CONFIG_LIMIT)
    except files.FileProblem as exc:
        if exc.errno != errno.ENOENT or named:
            raise UsageError(f"registry configuration: {exc} (fix it, or point "
                             f"{registry_config.CONFIG_ENV} at another file)") from None
        text = None
    config = registry_config.parse(text, env, path)
    for warning in config.warnings:
        log.warning("registry configuration: %s", warning)
    return config


def certs_dirs(env: Mapping[str, str] = os.environ) -> tuple[Path, ...]:
    listed = [Path(p) for p in env.get(CERTS_ENV, "").split(":") if p]
    return tuple(listed) if listed else CERTS_DIRS


def host_dir(host: str, dirs: Sequence[Path]) -> Path | None:
    """The certs.d directory of registry `host[:port]`: in the first of `dirs` that has
    one."""
    for base in dirs:
        if (base / host).is_dir():
            return base / host
    return None


# Made contexts, by what they were made of: loading the system's trust store costs more
# than a pull's first request, and the daemon pulls from the same registries again and
# again. A context is made anew when its registry's certs.d files change (the system's
# store is read once per process, as Docker's daemon reads it).
_contexts: dict[tuple[object, ...], ssl.SSLContext] = {}


def ssl_context(endpoint: Endpoint, dirs: Sequence[Path]) -> ssl.SSLContext:
    """The TLS context for `endpoint` (see the module's docstring)."""
    where = host_dir(endpoint.host, dirs) if endpoint.verify else None
    key = (endpoint.host, endpoint.verify, where, _identity(where))
    ctx = _contexts.get(key)
    if ctx is None:
        if len(_contexts) >= 64:  # certs.d changed often, or many registries: start over
            _contexts.clear()
        ctx = _contexts[key] = _new_context(endpoint, where)
    return ctx


def _identity(where: Path | None) -> tuple[tuple[str, int, int, int], ...]:
    """What changes when a file of a certs.d directory does."""
    if where is None:
        return ()
    try:
        with os.scandir(where) as entries:
            return tuple(sorted((e.name, *_stat_key(e.stat(follow_symlinks=False)))
                                for e in entries))
    except OSError:
        return ()


def _stat_key(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _new_context(endpoint: Endpoint, where: Path | None) -> ssl.SSLContext:
    if not endpoint.verify:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    ctx = ssl.create_default_context()
    if where is not None:
        _load_dir(ctx, where)
    return ctx


def _read(path: Path) -> bytes:
    try:
        return files.read_bytes(path, limit=FILE_LIMIT)
    except files.FileProblem as exc:
        raise UsageError(f"registry certificates: {exc}") from None


def _load_dir(ctx: ssl.SSLContext, where: Path) -> None:
    """The CAs and client certificate of one certs.d directory, as Docker reads them."""
    try:
        names = sorted(os.listdir(where))
    except OSError as exc:
        raise UsageError(f"registry certificates: {where}: {exc.strerror}") from None
    pairs = []
    for name in names:
        if name.endswith(".crt"):
            try:
                ctx.load_verify_locations(cadata=_read(where / name).decode("ascii"))
            except (ssl.SSLError, UnicodeDecodeError, ValueError) as exc:
                raise UsageError(f"registry certificates: {where / name}: not a PEM CA "
                                 f"certificate ({exc}); a .crt file holds CA certificates, "
                                 "a client certificate is NAME.cert with NAME.key") from None
        elif name.endswith(".cert"):
            key = name.removesuffix(".cert") + ".key"
            if key not in names:
                raise UsageError(f"registry certificates: {where / name} has no key "
                                 f"{where / key}: a client certificate needs both (CA "
                                 "certificates are named .crt)")
            pairs.append((where / name, where / key))
        elif name.endswith(".key") and name.removesuffix(".key") + ".cert" not in names:
            raise UsageError(f"registry certificates: {where / name} has no client "
                             f"certificate {where / name.removesuffix('.key')}.cert: a key "
                             "needs its certificate beside it")
    if pairs:
        cert_file, key_file = pairs[0]
        for path in (cert_file, key_file):
            _read(path)  # its kind and size, before OpenSSL reads it
        try:
            ctx.load_cert_chain(cert_file, key_file)
        except (ssl.SSLError, OSError) as exc:
            raise UsageError(f"registry certificates: {cert_file} and {key_file}: not a PEM "
                             f"certificate and its private key ({exc})") from None


# -- trying endpoints ---------------------------------------------------------------------


class _Failed(Exception):
    """An endpoint that could not be spoken to; `speaks_tls`: its server answered in TLS
    (so plain HTTP is no way out)."""

    def __init__(self, detail: str, *, speaks_tls: bool) -> None:
        super().__init__(detail)
        self.detail = detail
        self.speaks_tls = speaks_tls


def _ssl_error(exc: BaseException) -> ssl.SSLError | None:
    seen: BaseException | None = exc
    for _ in range(6):
        if seen is None:
            return None
        inner_os = getattr(seen, "os_error", None)  # aiohttp's connector errors wrap it
        if isinstance(inner_os, ssl.SSLError):
            return inner_os
        if isinstance(seen, ssl.SSLError) and getattr(seen, "reason", None):
            return seen
        inner = next((a for a in seen.args if isinstance(a, ssl.SSLError)), None)
        if inner is not None:
            return inner
        seen = seen.__cause__ or seen.__context__
    return None


def _failure(exc: BaseException, endpoint: Endpoint, dirs: Sequence[Path],
             config: RegistryConfig) -> _Failed:
    """What to say of a connection to `endpoint` that failed with `exc`."""
    place = f"{dirs[0]}/{endpoint.host}" if dirs else f"certs.d/{endpoint.host}"
    skip = (f"or list {endpoint.host} in {registry_config.INSECURE_KEY} of {config.source} "
            "to skip verification")
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        why = getattr(exc.certificate_error, "verify_message", "") or str(
            exc.certificate_error)
        return _Failed(f"TLS: the certificate of {endpoint.host} is not trusted ({why}): "
                       f"put the certificate of the CA that signed it in {place}/ca.crt "
                       f"({skip})", speaks_tls=True)
    tls = _ssl_error(exc)
    reason = (getattr(tls, "reason", None) or str(tls)) if tls is not None else ""
    if "ALERT" in reason.upper():
        hint = ""
        if any(w in reason.upper() for w in ("CERTIFICATE", "HANDSHAKE_FAILURE", "UNKNOWN_CA")):
            hint = (f": if it asks for a client certificate, put it and its key in "
                    f"{place}/ as NAME.cert and NAME.key")
        return _Failed(f"TLS: {endpoint.host} refused the connection ({reason}){hint}",
                       speaks_tls=True)
    if tls is not None:
        return _Failed(f"TLS handshake with {endpoint.host} failed ({reason})",
                       speaks_tls=False)
    return _Failed(f"cannot connect: {type(exc).__name__}: {exc or 'timed out'}",
                   speaks_tls=False)


async def probe(session: aiohttp.ClientSession, endpoint: Endpoint, dirs: Sequence[Path],
                config: RegistryConfig) -> None:
    """`GET /v2/` once: any HTTP answer (a 401 too) shows the endpoint can be spoken
    to; raises `_Failed` otherwise."""
    try:
        async with session.get(f"{endpoint}/v2/", allow_redirects=False) as resp:
            resp.release()
    except (aiohttp.ClientError, ssl.SSLError, OSError, TimeoutError) as exc:
        raise _failure(exc, endpoint, dirs, config) from None


def _tried(failed: list[str]) -> str:
    return f" (tried before: {'; '.join(failed)})" if failed else ""


async def pull_from(endpoints: Sequence[Endpoint],
                    attempt: Callable[[Endpoint, aiohttp.ClientSession], Awaitable[_T]],
                    label: str, config: RegistryConfig, *,
                    timeout: aiohttp.ClientTimeout,
                    env: Mapping[str, str] = os.environ) -> _T:
    """`attempt` on the first of `endpoints` that can be spoken to and serves the pull
    (see the module's docstring); `label` (the reference) for messages."""
    dirs = certs_dirs(env)
    failed: list[str] = []
    for n, endpoint in enumerate(endpoints):
        last = n == len(endpoints) - 1
        ctx: ssl.SSLContext | bool = True  # a redirect to HTTPS storage: verified
        if endpoint.scheme == "https":
            ctx = await asyncio.to_thread(ssl_context, endpoint, dirs)
        connector = aiohttp.TCPConnector(ssl=ctx)
        async with aiohttp.ClientSession(timeout=timeout, trust_env=False,
                                         connector=connector) as session:
            if endpoint.scheme == "https" or (endpoint.mirror and not last):
                try:
                    await probe(session, endpoint, dirs, config)
                except _Failed as exc:
                    if last or (exc.speaks_tls and not endpoint.mirror):
                        raise RegistryError(endpoint.host, label,
                                            exc.detail + _tried(failed)) from None
                    failed.append(f"{endpoint}: {exc.detail}")
                    continue
            try:
                return await attempt(endpoint, session)
            except (RegistryError, ImageError) as exc:
                if not endpoint.mirror or last:
                    if isinstance(exc, RegistryError) and failed:
                        raise RegistryError(exc.registry, exc.reference,
                                            exc.detail + _tried(failed)) from None
                    raise
                detail = exc.detail if isinstance(exc, RegistryError) else str(exc)
                failed.append(f"{endpoint}: {detail}")
    raise RegistryError(endpoints[-1].host if endpoints else "", label,
                        "no endpoint to pull from" + _tried(failed))
