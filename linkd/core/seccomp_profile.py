"""Seccomp profiles: linkd's default policy, Docker's JSON profiles, and what applies here.

Two formats come in, one model comes out:

- linkd's own rule format (`linkd/core/seccomp_default.rules`, whose header describes it): the
  facts of Docker's default profile, one rule a line. `parse_rules` reads it.
- Docker's JSON profile format (`security_opt: [seccomp=FILE]`, what `docker run
  --security-opt seccomp=FILE` takes): `defaultAction`, `defaultErrnoRet`, `archMap` or
  `architectures`, `syscalls` with `names`, `action`, `errnoRet`, `args` and the
  conditions `includes` / `excludes` (`caps`, `arches`, `minKernel`). `parse_docker`
  reads it, with an error naming the field for anything it cannot take.

Both become a `SeccompProfile`: rules with their conditions still attached, so one profile
serves any container. `resolve(profile, caps, goarch, kernel)` picks the rules that apply to
a container with the bounding set `caps` on this machine, as Docker does when it creates a
container, and returns the OCI runtime-spec `linux.seccomp` object (runtime-spec
config-linux.md): runc takes it as it is; linkd's own launcher compiles the same object with
libseccomp (`linkd.runtime.containers.confine`). Pure: text in, values out.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

# Docker's SCMP_ACT_* names <-> the names used here (and in the OCI object: SCMP_ACT_ + upper).
ACTIONS = ("allow", "errno", "kill", "kill_thread", "kill_process", "trap", "log", "trace")
OPS = {"==": "SCMP_CMP_EQ", "!=": "SCMP_CMP_NE", "<": "SCMP_CMP_LT", "<=": "SCMP_CMP_LE",
       ">": "SCMP_CMP_GT", ">=": "SCMP_CMP_GE", "&==": "SCMP_CMP_MASKED_EQ"}
_OP_OF = {v: k for k, v in OPS.items()}
# The machine (os.uname().machine) as Go names it, which is what profiles' `arches` say.
GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "armv6l": "arm",
          "i686": "x86", "i386": "x86", "ppc64le": "ppc64le", "s390x": "s390x",
          "riscv64": "riscv64", "loongarch64": "loong64", "mips64": "mips64"}
# Go's name -> libseccomp's (the archMap key, lower case, without SCMP_ARCH_).
SCMP_ARCH = {"amd64": "x86_64", "arm64": "aarch64", "arm": "arm", "x86": "x86",
             "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64",
             "loong64": "loongarch64", "mips64": "mips64"}
_ERRNO_LIMIT = 4095  # errno values the kernel can return from a filter
_ARG = re.compile(r"^arg([0-5])(&(0x[0-9a-fA-F]+|\d+))?(==|!=|<=|>=|<|>)(0x[0-9a-fA-F]+|\d+)$")
_KERNEL = re.compile(r"^(\d+)\.(\d+)$")
_NAME = re.compile(r"^[a-z0-9_]+$")
_MAX_RULES = 10_000


class ProfileError(ValueError):
    """A profile that cannot be used; the message names the place and the fix."""


@dataclass(frozen=True, slots=True)
class SeccompArg:
    """One comparison of a syscall argument; `op` is a key of OPS. For "&==", `value` is
    the mask and `value_two` what the masked argument must equal."""

    index: int
    op: str
    value: int
    value_two: int = 0


@dataclass(frozen=True, slots=True)
class SeccompRule:
    names: tuple[str, ...]
    action: str  # one of ACTIONS
    errno: int | None = None  # for "errno" (and "trace": the tracer's data)
    args: tuple[SeccompArg, ...] = ()
    caps: tuple[str, ...] = ()  # applies only if the container has all of these
    not_caps: tuple[str, ...] = ()  # ... and none of these
    arches: tuple[str, ...] = ()  # ... on one of these machines (Go names)
    not_arches: tuple[str, ...] = ()
    min_kernel: tuple[int, int] | None = None  # ... on this kernel or newer
    below_kernel: tuple[int, int] | None = None  # ... on a kernel older than this


@dataclass(frozen=True, slots=True)
class SeccompProfile:
    default_action: str
    default_errno: int | None = None
    # (native, also covered) in libseccomp's names; the native arch's entry is used
    arch_map: tuple[tuple[str, tuple[str, ...]], ...] = ()
    architectures: tuple[str, ...] = ()  # Docker's flat `architectures` (libseccomp names)
    rules: tuple[SeccompRule, ...] = ()


# --- linkd's rule format --------------------------------------------------------------------


def parse_rules(text: str) -> SeccompProfile:
    """A profile in linkd's rule format (see the header of seccomp_default.rules)."""
    lines: list[tuple[int, str]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].rstrip()
        if not line:
            continue
        if raw[0].isspace() and lines:
            lines[-1] = (lines[-1][0], lines[-1][1] + " " + line.strip())
        else:
            lines.append((number, line))
    default: tuple[str, int | None] | None = None
    arch_map: list[tuple[str, tuple[str, ...]]] = []
    rules: list[SeccompRule] = []
    for number, line in lines:
        words = line.split()
        try:
            if words[0] == "default":
                default = _action_words(words[1:])
            elif words[0] == "arch":
                subs = tuple(words[2].split(",")) if len(words) > 2 else ()
                arch_map.append((words[1], subs))
            elif words[0] in ("allow", "errno"):
                rules.append(_rule_line(words))
            else:
                raise ProfileError(f"unknown statement {words[0]!r}")
        except (ProfileError, IndexError, ValueError) as exc:
            raise ProfileError(f"line {number}: {exc or 'incomplete'}: {line}") from None
    if default is None:
        raise ProfileError("no 'default' line")
    return SeccompProfile(default[0], default[1], tuple(arch_map), (), tuple(rules))


def _action_words(words: list[str]) -> tuple[str, int | None]:
    if words[0] == "errno":
        return "errno", _errno(int(words[1]))
    if words[0] not in ACTIONS or len(words) != 1:
        raise ProfileError(f"unknown action {' '.join(words)!r}")
    return words[0], None


def _rule_line(words: list[str]) -> SeccompRule:
    action, errno = ("errno", _errno(int(words[1]))) if words[0] == "errno" else ("allow", None)
    rest = words[2:] if action == "errno" else words[1:]
    names, conditions = (rest[: rest.index("if")], rest[rest.index("if") + 1:]) \
        if "if" in rest else (rest, [])
    if not names:
        raise ProfileError("a rule needs syscall names")
    fields: dict[str, Any] = {"args": [], "caps": [], "not_caps": [], "arches": (),
                              "not_arches": (), "min_kernel": None, "below_kernel": None}
    for cond in conditions:
        negated = cond.startswith("!")
        body = cond.removeprefix("!")
        if body.startswith("cap="):
            fields["not_caps" if negated else "caps"].append("CAP_" + body[4:])
        elif body.startswith("arch="):
            fields["not_arches" if negated else "arches"] = tuple(body[5:].split(","))
        elif body.startswith("kernel>="):
            fields["below_kernel" if negated else "min_kernel"] = _kernel(body[8:])
        elif (m := _ARG.match(cond)) is not None:
            mask = m.group(3)
            if mask is not None:
                if m.group(4) != "==":
                    raise ProfileError(f"a masked comparison takes ==, not {m.group(4)}")
                fields["args"].append(SeccompArg(int(m.group(1)), "&==", int(mask, 0),
                                                 int(m.group(5), 0)))
            else:
                fields["args"].append(SeccompArg(int(m.group(1)), m.group(4),
                                                 int(m.group(5), 0)))
        else:
            raise ProfileError(f"unknown condition {cond!r}")
    return SeccompRule(
        tuple(names), action, errno, tuple(fields["args"]), tuple(fields["caps"]),
        tuple(fields["not_caps"]), fields["arches"], fields["not_arches"],
        fields["min_kernel"], fields["below_kernel"])


def _errno(value: int) -> int:
    if not 0 <= value <= _ERRNO_LIMIT:
        raise ProfileError(f"errno {value} is not between 0 and {_ERRNO_LIMIT}")
    return value


def _kernel(text: str) -> tuple[int, int]:
    m = _KERNEL.match(text)
    if m is None or (m.group(1), m.group(2)) == ("0", "0"):
        raise ProfileError(f"expected a kernel version like 4.8, got {text!r}")
    return int(m.group(1)), int(m.group(2))


# --- Docker's JSON format ------------------------------------------------------------------


def parse_docker(text: str) -> SeccompProfile:
    """A profile in Docker's JSON format; ProfileError names what is wrong."""
    try:
        doc = json.loads(text)
    except RecursionError:
        raise ProfileError("the JSON nests too deeply") from None
    except ValueError as exc:
        raise ProfileError(f"not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ProfileError("expected a JSON object with defaultAction and syscalls")
    known = {"defaultAction", "defaultErrnoRet", "archMap", "architectures", "syscalls",
             "flags", "listenerPath", "listenerMetadata"}
    for key in doc:
        if key not in known:
            raise ProfileError(f"unknown field {key!r}")
    if doc.get("listenerPath"):
        raise ProfileError("listenerPath (seccomp user notification) is not supported by linkd")
    if doc.get("flags"):
        raise ProfileError("flags are not supported by linkd; remove them")
    action, errno = _docker_action(doc.get("defaultAction"), doc.get("defaultErrnoRet"),
                                   "defaultAction")
    if doc.get("archMap") and doc.get("architectures"):
        raise ProfileError("both archMap and architectures are given; use one")
    arch_map = []
    for i, entry in enumerate(_list(doc.get("archMap"), "archMap")):
        where = f"archMap[{i}]"
        if not isinstance(entry, dict):
            raise ProfileError(f"{where}: expected an object")
        native = _scmp_arch(entry.get("architecture"), f"{where}.architecture")
        subs = tuple(_scmp_arch(s, f"{where}.subArchitectures")
                     for s in _list(entry.get("subArchitectures"), f"{where}.subArchitectures"))
        arch_map.append((native, subs))
    architectures = tuple(_scmp_arch(a, "architectures")
                          for a in _list(doc.get("architectures"), "architectures"))
    syscalls = _list(doc.get("syscalls"), "syscalls")
    if len(syscalls) > _MAX_RULES:
        raise ProfileError(f"more than {_MAX_RULES} syscall rules")
    rules = tuple(_docker_rule(s, f"syscalls[{i}]") for i, s in enumerate(syscalls))
    return SeccompProfile(action, errno, tuple(arch_map), architectures, rules)


def _list(value: object, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ProfileError(f"{where}: expected a list")
    return value


def _scmp_arch(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.startswith("SCMP_ARCH_"):
        raise ProfileError(f"{where}: expected an architecture like SCMP_ARCH_X86_64, "
                           f"got {value!r}")
    return value.removeprefix("SCMP_ARCH_").lower()


def _docker_action(value: object, errno: object, where: str) -> tuple[str, int | None]:
    names = {"SCMP_ACT_" + a.upper(): a for a in ACTIONS}
    if not isinstance(value, str) or value not in names:
        raise ProfileError(f"{where}: expected one of {', '.join(names)}, got {value!r}")
    action = names[value]
    if errno is not None and (not isinstance(errno, int) or isinstance(errno, bool)):
        raise ProfileError(f"{where}: errnoRet must be an integer")
    if action == "errno":
        return action, _errno(1 if errno is None else errno)  # EPERM, as runc defaults
    if action == "trace":
        return action, _errno(0 if errno is None else errno)
    return action, None


def _docker_rule(entry: object, where: str) -> SeccompRule:
    if not isinstance(entry, dict):
        raise ProfileError(f"{where}: expected an object")
    known = {"names", "name", "action", "errnoRet", "args", "comment", "includes", "excludes"}
    for key in entry:
        if key not in known:
            raise ProfileError(f"{where}: unknown field {key!r}")
    if entry.get("name") and entry.get("names"):
        raise ProfileError(f"{where}: both name and names are given; use names")
    names = [entry["name"]] if entry.get("name") else _list(entry.get("names"), where + ".names")
    if not names or not all(isinstance(n, str) and _NAME.match(n) for n in names):
        raise ProfileError(f"{where}.names: expected syscall names like \"read\"")
    action, errno = _docker_action(entry.get("action"), entry.get("errnoRet"), where + ".action")
    args = []
    for i, arg in enumerate(_list(entry.get("args"), where + ".args")):
        at = f"{where}.args[{i}]"
        if not isinstance(arg, dict):
            raise ProfileError(f"{at}: expected an object")
        index, value, two = arg.get("index"), arg.get("value", 0), arg.get("valueTwo", 0)
        if not (isinstance(index, int) and 0 <= index <= 5):
            raise ProfileError(f"{at}.index: expected 0 to 5")
        for name, number in (("value", value), ("valueTwo", two)):
            if not (isinstance(number, int) and 0 <= number < 1 << 64):
                raise ProfileError(f"{at}.{name}: expected an unsigned 64-bit integer")
        op = arg.get("op")
        if op not in _OP_OF:
            raise ProfileError(f"{at}.op: expected one of {', '.join(_OP_OF)}, got {op!r}")
        args.append(SeccompArg(index, _OP_OF[op], value, two))
    inc = _docker_filter(entry.get("includes"), where + ".includes")
    exc = _docker_filter(entry.get("excludes"), where + ".excludes")
    return SeccompRule(tuple(names), action, errno, tuple(args), inc[0], exc[0], inc[1], exc[1],
                       inc[2], exc[2])


def _docker_filter(value: object, where: str
                   ) -> tuple[tuple[str, ...], tuple[str, ...], tuple[int, int] | None]:
    if value is None:
        return (), (), None
    if not isinstance(value, dict):
        raise ProfileError(f"{where}: expected an object")
    for key in value:
        if key not in ("caps", "arches", "minKernel"):
            raise ProfileError(f"{where}: unknown field {key!r}")
    caps = tuple(_list(value.get("caps"), where + ".caps"))
    arches = tuple(_list(value.get("arches"), where + ".arches"))
    if not all(isinstance(c, str) and c.startswith("CAP_") for c in caps):
        raise ProfileError(f"{where}.caps: expected names like CAP_SYS_ADMIN")
    if not all(isinstance(a, str) for a in arches):
        raise ProfileError(f"{where}.arches: expected names like amd64")
    kernel = value.get("minKernel")
    if kernel in (None, ""):
        return caps, arches, None
    if not isinstance(kernel, str):
        raise ProfileError(f"{where}.minKernel: expected a version like \"4.8\"")
    try:
        return caps, arches, _kernel(kernel)
    except ProfileError as exc:
        raise ProfileError(f"{where}.minKernel: {exc}") from None


# --- what applies to one container --------------------------------------------------------


def applies(rule: SeccompRule, caps: frozenset[str], goarch: str, kernel: tuple[int, int]) -> bool:
    return (all(c in caps for c in rule.caps)
            and not any(c in caps for c in rule.not_caps)
            and (not rule.arches or goarch in rule.arches)
            and goarch not in rule.not_arches
            and (rule.min_kernel is None or kernel >= rule.min_kernel)
            and (rule.below_kernel is None or kernel < rule.below_kernel))


def resolve(profile: SeccompProfile, caps: frozenset[str], goarch: str,
            kernel: tuple[int, int]) -> dict[str, Any]:
    """The OCI `linux.seccomp` object for a container whose bounding set is `caps`, on a
    `goarch` machine (Go's name) running `kernel` (major, minor)."""
    out: dict[str, Any] = {"defaultAction": "SCMP_ACT_" + profile.default_action.upper()}
    if profile.default_errno is not None:
        out["defaultErrnoRet"] = profile.default_errno
    native = SCMP_ARCH.get(goarch)
    arches: list[str] = list(profile.architectures)
    for arch, subs in profile.arch_map:
        if arch == native:
            arches = [arch, *subs]
            break
    if arches:
        out["architectures"] = ["SCMP_ARCH_" + a.upper() for a in arches]
    syscalls = []
    for rule in profile.rules:
        if not applies(rule, caps, goarch, kernel):
            continue
        call: dict[str, Any] = {"names": list(rule.names),
                                "action": "SCMP_ACT_" + rule.action.upper()}
        if rule.errno is not None:
            call["errnoRet"] = rule.errno
        if rule.args:
            call["args"] = [{"index": a.index, "value": a.value, "valueTwo": a.value_two,
                             "op": OPS[a.op]} for a in rule.args]
        syscalls.append(call)
    out["syscalls"] = syscalls
    return out
