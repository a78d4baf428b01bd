"""The registries file and its environment (linkd.core.registry_config): what is
insecure, which mirrors stand in for docker.io, and the order a pull tries endpoints in,
checked without contacting anything."""

from __future__ import annotations

import ipaddress
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from linkd.core import registry_config as rc
from linkd.core.registry_config import Endpoint, Mirror, RegistryConfig, endpoints, parse
from linkd.errors import UsageError

SOURCE = "/etc/linkd/registries.json"


def config(doc: object = None, **env: str) -> RegistryConfig:
    return parse(None if doc is None else json.dumps(doc), env, SOURCE)


def test_nothing_configured() -> None:
    c = config()
    assert c == RegistryConfig()
    assert c.plain_http("127.0.0.1:5000") and c.plain_http("localhost")
    assert c.plain_http("[::1]:5000") and c.plain_http("127.8.9.10")
    assert not c.plain_http("10.0.0.5:5000") and not c.plain_http("ghcr.io")
    assert not c.listed("127.0.0.1:5000")  # loopback is allowed HTTP, not listed


def test_insecure_hosts_and_cidrs() -> None:
    c = config({"insecure-registries": ["reg.lan", "10.0.0.5:5000", "192.168.0.0/16",
                                        "http://Old.Lan:80", "fd00::/8", "[fd00::1]:5000"]})
    assert c.listed("reg.lan") and c.listed("reg.lan:5000") and c.listed("REG.lan:1")
    assert c.listed("10.0.0.5:5000") and not c.listed("10.0.0.5:6000")
    assert c.listed("192.168.4.4:5000") and not c.listed("192.169.0.1")
    assert c.listed("old.lan:80") and not c.listed("old.lan:81")
    assert c.listed("[fd00::1]:5000") and c.listed("[fd00::2]:1")  # the CIDR
    assert not c.listed("ghcr.io")
    assert c.warnings and "http:// in front is dropped" in c.warnings[0]


def test_the_environment_adds_to_the_file() -> None:
    c = config({"insecure-registries": ["a.lan"], "registry-mirrors": ["https://m1.lan"]},
               LINKD_INSECURE_REGISTRIES="b.lan:5000, 10.1.0.0/16",
               LINKD_REGISTRY_MIRRORS="https://m2.lan/prefix/, https://m1.lan")
    assert c.listed("a.lan") and c.listed("b.lan:5000") and c.listed("10.1.2.3:1")
    assert c.mirrors == (Mirror("https", "m1.lan"), Mirror("https", "m2.lan", "/prefix"))


@pytest.mark.parametrize(("doc", "env", "fragment"), [
    ("[1, 2]", {}, "a JSON object is expected"),
    ("{", {}, f"{SOURCE}: not JSON"),
    ('{"insecure-registry": []}', {}, "'insecure-registry': unknown key"),
    ('{"insecure-registries": "a.lan"}', {}, "insecure-registries: a list of strings"),
    ('{"insecure-registries": [5]}', {}, "insecure-registries[0]: 5: a string is expected"),
    ('{"insecure-registries": ["a.lan", "-bad-"]}', {},
     "insecure-registries[1]: '-bad-': not a host name"),
    ('{"insecure-registries": ["a.lan:99999"]}', {}, "port 99999 is not between"),
    ('{"insecure-registries": ["10.0.0.0/33"]}', {}, "not a CIDR"),
    ('{"insecure-registries": ["ftp://a.lan"]}', {}, "a scheme other than http://"),
    ('{"registry-mirrors": ["mirror.lan"]}', {}, "registry-mirrors[0]: 'mirror.lan': no "
     "scheme: write https://"),
    ('{"registry-mirrors": ["ftp://mirror.lan"]}', {}, "scheme 'ftp'"),
    ('{"registry-mirrors": ["https://u:p@mirror.lan"]}', {}, "a user name or password"),
    ('{"registry-mirrors": ["https://mirror.lan/?x=1"]}', {}, "a query or fragment"),
    ('{"registry-mirrors": ["https://mirror.lan:0"]}', {}, "port 0 is not between"),
    ('{"registry-mirrors": ["http://mirror.lan"]}', {}, "'http://mirror.lan' is plain "
     "HTTP, which linkd speaks only to registries listed insecure: add 'mirror.lan' to "
     f"insecure-registries in {SOURCE}"),
    (None, {"LINKD_REGISTRY_MIRRORS": "mirror.lan"}, "LINKD_REGISTRY_MIRRORS: 'mirror.lan': "
     "no scheme"),
    (None, {"LINKD_INSECURE_REGISTRIES": "a b"}, "LINKD_INSECURE_REGISTRIES: 'a b': not a "
     "host"),
])
def test_bad_entries_name_the_file_the_key_and_the_fix(doc: str | None, env: dict[str, str],
                                                       fragment: str) -> None:
    with pytest.raises(UsageError, match="registry configuration: ") as info:
        parse(doc, env, SOURCE)
    assert fragment in str(info.value)


def test_a_plain_http_mirror_on_loopback_or_listed_is_allowed() -> None:
    c = config({"registry-mirrors": ["http://127.0.0.1:5001", "http://m.lan:5000"],
                "insecure-registries": ["m.lan:5000"]})
    assert [str(m) for m in c.mirrors] == ["http://127.0.0.1:5001", "http://m.lan:5000"]


def test_endpoints_of_docker_io_are_the_mirrors_in_order_then_docker_hub() -> None:
    c = config({"registry-mirrors": ["https://m1.lan", "http://127.0.0.1:5001/x",
                                     "https://m3.lan:8443"],
                "insecure-registries": ["m3.lan:8443"]})
    assert endpoints("docker.io", c) == (
        Endpoint("https", "m1.lan", mirror=True),
        Endpoint("http", "127.0.0.1:5001", "/x", mirror=True),
        Endpoint("https", "m3.lan:8443", verify=False, mirror=True),
        Endpoint("https", "registry-1.docker.io"),
    )
    assert endpoints("docker.io", c)[1].base("library/redis") == (
        "http://127.0.0.1:5001/x/v2/library/redis")
    assert endpoints("index.docker.io", c) == endpoints("docker.io", c)
    assert endpoints("docker.io", config()) == (Endpoint("https", "registry-1.docker.io"),)


def test_endpoints_of_other_registries() -> None:
    c = config({"registry-mirrors": ["https://m1.lan"], "insecure-registries": ["reg.lan"]})
    assert endpoints("ghcr.io", c) == (Endpoint("https", "ghcr.io"),)  # never a mirror
    # Listed insecure: HTTPS without verification, then HTTP (Docker's order).
    assert endpoints("reg.lan:5000", c) == (Endpoint("https", "reg.lan:5000", verify=False),
                                            Endpoint("http", "reg.lan:5000"))
    # Loopback, not listed: HTTPS verified, then HTTP.
    assert endpoints("127.0.0.1:5000", c) == (Endpoint("https", "127.0.0.1:5000"),
                                              Endpoint("http", "127.0.0.1:5000"))


# -- properties ------------------------------------------------------------------------

_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
_name = st.lists(_label, min_size=1, max_size=3).map(".".join)
_port = st.integers(1, 65535)
_host = st.one_of(_name, st.tuples(_name, _port).map(lambda t: f"{t[0]}:{t[1]}"),
                  st.ip_addresses(v=4).map(str))
_cidr = st.tuples(st.ip_addresses(v=4), st.integers(8, 32)).map(
    lambda t: str(ipaddress.ip_network(f"{t[0]}/{t[1]}", strict=False)))
_mirror = st.tuples(st.sampled_from(["https"]), _host, st.sampled_from(["", "/p", "/a/b/"])
                    ).map(lambda t: f"{t[0]}://{t[1]}{t[2]}")


@given(st.lists(_host, max_size=5), st.lists(_cidr, max_size=3),
       st.lists(_mirror, max_size=4))
def test_every_valid_entry_parses_and_means_what_it_says(hosts: list[str], cidrs: list[str],
                                                         mirrors: list[str]) -> None:
    c = config({"insecure-registries": hosts + cidrs, "registry-mirrors": mirrors})
    for host in hosts:
        assert c.listed(host) and c.plain_http(host)
    for cidr in cidrs:
        assert c.listed(str(ipaddress.ip_network(cidr)[0]) + ":5000")
    found = endpoints("docker.io", c)
    assert found[-1] == Endpoint("https", "registry-1.docker.io")
    assert [str(e) for e in found[:-1]] == list(dict.fromkeys(
        m.rstrip("/").lower() for m in mirrors))
    assert all(e.mirror for e in found[:-1])


@given(st.text(max_size=40), st.text(max_size=40))
def test_any_text_parses_or_says_why(text: str, entry: str) -> None:
    for doc, env in ((text, {}), (None, {"LINKD_INSECURE_REGISTRIES": entry,
                                         "LINKD_REGISTRY_MIRRORS": entry})):
        try:
            c = parse(doc, env, SOURCE)
        except UsageError as exc:
            assert str(exc).startswith("registry configuration: ")
            continue
        assert isinstance(c, RegistryConfig)


@given(_host, st.lists(_host, max_size=3))
def test_plain_http_only_where_allowed(domain: str, listed: list[str]) -> None:
    c = config({"insecure-registries": listed})
    found = endpoints(domain, c)
    assert found[0].scheme == "https"  # HTTPS is always tried first
    assert any(e.scheme == "http" for e in found) == (rc.is_loopback(domain)
                                                     or c.listed(domain))
    assert found[0].verify == (not c.listed(domain))
