"""A cluster of linkd nodes, as data: node records, where they live in etcd, and checks.

Every node of a cluster writes one record about itself into etcd, under a lease that
its keep-alive holds (linkd.runtime.cluster); the record goes when the node stops or
its lease expires. Keys (one layout version, under a prefix that defaults to /linkd/):

    /linkd/v1/nodes/<name>    a NodeRecord, JSON, at most RECORD_LIMIT bytes

A record is read by every other node, so whatever is under that prefix is input from a
stranger: `decode_record` bounds its size, parses only JSON, checks every field's type
and range, and says what is wrong with which key, never more than a line of it.
Unknown fields are ignored (a newer linkd may add some); a newer layout version is an
error that says so.

Node names are host names (RFC 1123, as Swarm's node.hostname): letters, digits and
'-' in dot-separated labels, lower-cased, since host names ignore case and a key must
not. Label keys and values follow Docker's labels, bounded.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from linkd.errors import LinkdError, UsageError

LAYOUT = "v1"
DEFAULT_PREFIX = "/linkd/"
DEFAULT_TTL = 5  # seconds a node's lease lives without a keep-alive
MIN_TTL, MAX_TTL = 2, 300  # etcd refuses leases much shorter than its election timeout
DEFAULT_PORT = 2379
RECORD_LIMIT = 8192  # bytes of one encoded record
MAX_LABELS = 64
MAX_LABEL_KEY = 128
MAX_LABEL_VALUE = 256
MAX_NAME = 253
MAX_VERSION = 64
MAX_ENDPOINTS = 16
RECORD_STATES = ("ready", "leaving")  # what a node says of itself in its record

_HOST_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_LABEL_KEY = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._/-]*[A-Za-z0-9])?")
_VERSION = re.compile(r"[0-9A-Za-z.+_ ()-]+")  # "0.1.0", "0.2.0 (not installed; ...)"


class RecordError(LinkdError):
    """A value under the cluster's prefix that is not a node record linkd can read."""

    status = 502


# -- names and labels --------------------------------------------------------------------


MAX_STACK = 128  # characters of a stack name in the cluster's keys
_STACK = re.compile(r"[a-z0-9][a-z0-9_-]*")  # Compose's project names


def stack_name_problem(name: str) -> str | None:
    """Why `name` cannot name a stack in the cluster's keys (None if it can)."""
    if len(name) <= MAX_STACK and _STACK.fullmatch(name):
        return None
    return (f"stack {_show(name)}: 1 to {MAX_STACK} lower-case letters, digits, '_' and "
            "'-', starting with a letter or digit")


def node_name_problem(name: str) -> str | None:
    """Why `name` cannot name a node (None if it can)."""
    if not name:
        return "a node name cannot be empty"
    if len(name) > MAX_NAME:
        return f"a node name is at most {MAX_NAME} characters (a host name)"
    for part in name.split("."):
        if not _HOST_LABEL.fullmatch(part):
            return (f"{_show(name)} is not a host name: dot-separated parts of 1 to 63 "
                    "letters, digits and '-', neither starting nor ending with '-'")
    return None


def check_node_name(name: str) -> str:
    """`name` lower-cased, or UsageError saying why it cannot name a node."""
    lowered = name.lower()
    problem = node_name_problem(lowered)
    if problem:
        raise UsageError(f"--node-name: {problem}")
    return lowered


def label_problem(key: str, value: str) -> str | None:
    if not (len(key) <= MAX_LABEL_KEY and _LABEL_KEY.fullmatch(key)):
        return (f"label key {_show(key)}: 1 to {MAX_LABEL_KEY} letters, digits, '.', '_', "
                "'-' and '/', starting and ending with a letter or digit")
    if len(value) > MAX_LABEL_VALUE:
        return f"label {key}: the value is at most {MAX_LABEL_VALUE} characters"
    if any(not c.isprintable() for c in value):
        return f"label {key}: the value holds a control character"
    return None


def parse_labels(given: Sequence[str]) -> dict[str, str]:
    """`--node-label KEY=VALUE` options as a mapping; UsageError for a bad one."""
    labels: dict[str, str] = {}
    for item in given:
        key, eq, value = item.partition("=")
        if not eq:
            raise UsageError(f"--node-label {_show(item)}: expected KEY=VALUE")
        problem = label_problem(key, value)
        if problem:
            raise UsageError(f"--node-label: {problem}")
        if key in labels:
            raise UsageError(f"--node-label: {key} is given twice")
        labels[key] = value
    if len(labels) > MAX_LABELS:
        raise UsageError(f"--node-label: at most {MAX_LABELS} labels")
    return labels


# -- etcd endpoints ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str  # an IP address or a host name, without brackets
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def parse_endpoints(text: str) -> tuple[Endpoint, ...]:
    """`--cluster http://E1:2379,http://E2:2379` (scheme and port optional); UsageError
    for what linkd cannot use. TLS (https) is not supported yet: said, not ignored."""
    endpoints: list[Endpoint] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        scheme, sep, rest = item.partition("://")
        if not sep:
            scheme, rest = "http", item
        if scheme != "http":
            raise UsageError(f"--cluster {_show(item)}: only http:// etcd endpoints are "
                             "supported (TLS to etcd is not there yet)")
        rest = rest.rstrip("/")
        if "/" in rest or "@" in rest or "?" in rest:
            raise UsageError(f"--cluster {_show(item)}: expected http://HOST:PORT")
        endpoints.append(Endpoint(*_host_port(item, rest)))
    if not endpoints:
        raise UsageError("--cluster: name one or more etcd endpoints, "
                         "http://HOST:2379,http://HOST2:2379")
    if len(endpoints) > MAX_ENDPOINTS:
        raise UsageError(f"--cluster: at most {MAX_ENDPOINTS} endpoints")
    if len(set(endpoints)) != len(endpoints):
        raise UsageError("--cluster: an endpoint is named twice")
    return tuple(endpoints)


def _host_port(item: str, rest: str) -> tuple[str, int]:
    if rest.startswith("["):
        host, close, tail = rest[1:].partition("]")
        if not close or (tail and not tail.startswith(":")):
            raise UsageError(f"--cluster {_show(item)}: expected http://[IPV6]:PORT")
        port_text = tail[1:] if tail else ""
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise UsageError(f"--cluster {_show(item)}: {_show(host)} is not an "
                             "IPv6 address") from None
    else:
        host, _, port_text = rest.partition(":")
        if ":" in port_text:
            raise UsageError(f"--cluster {_show(item)}: write an IPv6 address in "
                             "brackets, http://[::1]:2379")
        if node_name_problem(host.lower()) and not _is_ip(host):
            raise UsageError(f"--cluster {_show(item)}: {_show(host)} is neither an IP "
                             "address nor a host name")
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UsageError(f"--cluster {_show(item)}: the port is a number from 1 to 65535")
    return host, int(port_text)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def check_address(text: str) -> str:
    """`--node-address`: an IP address, in its canonical form."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise UsageError(f"--node-address {_show(text)}: expected an IP address (the "
                         "address other nodes reach this one at)") from None
    if address.is_unspecified or address.is_multicast:
        raise UsageError(f"--node-address {text}: expected this host's unicast address")
    return str(address)


def check_ttl(ttl: int) -> int:
    if not MIN_TTL <= ttl <= MAX_TTL:
        raise UsageError(f"--cluster-ttl {ttl}: from {MIN_TTL} to {MAX_TTL} seconds")
    return ttl


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """What `linkd daemon --cluster ...` was told; checked (see `config`)."""

    endpoints: tuple[Endpoint, ...]
    name: str
    address: str | None  # None: the source address of the route to the first endpoint
    labels: Mapping[str, str] = field(default_factory=dict)
    ttl: int = DEFAULT_TTL
    prefix: str = DEFAULT_PREFIX


def config(cluster: str, name: str, address: str | None, labels: Sequence[str],
           ttl: int = DEFAULT_TTL) -> ClusterConfig:
    """The daemon's cluster options, checked; UsageError naming the option at fault."""
    return ClusterConfig(
        parse_endpoints(cluster),
        check_node_name(name),
        check_address(address) if address is not None else None,
        parse_labels(labels),
        check_ttl(ttl),
    )


# -- keys ----------------------------------------------------------------------------------


def check_prefix(prefix: str) -> str:
    if not (prefix.startswith("/") and prefix.endswith("/") and prefix.isprintable()
            and len(prefix) <= 128):
        raise UsageError(f"cluster prefix {_show(prefix)}: expected /PATH/ (default "
                         f"{DEFAULT_PREFIX})")
    return prefix


def nodes_prefix(prefix: str = DEFAULT_PREFIX) -> bytes:
    return f"{check_prefix(prefix)}{LAYOUT}/nodes/".encode()


def node_key(name: str, prefix: str = DEFAULT_PREFIX) -> bytes:
    problem = node_name_problem(name)
    if problem:
        raise ValueError(problem)
    return nodes_prefix(prefix) + name.encode()


def name_of_key(key: bytes, prefix: str = DEFAULT_PREFIX) -> str:
    """The node name a key under `nodes_prefix` stands for; RecordError if it is none."""
    head = nodes_prefix(prefix)
    if not key.startswith(head):
        raise RecordError(f"{_show_bytes(key)} is not under {head.decode()}")
    try:
        name = key[len(head):].decode("ascii")
    except UnicodeDecodeError:
        name = ""
    problem = node_name_problem(name)
    if problem:
        raise RecordError(f"{_show_bytes(key)}: not a node's key ({problem})")
    return name


# -- records -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """What a node says of itself in etcd."""

    name: str
    address: str  # the underlay address other nodes reach it at
    labels: Mapping[str, str]
    version: str  # of the linkd that wrote it
    started: float  # Unix time the node's daemon started
    state: str = "ready"
    instance: str = ""  # random per daemon run: tells this node's own record from another's


def encode_record(record: NodeRecord) -> bytes:
    body = {
        "v": 1,
        "name": record.name,
        "address": record.address,
        "labels": dict(sorted(record.labels.items())),
        "version": record.version,
        "started": record.started,
        "state": record.state,
        "instance": record.instance,
    }
    data = json.dumps(body, separators=(",", ":"), ensure_ascii=True).encode()
    if len(data) > RECORD_LIMIT:
        raise UsageError(f"node {record.name}'s record is {len(data)} bytes, over "
                         f"{RECORD_LIMIT}: give it fewer or shorter labels")
    return data


def record_body(where: str, value: bytes, limit: int, what: str) -> dict[str, Any]:
    """The JSON object of a record of layout 1 that some node (or anyone who can write to
    etcd) put there: RecordError, starting with `where`, when it is over `limit` bytes,
    not JSON, not an object, or of another layout. Every record linkd keeps in etcd is
    read through here; what its fields say is the caller's to check."""
    if len(value) > limit:
        raise RecordError(f"{where}: {len(value)} bytes, over the {limit} allowed (a {what} "
                          f"is at most {limit} bytes)")
    try:
        body = json.loads(value.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise RecordError(f"{where}: not JSON ({_first_line(exc)})") from None
    if not isinstance(body, dict):
        raise RecordError(f"{where}: expected a JSON object")
    version = body.get("v")
    if type(version) is not int:
        raise RecordError(f"{where}: no layout version \"v\"")
    if version != 1:
        raise RecordError(f"{where}: layout version {version} is not one this linkd reads "
                          "(layout 1; written by a newer linkd? upgrade this node)")
    return body


def decode_record(key: bytes, data: bytes, prefix: str = DEFAULT_PREFIX) -> NodeRecord:
    """The record under `key`; RecordError naming the key and what is wrong."""
    name = name_of_key(key, prefix)
    body = record_body(f"node record {name}", data, RECORD_LIMIT, "node record")
    where = f"node record {name}"
    got = {k: body.get(k) for k in ("name", "address", "labels", "version", "started",
                                    "state", "instance")}
    problems = []
    if got["name"] != name:
        problems.append(f"name {_show(str(got['name']))} is not the key's")
    address = got["address"]
    if not (isinstance(address, str) and len(address) <= 64 and _is_ip(address)):
        problems.append("address: expected an IP address")
    labels = got["labels"]
    if not (isinstance(labels, dict) and len(labels) <= MAX_LABELS):
        problems.append(f"labels: expected an object of at most {MAX_LABELS} strings")
    else:
        for k, v in labels.items():
            problem = label_problem(k, v) if isinstance(v, str) else f"label {_show(k)}: " \
                                                                      "not a string"
            if problem:
                problems.append(problem)
                break
    linkd_version = got["version"]
    if not (isinstance(linkd_version, str) and 0 < len(linkd_version) <= MAX_VERSION
            and _VERSION.fullmatch(linkd_version)):
        problems.append("version: expected a linkd version")
    started = got["started"]
    if not (isinstance(started, int | float) and not isinstance(started, bool)
            and math.isfinite(started) and started >= 0):
        problems.append("started: expected a Unix time")
    if got["state"] not in RECORD_STATES:
        problems.append(f"state: expected one of {', '.join(RECORD_STATES)}")
    instance = got["instance"]
    if not (isinstance(instance, str) and len(instance) <= 64
            and (instance == "" or (instance.isascii() and instance.isalnum()))):
        problems.append("instance: expected a short token")
    if problems:
        raise RecordError(f"{where}: {'; '.join(problems)}")
    assert isinstance(address, str) and isinstance(labels, dict)
    return NodeRecord(
        name,
        str(ipaddress.ip_address(address)),
        {str(k): str(v) for k, v in sorted(labels.items())},
        str(linkd_version),
        float(started),  # type: ignore[arg-type]  # checked above
        str(got["state"]),
        str(instance),
    )


# -- what `GET /v1/nodes` answers ----------------------------------------------------------

# A node's own connection to the cluster.
CONNECTION_STATES = ("joining", "ready", "disconnected", "conflict")


def node_to_plain(record: NodeRecord, *, own: bool, state: str | None = None
                  ) -> dict[str, object]:
    return {
        "name": record.name,
        "address": record.address,
        "labels": dict(record.labels),
        "version": record.version,
        "started": record.started,
        "state": state or record.state,
        "self": own,
    }


# -- helpers -------------------------------------------------------------------------------


def _show(text: str, limit: int = 80) -> str:
    """`text` quoted for a message: control characters escaped, bounded."""
    shown = repr(text[:limit])
    return shown + ("..." if len(text) > limit else "")


def _show_bytes(data: bytes, limit: int = 80) -> str:
    return repr(data[:limit]) + ("..." if len(data) > limit else "")


def _first_line(exc: BaseException) -> str:
    return str(exc).split("\n", 1)[0][:120]
