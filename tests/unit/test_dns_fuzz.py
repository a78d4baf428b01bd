"""Property tests: random and mutated packets never crash or stall the answering function."""

from __future__ import annotations

from ipaddress import IPv4Address

from dnslib import DNSRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from linkd.dns.answers import Answered, Drop, Forward, answer
from linkd.dns.zone import build_zone
from tests.planning import realize
from tests.unit.test_dns import SUBNETS, addr, shop

PLAN = realize(shop(), SUBNETS)
ZONE = build_zone([PLAN])
CLIENT: IPv4Address = addr(PLAN, "client-1", "front")
VALID = DNSRecord.question("web", "A").pack()


def check_reply(data: bytes) -> None:
    reply = answer(ZONE, data, CLIENT)
    assert isinstance(reply, Answered | Forward | Drop)
    if isinstance(reply, Answered):
        assert len(reply.data) >= 12
        assert reply.data[:2] == data[:2]  # the query's ID
        assert reply.data[2] & 0x80  # a response


def still_answers() -> None:
    reply = answer(ZONE, VALID, CLIENT)
    assert isinstance(reply, Answered)
    assert len(DNSRecord.parse(reply.data).rr) == 2  # both web replicas


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=0, max_size=600))
def test_random_bytes(data: bytes) -> None:
    check_reply(data)
    still_answers()


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), max_size=6),
    st.integers(0, len(VALID)),
    st.binary(max_size=40),
)
def test_mutated_queries(flips: list[tuple[int, int]], cut: int, tail: bytes) -> None:
    data = bytearray(VALID)
    for index, value in flips:
        data[index] = value
    check_reply(bytes(data[:cut]) + tail)
    still_answers()


def test_a_compression_loop_is_answered_not_followed() -> None:
    # Header, then a name that is a pointer to itself (offset 12).
    looping = VALID[:12] + b"\xc0\x0c" + b"\x00\x01\x00\x01"
    reply = answer(ZONE, looping, CLIENT)
    assert isinstance(reply, Answered | Drop)
    if isinstance(reply, Answered):
        assert reply.data[3] & 0x0F == 1  # FORMERR
    still_answers()
