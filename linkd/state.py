"""A stack's recorded state, and its msgpack encoding.

The runtime writes one state file per stack (see `linkd.runtime.store` for where and
how); every other command (`ps`, `down`, `exec`, `logs`) reads it. The file holds the
plan that was applied, so `down` removes exactly what `up` made even if the stack file
has changed or disappeared since.

Encoding: `{"v": VERSION, "stack": {...}}` with msgpack. Dataclasses become maps of
their fields, IP addresses and networks become strings, tuples become arrays; decoding
walks the type hints back. A file written by another version is refused with a message
rather than misread.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import msgpack

from linkd.errors import LinkdError
from linkd.plan import StackPlan

VERSION = 1

ContainerStatus = Literal["created", "running", "restarting", "exited", "failed"]
StackStatus = Literal["starting", "up", "stopping", "failed"]


@dataclass(frozen=True, slots=True)
class ContainerState:
    name: str
    status: ContainerStatus = "created"
    pid: int | None = None  # the shim, a child of the supervisor
    init_pid: int | None = None  # PID 1 of the container, as the host sees it
    started_at: float | None = None  # wall-clock seconds
    exit_code: int | None = None
    restarts: int = 0
    error: str | None = None


@dataclass(frozen=True, slots=True)
class StackState:
    plan: StackPlan
    source: str  # the stack file it came from
    status: StackStatus
    supervisor_pid: int | None
    containers: tuple[ContainerState, ...]

    def container(self, name: str) -> ContainerState:
        for container in self.containers:
            if container.name == name:
                return container
        raise KeyError(name)


class StateError(LinkdError):
    pass


def encode(state: StackState) -> bytes:
    plain = {
        "plan": _plain_plan(state.plan),
        **{
            f.name: to_plain(getattr(state, f.name))
            for f in dataclasses.fields(state)
            if f.name != "plan"
        },
    }
    packed: bytes = msgpack.packb({"v": VERSION, "stack": plain}, use_bin_type=True)
    return packed


# The supervisor saves the state on every container state change while the plan stays
# the same object: its plain form is worth keeping (it is most of the encoding time).
_last_plan: list[tuple[StackPlan, Any]] = []


def _plain_plan(plan: StackPlan) -> Any:
    for known, plain in _last_plan:
        if known is plan:
            return plain
    plain = to_plain(plan)
    _last_plan[:] = [(plan, plain), *_last_plan[:3]]
    return plain


def decode(data: bytes) -> StackState:
    try:
        doc = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise StateError(f"state file is corrupt: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("v") != VERSION:
        version = doc.get("v") if isinstance(doc, dict) else None
        raise StateError(
            f"state file has version {version!r}, this linkd reads version {VERSION}; "
            "bring the stack down with the linkd that brought it up"
        )
    try:
        return _from_plain(StackState, doc["stack"])  # type: ignore[no-any-return]
    except (KeyError, TypeError, ValueError) as exc:
        raise StateError(f"state file does not match its version: {exc}") from exc


def pack(value: Any) -> bytes:
    """Any frozen dataclass of this package (a lease, say), versioned like the state."""
    packed: bytes = msgpack.packb({"v": VERSION, "value": to_plain(value)}, use_bin_type=True)
    return packed


def unpack(kind: type[T], data: bytes) -> T:
    try:
        doc = msgpack.unpackb(data, raw=False, strict_map_key=True)
        if not isinstance(doc, dict) or doc.get("v") != VERSION:
            raise StateError(f"unreadable {kind.__name__}: not version {VERSION}")
        return _from_plain(kind, doc["value"])  # type: ignore[no-any-return]
    except StateError:
        raise
    except (ValueError, TypeError, KeyError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError) as exc:
        raise StateError(f"unreadable {kind.__name__}: {exc}") from exc


_IP_TYPES = (
    ipaddress.IPv4Address,
    ipaddress.IPv6Address,
    ipaddress.IPv4Network,
    ipaddress.IPv6Network,
)


def to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, _IP_TYPES):
        return str(value)
    if isinstance(value, tuple | list):
        return [to_plain(v) for v in value]
    return value


T = TypeVar("T")


def _from_plain(kind: Any, value: Any) -> Any:
    origin = get_origin(kind)
    if origin in (Union, types.UnionType):
        if value is None:
            return None
        options = [a for a in get_args(kind) if a is not type(None)]
        return _from_plain(options[0], value)
    if origin is tuple:
        args = get_args(kind)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_from_plain(args[0], v) for v in value)
        return tuple(_from_plain(a, v) for a, v in zip(args, value, strict=True))
    if origin is Literal:
        if value not in get_args(kind):
            raise ValueError(f"{value!r} is not one of {get_args(kind)}")
        return value
    if dataclasses.is_dataclass(kind) and isinstance(kind, type):
        hints = typing.get_type_hints(kind)
        fields = {f.name for f in dataclasses.fields(kind)}
        return kind(**{k: _from_plain(hints[k], v) for k, v in value.items() if k in fields})
    if kind in _IP_TYPES:
        return kind(value)
    if kind is float and isinstance(value, int):
        return float(value)
    return value
