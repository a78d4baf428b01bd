"""One error hierarchy for linkd, with messages a user can act on.

Every error names the object it is about and, where there is one, the fix. `status` is
the HTTP status the control API answers with (as h11's `error_status_hint`), and
`exit_code` what the CLI exits with.
"""

from __future__ import annotations


class LinkdError(Exception):
    """Base of every error linkd raises on purpose."""

    status = 500
    exit_code = 1


class SpecError(LinkdError):
    """The stack file (or a request built like one) is invalid.

    `problems` lists every problem found, each as `(path, line, message)`; the parser
    reports all of them at once so a user fixes the file in one pass.
    """

    status = 400
    exit_code = 2

    def __init__(self, problems: list[tuple[str, int | None, str]], source: str = "") -> None:
        self.problems = problems
        self.source = source
        super().__init__(self._render())

    def _render(self) -> str:
        where = f"{self.source}: " if self.source else ""
        lines = []
        for path, line, message in self.problems:
            at = f" (line {line})" if line is not None else ""
            lines.append(f"{where}{path}{at}: {message}")
        return "\n".join(lines)


class ConventionError(LinkdError):
    """A convention file is invalid, or a link cannot be rendered with it.

    Shaped like `SpecError` (every problem at once, as `(key, line, message)`), but its own
    class: the CLI says "invalid stack file" for a `SpecError`, and a bad convention file is
    a different file to fix.
    """

    status = 400
    exit_code = 2

    def __init__(self, problems: list[tuple[str, int | None, str]], source: str = "") -> None:
        self.problems = problems
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(
            "\n".join(
                f"{where}{key}{f' (line {line})' if line is not None else ''}: {message}"
                for key, line, message in problems
            )
        )


class UsageError(LinkdError):
    """A command-line option or setting that cannot work (`--tcp` on a public address, a
    token file others can read); the message names the option and the fix."""

    status = 400
    exit_code = 2


class NotFoundError(LinkdError):
    """A stack, service or container that does not exist."""

    status = 404


class ConflictError(LinkdError):
    """The request clashes with what exists (a stack already up, a subnet in use)."""

    status = 409


class KernelError(LinkdError):
    """A kernel operation failed; carries the errno when there is one."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        self.errno = errno
        super().__init__(message)


class ContainerError(LinkdError):
    """A container process could not be started, stopped or entered."""


class TeardownError(LinkdError):
    """Teardown finished but some steps failed; `errors` lists each one."""

    def __init__(self, what: str, errors: list[BaseException]) -> None:
        self.errors = errors
        detail = "; ".join(str(e) for e in errors)
        super().__init__(
            f"{what}: {len(errors)} step(s) failed: {detail} (the stack is left as failed: "
            "fix the cause, then `linkd down` again removes what is left)"
        )


class ReferenceFormatError(LinkdError):
    """An image reference (`redis:7`, `host:5000/a/b@sha256:...`) that breaks Docker's
    grammar (linkd.core.reference); names the reference and the rule."""

    status = 400
    exit_code = 2

    def __init__(self, reference: str, rule: str, detail: str) -> None:
        self.reference = reference
        self.rule = rule
        super().__init__(f"image reference {reference!r}: {detail} (rule: {rule})")


class RegistryError(LinkdError):
    """A pull failed on the registry's side or on the way there (unreachable, an HTTP
    error, a refused manifest); names the registry, the reference and what went wrong."""

    status = 502

    def __init__(self, registry: str, reference: str, detail: str) -> None:
        self.registry = registry
        self.reference = reference
        self.detail = detail
        super().__init__(f"pull {reference} from {registry}: {detail}")


class CredentialError(LinkdError):
    """Registry credentials that cannot be had: a Docker config file that is not one
    (names the file and the key), a credential helper that failed, a login the registry
    refused. Never carries a password or a token."""

    status = 400


class ImageError(LinkdError):
    """An image archive or layout breaks a rule.

    Names the image, the entry (file, blob or layer member) and the rule broken, so
    `linkd image load` says what to fix: `image busybox.tar: layer sha256:ab..: ../x:
    layer entries may not climb out (rule: '..' in path)`.
    """

    status = 400
    exit_code = 2

    def __init__(self, image: str, entry: str, rule: str, detail: str) -> None:
        self.image = image
        self.entry = entry
        self.rule = rule
        super().__init__(f"image {image}: {entry}: {detail} (rule: {rule})")


class SeveralErrors(LinkdError):
    """Several tasks of one task group failed on purpose at once; `errors` lists each
    (its status and exit code are the first one's)."""

    def __init__(self, errors: list[LinkdError]) -> None:
        self.errors = errors
        self.status = errors[0].status
        self.exit_code = errors[0].exit_code
        super().__init__("\n".join(str(e) for e in errors))


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions in `exc` with every (nested) exception group opened."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]


def user_error(exc: BaseException) -> BaseException:
    """What a user is shown for `exc`.

    A task group (asyncio.TaskGroup) wraps whatever its tasks raise in an ExceptionGroup,
    a group within a group for each level of nesting, and its traceback hides the one
    line worth reading. When everything inside is a LinkdError, that error is what the
    user sees (several: a `SeveralErrors` saying each). Anything else comes back as it
    is: an error linkd did not raise on purpose is a bug, and its traceback is wanted.
    """
    found = leaves(exc)
    if not all(isinstance(e, LinkdError) for e in found):
        return exc
    errors = [e for e in found if isinstance(e, LinkdError)]  # for the type checker
    return errors[0] if len(errors) == 1 else SeveralErrors(errors)
