"""Image references as Docker reads them: `name`, `name:tag`, `name@digest`,
`host[:port]/path/name:tag@digest`.

The grammar is that of the distribution project's reference package (the one Docker,
containerd and skopeo use), restated here:

    reference  := name [ ":" tag ] [ "@" digest ]
    name       := [ domain "/" ] component ( "/" component )*
    domain     := host [ ":" port ]            host: DNS labels joined by ".", or "[v6]"
    component  := [a-z0-9]+ ( separator [a-z0-9]+ )*     separator: "." | "_" | "__" | "-"+
    tag        := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
    digest     := algorithm ":" hex (32 or more)          linkd reads sha256 only

Normalization (what `docker pull redis` means): the first component is a registry only
if it has a "." or ":", is `localhost`, or has upper-case letters; otherwise the registry
is `docker.io`, and a one-component name there is under `library/`. `index.docker.io` is
the old name of `docker.io`. A reference with neither tag nor digest means `:latest`.
A name of 64 hex digits is refused (it reads as an image id), and the path after the
registry is at most 255 characters.

Pure: strings in, a frozen `Reference` out, or `ReferenceError` naming the rule broken.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from linkd.errors import ReferenceFormatError as ReferenceError

DEFAULT_DOMAIN = "docker.io"
LEGACY_DOMAIN = "index.docker.io"
OFFICIAL_PREFIX = "library/"
DEFAULT_TAG = "latest"
PATH_MAX = 255
# Where docker.io's registry API answers (docker.io itself is the web site).
DOCKER_HUB_API = "registry-1.docker.io"

_ALNUM = "[a-z0-9]+"
_SEPARATOR = "(?:[._]|__|-+)"
_COMPONENT = f"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_PATH = f"{_COMPONENT}(?:/{_COMPONENT})*"
_LABEL = "(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[a-fA-F0-9:]+\])"
_DOMAIN = f"{_HOST}(?::[0-9]+)?"
_TAG = "[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = "[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"

_REFERENCE = re.compile(
    rf"(?P<name>(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_PATH}))"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?")
_SHA256 = re.compile("sha256:[a-f0-9]{64}")
_IDENTIFIER = re.compile("[a-f0-9]{64}")


@dataclass(frozen=True)
class Reference:
    """A normalized reference: `domain` and `path` always set, `tag` set unless only a
    digest was given (then it is "")."""

    domain: str
    path: str
    tag: str = DEFAULT_TAG
    digest: str = ""

    @property
    def repository(self) -> str:
        """`domain/path`, the name the store and registry know the repository by."""
        return f"{self.domain}/{self.path}"

    @property
    def api_host(self) -> str:
        """The host[:port] whose /v2/ API serves this repository."""
        return DOCKER_HUB_API if self.domain == DEFAULT_DOMAIN else self.domain

    @property
    def ref(self) -> str:
        """What `/v2/<path>/manifests/<ref>` takes: the digest if there is one."""
        return self.digest or self.tag

    def __str__(self) -> str:
        tag = f":{self.tag}" if self.tag else ""
        digest = f"@{self.digest}" if self.digest else ""
        return f"{self.repository}{tag}{digest}"

    @property
    def familiar(self) -> str:
        """As Docker prints it: without `docker.io/`, and `library/` dropped."""
        path = self.path
        if self.domain == DEFAULT_DOMAIN:
            rest = path.removeprefix(OFFICIAL_PREFIX)
            path = rest if "/" not in rest else path
            name = path
        else:
            name = self.repository
        tag = f":{self.tag}" if self.tag else ""
        digest = f"@{self.digest}" if self.digest else ""
        return f"{name}{tag}{digest}"


def split_domain(name: str) -> tuple[str, str]:
    """(registry, remainder) of a reference as written, Docker's way: the first part is
    a registry if it looks like a host (a "." or ":", `localhost`, upper case)."""
    first, slash, rest = name.partition("/")
    if not slash:
        return DEFAULT_DOMAIN, OFFICIAL_PREFIX + name
    if first == LEGACY_DOMAIN:
        domain = DEFAULT_DOMAIN
    elif first == "localhost" or any(c in first for c in ".:") or first.lower() != first:
        domain = first
    else:
        domain, rest = DEFAULT_DOMAIN, name
    if domain == DEFAULT_DOMAIN and "/" not in rest:
        rest = OFFICIAL_PREFIX + rest
    return domain, rest


def has_domain(text: str) -> bool:
    """Whether a reference names its registry (`host/...`) rather than implying
    docker.io."""
    first, slash, _ = text.partition("/")
    return bool(slash) and (first == "localhost" or any(c in first for c in ".:")
                            or first.lower() != first)


def parse(text: str) -> Reference:
    """A reference as written in a stack file or on the command line, normalized."""
    if not text:
        raise ReferenceError(text, "empty", "a reference needs at least a repository name")
    if _IDENTIFIER.fullmatch(text):
        raise ReferenceError(text, "identifier", "64 hex digits are an image id, not a "
                             "repository name: write sha256:... to name an image by id")
    domain, remainder = split_domain(text)
    repo = remainder.partition("@")[0].partition(":")[0]
    if repo.lower() != repo:
        raise ReferenceError(text, "lower case", f"the repository name {repo!r} must be "
                             "lower case")
    full = f"{domain}/{remainder}"
    m = _REFERENCE.fullmatch(full)
    if m is None:
        raise ReferenceError(text, _why(text, remainder), _explain(_why(text, remainder)))
    path = m.group("path")
    if len(path) > PATH_MAX:
        raise ReferenceError(text, "length", f"the repository path is {len(path)} "
                             f"characters, at most {PATH_MAX}")
    # `m.group("domain")` is the domain split off above: the path pattern cannot
    # contain ":" or upper case, so the regex splits where split_domain did.
    digest = m.group("digest") or ""
    if digest and not _SHA256.fullmatch(digest):
        alg = digest.partition(":")[0]
        raise ReferenceError(text, "digest", f"{digest} is not a sha256 digest (64 lower-"
                             f"case hex digits)" if alg == "sha256" else
                             f"digest algorithm {alg!r}: linkd reads sha256 digests only")
    tag = m.group("tag") or ("" if digest else DEFAULT_TAG)
    return Reference(m.group("domain") or domain, path, tag, digest)


_RULES = {
    "tag": "a tag is 1 to 128 of letters, digits, '_', '.' and '-', not starting with "
           "'.' or '-'",
    "digest": "a digest is ALGORITHM:HEX (sha256: and 64 hex digits)",
    "domain": "a registry is a host name or [IPv6 address], with an optional :PORT",
    "component": "each path component is lower-case letters and digits, separated by "
                 "'.', '_', '__' or dashes, neither starting nor ending with a separator",
}


def _explain(rule: str) -> str:
    return _RULES[rule]


def _why(text: str, remainder: str) -> str:
    """Which part of an unmatched reference is wrong, for the message."""
    name, at, digest = remainder.partition("@")
    if at and not re.fullmatch(_DIGEST, digest):
        return "digest"
    _, colon, tag = name.rpartition(":") if ":" in name.rsplit("/", 1)[-1] else (
        name, "", "")
    if colon and not re.fullmatch(_TAG, tag):
        return "tag"
    first, slash, _ = text.partition("/")
    if slash and has_domain(text) and not re.fullmatch(_DOMAIN, first):
        return "domain"
    return "component"
