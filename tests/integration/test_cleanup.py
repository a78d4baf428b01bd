"""Proof that a failing or interrupted test, and the whole suite, leave nothing behind."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from linkd.core import names
from linkd.runtime.kernel.netlink import Kernel
from tests.integration.conftest import REPO, Linkd, snapshot

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


def test_an_up_that_fails_while_namespaces_are_made_leaves_none(linkd: Linkd) -> None:
    """up makes the containers' namespaces ahead (a helper process creates them while
    the bridge is made); an up that fails meanwhile must not leave one that appeared
    after its teardown looked. The failure is real: a foreign link holds the name of
    the stack's bridge."""
    linkd.write("""
        services:
          a: {command: sleep 300, scale: 30}
    """)
    blocker = names.bridge_name(linkd.project, "default")
    subprocess.run(["ip", "link", "add", blocker, "type", "veth", "peer", "name",
                    blocker + "p"], check=True)
    try:
        failed = linkd.run("up", "-d", "-p", linkd.project, check=False)
        assert failed.returncode != 0 and "already exists" in failed.stderr, failed.stderr
        assert not Kernel.netns_names(names.netns_prefix(linkd.project))
    finally:
        subprocess.run(["ip", "link", "del", blocker], check=False)
