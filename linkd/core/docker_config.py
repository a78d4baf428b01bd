"""Docker's `config.json`, the registry-credentials part: read, looked up, rewritten.

The file is a JSON object; linkd reads three of its keys and keeps every other one as
it found it when it writes the file back:

    "auths":       {SERVER: ENTRY, ...}   ENTRY: {"auth": base64("user:password")}, or
                                          {"username": ..., "password": ...}, and/or
                                          {"identitytoken": ...}; {} when a helper holds
                                          the secret
    "credsStore":  NAME                   the helper `docker-credential-NAME` holds every
                                          registry's credentials
    "credHelpers": {SERVER: NAME, ...}    ... or this registry's

SERVER is written many ways: `host:port`, `https://host:port/`, `http://host/v2/`.
Docker finds a registry's entry by its exact key first, then by any key that is that
host once its scheme and path are cut off; linkd does the same. Docker Hub's key is
`https://index.docker.io/v1/` (what `docker login` writes); `docker.io`,
`index.docker.io` and `registry-1.docker.io` are read as Hub too.

Pure: text in, frozen values or new text out; `CredentialError` names the file and the
key of whatever is not as Docker writes it. Secrets never reach a message or a repr.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from linkd.errors import CredentialError

HUB_KEY = "https://index.docker.io/v1/"
HUB_NAMES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
# `docker-credential-NAME` is looked up on PATH: a name with a "/" would be a path.
_HELPER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")


@dataclass(frozen=True)
class Credentials:
    """A user name and password, or an identity token (an OAuth2 refresh token some
    registries hand out at login, used instead of the password)."""

    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)

    def __bool__(self) -> bool:
        return bool(self.password or self.identity_token)


@dataclass(frozen=True)
class DockerConfig:
    """What linkd uses of one config file: `source` (its path, for messages), the
    `auths` entries as (key, credentials or None for an entry without any), `creds_store`
    and `cred_helpers` (key, helper name), each in file order."""

    source: str
    auths: tuple[tuple[str, Credentials | None], ...] = ()
    creds_store: str = ""
    cred_helpers: tuple[tuple[str, str], ...] = ()


def server_key(host: str) -> str:
    """The key `docker login` writes for the registry `host` (a reference's domain)."""
    return HUB_KEY if hostname(host) == "docker.io" else host


def hostname(key: str) -> str:
    """`key` as a registry host: scheme and path cut off, Hub's names as `docker.io`."""
    rest = key.strip()
    for prefix in ("https://", "http://"):
        if rest.lower().startswith(prefix):
            rest = rest[len(prefix):]
            break
    host = rest.partition("/")[0].lower()
    return "docker.io" if host in HUB_NAMES else host


def _matches(keys: list[str], host: str) -> list[str]:
    """The keys that name `host`: its exact key first, then the others in file order."""
    exact = server_key(host)
    wanted = hostname(host)
    return ([exact] if exact in keys else []) + [
        k for k in keys if k != exact and hostname(k) == wanted]


def parse(text: str, source: str) -> DockerConfig:
    """The config file `source` holding `text`."""
    try:
        doc = json.loads(text) if text.strip() else {}
    except ValueError as exc:
        raise CredentialError(f"{source}: not JSON ({exc}); fix the file or move it "
                              "away (linkd login writes a new one)") from None
    if not isinstance(doc, dict):
        raise CredentialError(f"{source}: the file holds {_kind(doc)}, not a JSON object")
    auths_doc = _object(doc, "auths", source)
    auths = tuple((key, _entry(value, f'auths["{_shown(key)}"]', source))
                  for key, value in auths_doc.items())
    store = doc.get("credsStore", "")
    if not isinstance(store, str):
        raise CredentialError(f"{source}: credsStore: {_kind(store)}, not a helper's name")
    if store:
        _helper_name(store, "credsStore", source)
    helpers = []
    for key, name in _object(doc, "credHelpers", source).items():
        where = f'credHelpers["{_shown(key)}"]'
        if not isinstance(name, str):
            raise CredentialError(f"{source}: {where}: {_kind(name)}, not a helper's name")
        helpers.append((key, _helper_name(name, where, source)))
    return DockerConfig(source, auths, store, tuple(helpers))


def find(config: DockerConfig, host: str) -> tuple[str, Credentials] | None:
    """The `auths` entry for the registry `host` that holds credentials: (its key, them)."""
    entries = dict(config.auths)
    for key in _matches(list(entries), host):
        creds = entries[key]
        if creds:
            return key, creds
    return None


def helper(config: DockerConfig, host: str) -> str:
    """The credential helper that holds `host`'s credentials ("" for none): its own in
    `credHelpers`, else `credsStore`."""
    helpers = dict(config.cred_helpers)
    found = _matches(list(helpers), host)
    return helpers[found[0]] if found else config.creds_store


def with_login(text: str, source: str, host: str, creds: Credentials | None) -> str:
    """`text` with `host`'s entry replaced by `creds` (None: an empty entry, as when a
    helper holds them); every other key as it was."""
    doc = _document(text, source)
    auths = dict(_object(doc, "auths", source))
    for key in _matches(list(auths), host):
        del auths[key]
    entry: dict[str, str] = {}
    if creds is not None and creds.password:
        entry["auth"] = base64.b64encode(
            f"{creds.username}:{creds.password}".encode()).decode()
    if creds is not None and creds.identity_token:
        entry["identitytoken"] = creds.identity_token
    auths[server_key(host)] = entry
    doc["auths"] = auths
    return _dump(doc)


def without_login(text: str, source: str, host: str) -> tuple[str, list[str]]:
    """`text` without any `auths` entry for `host`, and the keys removed."""
    doc = _document(text, source)
    auths = dict(_object(doc, "auths", source))
    gone = _matches(list(auths), host)
    for key in gone:
        del auths[key]
    if gone:
        doc["auths"] = auths
    return _dump(doc), gone


def _document(text: str, source: str) -> dict[str, Any]:
    parse(text, source)  # refuse to rewrite what cannot be read
    doc = json.loads(text) if text.strip() else {}
    assert isinstance(doc, dict)
    return doc


def _dump(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, indent="\t", ensure_ascii=False) + "\n"  # as docker writes it


def _object(doc: Mapping[str, Any], key: str, source: str) -> Mapping[str, Any]:
    value = doc.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CredentialError(f"{source}: {key}: {_kind(value)}, not an object of "
                              "registries")
    return value


def _entry(value: object, where: str, source: str) -> Credentials | None:
    if not isinstance(value, dict):
        raise CredentialError(f"{source}: {where}: {_kind(value)}, not an object")
    fields: dict[str, str] = {}
    for name in ("auth", "username", "password", "identitytoken"):
        got = value.get(name, "")
        if not isinstance(got, str):
            raise CredentialError(f"{source}: {where}.{name}: {_kind(got)}, not a string")
        fields[name] = got
    user, password = fields["username"], fields["password"]
    if fields["auth"]:
        try:
            raw = base64.b64decode(fields["auth"], validate=True).decode()
        except (binascii.Error, ValueError):
            raise CredentialError(f"{source}: {where}.auth: not base64 of "
                                  "\"user:password\"; run `linkd login` again") from None
        user, sep, password = raw.partition(":")
        if not sep:
            raise CredentialError(f"{source}: {where}.auth: no \":\" between user and "
                                  "password; run `linkd login` again")
    creds = Credentials(user, password, fields["identitytoken"])
    return creds if creds else None


def _helper_name(name: str, where: str, source: str) -> str:
    if not _HELPER_NAME.fullmatch(name):
        raise CredentialError(f"{source}: {where}: {_shown(name)!r} is not a credential "
                              "helper's name (docker-credential-NAME: letters, digits, "
                              "'.', '_', '+', '-')")
    return name


def _shown(text: str) -> str:
    """A key as a message may show it: short, printable."""
    cut = text[:80] + ("..." if len(text) > 80 else "")
    return "".join(c if c.isprintable() else "?" for c in cut)


def _kind(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false",
            int: "a number", float: "a number", type(None): "null"}.get(type(value),
                                                                        "a value")
