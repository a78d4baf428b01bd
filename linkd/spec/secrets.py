"""`secrets:` and `configs:`, the top level's and a service's, read into `FileMount`s.

A top-level entry says where the content comes from: `file:` (relative to the stack file's
directory), `environment:` (a variable of the environment the stack is read with, as
Compose reads it) or, for a config, `content:` (inline, interpolated). A service names
entries by key, in the short form (a secret goes to /run/secrets/KEY, a config to /KEY)
or the long one (`source`, `target`, `uid`, `gid`, `mode`). `external:` ones live in a
Swarm's store, which linkd has not: warned, and the container starts without them.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from linkd.core.model import FileMount
from linkd.spec.nodes import At, Reader, given
from linkd.spec.values import Bad, quote
from linkd.spec.volumes import check_target

MAX_CONTENT = 1 << 20  # an environment: or content: source, in characters

_TOP_KEYS = {"secrets": ("file", "environment", "external", "name", "labels", "driver",
                         "driver_opts", "template_driver"),
             "configs": ("file", "environment", "content", "external", "name", "labels",
                         "template_driver")}
_LONG_KEYS = ("source", "target", "uid", "gid", "mode")


@dataclass(frozen=True, slots=True)
class _Source:
    file: str = ""
    content: str | None = None
    external: bool = False
    unset: str = ""


class FileReader:
    """Reads the top-level `secrets:` and `configs:`, then each service's use of them."""

    def __init__(self, r: Reader, host_env: Mapping[str, str], directory: str) -> None:
        self.r = r
        self.env = host_env
        self.directory = directory or "/"
        self.declared: dict[str, dict[str, _Source]] = {"secrets": {}, "configs": {}}

    def top(self, kind: str, at: At | None) -> None:
        if at is None or at.is_null:
            return
        for key, child in self.r.pairs(at) or []:
            source = self._source(kind, key, child)
            if source is not None:
                self.declared[kind][key] = source

    def _source(self, kind: str, key: str, at: At) -> _Source | None:
        r = self.r
        f = r.fields(at, _TOP_KEYS[kind]) if not at.is_null else {}
        if f is None:
            return None
        given_keys = [k for k in ("file", "environment", "content", "external") if k in f]
        if len(given_keys) != 1:
            wanted = "file, environment or content" if kind == "configs" else \
                "file or environment"
            r.fail(at, f"{kind[:-1]} {key} needs exactly one of {wanted} (or external), got "
                       f"{', '.join(given_keys) or 'none'}")
            return None
        which = given_keys[0]
        if which == "external":
            if r.boolean(f["external"]):
                r.warn(f["external"], f"external {kind} live in a Swarm's store, which linkd "
                                      "has not: services start without it; give file: or "
                                      "environment: instead")
                return _Source(external=True)
            r.fail(at, f"{kind[:-1]} {key}: external: false needs file or environment")
            return None
        text = r.raw(f[which]) if which == "content" else r.text(f[which])
        if text is None:
            return None
        if which == "file":
            return _Source(file=posixpath.normpath(posixpath.join(self.directory, text)))
        if which == "environment":
            if text not in self.env:
                # As Compose: said here, refused by `up` (`config` shows the file).
                r.warn(f[which], f"variable {text} is not set: {kind[:-1]} {key} takes its "
                                 "content from it, and up refuses to start without it; set it "
                                 "(or put it in .env)")
                return _Source(unset=text)
            text = self.env[text]
        if len(text) > MAX_CONTENT:
            r.fail(f[which], f"{kind[:-1]} {key} is {len(text)} characters; linkd takes at "
                             f"most {MAX_CONTENT} (use file:)")
            return None
        return _Source(content=text)

    def mounts(self, kind: str, at: At | None) -> tuple[FileMount, ...]:
        """A service's `secrets:` or `configs:`."""
        if at is None or at.is_null:
            return ()
        found: list[FileMount] = []
        for item in self.r.items(at) or []:
            mount = self._long(kind, item) if item.is_mapping else self._short(kind, item)
            if mount is not None:
                found.append(mount)
        return tuple(found)

    def _short(self, kind: str, at: At) -> FileMount | None:
        key = self.r.text(at)
        return None if key is None else self._mount(kind, at, key, None, {})

    def _long(self, kind: str, at: At) -> FileMount | None:
        f = self.r.fields(at, _LONG_KEYS)
        if f is None:
            return None
        if not given(f, "source"):
            self.r.fail(at, f'a {kind[:-1]} in the long syntax needs "source", the key of the '
                            f"top-level {kind}:")
            return None
        key = self.r.text(f["source"])
        target = self.r.text(f["target"]) if given(f, "target") else None
        return None if key is None else self._mount(kind, at, key, target, f)

    def _mount(self, kind: str, at: At, key: str, target: str | None,
               f: dict[str, At]) -> FileMount | None:
        source = self.declared[kind].get(key)
        if source is None:
            names = ", ".join(sorted(self.declared[kind])) or "none"
            self.r.fail(at, f"{kind[:-1]} {quote(key)} is not declared in the top-level "
                            f"{kind}: (declared: {names})")
            return None
        if source.external:
            return None  # warned where it is declared
        if target is None:
            target = f"/run/secrets/{key}" if kind == "secrets" else f"/{key}"
        elif not target.startswith("/"):
            target = f"/run/secrets/{target}" if kind == "secrets" else f"/{target}"
        try:
            target = check_target(target)
        except Bad as exc:
            self.r.fail(at, str(exc))
            return None
        mount = FileMount(target, source.file, source.content, secret=kind == "secrets",
                          unset=source.unset)
        if at_uid := given(f, "uid"):
            mount = replace(mount, uid=self.r.integer(at_uid, 0))
        if at_gid := given(f, "gid"):
            mount = replace(mount, gid=self.r.integer(at_gid, 0))
        if at_mode := given(f, "mode"):
            text = (self.r.raw(at_mode) or "").removeprefix("0o")
            if at_mode.node.tag.endswith(":int") and not text.startswith("0"):
                # YAML wrote a decimal number (Compose's `mode: 0440` is octal, 288 works too)
                mount = replace(mount, mode=int(text) & 0o7777)
            elif re.fullmatch(r"[0-7]{1,4}", text):
                mount = replace(mount, mode=int(text, 8))
            else:
                self.r.fail(at_mode, f"expected a file mode (0440, or 288), got {quote(text)}")
        return mount
