"""Swarm's placement constraints (linkd.core.placement): read as Docker reads them,
matched without regard to case, replicas spread over the nodes that satisfy them, and a
service no node may run refused with the reason per node."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from linkd.core.placement import (
    Constraint,
    NodeFacts,
    PlacementError,
    parse_constraint,
    place,
    satisfies,
)
from linkd.errors import SpecError
from linkd.spec.dump import stack_to_dict
from linkd.spec.stack_file import parse_stack

DB1 = NodeFacts("db1", arch="x86_64", labels={"disk": "ssd", "zone": "a"})
APP1 = NodeFacts("app1", arch="x86_64", labels={"zone": "a"})
APP2 = NodeFacts("app2", arch="aarch64", labels={"zone": "b"})
NODES = (DB1, APP1, APP2)


@pytest.mark.parametrize(("text", "parsed"), [
    ("node.hostname == db1", Constraint("node.hostname", True, "db1")),
    ("node.hostname==db1", Constraint("node.hostname", True, "db1")),
    ("node.labels.disk != hdd", Constraint("node.labels.disk", False, "hdd")),
    ("node.role==manager", Constraint("node.role", True, "manager")),
    ("engine.labels.operatingsystem == ubuntu-14.04",
     Constraint("engine.labels.operatingsystem", True, "ubuntu-14.04")),
    ("node.platform.arch == x86_64", Constraint("node.platform.arch", True, "x86_64")),
])
def test_constraints_are_read_as_docker_reads_them(text: str, parsed: Constraint) -> None:
    assert parse_constraint(text) == parsed


@pytest.mark.parametrize(("text", "said"), [
    ("node.hostname db1", "has no operator"),
    ("node.name == db1", "unknown field 'node.name'"),
    ("node.labels. == x", "unknown field"),
    ("node.labels == x", "unknown field"),
    ("== db1", "is not a field name"),
    ("node.hostname == ", "is not a value"),
    ("node.hostname == db1;rm", "is not a value"),
])
def test_bad_constraints_say_what_is_wrong(text: str, said: str) -> None:
    with pytest.raises(PlacementError, match=said):
        parse_constraint(text)


def test_matching_ignores_case_and_a_missing_label_matches_only_not_equal() -> None:
    assert satisfies(DB1, parse_constraint("node.hostname == DB1"))
    assert satisfies(DB1, parse_constraint("node.labels.disk == SSD"))
    assert not satisfies(APP1, parse_constraint("node.labels.disk == ssd"))
    assert satisfies(APP1, parse_constraint("node.labels.disk != ssd"))


def test_replicas_spread_over_the_nodes_allowed_starting_where_up_ran() -> None:
    zone_a = (parse_constraint("node.labels.zone == a"),)
    assert place("db", 1, (parse_constraint("node.hostname == db1"),), NODES, "app1") \
        == ("db1",)
    assert place("api", 3, zone_a, NODES, "app1") == ("app1", "db1", "app1")
    assert place("api", 2, zone_a, NODES, "app2") == ("app1", "db1")  # app2 is zone b
    assert place("web", 2, (), NODES, "app2") == ("app2", "app2")  # unplaced: here


def test_a_service_no_node_may_run_says_why_for_each() -> None:
    with pytest.raises(PlacementError) as caught:
        place("db", 1, (parse_constraint("node.labels.disk == nvme"),), NODES, "app1")
    assert str(caught.value) == (
        "service db: no node satisfies its placement constraints (node.labels.disk == "
        "nvme): app1: no node.labels.disk; app2: no node.labels.disk; db1: "
        "node.labels.disk is 'ssd'")
    with pytest.raises(PlacementError, match="there are no nodes"):
        place("db", 1, (parse_constraint("node.hostname == db1"),), (), "app1")


@given(st.lists(st.sampled_from(["node.hostname == db1", "node.labels.zone == a",
                                 "node.labels.zone != b", "node.platform.arch == x86_64",
                                 "node.role == manager"]), max_size=4),
       st.integers(1, 7), st.sampled_from(["db1", "app1", "app2"]))
def test_every_replica_lands_on_a_node_that_satisfies_all(
        texts: list[str], replicas: int, local: str) -> None:
    constraints = tuple(map(parse_constraint, texts))
    try:
        placed = place("s", replicas, constraints, NODES, local)
    except PlacementError:
        assert not any(all(satisfies(n, c) for c in constraints) for n in NODES)
        return
    assert len(placed) == replicas
    by_name = {n.hostname: n for n in NODES}
    assert all(all(satisfies(by_name[p], c) for c in constraints) for p in placed)
    if all(satisfies(by_name[local], c) for c in constraints):
        assert placed[0] == local


@given(st.text(max_size=40))
def test_any_text_is_read_or_refused_by_name(text: str) -> None:
    try:
        parse_constraint(text)
    except PlacementError as exc:
        assert "constraint" in str(exc)


def test_a_stack_file_carries_its_constraints_and_refuses_bad_ones() -> None:
    stack = parse_stack("""
services:
  db:
    image: postgres:16
    deploy:
      replicas: 2
      placement:
        constraints: ["node.hostname == db1", "node.labels.disk != hdd"]
        preferences: [{spread: node.labels.zone}]
""", source="s.yaml", default_project="s")
    db = stack.service("db")
    assert db.replicas == 2 and db.placement == (
        Constraint("node.hostname", True, "db1"), Constraint("node.labels.disk", False, "hdd"))
    assert stack.warnings == (
        "services.db.deploy.placement.preferences (line 9): placement preferences are not "
        "read: replicas are spread over the nodes their constraints allow, in turn",)
    assert stack_to_dict(stack)["services"]["db"]["deploy"] == {"placement": {
        "constraints": ["node.hostname == db1", "node.labels.disk != hdd"]}}
    with pytest.raises(SpecError, match=r"services.db.deploy.placement.constraints\[0\] "
                       r"\(line 6\): constraint 'node.host == db1': unknown field"):
        parse_stack("services:\n  db:\n    image: x\n    deploy:\n      placement:\n"
                    "        constraints: [node.host == db1]\n", source="s.yaml",
                    default_project="s")
