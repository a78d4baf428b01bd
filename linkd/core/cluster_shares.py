"""How each node's share of a stack that spans nodes is doing, and what `linkd ps` on the
origin shows of the containers other nodes run.

A node that runs a share of a stack (linkd.core.cluster_stacks) says how it went under
`shares/<stack>/<node>`, under its lease: the generation of the stack's record it ran,
and the error that refused it (an image or a bind source missing there), or none. A
node that dies takes its word with it.

`remote_rows`: the rows `ps` shows for the containers of other nodes, from what the
cluster says of them: a share refused is "failed" with its reason; a container with an
endpoint record is running (`(healthy)` once its healthcheck let it into its service's
name, `(health: starting)` before; plain "running" without a healthcheck); one without
is "pending" (its node has not started it yet, or has no record of it).

Pure: records in, rows out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from linkd.core import health
from linkd.core.cluster import (
    LAYOUT,
    RecordError,
    check_prefix,
    node_name_problem,
    record_body,
    stack_name_problem,
)
from linkd.core.cluster_endpoints import EndpointRecord
from linkd.core.cluster_stacks import StackRecord

SHARE_LIMIT = 4096  # bytes of one share's record
MAX_ERROR = 1000  # characters of the reason a share was refused



def shares_prefix(prefix: str) -> bytes:
    return f"{check_prefix(prefix)}{LAYOUT}/shares/".encode()


def share_key(stack: str, node: str, prefix: str) -> bytes:
    if stack_name_problem(stack) or node_name_problem(node) is not None:
        raise ValueError(f"{stack[:80]!r}/{node[:80]!r} cannot be a share's key")
    return shares_prefix(prefix) + f"{stack}/{node}".encode()


@dataclass(frozen=True, slots=True)
class ShareStatus:
    stack: str
    node: str
    generation: int  # of the stack's record this node ran, or tried to
    error: str | None  # why the node refused its share; None: it runs it


def encode_share(status: ShareStatus) -> bytes:
    error = status.error[:MAX_ERROR] if status.error is not None else None
    return json.dumps({"v": 1, "generation": status.generation, "error": error},
                      separators=(",", ":")).encode()


def decode_share(key: bytes, value: bytes, prefix: str) -> ShareStatus:
    """The status under `key`; RecordError naming the key and what is wrong."""
    head = shares_prefix(prefix)
    where = key[:200].decode(errors="replace")
    stack, _, node = key[len(head):].decode(errors="replace").partition("/")
    if not key.startswith(head) or stack_name_problem(stack) or node_name_problem(node):
        raise RecordError(f"{where}: not a share's key")
    body = record_body(where, value, SHARE_LIMIT, "share's record")
    generation, error = body.get("generation"), body.get("error")
    if not (isinstance(generation, int) and not isinstance(generation, bool)
            and 0 <= generation < 1 << 62):
        raise RecordError(f"{where}: generation: expected a whole number")
    if not (error is None or (isinstance(error, str) and len(error) <= MAX_ERROR)):
        raise RecordError(f"{where}: error: expected a short text or null")
    return ShareStatus(stack, node, generation, error)


@dataclass(frozen=True, slots=True)
class RemoteRow:
    """A container of another node, as `ps` shows it."""

    name: str
    service: str
    node: str
    addresses: tuple[tuple[str, str], ...]  # (network key, address)
    status: str


def remote_rows(record: StackRecord, node: str, endpoints: Iterable[EndpointRecord],
                shares: Mapping[str, ShareStatus]) -> list[RemoteRow]:
    """The containers of `record`'s stack that other nodes than `node` run; `shares`: by
    node, what each said of its share."""
    found: dict[str, list[EndpointRecord]] = {}
    for e in endpoints:
        if e.stack == record.stack.name and record.placement.get(e.container) == e.node:
            found.setdefault(e.container, []).append(e)
    checked = {s.name: health.enabled(s.healthcheck) for s in record.stack.services}
    rows = []
    for service in record.stack.services:
        for replica in range(1, service.replicas + 1):
            name = service.container(replica)
            where = record.placement.get(name, node)
            if where == node:
                continue
            mine = sorted(found.get(name, []), key=lambda e: e.network)
            share = shares.get(where)
            if share is not None and share.error is not None \
                    and share.generation == record.generation:
                status = f"failed: {share.error}"
            elif not mine:
                status = "pending"
            elif not checked[service.name]:
                status = "running"
            else:
                status = "running (healthy)" if all(e.ready for e in mine) else (
                    "running (health: starting)")
            addresses = tuple((e.network_key, str(e.address))
                              for e in mine)
            rows.append(RemoteRow(name, service.name, where, addresses, status))
    return rows
