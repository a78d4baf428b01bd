"""A container's live bindings: what its links resolve to, as files a program can re-read.

Inside the container, `/run/linkd/links.env` holds the variables its links' conventions
give (`NAME='value'` lines, shell-quoted, the same values as its environment) and
`/run/linkd/links.json` every link with the peer's addresses, ports and whether it is
running now. The runtime rewrites both atomically (write, then rename, in a directory
bound into the container) whenever a peer's state changes, so a program that reads them
again sees the change; the environment, fixed at exec, cannot change.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Collection, Sequence

from linkd.core.plan import ContainerPlan, StackPlan

DIRECTORY = "/run/linkd"  # inside the container
ENV_FILE = "links.env"
JSON_FILE = "links.json"


def links_env(container: ContainerPlan) -> str:
    from_links = {name for name, _, _ in container.env_sources}
    return "".join(
        f"{name}={shlex.quote(value)}\n" for name, value in container.env if name in from_links
    )


def links_json(plan: StackPlan, container: ContainerPlan, running: Collection[str],
               elsewhere: Sequence[ContainerPlan] = ()) -> str:
    """The links of `container`; `running` names the containers running now, `elsewhere`
    the stack's containers running on other nodes (a stack spanning a cluster's nodes:
    its plan here holds this node's share only)."""
    mine = [i.network for i in container.interfaces]
    links = []
    for alias, service in container.links:
        here = plan.of_service(service)
        replicas = sorted([*here, *(c for c in elsewhere if c.service == service)],
                          key=lambda c: c.replica)
        away = {c.name for c in elsewhere}
        peers = []
        for peer in replicas:
            shared = [i for i in peer.interfaces if i.network in mine]
            if not shared:
                continue
            first = min(shared, key=lambda i: mine.index(i.network))
            peers.append(
                {
                    "container": peer.name,
                    "address": str(first.address),
                    "address6": None if first.address6 is None else str(first.address6),
                    "network": first.network,
                    "running": peer.name in running or peer.name in away,
                }
            )
        specs = replicas[0].ports if replicas else ()
        ports = [
            {"port": n, "protocol": p.protocol, "name": p.name} for p in specs for n in p.numbers()
        ]
        links.append({"alias": alias, "service": service, "ports": ports, "peers": peers})
    env = dict(container.env)
    variables = {
        name: {"value": env[name], "convention": conv, "link": alias}
        for name, conv, alias in container.env_sources
    }
    document = {"container": container.name, "links": links, "variables": variables}
    return json.dumps(document, indent=2, sort_keys=False) + "\n"
