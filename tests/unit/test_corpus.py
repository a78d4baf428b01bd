"""The corpus (tests/corpus, issue 16 §8): real compose files from public repositories,
each of which Compose accepts, loaded as `linkd config` loads them.

- Every file loads, but those in `EXPECTED_FAILURES`; each of those fails, and every
  problem its error lists is one its reasons name. When a feature lands, its files load
  (or fail otherwise) and this test says which entries to remove.
- Every warning is one the key table names (linkd.spec.compose_keys: an ignored key's one
  warning, or a key of a `differs` row that linkd reads in part) or a variable that is
  not set; `WARNING_GAPS` lists the others seen today, each of which must still be seen.
- The share of files that load only goes up (`ACCEPTANCE_FLOOR`).

`python tests/unit/test_corpus.py` prints the acceptance rate and the failure causes as
tests/corpus/REPORT.md shows them.
"""

from __future__ import annotations

import collections
import functools
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from linkd import loader
from linkd.cli.stacks import OVERRIDE_FILES
from linkd.core.model import Stack
from linkd.errors import SpecError
from linkd.spec import compose_keys

CORPUS = Path(__file__).resolve().parents[1] / "corpus"


@dataclass(frozen=True)
class Reason:
    """Why a file Compose accepts fails in linkd today; `problems` match (re.search) the
    messages of the problems it causes."""

    why: str
    problems: tuple[str, ...]


# slug (tests/corpus/<slug>) -> why it does not load today.
EXPECTED_FAILURES: dict[str, tuple[Reason, ...]] = {
}

# Warnings that name a Compose key the table does not (or call it unknown): each is a gap,
# and each must still be seen, so that a fix removes its entry.
WARNING_GAPS: dict[str, str] = {
}

# The share of the corpus that loads, as measured; raise it when more loads.
ACCEPTANCE_FLOOR = 162 / 162

_UNSET = re.compile(r"variable \w+ is not set, using an empty string")
# "(line 4)", or "(other.yml, line 4)" for a line of an included or extended file
_WARNING = re.compile(r"(?P<path>\S+) \((?:[^,()]+, )?line \d+\): (?P<message>.*)",
                      re.DOTALL)
_IGNORED_TOP = compose_keys.ignored(compose_keys.TOP_LEVEL)
_IGNORED_SERVICE = compose_keys.ignored(compose_keys.SERVICE)
_READ_IN_PART = sorted(k for k, (h, _) in compose_keys.SERVICE.items() if h == "differs")
# A top-level key linkd reads in part warns about the parts it does not (its note says so).
_TOP_READ_IN_PART = sorted(k for k, (h, _) in compose_keys.TOP_LEVEL.items() if h == "differs")
_SERVICE_KEY = re.compile(r"services\..+\.(?P<key>[a-z_]+)")  # greedy: names may have dots
_UNDER_SERVICE_KEY = re.compile(
    rf"services\..+\.(?P<key>{'|'.join(_READ_IN_PART)})[.\[].+")


def corpus() -> list[tuple[str, str]]:
    """(slug, file name) of every file, as tests/corpus/SOURCES.md's table lists them."""
    rows = []
    for line in (CORPUS / "SOURCES.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and cells[0] not in ("slug", "---"):
            rows.append((cells[0], cells[1]))
    return rows


@functools.cache
def load(slug: str, name: str) -> Stack | SpecError:
    """The file loaded as `linkd config` loads it from its own directory (the `.env`
    beside it, relative paths from there), with a fixed environment instead of the
    shell's: only PWD, which a shell in that directory has."""
    file = CORPUS / slug / name
    # Without -f, Compose merges the first override file beside the default one.
    overrides = [file.parent / o for o in OVERRIDE_FILES if (file.parent / o).exists()][:1]
    read = loader.read_files([file, *overrides])
    source = loader.StackSource(
        read.text, source=read.source, directory=read.directory,
        default_project=read.directory.name, environment={"PWD": str(read.directory)},
        overrides=read.overrides,
    )
    try:
        return loader.load(source)
    except SpecError as exc:
        return exc


def named_by_table(warning: str) -> bool:
    """Whether the warning is one the key table names, or an unset variable's."""
    match = _WARNING.fullmatch(warning)
    if match is None:
        return False
    path, message = match["path"], match["message"]
    if _UNSET.fullmatch(message):
        return True
    if path in _IGNORED_TOP:
        return message == _IGNORED_TOP[path]
    key = _SERVICE_KEY.fullmatch(path)
    if key is not None and key["key"] in _IGNORED_SERVICE:
        return message == _IGNORED_SERVICE[key["key"]]
    if key is not None and key["key"] in _READ_IN_PART:
        return True  # a key the table says differs, saying how here (network_mode: host)
    if path.split(".")[0] in _TOP_READ_IN_PART and "." in path:
        return True
    # Under a key the table says differs: its parts linkd does not read, or one it reads
    # differently, saying how (deploy.placement.constraints).
    return _UNDER_SERVICE_KEY.fullmatch(path) is not None


def gap_of(warning: str) -> str | None:
    return next((p for p in WARNING_GAPS if re.search(p, warning)), None)


FILES = corpus()


def test_the_table_lists_every_directory_once() -> None:
    slugs = [slug for slug, _ in FILES]
    assert len(slugs) == len(set(slugs))
    assert set(slugs) == {p.name for p in CORPUS.iterdir() if p.is_dir()}
    assert all((CORPUS / slug / name).is_file() for slug, name in FILES)
    assert set(EXPECTED_FAILURES) <= set(slugs)


@pytest.mark.parametrize(("slug", "name"), FILES, ids=[slug for slug, _ in FILES])
def test_a_file_compose_accepts_loads(slug: str, name: str) -> None:
    result = load(slug, name)
    reasons = EXPECTED_FAILURES.get(slug)
    if reasons is None:
        assert isinstance(result, Stack), f"{slug}: {result}"
        strange = [w for w in result.warnings if not named_by_table(w) and gap_of(w) is None]
        assert not strange, f"{slug}: warnings the key table does not name: {strange}"
        return
    assert isinstance(result, SpecError), (
        f"{slug} loads now: remove it from EXPECTED_FAILURES ({[r.why for r in reasons]})")
    patterns = [p for r in reasons for p in r.problems]
    unexplained = [m for _, _, m in result.problems if not any(re.search(p, m) for p in patterns)]
    assert not unexplained, f"{slug}: problems no listed reason explains: {unexplained}"
    for reason in reasons:
        assert any(re.search(p, m) for p in reason.problems for _, _, m in result.problems), (
            f"{slug} no longer fails for {reason.why!r}: remove that reason")


def test_every_warning_gap_is_still_seen() -> None:
    seen = {gap_of(w) for slug, name in FILES
            if isinstance(stack := load(slug, name), Stack) for w in stack.warnings}
    assert set(WARNING_GAPS) <= seen, f"fixed, remove: {set(WARNING_GAPS) - seen}"


def test_the_acceptance_rate_only_goes_up() -> None:
    accepted = sum(isinstance(load(slug, name), Stack) for slug, name in FILES)
    rate = accepted / len(FILES)
    print(f"corpus: linkd loads {accepted} of {len(FILES)} files ({rate:.1%})")
    assert rate >= ACCEPTANCE_FLOOR - 1e-9, (
        f"{accepted}/{len(FILES)} = {rate:.1%} < the floor {ACCEPTANCE_FLOOR:.1%}")


def key_of(warning: str, stack: Stack) -> str:
    """The Compose key a warning is about, its service or network named `*`."""
    match = _WARNING.fullmatch(warning)
    if match is None:
        return warning
    if _UNSET.fullmatch(match["message"]):
        return "(variable not set)"
    path = match["path"]
    names = [("services", s.name) for s in stack.services]
    names += [("networks", n.name) for n in stack.networks]
    for kind, name in names:
        if path.startswith(f"{kind}.{name}."):
            path = f"{kind}.*.{path[len(kind) + len(name) + 2:]}"
            break
    return re.sub(r"\[\d+\]", "[]", path)


def report() -> str:
    """The acceptance rate, the failure causes (files, files it alone stops, an example)
    and the warnings by key, in Markdown."""
    accepted = sum(isinstance(load(slug, name), Stack) for slug, name in FILES)
    causes: dict[str, list[str]] = collections.defaultdict(list)
    alone: collections.Counter[str] = collections.Counter()
    example: dict[str, str] = {}
    warned: dict[str, set[str]] = collections.defaultdict(set)
    for slug, name in FILES:
        result = load(slug, name)
        if isinstance(result, Stack):
            for warning in result.warnings:
                warned[key_of(warning, result)].add(slug)
            continue
        reasons = EXPECTED_FAILURES.get(slug, (Reason("not in EXPECTED_FAILURES", ()),))
        for reason in reasons:
            causes[reason.why].append(slug)
            found = [f"{p} (line {line}): {m}" for p, line, m in result.problems
                     if any(re.search(x, m) for x in reason.problems)]
            example.setdefault(reason.why, found[0] if found else str(result))
        if len(reasons) == 1:
            alone[reasons[0].why] += 1
    lines = [
        f"linkd loads **{accepted} of {len(FILES)}** files ({accepted / len(FILES):.1%}).",
        "",
        "| cause | files | the only cause in | example |",
        "| --- | --- | --- | --- |",
    ]
    for why, slugs in sorted(causes.items(), key=lambda c: -len(c[1])):
        text = example[why].replace("|", "\\|")
        lines.append(f"| {why} | {len(slugs)} | {alone[why]} | {text} |")
    lines += ["", "Warnings of the files that load, by key (files):", ""]
    lines += [f"- `{key}`: {len(slugs)}"
              for key, slugs in sorted(warned.items(), key=lambda w: (-len(w[1]), w[0]))]
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
