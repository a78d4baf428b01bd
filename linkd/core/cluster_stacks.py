"""Stacks that span nodes: where each container runs, and the desired state every node
reads from etcd to run its share.

`up` on a cluster daemon places the stack (`placement`): each service's replicas go
where `deploy.placement.constraints` allow (linkd.core.placement), the others run on the
node where `up` ran. A stack whose containers all land there runs as on a single host.
One that spans nodes (`spans`) is written to etcd as a `StackRecord` under
`stacks/<stack>`: the stack as parsed (linkd.core.model.Stack, packed as the state
file packs values), where each container runs, the node that brought it up, and a
generation that each change bumps. Every node watches `stacks/` and runs the
containers placed on it (`share`); the stack's own networks span the nodes
(`spanning`: they become overlay networks, as a Swarm stack's do), so that its
containers reach each other, and find each other by name, wherever they run.

A record is read as untrusted input: bounded in size, every field checked, the model
decoded by the state file's decoder (which refuses any shape that is not a Stack).
What a record asks for is run, as a stack file given to `up` is: whoever may write to
etcd may run containers on every node (docs/security.md).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from linkd.core import state as codec
from linkd.core.cluster import (
    LAYOUT,
    RecordError,
    check_prefix,
    node_name_problem,
    record_body,
    stack_name_problem,
)
from linkd.core.model import Stack
from linkd.core.placement import NodeFacts, PlacementError, place
from linkd.core.state import StateError
from linkd.errors import SpecError

RECORD_LIMIT = 1 << 20  # bytes of one stack's record (etcd takes 1.5 MiB per request)
MAX_CONTAINERS = 10_000

_CONTAINER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def stacks_prefix(prefix: str) -> bytes:
    return f"{check_prefix(prefix)}{LAYOUT}/stacks/".encode()


def stack_key(stack: str, prefix: str) -> bytes:
    if stack_name_problem(stack):
        raise ValueError(f"stack name {stack[:80]!r} cannot be a key")
    return stacks_prefix(prefix) + stack.encode()


# -- placing ------------------------------------------------------------------------------


def placement(stack: Stack, nodes: Sequence[NodeFacts], local: str) -> dict[str, str]:
    """The node of each container of `stack`, by container name; SpecError naming the
    service when no live node satisfies its constraints (nothing is made then)."""
    where: dict[str, str] = {}
    problems: list[tuple[str, int | None, str]] = []
    for service in stack.services:
        try:
            chosen = place(service.name, service.replicas, service.placement, nodes, local)
        except PlacementError as exc:
            problems.append((f"services.{service.name}.deploy.placement.constraints", None,
                             f"{exc}; start linkd daemon --cluster on such a node, or "
                             "change the constraints"))
            continue
        for replica, node in enumerate(chosen, start=1):
            where[service.container(replica)] = node
    problems += _unwatchable(stack, where)
    if problems:
        raise SpecError(problems)
    return where


def _unwatchable(stack: Stack, where: Mapping[str, str]) -> list[tuple[str, int | None, str]]:
    """`depends_on` a service completing successfully, on another node: a node sees
    another's containers only while they run (their endpoint records), never an exit
    code, so the wait could not end."""
    problems: list[tuple[str, int | None, str]] = []
    services = {s.name: s for s in stack.services}
    for service in stack.services:
        mine = {where.get(service.container(r)) for r in range(1, service.replicas + 1)}
        for dependency in service.depends_on:
            other = services.get(dependency.service)
            if (other is None or dependency.condition != "service_completed_successfully"
                    or not dependency.required):
                continue
            theirs = {where.get(other.container(r)) for r in range(1, other.replicas + 1)}
            if theirs and (theirs != mine or len(mine) > 1):
                problems.append((
                    f"services.{service.name}.depends_on.{dependency.service}.condition", None,
                    f"service_completed_successfully of {dependency.service} on node(s) "
                    f"{', '.join(sorted(n for n in theirs if n))} cannot be waited for from "
                    f"{', '.join(sorted(n for n in mine if n))}: a node sees another's "
                    "containers only while they run; place both on one node, or wait for "
                    "service_started or service_healthy"))
    return problems


def spans(where: Mapping[str, str], local: str) -> bool:
    """Whether any container runs elsewhere than on `local`."""
    return any(node != local for node in where.values())


def spanning(stack: Stack) -> Stack:
    """`stack` with its own networks spanning nodes (overlay), as a stack whose
    containers run on several nodes needs them."""
    return replace(stack, networks=tuple(
        n if n.external or n.driver == "overlay" else replace(n, driver="overlay")
        for n in stack.networks))


def share(where: Mapping[str, str], node: str) -> frozenset[str]:
    """The containers `node` runs."""
    return frozenset(c for c, n in where.items() if n == node)


def elsewhere(stack: Stack, only: frozenset[str] | None) -> dict[str, tuple[str, ...]]:
    """By service, its containers that run on other nodes than the one running `only`
    (None: every container runs here, none elsewhere)."""
    if only is None:
        return {}
    found = {s.name: tuple(c for c in (s.container(r) for r in range(1, s.replicas + 1))
                           if c not in only) for s in stack.services}
    return {service: names for service, names in found.items() if names}


# -- the record ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StackRecord:
    stack: Stack
    origin: str  # the node where `up` ran
    generation: int  # bumped by every change of the stack
    placement: Mapping[str, str]  # container -> node
    source: str  # the stack file on the origin, as `ps` shows it


def encode_stack(record: StackRecord) -> bytes:
    body = {
        "v": 1,
        "stack": record.stack.name,
        "origin": record.origin,
        "generation": record.generation,
        "placement": dict(sorted(record.placement.items())),
        "source": record.source,
        "model": base64.b64encode(codec.pack(record.stack)).decode(),
    }
    data = json.dumps(body, separators=(",", ":"), ensure_ascii=True).encode()
    if len(data) > RECORD_LIMIT:
        raise SpecError([("(file)", None, f"the stack is {len(data)} bytes as the cluster "
                          f"stores it, over {RECORD_LIMIT}: split it, or make it smaller")])
    return data


def decode_stack(key: bytes, value: bytes, prefix: str) -> StackRecord:
    """The record under `key`; RecordError naming the key and what is wrong."""
    head = stacks_prefix(prefix)
    where = key[:200].decode(errors="replace")
    name = key[len(head):].decode(errors="replace")
    if not key.startswith(head) or stack_name_problem(name):
        raise RecordError(f"{where}: not a stack's key")
    body = record_body(where, value, RECORD_LIMIT, "stack's record")
    problems = []
    if body.get("stack") != name:
        problems.append(f"stack: expected {name}")
    origin = body.get("origin")
    if not isinstance(origin, str) or node_name_problem(origin) is not None:
        problems.append("origin: expected a node name")
    generation = body.get("generation")
    if not (isinstance(generation, int) and not isinstance(generation, bool)
            and 0 <= generation < 1 << 62):
        problems.append("generation: expected a whole number")
    source = body.get("source")
    if not isinstance(source, str) or len(source) > 4096:
        problems.append("source: expected a path")
    raw = body.get("placement")
    placed: dict[str, str] = {}
    if not isinstance(raw, dict) or len(raw) > MAX_CONTAINERS or not all(
            isinstance(c, str) and _CONTAINER.fullmatch(c) and isinstance(n, str)
            and node_name_problem(n) is None for c, n in raw.items()):
        problems.append("placement: expected container names to node names")
    else:
        placed = dict(raw)
    stack: Stack | None = None
    model = body.get("model")
    try:
        stack = codec.unpack(Stack, base64.b64decode(model, validate=True)) if isinstance(
            model, str) else None
    except (ValueError, StateError) as exc:
        problems.append(f"model: {str(exc)[:160]}")
    if stack is None:
        if not any(p.startswith("model") for p in problems):
            problems.append("model: expected the packed stack")
    elif stack.name != name:
        problems.append(f"model: a stack named {stack.name[:80]!r}, not {name}")
    elif set(placed) != {s.container(r) for s in stack.services
                         for r in range(1, s.replicas + 1)}:
        problems.append("placement: does not name every container of the stack once")
    if problems:
        raise RecordError(f"{where}: {'; '.join(problems)}")
    assert stack is not None and isinstance(origin, str) and isinstance(generation, int)
    assert isinstance(source, str)
    return StackRecord(stack, origin, generation, placed, source)
