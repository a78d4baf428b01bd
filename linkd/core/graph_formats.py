"""A stack's topology (linkd.core.topology) drawn for docs and bug reports: Graphviz DOT,
Mermaid, or a self-contained SVG (no fonts, scripts or links outside it).

The same picture in each: every network a box (its subnet; joined and overlay ones
said), every container a rounded node coloured by its health, joined to each network it
is on by a line labelled with its address; links as arrows from the linking container
to each container of the linked service, labelled with the alias and the conventions
that gave variables for it; each published host port a node at the edge, with an arrow
to its container. Names come from stack files, so everything written is quoted or
escaped for the format: a name cannot break out of its label.
"""

from __future__ import annotations

import html
import re

from linkd.core.topology import Condition, Container, Topology

FORMATS = ("svg", "dot", "mermaid")
# control characters and line breaks: one line per statement in DOT and Mermaid
_BREAKS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")

# fill colour by condition (accessible on white and in greyscale by lightness)
COLOURS: dict[Condition, str] = {
    "healthy": "#b7e4c7",
    "running": "#cfe2ff",
    "starting": "#ffe8a3",
    "restarting": "#ffd8a8",
    "unhealthy": "#f4a6a6",
    "stopped": "#dee2e6",
}


def render(topo: Topology, fmt: str) -> str:
    if fmt == "dot":
        return to_dot(topo)
    if fmt == "mermaid":
        return to_mermaid(topo)
    if fmt == "svg":
        return to_svg(topo)
    raise ValueError(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")


def _label(c: Container) -> list[str]:
    exited = f" (exit {c.exit_code})" if c.exit_code is not None else ""
    restarts = f", {c.restarts} restart{'s' if c.restarts != 1 else ''}" if c.restarts else ""
    return [c.name, f"{c.condition}{exited}{restarts}"]


def _network_label(topo: Topology, key: str) -> list[str]:
    net = next(n for n in topo.networks if n.key == key)
    said = [net.subnet]
    if net.joined:
        said.append(f"joins {net.joined}")
    if net.overlay:
        said.append("overlay")
    if net.internal:
        said.append("internal")
    return [key, ", ".join(said)]


def _link_label(alias: str, conventions: tuple[str, ...]) -> str:
    return f"{alias} ({', '.join(conventions)})" if conventions else alias


# -- DOT ------------------------------------------------------------------------------


def _dot(text: str) -> str:
    one_line = _BREAKS.sub(" ", text)
    return '"' + one_line.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(topo: Topology) -> str:
    lines = [f"digraph {_dot(topo.stack)} {{", "  rankdir=LR;",
             '  node [fontname="sans-serif", fontsize=10];',
             '  edge [fontname="sans-serif", fontsize=9];']
    for net in topo.networks:
        label = "\\n".join(_dot(part)[1:-1] for part in _network_label(topo, net.key))
        lines.append(f'  {_dot("net:" + net.key)} [shape=box, style=dashed, label="{label}"];')
    for c in topo.containers:
        label = "\\n".join(_dot(part)[1:-1] for part in _label(c))
        lines.append(f'  {_dot(c.name)} [shape=box, style="rounded,filled", '
                     f'fillcolor="{COLOURS[c.condition]}", label="{label}"];')
        for key, address in c.addresses:
            lines.append(f'  {_dot(c.name)} -> {_dot("net:" + key)} '
                         f'[dir=none, style=dotted, label={_dot(address)}];')
    for link in topo.links:
        lines.append(f"  {_dot(link.source)} -> {_dot(link.target)} "
                     f"[label={_dot(_link_label(link.alias, link.conventions))}];")
    for port in topo.ports:
        node = _dot(f"port:{port.host}/{port.target}")
        lines.append(f"  {node} [shape=cds, label={_dot(port.host + ' → ' + port.target)}];")
        lines.append(f"  {node} -> {_dot(port.container)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


# -- Mermaid --------------------------------------------------------------------------


def _mermaid(text: str) -> str:
    """Text inside a quoted Mermaid label: its entity codes for what would end it."""
    return "".join(f"#{ord(ch)};" if ch in '"#<>[](){}|`' else ch
                   for ch in _BREAKS.sub(" ", text))


def to_mermaid(topo: Topology) -> str:
    ids: dict[str, str] = {}

    def ident(kind: str, name: str) -> str:
        key = f"{kind}:{name}"
        if key not in ids:
            ids[key] = f"{kind}{len(ids)}_{re.sub(r'[^A-Za-z0-9]', '_', name)[:40]}"
        return ids[key]

    lines = ["flowchart LR"]
    for net in topo.networks:
        label = "<br/>".join(_mermaid(p) for p in _network_label(topo, net.key))
        lines.append(f'  {ident("n", net.key)}[["{label}"]]')
    for c in topo.containers:
        label = "<br/>".join(_mermaid(p) for p in _label(c))
        lines.append(f'  {ident("c", c.name)}("{label}")')
        lines.append(f"  class {ident('c', c.name)} {c.condition}")
        for key, address in c.addresses:
            lines.append(f'  {ident("c", c.name)} -.-|"{_mermaid(address)}"| {ident("n", key)}')
    for link in topo.links:
        label = _mermaid(_link_label(link.alias, link.conventions))
        lines.append(f'  {ident("c", link.source)} -->|"{label}"| {ident("c", link.target)}')
    for port in topo.ports:
        node = ident("p", f"{port.host}/{port.target}")
        lines.append(f'  {node}[/"{_mermaid(port.host + " → " + port.target)}"/]')
        lines.append(f"  {node} --> {ident('c', port.container)}")
    for name, colour in COLOURS.items():
        lines.append(f"  classDef {name} fill:{colour},stroke:#495057")
    return "\n".join(lines) + "\n"


# -- SVG ------------------------------------------------------------------------------

ROW, BOX_W, BOX_H = 56, 190, 40
PORT_X, CONTAINER_X, NETWORK_X = 10, 230, 560


# what XML 1.0 does not allow in a document, escaped or not
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _text(x: float, y: float, text: str, *, size: int = 11, anchor: str = "start",
          weight: str = "normal") -> str:
    safe = html.escape(_NOT_XML.sub("\ufffd", text))
    return (f'<text x="{x:.0f}" y="{y:.0f}" font-size="{size}" text-anchor="{anchor}" '
            f'font-weight="{weight}">{safe}</text>')


def to_svg(topo: Topology) -> str:
    """Ports on the left, containers in the middle, networks on the right, link arrows
    curving left of the containers: a layout that needs no solver and reads the same
    for any stack."""
    top = 50
    crow = {c.name: top + i * ROW for i, c in enumerate(topo.containers)}
    nrow = {n.key: top + i * ROW for i, n in enumerate(topo.networks)}
    rows = max(len(topo.containers), len(topo.networks), len(topo.ports), 1)
    height = top + rows * ROW + 20
    width = NETWORK_X + BOX_W + 20
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif">',
           "<defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" "
           "markerWidth=\"7\" markerHeight=\"7\" orient=\"auto-start-reverse\">"
           "<path d=\"M 0 0 L 10 5 L 0 10 z\" fill=\"#343a40\"/></marker></defs>",
           '<rect width="100%" height="100%" fill="#ffffff"/>',
           _text(10, 24, f"stack {topo.stack}", size=15, weight="bold")]
    for c in topo.containers:  # lines to networks first: boxes drawn over them
        y = crow[c.name] + BOX_H / 2
        for key, address in c.addresses:
            ny = nrow[key] + BOX_H / 2
            out.append(f'<line x1="{CONTAINER_X + BOX_W}" y1="{y:.0f}" x2="{NETWORK_X}" '
                       f'y2="{ny:.0f}" stroke="#868e96" stroke-dasharray="3 3"/>')
            # Near the container, where its lines to the networks are still apart.
            out.append(_text(CONTAINER_X + BOX_W + 8 + 0.25 * (NETWORK_X - CONTAINER_X - BOX_W),
                             y + 0.25 * (ny - y) - 3, address, size=9, anchor="middle"))
    for link in topo.links:
        y1, y2 = crow[link.source] + BOX_H / 2, crow[link.target] + BOX_H / 2
        bend = CONTAINER_X - 25 - 12 * (abs(y2 - y1) / ROW)
        out.append(f'<path d="M {CONTAINER_X} {y1:.0f} C {bend:.0f} {y1:.0f}, {bend:.0f} '
                   f'{y2:.0f}, {CONTAINER_X} {y2:.0f}" fill="none" stroke="#343a40" '
                   'marker-end="url(#arrow)"/>')
        out.append(_text(bend + 4, (y1 + y2) / 2 + 4,
                         _link_label(link.alias, link.conventions), size=9))
    for c in topo.containers:  # a group per container: the page's clicks find it by name
        y = crow[c.name]
        out.append(f'<g data-container="{html.escape(_NOT_XML.sub("", c.name))}">')
        out.append(f'<rect x="{CONTAINER_X}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="8" '
                   f'fill="{COLOURS[c.condition]}" stroke="#495057"/>')
        name, said = _label(c)
        out.append(_text(CONTAINER_X + 8, y + 16, name, weight="bold"))
        out.append(_text(CONTAINER_X + 8, y + 32, f"{c.service} · {said}", size=10))
        out.append("</g>")
    for net in topo.networks:
        y = nrow[net.key]
        out.append(f'<rect x="{NETWORK_X}" y="{y}" width="{BOX_W}" height="{BOX_H}" '
                   'fill="#f8f9fa" stroke="#495057" stroke-dasharray="6 3"/>')
        key, said = _network_label(topo, net.key)
        out.append(_text(NETWORK_X + 8, y + 16, key, weight="bold"))
        out.append(_text(NETWORK_X + 8, y + 32, said, size=10))
    for i, port in enumerate(topo.ports):
        y = top + i * ROW + BOX_H / 2
        out.append(_text(PORT_X, y - 4, port.host, size=9))
        out.append(_text(PORT_X, y + 8, f"→ {port.target}", size=9))
        out.append(f'<line x1="{PORT_X + 120}" y1="{y:.0f}" x2="{CONTAINER_X}" '
                   f'y2="{crow[port.container] + BOX_H / 2:.0f}" stroke="#1971c2" '
                   'marker-end="url(#arrow)"/>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
