"""The commands people type all day import only what they use.

`linkd ps`, `logs`, `env`, `config`, `port`, `dns`, `exec`, `down` and `--help` answer at
once because they never import the daemon's server (aiohttp), netlink (pyroute2) or the
supervisor: each command here runs in a fresh interpreter, which lists the modules it
imported as it exits (or as it execs). A stack that no daemon runs needs no root; the same
commands against a daemon-run stack are in tests/integration/test_cli_imports.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# What only `up` in the foreground, `daemon`, `image` and the `down` of a stack no daemon
# runs may import (and `dns`, dnslib).
HEAVY = (
    "dnslib",
    "aiohttp",
    "pyroute2",
    "linkd.cli.lifecycle",
    "linkd.runtime.daemon.api",
    "linkd.runtime.daemon.daemon",
    "linkd.runtime.stack.supervisor",
    "linkd.runtime.kernel.netlink",
    "aetcd",  # etcd's client and grpc: a daemon started with --cluster only
    "grpc",
)

STACK = """\
name: cheap
services:
  web:
    command: sleep 300
    ports: ["8080"]
  client:
    command: sleep 300
    links: [web]
"""


# `python -m linkd ARGS`, writing the names of every module it imported to the file
# named by the first argument as it exits, or as it execs (`exec` becomes the shim), which
# skips atexit (-X importtime would miss importlib's imports).
RUN = """\
import atexit, os, runpy, sys
out = sys.argv.pop(1)
def said():
    open(out, "w").write("\\n".join(sorted(sys.modules)))
def execv(*args, execv=os.execv):
    said()
    execv(*args)
atexit.register(said)
os.execv = execv
sys.argv[0] = "linkd"
runpy.run_module("linkd", run_name="__main__", alter_sys=True)
"""


def imported(args: list[str], cwd: Path, env: dict[str, str]
             ) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run `python -m linkd ARGS`: its result and the modules it imported."""
    out = cwd / ".modules"
    result = subprocess.run(
        [sys.executable, "-c", RUN, str(out), *args],
        cwd=cwd, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
    )
    modules = set(out.read_text().split())
    out.unlink()
    return result, modules


def heavy(modules: set[str], allowed: tuple[str, ...] = ()) -> list[str]:
    """The imported modules (or their submodules) that a reading command must not need."""
    return sorted(
        m for m in modules
        if any(m == h or m.startswith(h + ".") for h in HEAVY if h not in allowed)
    )


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "linkd.yaml").write_text(STACK)
    return tmp_path


@pytest.fixture
def run_dir(tmp_path: Path) -> dict[str, str]:
    """A run directory of its own, so no stack of the machine's is found."""
    root = tmp_path / "run"
    return {"LINKD_RUN_DIR": str(root), "LINKD_SOCKET": str(root / "linkd.sock")}


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["--help"], 0),
        (["ps", "--help"], 0),
        (["--version"], 0),
        (["config"], 0),
        (["config", "-f", "linkd.yaml"], 0),
        (["env", "client"], 0),  # not up: provisional addresses from a dry plan
        (["ps"], 1),  # not up
        (["ps", "-p", "nothing"], 1),
        (["ps", "--all"], 0),
        (["logs", "web"], 1),
        (["port", "web", "8080"], 1),
        (["inspect"], 1),
        (["exec", "web", "--", "true"], 1),  # not up
        (["down", "--forget"], 0),  # not up: said so, its lease forgotten
    ],
)
def test_reading_commands_import_no_runtime(workdir: Path, run_dir: dict[str, str],
                                            args: list[str], code: int) -> None:
    result, modules = imported(args, workdir, run_dir)
    assert result.returncode == code, result.stderr
    assert "linkd.cli.main" in modules
    assert heavy(modules) == [], f"linkd {' '.join(args)} imported them"


def test_dns_imports_its_codec_and_nothing_heavier(workdir: Path, run_dir: dict[str, str]
                                                   ) -> None:
    result, modules = imported(["dns", "web", "--from", "client"], workdir, run_dir)
    assert result.returncode == 1 and "is not up" in result.stderr
    assert heavy(modules, allowed=("dnslib",)) == []


def test_up_still_finds_the_runtime(workdir: Path, run_dir: dict[str, str]) -> None:
    """The commands that drive the runtime are imported when they run (this `up` fails
    after importing it, before touching anything)."""
    result, modules = imported(["up", "--exit-code-from", "nosuch"], workdir, run_dir)
    assert result.returncode == 1 and "no service nosuch" in result.stderr
    assert "linkd.cli.lifecycle" in modules and "linkd.runtime.stack.supervisor" in modules


def test_version_names_the_installed_distribution(tmp_path: Path) -> None:
    from importlib import metadata

    import linkd

    result = subprocess.run([sys.executable, "-m", "linkd", "--version"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        expected = metadata.version("linkd")
    except metadata.PackageNotFoundError:
        expected = linkd.__version__
    assert result.returncode == 0
    assert result.stdout.startswith(f"linkd {expected}")


def test_version_from_a_source_tree_that_is_not_installed(tmp_path: Path) -> None:
    """Without site-packages (-S), and from a directory holding only the package (the
    checkout's own linkd.egg-info would answer), no distribution is found."""
    import linkd

    (tmp_path / "linkd").symlink_to(REPO / "linkd")
    result = subprocess.run([sys.executable, "-S", "-m", "linkd", "--version"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert result.stdout == (f"linkd {linkd.__version__} (not installed; from "
                             f"{tmp_path / 'linkd'})\n")
