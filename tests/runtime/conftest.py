"""Fixtures of the runtime tests: a real three-member etcd (tests/etcd.py), one per test
module that shares it, or one of a test's own (a test that kills or stops members)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.etcd import EtcdCluster, etcd_cluster


@pytest.fixture(scope="module")
def shared_etcd() -> Iterator[EtcdCluster]:
    with etcd_cluster() as etcd:
        yield etcd


@pytest.fixture
def own_etcd() -> Iterator[EtcdCluster]:
    with etcd_cluster() as etcd:
        yield etcd
