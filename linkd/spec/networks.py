"""Top-level `networks:` and each service's `networks:` (its attachments).

Networks are read before services because an attachment is checked against its network:
the network must exist, and a static `ipv4_address` must lie inside the subnet the network
declares (Compose refuses a static address on a network without a declared subnet) and
must not be its gateway. Only the `bridge` driver exists in linkd.

`external: true` declares a network another stack made: it is found by its name (`name:`,
else the key) when the stack comes up (linkd.core.shared_networks), so here it has no
subnet and its settings are the owner's (warned and ignored if given). `name:` on a
network of the stack's own gives it that name instead of `<stack>_<key>`, the name other
stacks join it by.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import replace
from typing import Literal

from linkd.core.model import Attachment, Network
from linkd.spec.net_keys import parse_mac
from linkd.spec.nodes import At, Reader, given
from linkd.spec.values import Bad, check_alias, quote

_NETWORK_KEYS = ("driver", "internal", "enable_ipv6", "ipam", "external", "name")
_NETWORK_UNSUPPORTED = ("labels", "driver_opts", "attachable")
# What the stack that makes a network decides; an external network takes the owner's.
_OWNERS_KEYS = ("driver", "internal", "enable_ipv6", "ipam")
_ATTACH_KEYS = ("aliases", "ipv4_address", "ipv6_address", "mac_address")
_ATTACH_UNSUPPORTED = (
    "priority", "gw_priority", "link_local_ips", "driver_opts", "interface_name",
)  # fmt: skip
_NETWORK_NAME = re.compile(r"[a-zA-Z0-9._-]+")  # Compose's rule for network keys
_REAL_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9._-]{0,127}")  # Docker's, for `name:`
_V4_PREFIX = (8, 29)  # a /29 leaves 5 addresses for containers after network, gateway, broadcast
_V6_PREFIX_MAX = 124

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def gateway_of(network: Network, version: int) -> IPAddress | None:
    """The gateway in use: the declared one, else the subnet's first address (model rule)."""
    subnet = network.subnet if version == 4 else network.subnet6
    gateway = network.gateway if version == 4 else network.gateway6
    if gateway is not None or subnet is None:
        return gateway
    return subnet.network_address + 1


class NetworkReader:
    def __init__(self, r: Reader) -> None:
        self.r = r
        self.declared: dict[str, Network] = {}
        self.broken: set[str] = set()  # declared but invalid: skip checks that depend on them
        self.static: dict[tuple[str, IPAddress], str] = {}  # (network, address) -> service

    # --- networks: ---

    def network(self, name: str, at: At) -> tuple[Network, dict[int, At]] | None:
        """One declared network, and the `At` of its subnets by IP version."""
        r = self.r
        found = len(r.problems)
        if not _NETWORK_NAME.fullmatch(name):
            r.fail(
                at,
                f'expected a network name of letters, digits, ".", "_" and "-", got {quote(name)}',
            )
        f = r.fields(at, _NETWORK_KEYS, _NETWORK_UNSUPPORTED) if not at.is_null else {}
        network = Network(name)
        where: dict[int, At] = {}
        if f is not None:
            external, real_name = self._identity(f)
            if external:
                for key in _OWNERS_KEYS:
                    if owners := given(f, key):
                        r.warn(owners, "ignored on an external network: the stack that "
                                       "creates the network decides it")
                network = Network(name, real_name=real_name, external=True)
            else:
                network = replace(self._network_fields(name, f, where), real_name=real_name)
        if f is None or len(r.problems) > found:
            self.broken.add(name)
            return None
        self.declared[name] = network
        return network, where

    def _identity(self, f: dict[str, At]) -> tuple[bool, str | None]:
        """`external` (true, or Compose's old `external: {name: N}`) and `name`."""
        r = self.r
        external: bool | None = False
        real_name = None
        if (name_at := given(f, "name")) is not None:
            real_name = r.parsed(name_at, _real_name)
        if (ext := given(f, "external")) is not None:
            if ext.is_mapping:
                e = r.fields(ext, ("name",)) or {}
                external = True
                if (old := given(e, "name")) is not None:
                    if name_at is not None:
                        r.fail(old, 'both "external.name" (deprecated) and "name" are given '
                                    '(Compose refuses it too); keep "name"')
                    else:
                        real_name = r.parsed(old, _real_name)
            else:
                external = r.boolean(ext)
        return bool(external), real_name

    def _network_fields(self, name: str, f: dict[str, At], where: dict[int, At]) -> Network:
        r = self.r
        kind: Literal["bridge", "overlay"] = "bridge"
        if (driver := given(f, "driver")) and (text := r.text(driver)) not in ("bridge", None):
            if text == "overlay":  # spans nodes on a cluster daemon; else a bridge here
                kind = "overlay"
            else:
                r.fail(driver, f'expected driver "bridge" or "overlay", got {quote(text)}')
        internal = r.boolean(f["internal"]) if given(f, "internal") else False
        ipv6 = r.boolean(f["enable_ipv6"]) if given(f, "enable_ipv6") else False
        subnets: dict[int, tuple[IPNetwork, IPAddress | None]] = {}
        if ipam := given(f, "ipam"):
            p = r.fields(ipam, ("driver", "config"), ("options",)) or {}
            if (drv := given(p, "driver")) and (text := r.text(drv)) not in ("default", None):
                r.fail(drv, f'expected ipam driver "default", got {quote(text)}')
            config = given(p, "config")
            for entry in (r.items(config) or []) if config else []:
                self._subnet(entry, subnets, where)
        if 6 in subnets and not ipv6:
            r.fail(where[6], "an IPv6 subnet needs enable_ipv6: true on the network")
        subnet, gateway = subnets.get(4, (None, None))
        subnet6, gateway6 = subnets.get(6, (None, None))
        assert subnet is None or isinstance(subnet, ipaddress.IPv4Network)
        assert gateway is None or isinstance(gateway, ipaddress.IPv4Address)
        assert subnet6 is None or isinstance(subnet6, ipaddress.IPv6Network)
        assert gateway6 is None or isinstance(gateway6, ipaddress.IPv6Address)
        return Network(
            name, kind, bool(internal), subnet, gateway, bool(ipv6), subnet6, gateway6
        )

    def _subnet(
        self,
        entry: At,
        subnets: dict[int, tuple[IPNetwork, IPAddress | None]],
        where: dict[int, At],
    ) -> None:
        r = self.r
        c = r.fields(entry, ("subnet", "gateway"), ("ip_range", "aux_addresses"))
        if c is None:
            return
        subnet_at = given(c, "subnet")
        if subnet_at is None:
            r.fail(entry, "an ipam config entry needs a subnet, like 10.5.0.0/24")
            return
        subnet = r.parsed(subnet_at, _parse_subnet)
        if subnet is None:
            return
        if subnet.version in subnets:
            r.fail(subnet_at, f"a second IPv{subnet.version} subnet; a network has at most one")
            return
        gateway = None
        if gateway_at := given(c, "gateway"):
            gateway = r.parsed(gateway_at, lambda t: _parse_gateway(t, subnet))
        subnets[subnet.version] = (subnet, gateway)
        where[subnet.version] = subnet_at

    # --- services.X.networks ---

    def attachments(self, at: At | None, service: str, replicas: int) -> tuple[Attachment, ...]:
        """A service's networks in the order given (eth0 first); none means `default`."""
        r = self.r
        found: list[Attachment] = []
        if at is not None and at.is_sequence:
            for item in r.items(at) or []:
                name = r.text(item)
                if name is not None and self._known(item, name, found):
                    found.append(Attachment(name))
        elif at is not None and not at.is_null:
            for name, child in r.pairs(at) or []:
                if self._known(child, name, found):
                    attachment = self._attachment(name, child, service, replicas)
                    if attachment is not None:
                        found.append(attachment)
        # No networks (or an empty list) joins `default`, as in Compose.
        return tuple(found) or (Attachment("default"),)

    def _known(self, at: At, name: str, found: list[Attachment]) -> bool:
        if name not in self.declared and name not in self.broken and name != "default":
            known = ", ".join(["default", *self.declared]) if self.declared else "default"
            self.r.fail(
                at,
                f"unknown network {quote(name)}; declare it under top-level networks: "
                f"(known: {known})",
            )
            return False
        if any(a.network == name for a in found):
            self.r.fail(at, f"network {quote(name)} is listed twice")
            return False
        return True

    def _attachment(self, name: str, at: At, service: str, replicas: int) -> Attachment | None:
        r = self.r
        if at.is_null:
            return Attachment(name)
        f = r.fields(at, _ATTACH_KEYS, _ATTACH_UNSUPPORTED)
        if f is None:
            return None
        aliases: list[str] = []
        if aliases_at := given(f, "aliases"):
            for item in r.items(aliases_at) or []:
                if (alias := r.parsed(item, _alias)) is not None:
                    aliases.append(alias)
        v4 = v6 = None
        if v4_at := given(f, "ipv4_address"):
            v4 = r.parsed(v4_at, lambda t: _address(t, 4))
            v4 = v4 if v4 is None else self._static(v4_at, name, v4, service, replicas)
        if v6_at := given(f, "ipv6_address"):
            v6 = r.parsed(v6_at, lambda t: _address(t, 6))
            v6 = v6 if v6 is None else self._static(v6_at, name, v6, service, replicas)
        assert v4 is None or isinstance(v4, ipaddress.IPv4Address)
        assert v6 is None or isinstance(v6, ipaddress.IPv6Address)
        mac = None
        if mac_at := given(f, "mac_address"):
            mac = r.parsed(mac_at, parse_mac)
            if mac is not None and replicas > 1:
                r.fail(mac_at, f"service {service} has {replicas} replicas and one MAC "
                               "address; an address fits one container")
                mac = None
        return Attachment(name, tuple(aliases), v4, v6, mac)

    def _static(
        self, at: At, name: str, address: IPAddress, service: str, replicas: int
    ) -> IPAddress | None:
        if name in self.broken:  # its subnet already has a problem of its own
            return address
        network = self.declared.get(name, Network(name))  # `default` may be implicit
        if network.external:  # its subnet is known at `up`, from the stack that owns it
            return self._claimed(at, name, address, service, replicas)
        subnet = network.subnet if address.version == 4 else network.subnet6
        key = "subnet" if address.version == 4 else "IPv6 subnet"
        problem = None
        if subnet is None:
            problem = (
                f"a static address needs network {name} to declare a {key} "
                f"(networks.{name}.ipam.config), as in Compose"
            )
        elif address not in subnet:
            problem = f"{address} is outside subnet {subnet} of network {name}"
        elif address == subnet.network_address or (
            address.version == 4 and address == subnet.broadcast_address
        ):
            problem = f"{address} is the network or broadcast address of subnet {subnet}"
        elif address == gateway_of(network, address.version):
            problem = f"{address} is the gateway of network {name}; pick another address"
        if problem:
            self.r.fail(at, problem)
            return None
        return self._claimed(at, name, address, service, replicas)

    def _claimed(
        self, at: At, name: str, address: IPAddress, service: str, replicas: int
    ) -> IPAddress | None:
        problem = None
        if (name, address) in self.static:
            owner = self.static[(name, address)]
            problem = f"{address} on network {name} is already taken by service {owner}"
        elif replicas > 1:
            problem = (
                f"service {service} has {replicas} replicas but one static address; "
                "a static address fits one container"
            )
        if problem:
            self.r.fail(at, problem)
            return None
        self.static[(name, address)] = service
        return address


def _real_name(text: str) -> str:
    if not _REAL_NAME.fullmatch(text):
        raise Bad(f'expected a network name of letters, digits, ".", "_" and "-" that starts '
                  f"with a letter or digit (Docker's rule), got {quote(text)}")
    return text


def _alias(text: str) -> str:
    check_alias(text)
    return text


def _address(text: str, version: int) -> IPAddress:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        address = None
    if address is None or address.version != version:
        raise Bad(f"expected an IPv{version} address, got {quote(text)}")
    return address


def _parse_subnet(text: str) -> IPNetwork:
    try:
        subnet = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise Bad(
            f'expected a subnet like "10.5.0.0/24" or "fd00:5::/64", got {quote(text)}'
        ) from None
    if "/" not in text:
        raise Bad(f"expected a subnet with a prefix length, like {subnet}/24, got {quote(text)}")
    if str(subnet) != text and ipaddress.ip_interface(text).ip != subnet.network_address:
        raise Bad(f"subnet {quote(text)} has host bits set; did you mean {subnet}?")
    if subnet.version == 4:
        low, high = _V4_PREFIX
        if not low <= subnet.prefixlen <= high:
            raise Bad(f"expected an IPv4 subnet from /{low} to /{high}, got {quote(text)}")
    elif subnet.prefixlen > _V6_PREFIX_MAX:
        raise Bad(f"expected an IPv6 subnet of /{_V6_PREFIX_MAX} or larger, got {quote(text)}")
    if subnet.is_loopback or subnet.is_multicast or subnet.is_unspecified or subnet.is_reserved:
        raise Bad(f"subnet {quote(text)} is a loopback, multicast or reserved range")
    return subnet


def _parse_gateway(text: str, subnet: IPNetwork) -> IPAddress:
    gateway = _address(text, subnet.version)
    if gateway not in subnet:
        raise Bad(f"gateway {gateway} is outside subnet {subnet}")
    if gateway == subnet.network_address or (
        subnet.version == 4 and gateway == subnet.broadcast_address
    ):
        raise Bad(f"gateway {gateway} is the network or broadcast address of subnet {subnet}")
    return gateway
