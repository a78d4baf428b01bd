"""linkd as its users get it: a wheel (built from the sdist, so both are complete)
installed into a fresh virtual environment outside the checkout, with nothing of the
source tree on its path, running the demo.

pip reaches the package index from the real host's network namespace (the session runs
in a simulated host, which has no way out); everything else runs in the simulated host.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.simhost import on_real_host

REPO = Path(__file__).resolve().parents[2]
CONVENTIONS = sorted(p.name for p in (REPO / "conventions").glob("*.yaml"))
# What linkd reads or runs at run time, beside its modules.
RUNTIME_FILES = [
    "linkd/py.typed",
    "linkd/runtime/containers/shim.py",
    *(f"linkd/runtime/containers/shim_{part}.py"
      for part in ("base", "command", "entry", "mounts")),
    "linkd/runtime/containers/health_agent.py",
    "linkd/core/seccomp_default.rules",  # the default seccomp policy (containers/confine)
    *(f"linkd/builtin_conventions/{name}" for name in CONVENTIONS),
    *(f"linkd/ui/{name}" for name in ("index.html", "ui.js", "ui.css")),  # the daemon's page
]


@pytest.fixture(scope="module")
def dist() -> Iterator[Path]:
    out = Path(tempfile.mkdtemp(prefix="lkt-dist-", dir="/var/tmp"))
    try:
        # sdist first, then the wheel built from it: a file the sdist lacks fails here.
        subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out),
                        str(REPO)], check=True, capture_output=True, timeout=300)
        yield out
    finally:
        shutil.rmtree(out, ignore_errors=True)


def test_the_wheel_and_the_sdist_carry_what_linkd_reads_at_run_time(dist: Path) -> None:
    assert CONVENTIONS, "no built-in conventions in the checkout"
    (wheel,) = dist.glob("linkd-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert [f for f in RUNTIME_FILES if f not in names] == []
    (sdist,) = dist.glob("linkd-*.tar.gz")
    with tarfile.open(sdist) as tar:
        members = {m.name.split("/", 1)[1] for m in tar.getmembers() if "/" in m.name}
    assert [f for f in RUNTIME_FILES if f not in members] == []
    # Real files, not a link back into a checkout the user does not have.
    with tarfile.open(sdist) as tar:
        links = [m.name for m in tar.getmembers() if m.issym() or m.islnk()]
    assert links == []


def test_a_wheel_in_a_fresh_venv_outside_the_checkout_runs_the_demo(dist: Path) -> None:
    (wheel,) = dist.glob("linkd-*.whl")
    home = Path(tempfile.mkdtemp(prefix="lkt-install-", dir="/var/tmp"))
    try:
        venv = home / "venv"
        subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
             str(wheel)],
            check=True, capture_output=True, timeout=600, env=env, preexec_fn=on_real_host,
        )
        demo = shutil.copytree(REPO / "examples" / "demo", home / "demo")
        # A run directory of its own: the demo's lease (kept after down, by design) goes
        # with it.
        env["LINKD_RUN_DIR"] = str(home / "run")
        linkd = str(venv / "bin" / "linkd")

        def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
            return subprocess.run([linkd, *args], cwd=demo, env=env, capture_output=True,
                                  text=True, timeout=timeout)

        where = subprocess.run([str(venv / "bin" / "python"), "-c",
                                "import linkd; print(linkd.__file__)"],
                               cwd=home, env=env, capture_output=True, text=True, check=True)
        assert where.stdout.startswith(str(venv)), where.stdout  # not the checkout
        version = run("--version")
        assert version.returncode == 0 and "0.1.0" in version.stdout, version
        config = run("config", "-f", "linkd.yaml")
        assert config.returncode == 0, config.stderr
        assert "worker" in config.stdout
        up = run("up", "-f", "linkd.yaml", "--exit-code-from", "worker", timeout=300)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        assert "every service was reached by name" in up.stdout, up.stdout[-3000:]
    finally:
        shutil.rmtree(home, ignore_errors=True)
