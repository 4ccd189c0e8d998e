"""Every compute method of the client against PyTorch computed here."""

from __future__ import annotations

import numpy as np
import pytest
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

DTYPES = [torch.float32, torch.float64]
TRANSPORTS = ["auto", "base64", "safetensors", "json"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_forward(client, dtype, transport):
    m = make_toy(dtype=dtype)
    x, t = inputs(5, 12, dtype)
    r = client.forward(export(m), x, t, transport=transport)
    assert isinstance(r.outputs, torch.Tensor) and r.outputs.dtype == dtype
    assert_close(r.outputs, ref_forward(m, x, t), dtype, "outputs")
    assert set(r.timing) == {"read_ms", "queue_ms", "decode_ms", "compute_ms", "encode_ms"}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_vjp_x_t_params(client, dtype, transport):
    m = make_toy(dtype=dtype)
    x, t = inputs(4, 12, dtype)
    v = torch.randn(4, 12, dtype=dtype)
    y, want = ref_vjp(m, x, t, v)
    r = client.vjp(export(m), x, t, grad_outputs=v, wrt=["x", "t", "params"], transport=transport)
    assert_close(r.outputs, y, dtype, "outputs")
    assert_close(r.grads.x, want["x"], dtype, "grads.x")
    assert_close(r.grads.t, want["t"], dtype, "grads.t")
    assert set(r.grads.params) == set(want["params"]) == set(m.state_dict())
    for name, g in want["params"].items():
        assert_close(r.grads.params[name], g, dtype, f"grads.params.{name}")


def test_vjp_default_wrt_is_x_and_positional_v(client):
    m = make_toy()
    x, t = inputs(3, 12)
    v = torch.randn(3, 12, dtype=torch.float64)
    r = client.vjp(export(m), x, t, v)
    assert set(r.grads) == {"x"}
    assert_close(r.grads.x, ref_vjp(m, x, t, v)[1]["x"], torch.float64, "grads.x")
    with pytest.raises(TypeError):
        client.vjp(export(m), x, t)


def test_vjp_return_outputs_false(client):
    m = make_toy()
    x, t = inputs(3, 12)
    r = client.vjp(export(m), x, t, torch.ones(3, 12, dtype=torch.float64), return_outputs=False)
    assert "outputs" not in r and "x" in r.grads


@pytest.mark.parametrize("dtype", DTYPES)
def test_vjp_grads_batched(client, dtype):
    m = make_toy(dtype=dtype)
    x, t = inputs(3, 12, dtype)
    v = torch.randn(5, 3, 12, dtype=dtype)
    xr, tr = x.clone().requires_grad_(True), t.clone().requires_grad_(True)
    y = m(xr, tr)
    params = list(m.parameters())
    gx, gt, *gp = torch.autograd.grad(y, [xr, tr, *params], grad_outputs=v, is_grads_batched=True)
    r = client.vjp(export(m), x, t, v, wrt=("x", "t", "params"), is_grads_batched=True)
    assert_close(r.grads.x, gx, dtype, "grads.x")
    assert_close(r.grads.t, gt, dtype, "grads.t")
    for (name, _), g in zip(m.named_parameters(), gp):
        assert_close(r.grads.params[name], g, dtype, name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("form", ["array", "dict", "tuple", "t_only", "batched"])
def test_jvp(client, dtype, form):
    m = make_toy(dtype=dtype)
    x, t = inputs(4, 12, dtype)
    ux, ut = torch.randn(4, 12, dtype=dtype), torch.randn(4, dtype=dtype)
    if form == "array":
        r = client.jvp(export(m), x, t, ux)
        want = ref_jvp(m, x, t, ux, torch.zeros_like(t))
    elif form == "dict":
        r = client.jvp(export(m), x, t, {"x": ux, "t": ut})
        want = ref_jvp(m, x, t, ux, ut)
    elif form == "tuple":
        r = client.jvp(export(m), x, t, (ux, ut))
        want = ref_jvp(m, x, t, ux, ut)
    elif form == "t_only":
        r = client.jvp(export(m), x, t, {"t": ut})
        want = ref_jvp(m, x, t, torch.zeros_like(x), ut)
    else:
        uxk, utk = torch.randn(3, 4, 12, dtype=dtype), torch.randn(3, 4, dtype=dtype)
        r = client.jvp(export(m), x, t, (uxk, utk))
        want = torch.stack([ref_jvp(m, x, t, uxk[i], utk[i]) for i in range(3)])
    assert_close(r.jvp, want, dtype, "jvp")
    assert_close(r.outputs, ref_forward(m, x, t), dtype, "outputs")


def test_jvp_needs_tangents(client):
    m = make_toy()
    x, t = inputs(2, 12)
    with pytest.raises(TypeError):
        client.jvp(export(m), x, t)
    with pytest.raises(ValueError):
        client.jvp(export(m), x, t, {"y": x})


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["auto", "reverse", "forward"])
@pytest.mark.parametrize("out_dim", [12, 5, 20])
def test_jacobian(client, dtype, mode, out_dim):
    m = make_toy(dtype=dtype, out_dim=out_dim)
    x, t = inputs(3, 12, dtype)
    r = client.jacobian(export(m), x, t, wrt=["x", "t"], mode=mode)
    jx, jt = ref_jacobian(m, x, t)
    assert r.jacobian.x.shape == (3, out_dim, 12)
    assert_close(r.jacobian.x, jx, dtype, "jacobian.x")
    assert_close(r.jacobian.t, jt, dtype, "jacobian.t")
    assert_close(r.outputs, ref_forward(m, x, t), dtype, "outputs")
    expected_mode = mode if mode != "auto" else ("reverse" if out_dim <= 12 else "forward")
    assert r.mode == expected_mode


def test_jacobian_contractions(client):
    """einsum('bi,bij->bj', v, J) is the VJP; the transposed contraction is the JVP with tangent v."""
    m = make_toy()
    x, t = inputs(3, 12)
    v = torch.randn(3, 12, dtype=torch.float64)
    J = client.jacobian(export(m), x, t).jacobian.x
    _, want = ref_vjp(m, x, t, v, with_params=False)
    assert_close(torch.einsum("bi,bij->bj", v, J), want["x"], torch.float64, "vjp by einsum")
    wrong = torch.einsum("bi,bji->bj", v, J)
    assert not torch.allclose(wrong, want["x"], rtol=1e-3, atol=1e-6)
    assert_close(wrong, ref_jvp(m, x, t, v, torch.zeros_like(t)), torch.float64, "the transposed contraction is a JVP")


@pytest.mark.parametrize("dtype", DTYPES)
def test_divergence(client, dtype):
    m = make_toy(dtype=dtype)
    x, t = inputs(6, 12, dtype)
    jx, _ = ref_jacobian(m, x, t)
    exact = torch.diagonal(jx, dim1=1, dim2=2).sum(-1)
    r = client.divergence(export(m), x, t)
    assert r.method == "exact"
    assert_close(r.divergence, exact, dtype, "divergence")
    assert "outputs" not in r
    r = client.divergence(export(m), x, t, return_outputs=True)
    assert_close(r.outputs, ref_forward(m, x, t), dtype, "outputs")


def test_hutchinson(client):
    m = make_toy()
    x, t = inputs(6, 12)
    jx, _ = ref_jacobian(m, x, t)
    exact = torch.diagonal(jx, dim1=1, dim2=2).sum(-1)
    probes = 2000
    a = client.divergence(export(m), x, t, method="hutchinson", probes=probes, seed=7)
    b = client.divergence(export(m), x, t, method="hutchinson", probes=probes, seed=7)
    c = client.divergence(export(m), x, t, method="hutchinson", probes=probes, seed=8)
    assert a.method == "hutchinson"
    assert torch.equal(a.divergence, b.divergence)
    assert not torch.equal(a.divergence, c.divergence)
    # Rademacher: Var(zᵀAz) = Σ_{i<j} (A_ij + A_ji)²
    s = jx + jx.transpose(1, 2)
    var = (torch.triu(s, diagonal=1) ** 2).sum((1, 2))
    std = (var / probes).sqrt()
    assert ((a.divergence - exact).abs() < 6 * std + 1e-9).all(), (a.divergence, exact, std)


def test_numpy_in_numpy_out_lists_too(client):
    m = make_toy(dtype=torch.float32)
    x, t = inputs(3, 12, torch.float32)
    want = ref_forward(m, x, t).numpy()
    r = client.forward(export(m), x.numpy(), t.numpy())
    assert isinstance(r.outputs, np.ndarray) and r.outputs.dtype == np.float32 and r.outputs.flags.writeable
    assert_close(r.outputs, want, torch.float32, "numpy")
    r = client.forward(export(m), x.tolist(), t.tolist())
    assert isinstance(r.outputs, np.ndarray)
    assert_close(r.outputs, want, torch.float32, "lists")
    # float64 inputs to a float32 model are cast (as the server would)
    r = client.forward(export(m), x.double().numpy(), t.double().numpy())
    assert r.outputs.dtype == np.float32
    assert_close(r.outputs, want, torch.float32, "cast")


def test_torch_outputs_follow_inputs_and_accept_requires_grad(client):
    m = make_toy()
    x, t = inputs(3, 12)
    r = client.jacobian(m, x.requires_grad_(True), t)  # a module is exported on the fly
    assert isinstance(r.jacobian.x, torch.Tensor) and r.jacobian.x.dtype == torch.float64
    assert r.jacobian.x.device == x.device
    r.jacobian.x += 1  # writable, no warnings about read-only numpy memory


def test_model_without_t_and_activation_only(client):
    m = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 6)).double()
    x, _ = inputs(4, 6, with_t=False)
    r = client.jacobian(export(m), x)
    assert_close(r.jacobian.x, ref_jacobian(m, x, None)[0], torch.float64, "jacobian")
    act = torch.nn.Sequential(torch.nn.Softplus(beta=2.0))
    r = client.jacobian(export(act, dtype="float64"), x)
    assert_close(r.jacobian.x, ref_jacobian(act, x, None)[0], torch.float64, "activation only")
    r = client.vjp(export(act, dtype="float64"), x, grad_outputs=torch.ones_like(x), wrt=["x", "params"])
    assert r.grads.params == {}


def test_benchmark(client):
    m = make_toy(dtype=torch.float32)
    rep = client.benchmark(export(m), operation="jacobian", batch=2, methods=["reverse", "rowloop"], iterations=3)
    assert rep.machine.cores >= 1 and rep.machine.blas.library
    assert [r.method for r in rep.results] == ["reverse", "rowloop"]
    for r in rep.results:
        assert r.iterations >= 1 and r.median_ms > 0 and r.operation == "jacobian"
    rep = client.benchmark(workload="linear", in_features=8, out_features=4, batch=2, iterations=3)
    assert rep.results[0].method == "gemm"
    with pytest.raises(TypeError):
        client.benchmark()


def test_service_routes(client):
    assert client.health().status == "ok"
    assert client.health(ready=True).status == "ready"
    info = client.info()
    assert info.limits.max_output_elements > 0 and "jacobian" in info.operations
    assert isinstance(client.models(), list)


def test_url_defaults(monkeypatch):
    monkeypatch.delenv("GRADSERVE_URL", raising=False)
    assert gradserve.Client().url == "http://127.0.0.1:8080"
    monkeypatch.setenv("GRADSERVE_URL", "http://example.test:9/")
    assert gradserve.Client().url == "http://example.test:9"
    c = gradserve.Client("a:1, http://b:2/")
    assert c.urls == ["http://a:1", "http://b:2"] and c.parallel == 2
    assert gradserve.Client(["http://a:1"]).urls == ["http://a:1"]
    with pytest.raises(ValueError):
        gradserve.Client("http://a", transport="xml")


def test_connections_are_reused(server, monkeypatch):
    import urllib3.connectionpool as cp

    opened = []
    original = cp.HTTPConnectionPool._new_conn

    def counting(self):
        opened.append(self.port)
        return original(self)

    monkeypatch.setattr(cp.HTTPConnectionPool, "_new_conn", counting)
    m = make_toy()
    x, t = inputs(2, 12)
    with gradserve.Client(server) as c:
        for _ in range(10):
            c.forward(export(m), x, t)
            c.jacobian(export(m), x, t)
            c.health()
    assert len(opened) == 1, opened
