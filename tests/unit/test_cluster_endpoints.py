"""Endpoint records' etcd layout (linkd.core.cluster_endpoints): keys, the record codec
and what a node publishes. Records come from other nodes, so decoding takes hostile
input: golden cases, then generated ones (valid records round-trip; anything else is a
RecordError and nothing but)."""

from __future__ import annotations

import json
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linkd.core import cluster_endpoints as c
from linkd.core.cluster import RecordError
from linkd.core.cluster_endpoints import EndpointKey, EndpointRecord, Publish
from linkd.errors import UsageError

P = "/linkd/"
RECORD = EndpointRecord(
    network="shop/back", node="db1", underlay=IPv4Address("192.0.2.1"), stack="shop",
    container="web-1", service="web", replica=1, hostname="web-1", aliases=("api",),
    address=IPv4Address("10.87.3.2"), address6=IPv6Address("fd00::2"),
    mac="02:42:0a:57:03:02", ready=True, ports=((80, "tcp", "http"), (53, "udp", None)))
KEY = b"/linkd/v1/endpoints/shop/back/db1/shop/web-1"


def test_key() -> None:
    assert c.endpoint_key_of(RECORD, P) == KEY
    assert c.parse_endpoint_key(KEY, P) == EndpointKey("shop/back", "db1", "shop", "web-1")
    assert c.endpoints_prefix("/x/") == b"/x/v1/endpoints/"


@pytest.mark.parametrize("parts", [
    EndpointKey("shop", "db1", "shop", "web-1"),  # a network id is <stack>/<network>
    EndpointKey("shop/back/x", "db1", "shop", "web-1"),
    EndpointKey("shop/back", "DB 1", "shop", "web-1"),
    EndpointKey("shop/back", "db1/x", "shop", "web-1"),
    EndpointKey("shop/back", "db1", "Shop", "web-1"),
    EndpointKey("shop/back", "db1", "shop", "web/1"),
    EndpointKey("shop/back", "db1", "shop", ".."),
    EndpointKey("shop/back", "db1", "shop", ""),
])
def test_names_that_cannot_make_a_key(parts: EndpointKey) -> None:
    with pytest.raises(ValueError):
        c.endpoint_key(parts, P)


@pytest.mark.parametrize("key", [
    b"/linkd/v1/endpoints/shop/back/db1/shop",  # four parts
    b"/linkd/v1/endpoints/shop/back/db1/shop/web-1/x",  # six
    b"/linkd/v1/endpoints/shop/back/db1//web-1",
    b"/linkd/v1/endpoints/shop/back/db\xff/shop/web-1",
    b"/linkd/v1/nodes/db1",
    b"/other/v1/endpoints/shop/back/db1/shop/web-1",
])
def test_keys_that_are_not_an_endpoints(key: bytes) -> None:
    with pytest.raises(RecordError):
        c.parse_endpoint_key(key, P)


def test_round_trip() -> None:
    data = c.encode_endpoint(RECORD)
    assert c.decode_endpoint(KEY, data, P) == RECORD
    no_v6 = replace(RECORD, address6=None, ports=(), aliases=(), ready=False)
    assert c.decode_endpoint(KEY, c.encode_endpoint(no_v6), P) == no_v6


def _body(**change: object) -> bytes:
    body: dict[str, Any] = json.loads(c.encode_endpoint(RECORD))
    body.update(change)
    return json.dumps(body).encode()


@pytest.mark.parametrize("value,match", [
    (b"x" * 5000, "at most 4096 bytes"),
    (b"[1]", "JSON object"),
    (b"\xff", "not JSON"),
    (b"[" * 3000, "not JSON|JSON object"),
    (b'{"v": 2}', "layout version 2"),
    (b'{"v": true}', "layout version"),
    (b'{"v": 1}', "network: missing"),
    (_body(node="db2"), "not the key's"),
    (_body(network="shop/front"), "not the key's"),
    (_body(container="web-2"), "not the key's"),
    (_body(underlay="0.0.0.0"), "underlay"),
    (_body(underlay="224.0.0.1"), "underlay"),
    (_body(underlay="192.0.2.01"), "underlay"),
    (_body(underlay="fd00::0:1"), "canonical"),
    (_body(service="-web"), "service"),
    (_body(service="a" * 64), "service"),
    (_body(replica=0), "replica"),
    (_body(replica=True), "replica"),
    (_body(replica=1.0), "replica"),
    (_body(replica=c.MAX_REPLICA + 1), "replica"),
    (_body(hostname="a" * 65), "hostname"),
    (_body(hostname="a..b"), "hostname"),
    (_body(hostname="\x1b[2J"), "hostname"),
    (_body(aliases="api"), "aliases"),
    (_body(aliases=["api", "api"]), "twice"),
    (_body(aliases=["x" * 64]), "aliases"),
    (_body(aliases=[f"a{i}" for i in range(c.MAX_ALIASES + 1)]), "at most"),
    (_body(aliases=[1]), "aliases"),
    (_body(address="10.87.3.256"), "address"),
    (_body(address="fd00::2"), "address"),
    (_body(address6="10.87.3.2"), "address6"),
    (_body(address6="FD00::2"), "canonical"),
    (_body(mac="01:00:5e:00:00:01"), "multicast"),
    (_body(mac="02:42:0A:57:03:02"), "mac"),
    (_body(mac="00:00:00:00:00:00"), "mac"),
    (_body(ready=1), "ready"),
    (_body(ready=None), "ready"),
    (_body(ports=[[0, "tcp", None]]), "ports"),
    (_body(ports=[[80, "sctp", None]]), "tcp or udp"),
    (_body(ports=[[80, "tcp", "a" * 16]]), "port name"),
    (_body(ports=[[80, "tcp", "80"]]), "port name"),
    (_body(ports=[[80, "tcp"]]), "ports"),
    (_body(ports=[[80, "tcp", None], [80, "tcp", "http"]]), "twice"),
    (_body(ports=[[i, "tcp", None] for i in range(1, c.MAX_PORTS + 2)]), "at most"),
])
def test_hostile_records_are_refused(value: bytes, match: str) -> None:
    with pytest.raises(RecordError, match=match) as caught:
        c.decode_endpoint(KEY, value, P)
    message = str(caught.value)
    assert message.startswith(repr(KEY)) and "\n" not in message and len(message) < 600


def test_many_problems_are_said_in_one_bounded_line() -> None:
    body = {name: None for name in json.loads(c.encode_endpoint(RECORD))} | {"v": 1}
    with pytest.raises(RecordError, match="and 10 more") as caught:
        c.decode_endpoint(KEY, json.dumps(body).encode(), P)
    assert len(str(caught.value)) < 600


def test_unknown_fields_are_ignored() -> None:
    """A newer linkd may add fields; an older one reads what it knows."""
    assert c.decode_endpoint(KEY, _body(weight=3), P) == RECORD


def test_what_no_node_would_read_is_not_written() -> None:
    with pytest.raises(UsageError, match="fewer or shorter aliases"):
        long = ".".join(["a" * 63] * 3)
        c.encode_endpoint(replace(RECORD, aliases=tuple(f"{long}{i}" for i in range(30))))
    with pytest.raises(ValueError, match="mac"):
        c.encode_endpoint(replace(RECORD, mac="02:42:0A:57:03:02"))
    with pytest.raises(ValueError, match="node"):
        c.encode_endpoint(replace(RECORD, node="-bad"))


# -- generated ---------------------------------------------------------------------------

_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
_part = st.from_regex(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,20}", fullmatch=True)
_stack = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,20}", fullmatch=True)


@st.composite
def records(draw: st.DrawFn) -> EndpointRecord:
    mac = draw(st.binary(min_size=6, max_size=6).filter(
        lambda b: not b[0] & 1 and any(b)))
    ports = draw(st.lists(st.tuples(st.integers(1, 65535), st.sampled_from(("tcp", "udp")),
                                    st.none() | _label.filter(lambda x: not x.isdigit()
                                                              and "--" not in x)),
                          max_size=c.MAX_PORTS, unique_by=lambda p: (p[0], p[1])))
    return EndpointRecord(
        network=f"{draw(_stack)}/{draw(_part)}",
        node=".".join(draw(st.lists(_label, min_size=1, max_size=3))),
        underlay=draw(st.sampled_from((IPv4Address("192.0.2.7"), IPv4Address("10.0.0.1"))))
        if draw(st.booleans()) else IPv6Address("2001:db8::7"),
        stack=draw(_stack),
        container=draw(_part),
        service=draw(st.from_regex(r"[a-zA-Z0-9][a-zA-Z0-9_-]{0,30}", fullmatch=True)),
        replica=draw(st.integers(1, c.MAX_REPLICA)),
        hostname=draw(st.from_regex(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,30}[A-Za-z0-9_])?",
                                    fullmatch=True)),
        aliases=tuple(draw(st.lists(_label, max_size=8, unique=True))),
        address=IPv4Address(draw(st.integers(0, 2**32 - 1))),
        address6=draw(st.none() | st.integers(0, 2**128 - 1).map(IPv6Address)),
        mac=":".join(f"{b:02x}" for b in mac),
        ready=draw(st.booleans()),
        ports=tuple(ports),  # type: ignore[arg-type]  # protocols drawn from tcp, udp
    )


@settings(max_examples=300, deadline=None)
@given(records())
def test_every_record_round_trips(record: EndpointRecord) -> None:
    key = c.endpoint_key_of(record, P)
    assert c.parse_endpoint_key(key, P) == record.parts
    assert c.decode_endpoint(key, c.encode_endpoint(record), P) == record


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=6000))
def test_any_bytes_decode_or_are_refused(value: bytes) -> None:
    try:
        got = c.decode_endpoint(KEY, value, P)
    except RecordError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 600
    else:
        assert c.encode_endpoint(got)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(sorted(json.loads(c.encode_endpoint(RECORD)))), _json)
def test_any_field_value_decodes_or_is_refused(field: str, value: object) -> None:
    """A valid record with one field replaced by any JSON value."""
    try:
        got = c.decode_endpoint(KEY, _body(**{field: value}), P)
    except RecordError as exc:
        assert "\n" not in str(exc)
    else:  # what is believed can be written back as it was read
        assert c.decode_endpoint(KEY, c.encode_endpoint(got), P) == got


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_key_parses_or_is_refused(tail: bytes) -> None:
    key = c.endpoints_prefix(P) + tail
    try:
        parts = c.parse_endpoint_key(key, P)
    except RecordError:
        return
    assert c.endpoint_key(parts, P) == key  # one way only


@settings(max_examples=200, deadline=None)
@given(records(), st.integers(0, c.ENDPOINT_LIMIT))
def test_oversize_is_refused_whatever_it_holds(record: EndpointRecord, pad: int) -> None:
    body = json.loads(c.encode_endpoint(record))
    body["padding"] = "x" * pad  # an unknown field: ignored, but counted
    data = json.dumps(body).encode()
    key = c.endpoint_key_of(record, P)
    if len(data) > c.ENDPOINT_LIMIT:
        with pytest.raises(RecordError, match="at most"):
            c.decode_endpoint(key, data, P)
    else:
        assert c.decode_endpoint(key, data, P) == record


# -- what a node publishes ---------------------------------------------------------------


def test_plan_publish() -> None:
    lease = 7
    wanted = {b"a": b"1", b"b": b"2", b"c": b"3"}
    held = {b"a": (b"1", 7), b"b": (b"old", 7), b"c": (b"3", 5), b"d": (b"4", 7),
            b"e": (b"5", 3)}
    # b changed, c under an old lease, d and e no longer wanted (whatever their lease)
    assert c.plan_publish(wanted, held, lease) == Publish((b"b", b"c"), (b"d", b"e"))
    assert c.plan_publish(wanted, {k: (v, lease) for k, v in wanted.items()}, lease).empty()
    assert c.plan_publish({}, {}, lease).empty()
    # a new lease: everything again
    assert c.plan_publish(wanted, {k: (v, lease) for k, v in wanted.items()}, 8).puts == \
        (b"a", b"b", b"c")
