"""Where a service's containers run in a cluster: Swarm's placement constraints.

`deploy.placement.constraints` is a list of expressions, each `FIELD == VALUE` or
`FIELD != VALUE`, all of which a node must satisfy (Docker's grammar: a field is
`node.id`, `node.hostname`, `node.role`, `node.platform.os`, `node.platform.arch`,
`node.labels.KEY` or `engine.labels.KEY`; values are compared without regard to case, as
swarmkit compares them). An expression that names another field, or has no operator, is
refused when the file is read (swarmkit would accept it and then place the service
nowhere). A label a node does not have matches no `==` and every `!=`.

`place` spreads a service's replicas over the nodes that satisfy its constraints,
beginning with the node where `up` ran when it is one of them, one each in turn; a
service without constraints runs where `up` ran. No node that satisfies them is an
error naming the service, the constraints, and why each node is not one.

Pure: expressions and node facts in, placements out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

FIELDS = ("node.id", "node.hostname", "node.role", "node.platform.os",
          "node.platform.arch")
LABEL_PREFIXES = ("node.labels.", "engine.labels.")
_KEY = re.compile(r"(?i)[a-z_][a-z0-9\-_.]+")
_VALUE = re.compile(r"(?i)[a-z0-9:\-_\s.*()?+\[\]\\^$|/]+")


class PlacementError(ValueError):
    """A constraint that cannot be read, or a service no node may run."""


@dataclass(frozen=True)
class Constraint:
    field: str  # one of FIELDS, or a label: "node.labels.disk"
    equal: bool  # == (True) or != (False)
    value: str

    def __str__(self) -> str:
        return f"{self.field} {'==' if self.equal else '!='} {self.value}"


@dataclass(frozen=True)
class NodeFacts:
    """What constraints can ask of a node."""

    hostname: str
    node_id: str = ""
    role: str = "manager"  # every linkd node may take `up`: Swarm's manager
    os: str = "linux"
    arch: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    engine_labels: Mapping[str, str] = field(default_factory=dict)

    def value(self, name: str) -> str | None:
        if name.startswith("node.labels."):
            return self.labels.get(name.removeprefix("node.labels."))
        if name.startswith("engine.labels."):
            return self.engine_labels.get(name.removeprefix("engine.labels."))
        return {"node.id": self.node_id, "node.hostname": self.hostname,
                "node.role": self.role, "node.platform.os": self.os,
                "node.platform.arch": self.arch}[name]


def parse_constraint(text: str) -> Constraint:
    """One expression, as Docker reads it (`node.labels.disk == ssd`)."""
    for op in ("==", "!="):
        if op in text:
            key, _, value = text.partition(op)
            key, value = key.strip(), value.strip()
            break
    else:
        raise PlacementError(f"constraint {text!r} has no operator: write FIELD == VALUE "
                             "or FIELD != VALUE")
    if not _KEY.fullmatch(key):
        raise PlacementError(f"constraint {text!r}: {key!r} is not a field name")
    if key not in FIELDS and not (key.startswith(LABEL_PREFIXES)
                                  and key not in LABEL_PREFIXES
                                  and len(key) > len("node.labels.")):
        raise PlacementError(
            f"constraint {text!r}: unknown field {key!r}; linkd knows "
            f"{', '.join(FIELDS)}, node.labels.KEY and engine.labels.KEY")
    if not _VALUE.fullmatch(value):
        raise PlacementError(f"constraint {text!r}: {value!r} is not a value Docker "
                             "accepts (letters, digits and : - _ . * ( ) ? + [ ] \\ ^ $ | /)")
    return Constraint(key, op == "==", value)


def satisfies(node: NodeFacts, constraint: Constraint) -> bool:
    have = node.value(constraint.field)
    same = have is not None and have.casefold() == constraint.value.casefold()
    return same if constraint.equal else not same


def why_not(node: NodeFacts, constraints: Sequence[Constraint]) -> str | None:
    """The first constraint `node` does not satisfy, said; None when it satisfies all."""
    for c in constraints:
        if not satisfies(node, c):
            have = node.value(c.field)
            return f"{node.hostname}: {c.field} is {have!r}" if have is not None else (
                f"{node.hostname}: no {c.field}")
    return None


def place(service: str, replicas: int, constraints: Sequence[Constraint],
          nodes: Sequence[NodeFacts], local: str) -> tuple[str, ...]:
    """The node (hostname) of each of `service`'s `replicas` containers, in order."""
    if not constraints:
        return (local,) * replicas
    eligible = sorted((n.hostname for n in nodes if why_not(n, constraints) is None),
                      key=lambda name: (name != local, name))
    if not eligible:
        said = "; ".join(why for n in sorted(nodes, key=lambda n: n.hostname)
                         if (why := why_not(n, constraints)) is not None)
        raise PlacementError(
            f"service {service}: no node satisfies its placement constraints "
            f"({', '.join(map(str, constraints))}): {said or 'there are no nodes'}")
    return tuple(eligible[i % len(eligible)] for i in range(replicas))
