"""Layer tars, judged without I/O: what one member means, and what one load may unpack.

`classify_entry` checks one member of a layer tar against the OCI layer rules and says
how to unpack it (a `LayerEntry`); `linkd.runtime.images.layers` reads the tar and does
what it says, beneath the layer's directory. The documents that name the layers (index,
manifest, config, `docker save`'s manifest.json) are `linkd.core.image_format`'s.

Layer entries follow the OCI layer rules: `.wh.NAME` deletes NAME from the layers below,
`.wh..wh..opq` hides everything below in its directory; other `.wh..wh.*` names are AUFS
bookkeeping and are skipped, with everything beneath them. A character device 0/0 is how
overlayfs itself writes a whiteout, so it is accepted as one. A whiteout must name
something: `.wh.` alone, `.wh..` and `.wh...` (which would delete the directory itself or
its parent) are refused, and so is a `.wh.` name used as a directory.

`Limits` bound what one load may unpack (issue 14: a 260 KiB gzip layer expanded to
256 MiB, a 20 KiB sparse member declared 256 MiB). Each has a default and an environment
variable that raises it (`limits_from_env`, given the environment by the runtime); the
error of a load over a limit names the limit, the value and the variable.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields

from linkd.errors import ImageError, LinkdError

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"


# -- limits ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """What one image load may unpack; `LIMIT_ENV` names the variable that sets each."""

    size: int = 16 << 30  # uncompressed bytes of the image: its layer tars, and the
    #                       bytes their files declare (a sparse file counts in full)
    entries: int = 1_000_000  # tar members over all layers
    path: int = 4096  # bytes of an entry's path or link target (PATH_MAX)
    sparse: int = 64 << 20  # declared bytes of sparse members over all layers
    ratio: int = 100  # how many times its blob a layer may expand, past RATIO_FLOOR


LIMIT_ENV = {
    "size": "LINKD_IMAGE_MAX_SIZE",
    "entries": "LINKD_IMAGE_MAX_ENTRIES",
    "path": "LINKD_IMAGE_MAX_PATH",
    "sparse": "LINKD_IMAGE_MAX_SPARSE",
    "ratio": "LINKD_IMAGE_MAX_RATIO",
}
DEFAULT_LIMITS = Limits()
RATIO_FLOOR = 64 << 20  # a layer may always expand to this much, whatever its ratio
NAME_MAX = 255  # bytes of one path component: the kernel's own limit
HEADER_MAX = 1 << 20  # bytes of one extended tar header (PAX records, GNU long names)
SPARSE_REGIONS_MAX = 1 << 16  # regions in the map of one sparse member

_AMOUNT = re.compile(r"^(\d+)\s*([kmgt]?)(?:i?b)?$", re.IGNORECASE)
_UNITS = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40}
_BYTE_LIMITS = ("size", "sparse")


def limits_from_env(env: Mapping[str, str]) -> Limits:
    """The limits, with each default replaced by its variable in `env` when set: a whole
    number, for sizes optionally with K, M, G or T (powers of 1024)."""
    values: dict[str, int] = {}
    for f in fields(Limits):
        var = LIMIT_ENV[f.name]
        text = env.get(var, "").strip()
        if not text:
            continue
        match = _AMOUNT.match(text)
        if not match or (match.group(2) and f.name not in _BYTE_LIMITS) or not int(
                match.group(1)):
            unit = ", optionally with K, M, G or T" if f.name in _BYTE_LIMITS else ""
            raise LinkdError(f"${var}={text!r}: expected a positive whole number{unit}")
        values[f.name] = int(match.group(1)) << _UNITS[match.group(2).lower()]
    return Limits(**values)


def show_amount(name: str, value: int) -> str:
    """A limit's value as its variable would take it back (`16G`, `1000000`)."""
    if name in _BYTE_LIMITS:
        for unit, shift in (("T", 40), ("G", 30), ("M", 20), ("K", 10)):
            if value >= 1 << shift and value % (1 << shift) == 0:
                return f"{value >> shift}{unit}"
    return str(value)


def over_limit(image: str, entry: str, name: str, what: str, value: int,
               limits: Limits) -> ImageError:
    """The error of a load that went over limit `name` (a field of `Limits`): "`what`
    `value` (in the limit's unit), over the limit of ...", and which variable raises it."""
    var = LIMIT_ENV[name]
    limit = getattr(limits, name)
    unit = {"entries": " entries", "ratio": " times its blob"}.get(name, " bytes")
    default = show_amount(name, getattr(DEFAULT_LIMITS, name))
    return ImageError(
        image, entry, f"{name} limit",
        f"{what} {value:,}{unit}, over the limit of {limit:,}{unit} "
        f"({var}={show_amount(name, limit)}, default {default}); to load this image, "
        f"set {var} higher in the environment of linkd (the daemon or `linkd image load`)",
    )


# -- layer entries ----------------------------------------------------------------


def _climbs_out(base_dir: str, target: str) -> bool:
    depth = len([p for p in base_dir.split("/") if p])
    for part in target.split("/"):
        if part in ("", "."):
            continue
        depth += -1 if part == ".." else 1
        if depth < 0:
            return True
    return False


@dataclass(frozen=True)
class LayerEntry:
    """What to do with one member of a layer tar.

    kind: "dir", "file", "symlink", "hardlink", "fifo", "whiteout" (make `path` a
    whiteout), "opaque" (mark directory `path` opaque), or "skip".
    """

    kind: str
    path: str
    target: str = ""


def _check_length(image: str, entry: str, what: str, text: str, limits: Limits) -> None:
    if "\0" in text:
        raise ImageError(image, entry, "NUL in path", f"the {what} holds a NUL byte")
    size = len(text.encode("utf-8", "surrogateescape"))
    if size > limits.path:
        raise over_limit(image, entry, "path", f"the {what} is", size, limits)
    for part in text.split("/"):
        if len(part.encode("utf-8", "surrogateescape")) > NAME_MAX:
            raise ImageError(image, entry, "name length",
                             f"a name in the {what} is longer than {NAME_MAX} bytes "
                             "(the kernel's NAME_MAX)")


def classify_entry(
    image: str, layer: str, name: str, kind: str, linkname: str = "",
    devmajor: int = 0, devminor: int = 0, limits: Limits = DEFAULT_LIMITS,
) -> LayerEntry:
    """Check one layer member against the rules and say how to unpack it.

    `kind` is the tar member type: "dir", "file", "symlink", "hardlink", "chr", "blk",
    "fifo" or anything else (refused). A symlink's absolute target is read inside the
    container's root, so it cannot escape; a relative one must not climb above the root.
    A hard link must name a path inside the layer. Paths and link targets are bounded by
    `limits.path` and NAME_MAX.
    """
    entry = f"layer {layer}: {name}"
    _check_length(image, entry, "path", name, limits)
    _check_length(image, entry, "link target", linkname, limits)
    if name.startswith("/"):
        raise ImageError(image, entry, "absolute path", "layer entries must be relative")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ImageError(image, entry, "'..' in path", "layer entries may not climb out")
    if not parts:
        return LayerEntry("skip", "")
    path = "/".join(parts)
    for part in parts[:-1]:
        if part.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            return LayerEntry("skip", path)  # inside AUFS bookkeeping (.wh..wh.plnk/...)
        if part.startswith(WHITEOUT_PREFIX):
            raise ImageError(image, entry, "whiteout name",
                             f"{part!r} is a whiteout, not a directory to put entries in")
    parent, base = posixpath.split(path)
    if base.startswith(WHITEOUT_PREFIX):
        if base == OPAQUE_MARKER:
            return LayerEntry("opaque", parent)
        if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            return LayerEntry("skip", path)  # AUFS hard-link bookkeeping (.wh..wh.plnk)
        hidden = base[len(WHITEOUT_PREFIX):]
        if hidden in ("", ".", ".."):
            # `.wh.` would delete its own directory (the layer's root at the top),
            # `.wh..` likewise, `.wh...` the directory above it.
            raise ImageError(image, entry, "whiteout name",
                             f"{base!r} names no entry to delete" if not hidden
                             else f"{base!r} would delete {hidden!r}, not an entry")
        return LayerEntry("whiteout", posixpath.join(parent, hidden))
    if kind in ("dir", "file", "fifo"):
        return LayerEntry(kind, path)
    if kind == "symlink":
        if not linkname:
            raise ImageError(image, entry, "symlink", "empty symlink target")
        if not linkname.startswith("/") and _climbs_out(parent, linkname):
            raise ImageError(
                image, entry, "symlink escapes the root", f"target {linkname!r} climbs above /"
            )
        return LayerEntry("symlink", path, linkname)
    if kind == "hardlink":
        if linkname.startswith("/"):
            raise ImageError(
                image, entry, "hard link escapes the root", f"target {linkname!r} is absolute"
            )
        target = [p for p in linkname.split("/") if p not in ("", ".")]
        if not target or ".." in target:
            raise ImageError(
                image, entry, "hard link escapes the root", f"target {linkname!r} is outside"
            )
        return LayerEntry("hardlink", path, "/".join(target))
    if kind == "chr" and devmajor == 0 and devminor == 0:
        return LayerEntry("whiteout", path)  # overlayfs's own whiteout format
    if kind in ("chr", "blk"):
        raise ImageError(
            image, entry, "device node",
            f"{kind} device {devmajor}:{devminor}; images may not carry device nodes",
        )
    raise ImageError(image, entry, "entry type", f"unsupported tar entry type {kind!r}")
