"""The registries file as the runtime reads it, and the certs.d directory a registry's
TLS context is made from (linkd.runtime.images.transport); no connection is made."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from linkd.core.registry_config import Endpoint
from linkd.errors import UsageError
from linkd.runtime.images import transport


def test_no_file_at_the_default_path_is_an_empty_configuration(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(transport.registry_config, "DEFAULT_CONFIG",
                        str(tmp_path / "registries.json"))
    config = transport.load_config({"LINKD_INSECURE_REGISTRIES": "reg.lan"})
    assert config.listed("reg.lan:5000") and config.mirrors == ()


def test_a_named_file_must_be_there_and_right(tmp_path: Path) -> None:
    path = tmp_path / "registries.json"
    with pytest.raises(UsageError, match=f"{path}: No such file .*point "
                       "LINKD_REGISTRIES_CONFIG at another file"):
        transport.load_config({"LINKD_REGISTRIES_CONFIG": str(path)})
    path.write_text('{"registry-mirrors": ["mirror.lan"]}')
    with pytest.raises(UsageError, match=f"{path}: registry-mirrors\\[0\\]: 'mirror.lan': no "
                       "scheme: write https://"):
        transport.load_config({"LINKD_REGISTRIES_CONFIG": str(path)})
    path.write_text('{"registry-mirrors": ["https://mirror.lan"], '
                    '"insecure-registries": ["http://reg.lan"]}')
    config = transport.load_config({"LINKD_REGISTRIES_CONFIG": str(path)})
    assert [str(m) for m in config.mirrors] == ["https://mirror.lan"]
    assert config.listed("reg.lan") and config.source == str(path)


def test_certs_d_is_looked_up_in_order(tmp_path: Path) -> None:
    first, second = tmp_path / "linkd", tmp_path / "docker"
    (second / "reg.lan:5000").mkdir(parents=True)
    dirs = transport.certs_dirs({"LINKD_CERTS_D": f"{first}:{second}"})
    assert dirs == (first, second)
    assert transport.host_dir("reg.lan:5000", dirs) == second / "reg.lan:5000"
    (first / "reg.lan:5000").mkdir(parents=True)
    assert transport.host_dir("reg.lan:5000", dirs) == first / "reg.lan:5000"
    assert transport.host_dir("reg.lan", dirs) is None  # the port is part of the name
    assert transport.certs_dirs({}) == (Path("/etc/linkd/certs.d"),
                                        Path("/etc/docker/certs.d"))


def test_a_key_without_its_certificate_is_named(tmp_path: Path) -> None:
    (tmp_path / "reg.lan").mkdir()
    (tmp_path / "reg.lan" / "client.key").write_text("x")
    with pytest.raises(UsageError, match=f"{tmp_path}/reg.lan/client.key has no client "
                       f"certificate {tmp_path}/reg.lan/client.cert"):
        transport.ssl_context(Endpoint("https", "reg.lan"), [tmp_path])


def test_an_insecure_endpoint_verifies_nothing_and_reads_no_certs_d(tmp_path: Path) -> None:
    (tmp_path / "reg.lan").mkdir()
    (tmp_path / "reg.lan" / "client.cert").write_text("x")  # would be an error if read
    ctx = transport.ssl_context(Endpoint("https", "reg.lan", verify=False), [tmp_path])
    assert ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname
    secure = transport.ssl_context(Endpoint("https", "other.lan"), [tmp_path])
    assert secure.verify_mode == ssl.CERT_REQUIRED and secure.check_hostname
