"""`linkd up` pulls `image: 127.0.0.1:PORT/test/bb:1` from a registry in each auth mode:
anonymous, htpasswd (Basic) and Bearer tokens from a token server of the test's own
(tests/registry_auth.py), the credentials in the Docker config of the user the daemon
runs as. The daemon `up -d` starts inherits the session's DOCKER_CONFIG
(tests/simhost.py: a directory of the session's own, never root's ~/.docker), so the
test's config.json there is what it reads at the pull. A registry that wants
credentials the config does not hold fails the `up` saying what to run, and makes
nothing. The config, the images and the registries are gone after the test.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from linkd.runtime.images.image_store import ImageStore
from tests.images import busybox_image, write_dir
from tests.integration.conftest import Linkd
from tests.registry import docker_registry, push
from tests.registry_auth import htpasswd_auth, token_auth, token_server

USER, PASSWORD = "alice", "pw-for-linkd-tests"

STACK = """
services:
  app:
    image: REF
    command: ["sh", "-c", "echo pulled and running; sleep 600"]
"""


@contextlib.contextmanager
def registry(mode: str, tmp: Path) -> Iterator[str]:
    """The registry's host, in `mode`, with busybox pushed as test/bb:1."""
    with contextlib.ExitStack() as stack:
        auth = ""
        if mode == "htpasswd":
            auth = htpasswd_auth(tmp, {USER: PASSWORD})
        elif mode == "token":
            auth = token_auth(stack.enter_context(token_server(tmp / "tokens",
                                                               {USER: PASSWORD})))
        reg = stack.enter_context(docker_registry(tmp / "registry", auth))
        creds = f"{USER}:{PASSWORD}" if auth else ""
        push(write_dir(busybox_image().oci_files(), tmp / "bb"), f"{reg.host}/test/bb:1",
             creds=creds)
        yield reg.host


@pytest.fixture
def docker_config() -> Iterator[Path]:
    """The session's config.json (the daemon's too); removed after the test."""
    path = Path(os.environ["DOCKER_CONFIG"]) / "config.json"
    assert path.parent.is_relative_to("/run/linkd-tests")  # never a real user's
    path.parent.mkdir(mode=0o700, exist_ok=True)
    path.unlink(missing_ok=True)
    yield path
    path.unlink(missing_ok=True)


def _forget(host: str) -> None:
    store = ImageStore()  # the daemon's: the same environment as this process
    for image in store.list():
        for name in image.names:
            if name.startswith(host + "/"):
                store.remove(name)


@pytest.mark.parametrize("mode", ["anonymous", "htpasswd", "token"])
def test_up_pulls_from_a_registry_in_each_auth_mode(mode: str, linkd: Linkd, tmp_path: Path,
                                                   docker_config: Path) -> None:
    with registry(mode, tmp_path) as host:
        ref = f"{host}/test/bb:1"
        linkd.write(STACK.replace("REF", ref))
        try:
            if mode != "anonymous":
                # Without credentials: the up fails before making anything, saying why.
                failed = linkd.run("up", "-d", "-p", linkd.project, check=False)
                assert failed.returncode != 0
                assert f"pull {ref} from {host}: " in failed.stderr, failed.stderr
                assert (f"linkd has none for {host}; run `linkd login {host}`"
                        in failed.stderr), failed.stderr
                assert "(the image of app)" in failed.stderr
                ps = linkd.run("ps", "-p", linkd.project, check=False)
                assert "app" not in ps.stdout, ps.stdout
                secret = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
                docker_config.write_text(json.dumps({"auths": {host: {"auth": secret}}}))
            linkd.up()
            out = linkd.wait_for_log("app", "pulled and running")
            assert "pulled and running" in out, out
            assert ref in linkd.run("image", "ls").stdout
        finally:
            linkd.run("down", "-p", linkd.project, check=False)
            _forget(host)
