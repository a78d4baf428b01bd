"""Registries for pull tests: a tiny one of the test's own (aiohttp, serving what the test
put in it, and breaking it on request), and Debian's docker-registry started from its
command line on 127.0.0.1 with a config and storage of the test's own.

The tiny one answers the /v2/ requests a pull makes (manifests by tag or digest, blobs by
digest), logs each request's path, and can: fail a path with 500s a number of times,
serve a blob truncated or with other content than its digest, ask for an anonymous
Bearer token first (its own realm) or for Basic credentials, and serve a schema-1
manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
REGISTRY = Path("/usr/bin/docker-registry")


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class TinyRegistry:
    manifests: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # "repo:ref"
    blobs: dict[str, bytes] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)  # path -> 500s still to give
    truncated: set[str] = field(default_factory=set)  # digests served cut short
    tampered: set[str] = field(default_factory=set)  # digests served with a byte flipped
    cut_once: set[str] = field(default_factory=set)  # cut short once, then ranges served
    cut_then_whole: set[str] = field(default_factory=set)  # cut once, then no ranges
    _cut: set[str] = field(default_factory=set)
    token: str = ""  # non-empty: every /v2/ request needs "Bearer <token>"
    basic: str = ""  # non-empty: every /v2/ request needs "Basic <basic>"
    redirect: str = ""  # non-empty: blobs are a redirect to this host[:port]
    authorizations: list[str | None] = field(default_factory=list)  # as each request had
    port: int = 0

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def add_layout(self, repo: str, tag: str, files: dict[str, bytes]) -> str:
        """An image from an OCI layout's files (tests.images), by tag and by digest;
        returns its manifest's digest."""
        index = json.loads(files["index.json"])
        desc = index["manifests"][0]
        manifest = files["blobs/sha256/" + desc["digest"][7:]]
        for name, data in files.items():
            if name.startswith("blobs/"):
                self.blobs[sha256(data)] = data
        return self.add_manifest(repo, tag, desc["mediaType"], manifest)

    def add_manifest(self, repo: str, tag: str, media_type: str, body: bytes) -> str:
        digest = sha256(body)
        self.manifests[f"{repo}:{tag}"] = (media_type, body)
        self.manifests[f"{repo}:{digest}"] = (media_type, body)
        return digest

    def add_index(self, repo: str, tag: str, entries: list[tuple[dict[str, str], str]]
                  ) -> str:
        """An index over manifests already added: (platform, digest) each."""
        manifests = []
        for platform, digest in entries:
            media, body = self.manifests[f"{repo}:{digest}"]
            manifests.append({"mediaType": media, "digest": digest, "size": len(body),
                              "platform": platform})
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                           "manifests": manifests}).encode()
        return self.add_manifest(repo, tag, OCI_INDEX, body)

    def layer_requests(self) -> list[str]:
        return [r for r in self.requests if "/blobs/" in r]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.requests.append(path)
        self.authorizations.append(request.headers.get("Authorization"))
        if path == "/token":
            return web.json_response({"token": self.token})
        if self.token and request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.Response(status=401, headers={"WWW-Authenticate": (
                f'Bearer realm="http://{self.host}/token",service="tiny",'
                'scope="repository:test/bb:pull"')})
        if self.basic and request.headers.get("Authorization") != f"Basic {self.basic}":
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="tiny"'})
        if self.failures.get(path, 0) > 0:
            self.failures[path] -= 1
            return web.Response(status=500, text="try again")
        parts = path.removeprefix("/v2/").rsplit("/", 2)
        if len(parts) != 3:
            return web.json_response({}, status=200 if path == "/v2/" else 404)
        repo, kind, ref = parts
        if kind == "manifests" and f"{repo}:{ref}" in self.manifests:
            media, body = self.manifests[f"{repo}:{ref}"]
            digest = sha256(body)
            if digest in self.tampered:
                body = body.replace(b'"schemaVersion": 2', b'"schemaVersion":  2')
            return web.Response(body=body, content_type=media,
                                headers={"Docker-Content-Digest": digest})
        if kind == "blobs" and self.redirect:
            raise web.HTTPTemporaryRedirect(f"http://{self.redirect}{path}")
        if kind == "blobs" and ref in self.blobs:
            data = self.blobs[ref]
            if ref in self.tampered:
                data = data[:-1] + bytes([data[-1] ^ 1])
            if ref in self.cut_once and request.headers.get("Range"):
                start = int(request.headers["Range"].removeprefix("bytes=").rstrip("-"))
                return web.Response(status=206, body=data[start:], headers={
                    "Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"})
            if ref in self.cut_then_whole and ref in self._cut:
                return web.Response(body=data)  # the whole blob, whatever Range asked
            self._cut |= {ref} & self.cut_then_whole
            if ref in self.truncated or ref in self.cut_once or ref in self.cut_then_whole:
                # The length the blob has, then the connection closes early.
                resp = web.StreamResponse(headers={"Content-Length": str(len(data))})
                await resp.prepare(request)
                await resp.write(data[: len(data) // 2])
                assert request.transport is not None
                request.transport.close()
                return resp
            return web.Response(body=data, content_type="application/octet-stream")
        return web.json_response({"errors": [{"code": "MANIFEST_UNKNOWN" if kind ==
                                              "manifests" else "BLOB_UNKNOWN",
                                              "message": "unknown"}]}, status=404)


@contextlib.asynccontextmanager
async def serving(registry: TinyRegistry) -> AsyncIterator[TinyRegistry]:
    app = web.Application()
    async def handle(request: web.Request) -> web.StreamResponse:
        return await registry.handle(request)  # looked up per request: a test may wrap it

    app.router.add_route("GET", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    registry.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    try:
        yield registry
    finally:
        await runner.cleanup()


# -- Debian's docker-registry ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RealRegistry:
    host: str
    log: Path
    pid: int

    def blob_gets(self) -> int:
        """How many blob GETs the registry has served (its access log)."""
        return sum(1 for line in self.log.read_text().splitlines()
                   if '"GET /v2/' in line and "/blobs/sha256:" in line)


CONFIG = """\
version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: {address}:{port}
"""


@contextlib.contextmanager
def docker_registry(tmp: Path, auth: str = "", *, http_extra: str = "",
                    address: str = "127.0.0.1") -> Iterator[RealRegistry]:
    """docker-registry serving plain HTTP on 127.0.0.1 (or `address`):<free port>,
    storage under `tmp`; killed by its PID when done. `auth`: the config's `auth:`
    section (YAML, `htpasswd_auth` and `token_auth` write it), anonymous without.
    `http_extra`: more of its `http:` section (`  tls:` ... for HTTPS), indented by two."""
    port = free_port()
    (tmp / "storage").mkdir(parents=True)
    config = tmp / "config.yml"
    config.write_text(CONFIG.format(root=tmp / "storage", address=address, port=port)
                      + http_extra + auth)
    log = tmp / "registry.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(REGISTRY), "serve", str(config)], stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(OSError), socket.create_connection(
                    (address, port), timeout=0.2):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"docker-registry did not start: {log.read_text()}")
            time.sleep(0.05)
        yield RealRegistry(f"{address}:{port}", log, proc.pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def push(layout: Path, dest: str, *, all_images: bool = False, creds: str = "") -> None:
    """skopeo copy of an OCI layout directory to `dest` (host/repo:tag), plain HTTP;
    `creds` ("user:password") for a registry that wants them."""
    args: list[str] = ["skopeo", "copy", "--quiet", "--dest-tls-verify=false"]
    if all_images:
        args.append("--all")
    if creds:
        args.append(f"--dest-creds={creds}")
    subprocess.run([*args, f"oci:{layout}", f"docker://{dest}"], check=True,
                   capture_output=True, timeout=120)


def index_files(images: list[tuple[Any, str]], tag: str = "1") -> dict[str, bytes]:
    """An OCI layout of a multi-platform image: index.json names (as `tag`) an image
    index with one manifest per (image, architecture), and holds every blob."""
    files: dict[str, bytes] = {}
    manifests = []
    for image, arch in images:
        one = image.oci_files(platform_arch=arch)
        desc = json.loads(one["index.json"])["manifests"][0]
        desc.pop("annotations", None)
        manifests.append(desc)
        files.update({k: v for k, v in one.items() if k.startswith("blobs/")})
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                        "manifests": manifests}).encode()
    files["blobs/sha256/" + sha256(index)[7:]] = index
    files["index.json"] = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": OCI_INDEX, "digest": sha256(index), "size": len(index),
        "annotations": {"org.opencontainers.image.ref.name": tag}}]}).encode()
    files["oci-layout"] = b'{"imageLayoutVersion": "1.0.0"}'
    return files
