"""Stacks that span nodes (linkd.core.cluster_stacks): where each container runs, the
share of each node, the stack's networks made to span nodes, and the record in etcd,
read as untrusted input."""

from __future__ import annotations

import base64
import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from linkd.core import cluster_stacks as cs
from linkd.core.cluster import RecordError
from linkd.core.placement import NodeFacts
from linkd.errors import SpecError
from linkd.spec.stack_file import parse_stack

PREFIX = "/linkd/"
TEXT = """
services:
  db:
    command: x
    deploy: {placement: {constraints: ["node.labels.disk == ssd"]}}
  web:
    command: x
    deploy: {replicas: 3, placement: {constraints: ["node.hostname != db1"]}}
  tool: {command: x}
networks:
  default: {}
  outside: {external: true, name: elsewhere}
"""
STACK = parse_stack(TEXT, source="t.yaml", project_name="shop")
NODES = [NodeFacts("db1", labels={"disk": "ssd"}), NodeFacts("app1"), NodeFacts("app2")]


def test_each_container_goes_where_its_constraints_allow_the_rest_where_up_ran() -> None:
    where = cs.placement(STACK, NODES, "app2")
    assert where == {"db-1": "db1", "web-1": "app2", "web-2": "app1", "web-3": "app2",
                     "tool-1": "app2"}
    assert cs.spans(where, "app2")
    assert cs.share(where, "app2") == {"web-1", "web-3", "tool-1"}
    assert cs.share(where, "db1") == {"db-1"} and cs.share(where, "app9") == frozenset()
    alone = parse_stack("services: {a: {command: x}}\n", source="t.yaml",
                        project_name="one")
    assert not cs.spans(cs.placement(alone, NODES, "app1"), "app1")


def test_no_live_node_for_a_service_is_an_error_naming_it() -> None:
    with pytest.raises(SpecError) as caught:
        cs.placement(STACK, [NodeFacts("app1")], "app1")
    said = str(caught.value)
    assert "services.db.deploy.placement.constraints" in said
    assert "app1: no node.labels.disk" in said and "start linkd daemon --cluster" in said


def test_waiting_for_a_service_to_complete_on_another_node_is_refused() -> None:
    """A node sees another's containers only while they run: an exit code elsewhere is
    not something it can wait for (service_started and service_healthy it can)."""
    text = """
services:
  migrate: {command: x, deploy: {placement: {constraints: ["node.hostname == db1"]}}}
  web:
    command: x
    depends_on:
      migrate: {condition: service_completed_successfully}
      cache: {condition: service_healthy}
  cache: {command: x, healthcheck: {test: [CMD, x]},
          deploy: {placement: {constraints: ["node.hostname == db1"]}}}
"""
    stack = parse_stack(text, source="t.yaml", project_name="shop")
    with pytest.raises(SpecError) as caught:
        cs.placement(stack, NODES, "app1")
    said = str(caught.value)
    assert "services.web.depends_on.migrate.condition" in said
    assert "db1" in said and "place both on one node" in said
    assert "depends_on.cache" not in said  # healthy: waited for across nodes
    # On one node, or not required: as on a single host.
    assert cs.placement(stack, NODES, "db1")["web-1"] == "db1"
    optional = text.replace("service_completed_successfully}",
                            "service_completed_successfully, required: false}")
    assert cs.placement(parse_stack(optional, source="t.yaml", project_name="shop"),
                        NODES, "app1")["migrate-1"] == "db1"


def test_a_spanning_stack_s_own_networks_are_overlay_networks() -> None:
    drivers = {n.name: (n.driver, n.external) for n in cs.spanning(STACK).networks}
    assert drivers == {"default": ("overlay", False), "outside": ("bridge", True)}


def record() -> cs.StackRecord:
    return cs.StackRecord(STACK, "app2", 3, cs.placement(STACK, NODES, "app2"), "/srv/shop.yaml")


def test_a_record_reads_back_as_written() -> None:
    key = cs.stack_key("shop", PREFIX)
    assert key == b"/linkd/v1/stacks/shop"
    assert cs.decode_stack(key, cs.encode_stack(record()), PREFIX) == record()


def _tampered(**changes: object) -> bytes:
    body = json.loads(cs.encode_stack(record()))
    body.update(changes)
    return json.dumps(body).encode()


@pytest.mark.parametrize(("changes", "said"), [
    ({"stack": "other"}, "stack: expected shop"),
    ({"origin": "not a node!"}, "origin: expected a node name"),
    ({"generation": -1}, "generation"),
    ({"placement": {"db-1": "db1"}}, "does not name every container"),
    ({"placement": {"../x": "db1"}}, "placement: expected container names"),
    ({"model": "!!!"}, "model:"),
    ({"model": base64.b64encode(b"LINKD junk").decode()}, "model:"),
    ({"v": 2}, "layout 1"),
])
def test_a_record_that_is_not_what_a_node_writes_is_refused_saying_why(
        changes: dict[str, object], said: str) -> None:
    with pytest.raises(RecordError, match=said):
        cs.decode_stack(cs.stack_key("shop", PREFIX), _tampered(**changes), PREFIX)


def test_a_record_under_another_stack_s_key_is_refused() -> None:
    with pytest.raises(RecordError, match="stack: expected other"):
        cs.decode_stack(cs.stack_key("other", PREFIX), cs.encode_stack(record()), PREFIX)
    with pytest.raises(RecordError, match="not a stack's key"):
        cs.decode_stack(b"/linkd/v1/stacks/../x", cs.encode_stack(record()), PREFIX)


@given(st.binary(max_size=2000))
def test_any_bytes_are_a_record_or_a_record_error(data: bytes) -> None:
    with contextlib.suppress(RecordError):
        cs.decode_stack(cs.stack_key("shop", PREFIX), data, PREFIX)


@given(st.dictionaries(st.sampled_from(["v", "stack", "origin", "generation", "placement",
                                        "source", "model"]),
                       st.none() | st.integers() | st.text(max_size=20)
                       | st.dictionaries(st.text(max_size=8), st.text(max_size=8),
                                         max_size=3)))
def test_any_json_object_is_a_record_or_a_record_error(body: dict[str, object]) -> None:
    with contextlib.suppress(RecordError):
        cs.decode_stack(cs.stack_key("shop", PREFIX), json.dumps(body).encode(), PREFIX)
