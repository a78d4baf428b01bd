"""An image's users and groups come from its own /etc/passwd and /etc/group, read as
files: never through glibc's NSS, which would follow the image's nsswitch.conf and load
an image's libnss_*.so into linkd's process while it is still root and not yet
confined. The image below names an NSS service that does not exist; through NSS its
user would not be found at all."""

from __future__ import annotations

import pytest

from tests.images import Entry, Image, busybox_image, layer_tar, write_tar
from tests.integration.conftest import Linkd

STACK = """
services:
  app:
    image: ./users.oci.tar
    user: app
    command: ["sh", "-c", "echo ids: $$(id -u) $$(id -g) $$(id -G); sleep 600"]
    x-linkd: {runtime: RUNTIME}
  named-group:
    image: ./users.oci.tar
    user: app:extra
    command: ["sh", "-c", "echo ids: $$(id -u) $$(id -g); sleep 600"]
    x-linkd: {runtime: RUNTIME}
"""


@pytest.mark.parametrize("runtime", ["linkd", "runc"])
def test_users_come_from_the_images_files_not_its_nss(linkd: Linkd, runtime: str) -> None:
    base = busybox_image()
    users = layer_tar([
        Entry("etc", "dir"),
        Entry("etc/nsswitch.conf", data=b"passwd: linkdnowhere\ngroup: linkdnowhere\n"),
        Entry("etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\n"
                                 b"app:x:1234:1234:app:/home:/bin/sh\n"),
        Entry("etc/group", data=b"root:x:0:\napp:x:1234:\nextra:x:4321:app\n"),
    ])
    image = Image([*base.layers, users], name="linkd-test/users:1")
    write_tar(image.oci_files(), linkd.directory / "users.oci.tar")
    linkd.write(STACK.replace("RUNTIME", runtime))
    try:
        linkd.up()
        logs = linkd.run("logs", "-p", linkd.project, "app").stdout
        assert "ids: 1234 1234 1234 4321" in logs, logs
        logs = linkd.run("logs", "-p", linkd.project, "named-group").stdout
        assert "ids: 1234 4321" in logs, logs
    finally:
        linkd.run("down", "-p", linkd.project, check=False)
        linkd.run("image", "rm", "linkd-test/users:1", check=False)
