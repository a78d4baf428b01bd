"""`privileged`, `cap_add`, `cap_drop`, `security_opt`, `read_only` and `devices` of a
service: what changes its confinement (`linkd.core.confinement` has the defaults).

Compose's forms, with Docker's meanings:

- `privileged: true|false`; `read_only: true|false` (the image's root filesystem read-only;
  /tmp, /dev/shm and linkd's bound files stay as they are).
- `cap_add:` / `cap_drop:` lists of capability names, with or without `CAP_`, any case,
  or `ALL`.
- `security_opt:` a list of `no-new-privileges` (= true), `no-new-privileges:true|false`,
  `seccomp=unconfined`, `seccomp=FILE` (a profile in Docker's JSON format, the path
  relative to the stack file's directory, read once like an env file),
  `systempaths=unconfined` (no masked or read-only /proc paths); `label=...` and
  `apparmor=...` are accepted with a warning (linkd applies no SELinux or AppArmor
  profile). `:` and `=` both separate the option from its value, as Docker accepts.
- `devices:` a list of `HOST[:CONTAINER[:PERMISSIONS]]` (PERMISSIONS from `rwm`).

`read_only` and `devices` need an image: a host-command container runs on the host's own
root filesystem and sees the host's /dev.
"""

from __future__ import annotations

from collections.abc import Callable

from linkd.core.confinement import cap_name
from linkd.core.model import Device, Security
from linkd.core.seccomp_profile import ProfileError, parse_docker
from linkd.spec.nodes import At, Reader, given
from linkd.spec.values import quote

KEYS = ("privileged", "cap_add", "cap_drop", "security_opt", "read_only", "devices")
_PROFILE_LIMIT = 1 << 20  # characters of a seccomp profile (the env file reader's bound)


def read_security(r: Reader, fields: dict[str, At], has_image: bool,
                  read: Callable[[str], str | Exception]) -> Security:
    """The service's Security from its fields; `read(name)` gives a file's text or why not."""
    values: dict[str, object] = {}
    if at := given(fields, "privileged"):
        values["privileged"] = r.boolean(at) or False
    if at := given(fields, "read_only"):
        read_only = r.boolean(at) or False
        if read_only and not has_image:
            r.fail(at, "read_only needs an image: a host-command container runs on the "
                       "host's own root filesystem; remove it or give the service an image")
        values["read_only"] = read_only
    for key in ("cap_add", "cap_drop"):
        if at := given(fields, key):
            values[key] = _caps(r, at)
    if at := given(fields, "security_opt"):
        values.update(_security_opt(r, at, read))
    if at := given(fields, "devices"):
        if not has_image:
            r.fail(at, "devices needs an image: a host-command container sees the host's "
                       "/dev already; remove it")
        else:
            values["devices"] = _devices(r, at)
    return Security(**values)  # type: ignore[arg-type]


def _caps(r: Reader, at: At) -> tuple[str, ...]:
    names: list[str] = []
    for item in r.items(at) or []:
        text = r.text(item)
        if text is None:
            continue
        try:
            name = cap_name(text)
        except ValueError as exc:
            r.fail(item, str(exc))
            continue
        if name not in names:
            names.append(name)
    return tuple(names)


def _security_opt(r: Reader, at: At, read: Callable[[str], str | Exception]
                  ) -> dict[str, object]:
    values: dict[str, object] = {}
    for item in r.items(at) or []:
        text = r.text(item)
        if text is None:
            continue
        key, value = _split(text)
        if key == "no-new-privileges":
            if value in (None, "true"):
                values["no_new_privileges"] = True
            elif value == "false":
                values["no_new_privileges"] = False
            else:
                r.fail(item, f"expected no-new-privileges, no-new-privileges:true or "
                             f"no-new-privileges:false, got {quote(text)}")
        elif key == "seccomp":
            if not value:
                r.fail(item, "expected seccomp=unconfined or seccomp=FILE (a profile in "
                             "Docker's JSON format)")
            elif value == "unconfined":
                values["seccomp"] = "unconfined"
            else:
                profile = _profile(r, item, value, read)
                if profile is not None:
                    values.update(seccomp="file", seccomp_file=value, seccomp_profile=profile)
        elif key == "systempaths":
            if value != "unconfined":
                r.fail(item, f"expected systempaths=unconfined, got {quote(text)}")
            else:
                values["system_paths"] = False
        elif key in ("label", "apparmor"):
            r.warn(item, f"{key} is accepted but linkd applies no "
                         f"{'SELinux' if key == 'label' else 'AppArmor'} profile; ignored")
        else:
            r.fail(item, f"unknown security option {quote(text)}: linkd takes "
                         "no-new-privileges[:true|false], seccomp=unconfined|FILE, "
                         "systempaths=unconfined, label=... and apparmor=... (ignored)")
    return values


def _split(text: str) -> tuple[str, str | None]:
    """`key=value`, `key:value` or `key` (Docker takes both separators)."""
    cut = min((i for i in (text.find("="), text.find(":")) if i >= 0), default=-1)
    if cut < 0:
        return text.strip(), None
    return text[:cut].strip(), text[cut + 1:].strip()


def _profile(r: Reader, item: At, name: str, read: Callable[[str], str | Exception]
             ) -> object | None:
    text = read(name)
    if isinstance(text, Exception):
        reason = getattr(text, "strerror", None) or str(text)
        r.fail(item, f"cannot read seccomp profile {quote(name)}: {reason}")
        return None
    if len(text) > _PROFILE_LIMIT:
        r.fail(item, f"seccomp profile {quote(name)} is longer than {_PROFILE_LIMIT} characters")
        return None
    try:
        return parse_docker(text)
    except ProfileError as exc:
        r.fail(item, f"seccomp profile {quote(name)}: {exc}")
        return None


def _devices(r: Reader, at: At) -> tuple[Device, ...]:
    devices: list[Device] = []
    for item in r.items(at) or []:
        text = r.text(item)
        if text is None:
            continue
        parts = text.split(":")
        if "=" in parts[0]:
            r.fail(item, f"CDI device names ({quote(text)}) are not supported; give a path "
                         "like /dev/fuse")
            continue
        if len(parts) > 3 or not all(parts):
            r.fail(item, f"expected HOST[:CONTAINER[:PERMISSIONS]], got {quote(text)}")
            continue
        source = parts[0]
        target = parts[1] if len(parts) > 1 else source
        permissions = parts[2] if len(parts) > 2 else "rwm"
        if len(parts) == 2 and not target.startswith("/") and set(target) <= set("rwm"):
            target, permissions = source, parts[1]  # HOST:PERMISSIONS, as Docker reads it
        problem = None
        if not source.startswith("/") or not target.startswith("/"):
            problem = "device paths must be absolute (like /dev/fuse)"
        elif ".." in target.split("/") or ".." in source.split("/"):
            problem = "device paths may not contain .."
        elif not permissions or not set(permissions) <= set("rwm") or len(
                set(permissions)) != len(permissions):
            problem = f"permissions are letters from rwm, got {quote(permissions)}"
        if problem:
            r.fail(item, f"{problem}: {quote(text)}")
            continue
        devices.append(Device(source, target, permissions))
    return tuple(devices)


def dump_security(security: Security) -> dict[str, object]:
    """The keys as a stack file would say them, for `linkd config` (linkd.spec.dump)."""
    out: dict[str, object] = {}
    if security.privileged:
        out["privileged"] = True
    if security.read_only:
        out["read_only"] = True
    if security.cap_add:
        out["cap_add"] = list(security.cap_add)
    if security.cap_drop:
        out["cap_drop"] = list(security.cap_drop)
    opts = []
    if security.no_new_privileges is not None:
        opts.append(f"no-new-privileges:{str(security.no_new_privileges).lower()}")
    if security.seccomp == "unconfined":
        opts.append("seccomp=unconfined")
    elif security.seccomp == "file":
        opts.append(f"seccomp={security.seccomp_file}")
    if not security.system_paths:
        opts.append("systempaths=unconfined")
    if opts:
        out["security_opt"] = opts
    if security.devices:
        out["devices"] = [f"{d.source}:{d.target}:{d.permissions}" for d in security.devices]
    return out
