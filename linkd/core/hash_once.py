"""Hashed once: for frozen dataclasses that are hashed again and again.

A node's overlay caches and sets (linkd.core.overlay_peers, linkd.core.overlay) key on
every endpoint record and forwarding entry on every change of any record; a dataclass's
own `__hash__` hashes its fields anew each time, and an ipaddress address hashes in
Python, which made hashing most of a pass over a few hundred records.

A frozen dataclass that derives from HashOnce says `__hash__ = HashOnce.__hash__` in its
body (the dataclass decorator replaces an inherited one); `dataclasses.replace` makes a
new object, hashed anew.
"""

from __future__ import annotations

from dataclasses import fields


class HashOnce:
    __slots__ = ("_hash_once",)
    _hash_once: int

    def __hash__(self) -> int:
        try:
            return self._hash_once
        except AttributeError:
            value = hash(tuple(getattr(self, f.name) for f in fields(self)  # type: ignore[arg-type]
                               if f.compare))
            object.__setattr__(self, "_hash_once", value)
            return value
