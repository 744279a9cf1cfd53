"""TLS, mutual TLS and a bearer token against a real server, with certificates made for the test (openssl): the
right CA, client certificate and token stream; a wrong token is raised, not retried. The server is named by DNS
(`localhost`), so the certificate is checked against the name while the client dials each address it resolves to."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from drsn_client import Client, StreamError, Tls, Window


def openssl(*args: str, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def issue(name: str, san: str, cwd) -> None:
    """A P-256 key and a certificate for `name`, signed by the test CA."""
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=cwd)  # fmt: skip
    (cwd / f"{name}.ext").write_text(f"subjectAltName={san}\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext", cwd=cwd)  # fmt: skip


TOKEN = "a-gateway-token-of-32-characters"


@pytest.fixture
def secured(tmp_path, servers):
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make the test's certificates")
    pki = tmp_path
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "ca.key",
            "-out", "ca.pem", "-days", "1", "-subj", "/CN=drsn test CA", cwd=pki)  # fmt: skip
    issue("localhost", "DNS:localhost,IP:127.0.0.1", pki)
    issue("gateway-1", "DNS:gateway-1", pki)
    (pki / "tokens").write_text(TOKEN + "\n")
    tls_args = ["--tls-cert", str(pki / "localhost.pem"), "--tls-key", str(pki / "localhost.key")]
    mtls_args = ["--tls-client-ca", str(pki / "ca.pem"), "--auth-tokens-file", str(pki / "tokens")]
    server = servers(args=tls_args + mtls_args)
    return server, Tls.from_files(pki / "ca.pem", pki / "gateway-1.pem", pki / "gateway-1.key")


def test_mutual_tls_and_a_token_stream_and_a_wrong_token_is_raised(secured, recording):
    server, tls = secured
    address = f"localhost:{server.port}"
    samples = recording[:20_000]
    client = Client(address, tls=tls, token=TOKEN, backoff_base=0.01)
    with client, client.stream("pump-7", "drive-end", 12_000.0) as stream:
        stream.send(samples)
        stream.close()
        windows = [e for e in stream if isinstance(e, Window)]
    assert [w.index for w in windows] == [0, 1, 2]
    client = Client(address, tls=tls, token="another-token-of-32-characters!!", backoff_base=0.01)
    with client, client.stream("pump-7", "drive-end", 12_000.0) as stream:
        stream.send(np.zeros(100, np.float32))
        with pytest.raises(StreamError) as raised:
            list(stream)
    assert raised.value.code.name == "UNAUTHENTICATED"
