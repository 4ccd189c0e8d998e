"""Fixtures for the client tests: live gradserve servers and PyTorch references.

`server` is one server for the whole session; `start_server(args=[...])` starts others (stopped at
the end), all with the repository's shared test support (e2e/support/gradserve_testing), which also
builds the ToyMLP. Everything is checked against PyTorch computed here, never against stored answers.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "e2e" / "support"))

from gradserve_testing.server import ServerProcess as Server, server_binary  # noqa: E402
from gradserve_testing.toymlp import ToyMLP, toy_mlp  # noqa: E402,F401

import gradserve  # noqa: E402


@pytest.fixture(scope="session")
def start_server():
    started: list[Server] = []

    def start(args=None, data_dir=None, env=None) -> Server:
        s = Server(data_dir, args, env).start()
        started.append(s)
        return s

    yield start
    for s in reversed(started):
        s.stop()


@pytest.fixture(scope="session")
def server_proc(start_server) -> Server:
    return start_server()


@pytest.fixture(scope="session")
def server(server_proc) -> str:
    return server_proc.url


@pytest.fixture
def client(server):
    with gradserve.Client(server) as c:
        yield c


def pytest_report_header(config):
    try:
        return f"gradserve binary: {server_binary()}"
    except Exception as e:  # pragma: no cover
        return f"gradserve binary: unavailable ({e})"


# ------------------------------------------------------------------------------------------------
# models and references
# ------------------------------------------------------------------------------------------------


def make_toy(dim=12, w=16, time_varying=True, dtype=torch.float64, seed=0, act=nn.SELU, out_dim=None) -> ToyMLP:
    """A small ToyMLP (the shared builder, with this suite's defaults: D=12, width 16, float64)."""
    return toy_mlp(dim, w, time_varying=time_varying, act=act, out_dim=out_dim, seed=seed, dtype=dtype)


def inputs(b, d, dtype=torch.float64, seed=1, with_t=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, d, generator=g, dtype=dtype)
    t = torch.rand(b, generator=g, dtype=dtype) if with_t else None
    return x, t


def call(model, x, t):
    return model(x, t) if t is not None else model(x)


def ref_forward(model, x, t):
    with torch.no_grad():
        return call(model, x, t)


def ref_vjp(model, x, t, v, with_params=True):
    """torch.autograd.grad(y, [x, t, *params], grad_outputs=v)."""
    x = x.clone().requires_grad_(True)
    t = t.clone().requires_grad_(True) if t is not None else None
    y = call(model, x, t)
    names = [n for n, _ in model.named_parameters()] if with_params else []
    params = [p for _, p in model.named_parameters()] if with_params else []
    wrt = [x] + ([t] if t is not None else []) + params
    grads = torch.autograd.grad(y, wrt, grad_outputs=v)
    out = {"x": grads[0]}
    if t is not None:
        out["t"] = grads[1]
    out["params"] = dict(zip(names, grads[1 + (t is not None) :]))
    return y.detach(), out


def ref_jacobian(model, x, t):
    """vmap(jacrev(f_single)) per sample: [B, D', D] and [B, D']."""
    from torch.func import jacrev, vmap

    if t is None:
        jx = vmap(jacrev(lambda a: call(model, a[None], None)[0]))(x)
        return jx, None
    jx, jt = vmap(jacrev(lambda a, b: call(model, a[None], b[None])[0], argnums=(0, 1)))(x, t)
    return jx, jt


def ref_jvp(model, x, t, ux, ut):
    from torch.func import jvp

    if t is None:
        return jvp(lambda a: call(model, a, None), (x,), (ux,))[1]
    return jvp(lambda a, b: call(model, a, b), (x, t), (ux, ut))[1]


def tol(dtype):
    return 1e-10 if dtype in (torch.float64, np.float64, "float64") else 2e-5


def assert_close(got, want, dtype=torch.float64, what=""):
    """Norm-relative error below the precision's tolerance (and the same shape)."""
    got_t = got if isinstance(got, torch.Tensor) else torch.from_numpy(np.asarray(got))
    want_t = want if isinstance(want, torch.Tensor) else torch.from_numpy(np.asarray(want))
    got_t = got_t.detach().to(torch.float64)
    want_t = want_t.detach().to(torch.float64)
    assert tuple(got_t.shape) == tuple(want_t.shape), f"{what}: shape {tuple(got_t.shape)} != {tuple(want_t.shape)}"
    err = (got_t - want_t).norm() / max(want_t.norm().item(), 1e-30)
    assert err.item() < tol(dtype), f"{what}: norm-relative error {err.item():.3g} (tolerance {tol(dtype)})"
