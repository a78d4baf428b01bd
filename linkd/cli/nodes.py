"""`linkd node ls`: the cluster's nodes as the local daemon sees them (docs/cluster.md).

A reading command: it asks the daemon over its unix socket (linkd.client.api) and prints
the JSON it answers, importing nothing of the runtime (the daemon alone talks to etcd).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from linkd.client.api import Client
from linkd.errors import LinkdError


def cmd_ls(args: argparse.Namespace) -> int:
    client = Client()
    try:
        answer = client.request("GET", "/v1/nodes", timeout=10)
    except OSError as exc:
        raise LinkdError(f"no linkd daemon answers at {client.path} ({exc.strerror or exc}); "
                         "start one with `linkd daemon --cluster http://ETCD:2379,...`"
                         ) from None
    if args.format == "json":
        print(json.dumps(answer, indent=2))
        return 0
    print(node_table(answer))
    if answer.get("state") != "ready":
        why = f": {answer['error']}" if answer.get("error") else ""
        print(f"linkd: this node is {answer.get('state')}{why}", file=sys.stderr)
    for bad in answer.get("invalid") or []:
        print(f"linkd: skipped {bad.get('key')}: {bad.get('error')}", file=sys.stderr)
    if answer.get("truncated"):
        print("linkd: etcd holds more nodes than one read returns; the list is cut",
              file=sys.stderr)
    return 0


def node_table(answer: dict[str, Any]) -> str:
    """NAME (this node marked `*`, as `docker node ls` marks it), ADDRESS, STATE, LABELS."""
    rows = [("NAME", "ADDRESS", "STATE", "LABELS", "LINKD")]
    for node in answer.get("nodes") or []:
        labels = ",".join(f"{k}={v}" for k, v in sorted((node.get("labels") or {}).items()))
        name = str(node.get("name")) + (" *" if node.get("self") else "")
        rows.append((name, str(node.get("address")), str(node.get("state")), labels,
                     str(node.get("version"))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)
    return "\n".join(line.rstrip() for line in lines)
