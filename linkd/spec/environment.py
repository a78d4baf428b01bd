"""A service's environment: `env_file` then `environment`, as Compose merges them, and
the files a stack names, each read once.

Files come through the caller's `read_text` (linkd.loader gives one that reads bounded
regular files beneath the stack's directory); an env file that cannot be read is a
problem where it is required, and nothing where `required: false`. The characters env
files add to the stack are bounded like the document's (`bounded_yaml.MAX_TEXT`),
counting a file again for every service that names it, so a small stack cannot name one
large file a thousand times. `read` serves the other files a stack names (a seccomp
profile) from the same cache.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from linkd.spec import bounded_yaml
from linkd.spec.nodes import At, Reader, given
from linkd.spec.values import Bad, parse_env_file, quote


class Environment:
    """The environments of a stack's services, and the files they name."""

    def __init__(
        self, r: Reader, host_env: Mapping[str, str], read_text: Callable[[str], str] | None
    ) -> None:
        self.r = r
        self.host_env = host_env
        self.read_text = read_text
        self.files: dict[str, str | Exception] = {}  # files read, by name
        self.env_text = 0  # characters env files added, counting each use

    def of(self, f: dict[str, At]) -> tuple[tuple[str, str], ...]:
        env: dict[str, str] = {}  # env_file first, `environment` overrides (Compose order)
        if files := given(f, "env_file"):
            for item in (self.r.items(files) or []) if files.is_sequence else [files]:
                env.update(self._file(item))
        at = given(f, "environment")
        if at is None:
            return tuple(env.items())
        if at.is_sequence:
            for item in self.r.items(at) or []:
                entry = self.r.text(item)
                if entry is None:
                    continue
                key, eq, value = entry.partition("=")
                if not key:
                    self.r.fail(item, f"expected KEY=VALUE or KEY, got {quote(entry)}")
                elif eq:
                    env[key] = value
                elif key in self.host_env:  # bare KEY: the host's value, or nothing
                    env[key] = self.host_env[key]
        else:
            for key, child in self.r.pairs(at) or []:
                if "=" in key:
                    self.r.fail(child, f'expected a variable name without "=", got {quote(key)}')
                elif not child.is_null:
                    if (raw := self.r.raw(child)) is not None:
                        env[key] = raw
                elif key in self.host_env:
                    env[key] = self.host_env[key]
        return tuple(env.items())

    def _file(self, item: At) -> list[tuple[str, str]]:
        path_at, required, raw = item, True, False
        if item.is_mapping:
            ef = self.r.fields(item, ("path", "required", "format")) or {}
            if "path" not in ef:
                self.r.fail(item, "an env_file entry needs a path")
                return []
            path_at = ef["path"]
            if req := given(ef, "required"):
                required = self.r.boolean(req) is not False
            if (fmt := given(ef, "format")) and (kind := self.r.text(fmt)) is not None:
                if kind not in ("raw", "dotenv"):
                    self.r.fail(fmt, f'expected format "raw" or "dotenv", got {quote(kind)}')
                raw = kind == "raw"
        name = self.r.text(path_at)
        if name is None:
            return []
        text = self.read(name)
        if isinstance(text, Exception):
            if required or self.read_text is None:
                reason = getattr(text, "strerror", None) or str(text)
                self.r.fail(path_at, f"cannot read env file {quote(name)}: {reason}")
            return []
        if self.env_text > bounded_yaml.MAX_TEXT:
            return []  # reported once already
        self.env_text += len(text)
        if self.env_text > bounded_yaml.MAX_TEXT:
            self.r.fail(
                path_at,
                f"env files add more than {bounded_yaml.MAX_TEXT} characters to the stack "
                "(linkd's limit; a file counts again for every service that names it); "
                "put shared variables in fewer, smaller files",
            )
            return []
        try:
            return parse_env_file(text, name, self.host_env, raw=raw)
        except Bad as exc:
            self.r.fail(path_at, str(exc))
            return []

    def read(self, name: str) -> str | Exception:
        """An env file's (or a seccomp profile's) text, or why it cannot be read; each file
        is read once."""
        if name not in self.files:
            if self.read_text is None:
                self.files[name] = ValueError("no file reader given")
            else:
                try:
                    self.files[name] = self.read_text(name)
                except (OSError, UnicodeError) as exc:
                    self.files[name] = exc
        return self.files[name]
