"""The cluster's pure core (linkd.core.cluster): node names, labels, etcd endpoints, the
key layout, and node records, whose decoding takes whatever another node (or anyone
with access to etcd) wrote: golden cases, then generated attacks."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from linkd.cli.nodes import node_table
from linkd.core import cluster
from linkd.core.cluster import (
    Endpoint,
    NodeRecord,
    RecordError,
    decode_record,
    encode_record,
    node_key,
    parse_endpoints,
)
from linkd.errors import UsageError

RECORD = NodeRecord("db1", "198.18.0.2", {"zone": "a", "disk": "ssd"}, "0.1.0",
                    1700000000.5, "ready", "0123abcd")
KEY = b"/linkd/v1/nodes/db1"


@pytest.mark.parametrize("name", ["db1", "a", "node-1.example.com", "x" * 63,
                                  ".".join(["a" * 63] * 3) + "." + "b" * 61])
def test_host_names_name_nodes(name: str) -> None:
    assert cluster.node_name_problem(name) is None


@pytest.mark.parametrize(("name", "why"), [
    ("", "empty"), ("-db", "host name"), ("db-", "host name"), ("d_b", "host name"),
    ("db..x", "host name"), ("db.", "host name"), ("x" * 64, "host name"),
    ("a" * 254, "253"), ("db/1", "host name"), ("db 1", "host name"), ("dé", "host name"),
    ("DB1", "host name"),  # check_node_name lower-cases first
])
def test_what_is_no_node_name(name: str, why: str) -> None:
    problem = cluster.node_name_problem(name)
    assert problem is not None and why in problem


def test_node_names_are_lower_cased() -> None:
    assert cluster.check_node_name("DB1.Example") == "db1.example"
    with pytest.raises(UsageError, match="--node-name: 'a_b' is not a host name"):
        cluster.check_node_name("a_b")


def test_labels() -> None:
    assert cluster.parse_labels(["zone=a", "com.example.disk=ssd", "empty="]) == {
        "zone": "a", "com.example.disk": "ssd", "empty": ""}
    for bad, message in [("zone", "expected KEY=VALUE"), ("=a", "label key ''"),
                         ("-x=1", "label key '-x'"), ("a=b\nc", "control character"),
                         ("a=" + "v" * 257, "at most 256")]:
        with pytest.raises(UsageError, match=message):
            cluster.parse_labels([bad])
    with pytest.raises(UsageError, match="zone is given twice"):
        cluster.parse_labels(["zone=a", "zone=b"])
    with pytest.raises(UsageError, match="at most 64 labels"):
        cluster.parse_labels([f"k{i}=v" for i in range(65)])


def test_endpoints() -> None:
    assert parse_endpoints("http://10.0.0.1:2379,http://10.0.0.2:22379") == (
        Endpoint("10.0.0.1", 2379), Endpoint("10.0.0.2", 22379))
    assert parse_endpoints("etcd1, 10.0.0.3:4001 ,http://[fd00::1]:2379/") == (
        Endpoint("etcd1", 2379), Endpoint("10.0.0.3", 4001), Endpoint("fd00::1", 2379))
    assert str(Endpoint("fd00::1", 2379)) == "http://[fd00::1]:2379"


@pytest.mark.parametrize(("text", "message"), [
    ("", "name one or more"), (",", "name one or more"),
    ("https://e1:2379", "only http://"), ("etcd://e1:2379", "only http://"),
    ("http://e1:2379/v3", "expected http://HOST:PORT"), ("http://u@e1:2379", "HOST:PORT"),
    ("http://e1:0", "1 to 65535"), ("http://e1:99999", "1 to 65535"), ("e1:x", "1 to 65535"),
    ("fd00::1", "in brackets"), ("http://[nope]:2379", "not an IPv6 address"),
    ("http://bad_host:2379", "neither an IP address nor a host name"),
    ("e1,e1", "named twice"), (",".join(f"e{i}" for i in range(17)), "at most 16"),
])
def test_bad_endpoints_are_refused(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_endpoints(text)


def test_config_checks_every_option() -> None:
    config = cluster.config("http://10.0.0.1:2379", "Web1", "10.0.0.9", ["a=b"], 7)
    assert (config.name, config.address, dict(config.labels), config.ttl) == (
        "web1", "10.0.0.9", {"a": "b"}, 7)
    assert cluster.config("e1", "w", "fd00:0::9", []).address == "fd00::9"
    with pytest.raises(UsageError, match="--node-address 'x'"):
        cluster.config("e1", "w", "x", [])
    with pytest.raises(UsageError, match="unicast"):
        cluster.config("e1", "w", "0.0.0.0", [])
    with pytest.raises(UsageError, match="--cluster-ttl 1: from 2 to 300"):
        cluster.config("e1", "w", None, [], 1)


def test_the_key_layout() -> None:
    assert cluster.nodes_prefix() == b"/linkd/v1/nodes/"
    assert node_key("db1") == KEY
    assert node_key("db1", "/other/") == b"/other/v1/nodes/db1"
    assert cluster.name_of_key(KEY) == "db1"
    for bad in (b"/linkd/v1/nodes/", b"/linkd/v1/nodes/a/b", b"/linkd/v1/nodes/\xff",
                b"/elsewhere/db1", b"/linkd/v1/nodes/-x"):
        with pytest.raises(RecordError):
            cluster.name_of_key(bad)
    with pytest.raises(ValueError):
        node_key("../x")
    with pytest.raises(UsageError):
        cluster.nodes_prefix("linkd")


def test_a_record_round_trips() -> None:
    data = encode_record(RECORD)
    assert decode_record(KEY, data) == RECORD
    assert json.loads(data)["v"] == 1


def test_unknown_fields_are_ignored_a_newer_layout_is_said() -> None:
    body = json.loads(encode_record(RECORD))
    assert decode_record(KEY, json.dumps({**body, "future": [1, 2]}).encode()) == RECORD
    with pytest.raises(RecordError, match=r"layout version 2 .* newer linkd"):
        decode_record(KEY, json.dumps({**body, "v": 2}).encode())


def _with(**changes: object) -> bytes:
    body = json.loads(encode_record(RECORD))
    body.update(changes)
    return json.dumps(body).encode()


@pytest.mark.parametrize(("data", "message"), [
    (b"", "not JSON"), (b"\xff\xfe", "not JSON"), (b"[1]", "expected a JSON object"),
    (b"{}", 'no layout version "v"'), (b'{"v": true}', 'no layout version'),
    (b"[" * 5000 + b"]" * 5000, "over the 8192"),
    (b"[" * 4000 + b"]" * 4000, "not JSON"),  # deeper than Python's recursion limit
    (_with(name="db2"), "name 'db2' is not the key's"),
    (_with(address="db1.example"), "address: expected an IP address"),
    (_with(address=None), "address"),
    (_with(labels=["a"]), "labels: expected an object"),
    (_with(labels={"a": 1}), "label 'a': not a string"),
    (_with(labels={"a b": "1"}), "label key 'a b'"),
    (_with(labels={f"k{i}": "v" for i in range(65)}), "at most 64"),
    (_with(version=""), "version"), (_with(version="1;rm -rf"), "version"),
    (_with(started=-1), "started"), (_with(started=True), "started"),
    (_with(started="now"), "started"), (b'{"v":1,"started":1e999}', "started"),
    (_with(state="evil"), "state: expected one of ready, leaving"),
    (_with(instance="x" * 65), "instance"), (_with(instance="é"), "instance"),
])
def test_garbled_records_are_refused_with_why(data: bytes, message: str) -> None:
    with pytest.raises(RecordError, match=message) as caught:
        decode_record(KEY, data)
    assert str(caught.value).startswith("node record db1: ")
    assert len(str(caught.value)) < 1000


def test_a_record_too_big_to_write_is_said() -> None:
    big = NodeRecord("db1", "10.0.0.1", {f"k{i}": "v" * 250 for i in range(40)}, "0.1.0",
                     1.0)
    with pytest.raises(UsageError, match="fewer or shorter labels"):
        encode_record(big)


def test_the_node_table_marks_this_node() -> None:
    answer = {"nodes": [
        cluster.node_to_plain(RECORD, own=True),
        cluster.node_to_plain(NodeRecord("web1", "198.18.0.6", {}, "0.1.0", 1.0), own=False,
                              state="unknown"),
    ]}
    assert node_table(answer).splitlines() == [
        "NAME   ADDRESS     STATE    LABELS           LINKD",
        "db1 *  198.18.0.2  ready    disk=ssd,zone=a  0.1.0",
        "web1   198.18.0.6  unknown                   0.1.0",
    ]


# -- generated ---------------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300) | _json.map(lambda v: json.dumps(v).encode()))
def test_any_value_is_a_record_or_a_record_error(data: bytes) -> None:
    try:
        record = decode_record(KEY, data)
    except RecordError as exc:
        assert str(exc).startswith("node record db1: ")
    else:
        assert decode_record(KEY, encode_record(record)) == record


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(
    st.sampled_from(["v", "name", "address", "labels", "version", "started", "state",
                     "instance", "other"]), _json, max_size=9))
def test_records_with_fields_swapped_for_anything(changes: dict[str, object]) -> None:
    data = _with(**changes)
    try:
        record = decode_record(KEY, data)
    except RecordError:
        return
    assert record.name == "db1"
    assert cluster.node_name_problem(record.name) is None
    assert all(cluster.label_problem(k, v) is None for k, v in record.labels.items())
    assert record.state in cluster.RECORD_STATES


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_any_endpoint_text_parses_or_says_why(text: str) -> None:
    try:
        endpoints = parse_endpoints(text)
    except UsageError as exc:
        assert str(exc).startswith("--cluster")
    else:
        assert endpoints and all(0 < e.port < 65536 for e in endpoints)
        assert parse_endpoints(",".join(str(e) for e in endpoints)) == endpoints


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=70))
def test_a_name_is_valid_or_refused_never_a_path(name: str) -> None:
    if cluster.node_name_problem(name) is None:
        assert "/" not in name and ".." not in name
        assert cluster.name_of_key(node_key(name)) == name
