"""Splitting a batch over several requests (and several servers), results concatenated in order."""

from __future__ import annotations

import pytest
import requests
import torch

import gradserve
from gradserve.torch import export

from conftest import (
    assert_close,
    inputs,
    make_toy,
    ref_forward,
    ref_jacobian,
    ref_jvp,
    ref_vjp,
)


def _compute_posts(url: str) -> float:
    total = 0.0
    for line in requests.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("gradserve_http_requests_total{") and 'method="POST"' in line and '"/v1/models"' not in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.parametrize("batch_size", [1, 3, 7, 100])
def test_every_operation_split(client, batch_size):
    m = make_toy(seed=21)
    mid = client.register(export(m))
    b = 10
    x, t = inputs(b, 12)
    v = torch.randn(b, 12, dtype=torch.float64)
    n = -(-b // batch_size)

    r = client.forward(mid, x, t, batch_size=batch_size)
    assert r.requests == n
    assert_close(r.outputs, ref_forward(m, x, t), torch.float64, "outputs")

    r = client.vjp(mid, x, t, v, wrt=["x", "t", "params"], batch_size=batch_size)
    y, want = ref_vjp(m, x, t, v)
    assert r.requests == n
    assert_close(r.outputs, y, torch.float64, "outputs")
    assert_close(r.grads.x, want["x"], torch.float64, "grads.x")
    assert_close(r.grads.t, want["t"], torch.float64, "grads.t")
    for name, g in want["params"].items():  # sums over the batch: summed over the requests
        assert_close(r.grads.params[name], g, torch.float64, name)

    r = client.jvp(mid, x, t, (v, t), batch_size=batch_size)
    assert_close(r.jvp, ref_jvp(m, x, t, v, t), torch.float64, "jvp")

    r = client.jacobian(mid, x, t, wrt=["x", "t"], batch_size=batch_size)
    jx, jt = ref_jacobian(m, x, t)
    assert r.requests == n and r.mode == "reverse"
    assert_close(r.jacobian.x, jx, torch.float64, "jacobian.x")
    assert_close(r.jacobian.t, jt, torch.float64, "jacobian.t")

    r = client.divergence(mid, x, t, batch_size=batch_size)
    assert_close(r.divergence, torch.diagonal(jx, dim1=1, dim2=2).sum(-1), torch.float64, "divergence")
    assert set(r.timing) == {"read_ms", "queue_ms", "decode_ms", "compute_ms", "encode_ms"}


def test_k_batched_split_on_the_batch_axis(client):
    m = make_toy(seed=22)
    x, t = inputs(9, 12)
    v = torch.randn(4, 9, 12, dtype=torch.float64)
    r = client.vjp(export(m), x, t, v, wrt=["x", "t", "params"], is_grads_batched=True, batch_size=4)
    assert r.requests == 3 and r.grads.x.shape == (4, 9, 12)
    xr, tr = x.clone().requires_grad_(True), t.clone().requires_grad_(True)
    gx, gt, *gp = torch.autograd.grad(m(xr, tr), [xr, tr, *m.parameters()], grad_outputs=v, is_grads_batched=True)
    assert_close(r.grads.x, gx, torch.float64, "grads.x")
    assert_close(r.grads.t, gt, torch.float64, "grads.t")
    for (name, _), g in zip(m.named_parameters(), gp):
        assert_close(r.grads.params[name], g, torch.float64, name)
    u = torch.randn(3, 9, 12, dtype=torch.float64)
    r = client.jvp(export(m), x, t, u, batch_size=2)
    assert r.requests == 5 and r.jvp.shape == (3, 9, 12)
    want = torch.stack([ref_jvp(m, x, t, u[k], torch.zeros_like(t)) for k in range(3)])
    assert_close(r.jvp, want, torch.float64, "K-batched jvp")


def test_client_default_batch_size(server):
    m = make_toy(seed=23)
    x, t = inputs(8, 12)
    with gradserve.Client(server, batch_size=3) as c:
        r = c.jacobian(export(m), x, t)
    assert r.requests == 3
    assert_close(r.jacobian.x, ref_jacobian(m, x, t)[0], torch.float64, "jacobian")


def test_split_to_fit_the_output_limit(start_server):
    """One request would be refused (422); the client splits on its own from /v1/info's limits."""
    s = start_server(["--max-output-elements", "2000"])
    m = make_toy(seed=24)
    x, t = inputs(20, 12)  # 20 * (12*12 + 12) = 3120 numbers
    with gradserve.Client(s.url) as c:
        r = c.jacobian(export(m), x, t)
        assert r.requests >= 2
        assert_close(r.jacobian.x, ref_jacobian(m, x, t)[0], torch.float64, "jacobian")
        with pytest.raises(gradserve.InvalidRequest):  # what a single request gets
            c.request("POST", "/v1/jacobian", json_body={"model": export_json(m), "inputs": {"x": x.tolist(), "t": t.tolist()}})


def export_json(m):
    import json

    return json.loads(gradserve.dumps(export(m)))


def test_split_to_fit_the_body_limit(start_server):
    s = start_server(["--max-body-bytes", "60000"])
    m = torch.nn.Sequential(torch.nn.Linear(40, 40), torch.nn.GELU()).double()
    x = torch.randn(400, 40, dtype=torch.float64)  # 128 KB of inputs
    with gradserve.Client(s.url) as c:
        r = c.forward(export(m), x)
        assert r.requests >= 3
        assert_close(r.outputs, ref_forward(m, x, None), torch.float64, "outputs")


def test_several_servers_in_parallel(start_server):
    a, b = start_server(), start_server()
    m = make_toy(seed=25)
    x, t = inputs(24, 12)
    v = torch.randn(24, 12, dtype=torch.float64)
    with gradserve.Client([a.url, b.url], batch_size=4) as c:
        assert c.parallel == 2
        before = _compute_posts(a.url), _compute_posts(b.url)
        r = c.jacobian(export(m), x, t)
        after = _compute_posts(a.url), _compute_posts(b.url)
        assert r.requests == 6
        assert after[0] - before[0] == 3 and after[1] - before[1] == 3
        assert_close(r.jacobian.x, ref_jacobian(m, x, t)[0], torch.float64, "jacobian over 2 servers")
        r = c.vjp(export(m), x, t, v, wrt=["x", "params"])
        _, want = ref_vjp(m, x, t, v)
        assert_close(r.grads.x, want["x"], torch.float64, "grads.x over 2 servers")
        for name, g in want["params"].items():
            assert_close(r.grads.params[name], g, torch.float64, name)
        # the model was registered on both; one replica restarts empty: the client registers it again there
        mid = c.register(export(m))
        assert mid in [e.id for e in c.models(url=a.url)] and mid in [e.id for e in c.models(url=b.url)]
        b.restart(fresh_data=True)
        r = c.forward(mid, x, t)
        assert_close(r.outputs, ref_forward(m, x, t), torch.float64, "after a replica restart")
        assert mid in [e.id for e in c.models(url=b.url)]


def test_more_parallel_requests_than_servers(server):
    m = make_toy(seed=26)
    x, t = inputs(16, 12)
    with gradserve.Client(server, batch_size=2, parallel=4) as c:
        r = c.jacobian(export(m), x, t)
    assert r.requests == 8
    assert_close(r.jacobian.x, ref_jacobian(m, x, t)[0], torch.float64, "parallel on one server")


def test_an_error_in_one_part_raises(client):
    m = export(make_toy(seed=27))
    x, t = inputs(6, 12)
    x[4, 0] = float("nan")
    with pytest.raises(gradserve.InvalidRequest) as ei:
        client.forward(m, x, t, batch_size=2)
    assert ei.value.errors[0].path.startswith("inputs.x")
