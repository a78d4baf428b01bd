"""Proof that a failing or interrupted test, and the whole suite, leave nothing behind."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests.integration.conftest import REPO, snapshot

FAILING_TEST = '''
from tests.integration.conftest import Linkd

def test_fails_with_a_stack_up(linkd: Linkd) -> None:
    linkd.write("""
services:
  a:
    command: sleep 300
  b:
    command: sleep 300
""")
    linkd.up()
    assert False, "this test fails on purpose with its stack up"
'''


def test_a_failing_test_still_takes_its_stack_down(tmp_path: Path) -> None:
    before = snapshot()
    test_file = tmp_path / "test_inner.py"
    test_file.write_text(textwrap.dedent(FAILING_TEST))
    inner = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "--rootdir", str(REPO), "--confcutdir", str(REPO / "tests"),
         "-p", "tests.integration.conftest", str(test_file)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert "1 failed" in inner.stdout, inner.stdout + inner.stderr
    assert "this test fails on purpose" in inner.stdout
    assert (snapshot() - before).empty()
