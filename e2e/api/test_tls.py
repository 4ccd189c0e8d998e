"""HTTPS with --tls-cert/--tls-key: the same API over TLS, plain HTTP refused, bad files refused at start."""

import datetime
import ipaddress
import shutil
import subprocess

import pytest
import requests

from gs_helpers import START_TIMEOUT, TIMEOUT, ServerProcess, server_binary


def self_signed(key, crt):
    """A self-signed certificate for 127.0.0.1, valid from a few minutes ago for a day: with the openssl
    CLI where there is one, else with the `cryptography` package (a fresh machine may lack either)."""
    if shutil.which("openssl"):
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(crt),
             "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
            check=True, capture_output=True)
        return
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID
    except ImportError:
        pytest.fail("neither the openssl CLI nor the Python `cryptography` package is available to make a test certificate")
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    public = private.public_key()
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(private, hashes.SHA256())
    )
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                          serialization.NoEncryption()))
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    key, crt = d / "key.pem", d / "cert.pem"
    self_signed(key, crt)
    return crt, key


def test_https(cert, tmp_path):
    crt, key = cert
    # --port 0: the kernel picks the port at bind time; the server reads it back from the process.
    s = ServerProcess(tmp_path / "data", ["--tls-cert", str(crt), "--tls-key", str(key)],
                      scheme="https", health_args={"verify": str(crt)})
    try:
        try:
            s.start(START_TIMEOUT)
        except RuntimeError as e:
            pytest.fail(f"HTTPS server did not become healthy: {e}")
        base, port = s.url, s.port
        body = {"model": {"layers": [{"op": "linear", "weight": [[2.0, 0.0], [0.0, 3.0]]}], "dtype": "float64"},
                "inputs": {"x": [[1.0, 1.0]]}}
        r = requests.post(base + "/v1/forward", json=body, verify=str(crt), timeout=TIMEOUT)
        assert r.status_code == 200 and r.json()["outputs"] == [[2.0, 3.0]]
        with pytest.raises(requests.RequestException):
            requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
    finally:
        s.stop(TIMEOUT)


def test_bad_certificate_paths(tmp_path):
    # --port 0 and a scratch --data-dir: should the server ever start, it takes no fixed port and writes
    # nothing into the working directory.
    r = subprocess.run([str(server_binary()), "serve", "--port", "0", "--data-dir", str(tmp_path / "data"),
                        "--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(tmp_path / "missing.key")],
                       capture_output=True, encoding="utf-8", errors="replace", timeout=TIMEOUT)
    assert r.returncode != 0
    assert "missing.pem" in (r.stdout + r.stderr)
    r = subprocess.run([str(server_binary()), "serve", "--port", "0", "--data-dir", str(tmp_path / "data2"),
                        "--tls-cert", "x.pem"], capture_output=True, encoding="utf-8", errors="replace", timeout=TIMEOUT)
    assert r.returncode != 0 and "--tls-key" in r.stderr
