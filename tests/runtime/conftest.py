"""Fixtures of the runtime tests: a real three-member etcd (tests/etcd.py), one per test
module that shares it, or one of a test's own (a test that kills or stops members); a
daemon whose one container's log the test writes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from linkd.runtime.daemon.daemon import Daemon
from linkd.runtime.stack import store
from tests.etcd import EtcdCluster, etcd_cluster


@pytest.fixture
def daemon_with_a_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Daemon, Path]:
    """A daemon with a stack `shop` and a container `web-1`, as far as the logs endpoint
    asks, and where that container's log goes (not yet there: the test makes it)."""
    monkeypatch.setenv("LINKD_RUN_DIR", str(tmp_path))
    daemon = Daemon()
    monkeypatch.setattr(daemon, "hosted", lambda name: None)
    monkeypatch.setattr(daemon, "_container", lambda hosted, name: None)
    log = store.log_path("shop", "web-1")
    log.parent.mkdir(parents=True)
    return daemon, log


@pytest.fixture(scope="module")
def shared_etcd() -> Iterator[EtcdCluster]:
    with etcd_cluster() as etcd:
        yield etcd


@pytest.fixture
def own_etcd() -> Iterator[EtcdCluster]:
    with etcd_cluster() as etcd:
        yield etcd
