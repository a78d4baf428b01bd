"""`linkd ui` (issue 19 §3): the daemon's page and API on 127.0.0.1 through a token, read
only; a request without the token, under another Host (DNS rebinding), or from another
origin is refused. The page is the daemon's own files; the picture is `linkd graph`'s."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from urllib.parse import urlsplit

from tests.integration.conftest import REPO, Linkd


def request(port: int, path: str, *, method: str = "GET", host: str | None = None,
            headers: dict[str, str] | None = None, read: bool = True
            ) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest(method, path, skip_host=True)
        conn.putheader("Host", host or f"127.0.0.1:{port}")
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        conn.endheaders()
        got = conn.getresponse()
        body = got.read() if read else got.read1(64)
        return got.status, {k.lower(): v for k, v in got.getheaders()}, body
    finally:
        conn.close()


@contextlib.contextmanager
def serving_ui(linkd: Linkd) -> Iterator[tuple[int, str]]:
    """`linkd ui` running: the port and token of the URL it printed; interrupted after."""
    ui = subprocess.Popen([sys.executable, "-m", "linkd", "ui"], stdout=subprocess.PIPE,
                          text=True, cwd=linkd.directory,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert ui.stdout is not None
        url = urlsplit(ui.stdout.readline().strip())
        assert url.hostname == "127.0.0.1" and url.path == "/ui/", url
        port, token = url.port, url.query.removeprefix("token=")
        assert port is not None and len(token) >= 32
        yield port, token
    finally:
        ui.terminate()
        assert ui.wait(10) == 0


def test_the_page_is_served_through_a_token_and_nothing_else(linkd: Linkd) -> None:
    linkd.write("""
        services:
          db: {command: sleep 300}
          web: {command: sleep 300, links: [db]}
    """)
    linkd.up()
    with serving_ui(linkd) as (port, token):
        status, headers, page = request(port, f"/ui/?token={token}")
        assert status == 200 and headers["content-type"].startswith("text/html")
        # The files the page loads carry the token too: every request needs it.
        assert f'<script src="ui.js?token={token}">'.encode() in page
        assert f'href="ui.css?token={token}"'.encode() in page
        assert "default-src 'self'" in headers["content-security-policy"]
        status, _, script = request(port, f"/ui/ui.js?token={token}")
        assert status == 200 and b"EventSource" in script
        status, _, listed = request(port, f"/v1/stacks?token={token}")
        assert status == 200
        assert linkd.project in {s["name"] for s in json.loads(listed)}
        status, headers, svg = request(port, f"/v1/stacks/{linkd.project}/graph?token={token}")
        assert status == 200 and headers["content-type"].startswith("image/svg+xml")
        groups = {g.get("data-container") for g in ET.fromstring(svg).iter(
            "{http://www.w3.org/2000/svg}g")}
        assert {"web-1", "db-1"} <= groups
        # The names web-1 may reach, each with the answers `linkd dns` gives from there.
        base = f"/v1/stacks/{linkd.project}/containers/web-1"
        status, _, listed = request(port, f"{base}/names?token={token}")
        names = {n["name"]: n for n in json.loads(listed)}
        assert status == 200 and {"db", "db-1", "web", "web-1"} <= set(names)
        for name, found in names.items():
            one = {(r["type"], r["data"]) for r in found["records"]}
            assert any(t == "A" for t, _ in one), found
            for kind in ("A", "AAAA"):
                said = linkd.run("dns", "-p", linkd.project, name, "--from", "web-1",
                                 "--type", kind).stdout
                records = re.findall(r"^  \S+ \d+ (A|AAAA) (\S+)$", said, re.MULTILINE)
                assert set(records) == {(t, d) for t, d in one if t == kind}, said
        status, headers, first = request(port, f"/v1/events?token={token}", read=False)
        assert status == 200 and headers["content-type"].startswith("text/event-stream")
        assert first.startswith(b": linkd events")

        # Refused: no token, a wrong one, another Host, another origin, and writes.
        assert request(port, "/ui/")[0] == 403
        assert request(port, "/v1/events")[0] == 403
        assert request(port, f"/ui/?token={token[:-1]}x")[0] == 403
        assert request(port, f"/ui/?token={token}", host=f"evil.example:{port}")[0] == 403
        assert request(port, f"/ui/?token={token}",
                       headers={"Origin": "http://evil.example"})[0] == 403
        assert request(port, f"/v1/stacks?token={token}",
                       headers={"Sec-Fetch-Site": "cross-site"})[0] == 403
        assert request(port, f"/v1/stacks/{linkd.project}?token={token}",
                       method="DELETE")[0] == 405
        assert request(port, f"/ui/../../etc/passwd?token={token}")[0] == 404
        status, _, _ = request(port, f"/v1/stacks/{linkd.project}?token={token}")
        assert status == 200  # the stack is still up
