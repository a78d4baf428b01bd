"""What each node says of its share of a stack spanning nodes, and what `ps` on the origin
shows of the other nodes' containers (linkd.core.cluster_shares); the ps table's NODE
column (linkd.cli.reading.table)."""

from __future__ import annotations

import contextlib
from ipaddress import IPv4Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from linkd.cli.reading import table
from linkd.core import cluster_shares as sh
from linkd.core import cluster_stacks as cs
from linkd.core.cluster import RecordError
from linkd.core.cluster_endpoints import EndpointRecord
from linkd.core.placement import NodeFacts
from linkd.spec.stack_file import parse_stack

PREFIX = "/linkd/"
STACK = cs.spanning(parse_stack("""
services:
  db:
    command: x
    healthcheck: {test: [CMD, "true"]}
    deploy: {placement: {constraints: ["node.hostname == db1"]}}
  web:
    command: x
    deploy: {replicas: 2, placement: {constraints: ["node.hostname != db1"]}}
  tool: {command: x}
""", source="t.yaml", project_name="shop"))
NODES = [NodeFacts("db1"), NodeFacts("app1"), NodeFacts("app2")]
RECORD = cs.StackRecord(STACK, "app1", 4, cs.placement(STACK, NODES, "app1"), "/srv/t.yaml")


def endpoint(container: str, node: str, address: str, *, ready: bool = True,
             stack: str = "shop") -> EndpointRecord:
    service = container.rsplit("-", 1)[0]
    return EndpointRecord(
        network=f"{stack}/default", node=node, underlay=IPv4Address("192.0.2.1"),
        stack=stack, container=container, service=service, replica=1, hostname=container,
        aliases=(), address=IPv4Address(address), address6=None, mac="02:42:0a:57:00:02",
        ready=ready)


def test_a_share_s_word_reads_back_as_written() -> None:
    key = sh.share_key("shop", "db1", PREFIX)
    assert key == b"/linkd/v1/shares/shop/db1"
    for status in (sh.ShareStatus("shop", "db1", 4, None),
                   sh.ShareStatus("shop", "db1", 5, "image x:1 is not in the store")):
        assert sh.decode_share(key, sh.encode_share(status), PREFIX) == status


@pytest.mark.parametrize(("key", "value", "why"), [
    (b"/linkd/v1/shares/shop", b'{"v":1,"generation":1,"error":null}', "not a share's key"),
    (b"/linkd/v1/shares/Shop/db1", b'{"v":1,"generation":1,"error":null}', "key"),
    (b"/linkd/v1/shares/shop/db_1", b'{"v":1,"generation":1,"error":null}', "key"),
    (b"/linkd/v1/shares/shop/db1", b"[", "not JSON"),
    (b"/linkd/v1/shares/shop/db1", b'{"v":2}', "layout 1"),
    (b"/linkd/v1/shares/shop/db1", b'{"v":1,"generation":true,"error":null}', "generation"),
    (b"/linkd/v1/shares/shop/db1", b'{"v":1,"generation":-1,"error":null}', "generation"),
    (b"/linkd/v1/shares/shop/db1", b'{"v":1,"generation":1,"error":7}', "error"),
    (b"/linkd/v1/shares/shop/db1", b'{"v":1,"generation":1,"error":"' + b"x" * 2000 + b'"}',
     "error"),
    (b"/linkd/v1/shares/shop/db1", b" " * 5000, "at most"),
])
def test_a_share_s_word_that_no_node_writes_is_refused(key: bytes, value: bytes,
                                                      why: str) -> None:
    with pytest.raises(RecordError, match=why):
        sh.decode_share(key, value, PREFIX)


@given(st.binary(max_size=300))
def test_any_bytes_decode_or_are_refused(value: bytes) -> None:
    with contextlib.suppress(RecordError):
        sh.decode_share(b"/linkd/v1/shares/shop/db1", value, PREFIX)


def test_the_other_nodes_containers_as_ps_shows_them() -> None:
    assert dict(RECORD.placement) == {"db-1": "db1", "web-1": "app1", "web-2": "app2",
                                      "tool-1": "app1"}
    endpoints = [endpoint("db-1", "db1", "10.87.0.2", ready=False),
                 endpoint("web-2", "app2", "10.87.0.4"),
                 endpoint("web-1", "app1", "10.87.0.3"),  # this node's own: not a row
                 endpoint("db-1", "app2", "10.87.0.9"),  # not where the record places it
                 endpoint("db-1", "db1", "10.87.0.2", stack="other")]
    rows = sh.remote_rows(RECORD, "app1", endpoints, {})
    assert rows == [
        sh.RemoteRow("db-1", "db", "db1", (("default", "10.87.0.2"),),
                     "running (health: starting)"),
        sh.RemoteRow("web-2", "web", "app2", (("default", "10.87.0.4"),), "running")]
    ready = [endpoint("db-1", "db1", "10.87.0.2")]
    assert sh.remote_rows(RECORD, "app1", ready, {})[0].status == "running (healthy)"
    # no record yet: pending; a share refused for this generation: failed, saying why
    assert [r.status for r in sh.remote_rows(RECORD, "app1", [], {})] == ["pending"] * 2
    refused = {"db1": sh.ShareStatus("shop", "db1", 4, "no image x:1 here")}
    assert sh.remote_rows(RECORD, "app1", [], refused)[0].status == "failed: no image x:1 here"
    older = {"db1": sh.ShareStatus("shop", "db1", 3, "no image x:1 here")}
    assert sh.remote_rows(RECORD, "app1", [], older)[0].status == "pending"


def _state(cluster: dict[str, object] | None) -> dict[str, object]:
    state: dict[str, object] = {
        "plan": {"stack": "shop", "containers": [
            {"name": "web-1", "service": "web", "labels": {},
             "interfaces": [{"network": "default", "address": "10.87.0.3", "address6": None}]}]},
        "containers": [{"name": "web-1", "status": "running", "exit_code": None,
                        "health": None, "restarts": 0}],
    }
    if cluster is not None:
        state["cluster"] = cluster
    return state


def test_ps_shows_a_node_column_only_for_a_stack_spanning_nodes() -> None:
    alone = table(_state(None))
    assert alone.splitlines() == [
        "STACK  SERVICE  CONTAINER  ADDRESSES          STATE",
        "shop   web      web-1      default=10.87.0.3  running"]
    spread = table(_state({"node": "app1", "remote": [
        {"name": "db-1", "service": "db", "node": "db1", "status": "pending",
         "interfaces": []}]}))
    assert spread.splitlines() == [
        "STACK  SERVICE  CONTAINER  NODE  ADDRESSES          STATE",
        "shop   db       db-1       db1                      pending",
        "shop   web      web-1      app1  default=10.87.0.3  running"]
