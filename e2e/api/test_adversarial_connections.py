"""Adversarial suite: slow and broken clients on the connection level. Slow bodies (408 under
--body-timeout while others are served), broken body framing (a 4xx on every family, never a 500), the
--max-connections cap, and --write-timeout for answers a client never reads.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time

import numpy as np
import pytest

from adversarial_support import FORWARD, HANG, MiB, b64, wait_idle
from gs_helpers import TIMEOUT, close, decode_answer, describe, post
from raw_http import closed_by_peer, has_data, post_head, raw, read_answer, tcp_state



def test_slow_bodies_get_408_while_others_are_served(main):
    """64 connections send a head and part of their body, then stall (half of them trickle one byte every
    0.5 s, which must not extend the timeout): each gets 408 with Connection: close and is closed. While
    they stall, ordinary requests are answered correctly."""
    x = np.round(np.linspace(-1, 1, 100).reshape(10, 10), 6)
    body = json.dumps({"model": {"dtype": "float64", "layers": [{"op": "tanh"}]}, "inputs": {"x": x.tolist()}}).encode()
    wait_idle(main.url)
    socks = [raw(main.port, post_head("/v1/forward", len(body)), body[:100]) for _ in range(64)]
    stop = threading.Event()

    def trickle(s, rest):
        for b in rest:
            if stop.wait(0.5):
                return
            try:
                s.send(bytes([b]))
            except OSError:
                return

    tricklers = [threading.Thread(target=trickle, args=(s, body[100:]), daemon=True) for s in socks[::2]]
    for t in tricklers:
        t.start()
    served_while_stalled = 0
    try:
        for _ in range(10):
            r = post(main.url, "/v1/forward", body)
            close(decode_answer(r, "float64", "json")["outputs"], np.tanh(x), "float64", "during slow bodies")
            if not any(has_data(s) for s in socks):
                served_while_stalled += 1
        assert served_while_stalled >= 1, "no ordinary request completed while the slow bodies were still unanswered"
        for i, s in enumerate(socks):
            status, headers, payload = read_answer(s)
            assert status == 408, (i, status, headers, payload[:300])
            assert headers.get("connection", "").lower() == "close", headers
            assert headers.get("content-type", "").startswith("application/problem+json"), headers
            assert "--body-timeout" in json.loads(payload)["detail"]
            assert closed_by_peer(s), f"connection {i} stayed open after its 408"
    finally:
        stop.set()
        for s in socks:
            s.close()
    wait_idle(main.url)
    # Clients that leave halfway through their bodies release what they reserved.
    for _ in range(8):
        s = raw(main.port, post_head("/v1/forward", 20 * MiB), b"{" + b" " * 65536)
        s.close()
    wait_idle(main.url)


FRAMING = {
    # (head extras, body bytes, half-close the client's side after sending)
    "content-length-short-then-eof": ("Content-Length: 1000\r\n", b'{"model":', True),
    "octet-stream-short-then-eof": ("Content-Length: 1000\r\n", b"\x10\x00\x00\x00", True),
    "chunked-truncated-then-eof": ("Transfer-Encoding: chunked\r\n", b'10\r\n{"model":', True),
    "chunked-without-last-chunk-then-eof": ("Transfer-Encoding: chunked\r\n", b"2\r\n{}\r\n", True),
    "chunked-invalid-size": ("Transfer-Encoding: chunked\r\n", b"zz\r\n{}\r\n0\r\n\r\n", False),
}


@pytest.mark.parametrize("kind", list(FRAMING))
def test_malformed_body_framing_is_a_client_error(main, tiny_id, kind):
    """A body that ends before its declared length (the client half-closes), or whose chunked framing is
    broken, is the client's error: a 4xx (or a close without an answer), never a 500. On every family."""
    extra, body, half_close = FRAMING[kind]
    ctype = "application/octet-stream" if kind.startswith("octet") else "application/json"
    wrong = []
    for path in ["/v1/forward", "/v1/models", f"/tesseract/{tiny_id}/apply", f"/umbridge/{tiny_id}/Evaluate"]:
        s = raw(main.port, f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\n{extra}\r\n", body)
        try:
            if half_close:
                s.shutdown(socket.SHUT_WR)
            try:
                status, headers, payload = read_answer(s)
            except AssertionError:
                continue  # closed without an answer: acceptable for a broken stream
            if not 400 <= status < 500:
                wrong.append(f"{path}: {status} {payload[:200]!r}")
        finally:
            s.close()
    wait_idle(main.url)
    assert not wrong, f"{kind}:\n" + "\n".join(wrong)


def test_max_connections(start_server):
    s = start_server(["--max-connections", "4"])
    req = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    held = []
    for _ in range(4):
        c = socket.create_connection(("127.0.0.1", s.port), timeout=TIMEOUT)
        c.sendall(req)
        status, _, _ = read_answer(c)
        assert status == 200
        held.append(c)
    try:
        for _ in range(3):  # beyond the cap: closed at once, never answered
            c = socket.create_connection(("127.0.0.1", s.port), timeout=TIMEOUT)
            try:
                c.sendall(req)
            except OSError:
                pass
            got = b""
            try:
                got = c.recv(65536, socket.MSG_PEEK)
            except OSError:
                pass
            assert not got.startswith(b"HTTP/"), f"a connection beyond --max-connections was answered: {got[:200]!r}"
            assert closed_by_peer(c, HANG), "a connection beyond --max-connections was kept open"
            c.close()
        for c in held:  # the admitted ones keep working
            c.sendall(req)
            assert read_answer(c)[0] == 200
        held.pop().close()
        deadline = time.monotonic() + HANG
        while True:  # a freed slot is usable again (once the server has seen the close)
            c = socket.create_connection(("127.0.0.1", s.port), timeout=TIMEOUT)
            try:
                c.sendall(req)
                if read_answer(c)[0] == 200:
                    c.close()
                    break
            except (OSError, AssertionError):
                pass
            c.close()
            assert time.monotonic() < deadline, "no connection admitted after one was closed"
            time.sleep(0.05)
    finally:
        for c in held:
            c.close()


def test_write_timeout_closes_unread_answers(start_server):
    """A client that never reads its 43 MB answer is disconnected by --write-timeout (the server closes the
    connection without the client reading a byte), and the server goes on serving."""
    s = start_server(["--memory-limit", "1G", "--write-timeout", "1"])
    body = json.dumps({"model": {"dtype": "float32", "layers": [{"op": "linear", "weight": b64(np.ones((8192, 1)))}]},
                       "inputs": {"x": b64(np.ones((1024, 1)))}, "output_encoding": "base64"}).encode()
    c = socket.socket()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    c.connect(("127.0.0.1", s.port))
    try:
        c.sendall(post_head("/v1/forward", len(body)).encode() + body)
        # The server's end of this connection: its FIN waits behind the unsent answer (the client reads
        # nothing), so the close shows on the server's socket, which leaves ESTABLISHED.
        port = c.getsockname()[1]
        deadline = time.monotonic() + HANG
        while tcp_state(s.port, port) == "01":
            assert time.monotonic() < deadline, "the server kept the unread answer's connection open"
            time.sleep(0.05)
        got = b""
        c.settimeout(TIMEOUT)
        try:
            while chunk := c.recv(1 << 20):
                got += chunk
        except ConnectionResetError:
            pass
        assert got.startswith(b"HTTP/1.1 200") or not got, got[:200]
        m = re.search(rb"content-length: *(\d+)", got, re.I)
        assert not m or len(got.partition(b"\r\n\r\n")[2]) < int(m.group(1)), "the whole answer arrived after all"
    finally:
        c.close()
    wait_idle(s.url)
    r = post(s.url, "/v1/forward", FORWARD)
    assert r.status_code == 200, describe(r)
