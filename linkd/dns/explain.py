"""Why a requester gets the answer it gets, in sentences (`linkd dns`, the API's dns endpoint).

`explain(zone, name, requester)` walks the same tables `linkd.dns.resolve` answers from
(the requester's view, its networks in order, its link aliases, the reverse names) and
says which network or alias gives `name` which records, which are held back as not
healthy, and where the name exists but the requester cannot see it. It never answers a
query: `linkd.dns.answers.lookup` pairs these lines with the reply the server would send.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

from linkd.dns.snapshot import Entry, Zone


def explain(zone: Zone, name: str, requester: IPv4Address | IPv6Address) -> list[str]:
    """Human-readable lines: which network or alias gives `name` which records."""
    key = name.lower().rstrip(".")
    view = zone.view_of(requester)
    lines: list[str] = []
    if view is None and requester in zone.extra:
        lines.append(f"{requester} is a container with no network: it sees only its own names")
    elif view is None:
        lines.append(f"{requester} is no container linkd knows: it sees no names")
    else:
        nets = ", ".join(f"{s}/{n}" for s, n in view.networks)
        lines.append(f"{requester} is {view.who}, on networks {nets}")
    extra = zone.extra.get(requester, {}).get(key)
    if extra is not None:
        lines.append(f"{name}: link alias of this container only -> {_addresses(extra)}")
    seen = set(view.networks) if view is not None else set()
    used_v4 = used_v6 = False
    for netid in view.networks if view is not None else ():
        entry = zone.names.get(netid, {}).get(key)
        if entry is None:
            continue
        for record in entry.records:
            lines.append(
                f"{name} on {netid[0]}/{netid[1]}: {record.container} "
                f"({record.via}) {_record_addresses(record.v4, record.v6)}"
            )
        for record in entry.held:
            lines.append(
                f"{name} on {netid[0]}/{netid[1]}: {record.container} ({record.via}) "
                f"{_record_addresses(record.v4, record.v6)} held back: not healthy"
            )
        if entry.held and not entry.records:
            lines.append(f"{name} on {netid[0]}/{netid[1]}: no healthy instance (SERVFAIL)")
        elif not entry.records:
            lines.append(f"{name} on {netid[0]}/{netid[1]}: exists, no records")
        if entry.v4 and not used_v4:
            lines.append(f"  A answered from {netid[0]}/{netid[1]}")
            used_v4 = True
        if entry.v6 and not used_v6:
            lines.append(f"  AAAA answered from {netid[0]}/{netid[1]}")
            used_v6 = True
    for netid, table in sorted(zone.names.items()):
        if netid not in seen and key in table and table[key].records:
            lines.append(
                f"{name} exists on {netid[0]}/{netid[1]}, which the requester "
                "is not on: not visible"
            )
    pointer = zone.reverse.get(key)
    if pointer is not None:
        visible = pointer.network in seen
        lines.append(f"{name}: PTR {pointer.target}" + ("" if visible else " (not visible)"))
    if len(lines) == 1:
        if zone.in_zone(key) or "." not in key:
            lines.append(f"{name}: no such name for this requester (NXDOMAIN)")
        else:
            lines.append(f"{name}: not a linkd name; forwarded upstream")
    return lines


def _addresses(entry: Entry) -> str:
    return ", ".join(str(a) for a in (*entry.v4, *entry.v6)) or "no addresses"


def _record_addresses(v4: IPv4Address | None, v6: IPv6Address | None) -> str:
    return " ".join(str(a) for a in (v4, v6) if a is not None)
