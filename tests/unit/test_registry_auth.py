"""The answers to a registry's challenge that need no server (linkd.runtime.images.auth):
what is refused before anything is sent, and the messages, which never hold a secret.
The flows against a real registry and token server are in tests/runtime/test_pull_auth.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, NoReturn

import pytest

from linkd.core.docker_config import Credentials
from linkd.errors import UsageError
from linkd.runtime.images.auth import Auth, AuthFailure, parse_challenge
from linkd.runtime.images.credentials import Found, config_path
from linkd.runtime.images.login import api_host, server_name
from linkd.runtime.images.registry import scheme


class NoNetwork:
    """A session that fails the test if anything is sent."""

    def get(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise AssertionError(f"sent a request: {args}")

    post = get


def auth_with(creds: Credentials | None, server: str = "reg.example") -> Auth:
    async def lookup() -> Found | None:
        return Found(creds, "/cfg/config.json") if creds else None

    return Auth(server, lookup, plain_http_ok=lambda host: scheme(host, {}) == "http")


async def answer(auth: Auth, challenge: str) -> str:
    return await auth.answer(NoNetwork(), challenge, "repository:a/b:pull")  # type: ignore[arg-type]


async def test_credentials_go_to_no_plain_http_realm_elsewhere() -> None:
    auth = auth_with(Credentials("alice", "hunter2"))
    with pytest.raises(AuthFailure) as caught:
        await answer(auth, 'Bearer realm="http://auth.example/token",service="x"')
    assert "plain HTTP on another host; linkd sends no credentials there" in str(caught.value)
    assert "hunter2" not in str(caught.value)


async def test_basic_is_answered_from_the_credentials_alone() -> None:
    got = await answer(auth_with(Credentials("alice", "pw")), 'Basic realm="r"')
    assert got == "Basic YWxpY2U6cHc="
    with pytest.raises(AuthFailure, match=re.escape(
            "linkd has none for reg.example; run `linkd login reg.example`")):
        await answer(auth_with(None), 'Basic realm="r"')
    with pytest.raises(AuthFailure, match="only an identity token"):
        await answer(auth_with(Credentials(identity_token="tok")), 'Basic realm="r"')


@pytest.mark.parametrize("challenge", ["", "Negotiate", 'Bearer service="x"',
                                       'Bearer realm="file:///etc/passwd"'])
async def test_a_challenge_linkd_does_not_answer(challenge: str) -> None:
    with pytest.raises(AuthFailure, match="HTTP 401 with a challenge linkd does not answer"):
        await answer(auth_with(Credentials("a", "b")), challenge)


async def test_hints_say_whether_credentials_were_sent_and_what_to_run() -> None:
    none = auth_with(None, "docker.io")
    await none.found()
    assert none.hint() == ("the registry wants credentials, and linkd has none for "
                           "docker.io; run `linkd login docker.io`")
    some = auth_with(Credentials("bob", "secret-pw"))
    await some.found()
    assert some.hint() == ("the registry refused the credentials for reg.example (user bob) "
                           "from /cfg/config.json; check them and run `linkd login "
                           "reg.example`")
    token = auth_with(Credentials(identity_token="secret-tok"))
    await token.found()
    assert "(an identity token)" in token.hint() and "secret-tok" not in token.hint()


async def test_credentials_are_looked_up_once() -> None:
    calls = []

    async def lookup() -> Found | None:
        calls.append(1)
        return None

    auth = Auth("r", lookup, plain_http_ok=lambda host: False)
    await auth.found()
    await auth.found()
    assert calls == [1] and auth.used() is None


def test_challenges_are_parsed() -> None:
    assert parse_challenge('Bearer realm="https://a/token",service="s",scope="x:y:pull"') == (
        "bearer", {"realm": "https://a/token", "service": "s", "scope": "x:y:pull"})
    assert parse_challenge('basic realm="x \\"y\\""') == ("basic", {"realm": 'x "y"'})


@pytest.mark.parametrize(("given", "server"), [
    (None, "docker.io"), ("docker.io", "docker.io"), ("https://index.docker.io/v1/",
                                                      "docker.io"),
    ("index.docker.io", "docker.io"), ("127.0.0.1:5000", "127.0.0.1:5000"),
    ("http://127.0.0.1:5000/v2/", "127.0.0.1:5000"), ("Reg.Example", "reg.example"),
])
def test_login_names_servers_as_docker_does(given: str | None, server: str) -> None:
    assert server_name(given) == server


def test_login_to_hub_asks_its_api_host_and_refuses_what_is_no_host() -> None:
    assert api_host("docker.io") == "registry-1.docker.io"  # not contacted here
    assert api_host("127.0.0.1:5000") == "127.0.0.1:5000"
    for bad in ("", "a b", "user@host"):
        with pytest.raises(UsageError, match="not a registry host"):
            server_name(bad) if bad else server_name("https:///")


async def test_a_403_with_credentials_says_they_are_not_allowed() -> None:
    auth = auth_with(Credentials("bob", "pw"))
    await auth.found()
    assert auth.hint(403).startswith("the credentials for reg.example (user bob) from "
                                     "/cfg/config.json are not allowed this")


def test_the_config_file_is_docker_configs_else_homes() -> None:
    assert config_path({"DOCKER_CONFIG": "/etc/d", "HOME": "/h"}) == Path("/etc/d/config.json")
    assert config_path({"HOME": "/home/u"}) == Path("/home/u/.docker/config.json")
    assert config_path({}).name == "config.json"  # the user's home in the passwd file
