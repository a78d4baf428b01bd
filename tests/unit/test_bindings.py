"""A container's live bindings (linkd.core.bindings): links.json names every replica of a
linked service with its address on the network they share and whether it runs now,
those on other nodes of a cluster too (a stack spanning nodes plans only its share
here); links.env holds the link variables, shell-quoted."""

from __future__ import annotations

import json
from dataclasses import replace
from ipaddress import IPv4Network

from linkd.core import bindings
from linkd.core.plan import StackPlan
from linkd.spec.stack_file import parse_stack
from tests.planning import realize

STACK = """
services:
  db: {command: x, expose: ["5432"], deploy: {replicas: 3}}
  web:
    command: y
    links: ["db:database"]
    x-linkd: {conventions: [docker-links]}
"""


def plan_of(only: set[str] | None = None) -> StackPlan:
    whole = realize(parse_stack(STACK, source="t.yaml", project_name="shop"),
                    {"default": IPv4Network("10.87.3.0/24")})
    if only is None:
        return whole
    return replace(whole, containers=tuple(c for c in whole.containers if c.name in only))


def test_every_replica_of_a_linked_service_is_named_with_its_address_and_state() -> None:
    plan = plan_of()
    web = plan.container("web-1")
    doc = json.loads(bindings.links_json(plan, web, running={"db-1", "db-3"}))
    (link,) = doc["links"]
    assert (link["alias"], link["service"]) == ("database", "db")
    assert link["ports"] == [{"port": 5432, "protocol": "tcp", "name": None}]
    assert [(p["container"], p["address"], p["network"], p["running"]) for p in link["peers"]] \
        == [(f"db-{n}", str(plan.container(f"db-{n}").interfaces[0].address), "default",
             n != 2) for n in (1, 2, 3)]
    assert doc["variables"]["DATABASE_PORT_5432_TCP_ADDR"]["link"] == "database"


def test_replicas_on_other_nodes_are_named_in_replica_order_and_running() -> None:
    whole = plan_of()
    share = plan_of({"web-1", "db-2"})  # this node's share; db-1 and db-3 run elsewhere
    elsewhere = [whole.container("db-3"), whole.container("db-1")]
    web = share.container("web-1")
    doc = json.loads(bindings.links_json(share, web, running={"web-1"}, elsewhere=elsewhere))
    (link,) = doc["links"]
    assert [(p["container"], p["running"]) for p in link["peers"]] == [
        ("db-1", True), ("db-2", False), ("db-3", True)]
    assert link["peers"][0]["address"] == str(whole.container("db-1").interfaces[0].address)
    # None of the service here: its ports come from the replicas elsewhere.
    alone = plan_of({"web-1"})
    doc = json.loads(bindings.links_json(alone, web, running=(), elsewhere=elsewhere))
    assert doc["links"][0]["ports"] == [{"port": 5432, "protocol": "tcp", "name": None}]
    assert [p["container"] for p in doc["links"][0]["peers"]] == ["db-1", "db-3"]
