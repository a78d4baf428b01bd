"""Proof by property (issue 14 §2): random layer sequences never change anything outside
the store.

Hypothesis generates images of one to four layers, each a random sequence of entries over
a few names, so that paths collide and replace each other in any order: files (setuid
ones too), directories, symlinks (absolute ones into a victim tree beside the store,
relative ones, some climbing), hard links (to anything, through anything), whiteouts
(valid and not), opaque markers, whiteout devices and FIFOs; in a third of the images,
attack shapes with random parts too (`swap`: a directory replaced by a symlink, then used
through). Entries often take an earlier entry's path, so replacements are the rule. A
refused entry ends its load, after the entries before it were unpacked. Each image is
loaded into a fresh store (plain or gzip layers, sometimes with a wrong diff_id), its
user lookup is run, it is removed again; after each, the victim tree must be exactly as
before (paths, contents, modes, owners, inodes, link counts, mtimes and ctimes, xattrs)
and nothing new beside it. Loads may succeed or be refused (with an ImageError, nothing
else), and a refused load leaves an empty store.

Absolute symlink targets point only into the victim tree, never at the host's own paths,
so a regression cannot harm the machine it runs on.

Fast profile in the suite: LINKD_LAYER_EXAMPLES images (default 100, a few seconds). The
long run (about 2.5 layers an image; it prints the count of generated layers, what was
refused and the time):

    LINKD_LAYER_EXAMPLES=4500 .venv/bin/python -m pytest -s -q \
        tests/runtime/test_layer_property.py

Against the unpacker before issue 14 it finds an escape within a few hundred images
(a file `p/a`, `p` replaced by a symlink into the victim, a hard link to `p/a`).
"""

from __future__ import annotations

import gzip
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from linkd.errors import ContainerError, ImageError
from linkd.runtime.containers.rootfs import resolve_user
from linkd.runtime.images import beneath
from linkd.runtime.images.image_store import ImageStore
from tests.images import (
    Entry,
    layer_tar,
    make_victim,
    oci_files_of_blobs,
    sha256,
    snapshot_tree,
    write_dir,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="layers need root: owners, "
                                "whiteout devices, trusted.* xattrs")

EXAMPLES = int(os.environ.get("LINKD_LAYER_EXAMPLES") or 100)
VICTIM = "{victim}"  # replaced by the victim tree's path in each example

# The names of the victim tree too (tests.images.make_victim: files `a` and `passwd`,
# directories `b` and `etc`, at every level): a path that escaped through a symlink or a
# hard link lands on something there.
NAMES = ["a", "b", "etc", "passwd"]
path = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map("/".join)
parent = st.one_of(st.just(""), path)
victim_dir = st.sampled_from([VICTIM, f"{VICTIM}/b", f"{VICTIM}/etc", f"{VICTIM}/b/b",
                              f"{VICTIM}/etc/etc", f"{VICTIM}/link"])
T = TypeVar("T")


def _weighted(*choices: tuple[int, st.SearchStrategy[T]]) -> st.SearchStrategy[T]:
    table = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.integers(0, len(table) - 1).flatmap(lambda k: table[k])


# Mostly into the victim (the targets that matter if anything followed them); escaping
# relative targets and hard links and bad whiteout names end a load at once, so they are
# rare and most loads go on to replace, link and delete at length.
symlink_target = _weighted(
    (8, victim_dir),
    (2, st.builds(lambda d, p: f"{d}/{p}", victim_dir, path)),
    (2, st.sampled_from([f"{VICTIM}/a", f"{VICTIM}/etc/passwd", f"{VICTIM}/b/a", "."])),
    (3, path),
    (1, st.builds(lambda p: "../" + p, path)),
    (1, st.builds(lambda up, p: "../" * up + p, st.integers(2, 5), path)),
)
hardlink_target = _weighted(
    (7, path),
    (1, st.one_of(st.sampled_from([f"{VICTIM}/file", "../file", "."]),
                  st.builds(lambda up, p: "../" * up + p, st.integers(1, 3), path))),
)
whiteout = st.builds(
    lambda d, hidden: f"{d}/.wh.{hidden}" if d else f".wh.{hidden}",
    parent, _weighted((7, st.sampled_from(NAMES)), (1, st.sampled_from(["", ".", ".."]))))
MODES = [0o644, 0o4755, 0o2755, 0o600, 0o777]
DATA = [b"", b"x", b"root:x:0:0::/:/bin/sh\n", b"app:x:1000:1000::/:/bin/sh\n"]

entry = _weighted(
    (4, st.builds(lambda p, m, d: Entry(p, data=d, mode=m), path, st.sampled_from(MODES),
                  st.sampled_from(DATA))),
    (3, st.builds(lambda p, m: Entry(p, "dir", mode=m), path,
                  st.sampled_from([0o755, 0o700, 0o1777]))),
    (4, st.builds(lambda p, t: Entry(p, "symlink", target=t), path, symlink_target)),
    (3, st.builds(lambda p, t: Entry(p, "hardlink", target=t), path, hardlink_target)),
    (2, st.builds(Entry, whiteout)),
    (1, st.builds(lambda d: Entry(f"{d}/.wh..wh..opq" if d else ".wh..wh..opq"), parent)),
    (1, st.builds(lambda p: Entry(p, "chr"), path)),
    (1, st.builds(lambda p: Entry(p, "fifo"), path)),
)


@st.composite
def swap(draw: st.DrawFn) -> list[Entry]:
    """An attack's shape, with random parts: something made beneath a directory `p`,
    then `p` replaced by a symlink (into the victim, or elsewhere in the layer), then a
    use of a path through `p`: a hard link to it (and a setuid file written beneath the
    link), a file or directory written over it or beneath it, a whiteout or an opaque
    marker for it."""
    p = draw(path)
    n = draw(st.sampled_from(NAMES))
    through = f"{p}/{n}"
    kind = draw(st.sampled_from(["file", "dir", "symlink", "file"]))
    first = Entry(through, kind, data=b"x",
                  target=draw(symlink_target) if kind == "symlink" else "")
    replaced = Entry(p, "symlink", target=draw(symlink_target))
    x = draw(path)
    name = draw(st.sampled_from(NAMES))
    link = [Entry(x, "hardlink", target=through),
            Entry(f"{x}/{name}", data=b"#!/bin/sh\n", mode=0o4755)]
    use = draw(st.sampled_from([
        link, link, link,  # the way out, and its variants: the likeliest
        [Entry(through, data=b"pwned")],
        [Entry(through, "dir")],
        [Entry(f"{through}/{name}", data=b"pwned")],
        [Entry(f"{p}/.wh.{n}")],
        [Entry(f"{through}/.wh..wh..opq")],
    ]))
    return [first, replaced, *use]


@st.composite
def layers(draw: st.DrawFn, attacks: bool) -> list[Entry]:
    """Up to 12 steps, each one entry or, with `attacks`, one time in four an attack's
    shape (`swap`: almost always refused, so only a third of the images have them).
    Replacements are sought, not left to chance: an entry often takes the path of an
    earlier one or of a directory above it (a file by a directory, a directory full of
    files by a symlink, ...), and a hard link mostly names a file made earlier in the
    layer, whatever its path has become since."""
    entries: list[Entry] = []
    for _ in range(draw(st.integers(0, 12))):
        if attacks and draw(st.integers(0, 3)) == 0:
            entries += draw(swap())
            continue
        e = draw(entry)
        used = sorted({"/".join(x.name.split("/")[:n]) for x in entries
                       if ".wh." not in x.name for n in range(1, x.name.count("/") + 2)})
        if used and ".wh." not in e.name and draw(st.integers(0, 2)) == 0:
            e.name = draw(st.sampled_from(used))
        files = [x.name for x in entries if x.kind in ("file", "hardlink")]
        if e.kind == "hardlink" and files and draw(st.integers(0, 3)):
            e.target = draw(st.sampled_from(files))
        elif e.kind == "hardlink" and not attacks:
            e.kind = "file"  # nothing to link to yet: a link anywhere would only be refused
        entries.append(e)
    return entries


@st.composite
def images(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(1, 4))
    attacks = draw(st.sampled_from([False, True, False]))
    return {
        "layers": [draw(layers(attacks)) for _ in range(n)],
        "gzip": draw(st.booleans()),
        "wrong_diff_id": draw(st.integers(0, 19)) == 7,  # not an end: hypothesis likes those
        "walk": draw(st.booleans()),  # resolve with the O_NOFOLLOW walk, not openat2
    }


@dataclass
class Arena:
    base: Path
    victim: Path
    work: Path
    before: dict[str, tuple[Any, ...]]
    base_before: tuple[list[str], int, int]
    layers: int = 0
    images: int = 0
    loaded: int = 0
    changes: int = 0
    refused: Counter[str] = field(default_factory=Counter)


def _base_state(base: Path) -> tuple[list[str], int, int]:
    st_ = os.lstat(base)
    return sorted(os.listdir(base)), st_.st_mtime_ns, st_.st_ctime_ns


@pytest.fixture(scope="module")
def arena() -> Iterator[Arena]:
    base = Path(tempfile.mkdtemp(prefix="linkd-layer-property-"))
    victim = make_victim(base / "victim")
    (base / "work").mkdir()
    state = Arena(base, victim, base / "work", snapshot_tree(victim), _base_state(base))
    start = time.monotonic()
    yield state
    took = time.monotonic() - start
    rules = ", ".join(f"{rule} {n}" for rule, n in state.refused.most_common())
    print(f"\nlayer property: {state.layers} generated layers in {state.images} images "
          f"({state.loaded} loaded; refused: {rules}) in {took:.1f} s; "
          f"{state.changes} changed something outside the store", file=sys.stderr)
    shutil.rmtree(base)


def _entries(entries: list[Entry], victim: Path) -> list[Entry]:
    return [Entry(e.name, e.kind, e.data, e.target.replace(VICTIM, str(victim)), e.mode)
            for e in entries]


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(images())
def test_no_layer_sequence_changes_anything_outside_the_store(
        arena: Arena, image: dict[str, Any]) -> None:
    tars = [layer_tar(_entries(layer, arena.victim)) for layer in image["layers"]]
    arena.layers += len(tars)
    arena.images += 1
    blobs = [(gzip.compress(t, mtime=0) if image["gzip"] else t, sha256(t), image["gzip"])
             for t in tars]
    if image["wrong_diff_id"]:  # the config names another tar than the last layer's
        blobs[-1] = (blobs[-1][0], sha256(tars[-1] + b"!"), image["gzip"])
    files = oci_files_of_blobs(blobs, name="prop:1")
    store = ImageStore(arena.work / "store")
    source = write_dir(files, arena.work / "src")
    saved = beneath.use_openat2
    beneath.use_openat2 = not image["walk"]
    try:
        try:
            loaded = store.load(source)
        except ImageError as err:
            arena.refused[err.rule] += 1
            for sub in ("layers", "images", "tmp"):
                d = store.root / sub
                assert not d.exists() or not os.listdir(d), f"a refused load left {sub}"
        else:
            assert not image["wrong_diff_id"], "a wrong diff_id was accepted"
            arena.loaded += 1
            assert os.listdir(store.root / "tmp") == []
            with pytest.raises(ContainerError, match="not found"):
                resolve_user(loaded.layer_dirs(store.root), "intruder")
            store.remove("prop:1")
            assert os.listdir(store.root / "layers") == []
    finally:
        beneath.use_openat2 = saved
        shutil.rmtree(arena.work / "store", ignore_errors=True)
        shutil.rmtree(arena.work / "src", ignore_errors=True)
    changed = snapshot_tree(arena.victim) != arena.before
    beside = _base_state(arena.base) != arena.base_before
    if changed or beside:
        arena.changes += 1
        # A fresh victim for the next example (and hypothesis's shrinking), then fail.
        shutil.rmtree(arena.victim)
        root = beneath.open_root(arena.base)
        try:
            for name in set(os.listdir(arena.base)) - {"victim", "work"}:
                beneath.remove_at(root, name)
        finally:
            os.close(root)
        make_victim(arena.victim)
        arena.before = snapshot_tree(arena.victim)
        arena.base_before = _base_state(arena.base)
    assert not changed, "a layer changed the victim tree"
    assert not beside, "a layer wrote beside the store"
