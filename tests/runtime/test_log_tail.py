"""`tail`: a log's last N lines, as `docker logs --tail N` shows them, read from the end of
the file (by the CLI's `logs -n` and the API's `?tail=N`, which the page asks for)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st

from linkd.core.api_schema import tail_lines
from linkd.runtime.containers.logs import start_of_last_lines
from linkd.runtime.daemon import api
from linkd.runtime.daemon.daemon import Daemon


def last_lines(data: bytes, n: int) -> bytes:
    """The definition: the text's lines (the last one perhaps without its newline)."""
    return b"".join(data.splitlines(keepends=True)[-n:]) if n else b""


@given(st.lists(st.sampled_from([b"a", b"\n", b"bc"]), max_size=40).map(b"".join),
       st.integers(0, 12), st.integers(1, 7))
def test_the_offset_starts_exactly_the_last_lines(data: bytes, n: int, block: int) -> None:
    f = io.BytesIO(data)
    assert data[start_of_last_lines(f, n, block=block):] == last_lines(data, n)


def test_a_tail_is_a_count_or_all() -> None:
    assert tail_lines("all") is None and tail_lines(None) is None
    assert tail_lines("0") == 0 and tail_lines("25") == 25
    for bad in ("-1", "1.5", "ten", "1" * 10, "²", "١٢"):
        with pytest.raises(ValueError, match='number of lines or "all"'):
            tail_lines(bad)


async def test_the_api_answers_the_last_lines(daemon_with_a_log: tuple[Daemon, Path]) -> None:
    daemon, log = daemon_with_a_log
    log.write_bytes(b"".join(b"line %d\n" % i for i in range(100_000)))
    client: TestClient[Any, Any]
    async with TestClient(TestServer(api.make_app(daemon))) as client:
        got = await client.get("/v1/stacks/shop/containers/web-1/logs", params={"tail": "2"})
        assert got.status == 200 and await got.text() == "line 99998\nline 99999\n"
        whole = await client.get("/v1/stacks/shop/containers/web-1/logs",
                                 params={"tail": "all"})
        assert (await whole.read()) == log.read_bytes()
        bad = await client.get("/v1/stacks/shop/containers/web-1/logs", params={"tail": "x"})
        assert bad.status == 400
        assert (await bad.json())["error"]["problems"][0]["path"] == "query.tail"
