"""A stack's recorded state, and its msgpack encoding.

The runtime writes one state file per stack (see `linkd.runtime.stack.store` for where and
how); every other command (`ps`, `down`, `exec`, `logs`) reads it. The file holds the
plan that was applied, so `down` removes exactly what `up` made even if the stack file
has changed or disappeared since.

Encoding: a 20-byte header, then a msgpack payload. Dataclasses become maps of their
fields, IP addresses and networks become strings, tuples become arrays; decoding walks
the type hints back. The header (all integers big-endian):

    offset size
    0      4    magic b"\\x89LKD" (the high first byte marks the file as binary, and
                no msgpack map, the old unframed format, starts with it)
    4      1    kind: b"S" a StackState (`encode`), b"V" any other value (`pack`)
    5      1    flags, 0
    6      2    format VERSION
    8      4    payload length in bytes
    12     4    CRC-32 of the payload
    16     4    CRC-32 of bytes 0..15 (the header so far)

`decode` and `unpack` check the header and both checksums before msgpack sees a byte, so
a torn or damaged file is a `StateError` that says what is wrong ("truncated: 812 of
4096 bytes", "checksum mismatch"), never a misread state. CRC-32 catches every single
bit flip and every burst of up to 32 bits; a file written by another format version (or
the unframed format before it) is refused with a message rather than misread. The first
eight bytes (magic, kind, flags, version) keep this layout in every version.

Everything here is bytes in, bytes out: where the files live, how they are replaced and
what happens when one is bad is `linkd.runtime.stack.store`'s business.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import struct
import types
import typing
import zlib
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import msgpack

from linkd.core.health import HealthStatus
from linkd.core.plan import StackPlan
from linkd.errors import LinkdError

# 1 was bare msgpack, `{"v": 1, "stack": ...}`; 2 added the checksummed header.
VERSION = 2

MAGIC = b"\x89LKD"
KIND_STATE = b"S"
KIND_VALUE = b"V"
_KIND_NAMES = {KIND_STATE: "stack state", KIND_VALUE: "value"}
_PREFIX = struct.Struct(">4scBHII")  # magic, kind, flags, version, length, payload CRC
_CRC = struct.Struct(">I")
HEADER_SIZE = _PREFIX.size + _CRC.size

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
    dns_ports: tuple[int, int] | None = None  # where 127.0.0.11:53 is sent in its netns
    health: HealthStatus | None = None  # None: no healthcheck (linkd.core.health)


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
    return frame(KIND_STATE, _packb(plain))


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
    payload = unframe(KIND_STATE, data)
    try:
        return _from_plain(StackState, _unpackb(payload))  # type: ignore[no-any-return]
    except _DECODE_ERRORS as exc:
        raise StateError(f"checksum is good but the contents do not decode: {exc}") from exc


def verify(data: bytes) -> None:
    """Raise StateError unless `data` is a whole, undamaged state file of this version.

    Checks the header and checksums only (cheap: no msgpack, no dataclasses)."""
    unframe(KIND_STATE, data)


def from_plain(kind: type[T], value: Any) -> T:
    """The inverse of `to_plain` (what the daemon's API sends): a StackState, say."""
    try:
        return _from_plain(kind, value)  # type: ignore[no-any-return]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise StateError(f"not a {kind.__name__}: {exc}") from exc


def pack(value: Any) -> bytes:
    """Any frozen dataclass of this package (a lease, say), framed like the state."""
    return frame(KIND_VALUE, _packb(to_plain(value)))


def unpack(kind: type[T], data: bytes) -> T:
    try:
        payload = unframe(KIND_VALUE, data)
    except StateError as exc:
        raise StateError(f"unreadable {kind.__name__}: {exc}") from exc
    try:
        return _from_plain(kind, _unpackb(payload))  # type: ignore[no-any-return]
    except _DECODE_ERRORS as exc:
        raise StateError(
            f"unreadable {kind.__name__}: checksum is good but the contents do not decode: {exc}"
        ) from exc


# msgpack's own errors all derive from ValueError; the rest come from `_from_plain`
# meeting a shape it did not expect.
_DECODE_ERRORS = (ValueError, TypeError, KeyError, AttributeError)


def _packb(plain: Any) -> bytes:
    packed: bytes = msgpack.packb(plain, use_bin_type=True)
    return packed


def _unpackb(payload: bytes) -> Any:
    return msgpack.unpackb(payload, raw=False, strict_map_key=True)


def frame(kind: bytes, payload: bytes) -> bytes:
    """Header (see the module docstring) + payload."""
    prefix = _PREFIX.pack(MAGIC, kind, 0, VERSION, len(payload), zlib.crc32(payload))
    return prefix + _CRC.pack(zlib.crc32(prefix)) + payload


def unframe(kind: bytes, data: bytes) -> bytes:
    """The payload of a framed file of `kind`; StateError saying what is wrong if the
    bytes are not a whole, undamaged file of this version."""
    size = len(data)
    if not data.startswith(MAGIC):
        if size == 0:
            raise StateError("empty (0 bytes)")
        if size < len(MAGIC) and MAGIC.startswith(data):
            raise StateError(f"truncated: {size} of at least {HEADER_SIZE} bytes")
        legacy = _unframed_version(data)
        if legacy is not None:
            raise StateError(
                f"in the unframed format of another linkd (version {legacy!r}); this linkd "
                f"reads version {VERSION}, with a header"
            )
        raise StateError(f"corrupt, or not a linkd file (it starts with {bytes(data[:8])!r})")
    if size < HEADER_SIZE:
        raise StateError(f"truncated: {size} of at least {HEADER_SIZE} bytes")
    prefix = data[: _PREFIX.size]
    _, got_kind, flags, version, length, payload_crc = _PREFIX.unpack(prefix)
    (header_crc,) = _CRC.unpack_from(data, _PREFIX.size)
    if zlib.crc32(prefix) != header_crc:
        if version != VERSION:
            raise StateError(
                f"header checksum mismatch; its version field says {version}, this linkd "
                f"reads version {VERSION}: the file is damaged, or from another linkd"
            )
        raise StateError("header checksum mismatch")
    if version != VERSION:
        raise StateError(
            f"format version {version}, this linkd reads version {VERSION}; bring the "
            "stack down with the linkd that brought it up"
        )
    if got_kind != kind:
        raise StateError(
            f"holds a {_KIND_NAMES.get(got_kind, repr(got_kind))}, "
            f"not a {_KIND_NAMES.get(kind, repr(kind))}"
        )
    if flags:
        raise StateError(f"unknown flags {flags:#04x}")
    expected = HEADER_SIZE + length
    if size < expected:
        raise StateError(f"truncated: {size} of {expected} bytes")
    if size > expected:
        raise StateError(f"{size - expected} stray bytes after the {expected} the header counts")
    payload = bytes(data[HEADER_SIZE:])
    actual = zlib.crc32(payload)
    if actual != payload_crc:
        raise StateError(
            f"checksum mismatch: the payload's CRC-32 is {actual:08x}, "
            f"the header says {payload_crc:08x}"
        )
    return payload


def _unframed_version(data: bytes) -> object:
    """The "v" of a file in the format before the header (a bare msgpack map), else None."""
    if not (0x80 <= data[0] <= 0x8F or data[0] in (0xDE, 0xDF)):
        return None
    try:
        doc = _unpackb(data)
    except ValueError:
        return None
    return doc.get("v") if isinstance(doc, dict) and "v" in doc else None


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


@functools.cache
def _hints(kind: type) -> dict[str, Any]:
    return typing.get_type_hints(kind)  # resolving annotations is slow: once per class


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
        hints = _hints(kind)
        fields = {f.name for f in dataclasses.fields(kind)}
        return kind(**{k: _from_plain(hints[k], v) for k, v in value.items() if k in fields})
    if kind in _IP_TYPES:
        return kind(value)
    if kind is float and isinstance(value, int):
        return float(value)
    return value
