"""`linkd graph` on a stack that runs: the picture names its networks, containers,
links and published ports, with the state and addresses the stack really has."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from tests.integration.conftest import Linkd


def test_graph_draws_the_running_stack(linkd: Linkd) -> None:
    linkd.write("""
        services:
          db: {command: sleep 300, networks: [back]}
          web:
            command: sleep 300
            networks: [front, back]
            links: ["db:database"]
            ports: ["80"]
        networks: {front: {}, back: {}}
    """)
    linkd.up()
    state = json.loads(linkd.run("inspect", "-p", linkd.project).stdout)
    web = next(c for c in state["plan"]["containers"] if c["name"] == "web-1")
    address = web["interfaces"][0]["address"]
    dot = linkd.run("graph", linkd.project, "--format", "dot").stdout
    assert dot.startswith(f'digraph "{linkd.project}" {{')
    assert '"web-1" -> "db-1" [label="database (linkd)"]' in dot  # its convention
    assert f'"web-1" -> "net:front" [dir=none, style=dotted, label="{address}"]' in dot
    assert '-> "web-1";' in dot and "→ 80/tcp" in dot  # the published port, its host port
    mermaid = linkd.run("graph", "-p", linkd.project, "--format", "mermaid").stdout
    assert mermaid.startswith("flowchart LR") and "db-1<br/>running" in mermaid
    svg = ET.fromstring(linkd.run("graph", "-p", linkd.project).stdout)
    texts = {t.text for t in svg.iter("{http://www.w3.org/2000/svg}text")}
    assert {f"stack {linkd.project}", "web-1", "db-1", "front", "back"} <= texts
    refused = linkd.run("graph", "nosuchstack", check=False)
    assert refused.returncode != 0 and "nosuchstack" in refused.stderr
