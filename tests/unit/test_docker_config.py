"""Docker's config.json as linkd reads and rewrites it (linkd.core.docker_config): the
ways Docker writes a registry's key, Hub's names, helpers, files that are not what they
should be (each error names the file and the key, never a secret), and rewrites that
keep every other key."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from linkd.core import docker_config as dc
from linkd.core.docker_config import Credentials
from linkd.errors import CredentialError

SRC = "/home/u/.docker/config.json"


def auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def doc(**keys: object) -> str:
    return json.dumps(keys)


@pytest.mark.parametrize("key", [
    "reg.example:5000", "https://reg.example:5000/", "http://reg.example:5000/v2/",
    "https://reg.example:5000", "REG.example:5000",
])
def test_a_registry_is_found_under_any_key_docker_writes(key: str) -> None:
    config = dc.parse(doc(auths={key: {"auth": auth("alice", "s3:cret")}}), SRC)
    assert dc.find(config, "reg.example:5000") == (key, Credentials("alice", "s3:cret"))
    assert dc.find(config, "reg.example") is None  # another port is another registry
    assert dc.find(config, "reg.example:5001") is None


def test_the_exact_key_wins_over_one_that_only_names_the_same_host() -> None:
    config = dc.parse(doc(auths={
        "https://reg.example/": {"auth": auth("old", "x")},
        "reg.example": {"username": "new", "password": "y"},
    }), SRC)
    assert dc.find(config, "reg.example") == ("reg.example", Credentials("new", "y"))


@pytest.mark.parametrize("key", ["https://index.docker.io/v1/", "docker.io",
                                 "index.docker.io", "https://registry-1.docker.io"])
def test_docker_hub_under_its_names(key: str) -> None:
    config = dc.parse(doc(auths={key: {"auth": auth("bob", "pw")}}), SRC)
    assert dc.find(config, "docker.io") == (key, Credentials("bob", "pw"))
    assert dc.server_key("docker.io") == "https://index.docker.io/v1/"
    assert dc.server_key("127.0.0.1:5000") == "127.0.0.1:5000"


def test_entries_without_credentials_and_identity_tokens() -> None:
    config = dc.parse(doc(auths={
        "a.example": {}, "b.example": {"identitytoken": "refresh-me"},
        "c.example": {"username": "u"},  # no password: nothing to send
    }), SRC)
    assert dc.find(config, "a.example") is None
    assert dc.find(config, "b.example") == ("b.example", Credentials(identity_token="refresh-me"))
    assert dc.find(config, "c.example") is None


def test_helpers_per_registry_then_the_store() -> None:
    config = dc.parse(doc(credsStore="desktop", credHelpers={
        "https://ecr.example/": "ecr-login", "gcr.io": "gcloud"}), SRC)
    assert dc.helper(config, "ecr.example") == "ecr-login"
    assert dc.helper(config, "gcr.io") == "gcloud"
    assert dc.helper(config, "other.example") == "desktop"
    assert dc.helper(dc.parse("", SRC), "x") == ""


def test_secrets_stay_out_of_reprs() -> None:
    creds = Credentials("alice", "hunter2", "tok-abc")
    assert "hunter2" not in repr(creds) and "tok-abc" not in repr(creds)
    config = dc.parse(doc(auths={"r": {"auth": auth("alice", "hunter2")}}), SRC)
    assert "hunter2" not in repr(config)


@pytest.mark.parametrize(("text", "message"), [
    ("{not json", f"{SRC}: not JSON"),
    ("[]", f"{SRC}: the file holds a list, not a JSON object"),
    (doc(auths=[]), f"{SRC}: auths: a list, not an object of registries"),
    (doc(auths={"r.example": "x"}), f'{SRC}: auths\\["r.example"\\]: a string, not an object'),
    (doc(auths={"r.example": {"auth": 5}}),
     f'{SRC}: auths\\["r.example"\\].auth: a number, not a string'),
    (doc(auths={"r.example": {"auth": "%%%"}}),
     f'{SRC}: auths\\["r.example"\\].auth: not base64 of "user:password"'),
    (doc(auths={"r.example": {"auth": base64.b64encode(b"nocolon").decode()}}),
     f'{SRC}: auths\\["r.example"\\].auth: no ":" between user and password'),
    (doc(auths={"r.example": {"auth": base64.b64encode(b"\xff:\xfe").decode()}}),
     "not base64 of"),
    (doc(credsStore=["x"]), f"{SRC}: credsStore: a list, not a helper's name"),
    (doc(credsStore="../../bin/sh"), f"{SRC}: credsStore: '../../bin/sh' is not a credential"),
    (doc(credHelpers={"r.example": "a b"}), 'credHelpers\\["r.example"\\]: \'a b\' is not'),
    (doc(credHelpers={"r.example": None}), 'credHelpers\\["r.example"\\]: null, not'),
])
def test_a_garbled_file_is_named_with_its_key(text: str, message: str) -> None:
    with pytest.raises(CredentialError, match=message):
        dc.parse(text, SRC)


def test_a_hostile_key_is_shown_short_and_printable() -> None:
    key = "\x1b[31m" + "k" * 500
    with pytest.raises(CredentialError) as caught:
        dc.parse(doc(auths={key: []}), SRC)
    assert "\x1b" not in str(caught.value) and len(str(caught.value)) < 250


def test_login_rewrites_only_its_entry() -> None:
    original = json.dumps({
        "auths": {"https://reg.example/": {"auth": auth("old", "x")},
                  "other.example": {"auth": auth("o", "p")}},
        "credHelpers": {"gcr.io": "gcloud"}, "psFormat": "table {{.ID}}",
        "proxies": {"default": {"httpProxy": "http://p:3128"}}, "experimental": 1.5,
    })
    text = dc.with_login(original, SRC, "reg.example", Credentials("alice", "pw"))
    new = json.loads(text)
    assert new["auths"] == {"other.example": {"auth": auth("o", "p")},
                            "reg.example": {"auth": auth("alice", "pw")}}
    before = json.loads(original)
    assert {k: v for k, v in new.items() if k != "auths"} == {
        k: v for k, v in before.items() if k != "auths"}
    hub = json.loads(dc.with_login("", SRC, "docker.io", Credentials("bob", "pw")))
    assert hub == {"auths": {"https://index.docker.io/v1/": {"auth": auth("bob", "pw")}}}
    helper_held = json.loads(dc.with_login("{}", SRC, "reg.example", None))
    assert helper_held == {"auths": {"reg.example": {}}}


def test_logout_removes_every_key_of_the_registry() -> None:
    original = doc(auths={"https://reg.example/": {}, "reg.example": {"auth": auth("a", "b")},
                          "reg.example:5000": {}}, credsStore="pass")
    text, gone = dc.without_login(original, SRC, "reg.example")
    assert gone == ["reg.example", "https://reg.example/"]
    assert json.loads(text) == {"auths": {"reg.example:5000": {}}, "credsStore": "pass"}
    same, none = dc.without_login(original, SRC, "nothing.example")
    assert none == [] and json.loads(same) == json.loads(original)


def test_a_garbled_file_is_not_rewritten() -> None:
    with pytest.raises(CredentialError, match="not JSON"):
        dc.with_login("{", SRC, "r", Credentials("a", "b"))
    with pytest.raises(CredentialError, match="auths: a string"):
        dc.without_login(doc(auths="x"), SRC, "r")


# -- properties --------------------------------------------------------------------------

_host = st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z]{2,5})?(:[0-9]{2,5})?", fullmatch=True)
_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)
_json = st.recursive(st.none() | st.booleans() | st.integers() | _text,
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(_text, inner, max_size=3), max_leaves=8)


@given(_host, _text.filter(lambda u: ":" not in u), _text.filter(bool),
       st.dictionaries(_text.filter(lambda k: k not in ("auths", "credsStore",
                                                         "credHelpers")), _json, max_size=4))
def test_a_login_is_found_again_and_keeps_the_rest(host: str, user: str, password: str,
                                                    rest: dict[str, object]) -> None:
    text = dc.with_login(json.dumps(rest), SRC, host, Credentials(user, password))
    config = dc.parse(text, SRC)
    assert dc.find(config, host) == (dc.server_key(host), Credentials(user, password))
    new = json.loads(text)
    assert {k: v for k, v in new.items() if k != "auths"} == rest
    gone, keys = dc.without_login(text, SRC, host)
    assert keys == [dc.server_key(host)]
    assert dc.find(dc.parse(gone, SRC), host) is None
    assert {k: v for k, v in json.loads(gone).items() if k != "auths"} == rest


@given(st.one_of(_json, st.dictionaries(st.sampled_from(["auths", "credsStore",
                                                            "credHelpers"]), _json)))
def test_any_json_is_read_or_refused_by_name(value: object) -> None:
    try:
        config = dc.parse(json.dumps(value), SRC)
    except CredentialError as exc:
        assert str(exc).startswith(SRC + ": ")
        return
    for key, _ in config.auths:
        dc.find(config, key)
        dc.helper(config, key)


@given(st.binary(max_size=60))
def test_any_bytes_as_text_are_read_or_refused_by_name(data: bytes) -> None:
    text = data.decode("utf-8", errors="replace")
    try:
        dc.parse(text, SRC)
    except CredentialError as exc:
        assert str(exc).startswith(SRC + ": ")
