"""etcd's client (aetcd, and grpcio under it) is for a daemon started with --cluster:
the daemon without it, `linkd up -d` and `linkd node ls` import none of it. Each runs
in a fresh interpreter that lists what it imported (the daemon's modules are imported,
not run: running one needs root and its own host, tests/integration/test_cluster.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

LIST = "import sys; print('\\n'.join(sorted(sys.modules)))"


def modules_after(code: str) -> set[str]:
    done = subprocess.run([sys.executable, "-c", f"{code}; {LIST}"], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def etcd_modules(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in ("aetcd", "grpc")
                  or m.startswith("linkd.runtime.cluster.") or m == "linkd.runtime.cluster")


def test_a_daemon_without_cluster_imports_no_etcd_client() -> None:
    modules = modules_after(
        "import linkd.cli.lifecycle, linkd.runtime.daemon.api, linkd.runtime.daemon.daemon; "
        "from linkd.cli.main import _parser; "
        "a = _parser(['daemon']).parse_args(['daemon']); "
        "assert linkd.cli.lifecycle._cluster_config(a) is None")
    assert "linkd.runtime.daemon.api" in modules
    assert etcd_modules(modules) == []


def test_node_ls_imports_no_etcd_client() -> None:
    modules = modules_after("import linkd.cli.nodes")
    assert etcd_modules(modules) == []


def test_the_cluster_runtime_does_import_it() -> None:
    """The check above can fail: importing the membership brings aetcd."""
    modules = modules_after("import linkd.runtime.cluster.membership")
    assert "aetcd" in modules
