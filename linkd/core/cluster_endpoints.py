"""Endpoint records: every container on an overlay network, wherever it runs, as the
cluster's etcd holds it (one record per container and network).

A node publishes a record for each (container, overlay network) it runs, under its
lease (linkd.runtime.cluster.endpoints), and every node reads them all: its DNS server
answers for them and its VXLAN devices get forwarding entries for them
(linkd.core.overlay.Endpoint). Keys, under the cluster's prefix and layout version
(linkd.core.cluster):

    endpoints/<network id>/<node>/<stack>/<container>    an EndpointRecord, JSON

The network id is `<stack>/<network>` (linkd.core.overlay.overlay_id). Neither a
stack, a network nor a container name holds a '/', and a node name (a host name)
holds none either, so a key splits into exactly five parts and parses one way only.
The node is in the key so that a node's records are its own: it deletes only those,
and two nodes never write the same key.

Whatever is under the prefix was written by some other node, or by anyone who can write
to etcd: `decode_endpoint` bounds the size, parses only JSON, checks every field's type,
form and range, requires the body to say what the key says, and names the key and the
field in a RecordError of one line.

`plan_publish` is the local side's reconcile: given the records this node wants
published, what etcd holds of its own, and its current lease, which keys to put and
which to delete.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Literal, cast

from linkd.core.cluster import (
    LAYOUT,
    RecordError,
    check_prefix,
    node_name_problem,
    record_body,
    stack_name_problem,
)
from linkd.core.cluster_ipam import MAX_PART, pair_problem
from linkd.core.hash_once import HashOnce
from linkd.core.overlay import OverlayError, parse_mac
from linkd.errors import UsageError

ENDPOINT_LIMIT = 4096  # bytes of one encoded record
MAX_ALIASES = 32
MAX_PORTS = 64  # SRV targets of one container
MAX_REPLICA = 1_000_000
MAX_HOSTNAME = 64  # bytes of a host name: the kernel's __NEW_UTS_LEN
MAX_ALIAS = 253  # characters of a DNS name

PortProtocol = Literal["tcp", "udp"]
Port = tuple[int, PortProtocol, str | None]  # (number, protocol, name for SRV or None)

# The forms linkd.spec accepts for each name, so that any record a node could make is
# read, and nothing else is.
_SERVICE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
_HOSTNAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?")
_ALIAS_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?")
_PORT_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")
_NETWORK_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_PART = re.compile(rf"[A-Za-z0-9._-]{{1,{MAX_PART}}}")  # a container name, as a key part


# -- keys -------------------------------------------------------------------------------


def endpoints_prefix(prefix: str) -> bytes:
    return f"{check_prefix(prefix)}{LAYOUT}/endpoints/".encode()


@dataclass(frozen=True, slots=True)
class EndpointKey:
    """What a record's key says: whose record, on which network."""

    network: str  # <stack>/<network>
    node: str
    stack: str
    container: str


def key_problem(parts: EndpointKey) -> str | None:
    """Why `parts` cannot make a key (None if they can)."""
    return (_network_problem(parts.network) or _node_problem(parts.node)
            or stack_name_problem(parts.stack) or _container_problem(parts.container))


def endpoint_key(parts: EndpointKey, prefix: str) -> bytes:
    """The key of a record; ValueError for a name that cannot be one of its parts."""
    problem = key_problem(parts)
    if problem:
        raise ValueError(problem)
    tail = f"{parts.network}/{parts.node}/{parts.stack}/{parts.container}"
    return endpoints_prefix(prefix) + tail.encode()


def parse_endpoint_key(key: bytes, prefix: str) -> EndpointKey:
    """The parts of a key under `endpoints_prefix`; RecordError if it is not one."""
    head = endpoints_prefix(prefix)
    where = _show_bytes(key)
    if not key.startswith(head):
        raise RecordError(f"{where} is not under {head.decode()}")
    try:
        parts = key[len(head):].decode("ascii").split("/")
    except UnicodeDecodeError:
        raise RecordError(f"{where}: not an endpoint's key (not ASCII)") from None
    if len(parts) != 5:
        raise RecordError(f"{where}: not an endpoint's key (expected <stack>/<network>/"
                          "<node>/<stack>/<container>)")
    found = EndpointKey(f"{parts[0]}/{parts[1]}", parts[2], parts[3], parts[4])
    problem = key_problem(found)
    if problem:
        raise RecordError(f"{where}: not an endpoint's key ({problem})")
    return found


# -- records ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EndpointRecord(HashOnce):
    """One container's interface on one overlay network, as every node sees it."""

    network: str  # the network's id, <stack>/<network>
    node: str  # the node it runs on
    underlay: IPv4Address | IPv6Address  # that node's underlay address (its VTEP)
    stack: str
    container: str
    service: str
    replica: int
    hostname: str
    aliases: tuple[str, ...]  # its aliases on this network
    address: IPv4Address
    address6: IPv6Address | None
    mac: str  # as linkd.core.overlay.parse_mac writes it
    ready: bool  # False: held back by its healthcheck (out of the service's name)
    ports: tuple[Port, ...] = ()  # what SRV answers name
    # the network's key in the container's own stack (names: NAME.KEY); "": the owner's
    key: str = ""

    __hash__ = HashOnce.__hash__

    @property
    def network_key(self) -> str:
        """The network's key in the container's own stack (its names' NETWORK label)."""
        return self.key or self.network.partition("/")[2]

    @property
    def parts(self) -> EndpointKey:
        return EndpointKey(self.network, self.node, self.stack, self.container)


def endpoint_key_of(record: EndpointRecord, prefix: str) -> bytes:
    return endpoint_key(record.parts, prefix)


def encode_endpoint(record: EndpointRecord) -> bytes:
    """The record as JSON. UsageError when it is over ENDPOINT_LIMIT (too many or too long
    aliases); ValueError for a field no node would read (a bug of the caller's)."""
    body = {
        "v": 1,
        "network": record.network,
        "node": record.node,
        "underlay": str(record.underlay),
        "stack": record.stack,
        "container": record.container,
        "service": record.service,
        "replica": record.replica,
        "hostname": record.hostname,
        "aliases": list(record.aliases),
        "address": str(record.address),
        "address6": str(record.address6) if record.address6 is not None else None,
        "mac": record.mac,
        "ready": record.ready,
        "ports": [[port, protocol, name] for port, protocol, name in record.ports],
    }
    if record.key:
        body["key"] = record.key
    data = json.dumps(body, separators=(",", ":"), ensure_ascii=True).encode()
    where = f"{record.stack}/{record.container} on {record.network}"
    if len(data) > ENDPOINT_LIMIT:
        raise UsageError(f"{where}: its endpoint record is {len(data)} bytes, over "
                         f"{ENDPOINT_LIMIT}: give it fewer or shorter aliases")
    problems = key_problem(record.parts)
    if problems is None:
        problems = _first(_problems(body)) if _problems(body) else None
    if problems is not None:
        raise ValueError(f"{where}: {problems}")
    return data


def decode_endpoint(key: bytes, value: bytes, prefix: str) -> EndpointRecord:
    """The record under `key`; RecordError naming the key and what is wrong (too big,
    not JSON, a field missing, of the wrong type or form, a body that is not the key's)."""
    parts = parse_endpoint_key(key, prefix)
    where = _show_bytes(key)
    body = record_body(where, value, ENDPOINT_LIMIT, "endpoint record")
    problems = _problems(body)
    said = (body.get("network"), body.get("node"), body.get("stack"), body.get("container"))
    if not problems and said != (parts.network, parts.node, parts.stack, parts.container):
        problems.append("network, node, stack and container are not the key's")
    network_key = body.get("key", "")
    if not isinstance(network_key, str) or (network_key and not _NETWORK_KEY.fullmatch(
            network_key)):
        problems.append("key: expected a network's name in a stack file")
    if problems:
        raise RecordError(f"{where}: {_first(problems)}")
    address6 = body["address6"]
    return EndpointRecord(
        network=parts.network,
        node=parts.node,
        underlay=ip_address(body["underlay"]),
        stack=parts.stack,
        container=parts.container,
        service=body["service"],
        replica=body["replica"],
        hostname=body["hostname"],
        aliases=tuple(body["aliases"]),
        address=IPv4Address(body["address"]),
        address6=IPv6Address(address6) if address6 is not None else None,
        mac=body["mac"],
        ready=body["ready"],
        ports=tuple((int(p[0]), p[1], p[2]) for p in body["ports"]),
        key=network_key,
    )


def _problems(body: Mapping[str, object]) -> list[str]:
    """What is wrong with each field of a record's body, one line each."""
    problems = [f"{name}: missing" for name in _CHECKS if name not in body]
    if problems:
        return problems
    for name, check in _CHECKS.items():
        problem = check(body[name])
        if problem:
            problems.append(f"{name}: {problem}")
    return problems


def _string(check: Callable[[str], str | None]) -> Callable[[object], str | None]:
    return lambda v: check(v) if isinstance(v, str) else "expected a string"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _network_problem(name: str) -> str | None:
    return pair_problem(name, "network id")


def _container_problem(name: str) -> str | None:
    if _PART.fullmatch(name) and name not in (".", ".."):
        return None
    return (f"container {_show(name)}: 1 to {MAX_PART} letters, digits, '.', '_' and '-'")


def _replica_problem(value: object) -> str | None:
    if _is_int(value) and 1 <= cast(int, value) <= MAX_REPLICA:
        return None
    return f"expected a number from 1 to {MAX_REPLICA}"


def _ready_problem(value: object) -> str | None:
    return None if isinstance(value, bool) else "expected true or false"


def _node_problem(name: str) -> str | None:
    problem = node_name_problem(name)
    return f"node {_show(name)}: {problem}" if problem else None


def _underlay_problem(value: object) -> str | None:
    if isinstance(value, str) and len(value) <= 45:
        try:
            address = ip_address(value)
        except ValueError:
            pass
        else:
            if str(address) != value:
                return "expected an IP address in its canonical form"
            if not (address.is_unspecified or address.is_multicast):
                return None
    return "expected a node's unicast IP address"


def _address_problem(value: object, kind: type[IPv4Address] | type[IPv6Address],
                     what: str) -> str | None:
    if isinstance(value, str) and len(value) <= 45:
        try:
            address = kind(value)
        except ValueError:
            return f"expected {what}"
        return None if str(address) == value else f"expected {what} in its canonical form"
    return f"expected {what}"


def _service_problem(value: object) -> str | None:
    if (isinstance(value, str) and len(value) <= 240 and _SERVICE.fullmatch(value)
            and all(0 < len(label) <= 63 for label in value.split("."))):
        return None
    return "expected a service name (a DNS name of letters, digits, '_', '.' and '-')"


def _hostname_problem(value: object) -> str | None:
    if (isinstance(value, str) and len(value) <= MAX_HOSTNAME and _HOSTNAME.fullmatch(value)
            and ".." not in value):
        return None
    return (f"expected a host name of letters, digits, '-', '_' and '.', at most "
            f"{MAX_HOSTNAME} characters")


def _alias_ok(value: object) -> bool:
    return (isinstance(value, str) and len(value) <= MAX_ALIAS
            and all(_ALIAS_LABEL.fullmatch(label) and len(label) <= 63
                    for label in value.lower().split(".")))


def _aliases_problem(value: object) -> str | None:
    if not (isinstance(value, list) and len(value) <= MAX_ALIASES):
        return f"expected a list of at most {MAX_ALIASES} names"
    for alias in value:
        if not _alias_ok(alias):
            return f"{_show(str(alias))} is not a DNS name"
    if len(set(value)) != len(value):
        return "a name is given twice"
    return None


def _mac_problem(value: object) -> str | None:
    if not (isinstance(value, str) and len(value) <= 17):
        return "expected a MAC address"
    try:
        mac = parse_mac(value)
    except OverlayError as exc:
        return str(exc)
    return None if mac == value else "expected a MAC address as 02:42:0a:00:00:02"


def _ports_problem(value: object) -> str | None:
    if not (isinstance(value, list) and len(value) <= MAX_PORTS):
        return f"expected a list of at most {MAX_PORTS} ports"
    for item in value:
        if not (isinstance(item, list) and len(item) == 3):
            return "expected [port, protocol, name] for each port"
        number, protocol, name = item
        if not (_is_int(number) and 1 <= number <= 65535):
            return "a port is a number from 1 to 65535"
        if protocol not in ("tcp", "udp"):
            return "a port's protocol is tcp or udp"
        if name is not None and not _port_name_ok(name):
            return f"port name {_show(str(name))}: 1 to 15 letters, digits and single '-'"
    if len({(p[0], p[1]) for p in value}) != len(value):
        return "a port is given twice"
    return None


def _port_name_ok(name: object) -> bool:
    """RFC 6335 service names, as linkd.spec reads a port's name (an SRV label)."""
    return (isinstance(name, str) and len(name) <= 15 and _PORT_NAME.fullmatch(name) is not None
            and "--" not in name and not name.isdigit())


_CHECKS: dict[str, Callable[[object], str | None]] = {
    "network": _string(_network_problem),
    "node": _string(_node_problem),
    "underlay": _underlay_problem,
    "stack": _string(stack_name_problem),
    "container": _string(_container_problem),
    "service": _service_problem,
    "replica": _replica_problem,
    "hostname": _hostname_problem,
    "aliases": _aliases_problem,
    "address": lambda v: _address_problem(v, IPv4Address, "an IPv4 address"),
    "address6": lambda v: None if v is None else _address_problem(
        v, IPv6Address, "an IPv6 address or null"),
    "mac": _mac_problem,
    "ready": _ready_problem,
    "ports": _ports_problem,
}


# -- what a node publishes --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Publish:
    """What makes etcd hold exactly the records a node wants, under its lease."""

    puts: tuple[bytes, ...] = ()  # keys to put (with their wanted value, under the lease)
    deletes: tuple[bytes, ...] = ()

    def empty(self) -> bool:
        return not (self.puts or self.deletes)


def plan_publish(wanted: Mapping[bytes, bytes], held: Mapping[bytes, tuple[bytes, int]],
                 lease: int) -> Publish:
    """`wanted`: key -> value this node wants published; `held`: key -> (value, lease)
    of what etcd holds under this node's name. A key is put when etcd lacks it, holds
    another value, or holds it under another lease (an old one, which expires: a node
    that registered anew moves its records to its new lease); a key this node holds and
    no longer wants is deleted, whatever its lease (a record left by a daemon of this
    node that was killed, say)."""
    puts = [key for key, value in wanted.items() if held.get(key) != (value, lease)]
    deletes = [key for key in held if key not in wanted]
    return Publish(tuple(sorted(puts)), tuple(sorted(deletes)))


# -- helpers ----------------------------------------------------------------------------


def _first(problems: list[str], shown: int = 3) -> str:
    """The first few problems: a message stays one bounded line."""
    more = len(problems) - shown
    return "; ".join(problems[:shown]) + (f" (and {more} more)" if more > 0 else "")


def _show(text: str, limit: int = 80) -> str:
    shown = repr(text[:limit])
    return shown + ("..." if len(text) > limit else "")


def _show_bytes(data: bytes, limit: int = 160) -> str:
    return repr(data[:limit]) + ("..." if len(data) > limit else "")
