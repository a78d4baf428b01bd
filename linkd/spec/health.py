"""`services.X.healthcheck`, with Compose's forms and Docker's defaults.

`test` is `NONE` / `["NONE"]` (disabled), `["CMD", prog, args...]`, `["CMD-SHELL", cmd]` or
a plain string; the last two run through `/bin/sh -c` as Docker does. Missing durations
take the Dockerfile HEALTHCHECK defaults (interval 30s, timeout 30s, start_period 0s,
start_interval 5s, retries 3), which the `Healthcheck` model carries.
"""

from __future__ import annotations

from linkd.core.model import Healthcheck
from linkd.spec.nodes import At, Reader, given
from linkd.spec.values import quote

_KEYS = ("test", "interval", "timeout", "retries", "start_period", "start_interval", "disable")
_MS = 0.001  # Docker refuses intervals and timeouts under 1ms


def read_healthcheck(r: Reader, at: At) -> Healthcheck | None:
    f = r.fields(at, _KEYS)
    if f is None:
        return None
    disabled = bool(r.boolean(f["disable"])) if given(f, "disable") else False
    test: tuple[str, ...] = ()
    if test_at := given(f, "test"):
        parsed = _test(r, test_at)
        if parsed == ():  # NONE
            disabled = True
        elif parsed is not None:
            test = parsed
            if disabled:
                r.fail(test_at, "a test is given but disable is true; remove one of them")
    elif not disabled:
        # Compose keeps the image's test; linkd keeps the image's whole HEALTHCHECK.
        timings = [k for k in f if k not in ("test", "disable")]
        if timings:
            r.warn(at, f"a healthcheck without a test: the image's HEALTHCHECK applies as "
                       f"the image gives it ({', '.join(timings)} not applied); write the "
                       "test here to change them")
        return None
    retries_at = given(f, "retries")
    retries = r.integer(retries_at, 1) if retries_at else None
    return Healthcheck(
        test=() if disabled else test,
        interval=r.duration(given(f, "interval"), 30.0, _MS),
        timeout=r.duration(given(f, "timeout"), 30.0, _MS),
        retries=retries or 3,
        start_period=r.duration(given(f, "start_period"), 0.0, 0.0),
        start_interval=r.duration(given(f, "start_interval"), 5.0, _MS),
        disabled=disabled,
    )


def _test(r: Reader, at: At) -> tuple[str, ...] | None:
    """The argv to run; () for NONE; None when wrong (the problem is recorded)."""
    if not at.is_sequence:
        text = r.text(at)
        if text == "":
            r.fail(at, "expected a command, got an empty string")
        if not text:
            return None
        return () if text == "NONE" else ("/bin/sh", "-c", text)
    items = r.texts(at)
    if items is None:
        return None
    head, rest = (items[0], items[1:]) if items else ("", [])
    if head == "NONE" and not rest:
        return ()
    if head == "CMD" and rest:
        return tuple(rest)
    if head == "CMD-SHELL" and len(rest) == 1:
        return ("/bin/sh", "-c", rest[0])
    got = "[" + ", ".join(map(quote, items)) + "]"
    r.fail(
        at, f'expected ["CMD", "prog", "arg"...], ["CMD-SHELL", "command"] or ["NONE"], got {got}'
    )
    return None
