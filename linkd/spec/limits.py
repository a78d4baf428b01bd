"""`mem_limit`, `cpus`, `pids_limit` and `deploy.resources.limits` of a service, and its
`x-linkd: runtime:` (what runs its image: `runc` or linkd's own launcher, `linkd`).

Compose's forms: memory as bytes (an integer) or a string with a unit (`512m`, `1g`,
`300k`, `1024b`, `2gb`: powers of 1024, case-insensitive); cpus as a number of CPUs
(`0.5`, `"1.5"`); pids as an integer (0 or -1: no limit). The short keys and
`deploy.resources.limits` may both be given only if they agree. Docker refuses memory
limits under 6 MiB (a container could not start under them), and so does linkd.
"""

from __future__ import annotations

import re

from linkd.core.model import Limits
from linkd.spec.nodes import At, Reader, given
from linkd.spec.values import quote

KEYS = ("mem_limit", "cpus", "pids_limit", "ulimits")
# Docker's ulimit names (they are RLIMIT_<NAME.upper()>, "as" being RLIMIT_AS)
ULIMITS = ("as", "core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice",
           "nofile", "nproc", "rss", "rtprio", "rttime", "sigpending", "stack")
_LIMIT_KEYS = ("cpus", "memory", "pids")
_MIN_MEMORY = 6 << 20
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
_BYTES = re.compile(r"^(\d+(?:\.\d+)?)\s*([bkmg]?)b?$", re.IGNORECASE)


def _memory(r: Reader, at: At) -> int | None:
    text = r.raw(at)
    if text is None:
        return None
    m = _BYTES.match(text.strip())
    if not m:
        r.fail(at, f"expected a size like 512m or 1g, got {quote(text)}")
        return None
    value = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if value < _MIN_MEMORY:
        r.fail(at, f"a memory limit must be at least 6m (Docker's minimum), got {quote(text)}")
        return None
    return value


def _cpus(r: Reader, at: At) -> float | None:
    text = r.raw(at)
    try:
        value = float(text) if text is not None else None
    except ValueError:
        value = None
    if value is None or not value > 0:
        r.fail(at, f"expected a number of CPUs above 0 (like 0.5), got {quote(str(text))}")
        return None
    return value


def _pids(r: Reader, at: At) -> int | None:
    value = r.integer(at, -1)
    return value if value is not None and value > 0 else None


def read_limits(r: Reader, fields: dict[str, At]) -> Limits:
    """The service's limits from its fields (`deploy` is read for `resources` only)."""
    short = Limits(
        memory=_memory(r, at) if (at := given(fields, "mem_limit")) else None,
        cpus=_cpus(r, at) if (at := given(fields, "cpus")) else None,
        pids=_pids(r, at) if (at := given(fields, "pids_limit")) else None,
    )
    deploy = given(fields, "deploy")
    resources = _child(r, deploy, "resources") if deploy is not None else None
    limits_at = None
    if resources is not None:
        rf = r.fields(resources, ("limits",), ("reservations", "devices")) or {}
        limits_at = given(rf, "limits")
    ulimits = _ulimits(r, at) if (at := given(fields, "ulimits")) else ()
    if ulimits:
        short = Limits(short.memory, short.cpus, short.pids, ulimits)
    if limits_at is None:
        return short
    f = r.fields(limits_at, _LIMIT_KEYS) or {}
    long = Limits(
        memory=_memory(r, at) if (at := given(f, "memory")) else None,
        cpus=_cpus(r, at) if (at := given(f, "cpus")) else None,
        pids=_pids(r, at) if (at := given(f, "pids")) else None,
    )
    for name, key, a, b in (("memory", "mem_limit", short.memory, long.memory),
                            ("cpus", "cpus", short.cpus, long.cpus),
                            ("pids", "pids_limit", short.pids, long.pids)):
        if a is not None and b is not None and a != b:
            r.fail(limits_at, f"deploy.resources.limits.{name} differs from {key}; set one")
    return Limits(
        memory=short.memory if short.memory is not None else long.memory,
        cpus=short.cpus if short.cpus is not None else long.cpus,
        pids=short.pids if short.pids is not None else long.pids,
        ulimits=ulimits,
    )


def _ulimits(r: Reader, at: At) -> tuple[tuple[str, int, int], ...]:
    """`{nofile: {soft: 20000, hard: 40000}, nproc: 65535}`: a number sets both; -1 is
    unlimited; soft at most hard."""
    found: list[tuple[str, int, int]] = []
    for name, child in r.pairs(at) or []:
        if name not in ULIMITS:
            r.fail(child, f"unknown ulimit {name!r}; linkd knows {', '.join(ULIMITS)}")
            continue
        if child.is_mapping:
            f = r.fields(child, ("soft", "hard")) or {}
            if "soft" not in f or "hard" not in f:
                r.fail(child, f"ulimit {name} needs both soft and hard (or one number)")
                continue
            soft, hard = _rlimit(r, f["soft"]), _rlimit(r, f["hard"])
        else:
            soft = hard = _rlimit(r, child)
        if soft is None or hard is None:
            continue
        if hard != -1 and (soft == -1 or soft > hard):
            r.fail(child, f"ulimit {name}: soft {soft} is above hard {hard}")
            continue
        found.append((name, soft, hard))
    return tuple(sorted(found))  # by name: the file's order means nothing


def _rlimit(r: Reader, at: At) -> int | None:
    value = r.integer(at)
    if value is not None and value < -1:
        r.fail(at, f"expected a limit of 0 or more, or -1 for unlimited, got {value}")
        return None
    return value


def _child(r: Reader, at: At, key: str) -> At | None:
    """One key of a mapping, without warning about its siblings (others read those)."""
    if not at.is_mapping:
        return None
    for name, child in r.pairs(at) or []:
        if name == key and not child.is_null:
            return child
    return None


def dump_limits(limits: Limits) -> dict[str, object]:
    """The short keys, for `linkd config` (linkd.spec.dump)."""
    out: dict[str, object] = {}
    if limits.memory is not None:
        out["mem_limit"] = limits.memory
    if limits.cpus is not None:
        out["cpus"] = limits.cpus
    if limits.pids is not None:
        out["pids_limit"] = limits.pids
    if limits.ulimits:
        out["ulimits"] = {name: {"soft": soft, "hard": hard}
                          for name, soft, hard in limits.ulimits}
    return out


RUNTIMES = ("runc", "linkd")


def read_runtime(r: Reader, x_linkd: At | None) -> str | None:
    """`x-linkd: runtime:` of a service (the x-linkd reader knows the key, this reads it)."""
    at = _child(r, x_linkd, "runtime") if x_linkd is not None else None
    if at is None:
        return None
    value = r.text(at)
    if value is not None and value not in RUNTIMES:
        r.fail(at, f"expected one of {', '.join(RUNTIMES)}, got {quote(value)}")
        return None
    return value
