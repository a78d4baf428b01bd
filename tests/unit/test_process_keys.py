"""`group_add` and `platform` read as Compose reads them; a platform the image is not of is
refused before anything runs."""

from __future__ import annotations

import pytest

from linkd.core.image_config import with_image
from linkd.core.image_format import ImageConfig
from linkd.core.model import Service
from linkd.errors import SpecError
from linkd.spec.stack_file import parse_stack


def service(body: str) -> Service:
    stack = parse_stack(f"services:\n  a:\n    image: x\n{body}", source="s",
                        project_name="p")
    return stack.service("a")


def test_group_add_takes_names_and_numbers() -> None:
    a = service("    group_add: [mail, 42, \"1000\"]\n")
    assert a.group_add == ("mail", "42", "1000")


def test_a_bad_group_is_named() -> None:
    with pytest.raises(SpecError, match="expected a group name or number"):
        service("    group_add: [\"a b\"]\n")


@pytest.mark.parametrize(("written", "read"), [
    ("linux/amd64", "linux/amd64"), ("linux/x86_64", "linux/amd64"),
    ("Linux/ARM64/v8", "linux/arm64/v8"), ("linux/aarch64", "linux/arm64"),
])
def test_platform_is_read_with_dockers_names(written: str, read: str) -> None:
    assert service(f"    platform: {written}\n").platform == read


def test_a_malformed_platform_is_refused() -> None:
    with pytest.raises(SpecError, match='expected a platform like "linux/amd64"'):
        service("    platform: amd64\n")


def test_the_image_must_be_of_the_platform_asked_for() -> None:
    a = service("    platform: linux/arm64\n")
    amd64 = ImageConfig("amd64", "linux", ())
    with pytest.raises(SpecError, match="asks for linux/arm64, and its image is linux/amd64"):
        with_image(a, "sha256:" + "0" * 64, amd64)
    b = service("    platform: linux/amd64\n")
    assert with_image(b, "sha256:" + "0" * 64, amd64).image
    v8 = ImageConfig("arm64", "linux", (), variant="v8")
    assert with_image(a, "sha256:" + "0" * 64, v8).image


def test_label_file_is_read_under_labels() -> None:
    files = {"app.labels": "# team labels\ncom.example.team=core\ncom.example.tier=web\n"}
    stack = parse_stack(
        "services:\n  a:\n    image: x\n    label_file: app.labels\n"
        "    labels: {com.example.tier: api}\n", source="s", project_name="p",
        read_text=files.__getitem__)
    assert dict(stack.service("a").labels) == {"com.example.team": "core",
                                               "com.example.tier": "api"}


def test_a_missing_label_file_is_named() -> None:
    def missing(name: str) -> str:
        raise FileNotFoundError(2, "No such file or directory")

    with pytest.raises(SpecError, match=r'cannot read label file "nope\.labels": No such file'):
        parse_stack("services:\n  a:\n    image: x\n    label_file: [nope.labels]\n",
                    source="s", project_name="p", read_text=missing)
