"""linkd.errors.user_error: what a user is shown for an error out of task groups."""

from __future__ import annotations

from linkd.errors import ConflictError, NotFoundError, SeveralErrors, SpecError, user_error


def test_a_linkd_error_however_deep_in_groups_is_itself() -> None:
    error = NotFoundError("image x is not in the store")
    nested = ExceptionGroup("outer", [ExceptionGroup("inner", [ExceptionGroup("core", [error])])])
    assert user_error(nested) is error
    assert user_error(error) is error


def test_several_linkd_errors_are_said_together() -> None:
    first, second = NotFoundError("no image a"), ConflictError("subnet taken")
    shown = user_error(ExceptionGroup("g", [first, ExceptionGroup("h", [second])]))
    assert isinstance(shown, SeveralErrors)
    assert shown.errors == [first, second]
    assert str(shown) == "no image a\nsubnet taken"
    assert (shown.status, shown.exit_code) == (404, 1)


def test_anything_else_inside_stays_the_group_for_its_traceback() -> None:
    group = ExceptionGroup("g", [SpecError([("services", None, "bad")]), KeyError("bug")])
    assert user_error(group) is group
    bug = ValueError("bug")
    assert user_error(bug) is bug
