"""`group_add` in real containers: an image's group names from its own /etc/group, under
linkd's launcher and runc, for the command and for `linkd exec`; a host command's from
the host's."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from linkd.runtime.images.image_store import ImageStore
from tests.images import Entry, Image, busybox_entries, layer_tar, write_tar
from tests.integration.conftest import Linkd


@pytest.fixture
def image(linkd: Linkd) -> Iterator[None]:
    entries = [e for e in busybox_entries() if e.name != "etc/group"]
    entries.append(Entry("etc/group", data=b"root:x:0:\nmail:x:8:\nvideo:x:44:\n"
                                          b"nogroup:x:65534:\n"))
    Image([layer_tar(entries)], name="linkd-test/groups:1").oci_files()
    write_tar(Image([layer_tar(entries)], name="linkd-test/groups:1").oci_files(),
              linkd.directory / "groups.oci.tar")
    yield
    store = ImageStore()
    if any("linkd-test/groups:1" in i.names for i in store.list()):
        store.remove("linkd-test/groups:1")


@pytest.mark.parametrize("runtime", ["linkd", "runc"])
def test_group_add_gives_the_groups_named(linkd: Linkd, image: None, runtime: str) -> None:
    linkd.write(f"""
        services:
          app:
            image: ./groups.oci.tar
            command: ["sh", "-c", "id -G > /tmp/groups; sleep 600"]
            user: nobody
            group_add: [mail, "1234"]
            x-linkd: {{runtime: {runtime}}}
          host:
            command: ["/usr/bin/python3", "-c", "import time; time.sleep(600)"]
            group_add: ["4321"]
    """)
    linkd.up()
    seen = linkd.exec("app", "sh", "-c", "sleep 0.2; cat /tmp/groups; id -G")
    first, by_exec = seen.stdout.split("\n")[:2]
    assert set(first.split()) == {"65534", "8", "1234"}, seen
    assert set(by_exec.split()) == {"65534", "8", "1234"}, seen
    host = linkd.py("host", "import os; print(sorted(os.getgroups()))")
    assert "4321" in host.stdout, host
