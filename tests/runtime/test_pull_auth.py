"""Pulls that need credentials, from Debian's docker-registry (CNCF distribution 2.8) on
127.0.0.1 of the session's simulated host: htpasswd Basic auth, and Bearer tokens from a
token server of the test's own (ES256 JWTs; tests/registry_auth.py). Credentials come from
a Docker config.json of the test's own (`auths`, a credential helper on PATH), `linkd
login` checks them against the registry before it writes them, `linkd logout` forgets
them. Without credentials, or with wrong ones, the pull fails saying which registry and
what to run, and the store is as it was. No secret appears in a message.

One registry per auth mode for the module (each push of busybox costs a second); every
test has its own store and config. Needs root (the store unpacks layers with owners)."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from linkd.errors import CredentialError, RegistryError
from linkd.runtime.images import registry
from linkd.runtime.images.image_store import ImageStore
from linkd.runtime.images.pull import pull
from tests.images import Entry, Image, busybox_image, layer_tar, write_dir
from tests.registry import RealRegistry, TinyRegistry, docker_registry, push, serving
from tests.registry_auth import (
    Helper,
    TokenServer,
    helper_script,
    htpasswd_auth,
    token_auth,
    token_server,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="layers need root: owners")

REPO = Path(__file__).resolve().parents[2]
USER, PASSWORD = "alice", "s3cret-pw:with-colon"
WRONG = "not-the-password"
IMAGE = "test/bb:1"


def _push(reg: RealRegistry, tmp: Path) -> None:
    layout = write_dir(busybox_image().oci_files(), tmp / "bb")
    push(layout, f"{reg.host}/{IMAGE}", creds=f"{USER}:{PASSWORD}")


@pytest.fixture(scope="module")
def basic_reg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealRegistry]:
    tmp = tmp_path_factory.mktemp("basic")
    with docker_registry(tmp / "registry", htpasswd_auth(tmp, {USER: PASSWORD})) as reg:
        _push(reg, tmp)
        yield reg


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenServer]:
    with token_server(tmp_path_factory.mktemp("tokens"), {USER: PASSWORD}) as server:
        yield server


@pytest.fixture(scope="module")
def token_reg(tmp_path_factory: pytest.TempPathFactory, tokens: TokenServer
              ) -> Iterator[RealRegistry]:
    tmp = tmp_path_factory.mktemp("token")
    with docker_registry(tmp / "registry", token_auth(tokens)) as reg:
        _push(reg, tmp)
        yield reg


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "store")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An environment whose Docker config is the test's own (none yet)."""
    (tmp_path / "docker").mkdir()
    return {**os.environ, "DOCKER_CONFIG": str(tmp_path / "docker")}


def write_config(env: dict[str, str], doc: object) -> Path:
    path = Path(env["DOCKER_CONFIG"]) / "config.json"
    path.write_text(json.dumps(doc))
    return path


def auth_entry(user: str, password: str) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


def layers(store: ImageStore) -> list[str]:
    root = store.root / "layers"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


# -- htpasswd (Basic) ----------------------------------------------------------------------


async def test_basic_auth_with_credentials_from_config_json(basic_reg: RealRegistry,
                                                           store: ImageStore,
                                                           env: dict[str, str]) -> None:
    path = write_config(env, {"auths": {f"http://{basic_reg.host}/v2/":
                                        auth_entry(USER, PASSWORD)}, "psFormat": "x"})
    before = path.read_bytes()
    pulled = await pull(f"{basic_reg.host}/{IMAGE}", store, env=env)
    assert pulled.fetched == 2
    assert path.read_bytes() == before  # a pull only reads


async def test_basic_auth_without_credentials(basic_reg: RealRegistry, store: ImageStore,
                                              env: dict[str, str]) -> None:
    ref = f"{basic_reg.host}/{IMAGE}"
    with pytest.raises(RegistryError) as caught:
        await pull(ref, store, env=env)
    assert str(caught.value).startswith(f"pull {ref} from {basic_reg.host}: ")
    assert (f"the registry wants credentials, and linkd has none for {basic_reg.host}; "
            f"run `linkd login {basic_reg.host}`") in str(caught.value)
    assert layers(store) == []


async def test_basic_auth_with_a_wrong_password(basic_reg: RealRegistry, store: ImageStore,
                                                env: dict[str, str]) -> None:
    path = write_config(env, {"auths": {basic_reg.host: auth_entry(USER, WRONG)}})
    with pytest.raises(RegistryError) as caught:
        await pull(f"{basic_reg.host}/{IMAGE}", store, env=env)
    message = str(caught.value)
    assert (f"HTTP 401 Unauthorized (UNAUTHORIZED: authentication required) (the registry "
            f"refused the credentials for {basic_reg.host} (user {USER}) from {path}; check "
            f"them and run `linkd login {basic_reg.host}`)") in message, message
    assert WRONG not in message
    assert layers(store) == []


async def test_basic_credentials_do_not_follow_a_redirect_to_other_storage(
        store: ImageStore, env: dict[str, str]) -> None:
    image = Image([layer_tar([Entry("x", data=b"x")])], name="test/bb:1")
    files = image.oci_files()
    async with serving(TinyRegistry()) as tiny, serving(TinyRegistry()) as storage:
        tiny.basic = auth_entry(USER, PASSWORD)["auth"]
        tiny.add_layout("test/bb", "1", files)
        storage.add_layout("test/bb", "1", files)
        tiny.redirect = storage.host
        write_config(env, {"auths": {tiny.host: auth_entry(USER, PASSWORD)}})
        await pull(f"{tiny.host}/test/bb:1", store, env=env)
    assert tiny.authorizations[0] is None  # anonymous first: the 401 asks
    assert set(tiny.authorizations[1:]) == {f"Basic {tiny.basic}"}
    assert len(storage.layer_requests()) == 2  # the config and the layer
    assert storage.authorizations == [None, None]


async def test_an_expired_token_is_renewed_once_mid_pull(
        store: ImageStore, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry.Repository, "renew_after", 0.0)
    image = Image([layer_tar([Entry("x", data=b"x")])], name="test/bb:1")
    async with serving(TinyRegistry(token="first")) as tiny:
        tiny.add_layout("test/bb", "1", image.oci_files())
        handle = tiny.handle

        async def expiring(request: web.Request) -> web.StreamResponse:
            if "/blobs/" in request.path:
                tiny.token = "second"  # the first expired with the manifest
            return await handle(request)

        tiny.handle = expiring  # type: ignore[method-assign]
        await pull(f"{tiny.host}/test/bb:1", store, env=env)
    assert tiny.requests.count("/token") == 2
    assert tiny.authorizations[-1] == "Bearer second"


# -- Bearer tokens ---------------------------------------------------------------------


async def test_token_auth_with_credentials_from_config_json(token_reg: RealRegistry,
                                                           tokens: TokenServer,
                                                           store: ImageStore,
                                                           env: dict[str, str]) -> None:
    write_config(env, {"auths": {token_reg.host: auth_entry(USER, PASSWORD)}})
    tokens.requests.clear()
    pulled = await pull(f"{token_reg.host}/{IMAGE}", store, env=env)
    assert pulled.fetched == 2
    assert tokens.requests == [{"flow": "basic", "user": USER, "service": "lkt-registry",
                                "scope": "repository:test/bb:pull", "result": "granted"}]


async def test_token_auth_without_credentials(token_reg: RealRegistry, tokens: TokenServer,
                                              store: ImageStore, env: dict[str, str]) -> None:
    ref = f"{token_reg.host}/{IMAGE}"
    tokens.requests.clear()
    with pytest.raises(RegistryError) as caught:
        await pull(ref, store, env=env)
    assert [r["flow"] for r in tokens.requests] == ["anonymous"]  # a token, without access
    assert str(caught.value).startswith(f"pull {ref} from {token_reg.host}: manifest 1: "
                                        "HTTP 401")
    assert (f"linkd has none for {token_reg.host}; run `linkd login {token_reg.host}`"
            in str(caught.value))
    assert layers(store) == []


async def test_token_auth_with_a_wrong_password(token_reg: RealRegistry, tokens: TokenServer,
                                                store: ImageStore, env: dict[str, str]) -> None:
    path = write_config(env, {"auths": {token_reg.host: auth_entry(USER, WRONG)}})
    with pytest.raises(RegistryError) as caught:
        await pull(f"{token_reg.host}/{IMAGE}", store, env=env)
    message = str(caught.value)
    assert (f"token from {tokens.realm}: HTTP 401 Unauthorized: the registry refused the "
            f"credentials for {token_reg.host} (user {USER}) from {path}") in message, message
    assert WRONG not in message
    assert layers(store) == []


async def test_a_credential_helper_holds_the_password(token_reg: RealRegistry,
                                                      tokens: TokenServer, store: ImageStore,
                                                      env: dict[str, str],
                                                      tmp_path: Path) -> None:
    helper = helper_script(tmp_path, {token_reg.host: {"Username": USER,
                                                       "Secret": PASSWORD}})
    env["PATH"] = f"{helper.directory}:{env['PATH']}"
    write_config(env, {"credsStore": "nothing-such", "credHelpers": {token_reg.host:
                                                                     helper.name}})
    tokens.requests.clear()
    await pull(f"{token_reg.host}/{IMAGE}", store, env=env)
    assert helper.calls() == [["get", token_reg.host]]
    assert [(r["flow"], r["user"]) for r in tokens.requests] == [("basic", USER)]


async def test_an_identity_token_is_traded_by_oauth(token_reg: RealRegistry,
                                                    tokens: TokenServer, store: ImageStore,
                                                    env: dict[str, str],
                                                    tmp_path: Path) -> None:
    tokens.refresh_tokens["refresh-abc"] = USER
    helper = helper_script(tmp_path, {token_reg.host: {"Username": "<token>",
                                                       "Secret": "refresh-abc"}})
    env["PATH"] = f"{helper.directory}:{env['PATH']}"
    write_config(env, {"credsStore": helper.name})
    tokens.requests.clear()
    await pull(f"{token_reg.host}/{IMAGE}", store, env=env)
    assert [(r["flow"], r["user"], r["scope"]) for r in tokens.requests] == [
        ("oauth", USER, "repository:test/bb:pull")]


async def test_a_helper_with_nothing_falls_back_to_the_file(token_reg: RealRegistry,
                                                            store: ImageStore,
                                                            env: dict[str, str],
                                                            tmp_path: Path) -> None:
    helper = helper_script(tmp_path, {})
    env["PATH"] = f"{helper.directory}:{env['PATH']}"
    write_config(env, {"credsStore": helper.name,
                       "auths": {token_reg.host: auth_entry(USER, PASSWORD)}})
    await pull(f"{token_reg.host}/{IMAGE}", store, env=env)
    assert helper.calls() == [["get", token_reg.host]]


async def test_a_missing_helper_and_a_garbled_file_say_so(token_reg: RealRegistry,
                                                          store: ImageStore,
                                                          env: dict[str, str]) -> None:
    path = write_config(env, {"credsStore": "lkt-not-installed"})
    with pytest.raises(CredentialError, match="credential helper "
                       "docker-credential-lkt-not-installed is not on PATH"):
        await pull(f"{token_reg.host}/{IMAGE}", store, env=env)
    path.write_text('{"auths": {"x": {"auth": "!!"}}}')
    with pytest.raises(CredentialError, match=f'{path}: auths\\["x"\\].auth: not base64'):
        await pull(f"{token_reg.host}/{IMAGE}", store, env=env)
    assert layers(store) == []


# -- linkd login / logout ----------------------------------------------------------------


def linkd(env: dict[str, str], *args: str, stdin: str = ""
          ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "linkd", *args], input=stdin,
                          capture_output=True, text=True, timeout=60,
                          env={**env, "PYTHONPATH": str(REPO)})


@pytest.mark.parametrize("mode", ["basic", "token"])
async def test_login_checks_writes_0600_and_logout_forgets(
        mode: str, request: pytest.FixtureRequest, store: ImageStore,
        env: dict[str, str]) -> None:
    reg: RealRegistry = request.getfixturevalue(f"{mode}_reg")
    other = {"auths": {"other.example": auth_entry("o", "p")}, "psFormat": "table {{.ID}}",
             "proxies": {"default": {"noProxy": "*.lan"}}}
    path = write_config(env, other)
    path.chmod(0o644)
    before = path.read_bytes()
    wrong = linkd(env, "login", reg.host, "-u", USER, "--password-stdin", stdin=WRONG + "\n")
    assert wrong.returncode == 1
    assert f"login to {reg.host}: the registry refused user {USER}" in wrong.stderr
    assert "nothing was written" in wrong.stderr and WRONG not in wrong.stderr
    assert path.read_bytes() == before

    ok = linkd(env, "login", reg.host, "-u", USER, "--password-stdin", stdin=PASSWORD + "\n")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == f"Login Succeeded: {USER} at {reg.host} (kept in {path})\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    written = json.loads(path.read_text())
    assert written == {**other, "auths": {**other["auths"],  # type: ignore[dict-item]
                                          reg.host: auth_entry(USER, PASSWORD)}}
    await pull(f"{reg.host}/{IMAGE}", store, env=env)  # with what login wrote

    out = linkd(env, "logout", reg.host)
    assert out.returncode == 0 and out.stdout == (
        f"Removed the login for {reg.host}: {path}: {reg.host}\n")
    assert json.loads(path.read_text()) == other
    assert linkd(env, "logout", reg.host).stdout == f"Not logged in to {reg.host}\n"


async def test_login_and_logout_through_a_helper(basic_reg: RealRegistry,
                                                 env: dict[str, str], tmp_path: Path) -> None:
    helper: Helper = helper_script(tmp_path, {})
    env["PATH"] = f"{helper.directory}:{env['PATH']}"
    path = write_config(env, {"credHelpers": {basic_reg.host: helper.name}})
    ok = linkd(env, "login", basic_reg.host, "-u", USER, "-p", PASSWORD)
    assert ok.returncode == 0, ok.stderr
    assert "use --password-stdin" in ok.stderr  # -p is seen by ps
    assert f"kept in credential helper docker-credential-{helper.name}" in ok.stdout
    assert helper.held() == {basic_reg.host: {"Username": USER, "Secret": PASSWORD}}
    assert json.loads(path.read_text())["auths"] == {basic_reg.host: {}}  # no secret in it
    assert PASSWORD not in path.read_text()
    out = linkd(env, "logout", basic_reg.host)
    assert out.returncode == 0, out.stderr
    assert helper.held() == {}
    assert [c[0] for c in helper.calls()] == ["store", "erase"]


def test_login_without_a_terminal_or_a_password(basic_reg: RealRegistry,
                                                env: dict[str, str]) -> None:
    result = linkd(env, "login", basic_reg.host, "-u", USER)
    assert result.returncode == 2
    assert "no password given and no terminal to ask on" in result.stderr
    assert not (Path(env["DOCKER_CONFIG"]) / "config.json").exists()
    stdin_only = linkd(env, "login", basic_reg.host, "--password-stdin", stdin="x")
    assert stdin_only.returncode == 2 and "--password-stdin needs --username" in stdin_only.stderr
