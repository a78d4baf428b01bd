"""linkd.core.health (Docker's healthcheck state machine), the DNS zone's health view
(`pending` held back, SERVFAIL, `_all.`), and hosts files of health-checked peers."""

from __future__ import annotations

from ipaddress import IPv4Network

import dnslib
import pytest

from linkd.core import health
from linkd.core.health import Health, Peer, Probe
from linkd.core.hosts import hosts_file
from linkd.core.model import Attachment, Healthcheck, Link, Network, PortSpec, Service, Stack
from linkd.core.plan import StackPlan
from linkd.dns.answers import answer
from linkd.dns.zone import build_zone, rezone
from tests.planning import realize

CHECK = Healthcheck(("true",), interval=1.0, timeout=0.5, retries=3, start_period=10.0,
                    start_interval=0.1)
STARTED = 1000.0


def probe(at: float, code: int, output: str = "") -> Probe:
    return Probe(STARTED + at, STARTED + at + 0.01, code, output)


def run(codes: list[tuple[float, int]], check: Healthcheck = CHECK) -> Health:
    now = Health()
    for at, code in codes:
        now = health.record(now, check, probe(at, code), STARTED)
    return now


def test_success_makes_healthy_and_resets_the_streak() -> None:
    assert run([(11, 1), (12, 0)]) == Health("healthy", 0, run([(11, 1), (12, 0)]).log)
    assert run([(11, 1), (12, 0)]).failing_streak == 0


def test_retries_consecutive_failures_make_unhealthy() -> None:
    assert run([(11, 1), (12, 1)]).status == "starting"
    assert run([(11, 1), (12, 1), (13, 1)]) .status == "unhealthy"
    assert run([(11, 1), (12, 1), (13, 1)]).failing_streak == 3
    assert run([(11, 1), (12, 1), (12.5, 0), (13, 1)]).status == "healthy"
    assert run([(11, 0), (12, 1), (13, 1), (14, 1)]).status == "unhealthy"
    # Back to healthy with one success, as Docker does.
    assert run([(11, 1), (12, 1), (13, 1), (14, 0)]).status == "healthy"


def test_failures_in_the_start_period_do_not_count_while_starting() -> None:
    during = run([(1, 1), (2, 1), (3, 1), (4, 1)])
    assert during.status == "starting" and during.failing_streak == 0
    assert len(during.log) == 4  # recorded all the same
    assert run([(1, 1), (2, 1), (3, 1), (11, 1)]).failing_streak == 1
    # A success ends it: failures count from then on, even inside the period.
    after = run([(1, 0), (2, 1), (3, 1), (4, 1)])
    assert after.status == "unhealthy" and after.failing_streak == 3


def test_start_interval_applies_while_starting_inside_the_start_period() -> None:
    assert health.interval(Health(), CHECK, STARTED + 1, STARTED) == 0.1
    assert health.interval(Health(), CHECK, STARTED + 11, STARTED) == 1.0
    assert health.interval(Health("healthy"), CHECK, STARTED + 1, STARTED) == 1.0
    no_period = Healthcheck(("true",), interval=2.0, start_interval=0.1)
    assert health.interval(Health(), no_period, STARTED, STARTED) == 2.0


def test_the_log_keeps_the_last_five_and_output_is_cut() -> None:
    now = run([(11 + i, i % 2) for i in range(8)])
    assert [p.start - STARTED for p in now.log] == [14, 15, 16, 17, 18]
    assert len(health.clip(b"x" * 10_000)) == health.OUTPUT_LIMIT
    assert health.clip(b"caf\xc3\xa9 \xff") == "café \ufffd"


def test_a_timeout_is_exit_code_minus_one_with_dockers_message() -> None:
    timed = health.timed_out(1.0, 1.2, 0.2)
    assert (timed.exit_code, timed.output) == (-1, "Health check exceeded timeout (200ms)")
    assert health.timed_out(0, 30, 30.0).output == "Health check exceeded timeout (30s)"
    assert health.record(Health(), Healthcheck(("x",), retries=1), timed, 0).status == "unhealthy"


def test_disabled_and_none_have_no_health() -> None:
    assert health.initial(None) is None
    assert health.initial(Healthcheck((), disabled=True)) is None
    assert health.initial(CHECK) == Health()
    assert health.summary_of("starting") == "(health: starting)"
    assert health.summary_of("healthy") == "(healthy)"
    assert health.pending([("a-1", CHECK), ("b-1", None), ("c-1", CHECK)],
                          {"a-1": "healthy", "c-1": "unhealthy"}) == {"c-1"}


def peer(status: str = "running", state: str | None = "healthy", **kw: object) -> Peer:
    h = None if state is None else Health(state, 2, (probe(1, 1, "refused\n"),))  # type: ignore[arg-type]
    return Peer(**{"name": "db-1", "status": status, "exit_code": None, "has_check": True,
                   "health": h, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize(("peers", "verdict"), [
    ([peer(), peer(name="db-2")], ("ok", "")),
    ([peer(), peer(name="db-2", state="starting")], ("wait", "")),
    ([peer(status="created", state=None)], ("wait", "")),
    ([peer(status="restarting")], ("wait", "")),
    ([peer(state="unhealthy")], ("fail", "service app depends on db being healthy, but db-1 is "
                                         "unhealthy (last probe exited 1: refused)")),
    ([peer(status="exited", exit_code=4)],
     ("fail", "service app depends on db being healthy, but db-1 exited with code 4 before "
              "it was healthy")),
    ([peer(has_check=False, state=None)],
     ("fail", "service app depends on db being healthy, but db-1 has no healthcheck")),
])
def test_service_healthy_verdicts(peers: list[Peer], verdict: tuple[str, str]) -> None:
    assert health.healthy_verdict("app", "db", peers) == verdict


# -- DNS and hosts -------------------------------------------------------------------------

CMD = ("sleep", "60")


def shop() -> StackPlan:
    stack = Stack(
        name="shop",
        services=(
            Service("web", command=CMD, replicas=2, ports=(PortSpec(80, 80),),
                    networks=(Attachment("default", aliases=("www",)),), healthcheck=CHECK),
            Service("client", command=CMD, links=(Link("web", "site"),),
                    networks=(Attachment("default"),)),
        ),
        networks=(Network("default"),),
    )
    return realize(stack, {"default": IPv4Network("10.87.0.0/24")})


def ask(zone: object, name: str, qtype: str = "A") -> dnslib.DNSRecord:
    p = shop()
    client = p.container("client-1").interfaces[0].address
    reply = answer(zone, dnslib.DNSRecord.question(name, qtype).pack(), client,  # type: ignore[arg-type]
                   shuffle_seed=0)
    return dnslib.DNSRecord.parse(reply.data)  # type: ignore[union-attr]


def a_records(reply: dnslib.DNSRecord) -> set[str]:
    return {str(r.rdata) for r in reply.rr if r.rtype in (dnslib.QTYPE.A, dnslib.QTYPE.SRV)}


def address(p: StackPlan, name: str) -> str:
    return str(p.container(name).interfaces[0].address)


def test_not_healthy_instances_are_held_back_from_service_names_only() -> None:
    p = shop()
    zone = build_zone([p], pending=frozenset({("shop", "web-2")}))
    web1, web2 = address(p, "web-1"), address(p, "web-2")
    for name in ("web", "www", "web.default", "web.shop.linkd", "site"):
        assert a_records(ask(zone, name)) == {web1}, name
    assert {str(r.rdata.target) for r in ask(zone, "_80._tcp.web", "SRV").rr} == {
        "web-1.default.shop.linkd."
    }
    assert a_records(ask(zone, "web-2")) == {web2}  # container names regardless
    for name in ("_all.web", "_all.www", "_all.web.default.shop.linkd"):
        assert a_records(ask(zone, name)) == {web1, web2}, name


def test_no_healthy_instance_is_servfail_not_nxdomain() -> None:
    p = shop()
    everyone = frozenset({("shop", "web-1"), ("shop", "web-2")})
    zone = build_zone([p], pending=everyone)
    for name, qtype in [("web", "A"), ("web", "AAAA"), ("www", "A"), ("site", "A"),
                        ("_80._tcp.web", "SRV")]:
        assert ask(zone, name, qtype).header.rcode == dnslib.RCODE.SERVFAIL, name
    assert ask(zone, "nothing").header.rcode == dnslib.RCODE.NXDOMAIN
    assert len(a_records(ask(zone, "_all.web"))) == 2


def test_rezone_follows_health_and_serves_what_a_full_build_serves() -> None:
    p = shop()
    names = ["web", "www", "site", "_all.web", "web-1", "web-2", "_80._tcp.web"]

    def served(zone: object) -> list[tuple[int, set[str]]]:
        return [(ask(zone, n, "SRV" if n.startswith("_80") else "A").header.rcode,
                 a_records(ask(zone, n, "SRV" if n.startswith("_80") else "A"))) for n in names]

    steps = [frozenset(), frozenset({("shop", "web-1")}),
             frozenset({("shop", "web-1"), ("shop", "web-2")}), frozenset({("shop", "web-2")}),
             frozenset()]
    zone = build_zone([p], pending=steps[0])
    for pending in steps[1:]:
        changed = rezone(zone, [p], [p], pending)
        assert changed is not zone and changed.serial == zone.serial + 1
        assert served(changed) == served(build_zone([p], pending=pending))
        zone = changed
    assert rezone(zone, [p], [p], steps[-1]) is zone


def test_hosts_files_leave_health_checked_services_to_dns() -> None:
    p = shop()
    text = hosts_file(p, p.container("client-1"))
    line = next(x for x in text.splitlines() if x.startswith(address(p, "web-1") + "\t"))
    names = line.split("\t")[1].split()
    assert "web-1" in names and "web-1.default" in names
    assert not {"web", "www", "site", "web.default"} & set(names)

