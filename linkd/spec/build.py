"""A service's `build:` and `pull_policy:`, read into `linkd.core.model.Build`.

`build: ./dir` (the context alone) or the long form (compose-spec `build.md`). linkd
builds with buildah (linkd.runtime.images.build) into its own store, so each key is one
of: passed to buildah (`context`, `dockerfile`, `dockerfile_inline`, `args`, `target`,
`labels`, `network`, `no_cache`, `pull`, `extra_hosts`, `shm_size`, `ulimits`), a
linkd name (`tags`: more names in the store), warned about once with what linkd does
instead (`_IGNORED`), or refused with the reason (`additional_contexts`, a remote
context, a `network` other than the host's or none).

The image is stored under the service's `image:` when it has one, else under Compose's
default name `<project>-<service>` (with `:latest`), which `default_image` gives; that
name becomes the service's `image`, so everything after the parser runs a built
service as it runs any image service. The context becomes an absolute path (a relative
one starts in the stack file's directory, as a bind mount's source does); the
Dockerfile stays relative to it, as written (the parser reads no file).

`pull_policy`: `build` builds at every `up`; `missing`, `if_not_present` and `never`
use the store's image (built when missing, as Compose does); for a built image,
`always`, `daily`, `weekly` and `every_<duration>` are warned about and do the same.
For an image from a registry (`pull_policy_of`), `always` pulls at every `up`, `never`
never pulls, and `daily`, `weekly` and `every_<duration>` pull when the image is missing
or was last pulled longer ago than that (`refresh_after`).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable

from linkd.core.image_format import check_name
from linkd.core.model import Build
from linkd.core.plan import HOST_GATEWAY
from linkd.errors import ImageError
from linkd.spec.environment import Environment
from linkd.spec.limits import _BYTES, _UNITS, _ulimits
from linkd.spec.nodes import At, Reader, given
from linkd.spec.values import quote

Pairs = tuple[tuple[str, str], ...]

_KEYS = ("context", "dockerfile", "dockerfile_inline", "args", "target", "labels", "tags",
         "network", "no_cache", "pull", "extra_hosts", "shm_size", "ulimits")  # fmt: skip
_NOTES = {
    "cache_from": "the cache is buildah's layers in linkd's build storage",
    "cache_to": "the cache is buildah's layers in linkd's build storage",
    "secrets": "no secrets are passed to the build (RUN --mount=type=secret finds none)",
    "ssh": "no SSH agent or key is passed to the build",
    "platforms": "the image is built for this machine's platform only",
    "isolation": "RUN steps run in buildah's OCI runtime (Windows isolation modes do "
                 "not apply)",
    "privileged": "RUN steps get buildah's default capabilities",
    "entitlements": "RUN steps get buildah's default capabilities",
    "provenance": "no attestations: the image goes into linkd's store only",
    "sbom": "no attestations: the image goes into linkd's store only",
}
_IGNORED = {key: f"not supported by linkd, ignored: {note}" for key, note in _NOTES.items()}
_REFUSED = {
    "additional_contexts": "linkd builds from one context (buildah here takes no named "
                           "contexts); copy what the build needs into the context",
}
_REMOTE = re.compile(r"^([a-z][a-z0-9+.-]*://|git@|github\.com/)", re.IGNORECASE)
_PULL_POLICIES = ("always", "never", "missing", "if_not_present", "build", "daily", "weekly")
_EVERY = re.compile(r"every_\d+[smhdw]?(\d+[smhdw])*")  # Compose's every_<duration>

HostsReader = Callable[[At | None], Pairs]


def default_image(project: str, service: str) -> str:
    """Compose's name for a built image when the service gives no `image:`."""
    return f"{project}-{service}".lower()


def read_build(
    r: Reader, at: At, *, image: str, env: Environment, labels: Callable[[At | None], Pairs],
    extra_hosts: HostsReader, directory: str, home: str | None,
) -> Build | None:
    """The service's `build:`, built under `image` (its `image:` or the default name);
    `labels` and `extra_hosts` read those forms as the service's own keys do; a relative
    context starts in `directory` (the stack file's), `~` is `home`."""
    try:
        check_name(image)
    except ImageError:
        r.fail(at, f"the image is built under the name {quote(image)}, which is not an "
                   "image name linkd's store takes (lower-case letters, digits, '.', '_', "
                   "'-', '/' and ':TAG', after a REGISTRY[:PORT]/); set image: to one")
        return None
    if not at.is_mapping:
        context = _context(r, at, directory, home)
        return None if context is None else Build(context=context)
    f = r.fields(at, (*_KEYS, *_REFUSED), _IGNORED)
    if f is None:
        return None
    for key, reason in _REFUSED.items():
        if refused := given(f, key):
            r.fail(refused, f"{key} is not supported: {reason}")
    context = _context(r, f["context"], directory, home) if given(f, "context") else \
        posixpath.normpath(directory)
    text = {key: r.text(value) if (value := given(f, key)) else None
            for key in ("dockerfile", "dockerfile_inline", "target")}
    if text["dockerfile"] is not None and text["dockerfile_inline"] is not None:
        r.fail(f["dockerfile_inline"], "dockerfile and dockerfile_inline cannot both be "
                                       "given (Compose refuses it too); keep one")
    flags = {key: _flag(r, f, key) for key in ("no_cache", "pull")}
    build = Build(
        context=context or posixpath.normpath(directory),
        dockerfile=text["dockerfile"],
        dockerfile_inline=text["dockerfile_inline"],
        args=env.of({"environment": f["args"]}) if given(f, "args") else (),
        target=text["target"],
        labels=labels(given(f, "labels")),
        tags=_tags(r, given(f, "tags")),
        extra_hosts=_hosts(r, given(f, "extra_hosts"), extra_hosts),
        shm_size=_shm_size(r, given(f, "shm_size")),
        ulimits=_ulimits(r, ulimits) if (ulimits := given(f, "ulimits")) else (),
        no_network=_no_network(r, given(f, "network")),
        no_cache=flags["no_cache"],
        pull=flags["pull"],
    )
    return None if context is None else build


def read_pull_policy(r: Reader, at: At | None, has_build: bool) -> str:
    """`pull_policy` as written, once checked ("" when absent or refused); `build` (build
    at every `up`) only with a build: section."""
    if at is None:
        return ""
    policy = r.text(at)
    if policy is None:
        return ""
    if policy == "build":
        if not has_build:
            r.fail(at, 'pull_policy "build" needs a build: section to build the image from')
        return policy if has_build else ""
    if has_build and (policy in ("always", "daily", "weekly") or _EVERY.fullmatch(policy)):
        r.warn(at, f"pull_policy {quote(policy)}: linkd pulls no built image; the image in "
                   "linkd's store is used, built when missing")
    elif policy not in _PULL_POLICIES and not _EVERY.fullmatch(policy):
        r.fail(at, f"expected a pull_policy of {', '.join(_PULL_POLICIES)} or "
                   f"every_<duration>, got {quote(policy)}")
        return ""
    return policy


def pull_policy_of(policy: str) -> str:
    """What a pull makes of a (checked) pull_policy: "always", "never", "daily",
    "weekly", "every_<duration>", or "" (when missing: `missing`, `if_not_present`)."""
    return "" if policy in ("missing", "if_not_present", "build") else policy


_EVERY_PART = re.compile(r"(\d+)([smhdw]?)")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def refresh_after(policy: str) -> float | None:
    """The seconds after its last pull when `policy` pulls an image again (`daily`,
    `weekly`, `every_12h`, `every_1d2h`: a bare number is seconds); None for the others."""
    if policy == "daily":
        return 86400.0
    if policy == "weekly":
        return 7 * 86400.0
    if not _EVERY.fullmatch(policy):
        return None
    return float(sum(int(n) * _UNIT_SECONDS[unit]
                     for n, unit in _EVERY_PART.findall(policy.removeprefix("every_"))))


def dump_build(build: Build | None) -> dict[str, object]:
    """`build:` (always the long form) and `pull_policy: build`, for `linkd config`."""
    if build is None:
        return {}
    out: dict[str, object] = {"context": build.context}
    for key, value in (("dockerfile", build.dockerfile),
                       ("dockerfile_inline", build.dockerfile_inline),
                       ("target", build.target)):
        if value is not None:
            out[key] = value
    for key, pairs in (("args", build.args), ("labels", build.labels)):
        if pairs:
            out[key] = dict(pairs)
    if build.tags:
        out["tags"] = list(build.tags)
    if build.extra_hosts:
        out["extra_hosts"] = [f"{host}={address}" for host, address in build.extra_hosts]
    if build.shm_size is not None:
        out["shm_size"] = build.shm_size
    if build.ulimits:
        out["ulimits"] = {name: {"soft": soft, "hard": hard}
                          for name, soft, hard in build.ulimits}
    if build.no_network:
        out["network"] = "none"
    for key, flag in (("no_cache", build.no_cache), ("pull", build.pull)):
        if flag:
            out[key] = True
    dumped: dict[str, object] = {"build": out}
    if build.always:
        dumped["pull_policy"] = "build"
    return dumped


def _context(r: Reader, at: At, directory: str, home: str | None) -> str | None:
    text = r.text(at)
    if text is None:
        return None
    if _REMOTE.match(text) or text.endswith(".git"):
        r.fail(at, f"a remote build context ({quote(text)}) is not supported: linkd builds "
                   "from a directory; clone the repository and give its path")
        return None
    if text == "~" or text.startswith("~/"):  # Compose expands the home directory
        if not home:
            r.fail(at, f"{quote(text)} starts with ~ and HOME is not set; give the path")
            return None
        text = home + text[1:]
    return posixpath.normpath(posixpath.join(directory, text))


def _flag(r: Reader, f: dict[str, At], key: str) -> bool:
    at = given(f, key)
    return bool(r.boolean(at)) if at is not None else False


def _tags(r: Reader, at: At | None) -> tuple[str, ...]:
    tags: list[str] = []
    for item in (r.items(at) or []) if at is not None else []:
        text = r.text(item)
        if text is None:
            continue
        try:
            tags.append(check_name(text))
        except ImageError:
            r.fail(item, f"expected an image name (lower-case letters, digits, '.', '_', "
                         f"'-', '/' and ':TAG'), got {quote(text)}")
    return tuple(tags)


def _hosts(r: Reader, at: At | None, read: HostsReader) -> Pairs:
    hosts = read(at)
    if any(address == HOST_GATEWAY for _, address in hosts) and at is not None:
        r.fail(at, f"{HOST_GATEWAY} has no meaning in a build (RUN steps use the host's "
                   "network, or none); give an address")
        return ()
    return hosts


def _shm_size(r: Reader, at: At | None) -> int | None:
    if at is None:
        return None
    text = r.raw(at)
    match = _BYTES.match(text.strip()) if text is not None else None
    if match is None:
        r.fail(at, f"expected a size like 64m or 2gb, got {quote(str(text))}")
        return None
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def _no_network(r: Reader, at: At | None) -> bool:
    """`none` isolates RUN steps; `default` and `host` are linkd's default, the host's
    network (linkd makes no build network: no bridge, no firewall rule)."""
    if at is None:
        return False
    network = r.text(at)
    if network is None or network in ("default", "host"):
        return False
    if network != "none":
        r.fail(at, f"build network {quote(network)} is not supported: RUN steps use the "
                   'host\'s network, or none with "network: none"')
    return network == "none"
