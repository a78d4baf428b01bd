"""Registry credentials where Docker keeps them: `config.json` and credential helpers.

The file is `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json` of the user
running linkd (`$HOME`, else that user's home in the password database): the daemon,
which pulls for `up -d`, reads root's. It is read whole at each pull or login (at most
1 MiB, a regular file), parsed by linkd.core.docker_config, and written back atomically
(a temporary file renamed over it), 0600, with every key linkd does not know kept.

A credential helper is the program `docker-credential-NAME` on PATH, spoken to as
Docker does: `get` (the server on stdin; `{"ServerURL", "Username", "Secret"}` on
stdout, `Username` `<token>` meaning the secret is an identity token), `store` (that
JSON on stdin) and `erase` (the server on stdin). A helper that has nothing for a
registry says so and exits non-zero; linkd then uses the file's own entry, if any.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import pwd
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from linkd.core import docker_config as dc
from linkd.core.docker_config import Credentials
from linkd.errors import CredentialError
from linkd.files import FileProblem, read_text
from linkd.runtime.stack.store import write_atomic

LIMIT = 1 << 20
HELPER_TIMEOUT = 30.0
_HELPER_OUTPUT = 64 << 10
TOKEN_USER = "<token>"  # a helper's Username for an identity token
_NOT_FOUND = "credentials not found"  # what docker-credential-helpers say for none


@dataclass(frozen=True)
class Found:
    """Credentials for a registry, and where they came from (for messages: a file's
    path or a helper's name, never the secret)."""

    credentials: Credentials
    origin: str


def config_path(env: Mapping[str, str] = os.environ) -> Path:
    if env.get("DOCKER_CONFIG"):
        return Path(env["DOCKER_CONFIG"]) / "config.json"
    home = env.get("HOME")
    if not home:
        try:
            home = pwd.getpwuid(os.geteuid()).pw_dir
        except KeyError:
            raise CredentialError(f"no HOME, and user {os.geteuid()} has no home in the "
                                  "password database: set DOCKER_CONFIG to the directory "
                                  "of config.json") from None
    return Path(home) / ".docker" / "config.json"


def _read(path: Path) -> str:
    """The file's text; "" when there is none."""
    try:
        return read_text(path, limit=LIMIT)
    except FileProblem as exc:
        if exc.errno == errno.ENOENT:
            return ""
        raise CredentialError(f"{path}: {exc.strerror}") from None


def load(env: Mapping[str, str] = os.environ) -> dc.DockerConfig:
    path = config_path(env)
    return dc.parse(_read(path), str(path))


async def lookup(host: str, env: Mapping[str, str] = os.environ) -> Found | None:
    """The credentials for the registry `host` (a reference's domain), or None."""
    config = await asyncio.to_thread(load, env)
    name = dc.helper(config, host)
    if name:
        creds = await helper_get(name, dc.server_key(host), env)
        if creds:
            return Found(creds, f"credential helper docker-credential-{name}")
    entry = dc.find(config, host)
    return Found(entry[1], config.source) if entry else None


async def helper_get(name: str, server: str, env: Mapping[str, str]) -> Credentials | None:
    code, out = await _run_helper(name, "get", server.encode(), env)
    if code != 0:
        if _NOT_FOUND in out.lower():
            return None
        raise _helper_failed(name, "get", server, code, out)
    try:
        doc = json.loads(out)
        user, secret = doc["Username"], doc["Secret"]
        if not isinstance(user, str) or not isinstance(secret, str):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise CredentialError(f"credential helper docker-credential-{name} get {server}: "
                              "its answer is not {\"Username\", \"Secret\"} JSON") from None
    if user == TOKEN_USER:
        return Credentials(identity_token=secret) or None
    return Credentials(user, secret) or None


async def helper_store(name: str, server: str, creds: Credentials,
                       env: Mapping[str, str]) -> None:
    user, secret = ((TOKEN_USER, creds.identity_token) if creds.identity_token
                    else (creds.username, creds.password))
    data = json.dumps({"ServerURL": server, "Username": user, "Secret": secret}).encode()
    code, out = await _run_helper(name, "store", data, env)
    if code != 0:
        raise _helper_failed(name, "store", server, code, out)


async def helper_erase(name: str, server: str, env: Mapping[str, str]) -> None:
    code, out = await _run_helper(name, "erase", server.encode(), env)
    if code != 0 and _NOT_FOUND not in out.lower():
        raise _helper_failed(name, "erase", server, code, out)


def _helper_failed(name: str, action: str, server: str, code: int, out: str
                   ) -> CredentialError:
    said = " ".join(out.split())[:200]
    return CredentialError(f"credential helper docker-credential-{name} {action} {server}: "
                           f"exit status {code}{': ' + said if said else ''}")


async def _run_helper(name: str, action: str, data: bytes, env: Mapping[str, str]
                      ) -> tuple[int, str]:
    """(exit status, stdout) of `docker-credential-NAME ACTION` given `data`; its
    stderr goes nowhere (a helper may print secrets' context there)."""
    program = shutil.which(f"docker-credential-{name}", path=env.get("PATH", os.defpath))
    if program is None:
        raise CredentialError(f"credential helper docker-credential-{name} is not on PATH "
                              f"(named by {config_path(env)}); install it, or remove "
                              "credsStore/credHelpers from the file")
    proc = await asyncio.create_subprocess_exec(
        program, action, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL, env=dict(env))
    try:
        out, _ = await asyncio.wait_for(proc.communicate(data), HELPER_TIMEOUT)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise CredentialError(f"credential helper docker-credential-{name} {action}: no "
                              f"answer in {HELPER_TIMEOUT:.0f} s") from None
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out[:_HELPER_OUTPUT].decode(errors="replace")


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(path, text.encode(), 0o600)


async def save_login(host: str, creds: Credentials, env: Mapping[str, str] = os.environ
                     ) -> str:
    """Keep `creds` for `host` as `docker login` does (in its helper, if one is
    configured, with an empty entry in the file); returns where they went."""
    path = config_path(env)
    text = await asyncio.to_thread(_read, path)
    config = dc.parse(text, str(path))
    name = dc.helper(config, host)
    if name:
        await helper_store(name, dc.server_key(host), creds, env)
    new = dc.with_login(text, str(path), host, None if name else creds)
    await asyncio.to_thread(_write, path, new)
    return f"credential helper docker-credential-{name}" if name else str(path)


async def remove_login(host: str, env: Mapping[str, str] = os.environ) -> list[str]:
    """Forget `host`'s credentials (file entries, and the helper's); what was removed."""
    path = config_path(env)
    text = await asyncio.to_thread(_read, path)
    config = dc.parse(text, str(path))
    removed = []
    if name := dc.helper(config, host):
        await helper_erase(name, dc.server_key(host), env)
        removed.append(f"docker-credential-{name}")
    new, gone = dc.without_login(text, str(path), host)
    if gone:
        await asyncio.to_thread(_write, path, new)
        removed.extend(f"{path}: {key}" for key in gone)
    return removed
