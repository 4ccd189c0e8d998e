"""HTTPS with --tls-cert/--tls-key: the same API over TLS, plain HTTP refused, bad files refused at start."""

import subprocess
import time

import pytest
import requests

from gs_helpers import free_port, server_binary


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    key, crt = d / "key.pem", d / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(crt),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True)
    return crt, key


def test_https(cert, tmp_path):
    crt, key = cert
    port = free_port()
    proc = subprocess.Popen([str(server_binary()), "serve", "--host", "127.0.0.1", "--port", str(port),
                             "--data-dir", str(tmp_path), "--tls-cert", str(crt), "--tls-key", str(key)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"https://127.0.0.1:{port}"
        for _ in range(200):
            try:
                if requests.get(base + "/healthz", verify=str(crt), timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.05)
        else:
            pytest.fail("HTTPS server did not become healthy")
        body = {"model": {"layers": [{"op": "linear", "weight": [[2.0, 0.0], [0.0, 3.0]]}], "dtype": "float64"},
                "inputs": {"x": [[1.0, 1.0]]}}
        r = requests.post(base + "/v1/forward", json=body, verify=str(crt), timeout=10)
        assert r.status_code == 200 and r.json()["outputs"] == [[2.0, 3.0]]
        with pytest.raises(requests.RequestException):
            requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_bad_certificate_paths(tmp_path):
    r = subprocess.run([str(server_binary()), "serve", "--port", str(free_port()), "--data-dir", str(tmp_path),
                        "--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(tmp_path / "missing.key")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "missing.pem" in (r.stdout + r.stderr)
    r = subprocess.run([str(server_binary()), "serve", "--tls-cert", "x.pem"], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "--tls-key" in r.stderr
