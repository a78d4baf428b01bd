"""`up -d`, `exec`, `down` and the reading commands against a stack the daemon runs: they
talk to it over the unix socket and import neither aiohttp, pyroute2 nor the daemon's own
code (tests/unit/test_cli_imports.py has the rest)."""

from __future__ import annotations

from tests.integration.conftest import Linkd
from tests.unit.test_cli_imports import STACK, heavy, imported

# command, what its output shows, the heavy module it may use
COMMANDS = [
    (["ps"], "web-1", ()),
    (["ps", "--all"], "client-1", ()),
    (["logs", "web"], "", ()),
    (["env", "client"], "LINKD_WEB_URL=tcp:", ()),
    (["port", "web", "8080"], ":", ()),
    (["inspect", "web"], '"init_pid"', ()),
    (["dns", "web", "--from", "client"], "answer: NOERROR", ("dnslib",)),
]


def test_a_daemon_run_stack_from_the_command_line_imports_no_runtime(linkd: Linkd) -> None:
    linkd.write(STACK.replace("name: cheap\n", ""))
    result, modules = imported(["up", "-d", "-p", linkd.project], linkd.directory, {})
    assert result.returncode == 0, result.stderr
    assert "web-1" in result.stdout and "running" in result.stdout
    assert heavy(modules) == [], "linkd up -d imported them"
    for args, expect, allowed in COMMANDS:
        result, modules = imported([*args, "-p", linkd.project], linkd.directory, {})
        assert result.returncode == 0, result.stderr
        assert expect in result.stdout, result.stdout
        assert "linkd.client.api" in modules
        assert heavy(modules, allowed) == [], f"linkd {' '.join(args)} imported them"
    # What `exec` imported before it became the shim.
    args = ["exec", "-p", linkd.project, "web", "--", "echo", "inside"]
    result, modules = imported(args, linkd.directory, {})
    assert (result.returncode, result.stdout) == (0, "inside\n"), result.stderr
    assert heavy(modules) == [], "linkd exec imported them"
    # `down` too: the daemon takes the stack down.
    result, modules = imported(["down", "-p", linkd.project], linkd.directory, {})
    assert result.returncode == 0 and "removed" in result.stdout, result.stderr
    assert heavy(modules) == [], "linkd down imported them"
    assert linkd.project not in linkd.run("ps", "-a").stdout
