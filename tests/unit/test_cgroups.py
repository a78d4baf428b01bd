"""Which cgroup files linkd writes for which limits (v1 and v2), and on v2 which
controllers it enables where: the pure parts of linkd.runtime.kernel.cgroups."""

from __future__ import annotations

import pytest

from linkd.core.model import Limits
from linkd.errors import ContainerError
from linkd.runtime.kernel.cgroups import (
    Base,
    SubtreePlan,
    plan_v2,
    v1_files,
    v2_base,
    v2_controllers,
    v2_files,
)

ALL = Limits(memory=64 << 20, cpus=0.5, pids=50)

FILES = [
    # limits, v1 {controller: {file: value}}, v2 {file: value}
    (Limits(), {}, {}),
    (ALL,
     {"memory": {"memory.limit_in_bytes": "67108864"},
      "cpu": {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "50000"},
      "pids": {"pids.max": "50"}},
     {"memory.max": "67108864", "cpu.max": "50000 100000", "pids.max": "50"}),
    (Limits(cpus=2.0), {"cpu": {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "200000"}},
     {"cpu.max": "200000 100000"}),
    (Limits(cpus=0.333), {"cpu": {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "33300"}},
     {"cpu.max": "33300 100000"}),
    (Limits(pids=1), {"pids": {"pids.max": "1"}}, {"pids.max": "1"}),
]


@pytest.mark.parametrize(("limits", "v1", "v2"), FILES)
def test_files_and_values_for_each_limit(limits: Limits, v1: dict[str, dict[str, str]],
                                         v2: dict[str, str]) -> None:
    assert v1_files(limits) == v1
    assert v2_files(limits) == v2


def test_v2_controllers_are_named_by_their_files_in_order() -> None:
    assert v2_controllers(v2_files(ALL)) == ("memory", "cpu", "pids")
    assert v2_controllers({"hugetlb.2MB.max": "0", "hugetlb.1GB.max": "0"}) == ("hugetlb",)
    assert v2_controllers({}) == ()


@pytest.mark.parametrize(("own", "base"), [
    ("/", "/"),  # linkd in the root (no systemd, or a cgroup namespace): the root itself
    ("/init", "/"),  # docker-in-docker's leaf
    ("/system.slice/linkd.service", "/system.slice"),  # Delegate=yes: beside the unit
    ("/system.slice/linkd.service/supervisor", "/system.slice/linkd.service"),  # + Subgroup
])
def test_the_base_is_the_parent_of_linkds_own_cgroup(own: str, base: str) -> None:
    assert v2_base(own) == base


NEEDED = ("memory", "cpu", "pids")
EVERYTHING = frozenset({"cpuset", "cpu", "io", "memory", "hugetlb", "pids"})


def test_a_base_that_passes_the_controllers_down_is_not_changed() -> None:
    base = Base("/system.slice", EVERYTHING, frozenset(NEEDED))
    assert plan_v2(base, "web", "app-1", NEEDED) == SubtreePlan(
        enable_in_base=(),
        levels=(("/system.slice/linkd", NEEDED), ("/system.slice/linkd/web", NEEDED)),
        leaf="/system.slice/linkd/web/app-1",
    )


def test_only_the_needed_controllers_are_enabled() -> None:
    base = Base("/a", EVERYTHING, frozenset({"pids"}))
    assert plan_v2(base, "s", "c-1", ("pids",)).levels == (
        ("/a/linkd", ("pids",)), ("/a/linkd/s", ("pids",)))


def test_linkd_enables_in_the_root_what_is_missing_there() -> None:
    base = Base("/", EVERYTHING, frozenset({"memory"}))
    plan = plan_v2(base, "s", "c-1", NEEDED)
    assert plan.enable_in_base == ("cpu", "pids")
    assert plan.levels == (("/linkd", NEEDED), ("/linkd/s", NEEDED))
    assert plan.leaf == "/linkd/s/c-1"


def test_linkd_enables_in_a_cgroup_systemd_delegated_to_it() -> None:
    base = Base("/system.slice/linkd.service", EVERYTHING, frozenset(), delegated=True)
    plan = plan_v2(base, "s", "c-1", NEEDED)
    assert plan.enable_in_base == NEEDED
    assert plan.leaf == "/system.slice/linkd.service/linkd/s/c-1"


def test_an_undelegated_base_missing_a_controller_is_an_error_saying_how_to_delegate() -> None:
    base = Base("/system.slice", EVERYTHING, frozenset({"memory", "pids"}))
    with pytest.raises(ContainerError) as caught:
        plan_v2(base, "s", "c-1", NEEDED)
    message = str(caught.value)
    assert "the cpu controller is not enabled for the children of /sys/fs/cgroup/system.slice" \
        in message
    assert "Delegate=yes" in message and "DelegateSubgroup=" in message
    assert "echo +cpu > /sys/fs/cgroup/system.slice/cgroup.subtree_control" in message


def test_a_controller_the_base_is_not_offered_is_an_error_naming_it() -> None:
    base = Base("/system.slice/x.service", frozenset({"pids"}), frozenset(), delegated=True)
    with pytest.raises(ContainerError, match=r"the memory controller is not available in "
                       r"/sys/fs/cgroup/system.slice/x.service \(its cgroup.controllers: "
                       r"pids\).*Delegate=yes"):
        plan_v2(base, "s", "c-1", NEEDED)


def test_a_controller_a_hybrid_root_lacks_is_an_error_pointing_at_v1() -> None:
    base = Base("/", frozenset({"hugetlb"}), frozenset())
    with pytest.raises(ContainerError) as caught:
        plan_v2(base, "s", "c-1", ("pids",), mount="/tmp/cg2")
    message = str(caught.value)
    assert "the pids controller is not available in /tmp/cg2 (its cgroup.controllers: " \
        "hugetlb)" in message
    assert "a cgroup v1 hierarchy holds it" in message and "cgroup_no_v1=pids" in message


def test_no_limits_need_no_controllers() -> None:
    base = Base("/x", frozenset(), frozenset())
    assert plan_v2(base, "s", "c-1", ()).enable_in_base == ()
