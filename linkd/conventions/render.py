"""Rendering conventions: (consumer, linked peers) -> environment variables and hosts lines.

A convention (`linkd.conventions.schema` documents the file format and parses it) is data;
this module is the one pure function that applies it: `render(convention, linker, links)`.
Each `LinkTarget` is one link as the consumer sees it: the alias, the peer's service and
container, its addresses, ports and environment, and the consumer's per-link choices (the
`_ENV_` allow-list, twelve-factor URL templates). For each link, in order, every block of
the convention is rendered in order, once per item it repeats over (`each:`); the result
keeps that order and remembers which convention and link produced each variable, so
`linkd env` can explain it.

Rules that are linkd's own, not the conventions':

- Ports are expanded (a range gives every number; its name goes to its first number, as
  linkd's DNS names SRV records) and deduplicated by (protocol, number), as Docker keys
  exposed ports by them; then ordered by the convention's `ports.order`.
- A peer's HOME and PATH never propagate, even when the allow-list names them (Docker
  drops them too: moby daemon/links/links.go `ToEnv`).
- Two links that produce the same variable with different values are an error naming both
  (Docker let the later one win silently, so `--link a-b --link a_b` lost a peer).
- Explicit `environment` always wins: `apply(rendered, explicit)`.

Built-in conventions live in `conventions/` at the source tree's root and ship inside the
package as `linkd/builtin_conventions/`; the shell reads them and the stack's own
convention files (`linkd.runtime.stack.conventions`) and hands them to the planner.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from linkd.conventions.schema import Convention, Field, Template, parse_template
from linkd.core.model import PortSpec, Protocol, Stack
from linkd.errors import ConventionError

__all__ = [
    "DEFAULT",
    "NEVER_PROPAGATED",
    "Convention",
    "LinkTarget",
    "Rendered",
    "Variable",
    "apply",
    "combine",
    "references",
    "render",
]

DEFAULT = "linkd"
NEVER_PROPAGATED = frozenset({"HOME", "PATH"})

Problem = tuple[str, int | None, str]


@dataclass(frozen=True, slots=True)
class LinkTarget:
    """One link from the consumer's side: the peer it reaches and how the consumer wants it.

    `env` is the peer's environment in order; `env_allow` lists the names (or fnmatch
    patterns such as `POSTGRES_*`) that `each: env` blocks may propagate. `templates` are
    the variables this link declares for `each: template` blocks (the `urls` convention):
    `(name, value template)`, the value rendered with the link and first-port fields.
    """

    alias: str
    service: str
    peer: str  # the peer container's name, e.g. db-1
    addr: IPv4Address
    addr6: IPv6Address | None = None
    hostname: str | None = None  # None: the container's name, as linkd's plan sets it
    ports: tuple[PortSpec, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    env_allow: tuple[str, ...] = ()
    templates: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Variable:
    name: str
    value: str
    convention: str  # which convention produced it
    alias: str  # and for which link


@dataclass(frozen=True, slots=True)
class Rendered:
    variables: tuple[Variable, ...] = ()
    hosts: tuple[str, ...] = ()  # "ADDRESS\tNAME NAME ..." lines

    @property
    def env(self) -> dict[str, str]:
        return {v.name: v.value for v in self.variables}


@dataclass(frozen=True, slots=True)
class _Port:
    number: int
    protocol: Protocol
    name: str | None


class _Skip(Exception):
    """A template used {addr6} and the peer has none: leave that variable or line out."""


class _Missing(Exception):
    """A template needs something the link does not have; the message says what."""


# --- what a stack names ------------------------------------------------------------------


def references(stack: Stack) -> tuple[str, ...]:
    """Every convention the stack names, at any level, in order of first mention."""
    refs: list[str] = [*stack.conventions]
    for service in stack.services:
        refs += service.conventions or ()
        for settings in service.link_settings:
            refs += settings.conventions or ()
            if settings.urls:
                refs.append("urls")
    return tuple(dict.fromkeys(refs))


# --- rendering ------------------------------------------------------------------------------


def render(convention: Convention, linker: str, links: Sequence[LinkTarget]) -> Rendered:
    """The variables and hosts lines `convention` gives the container `linker` for `links`.

    Raises `ConventionError` listing every link that cannot be rendered (a peer variable a
    template needs, a port it needs, clashing variables).
    """
    problems: list[Problem] = []
    variables: dict[str, Variable] = {}
    hosts: list[str] = []
    for link in links:
        where = f"links.{link.alias}"
        for index, block in enumerate(convention.variables):
            for scope in _scopes(block.each, convention, linker, link, problems):
                for name_t, value_t in block.set:
                    key = f"{where} (variables[{index}] {name_t.text!r})"
                    made = _pair(name_t, value_t, scope, link, key, problems)
                    if made is not None:
                        variable = Variable(*made, convention.name, link.alias)
                        _add(variables, variable, problems)
        base = _link_fields(linker, link, convention)
        for template in convention.hosts:
            line = _attempt(template, base, link, f"{where} (hosts)", problems)
            if line is not None:
                hosts.append(_hosts_line(line, f"{where} (hosts)", problems))
    if problems:
        raise ConventionError(problems, convention.source)
    return Rendered(tuple(variables.values()), tuple(hosts))


def combine(*parts: Rendered) -> Rendered:
    """Several renderings as one (conventions chosen per link); a clash is an error."""
    problems: list[Problem] = []
    variables: dict[str, Variable] = {}
    for part in parts:
        for variable in part.variables:
            _add(variables, variable, problems)
    if problems:
        raise ConventionError(problems)
    return Rendered(tuple(variables.values()), tuple(h for p in parts for h in p.hosts))


def apply(rendered: Rendered, explicit: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """The container's environment: `explicit` (in its order) wins over the conventions'
    variables, which follow it in theirs."""
    mine = dict(explicit)
    return tuple(mine.items()) + tuple(
        (v.name, v.value) for v in rendered.variables if v.name not in mine
    )


# --- scopes: the fields a template sees ---------------------------------------------------------

Scope = dict[str, str | None]  # None: an optional field with no value (addr6)


def _link_fields(linker: str, link: LinkTarget, convention: Convention) -> Scope:
    fields: Scope = {
        "alias": link.alias,
        "service": link.service,
        "peer": link.peer,
        "hostname": link.hostname or link.peer,
        "linker": linker,
        "addr": str(link.addr),
        "addr6": str(link.addr6) if link.addr6 is not None else None,
    }
    return _derive(fields, convention)


def _derive(fields: Scope, convention: Convention) -> Scope:
    """Add the convention's derived fields whose source this scope has."""
    for rule in convention.names:
        source = fields.get(rule.source)
        if source is not None:
            fields[rule.field] = rule.apply(source)
    return fields


def _scopes(
    each: str, convention: Convention, linker: str, link: LinkTarget, problems: list[Problem]
) -> Iterator[Scope]:
    base = _link_fields(linker, link, convention)
    ports = _ordered_ports(link.ports, convention.port_order)
    if each == "link":
        yield base
    elif each == "first_port":
        yield from (_port_scope(base, p, convention) for p in ports[:1])
    elif each in ("port", "named_port"):
        for port in ports:
            if each == "port" or port.name is not None:
                yield _port_scope(base, port, convention, named=each == "named_port")
    elif each == "range":
        for first, last in _runs(ports):
            fields = base | {"start": str(first.number), "end": str(last.number)}
            fields |= {"proto": first.protocol, "PROTO": first.protocol.upper()}
            yield _derive(fields, convention)
    elif each == "env":
        for var, value in link.env:
            if var not in NEVER_PROPAGATED and _allowed(var, link.env_allow):
                yield _derive(base | {"var": var, "value": value}, convention)
    elif each == "template":
        yield from _template_scopes(base, ports, convention, link, problems)


def _port_scope(base: Scope, port: _Port, convention: Convention, named: bool = False) -> Scope:
    fields = base | {"port": str(port.number), "proto": port.protocol}
    fields["PROTO"] = port.protocol.upper()
    if named:
        fields["port_name"] = port.name
    return _derive(fields, convention)


def _template_scopes(
    base: Scope,
    ports: Sequence[_Port],
    convention: Convention,
    link: LinkTarget,
    problems: list[Problem],
) -> Iterator[Scope]:
    """One scope per variable the link declares, its value already rendered."""
    where = base if not ports else _port_scope(base, ports[0], convention)
    for name, text in link.templates:
        key = f"links.{link.alias}.templates.{name}"
        try:
            template = parse_template(text)
        except ValueError as exc:
            problems.append((key, None, str(exc)))
            continue
        value = _attempt(template, where, link, key, problems)
        if value is not None:
            yield base | {"name": name, "value": value}


def _ordered_ports(specs: Iterable[PortSpec], order: str) -> tuple[_Port, ...]:
    """Every port number once, in the convention's order.

    `tcp-first` is Docker's `withTCPPriority` (moby daemon/links/links.go):
    all TCP ports by number, then other protocols by protocol name, then number. So a
    lower UDP port never becomes the "first" port. `declared` keeps the stack file's
    order, which is Kubernetes' rule: its first port is `Ports[0]` (pkg/kubelet/envvars/envvars.go).
    """
    seen: dict[tuple[str, int], _Port] = {}
    for spec in specs:
        for number in spec.numbers():
            name = spec.name if number == spec.start else None
            known = seen.get((spec.protocol, number))
            # A port exposed, then published with a name, keeps its place and takes the name.
            if known is None or (known.name is None and name is not None):
                seen[(spec.protocol, number)] = _Port(number, spec.protocol, name)
    ports = tuple(seen.values())
    if order == "tcp-first":
        return tuple(sorted(ports, key=lambda p: (p.protocol != "tcp", p.protocol, p.number)))
    return ports


def _runs(ports: Sequence[_Port]) -> Iterator[tuple[_Port, _Port]]:
    """(first, last) of each run of 2+ consecutive numbers of one protocol, in port order:
    Docker's range detection in `ToEnv` (moby daemon/links/links.go), on the sorted ports."""
    start = 0
    for i in range(1, len(ports) + 1):
        previous = ports[i - 1]
        if i < len(ports) and (ports[i].protocol, ports[i].number) == (
            previous.protocol,
            previous.number + 1,
        ):
            continue
        if i - 1 > start:
            yield ports[start], previous
        start = i


def _allowed(var: str, allow: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(var, pattern) for pattern in allow)


# --- filling templates ----------------------------------------------------------------------


def _pair(
    name_t: Template,
    value_t: Template,
    scope: Scope,
    link: LinkTarget,
    key: str,
    problems: list[Problem],
) -> tuple[str, str] | None:
    name = _attempt(name_t, scope, link, key, problems)
    value = _attempt(value_t, scope, link, key, problems) if name is not None else None
    if name is None or value is None:
        return None
    if not name or "=" in name or "\0" in name or "\0" in value:
        problems.append((key, None, f"gives an unusable variable {name!r} (empty, '=' or NUL)"))
        return None
    return name, value


def _attempt(
    template: Template, scope: Scope, link: LinkTarget, key: str, problems: list[Problem]
) -> str | None:
    """The filled template; None when it is skipped (no IPv6) or wrong (a problem added)."""
    try:
        return "".join(_part(part, scope, link) for part in template.parts)
    except _Skip:
        return None
    except _Missing as exc:
        problems.append((key, None, str(exc)))
        return None


def _part(part: str | Field, scope: Scope, link: LinkTarget) -> str:
    if isinstance(part, str):
        return part
    if part.name == "env" and part.key is not None:
        return _peer_variable(part.key, link)
    if part.name == "ports" and part.key is not None:
        return _named_port(part.key, link)
    if part.name not in scope:
        # Convention files are checked on load; only a link's own templates get here.
        if part.name in ("port", "proto", "PROTO"):
            raise _Missing(
                f"{{{part.name}}} needs a port, but {link.service} exposes none; "
                f"expose one or drop {{{part.name}}}"
            )
        raise _Missing(f"unknown template field {{{part.name}}}; fields: {', '.join(scope)}")
    value = scope[part.name]
    if value is None:
        raise _Skip
    return value


def _peer_variable(name: str, link: LinkTarget) -> str:
    for var, value in link.env:
        if var == name:
            return value
    raise _Missing(
        f"{{env[{name}]}} needs variable {name} from {link.service}'s environment, which "
        f"{link.service} does not set; set it there or change the template"
    )


def _named_port(name: str, link: LinkTarget) -> str:
    for spec in link.ports:
        if spec.name == name:
            return str(spec.start)
    names = sorted({s.name for s in link.ports if s.name is not None})
    have = f"its named ports: {', '.join(names)}" if names else "it names no ports"
    raise _Missing(f"{{ports[{name}]}}: {link.service} has no port named {name} ({have})")


def _hosts_line(line: str, key: str, problems: list[Problem]) -> str:
    """`ADDRESS<TAB>NAME NAME ...`, each name once (Docker lists the container's name only
    when it differs from the alias: moby `buildSandboxOptions`)."""
    words = line.split()
    if len(words) < 2:
        problems.append((key, None, f"hosts line {line!r} needs an address and a name"))
        return line
    return f"{words[0]}\t{' '.join(dict.fromkeys(words[1:]))}"


def _add(variables: dict[str, Variable], variable: Variable, problems: list[Problem]) -> None:
    known = variables.get(variable.name)
    if known is None:
        variables[variable.name] = variable
    elif known.value != variable.value:
        problems.append(
            (
                variable.name,
                None,
                f"set twice: {known.convention} for link {known.alias} gives "
                f"{known.value!r}, {variable.convention} for link {variable.alias} gives "
                f"{variable.value!r}; rename an alias or pick one convention for these links",
            )
        )
