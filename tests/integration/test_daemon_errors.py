"""Errors reach the user as what they are: a teardown that failed is a failed `down`
(an error status from the API, a non-zero exit from the CLI, each failure said), and an
error raised deep inside task groups is its message, not an ExceptionGroup traceback."""

from __future__ import annotations

import subprocess

import pytest

from linkd import Stack
from linkd.errors import LinkdError
from tests.integration.conftest import Linkd

MISSING_IMAGE = """
    services:
      app:
        image: linkd-test/never-loaded:1
"""


def said_plainly(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    assert "ExceptionGroup" not in result.stderr, result.stderr
    assert fragment in result.stderr, result.stderr


def test_up_in_the_foreground_of_a_missing_image_says_only_the_error(linkd: Linkd) -> None:
    linkd.write(MISSING_IMAGE)
    result = linkd.run("up", "-p", linkd.project, check=False)
    said_plainly(result, "image linkd-test/never-loaded:1 is not in the store")


def test_up_d_of_a_missing_image_says_only_the_error(linkd: Linkd) -> None:
    linkd.write(MISSING_IMAGE)
    result = linkd.run("up", "-d", "-p", linkd.project, check=False)
    said_plainly(result, "image linkd-test/never-loaded:1 is not in the store")



def test_the_python_api_raises_the_error_itself(linkd: Linkd) -> None:
    spec = {"services": {"app": {"image": "linkd-test/never-loaded:1"}}}
    with pytest.raises(LinkdError, match="never-loaded:1 is not in the store") as caught:
        Stack.start(spec, name=linkd.project, directory=linkd.directory)
    assert not isinstance(caught.value, BaseExceptionGroup)
