"""`x-linkd: dns:` in a stack file: the zone's domain and the upstream servers."""

from __future__ import annotations

import textwrap

import pytest
import yaml

from linkd.core.model import DnsSettings, HostAccess, Stack, Upstream
from linkd.errors import SpecError
from linkd.spec.stack_file import parse_stack, stack_to_dict


def parse(body: str) -> Stack:
    text = textwrap.dedent(body).lstrip("\n")
    return parse_stack(text, source="stack.yaml", default_project="t")


BASE = """
services:
  web: {command: ["sleep", "1"]}
"""


def problems(body: str) -> list[str]:
    with pytest.raises(SpecError) as raised:
        parse(body)
    return [f"{path} (line {line}): {message}" for path, line, message in raised.value.problems]


def test_default_is_the_linkd_zone_and_the_hosts_resolvers() -> None:
    assert parse(BASE).dns == DnsSettings("linkd", None)


def test_domain_and_upstreams() -> None:
    stack = parse(BASE + """
x-linkd:
  dns:
    domain: Shop.Internal.
    upstreams: ["127.0.0.1:5353", "192.0.2.1", "[fe80::1%eth0]:53"]
""")
    assert stack.dns == DnsSettings(
        "shop.internal",
        (Upstream("127.0.0.1", 5353), Upstream("192.0.2.1", 53), Upstream("fe80::1%eth0", 53)),
    )
    assert stack.warnings == ()


def test_an_empty_upstream_list_means_no_forwarding() -> None:
    stack = parse(BASE + "x-linkd: {dns: {upstreams: []}}\n")
    assert stack.dns.upstreams == ()


def test_it_survives_linkd_config() -> None:
    stack = parse(BASE + 'x-linkd: {dns: {domain: corp, upstreams: ["::1", "10.0.0.2:54"]}}\n')
    again = parse_stack(yaml.safe_dump(stack_to_dict(stack), sort_keys=False), source="x")
    assert again.dns == stack.dns == DnsSettings(
        "corp", (Upstream("::1", 53), Upstream("10.0.0.2", 54))
    )
    assert "x-linkd" not in stack_to_dict(parse(BASE))  # defaults are not written


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("domain: 'bad_label.x'", "x-linkd.dns.domain (line 5): expected a domain of DNS labels"),
        ("domain: ''", "x-linkd.dns.domain (line 5): expected a domain"),
        ("domain: 1.in-addr.arpa", "x-linkd.dns.domain (line 5): \"1.in-addr.arpa\" is reserved"),
        ("domain: localhost", "is reserved"),
        ("upstreams: dns.example", "x-linkd.dns.upstreams (line 5): expected a list"),
        ("upstreams: [resolver.example]", "x-linkd.dns.upstreams[0] (line 5): expected an "
         "upstream as an IP address"),
        ("upstreams: ['127.0.0.1:0']", "expected a port between 1 and 65535"),
        ("upstreams: ['[::1']", 'expected "[IPv6]:PORT"'),
        ("upstreams: [1.1.1.1, 1.0.0.1, 8.8.8.8, 8.8.4.4]", "at most 3 upstreams"),
    ],
)
def test_bad_settings_name_the_field(setting: str, message: str) -> None:
    found = problems(BASE + f"x-linkd:\n  dns:\n    {setting}\n")
    assert any(message in p for p in found), found


def test_unknown_keys_under_x_linkd_are_warned_about() -> None:
    stack = parse(BASE + "x-linkd:\n  dns:\n    domian: x\n  colour: blue\n")
    assert any("x-linkd.colour" in w for w in stack.warnings)
    assert any("x-linkd.dns.domian" in w and "domain" in w for w in stack.warnings)


# --- network_mode: none -------------------------------------------------------------------


def test_network_mode_none_is_loopback_only_and_survives_config() -> None:
    stack = parse("""
services:
  solo: {command: ["sleep", "1"], network_mode: none}
  web: {command: ["sleep", "1"]}
""")
    assert stack.service("solo").networks == ()
    assert [n.name for n in stack.networks] == ["default"]  # web's, not solo's
    again = parse_stack(yaml.safe_dump(stack_to_dict(stack), sort_keys=False), source="x")
    assert again.service("solo").networks == ()


@pytest.mark.parametrize(
    ("service", "message"),
    [
        ('{command: ["a"], network_mode: none, networks: [default]}',
         '"network_mode: none" and "networks" cannot be combined'),
        ('{command: ["a"], network_mode: overlay}', 'expected network_mode "none", "host", '
                                                     '"bridge", "service:NAME" or '
                                                     '"container:NAME"'),
        ('{command: ["a"], network_mode: "service:web"}', 'unknown service "web"'),
    ],
)
def test_unknown_network_modes_are_refused(service: str, message: str) -> None:
    found = problems(f"services:\n  solo: {service}\n")
    assert any(p.startswith("services.solo.network_mode (line 2): ") for p in found), found
    assert any(message in p for p in found), found


def test_host_access_entries_and_their_round_trip() -> None:
    stack = parse(BASE + 'x-linkd: {host: ["5432", "53/udp", "192.0.2.2:8000-8010/tcp"]}\n')
    assert stack.host_access == (
        HostAccess(5432, 5432, "tcp"),
        HostAccess(53, 53, "udp"),
        HostAccess(8000, 8010, "tcp", "192.0.2.2"),
    )
    again = parse_stack(yaml.safe_dump(stack_to_dict(stack), sort_keys=False), source="x")
    assert again.host_access == stack.host_access
    assert parse(BASE).host_access == ()  # by default containers reach no host service


@pytest.mark.parametrize(("entry", "message"), [
    ("web", "expected [ADDRESS:]PORT[-PORT][/tcp|udp]"),
    ("0", "ports are 1-65535"),
    ("90-80", "not above the last"),
    ("53/icmp", 'protocol "icmp": tcp or udp'),
    ("127.0.0.1:53", "never reach the host's loopback"),
    ("300.1.1.1:53", "is no IPv4 address"),
])
def test_bad_host_access_entries_name_the_entry_and_the_form(entry: str, message: str) -> None:
    found = problems(BASE + f'x-linkd:\n  host: ["{entry}"]\n')
    assert len(found) == 1 and found[0].startswith("x-linkd.host[0] (line 4)"), found
    assert message in found[0]
