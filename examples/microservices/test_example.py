"""The microservice system, tested from the host with linkd's pytest plugin."""

import json
import time
import urllib.request
from typing import Any

from linkd import Stack

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def call(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    with OPENER.open(request, timeout=5) as response:
        return response.status, json.loads(response.read() or b"null")


def test_the_api_keeps_items_in_the_store(shop: Stack) -> None:
    status, _ = call("PUT", shop["api"].url(8080, "/items/apple"), {"colour": "red"})
    assert status == 200
    assert call("GET", shop["api"].url(8080, "/items/apple")) == (200, {"colour": "red"})
    # It really is in the store: asked directly, at the store's address.
    assert call("GET", shop["store"].url(7000, "/kv/item-apple")) == (200, {"colour": "red"})


def test_the_worker_does_the_jobs_the_api_takes(shop: Stack) -> None:
    status, job = call("POST", shop["api"].url(8080, "/jobs"), {"text": "hello linked world"})
    assert status == 201
    deadline = time.monotonic() + 10
    while (answer := call("GET", shop["api"].url(8080, f"/jobs/{job['id']}")))[0] == 202:
        assert time.monotonic() < deadline, "the worker never did the job"
        time.sleep(0.05)
    assert answer == (200, {"id": job["id"], "upper": "HELLO LINKED WORLD", "words": 3})
    assert f"worker: done job {job['id']}" in shop["worker"].logs()


def test_the_host_reaches_the_store_with_the_containers_variables(shop: Stack) -> None:
    env = shop.env_for_host("api")
    assert env["LINKD_STORE_HOST"] == shop["store"].address
    url = f"http://{env['LINKD_STORE_HOST']}:{env['LINKD_STORE_PORT']}/health"
    assert call("GET", url)[0] == 200


def test_containers_find_the_store_by_name(shop: Stack) -> None:
    found = shop["api"].exec("python3", "-c", "import socket; print(socket.gethostbyname('store'))")
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == shop["store"].address
    assert shop.resolve("store", from_service="api") == [shop["store"].address]


def test_the_host_uses_the_names_the_containers_use(shop: Stack) -> None:
    # The plugin's fixture resolves the stack's names in this process, so a test (or the
    # client library it drives) is configured exactly like the containers are.
    assert call("GET", "http://store:7000/health")[0] == 200
    assert call("GET", "http://api:8080/health") == (200, {"store": 200})
