"""Pulls over TLS from Debian's docker-registry on 127.0.0.1 serving HTTPS with a
certificate of a throwaway CA made by the openssl command in the test (SAN IP:127.0.0.1).
A loopback registry may be spoken to over plain HTTP, but HTTPS is tried first and, as
127.0.0.1 is not listed insecure, verified: without the CA in the registry's certs.d
directory the pull says so; with it the pull succeeds; listed insecure, it succeeds
unverified (as Docker). A registry that requires a client certificate
(`http.tls.clientcas`) serves only a pull with the .cert/.key pair. Needs root (the
store unpacks layers with owners); no namespace or mount, so no machine-wide lock."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from linkd.errors import RegistryError, UsageError
from linkd.runtime.images.image_store import ImageStore
from linkd.runtime.images.pull import pull
from tests.images import Entry, Image, layer_tar, write_dir
from tests.registry import RealRegistry, docker_registry

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="layers need root: owners")

IMAGE = Image([layer_tar([Entry("hello", data=b"over TLS\n")])], name="test/tls:1")


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True,
                   timeout=30)


def _signed(base: Path, name: str, ca: Path, ca_key: Path, ext: str) -> tuple[Path, Path]:
    key, csr, cert = base / f"{name}.key", base / f"{name}.csr", base / f"{name}.pem"
    (base / f"{name}.ext").write_text(ext)
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", key, "-out", csr, "-subj", f"/CN=linkd test {name}")
    _openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
             "-out", cert, "-days", "2", "-extfile", base / f"{name}.ext")
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    base = tmp_path_factory.mktemp("pki")
    ca, ca_key = base / "ca.pem", base / "ca.key"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", ca_key, "-out", ca, "-days", "2", "-subj",
             "/CN=linkd test CA")
    server = _signed(base, "server", ca, ca_key, "subjectAltName=IP:127.0.0.1\n"
                     "extendedKeyUsage=serverAuth\n")
    client = _signed(base, "client", ca, ca_key, "extendedKeyUsage=clientAuth\n")
    return Pki(ca, *server, *client)


def _tls(pki: Pki, client_ca: bool = False) -> str:
    extra = (f"  tls:\n    certificate: {pki.server_cert}\n    key: {pki.server_key}\n")
    return extra + (f"    clientcas:\n      - {pki.ca}\n" if client_ca else "")


def _push(layout: Path, dest: str, cert_dir: Path | None = None) -> None:
    args = ["skopeo", "copy", "--quiet"]
    args += [f"--dest-cert-dir={cert_dir}"] if cert_dir else ["--dest-tls-verify=false"]
    subprocess.run([*args, f"oci:{layout}", f"docker://{dest}"], check=True,
                   capture_output=True, timeout=120)


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "store")


@pytest.fixture
def tls_registry(tmp_path: Path, pki: Pki) -> Iterator[RealRegistry]:
    with docker_registry(tmp_path / "registry", http_extra=_tls(pki)) as reg:
        _push(write_dir(IMAGE.oci_files(), tmp_path / "layout"), f"{reg.host}/test/tls:1")
        yield reg


def contents(store: ImageStore) -> set[str]:
    if not store.root.exists():
        return set()
    return {str(p.relative_to(store.root)) for p in store.root.rglob("*")} - {
        "lock", "pulls", "tmp"}


async def test_a_registry_over_tls_is_trusted_with_its_ca_in_certs_d(
        tls_registry: RealRegistry, store: ImageStore, pki: Pki, tmp_path: Path) -> None:
    certs = tmp_path / "certs.d"
    env = {"LINKD_CERTS_D": str(certs)}
    ref = f"{tls_registry.host}/test/tls:1"
    with pytest.raises(RegistryError, match=(
            f"pull {ref} from {tls_registry.host}: TLS: the certificate of "
            f"{tls_registry.host} is not trusted \\(.*\\): put the certificate of the CA "
            f"that signed it in {certs}/{tls_registry.host}/ca.crt \\(or list "
            f"{tls_registry.host} in insecure-registries")):
        await pull(ref, store, env=env)
    assert contents(store) == set()  # and no plain HTTP was tried: it speaks TLS
    (certs / tls_registry.host).mkdir(parents=True)
    (certs / tls_registry.host / "ca.crt").write_bytes(pki.ca.read_bytes())
    pulled = await pull(ref, store, env=env)
    assert pulled.image.layers == tuple(IMAGE.diff_ids())
    assert pulled.image.names == (ref,)


async def test_a_registry_listed_insecure_is_spoken_to_without_verification(
        tls_registry: RealRegistry, store: ImageStore, tmp_path: Path) -> None:
    env = {"LINKD_CERTS_D": str(tmp_path / "none"),
           "LINKD_INSECURE_REGISTRIES": tls_registry.host}
    pulled = await pull(f"{tls_registry.host}/test/tls:1", store, env=env)
    assert pulled.image.layers == tuple(IMAGE.diff_ids())


async def test_a_client_certificate_from_certs_d(store: ImageStore, pki: Pki,
                                                 tmp_path: Path) -> None:
    certs = tmp_path / "certs.d"
    env = {"LINKD_CERTS_D": str(certs)}
    with docker_registry(tmp_path / "registry", http_extra=_tls(pki, client_ca=True)) as reg:
        mine = certs / reg.host
        mine.mkdir(parents=True)
        (mine / "ca.crt").write_bytes(pki.ca.read_bytes())
        ref = f"{reg.host}/test/tls:1"
        push_dir = tmp_path / "push-certs"  # skopeo's --dest-cert-dir: the same layout
        push_dir.mkdir()
        (push_dir / "client.cert").write_bytes(pki.client_cert.read_bytes())
        (push_dir / "client.key").write_bytes(pki.client_key.read_bytes())
        (push_dir / "ca.crt").write_bytes(pki.ca.read_bytes())
        _push(write_dir(IMAGE.oci_files(), tmp_path / "layout"), ref, push_dir)
        with pytest.raises(RegistryError, match=(
                f"TLS: {reg.host} refused the connection \\(.*ALERT.*\\): if "
                "it asks for a client certificate, put it and its key in "
                f"{mine}/ as NAME.cert and NAME.key")):
            await pull(ref, store, env=env)
        assert contents(store) == set()
        (mine / "client.cert").write_bytes(pki.client_cert.read_bytes())
        with pytest.raises(UsageError, match=f"{mine}/client.cert has no key "
                           f"{mine}/client.key: a client certificate needs both"):
            await pull(ref, store, env=env)
        (mine / "client.key").write_bytes(pki.client_key.read_bytes())
        pulled = await pull(ref, store, env=env)
        assert pulled.image.layers == tuple(IMAGE.diff_ids())


async def test_a_ca_file_that_is_not_a_certificate_is_named(
        tls_registry: RealRegistry, store: ImageStore, tmp_path: Path) -> None:
    mine = tmp_path / "certs.d" / tls_registry.host
    mine.mkdir(parents=True)
    (mine / "ca.crt").write_text("not a certificate\n")
    with pytest.raises(UsageError, match=f"{mine}/ca.crt: not a PEM CA certificate"):
        await pull(f"{tls_registry.host}/test/tls:1", store,
                   env={"LINKD_CERTS_D": str(tmp_path / "certs.d")})
    (mine / "ca.crt").unlink()
    os.mkfifo(mine / "ca.crt")  # never opened for long: a FIFO is refused, not waited on
    with pytest.raises(UsageError, match=f"{mine}/ca.crt: is a named pipe \\(FIFO\\), "
                       "not a regular file"):
        await pull(f"{tls_registry.host}/test/tls:1", store,
                   env={"LINKD_CERTS_D": str(tmp_path / "certs.d")})
