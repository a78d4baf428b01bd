"""docker-registry (tests/registry.py) with authentication, as the pull tests need it.

- `htpasswd_auth`: the registry's `auth: htpasswd` section over a file of bcrypt hashes
  (Python's crypt, Blowfish, the lowest cost: the registry checks the hash on every
  request).
- `token_auth` and `token_server`: the registry's `auth: token` section and a token
  server of the test's own (aiohttp on 127.0.0.1, in a thread of its own so that a
  blocking skopeo or linkd command can ask it), issuing ES256 JWTs signed with a
  throwaway key and self-signed certificate made by the openssl command. The JWT header
  carries the certificate (`x5c`), which distribution 2.8 verifies against the
  `rootcertbundle` (the same certificate). Users with passwords get what they ask for;
  an identity token (an OAuth2 refresh token, the form POST) too; an anonymous request
  gets a token with no access, as Docker Hub does for a private repository; a wrong
  password gets a 401. Every request is recorded without its secrets.
- `helper_script`: a `docker-credential-<name>` of the test's own, answering from a
  JSON file and logging each action and its input.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

SERVICE = "lkt-registry"
ISSUER = "lkt-token-issuer"


def htpasswd_auth(tmp: Path, users: dict[str, str]) -> str:
    """The `auth:` section for `users` (name: password), its file written under `tmp`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # Python 3.11's; the only bcrypt here without a new dependency

        lines = [f"{user}:{crypt.crypt(pw, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))}"
                 for user, pw in users.items()]
    path = tmp / "htpasswd"
    path.write_text("\n".join(lines) + "\n")
    return f"auth:\n  htpasswd:\n    realm: lkt-basic\n    path: {path}\n"


def token_auth(server: TokenServer) -> str:
    return (f"auth:\n  token:\n    realm: {server.realm}\n    service: {SERVICE}\n"
            f"    issuer: {ISSUER}\n    rootcertbundle: {server.cert}\n")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _der_to_raw(der: bytes) -> bytes:
    """An ECDSA signature as openssl writes it (DER: SEQUENCE of INTEGER r, s) as JWS
    wants it (r || s, 32 bytes each)."""
    assert der[0] == 0x30
    pos = 2 if der[1] < 0x80 else 2 + (der[1] & 0x7F)
    out = b""
    for _ in range(2):
        assert der[pos] == 0x02
        length = der[pos + 1]
        value = der[pos + 2:pos + 2 + length]
        out += value.lstrip(b"\0").rjust(32, b"\0")
        pos += 2 + length
    return out


@dataclass
class TokenServer:
    directory: Path
    users: dict[str, str]
    refresh_tokens: dict[str, str] = field(default_factory=dict)  # token -> user
    requests: list[dict[str, str]] = field(default_factory=list)  # no secrets in them
    port: int = 0

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    @property
    def key(self) -> Path:
        return self.directory / "token.key"

    @property
    def cert(self) -> Path:
        return self.directory / "token.crt"

    def make_key(self) -> None:
        subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout",
                        "-out", str(self.key)], check=True, capture_output=True)
        subprocess.run(["openssl", "req", "-new", "-x509", "-key", str(self.key), "-out",
                        str(self.cert), "-days", "2", "-subj", "/CN=lkt-token-issuer"],
                       check=True, capture_output=True)
        self._cert_der = subprocess.run(
            ["openssl", "x509", "-in", str(self.cert), "-outform", "DER"], check=True,
            capture_output=True).stdout

    def sign(self, subject: str, access: list[dict[str, object]]) -> str:
        header = {"typ": "JWT", "alg": "ES256",
                  "x5c": [base64.b64encode(self._cert_der).decode()]}
        now = int(time.time())
        claims = {"iss": ISSUER, "sub": subject, "aud": SERVICE, "exp": now + 600,
                  "nbf": now - 10, "iat": now, "jti": secrets.token_hex(8),
                  "access": access}
        signing_input = (_b64url(json.dumps(header).encode()) + "."
                         + _b64url(json.dumps(claims).encode()))
        der = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)],
                             input=signing_input.encode(), check=True,
                             capture_output=True).stdout
        return signing_input + "." + _b64url(_der_to_raw(der))

    async def handle(self, request: web.Request) -> web.Response:
        form = dict(await request.post()) if request.method == "POST" else {}
        params = {**request.query, **{k: str(v) for k, v in form.items()}}
        user = ""
        header = request.headers.get("Authorization", "")
        if request.method == "POST":
            flow = "oauth"
            user = self.refresh_tokens.get(params.get("refresh_token", ""), "")
            if not user or params.get("grant_type") != "refresh_token":
                self.requests.append({"flow": flow, "result": "refused"})
                return web.json_response({"error": "invalid_grant"}, status=401)
        elif header.startswith("Basic "):
            flow = "basic"
            name, _, pw = base64.b64decode(header[6:]).decode().partition(":")
            if self.users.get(name) != pw or not pw:
                self.requests.append({"flow": flow, "user": name, "result": "refused"})
                return web.json_response({"details": "bad credentials"}, status=401)
            user = name
        else:
            flow = "anonymous"
        access = []
        for scope in request.query.getall("scope", []) + (
                params["scope"].split() if "scope" in form else []):
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if user:
                access.append({"type": kind, "name": name, "actions": actions.split(",")})
        self.requests.append({"flow": flow, "user": user, "service": params.get("service", ""),
                              "scope": " ".join(request.query.getall("scope", []))
                              or params.get("scope", ""), "result": "granted"})
        token = self.sign(user, access)
        return web.json_response({"token": token, "access_token": token, "expires_in": 600})


@contextlib.contextmanager
def token_server(directory: Path, users: dict[str, str]) -> Iterator[TokenServer]:
    directory.mkdir(parents=True, exist_ok=True)
    server = TokenServer(directory, users)
    server.make_key()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="lkt-token-server", daemon=True)
    thread.start()

    async def start() -> web.AppRunner:
        app = web.Application()
        app.router.add_route("*", "/token", server.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        assert site._server is not None
        server.port = site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return runner

    runner = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


HELPER = """#!/usr/bin/python3
import json, sys
action = sys.argv[1]
data = sys.stdin.read()
store = {store!r}
with open({log!r}, "a") as log:
    log.write(json.dumps([action, data]) + "\\n")
held = json.load(open(store))
if action == "get":
    if data not in held:
        print("credentials not found in native keychain")
        sys.exit(1)
    print(json.dumps({{"ServerURL": data, **held[data]}}))
elif action == "store":
    doc = json.loads(data)
    held[doc["ServerURL"]] = {{"Username": doc["Username"], "Secret": doc["Secret"]}}
    json.dump(held, open(store, "w"))
elif action == "erase":
    held.pop(data, None)
    json.dump(held, open(store, "w"))
"""


@dataclass
class Helper:
    name: str  # as config.json names it: docker-credential-<name>
    directory: Path  # to put on PATH
    store: Path  # {server: {"Username", "Secret"}}
    log: Path  # one JSON [action, stdin] a line

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def held(self) -> dict[str, dict[str, str]]:
        result: dict[str, dict[str, str]] = json.loads(self.store.read_text())
        return result


def helper_script(directory: Path, held: dict[str, dict[str, str]]) -> Helper:
    """`docker-credential-lkt<random>` in `directory/bin`, holding `held`."""
    name = "lkt" + secrets.token_hex(4)
    bin_dir = directory / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    helper = Helper(name, bin_dir, directory / f"{name}.json", directory / f"{name}.log")
    helper.store.write_text(json.dumps(held))
    script = bin_dir / f"docker-credential-{name}"
    script.write_text(HELPER.format(store=str(helper.store), log=str(helper.log)))
    script.chmod(0o755)
    return helper
