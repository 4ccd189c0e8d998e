"""Service limits: --max-output-elements (checked before computing), --max-body-bytes (declared and chunked
bodies), and Expect: 100-continue (a 100 before the body is sent; a 413 straight away above the limit).
"""

from __future__ import annotations

import http.client
import json
import socket
import time

import numpy as np
import requests

from gs_helpers import TIMEOUT, assert_problem, close, describe, get, ok_json, peak_rss_bytes, post, wire


def test_output_limit(limited_server):
    url = limited_server.url
    info = ok_json(get(url, "/v1/info"))
    assert info["limits"]["max_output_elements"] == 1000
    assert info["limits"]["max_body_bytes"] == 20000
    model = {"dtype": "float64", "layers": [{"op": "tanh"}]}
    x = np.full((10, 10), 0.5)
    # 10·10·10 Jacobian + 100 outputs > 1000
    p = assert_problem(post(url, "/v1/jacobian", {"model": model, "inputs": {"x": x.tolist()}}), 422)
    assert "1000" in p["detail"], p
    assert p["errors"] and any("1000" in e["message"] for e in p["errors"]), p
    # without the outputs it fits exactly
    r = post(url, "/v1/jacobian", {"model": model, "inputs": {"x": x.tolist()}, "return_outputs": False})
    assert r.status_code == 200, describe(r)
    # forward of 1001 numbers
    x2 = np.zeros((1001, 1))
    assert_problem(post(url, "/v1/forward", {"model": model, "inputs": {"x": x2.tolist()}}), 422)
    # K-batched vjp: K·B·D
    v = np.ones((11, 10, 10))
    p = assert_problem(post(url, "/v1/vjp", {"model": model, "inputs": {"x": x.tolist()}, "grad_outputs": v.tolist(),
                                            "is_grads_batched": True, "return_outputs": False}), 422)
    assert "1000" in p["detail"]
    # jvp: K·B·D'
    p = assert_problem(post(url, "/v1/jvp", {"model": model, "inputs": {"x": x.tolist()},
                                            "tangents": {"x": v.tolist()}, "return_outputs": False}), 422)
    assert "1000" in p["detail"]


def test_output_limit_checked_before_computing(server, server_process):
    """A Jacobian of 10⁹ numbers is refused before computing (computing it would take minutes and 8 GB):
    the answer is the 422 (not the 504 of the 60 s deadline), and the server never held the answer's
    8 GB: its peak resident size (VmHWM, where /proc has it) grows by far less than that."""
    x = np.random.default_rng(16).normal(size=(1000, 1000)).astype(np.float32)
    model = {"dtype": "float64", "layers": [{"op": "tanh"}]}
    before = peak_rss_bytes(server_process.proc.pid)
    r = post(server, "/v1/jacobian", {"model": model, "inputs": {"x": wire(x, "b64", "float32")}})
    p = assert_problem(r, 422)
    assert str(1 << 24) in p["detail"], p
    after = peak_rss_bytes(server_process.proc.pid)
    if before is not None and after is not None:
        grew = after - before
        assert grew < 1 << 30, f"the server's peak memory grew by {grew / 2**30:.2f} GiB for a request refused by its size"


def test_body_limit(limited_server):
    url = limited_server.url
    big = {"model": {"layers": [{"op": "tanh"}]}, "inputs": {"x": np.zeros((1, 4000)).tolist()}}
    data = json.dumps(big).encode()
    assert len(data) > 20000
    p = assert_problem(post(url, "/v1/forward", data), 413)
    assert p["status"] == 413
    assert_problem(post(url, "/v1/models", data), 413)
    # just under the limit is fine
    small = {"model": {"layers": [{"op": "tanh"}]}, "inputs": {"x": np.zeros((1, 100)).tolist()}}
    ok_json(post(url, "/v1/forward", small))


def test_body_limit_chunked(limited_server):
    """A chunked body (no Content-Length) above --max-body-bytes is a 413 too."""
    url = limited_server.url

    def gen():
        for _ in range(30):
            yield b" " * 1000
        yield b"{}"
    r = requests.post(url + "/v1/forward", data=gen(), headers={"Content-Type": "application/json"}, timeout=TIMEOUT)
    assert_problem(r, 413)


def raw_http(port, head: bytes, timeout=TIMEOUT):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(head)
    return s


def read_until(s, marker: bytes, timeout: float) -> bytes:
    s.settimeout(timeout)
    buf = b""
    deadline = time.monotonic() + timeout
    while marker not in buf and time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            break
        if not chunk:
            break
        buf += chunk
    return buf


def read_response(s, timeout=TIMEOUT) -> tuple[int, dict, bytes]:
    buf = read_until(s, b"\r\n\r\n", timeout)
    assert b"\r\n\r\n" in buf, f"no complete answer head within {timeout} s (got {buf[:300]!r})"
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:] if ":" in l)}
    n = int(headers.get("content-length", "0"))
    s.settimeout(timeout)
    while len(rest) < n:
        chunk = s.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, headers, rest


def expect_body():
    """A ~5.5 KB JSON body."""
    x = np.round(np.linspace(-1, 1, 16 * 36).reshape(-1, 16), 6)
    body = json.dumps({"model": {"dtype": "float64", "layers": [{"op": "tanh"}]}, "inputs": {"x": x.tolist()}}).encode()
    return body, x


def test_expect_100_continue(server_process):
    """`Expect: 100-continue`: the server answers 100 while the body is still unsent. The client below sends
    the body only after reading the 100, so a server that waited for the body would never send it (the
    read would run into its generous timeout): the ordering is the check, not how fast the 100 comes."""
    port = server_process.port
    body, x = expect_body()
    assert len(body) > 5000
    head = (f"POST /v1/forward HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n").encode()
    s = raw_http(port, head)
    try:
        first = read_until(s, b"\r\n\r\n", TIMEOUT)
        assert first.startswith(b"HTTP/1.1 100"), f"no 100 Continue before the body was sent (got {first!r})"
        leftover = first.split(b"\r\n\r\n", 1)[1]
        assert leftover == b""
        s.sendall(body)
        status, headers, payload = read_response(s)
        assert status == 200, payload[:500]
        close(json.loads(payload)["outputs"], np.tanh(x), "float64", "outputs")
    finally:
        s.close()
    # the same through http.client, the way curl would do it
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    conn.putrequest("POST", "/v1/forward")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(len(body)))
    conn.putheader("Expect", "100-continue")
    conn.endheaders()
    got = read_until(conn.sock, b"\r\n\r\n", TIMEOUT)  # the whole interim answer, however it is split
    assert got.startswith(b"HTTP/1.1 100") and got.endswith(b"\r\n\r\n"), got
    conn.sock.settimeout(TIMEOUT)
    conn.send(body)
    resp = conn.getresponse()
    assert resp.status == 200
    resp.read()
    conn.close()


def test_expect_100_continue_over_limit(limited_server):
    """Declared body above --max-body-bytes: no 100, a 413 straight away."""
    port = limited_server.port
    head = (f"POST /v1/forward HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: 50000\r\nExpect: 100-continue\r\n\r\n").encode()
    s = raw_http(port, head)
    try:
        status, headers, payload = read_response(s)  # the body is never sent: a 100 or a wait would fail here
        assert status == 413, (status, payload)
        assert headers.get("content-type", "").startswith("application/problem+json")
    finally:
        s.close()
