"""linkd.loader: where a stack's variables come from (Compose's .env and --env-file)."""

from __future__ import annotations

from pathlib import Path

import pytest

from linkd import loader
from linkd.core.api_schema import ApiError, parse_create
from linkd.errors import SpecError

STACK = """
services:
  app:
    command: sleep 1
    environment:
      TAG: ${TAG}
      ONLY: ${ONLY}
      GREETING: ${GREETING:?set GREETING in .env}
"""


def source(directory: Path, env: dict[str, str], env_files: tuple[str, ...] | None = None
           ) -> loader.StackSource:
    return loader.StackSource(STACK, source="linkd.yaml", directory=directory,
                              project_name="t", environment=env, env_files=env_files)


def environment(stack_env: tuple[tuple[str, str], ...]) -> dict[str, str]:
    return dict(stack_env)


def test_the_projects_env_file_fills_what_the_shell_does_not_set(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "# the project's defaults\nTAG=from-dotenv\nexport ONLY='only in .env'\n"
        'GREETING="hello\\nworld"  \n'
    )
    stack = loader.load(source(tmp_path, {"TAG": "from-shell"}))
    env = environment(stack.service("app").environment)
    assert env["TAG"] == "from-shell"  # the shell wins, as in Compose
    assert env["ONLY"] == "only in .env"
    assert env["GREETING"] == "hello\nworld"


def test_no_env_file_is_nothing_and_required_variables_still_say_so(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"set GREETING in \.env"):
        loader.load(source(tmp_path, {"TAG": "a", "ONLY": "b"}))


def test_env_files_replace_the_dotenv_and_a_missing_one_is_named(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("TAG=dotenv\nONLY=dotenv\nGREETING=dotenv\n")
    (tmp_path / "ci.env").write_text("TAG=ci\nONLY=ci\n")
    (tmp_path / "more.env").write_text("GREETING=more\nONLY=more\n")
    stack = loader.load(source(tmp_path, {}, ("ci.env", str(tmp_path / "more.env"))))
    assert environment(stack.service("app").environment) == {
        "TAG": "ci", "ONLY": "more", "GREETING": "more"}  # later files win
    with pytest.raises(SpecError, match=r"missing\.env"):
        loader.load(source(tmp_path, {}, ("missing.env",)))


def test_a_stack_built_in_python_reads_no_env_file(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("TAG=dotenv\nONLY=dotenv\nGREETING=dotenv\n")
    with pytest.raises(SpecError, match="GREETING"):
        loader.load(source(tmp_path, {}, ()))


def test_a_bad_env_file_line_is_an_error_naming_the_file_and_line(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("TAG=ok\nnot a variable line\n")
    with pytest.raises(SpecError, match=r"\.env.*line 2"):
        loader.load(source(tmp_path, {}))


def test_the_api_takes_env_files_as_a_list_of_names() -> None:
    body = {"yaml": "services: {}", "directory": "/srv", "env_files": [".env", "ci.env"]}
    assert parse_create(body).env_files == (".env", "ci.env")
    assert parse_create({"yaml": "services: {}", "directory": "/srv"}).env_files == ()
    with pytest.raises(ApiError) as info:
        parse_create({"yaml": "x", "directory": "/", "env_files": ".env"})
    assert ("body.env_files", "expected a list of file names") in info.value.problems


def test_the_dotenv_interpolates_as_compose_does(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "BASE=/srv\nTAG=${BASE}/app\nONLY='${BASE} kept'\n"
        'GREETING="at \\$BASE: ${HOME_DIR:-none}"\nPASSWORD=pa$5word\n'
    )
    stack = loader.load(source(tmp_path, {}))
    env = environment(stack.service("app").environment)
    assert env == {"TAG": "/srv/app", "ONLY": "${BASE} kept", "GREETING": "at $BASE: none"}
    assert loader.variables(source(tmp_path, {}))["PASSWORD"] == "pa$5word"  # no variable


def test_env_file_formats(tmp_path: Path) -> None:
    """A service's env_file is not interpolated (Compose's rule); `format: raw` keeps
    every value as written, quotes and all."""
    (tmp_path / "app.env").write_text('A="x" # y\nB=${A}\n')
    text = """
services:
  app:
    command: sleep 1
    env_file:
      - app.env
  raw:
    command: sleep 1
    env_file: [{path: app.env, format: raw}]
"""
    stack = loader.load(loader.StackSource(text, source="s", directory=tmp_path,
                                           project_name="t", env_files=()))
    assert environment(stack.service("app").environment) == {"A": "x", "B": "${A}"}
    assert environment(stack.service("raw").environment) == {"A": '"x" # y', "B": "${A}"}
    bad = text.replace("format: raw", "format: yaml")
    with pytest.raises(SpecError, match='expected format "raw" or "dotenv"'):
        loader.load(loader.StackSource(bad, source="s", directory=tmp_path,
                                       project_name="t", env_files=()))
