"""`extends:` (compose-spec `05-services.md#extends`): a service built on another one, of
its own file (`extends: web`, `extends: {service: web}`) or of another file
(`extends: {file: common.yml, service: web}`).

The service extended is resolved first (it may extend another: a chain, at most
`MAX_DEPTH` long, a cycle being an error that names its services), then the service is
merged onto it with Compose's merge rules (linkd.spec.merge), as the current
specification says: every key is merged, `depends_on` and `volumes_from` too; what it
does not bring along is the other file's networks, volumes and other services, which
the stack must define itself. Each service is resolved once, however many extend it.

Another file is read through the project's loader (`load`): its relative paths start in
its own directory, as in Compose, and only its `services:` are used.
"""

from __future__ import annotations

from collections.abc import Callable

import yaml

from linkd.spec.documents import MAX_DEPTH, Unreadable, join
from linkd.spec.merge import Merger, Work, clean, mapping
from linkd.spec.nodes import At, Reader, given
from linkd.spec.values import quote

_THIS = ""  # the file whose services are being resolved, among the files it names
Step = tuple[str, str]  # (file, service)


class Extends:
    """Resolves the `extends:` of one document's services."""

    def __init__(self, r: Reader, load: Callable[[str], yaml.Node | None],
                 work: Work | None = None) -> None:
        self.r = r
        self.load = load  # the document of a file a service names, ready to read
        self.merger = Merger(r, work)
        self.files: dict[str, dict[str, At]] = {}  # file -> its services by name
        self.done: dict[Step, yaml.Node] = {}
        self.bases: dict[Step, yaml.Node] = {}  # resolved, cleaned: what others extend

    def resolve(self, services: At) -> yaml.Node:
        """The mapping `services` with each service's `extends:` resolved and removed."""
        if not services.is_mapping:
            return services.node
        self.files[_THIS] = dict(self.r.pairs(services) or [])
        if not any(at.is_mapping and any(k == "extends" for k, _ in self.r.pairs(at) or [])
                   for at in self.files[_THIS].values()):
            return services.node
        entries = [(name, at.line, self.service((_THIS, name), ()))
                   for name, at in self.files[_THIS].items()]
        return mapping(services.node, entries)

    def service(self, step: Step, chain: tuple[Step, ...]) -> yaml.Node:
        if step not in self.done:
            self.done[step] = self._resolve(step, chain)
        return self.done[step]

    def _resolve(self, step: Step, chain: tuple[Step, ...]) -> yaml.Node:
        at = self.files[step[0]][step[1]]
        if not at.is_mapping:
            return at.node
        pairs = self.r.pairs(at) or []
        ext = next((child for key, child in pairs if key == "extends"), None)
        if ext is None:
            return at.node
        own = mapping(at.node, [(k, c.line, c.node) for k, c in pairs if k != "extends"])
        if ext.is_null:
            return own
        target = self._target(step[0], ext)
        if target is None:
            return own
        if target in (*chain, step):
            ring = [*(chain[chain.index(target):] if target in chain else ()), step, target]
            self.r.fail(ext, "extends makes a cycle: " + " -> ".join(_name(s) for s in ring))
            return own
        if len(chain) >= MAX_DEPTH:
            self.r.fail(ext, f"extends goes more than {MAX_DEPTH} services deep (linkd's "
                             "limit)")
            return own
        if target not in self.bases:  # cleaned once, however many extend it
            self.bases[target] = clean(self.service(target, (*chain, step)))
        return self.merger.merge(At(self.bases[target], at.path, at.line),
                                 At(own, at.path, at.line), ("services", "*"))

    def _target(self, file: str, ext: At) -> Step | None:
        """The service `ext` names, its file read; None (said) when there is none."""
        if ext.is_mapping:
            fields = self.r.fields(ext, ("service", "file"))
            if fields is None:
                return None
            named = given(fields, "service")
            if named is None:
                self.r.fail(ext, 'extends needs "service:", the name of the service to extend')
                return None
            service = self.r.text(named)
            if (file_at := given(fields, "file")) is not None:
                text = self.r.text(file_at)
                if text is None or not self._read(file_at, join("", text)):
                    return None
                file = join("", text)
        elif ext.is_sequence:
            self.r.fail(ext, "expected a service's name, or {service: NAME, file: FILE}")
            return None
        else:
            service = self.r.text(ext)
        if service is None:
            return None
        services = self.files[file]
        if service not in services:
            where = "this file" if file == _THIS else file
            known = ", ".join(services) or "none"
            self.r.fail(ext, f"no service {quote(service)} to extend in {where} (its "
                             f"services: {known})")
            return None
        return file, service

    def _read(self, at: At, name: str) -> bool:
        """The services of the file `name` known; False (said) when it has none."""
        if name in self.files:
            return True
        try:
            root = self.load(name)
        except Unreadable as exc:
            self.r.fail(at, str(exc))
            return False
        services = None
        if root is not None and isinstance(root, yaml.MappingNode):
            services = given(dict(self.r.pairs(At.root(root)) or []), "services")
        if services is None or not services.is_mapping:
            self.r.fail(at, f"{name} has no services: to extend")
            return False
        self.files[name] = dict(self.r.pairs(services) or [])
        return True


def _name(step: Step) -> str:
    return step[1] if step[0] == _THIS else f"{step[1]} ({step[0]})"
