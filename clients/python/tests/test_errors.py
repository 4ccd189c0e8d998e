"""Every error answer maps to a GradserveError subclass carrying the server's problem details."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest
import torch

import gradserve
from gradserve import errors as E
from gradserve.torch import export

from conftest import inputs, make_toy


def tiny():
    return {"layers": [{"op": "linear", "weight": [[1.0, 2.0], [3.0, 4.0]], "bias": [0.5, -0.5]}, {"op": "tanh"}]}


def test_400_malformed_json(client):
    with pytest.raises(gradserve.BadRequest) as ei:
        client.request("POST", "/v1/forward", data=b'{"model": ', content_type="application/json")
    e = ei.value
    assert e.status == 400 and e.title == "Malformed JSON" and e.detail
    assert e.type.endswith("/400") and e.method == "POST" and e.url.endswith("/v1/forward")
    assert isinstance(e, ValueError) and "400 Malformed JSON" in str(e)


@pytest.mark.parametrize(
    "call, path",
    [
        (lambda c, m, x, t: c.forward(m, x[:, :5], t), "inputs.x"),
        (lambda c, m, x, t: c.forward(m, np.where(np.arange(12) == 3, np.nan, x.numpy()), t), "inputs.x"),
        (lambda c, m, x, t: c.forward(m, x, t[:2]), "inputs.t"),
        (lambda c, m, x, t: c.vjp(m, x, t, x[:, :4]), "grad_outputs"),
        (lambda c, m, x, t: c.vjp(m, x, t, x, wrt=["y"]), "wrt[0]"),
        (lambda c, m, x, t: c.jacobian(m, x, t, mode="sideways"), "mode"),
        (lambda c, m, x, t: c.divergence(m, x, t, method="guess"), "method"),
        (lambda c, m, x, t: c.forward({**m, "layers": [{"op": "swish"}]}, x, t), "model.layers[0].op"),
    ],
)
def test_422_names_the_field(client, call, path):
    m = export(make_toy())
    x, t = inputs(3, 12)
    with pytest.raises(gradserve.InvalidRequest) as ei:
        call(client, m, x, t)
    e = ei.value
    assert e.status == 422 and e.title
    assert any(f.path.startswith(path) for f in e.errors), (path, e.errors)
    assert path in str(e) and isinstance(e, ValueError)
    assert e.fields and all(isinstance(f, gradserve.FieldError) for f in e.errors)


def test_422_t_for_a_model_without_t(client):
    with pytest.raises(gradserve.InvalidRequest) as ei:
        client.forward(tiny(), [[1.0, 2.0]], [0.5])
    assert ei.value.errors[0].path == "inputs.t"


def test_422_divergence_needs_square(client):
    m = export(make_toy(out_dim=5))
    x, t = inputs(2, 12)
    with pytest.raises(gradserve.InvalidRequest):
        client.divergence(m, x, t)


def test_422_answer_too_large_for_one_row(start_server):
    s = start_server(["--max-output-elements", "100"])
    m = export(make_toy())
    x, t = inputs(1, 12)  # one row: 12*12 + 12 numbers, cannot be split further
    with gradserve.Client(s.url) as c, pytest.raises(gradserve.InvalidRequest) as ei:
        c.jacobian(m, x, t)
    assert ei.value.title == "Answer too large" and "100" in ei.value.detail


def test_404_unknown_model_is_not_registered_behind_your_back(client):
    x, _ = inputs(1, 2, with_t=False)
    with pytest.raises(gradserve.NotFound) as ei:
        client.forward("0" * 64, x)
    e = ei.value
    assert e.status == 404 and e.title == "Unknown model" and e.errors[0].path == "model"
    assert isinstance(e, LookupError)
    with pytest.raises(gradserve.NotFound):
        client.models("0" * 64)
    with pytest.raises(gradserve.NotFound):
        client.delete("0" * 64)
    with pytest.raises(gradserve.NotFound):
        client.request("GET", "/v1/nothing-here")


def test_401_api_key(start_server, monkeypatch):
    s = start_server(["--api-key", "k3y"])
    x = [[1.0, -2.0]]
    monkeypatch.delenv("GRADSERVE_API_KEY", raising=False)
    for key in (None, "wrong"):
        with gradserve.Client(s.url, api_key=key) as c:
            with pytest.raises(gradserve.Unauthorized) as ei:
                c.forward(tiny(), x)
            assert ei.value.status == 401
            assert c.health().status == "ok"  # health stays open
    with gradserve.Client(s.url, api_key="k3y") as c:
        assert c.forward(tiny(), x).outputs.shape == (1, 2)
        assert c.info().auth is True
    monkeypatch.setenv("GRADSERVE_API_KEY", "k3y")
    with gradserve.Client(s.url) as c:
        assert c.forward(tiny(), x).outputs.shape == (1, 2)


def test_413_body_too_large(start_server):
    s = start_server(["--max-body-bytes", "4096"])
    big = torch.nn.Sequential(torch.nn.Linear(64, 64))  # 16 KiB of weights: no split makes it fit
    with gradserve.Client(s.url) as c:
        with pytest.raises(gradserve.PayloadTooLarge) as ei:
            c.forward(export(big), torch.randn(2, 64))
        assert ei.value.status == 413 and ei.value.title == "Body too large"
        with pytest.raises(gradserve.PayloadTooLarge):
            c.register(export(big))


# Seconds the blocking benchmark holds the only worker (the server's --benchmark-max-seconds). The checks
# below need the worker still busy a moment after they saw it busy; a long hold keeps a descheduled test
# process on a loaded machine from missing that moment.
BLOCK_SECONDS = 5
# Seconds to wait for the benchmark to occupy the worker: a bound for a hang, not a speed claim.
WAIT_SECONDS = 60


def _block(url: str, seconds: float) -> threading.Thread:
    """Keeps the server's only worker busy with a benchmark of about `seconds` (its --benchmark-max-seconds)."""

    def run():
        with gradserve.Client(url, timeout=120) as c:
            c.benchmark(workload="linear", in_features=512, out_features=512, batch=512, iterations=100000)

    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th


def _wait_busy(url: str) -> None:
    with gradserve.Client(url, retries=0) as c:
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            try:
                c.health(ready=True)
            except gradserve.ServerBusy:
                return
            time.sleep(0.01)
    raise AssertionError("the server never became busy")


def test_503_busy_then_retried(start_server):
    s = start_server(["--workers", "1", "--max-queued", "0", "--benchmark-max-seconds", str(BLOCK_SECONDS)])
    th = _block(s.url, BLOCK_SECONDS)
    _wait_busy(s.url)
    with gradserve.Client(s.url, retries=0) as c, pytest.raises(gradserve.ServerBusy) as ei:
        c.forward(tiny(), [[1.0, 2.0]])
    assert ei.value.status == 503 and ei.value.retry_after == 1.0
    # a client that retries waits Retry-After (1 s) and tries again, until the benchmark has let the worker
    # go: enough retries to outlast it (BLOCK_SECONDS and some) even on a slow machine
    with gradserve.Client(s.url, retries=12 * BLOCK_SECONDS) as c:
        assert c.forward(tiny(), [[1.0, 2.0]]).outputs.shape == (1, 2)
    th.join(120)


def test_504_deadline(start_server):
    """A request queued behind a benchmark that holds the only worker for BLOCK_SECONDS (far longer than
    the 0.3 s deadline) is answered 504 at its deadline."""
    s = start_server(["--workers", "1", "--max-queued", "4", "--deadline", "0.3", "--benchmark-max-seconds", str(BLOCK_SECONDS)])
    th = _block(s.url, BLOCK_SECONDS)
    _wait_busy_pending(s.url)
    with gradserve.Client(s.url) as c, pytest.raises(gradserve.DeadlineExceeded) as ei:
        c.forward(tiny(), [[1.0, 2.0]])
    assert ei.value.status == 504 and isinstance(ei.value, TimeoutError)
    th.join(120)


def _wait_busy_pending(url: str) -> None:
    with gradserve.Client(url) as c:
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            if c.health(ready=True).get("pending", 0) >= 1:
                return
            time.sleep(0.01)
    raise AssertionError("the benchmark never started")


def test_connection_failed():
    # A port this test holds bound but not listening: connections to it are refused, and no other process
    # can start listening on it meanwhile (a port merely found free could be taken before the test ran).
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        with gradserve.Client(f"http://127.0.0.1:{port}") as c:
            with pytest.raises(gradserve.ConnectionFailed) as ei:
                c.forward(tiny(), [[1.0, 2.0]])
            assert ei.value.status is None and isinstance(ei.value, ConnectionError)
            with pytest.raises(gradserve.ConnectionFailed):
                c.health(wait=0.3)


def test_other_answers_map_without_a_problem_document():
    """A proxy's HTML error page and a 500 (which gradserve itself should never send)."""
    e = E.from_response(502, "Bad Gateway", "text/html", "<html>upstream down</html>", {}, "POST", "http://p/v1/vjp")
    assert isinstance(e, gradserve.ServerError) and e.status == 502 and e.title == "Bad Gateway" and "upstream" in e.detail
    e = E.from_response(
        500,
        "Internal Server Error",
        "application/problem+json",
        '{"type":"x","title":"Internal error","status":500,"detail":"boom","errors":[]}',
        {},
        "GET",
        "u",
    )
    assert isinstance(e, gradserve.ServerError) and e.title == "Internal error" and e.detail == "boom"
    e = E.from_response(418, "I'm a teapot", "", "", {}, "GET", "u")
    assert type(e) is gradserve.GradserveError and e.status == 418
    e = E.from_response(
        503,
        "Service Unavailable",
        "application/problem+json",
        '{"title":"Server busy","status":503,"detail":"d","errors":[{"path":"a","message":"b"}]}',
        {"Retry-After": "3"},
        "POST",
        "u",
    )
    assert isinstance(e, gradserve.ServerBusy) and e.retry_after == 3.0 and e.fields == {"a": "b"}
