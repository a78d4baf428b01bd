"""`build:` with the real buildah: images built `FROM scratch` with Debian's busybox-static
copied in (no registry), loaded into linkd's store and run in stacks.

Each test gives linkd's builds a directory of their own (`$LINKD_BUILD`, a temporary
directory: buildah's storage is beneath it) and checks, after it, that nothing of
buildah's is mounted, that no build container is left in that storage, and that the
host's default storage (/var/lib/containers/storage) was never made; the image names a
test built leave the store with it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from linkd.errors import NotFoundError
from linkd.runtime.images.image_store import ImageStore
from tests.images import BUSYBOX
from tests.integration.conftest import Linkd

DOCKERFILE = """\
FROM scratch AS base
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ENV BASE=busybox

FROM base AS final
ARG GREETING=from-dockerfile
ARG EXTRA
RUN echo "built with $GREETING $EXTRA" > /greeting
CMD ["sh", "-c", "cat /greeting; exec sleep 600"]

FROM base AS other
CMD ["sh", "-c", "echo the last stage, not the target; exec sleep 600"]
"""

STACK = """\
services:
  app:
    build:
      context: ./app
      target: final
      args:
        GREETING: ${WHO}
        EXTRA: and-an-arg
      labels: {com.example.built-by: linkd-test}
      network: none
"""

# The storage of the host's own buildah and podman. (buildah 1.28 writes its blob-info
# cache in /var/lib/containers/cache whatever its options: docs/images.md says so.)
HOST_STORAGE = Path("/var/lib/containers/storage")


@dataclass
class Builder:
    """A test's buildah storage, and the image names it built."""

    root: Path  # $LINKD_BUILD
    linkd: Linkd
    buildah: str  # found before a test hides it

    def image(self, service: str) -> str:
        return f"{self.linkd.project}-{service}:latest"

    def containers(self) -> str:
        """buildah's containers in the test's storage (none if nothing was built)."""
        if not (self.root / "containers.conf").exists():
            return ""
        return subprocess.run(
            [self.buildah, "--root", str(self.root / "storage"), "--runroot",
             str(self.runroot()),
             "--storage-driver", "overlay", "containers", "--all", "--quiet"],
            capture_output=True, text=True, check=True,
            env={**os.environ, "CONTAINERS_CONF": str(self.root / "containers.conf")},
        ).stdout

    def runroot(self) -> Path:
        return Path(os.environ.get("LINKD_RUN_DIR", "/run/linkd")) / "build"


def mounts_beneath(path: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p == str(path) or p.startswith(f"{path}/")]


@pytest.fixture
def builder(linkd: Linkd, monkeypatch: pytest.MonkeyPatch) -> Iterator[Builder]:
    host_storage_before = HOST_STORAGE.exists()
    root = Path(tempfile.mkdtemp(prefix="linkd-test-build-", dir="/var/tmp"))
    monkeypatch.setenv("LINKD_BUILD", str(root))
    (linkd.directory / "app").mkdir()
    shutil.copy(BUSYBOX, linkd.directory / "app" / "busybox")
    (linkd.directory / "app" / "Dockerfile").write_text(DOCKERFILE)
    store = ImageStore()
    before = {n for i in store.list() for n in i.names}
    found = shutil.which("buildah")
    assert found is not None, "the build tests need buildah: apt-get install buildah"
    result = Builder(root, linkd, found)
    try:
        yield result
        linkd.run("down", "-p", linkd.project, check=False)
        assert mounts_beneath(root) == []
        assert result.containers() == ""  # --force-rm: none, built or failed
        assert HOST_STORAGE.exists() == host_storage_before  # never the host's storage
    finally:
        for name in {n for i in store.list() for n in i.names} - before:
            if name.startswith(f"{linkd.project}-") or name.startswith("linkd-test/built"):
                store.remove(name)
        shutil.rmtree(root, ignore_errors=True)


def test_up_builds_the_missing_image_and_runs_it(builder: Builder, linkd: Linkd,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WHO", "the-shell")
    linkd.write(STACK)
    up = linkd.up()
    # The build's output, line by line, then the stack.
    assert f"building app ({linkd.project}-app)" in up.stdout
    assert "app | [1/2] STEP 1/4: FROM scratch AS base" in up.stdout, up.stdout
    assert f"built {builder.image('app')}" in up.stdout
    # args with ${VAR}, the target stage, labels.
    assert linkd.exec("app", "cat", "/greeting").stdout == "built with the-shell and-an-arg\n"
    stored = ImageStore().get(builder.image("app"))
    assert ("com.example.built-by", "linkd-test") in stored.config.labels
    plan = json.loads(linkd.run("inspect", "-p", linkd.project, "app").stdout)[0]["plan"]
    assert plan["image"] == stored.id
    # buildah's storage is the test's own; nothing of the build stays mounted.
    assert (builder.root / "storage" / "overlay").is_dir()
    assert mounts_beneath(builder.root) == []

    # The image is there: `up` builds nothing again.
    again = linkd.up()
    assert "building" not in again.stdout and "no change" in again.stdout

    # --build builds again; from an unchanged source it keeps the image (buildah's new
    # timestamps aside, the same image), so nothing is recreated.
    same = linkd.up("--build")
    assert "building app" in same.stdout and "no change" in same.stdout, same.stdout
    assert ImageStore().get(builder.image("app")).id == stored.id

    # A changed argument: a new image replaces the container.
    monkeypatch.setenv("WHO", "a-rebuild")
    rebuilt = linkd.up("--build")
    assert "building app" in rebuilt.stdout and "changed: app-1" in rebuilt.stdout
    assert linkd.exec("app", "cat", "/greeting").stdout == "built with a-rebuild and-an-arg\n"
    # The replaced image waited while app-1 ran it; the next build removes it.
    replaced = json.loads((builder.root / "replaced.json").read_text())["stores"]
    assert list(replaced.values()) == [[stored.id]]
    linkd.run("build", "-p", linkd.project)
    assert stored.id not in {i.id for i in ImageStore().list()}
    records = ImageStore().root / "images" / (stored.id[7:] + ".json")
    assert not records.exists()


def test_linkd_build_names_and_tags(builder: Builder, linkd: Linkd) -> None:
    linkd.write("""
        services:
          app:
            image: linkd-test/built:1
            build:
              context: ./app
              tags: ["linkd-test/built:also"]
          plain:
            command: sleep 1
    """)
    built = linkd.run("build", "-p", linkd.project, "app")
    assert "built linkd-test/built:1, linkd-test/built:also" in built.stdout, built.stdout
    image = ImageStore().get("linkd-test/built:also")
    assert image.config.cmd == ("sh", "-c", "echo the last stage, not the target; "
                                            "exec sleep 600")  # no target: the last stage
    assert "BASE=busybox" in image.config.env
    refused = linkd.run("build", "-p", linkd.project, "plain", check=False)
    assert refused.returncode == 2 and "service plain has no build: section" in refused.stderr
    unknown = linkd.run("build", "-p", linkd.project, "nosuch", check=False)
    assert unknown.returncode == 1 and "no service nosuch" in unknown.stderr


def test_foreground_up_builds_an_inline_dockerfile_at_every_up_with_pull_policy_build(
        builder: Builder, linkd: Linkd) -> None:
    linkd.write("""
        services:
          once:
            build:
              context: ./app
              dockerfile_inline: |
                FROM scratch
                COPY busybox /bin/busybox
                CMD ["/bin/busybox", "sh", "-c", "echo ran the inline image; exit 3"]
            pull_policy: build
    """)
    for _ in range(2):
        result = linkd.run("up", "-p", linkd.project, "--exit-code-from", "once", check=False)
        assert result.returncode == 3, result.stdout + result.stderr
        assert "building once" in result.stdout and "ran the inline image" in result.stdout
    skipped = linkd.run("up", "-p", linkd.project, "--exit-code-from", "once", "--no-build",
                        check=False)
    assert skipped.returncode == 3 and "building" not in skipped.stdout


def test_a_failed_build_says_which_service_and_creates_nothing(builder: Builder,
                                                               linkd: Linkd) -> None:
    (linkd.directory / "app" / "Dockerfile").write_text(textwrap.dedent("""\
        FROM scratch
        COPY busybox /bin/busybox
        RUN ["/bin/busybox", "sh", "-c", "echo the step before failing; exit 7"]
    """))
    linkd.write("""
        services:
          web:
            command: sleep 600
          app:
            build: ./app
            depends_on: [web]
    """)
    for args in (("up", "-d"), ("up",)):
        failed = linkd.run(*args, "-p", linkd.project, check=False)
        assert failed.returncode == 1, failed.stdout + failed.stderr
        assert f"service app: building image {linkd.project}-app failed (buildah exited " \
               in failed.stderr
        assert "the step before failing" in failed.stderr  # the builder's last lines
        # No stack objects: nothing up, no state, not even the service that needs no build.
        ps = linkd.run("ps", "-p", linkd.project, check=False)
        assert ps.returncode == 1 and "not up" in (ps.stdout + ps.stderr)
        stacks = Path(os.environ.get("LINKD_RUN_DIR", "/run/linkd")) / "stacks"
        assert not (stacks / linkd.project).exists()
    with pytest.raises(NotFoundError):
        ImageStore().get(builder.image("app"))
    assert not list((builder.root / "work").iterdir())  # the work directory went


def test_a_missing_context_or_dockerfile_is_said_before_building(builder: Builder,
                                                                 linkd: Linkd) -> None:
    linkd.write("services:\n  app:\n    build: ./nowhere\n")
    missing = linkd.run("build", "-p", linkd.project, check=False)
    assert missing.returncode == 1
    assert f"service app: the build context {linkd.directory}/nowhere is not a directory" \
        in missing.stderr
    linkd.write("services:\n  app:\n    build: {context: ./app, dockerfile: Nope}\n")
    missing = linkd.run("build", "-p", linkd.project, check=False)
    assert missing.returncode == 1 and "build.dockerfile" in missing.stderr


def test_without_buildah_the_error_names_the_package(builder: Builder, linkd: Linkd,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    linkd.write("services:\n  app:\n    build: ./app\n")
    monkeypatch.setenv("PATH", "/nonexistent")  # linkd runs as sys.executable
    for args in (("build",), ("up", "-d"), ("up",)):
        result = linkd.run(*args, "-p", linkd.project, check=False)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "needs buildah, which is not installed: apt-get install buildah" \
            in result.stderr
    stacks = Path(os.environ.get("LINKD_RUN_DIR", "/run/linkd")) / "stacks"
    assert not (stacks / linkd.project).exists()


def test_a_build_detaches_what_a_killed_build_left_mounted(builder: Builder,
                                                           linkd: Linkd) -> None:
    """A build killed (SIGKILL) mid-step leaves its mounts beneath the storage; the next
    build, holding the storage's lock, detaches them before it starts."""
    linkd.write("services:\n  app:\n    build: ./app\n")
    leftover = builder.root / "storage" / "overlay" / "dead-build" / "merged"
    leftover.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "linkd-test-leftover", str(leftover)], check=True)
    try:
        assert mounts_beneath(builder.root) == [str(leftover)]
        linkd.run("build", "-p", linkd.project)
        assert mounts_beneath(builder.root) == []
    finally:
        subprocess.run(["umount", "-l", str(leftover)], check=False, capture_output=True)


def test_the_daemon_never_builds(builder: Builder, linkd: Linkd) -> None:
    """`up -d --no-build` hands the daemon a stack whose image was never built: it says
    how to build it, and creates nothing."""
    linkd.write("services:\n  app:\n    build: ./app\n")
    refused = linkd.run("up", "-d", "-p", linkd.project, "--no-build", check=False)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert (f"image {linkd.project}-app of service app is not built yet: `linkd build app`"
            in refused.stderr)
    assert "building" not in refused.stdout
    stacks = Path(os.environ.get("LINKD_RUN_DIR", "/run/linkd")) / "stacks"
    assert not (stacks / linkd.project).exists()
