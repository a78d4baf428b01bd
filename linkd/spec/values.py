"""Parsers for the scalar values of a stack file: durations, ports, signals, names, `${VAR}`.

Each parser takes the text of one value and returns the model value, or raises `Bad` with a
message that says what was expected and what was found. They know nothing of YAML nodes,
paths or lines: `linkd.spec.nodes` catches `Bad` and files it under the value's path and
line. The syntax follows Compose (compose-spec `05-services.md`, `12-interpolation.md`)
and, for durations, Go's `time.ParseDuration`, which Compose uses.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from fractions import Fraction

from linkd.core.image_format import machine_platform
from linkd.core.model import PortSpec, Protocol, RestartPolicy


class Bad(ValueError):
    """A value that does not parse; the message names the value and what is expected."""


def quote(text: str) -> str:
    """`text` as a double-quoted string, the way messages show values."""
    return json.dumps(text, ensure_ascii=False)


# --- durations ----------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 10**6, "s": 10**9}
_UNIT_NS |= {"m": 60 * 10**9, "h": 3600 * 10**9}
DURATION_HINT = 'a duration like "1m30s", "10s", "500ms" or "1h"'


def parse_duration(text: str) -> float:
    """Go duration syntax (`1h2m3.5s`, `500ms`, `2us`) to float seconds.

    Summed as exact nanoseconds and truncated like Go, so `format_duration` can write the
    value back and parse to the same float.
    """
    if text == "0":  # Go accepts a bare zero and nothing else without a unit
        return 0.0
    total = Fraction(0)
    pos = 0
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if match is None:
            unit = "; add a unit" if re.fullmatch(r"[\d.]+", text) else ""
            raise Bad(f"expected {DURATION_HINT}, got {quote(text)}{unit}")
        total += Fraction(match[1]) * _UNIT_NS[match[2]]
        pos = match.end()
    if pos == 0:
        raise Bad(f"expected {DURATION_HINT}, got {quote(text)}")
    return int(total) / 1e9


def _decimal(value: int, unit: int) -> str:
    whole, part = divmod(value, unit)
    if not part:
        return str(whole)
    digits = str(part).rjust(len(str(unit)) - 1, "0").rstrip("0")
    return f"{whole}.{digits}"


def format_duration(seconds: float) -> str:
    """Seconds as Go writes a duration (`1m30s`, `500ms`); inverse of `parse_duration`."""
    ns = round(seconds * 1e9)
    if ns == 0:
        return "0s"
    if ns < 10**9:
        for unit, size in (("ms", 10**6), ("us", 1_000)):
            if ns >= size:
                return _decimal(ns, size) + unit
        return f"{ns}ns"
    hours, rest = divmod(ns, 3600 * 10**9)
    minutes, rest = divmod(rest, 60 * 10**9)
    out = f"{hours}h" if hours else ""
    out += f"{minutes}m" if minutes else ""
    return out + (_decimal(rest, 10**9) + "s" if rest else "")


# --- ports --------------------------------------------------------------------------------

PORT_HINT = 'a port like "8080:80", "127.0.0.1:8080:80/udp" or "80"'
EXPOSE_HINT = 'a port like "80", "8000-8010" or "53/udp"'
_PROTOCOLS: dict[str, Protocol] = {"tcp": "tcp", "udp": "udp", "sctp": "sctp"}
_NUMBER = re.compile(r"\d+")


def parse_protocol(text: str) -> Protocol:
    protocol = _PROTOCOLS.get(text.lower())
    if protocol is None:
        raise Bad(f'expected a protocol "tcp", "udp" or "sctp", got {quote(text)}')
    return protocol


def parse_port_range(text: str, whole: str, hint: str) -> tuple[int, int]:
    """`80` or `8000-8010` to (start, end); `whole` and `hint` make the message."""
    start_text, dash, end_text = text.partition("-")
    if not _NUMBER.fullmatch(start_text) or (dash and not _NUMBER.fullmatch(end_text)):
        raise Bad(f"expected {hint}, got {quote(whole)}")
    start = int(start_text)
    end = int(end_text) if dash else start
    for number in (start, end):
        if not 1 <= number <= 65535:
            raise Bad(f"port {number} in {quote(whole)} is out of range: ports are 1-65535")
    if end < start:
        raise Bad(f"port range {text} in {quote(whole)} ends before it starts")
    return start, end


def _split_protocol(text: str, hint: str) -> tuple[str, Protocol]:
    body, slash, protocol = text.partition("/")
    if not slash:
        return text, "tcp"
    try:
        return body, parse_protocol(protocol)
    except Bad:
        raise Bad(f"expected {hint}, got {quote(text)}: unknown protocol") from None


def parse_host_ip(text: str, whole: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise Bad(
            f"expected an IP address as the host part of {quote(whole)}, got {quote(text)}"
        ) from None


def parse_expose(text: str) -> PortSpec:
    """`expose:` entry: `80`, `8000-8010`, `53/udp`."""
    body, protocol = _split_protocol(text, EXPOSE_HINT)
    start, end = parse_port_range(body, text, EXPOSE_HINT)
    return PortSpec(start, end, protocol)


def parse_port(text: str) -> PortSpec:
    """`ports:` short syntax: `[[host_ip:][host_port]:]container_port[/protocol]`."""
    body, protocol = _split_protocol(text, PORT_HINT)
    host_ip: str | None = None
    if body.startswith("["):  # IPv6 host address: "[::1]:8080:80" or "[::1]::80"
        close = body.find("]")
        parts = body[close + 2 :].split(":") if close > 0 else []
        if close < 0 or body[close + 1 : close + 2] != ":" or len(parts) != 2:
            raise Bad(f"expected {PORT_HINT}, got {quote(text)}")
        host_ip = parse_host_ip(body[1:close], text)
        host, container = parts
    else:
        parts = body.split(":")
        if len(parts) > 3:
            raise Bad(
                f"expected {PORT_HINT}, got {quote(text)}; "
                'put an IPv6 host address in brackets, like "[::1]:8080:80"'
            )
        if len(parts) == 3:
            if not parts[0]:
                raise Bad(f"expected {PORT_HINT}, got {quote(text)}")
            host_ip = parse_host_ip(parts[0], text)
        container = parts[-1]
        host = parts[-2] if len(parts) > 1 else ""
        if len(parts) == 2 and not host:
            raise Bad(f"expected {PORT_HINT}, got {quote(text)}")
    start, end = parse_port_range(container, text, PORT_HINT)
    host_start = host_end = None
    if host:
        host_start, host_end = parse_port_range(host, text, PORT_HINT)
        check_range_lengths(host_start, host_end, start, end, text)
    return PortSpec(start, end, protocol, host_ip, host_start, host_end, published=True)


def check_range_lengths(host_start: int, host_end: int, start: int, end: int, what: str) -> None:
    # Docker would also take "8000-8010:80" as "any free port of the range"; linkd maps
    # ranges one to one, so both sides must have the same length.
    if host_end - host_start != end - start:
        raise Bad(
            f"the host ports {host_start}-{host_end} and container ports {start}-{end} of "
            f"{quote(what)} differ in length; a range must map one to one"
        )


# --- restart and signals ------------------------------------------------------------------


def parse_restart(text: str) -> RestartPolicy:
    if text == "no":
        return RestartPolicy("no")
    if text == "always":
        return RestartPolicy("always")
    if text == "unless-stopped":
        return RestartPolicy("unless-stopped")
    if text == "on-failure":
        return RestartPolicy("on-failure")
    count = text.removeprefix("on-failure:")
    if count != text and _NUMBER.fullmatch(count) and int(count) >= 1:
        return RestartPolicy("on-failure", int(count))
    raise Bad(
        'expected "no", "always", "on-failure", "on-failure:N" (N >= 1) or "unless-stopped", '
        f"got {quote(text)}"
    )


# Linux numbering (asm-generic/signal.h); a fixed table so the result does not depend on
# the machine that parses. The first name of a number is its canonical one.
_SIGNALS = {
    "HUP": 1, "INT": 2, "QUIT": 3, "ILL": 4, "TRAP": 5, "ABRT": 6, "IOT": 6, "BUS": 7,
    "FPE": 8, "KILL": 9, "USR1": 10, "SEGV": 11, "USR2": 12, "PIPE": 13, "ALRM": 14,
    "TERM": 15, "STKFLT": 16, "CHLD": 17, "CLD": 17, "CONT": 18, "STOP": 19, "TSTP": 20,
    "TTIN": 21, "TTOU": 22, "URG": 23, "XCPU": 24, "XFSZ": 25, "VTALRM": 26, "PROF": 27,
    "WINCH": 28, "IO": 29, "POLL": 29, "PWR": 30, "SYS": 31,
}  # fmt: skip
_SIGNAL_NAMES = {number: name for name, number in reversed(_SIGNALS.items())}
_RTMIN, _RTMAX = 34, 64  # glibc's real-time range, as Docker's signal table has it
_RT = re.compile(r"RTMIN(?:\+(\d+))?|RTMAX(?:-(\d+))?")
SIGNAL_HINT = 'a signal like "SIGTERM", "TERM" or 15'


def signal_name(number: int) -> str:
    if number in _SIGNAL_NAMES:
        return "SIG" + _SIGNAL_NAMES[number]
    if _RTMIN <= number <= _RTMAX:
        if number == _RTMIN:
            return "SIGRTMIN"
        if number == _RTMAX:
            return "SIGRTMAX"
        if number - _RTMIN <= 15:
            return f"SIGRTMIN+{number - _RTMIN}"
        return f"SIGRTMAX-{_RTMAX - number}"
    raise Bad(f"expected {SIGNAL_HINT}, got {number}: not a Linux signal number")


def parse_signal(text: str) -> str:
    """`SIGTERM`, `term`, `15`, `SIGRTMIN+3` to the canonical `SIGxxx` name."""
    if _NUMBER.fullmatch(text):
        return signal_name(int(text))
    name = text.upper().removeprefix("SIG")
    if name in _SIGNALS:
        return signal_name(_SIGNALS[name])
    match = _RT.fullmatch(name)
    if match:
        if name.startswith("RTMIN"):
            number = _RTMIN + int(match[1] or 0)
        else:
            number = _RTMAX - int(match[2] or 0)
        if _RTMIN <= number <= _RTMAX:
            return signal_name(number)
    raise Bad(f"expected {SIGNAL_HINT}, got {quote(text)}")


# --- names --------------------------------------------------------------------------------

# File names derive from stack names (its nftables table `linkd-<stack>`, its namespaces
# `linkd-<stack>.<container>`, its run and cgroup directories), and a file name has at most
# 255 bytes; interface names are hashed and need no room.
STACK_NAME_MAX = 200
_STACK_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
_SERVICE_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")
_ALIAS_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?")


def normalize_project_name(text: str) -> str:
    """Compose's `NormalizeProjectName`: lower case, keep [a-z0-9_-], no leading _ or -."""
    return re.sub(r"[^a-z0-9_-]", "", text.lower()).lstrip("_-")


def check_stack_name(name: str) -> str:
    if not _STACK_NAME.fullmatch(name):
        raise Bad(
            'expected a stack name of lower-case letters, digits, "_" and "-" that starts '
            f"with a letter or digit, got {quote(name)}"
        )
    if len(name) > STACK_NAME_MAX:
        raise Bad(
            f"stack name {quote(name[:40] + '...')} has {len(name)} characters; linkd limits "
            f"stack names to {STACK_NAME_MAX} because file names derive from them (a file "
            "name has at most 255 bytes); pick a shorter one with -p or name:"
        )
    return name


def check_service_name(name: str) -> None:
    """Compose's rule; and since linkd resolves services by name (and their containers as
    `<service>-<n>`), a DNS name: labels of at most 63 characters, 240 in all. `_` and
    `.` are allowed as Docker's DNS allows them (`matomo_db`, `peer0.org1.example.com`)."""
    if not _SERVICE_NAME.fullmatch(name):
        raise Bad(
            'expected a service name of letters, digits, "_", "." and "-" that starts with a '
            f"letter or digit (Compose's rule), got {quote(name)}"
        )
    labels = name.split(".")
    if len(name) > 240 or not all(0 < len(x) <= 63 for x in labels):
        raise Bad(
            f"service name {quote(name)} is not a DNS name: linkd resolves services by "
            "name, so each part between dots has 1 to 63 characters, and the whole at most "
            "240"
        )


def check_alias(name: str) -> None:
    """A name other containers resolve: dot-separated labels, at most 253 characters."""
    labels = name.lower().split(".")
    if len(name) > 253 or not all(_ALIAS_LABEL.fullmatch(x) and len(x) <= 63 for x in labels):
        raise Bad(
            f"expected a DNS name (labels of letters, digits, '-' and '_' separated by '.'), "
            f"got {quote(name)}"
        )


# --- interpolation ------------------------------------------------------------------------

_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPERATORS = (":-", ":?", ":+", "-", "?", "+")
_BRACES = re.compile(r"\$\$|\$\{|\}")
INTERPOLATION_DEPTH = 16  # ${A:-${B:-...}} levels; Compose files use two or three


def interpolate(
    text: str, env: Mapping[str, str], unset: Callable[[str], None], _depth: int = 0
) -> str:
    """Compose interpolation: `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`,
    `${VAR:?error}`, `${VAR?error}`, `${VAR:+alt}`, `${VAR+alt}` and `$$` for a literal `$`;
    a `$` that starts neither a name nor `{` stays as it is.

    Defaults may nest (`${A:-${B}}`), up to `INTERPOLATION_DEPTH` levels (deeper is an
    error, not a RecursionError), and are only expanded when used. `unset(name)` is
    called for a variable that is unset and has no default (Compose warns and uses "").
    """
    if _depth > INTERPOLATION_DEPTH:
        raise Bad(
            f"${{...}} nests deeper than {INTERPOLATION_DEPTH} levels in {_excerpt(text)} "
            "(linkd's limit)"
        )
    out: list[str] = []
    pos = 0
    while (dollar := text.find("$", pos)) >= 0:
        out.append(text[pos:dollar])
        after = text[dollar + 1 : dollar + 2]
        if after == "$":
            out.append("$")
            pos = dollar + 2
        elif after == "{":
            close = _closing_brace(text, dollar + 2)
            if close < 0:
                raise Bad(f'unclosed "${{" in {_excerpt(text)}; write "$$" for a literal "$"')
            out.append(_braced(text[dollar + 2 : close], text, env, unset, _depth))
            pos = close + 1
        else:
            match = _VAR.match(text, dollar + 1)
            if match is None:
                # Not a variable ("$2a$14$...", "cost: 5$"): kept as written, as Compose does.
                out.append("$")
                pos = dollar + 1
                continue
            out.append(_lookup(match[0], env, unset))
            pos = match.end()
    out.append(text[pos:])
    return "".join(out)


def _excerpt(text: str, limit: int = 200) -> str:
    """`text` quoted for a message, cut in the middle when long."""
    if len(text) <= limit:
        return quote(text)
    half = limit // 2
    return f"{quote(text[:half])}...{quote(text[-half:])} ({len(text)} characters)"


def _closing_brace(text: str, pos: int) -> int:
    depth = 1
    for match in _BRACES.finditer(text, pos):
        token = match[0]
        if token == "${":
            depth += 1
        elif token == "}":
            depth -= 1
            if depth == 0:
                return match.start()
    return -1


def _lookup(name: str, env: Mapping[str, str], unset: Callable[[str], None]) -> str:
    if name not in env:
        unset(name)
        return ""
    return env[name]


def _braced(
    expr: str, text: str, env: Mapping[str, str], unset: Callable[[str], None], depth: int
) -> str:
    match = _VAR.match(expr)
    if match is None:
        raise Bad(f'invalid "${{{_cut(expr)}}}" in {_excerpt(text)}: expected a variable name')
    name, rest = match[0], expr[match.end() :]
    if not rest:
        return _lookup(name, env, unset)
    op = next((op for op in _OPERATORS if rest.startswith(op)), None)
    if op is None:
        raise Bad(
            f'invalid "${{{_cut(expr)}}}" in {_excerpt(text)}: expected "}}", ":-", "-", '
            '":?", "?", ":+" or "+" after the variable name'
        )
    arg = rest[len(op) :]
    value = env.get(name)
    has_value = value is not None and (value != "" or not op.startswith(":"))
    if op.endswith("-"):
        if has_value and value is not None:
            return value
        return interpolate(arg, env, unset, depth + 1)
    if op.endswith("+"):
        return interpolate(arg, env, unset, depth + 1) if has_value else ""
    if not has_value or value is None:  # ":?" and "?": the variable is required
        reason = interpolate(arg, env, unset, depth + 1) or "required"
        raise Bad(f"variable {name} is {'unset' if value is None else 'empty'}: {reason}")
    return value


def _cut(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- env files ----------------------------------------------------------------------------

_ENV_KEY = re.compile(r"[^\s=]+")


def parse_env_file(
    text: str, name: str, host_env: Mapping[str, str], *, raw: bool = False,
    interpolation: bool = False,
) -> list[tuple[str, str]]:
    """`KEY=VALUE` lines (Compose's dotenv): blank lines and `#` comments are skipped, an
    `export ` prefix is allowed, a value may be quoted, an unquoted value ends at ` #`,
    and with `interpolation` (the project's `.env`; Compose does not interpolate a
    service's `env_file`) `${VAR}` in an unquoted or double-quoted value is expanded
    (from the variables earlier in the file, then `host_env`; single quotes keep it; a
    value with a `$` that starts no variable is kept as written). A bare `KEY` takes the
    host's value and is dropped when the host has none. `raw` (Compose's `format: raw`):
    each value is the text after the first `=`, as it stands.
    """
    entries: dict[str, str] = {}
    for number, line_text in enumerate(text.splitlines(), 1):
        line = line_text.strip()
        if not line or line.startswith("#"):
            continue
        if not raw:
            line = line.removeprefix("export ").lstrip()
        key, eq, value = line.partition("=") if not raw else line_text.lstrip().partition("=")
        key = key.strip()
        if not _ENV_KEY.fullmatch(key):
            raise Bad(f"env file {quote(name)} line {number}: expected KEY=VALUE, got "
                      f"{quote(line_text)}")
        if not eq:
            if key in host_env:
                entries[key] = host_env[key]
            continue
        if raw:
            entries[key] = value
            continue
        value = value.strip()
        if (literal := _quoted(value, "'")) is not None:
            entries[key] = literal
            continue
        plain = _env_value(value, interpolation)
        if not interpolation:
            entries[key] = plain
            continue
        try:
            entries[key] = interpolate(plain, {**host_env, **entries}, lambda _: None)
        except Bad:  # a "$" that starts no variable (a password's): kept as written
            entries[key] = plain.replace("$$", "$")
    return list(entries.items())


def _env_value(value: str, interpolation: bool) -> str:
    """An unquoted or double-quoted value, its quotes, escapes and comment dealt with;
    where it is interpolated next, `\\$` stays a literal `$` (as `$$`)."""
    if (inner := _quoted(value, '"')) is not None:
        escapes = r"\\([\\\"n$])" if interpolation else r"\\([\\\"n])"
        return re.sub(escapes, lambda m: {"n": "\n", "$": "$$"}.get(m[1], m[1]), inner)
    comment = re.search(r"\s#", value)
    return value[: comment.start()].rstrip() if comment else value


def _quoted(value: str, quote_mark: str) -> str | None:
    """What `quote_mark` quotes at the start of `value` (escaped quotes inside kept for
    the caller), when only blanks or a `#` comment follow the closing one; else None."""
    if not value.startswith(quote_mark):
        return None
    end = 1
    while (end := value.find(quote_mark, end)) > 0 and value[end - 1] == "\\":
        end += 1
    if end < 0:
        return None
    rest = value[end + 1 :].strip()
    return value[1:end] if not rest or rest.startswith("#") else None


_PORT_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")


def check_port_name(name: str) -> str:
    """RFC 6335 service names (1-15 characters), so a named port can become an SRV label."""
    lower = name.lower()
    if len(name) > 15 or not _PORT_NAME.fullmatch(lower) or "--" in lower or lower.isdigit():
        raise Bad(
            "expected a port name of at most 15 letters, digits and single '-', with at "
            f"least one letter (RFC 6335, usable as an SRV label), got {quote(name)}"
        )
    return name


def parse_platform(text: str) -> str:
    """Compose's `platform: os/arch[/variant]` ("linux/amd64", "linux/arm64/v8"),
    architecture names as Docker writes them."""
    parts = text.lower().split("/")
    if len(parts) not in (2, 3) or not all(re.fullmatch(r"[a-z0-9_]+", p) for p in parts):
        raise Bad(f'expected a platform like "linux/amd64" or "linux/arm64/v8", got '
                  f"{quote(text)}")
    parts[1] = machine_platform(parts[1]).architecture  # x86_64 -> amd64, as images say
    return "/".join(parts)
