"""Retries: connection errors, 502 and 503 are tried again with backoff (or Retry-After), never a 4xx or a read
timeout; with several URLs a failed try moves to the next replica at once.

Scripted answers come from a small stub HTTP server in this process (each request takes the next action of
its script), so every case is exact and fast; the failover cases use a live gradserve beside a dead port.
"""

from __future__ import annotations

import http.server
import json
import socket
import threading

import numpy as np
import pytest
import torch

import gradserve
from gradserve import client as C
from gradserve import errors as E

from conftest import inputs, make_toy
from gradserve.torch import export


class _Stub:
    """An HTTP server on 127.0.0.1 (port 0) answering each request with the next action of `script`:
    an int status (a problem document for >= 400), ("status", headers), "close" (drop the connection
    without answering) or ("sleep", seconds) (answer 200 after a pause). Past the script's end: 200."""

    def __init__(self, script):
        self.script = list(script)
        self.seen: list[tuple[str, str]] = []
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _answer(self):
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(n)
                stub.seen.append((self.command, self.path))
                action = stub.script.pop(0) if stub.script else 200
                headers = {}
                if isinstance(action, tuple) and action[0] == "sleep":
                    threading.Event().wait(action[1])  # not time.sleep: the tests record the client's sleeps
                    action = 200
                elif isinstance(action, tuple):
                    action, headers = action
                if action == "close":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                body = json.dumps({"status": "ok"} if action < 400 else {"title": "t", "status": action, "detail": "d"}).encode()
                self.send_response(action)
                self.send_header("Content-Type", "application/json" if action < 400 else "application/problem+json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_DELETE = _answer

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub():
    made = []

    def make(script):
        s = _Stub(script)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


@pytest.fixture
def sleeps(monkeypatch):
    """The client's waits, recorded instead of slept (time.sleep is patched for the whole process: the stub
    waits with threading.Event)."""
    waited: list[float] = []
    monkeypatch.setattr(C.time, "sleep", lambda s: waited.append(s))
    return waited


@pytest.fixture
def dead_url():
    """A URL whose port this test holds bound but not listening: connections are refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{held.getsockname()[1]}"


@pytest.mark.parametrize("status", [502, 503])
def test_502_and_503_are_retried_with_backoff(stub, sleeps, status):
    s = stub([status, status])
    with gradserve.Client(s.url, retries=3) as c:
        assert c.request("POST", "/v1/forward", json_body={}).status_code == 200
    assert len(s.seen) == 3 and len(sleeps) == 2
    # exponential with jitter: the n-th wait lies in [d/2, d], d = BACKOFF_BASE * 2**(n-1)
    for n, w in enumerate(sleeps, 1):
        d = C.BACKOFF_BASE * 2 ** (n - 1)
        assert d / 2 <= w <= d, (n, w)


def test_retry_after_is_honoured(stub, sleeps):
    s = stub([(503, {"Retry-After": "2"})])
    with gradserve.Client(s.url) as c:
        c.request("GET", "/readyz")
    assert sleeps == [2.0] and len(s.seen) == 2


@pytest.mark.parametrize("status", [400, 401, 404, 413, 422, 500, 504])
def test_other_statuses_are_never_retried(stub, sleeps, status):
    s = stub([status])
    with gradserve.Client(s.url, retries=5) as c, pytest.raises(E.GradserveError) as ei:
        c.request("POST", "/v1/vjp", json_body={})
    assert ei.value.status == status and len(s.seen) == 1 and sleeps == []


def test_retries_run_out(stub, sleeps):
    s = stub([502] * 10)
    with gradserve.Client(s.url, retries=2) as c, pytest.raises(gradserve.ServerError) as ei:
        c.request("POST", "/v1/vjp", json_body={})
    assert ei.value.status == 502 and len(s.seen) == 3 and len(sleeps) == 2


def test_a_dropped_connection_is_retried(stub, sleeps):
    """The server closes the connection without answering (a replica killed mid-request)."""
    s = stub(["close", "close"])
    with gradserve.Client(s.url, retries=3) as c:
        assert c.request("POST", "/v1/jacobian", json_body={}).json() == {"status": "ok"}
    assert len(s.seen) == 3 and len(sleeps) == 2


def test_refused_connections_are_retried_then_raise(dead_url, sleeps):
    with gradserve.Client(dead_url, retries=4) as c, pytest.raises(gradserve.ConnectionFailed) as ei:
        c.request("GET", "/v1/info")
    assert len(sleeps) == 4 and not ei.value.timed_out and ei.value.status is None


def test_a_read_timeout_is_not_retried(stub, sleeps):
    """No answer within the client's timeout: the server may still be computing; the caller decides."""
    s = stub([("sleep", 1.0)])
    with gradserve.Client(s.url, timeout=0.2, retries=3) as c, pytest.raises(gradserve.ConnectionFailed) as ei:
        c.request("POST", "/v1/jacobian", json_body={})
    assert ei.value.timed_out and sleeps == [] and len(s.seen) == 1


def test_backoff_delay_bounds():
    for attempt in range(1, 12):
        d = min(C.BACKOFF_CAP, C.BACKOFF_BASE * 2 ** (attempt - 1))
        for _ in range(20):
            assert d / 2 <= C.backoff_delay(attempt) <= d
    assert C.backoff_delay(1, 0.0) == 0.0 and C.backoff_delay(3, 60.0) == C.RETRY_AFTER_CAP


def test_retryable():
    assert C.retryable(E.ConnectionFailed(None, "Connection failed"))
    assert not C.retryable(E.ConnectionFailed(None, "Timed out", timed_out=True))
    assert C.retryable(E.ServerBusy(503, "busy")) and C.retryable(E.ServerError(502, "Bad Gateway"))
    for status in (400, 404, 422, 500, 504):
        assert not C.retryable(E.error_class(status)(status, "x"))


def test_failover_to_the_next_replica_without_waiting(server, dead_url, sleeps):
    """A dead replica first in the list: the request goes to the live one at once (no backoff), and the
    answer is the model's (checked against PyTorch)."""
    m = make_toy(seed=21)
    x, t = inputs(3, 12)
    with gradserve.Client([dead_url, server], retries=3) as c:
        r = c.forward(export(m), x.numpy(), t.numpy())
    np.testing.assert_allclose(r.outputs, m(x, t).detach().numpy(), rtol=1e-10, atol=1e-12)
    assert sleeps == []


def test_register_skips_an_unreachable_replica_and_split_batches_fail_over(server, dead_url, sleeps):
    """register() succeeds when one replica took the model; a split batch whose spans start on the dead
    replica is computed by the live one (registered there by id)."""
    m = make_toy(seed=22)
    x, t = inputs(7, 12)
    with gradserve.Client([server, dead_url], retries=3) as c:
        mid = c.register(export(m))
        r = c.vjp(mid, x.numpy(), t.numpy(), np.ones((7, 12)), batch_size=2)
    assert r.requests == 4
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(m(xr, t), xr, grad_outputs=torch.ones(7, 12, dtype=x.dtype))
    np.testing.assert_allclose(r.grads.x, g.numpy(), rtol=1e-10, atol=1e-12)


def test_errors_pickle_with_timed_out():
    import pickle

    e = pickle.loads(pickle.dumps(E.ConnectionFailed(None, "Timed out", "d", timed_out=True, url="u")))
    assert e.timed_out and e.url == "u" and isinstance(e, ConnectionError)


def test_the_environment_is_honoured(stub, monkeypatch):
    """The exchanges use urllib3 directly, with the environment read as ``requests`` reads it: a proxy from
    ``http_proxy`` (here the stub, which then sees the absolute URL), unless ``no_proxy`` exempts the host."""
    proxy = stub([200])
    target = "http://gradserve.invalid:8000"  # .invalid never resolves: only the proxy can answer for it
    for name in ("http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, proxy.url)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    with gradserve.Client(target, retries=0) as c:
        assert c.request("GET", "/v1/info").json() == {"status": "ok"}
    assert proxy.seen == [("GET", f"{target}/v1/info")]
    monkeypatch.setenv("no_proxy", "gradserve.invalid")
    with gradserve.Client(target, retries=0) as c, pytest.raises(gradserve.ConnectionFailed) as ei:
        c.request("GET", "/v1/info")
    assert "cannot reach" in ei.value.detail and len(proxy.seen) == 1


def test_threads_share_the_connection_pool(server):
    """One pool for every thread of a client: parallel calls reuse connections instead of opening one each."""
    with gradserve.Client(server, parallel=4) as c:
        threads = [threading.Thread(target=lambda: [c.request("GET", "/v1/info") for _ in range(10)]) for _ in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        pools = c._manager(server).pools
        opened = sum(pools[k].num_connections for k in pools.keys())
    assert 1 <= opened <= 4, opened
