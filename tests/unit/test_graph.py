"""`linkd graph` (linkd.core.topology, linkd.core.graph_formats): a stack's networks,
containers, links and published ports, drawn as DOT, Mermaid or SVG; whatever the names
hold, each format stays well-formed (names come from stack files)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import replace
from ipaddress import IPv4Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linkd.core import graph_formats, topology
from linkd.core.state import ContainerState, StackState
from linkd.spec.stack_file import parse_stack
from tests.planning import realize

STACK = """
services:
  db: {command: x, expose: ["5432"], networks: [back], healthcheck: {test: [CMD, x]}}
  web:
    command: y
    deploy: {replicas: 2}
    networks: [front, back]
    links: ["db:database"]
    ports: ["80"]
    x-linkd: {conventions: [docker-links]}
networks: {front: {}, back: {internal: true}}
"""


def state() -> StackState:
    plan = realize(parse_stack(STACK, source="t.yaml", project_name="shop"),
                   {"front": IPv4Network("10.87.1.0/24"), "back": IPv4Network("10.87.2.0/24")})
    web1 = plan.container("web-1")
    published = tuple(replace(p, host_start=8080, host_end=8080) if p.published else p
                      for p in web1.ports)
    plan = replace(plan, containers=tuple(replace(c, ports=published) if c.name == "web-1"
                                          else c for c in plan.containers))
    return StackState(plan, "t.yaml", "up", None, (
        ContainerState("db-1", "running", health="healthy"),
        ContainerState("web-1", "running", restarts=2),
        ContainerState("web-2", "exited", exit_code=1)))


def test_the_topology_holds_networks_containers_links_and_ports() -> None:
    s = state()
    topo = topology.topology(s)
    assert [(n.key, n.subnet, n.internal) for n in topo.networks] == [
        ("front", "10.87.1.0/24", False), ("back", "10.87.2.0/24", True)]
    conditions = {c.name: (c.condition, c.restarts, c.exit_code) for c in topo.containers}
    assert conditions == {"db-1": ("healthy", 0, None), "web-1": ("running", 2, None),
                          "web-2": ("stopped", 0, 1)}
    web1 = next(c for c in topo.containers if c.name == "web-1")
    assert web1.addresses == tuple((i.network, str(i.address))
                                   for i in s.plan.container("web-1").interfaces)
    assert {(k.source, k.target, k.alias, k.conventions) for k in topo.links} == {
        ("web-1", "db-1", "database", ("docker-links",)),
        ("web-2", "db-1", "database", ("docker-links",))}
    assert topo.ports == (topology.Port("web-1", "0.0.0.0:8080", "80/tcp"),)


def test_each_format_draws_every_part() -> None:
    topo = topology.topology(state())
    dot = graph_formats.render(topo, "dot")
    assert dot.startswith('digraph "shop" {') and dot.rstrip().endswith("}")
    assert '"web-1" -> "db-1" [label="database (docker-links)"]' in dot
    assert '"port:0.0.0.0:8080/80/tcp" -> "web-1"' in dot
    assert 'fillcolor="#b7e4c7"' in dot  # db-1 healthy
    mermaid = graph_formats.render(topo, "mermaid")
    assert mermaid.startswith("flowchart LR\n")
    assert 'c3_web_1 -->|"database #40;docker-links#41;"| c2_db_1' in mermaid
    assert 'c3_web_1 -.-|"10.87.1.2"| n0_front' in mermaid
    assert "class c4_web_2 stopped" in mermaid and "classDef stopped fill:#dee2e6" in mermaid
    svg = ET.fromstring(graph_formats.render(topo, "svg"))
    texts = [t.text for t in svg.iter("{http://www.w3.org/2000/svg}text")]
    assert {"stack shop", "db-1", "web-1", "web-2", "front", "back", "0.0.0.0:8080"} <= set(texts)
    assert "database (docker-links)" in texts and "web · running, 2 restarts" in texts
    assert "web · stopped (exit 1)" in texts
    with pytest.raises(ValueError, match="one of svg, dot, mermaid"):
        graph_formats.render(topo, "png")


NAMES = st.text(min_size=1, max_size=12)


@settings(max_examples=150, deadline=None)
@given(NAMES, NAMES, NAMES, NAMES)
def test_any_name_stays_inside_its_label(stack: str, container: str, network: str,
                                         alias: str) -> None:
    topo = topology.Topology(
        stack, (topology.Network(network, "10.0.0.0/24", False, None, False),),
        (topology.Container(container, "svc", "running", 0, ((network, "10.0.0.2"),)),),
        (topology.Link(container, container, alias, (alias,)),),
        (topology.Port(container, "0.0.0.0:80", "80/tcp"),))
    ET.fromstring(graph_formats.render(topo, "svg"))  # well-formed XML
    for line in graph_formats.render(topo, "dot").splitlines():
        unescaped = line.replace("\\\\", "").replace('\\"', "")
        assert unescaped.count('"') % 2 == 0, line
    for line in graph_formats.render(topo, "mermaid").splitlines()[1:]:
        labels = line.split('"')[1::2]
        assert all('"' not in part for part in labels)
        assert line.count('"') % 2 == 0, line
