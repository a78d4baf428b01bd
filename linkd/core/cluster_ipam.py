"""Overlay networks' subnets, VNIs and addresses, allocated cluster-wide in etcd: the
key layout, the records and the order candidates are tried in.

Keys, under the cluster's prefix and layout version (linkd.core.cluster):

    networks/<id>                     a NetworkRecord, JSON: subnet, VNI, the node that made it,
                                      the network's name
    names/<name>                      -> <id>: which network has that name (`name:`, or
                                      `<stack>_<key>`), for stacks joining it from other nodes
    vnis/<n>                          -> <id>: which network holds VNI n
    subnets/<cidr>                    -> <id>: which network holds that subnet
    networks/<id>/addresses/<ip>      -> <owner>: who holds the address now
    networks/<id>/leases/<owner>      -> <ip>: the address the owner had last (sticky)

A network id is `<stack>/<network>` (linkd.core.overlay.overlay_id), an owner
`<stack>/<container>`; neither part holds a '/', so the keys parse one way only.
The two indexes turn "no other network has this VNI / this subnet" into "this key is
absent", which one etcd transaction can check and claim together with the record.

Whatever is under the prefix was written by some other node: every decoder bounds
the size, checks the shape and says which key is wrong, never echoing more than a line.

Candidates: a subnet is picked by linkd.core.ipam.pick_subnets from the pool a single
host uses (the first free /22 of 10.87.0.0/16: 1021 containers across the nodes, where
one host's network has a /24), an address by linkd.core.ipam.assign (the
owner's sticky address if it is free, else the lowest free host address, never the
network's, the gateway's or the broadcast address). A candidate lost to another node's
transaction is added to what is taken and the next one tried.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import TypeVar

from linkd.core import ipam
from linkd.core.cluster import LAYOUT, RecordError, check_prefix, node_name_problem, record_body
from linkd.core.model import Network
from linkd.core.overlay import VNI_MAX, VNI_MIN
from linkd.errors import ConflictError

NETWORK_RECORD_LIMIT = 1024  # bytes of one encoded network record
VALUE_LIMIT = 300  # bytes of an index's or an address's value (an id, an owner, an IP)
MAX_PART = 128  # characters of a stack, network or container name in a key

_PART = re.compile(r"[A-Za-z0-9._-]{1,128}")


# -- ids and owners ---------------------------------------------------------------------


def pair_problem(text: str, what: str) -> str | None:
    """Why `text` is not a `<a>/<b>` pair of names (a network id, an owner)."""
    parts = text.split("/")
    if len(parts) != 2:
        return f"{what} {_show(text)}: expected <stack>/<name>"
    for part in parts:
        if not _PART.fullmatch(part) or part in (".", ".."):
            return (f"{what} {_show(text)}: each part is 1 to {MAX_PART} letters, digits, "
                    "'.', '_' and '-'")
    return None


def _check_pair(text: str, what: str) -> str:
    problem = pair_problem(text, what)
    if problem:
        raise ValueError(problem)
    return text


# -- keys -------------------------------------------------------------------------------


def _base(prefix: str) -> str:
    return f"{check_prefix(prefix)}{LAYOUT}/"


def network_key(network_id: str, prefix: str) -> bytes:
    return f"{_base(prefix)}networks/{_check_pair(network_id, 'network id')}".encode()


def vnis_prefix(prefix: str) -> bytes:
    return f"{_base(prefix)}vnis/".encode()


def vni_key(vni: int, prefix: str) -> bytes:
    if not VNI_MIN <= vni <= VNI_MAX:
        raise ValueError(f"VNI {vni} is outside {VNI_MIN}..{VNI_MAX}")
    return vnis_prefix(prefix) + str(vni).encode()


def name_key(name: str, prefix: str) -> bytes:
    if not _PART.fullmatch(name) or name in (".", ".."):
        raise ValueError(f"network name {_show(name)}: 1 to {MAX_PART} letters, digits, '.', "
                         "'_' and '-' to span nodes")
    return f"{_base(prefix)}names/{name}".encode()


def subnets_prefix(prefix: str) -> bytes:
    return f"{_base(prefix)}subnets/".encode()


def subnet_key(subnet: IPv4Network, prefix: str) -> bytes:
    return subnets_prefix(prefix) + str(subnet).encode()


def addresses_prefix(network_id: str, prefix: str) -> bytes:
    return network_key(network_id, prefix) + b"/addresses/"


def address_key(network_id: str, address: IPv4Address, prefix: str) -> bytes:
    return addresses_prefix(network_id, prefix) + str(address).encode()


def leases_prefix(network_id: str, prefix: str) -> bytes:
    return network_key(network_id, prefix) + b"/leases/"


def lease_key(network_id: str, owner: str, prefix: str) -> bytes:
    return leases_prefix(network_id, prefix) + _check_pair(owner, "owner").encode()


def network_children(network_id: str, prefix: str) -> bytes:
    """Everything under a network's record (its addresses and leases)."""
    return network_key(network_id, prefix) + b"/"


def _tail(key: bytes, head: bytes) -> str:
    if not key.startswith(head):
        raise RecordError(f"{_show_bytes(key)} is not under {head.decode()}")
    try:
        return key[len(head):].decode("ascii")
    except UnicodeDecodeError:
        raise RecordError(f"{_show_bytes(key)}: not ASCII") from None


def vni_of_key(key: bytes, prefix: str) -> int:
    tail = _tail(key, vnis_prefix(prefix))
    if not (tail.isdigit() and len(tail) <= 8 and VNI_MIN <= int(tail) <= VNI_MAX):
        raise RecordError(f"{_show_bytes(key)}: not a VNI ({VNI_MIN} to {VNI_MAX})")
    return int(tail)


def subnet_of_key(key: bytes, prefix: str) -> IPv4Network:
    return _canonical(IPv4Network, _tail(key, subnets_prefix(prefix)), "IPv4 subnet",
                      _show_bytes(key))


def address_of_key(key: bytes, network_id: str, prefix: str) -> IPv4Address:
    tail = _tail(key, addresses_prefix(network_id, prefix))
    return _canonical_address(tail, _show_bytes(key))


# -- values -----------------------------------------------------------------------------


def decode_pair(value: bytes, what: str, where: bytes) -> str:
    """An index's value (a network id) or an address's (an owner)."""
    if len(value) > VALUE_LIMIT:
        raise RecordError(f"{_show_bytes(where)}: the value is over {VALUE_LIMIT} bytes")
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        raise RecordError(f"{_show_bytes(where)}: the value is not ASCII") from None
    problem = pair_problem(text, what)
    if problem:
        raise RecordError(f"{_show_bytes(where)}: {problem}")
    return text


def decode_address(value: bytes, where: bytes) -> IPv4Address:
    """A lease's value."""
    if len(value) > 15:
        raise RecordError(f"{_show_bytes(where)}: not an IPv4 address")
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        raise RecordError(f"{_show_bytes(where)}: not an IPv4 address") from None
    return _canonical_address(text, _show_bytes(where))


def _canonical_address(text: str, where: str) -> IPv4Address:
    return _canonical(IPv4Address, text, "IPv4 address", where)


_Parsed = TypeVar("_Parsed", IPv4Address, IPv4Network)


def _canonical(parse: Callable[[str], _Parsed], text: str, what: str, where: str) -> _Parsed:
    """`text` read as `what`, and written as it is written back (one key per value)."""
    try:
        value = parse(text)
    except ValueError:
        raise RecordError(f"{where}: not an {what}") from None
    if str(value) != text:
        raise RecordError(f"{where}: not an {what} in its canonical form")
    return value


@dataclass(frozen=True, slots=True)
class NetworkRecord:
    """An overlay network as the cluster knows it."""

    id: str  # <stack>/<network>
    subnet: IPv4Network
    vni: int
    creator: str  # the node whose claim made it
    name: str = ""  # its name (`names/<name>` points at it); "": none, reached by id only

    @property
    def gateway(self) -> IPv4Address:
        gateway = ipam.gateway_of(self.subnet)
        assert isinstance(gateway, IPv4Address)
        return gateway


def encode_network(record: NetworkRecord) -> bytes:
    body = {"v": 1, "id": record.id, "subnet": str(record.subnet), "vni": record.vni,
            "creator": record.creator}
    if record.name:
        body["name"] = record.name
    data = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    assert len(data) <= NETWORK_RECORD_LIMIT, "a record linkd made is over its own limit"
    return data


def decode_network(key: bytes, value: bytes, network_id: str, prefix: str) -> NetworkRecord:
    """The record under `key`, which must be `network_id`'s; RecordError for anything
    else (too big, not JSON, a field of the wrong type or range, another network's)."""
    where = _show_bytes(key)
    if key != network_key(network_id, prefix):
        raise RecordError(f"{where}: not the key of network {network_id}")
    got = record_body(where, value, NETWORK_RECORD_LIMIT, "network record")
    problems = []
    if got.get("id") != network_id:
        problems.append(f"id: expected {network_id}")
    subnet: IPv4Network | None = None
    raw_subnet = got.get("subnet")
    if isinstance(raw_subnet, str) and len(raw_subnet) <= 18:
        with contextlib.suppress(ValueError):
            subnet = IPv4Network(raw_subnet)
    if subnet is None or subnet.prefixlen > 30:
        problems.append("subnet: expected an IPv4 subnet of /30 or wider")
    vni = got.get("vni")
    if not (isinstance(vni, int) and not isinstance(vni, bool) and VNI_MIN <= vni <= VNI_MAX):
        problems.append(f"vni: expected a number from {VNI_MIN} to {VNI_MAX}")
    creator = got.get("creator")
    if not (isinstance(creator, str) and node_name_problem(creator) is None):
        problems.append("creator: expected a node name")
    name = got.get("name", "")
    if not (isinstance(name, str) and (name == "" or _PART.fullmatch(name))):
        problems.append(f"name: expected 1 to {MAX_PART} letters, digits, '.', '_' and '-'")
    if problems:
        raise RecordError(f"{where}: {'; '.join(problems)}")
    assert subnet is not None and isinstance(vni, int) and isinstance(creator, str)
    return NetworkRecord(network_id, subnet, vni, creator, name)


# -- candidates -------------------------------------------------------------------------


OVERLAY_PREFIX = 22  # an overlay network's subnet: room for every node's containers


def pick_subnet(network_id: str, taken: Iterable[IPv4Network],
                avoid: Iterable[tuple[ipam.IPNetwork, str]] = (),
                prefix: int = OVERLAY_PREFIX) -> IPv4Network:
    """The first subnet of `prefix` bits of linkd's pool that overlaps neither a subnet
    another overlay network holds (`taken`) nor what this node has (`avoid`: its routes,
    its local networks); ConflictError when the pool is full."""
    used: list[tuple[ipam.IPNetwork, str]] = [(net, "another overlay network") for net in taken]
    used.extend(avoid)
    chosen = ipam.pick_subnets([Network(name=network_id)], used, prefix=prefix)
    return chosen[network_id]


def pick_address(record: NetworkRecord, owner: str, taken: Collection[IPv4Address],
                 sticky: IPv4Address | None, held_for_others: Collection[IPv4Address] = ()
                 ) -> IPv4Address:
    """The address `owner` tries next on `record`'s network: its sticky address if it is
    free, else the lowest free host address that is nobody else's sticky address, else
    (the subnet has no other) the lowest free one; ConflictError when none is free."""
    reserved: set[IPv4Address] = {record.gateway, *taken}
    previous = {owner: sticky} if sticky is not None else None
    others = set(held_for_others) - {sticky} if sticky is not None else set(held_for_others)
    for extra in (others, set()):
        try:
            got = ipam.assign(record.subnet, reserved | extra, [(owner, None)], previous)
        except ConflictError:
            continue
        address = got[owner]
        assert isinstance(address, IPv4Address)
        return address
    raise ConflictError(f"overlay network {record.id}: subnet {record.subnet} has no free "
                        f"address left for {owner}")


# -- helpers ----------------------------------------------------------------------------


def _show(text: str, limit: int = 80) -> str:
    shown = repr(text[:limit])
    return shown + ("..." if len(text) > limit else "")


def _show_bytes(data: bytes, limit: int = 120) -> str:
    return repr(data[:limit]) + ("..." if len(data) > limit else "")

