#!/usr/bin/env python3
# One file on purpose, over the ~400-line guideline: the PyTorch reference semantics, every fixture
# case and the --check comparison together, so one script regenerates or checks all the fixtures the
# Swift tests read, and the cases are listed in one place.
"""Generate PyTorch reference fixtures for the GradCore tests.

    python scripts/make_fixtures.py            # writes Tests/GradCoreTests/Fixtures/*.json
    python scripts/make_fixtures.py --check    # regenerate in memory, compare with the files on disk
                                               # (computed values within 1e-12 / 1e-6 norm-relative,
                                               # everything else byte for byte)

Every case is built from a fixed torch.manual_seed, computed on one CPU thread,
so the output is byte-for-byte reproducible for a given PyTorch version on one
CPU; on another CPU, PyTorch's vector paths may change the last bits of the
computed values, which --check allows within a tight tolerance.

One JSON file per case:
  name, model (docs/api.md format), x [B, D], t [B] (models with "t" only),
  grad_outputs [B, D'], grad_outputs_batched [K, B, D'],
  tangents {x, t}, tangents_batched {x: [K, B, D], t: [K, B]},
  expected {outputs, vjp {x, t, params}, vjp_batched {x, t, params},
            jvp, jvp_batched, jacobian {x, t}, divergence}

Tensors are in one of the three forms of docs/api.md (nested arrays by default;
some small cases use form 2, the ToyMLP case uses form 3 everywhere).  Float32
cases hold exactly-representable float32 values (written as the float64 with
the same value), and every expected value is computed by torch in the model's
dtype.

The reference semantics:
  outputs     f(x, t)
  vjp         torch.autograd.grad(y, [x, t, *params], grad_outputs=v)
  vjp_batched same with is_grads_batched=True and v of shape [K, B, D']
  jvp         torch.func.jvp(f, (x, t), (u_x, u_t))
  jvp_batched torch.func.jvp for each of the K tangents
  jacobian    torch.func.vmap(torch.func.jacrev(f_single, argnums=(0, 1)))
  divergence  trace over the x columns of each per-sample Jacobian (D' == D)
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e", "support"))
from gradserve_testing.toymlp import toy_mlp  # noqa: E402

K = 2  # leading axis of the batched cotangents / tangents
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(REPO, "Tests", "GradCoreTests", "Fixtures")

DTYPES = {"float32": torch.float32, "float64": torch.float64}
NP_DTYPES = {"float32": "<f4", "float64": "<f8"}


# --------------------------------------------------------------------------
# model: an internal description close to the JSON one
# --------------------------------------------------------------------------

@dataclass
class Model:
    inputs: list[str]
    dtype: str
    # each layer: {"op": ..., activation params..., for linear: "weight": name-or-tensor, "bias": name-or-tensor (optional)}
    layers: list[dict[str, Any]]
    weights: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def has_t(self) -> bool:
        return "t" in self.inputs

    def param_refs(self) -> list[tuple[str, torch.Tensor]]:
        """(parameter name, tensor) in order of first appearance, per docs/api.md's naming."""
        seen: dict[str, torch.Tensor] = {}
        for i, layer in enumerate(self.layers):
            if layer["op"] != "linear":
                continue
            for key in ("weight", "bias"):
                if key not in layer:
                    continue
                ref = layer[key]
                if isinstance(ref, str):
                    name, tensor = ref, self.weights[ref]
                else:
                    name, tensor = f"layers.{i}.{key}", ref
                if name not in seen:
                    seen[name] = tensor
        return list(seen.items())


def activation(layer: dict[str, Any], h: torch.Tensor) -> torch.Tensor:
    op = layer["op"]
    if op == "relu":
        return F.relu(h)
    if op == "leaky_relu":
        return F.leaky_relu(h, negative_slope=layer.get("negative_slope", 0.01))
    if op == "elu":
        return F.elu(h, alpha=layer.get("alpha", 1.0))
    if op == "selu":
        return F.selu(h)
    if op == "gelu":
        return F.gelu(h, approximate=layer.get("approximate", "none"))
    if op == "silu":
        return F.silu(h)
    if op == "sigmoid":
        return torch.sigmoid(h)
    if op == "tanh":
        return torch.tanh(h)
    if op == "softplus":
        return F.softplus(h, beta=layer.get("beta", 1.0), threshold=layer.get("threshold", 20.0))
    if op == "identity":
        return h
    raise ValueError(f"unknown op {op}")


def make_fn(model: Model, params: dict[str, torch.Tensor]) -> Callable[..., torch.Tensor]:
    """f(x, t) -> y with x [..., D], t [...] (t ignored for x-only models)."""

    def resolve(i: int, key: str):
        ref = model.layers[i].get(key)
        if ref is None:
            return None
        name = ref if isinstance(ref, str) else f"layers.{i}.{key}"
        return params[name]

    def f(x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        h = torch.cat([x, t.unsqueeze(-1)], dim=-1) if model.has_t else x
        for i, layer in enumerate(model.layers):
            if layer["op"] == "linear":
                h = F.linear(h, resolve(i, "weight"), resolve(i, "bias"))
            else:
                h = activation(layer, h)
        return h

    return f


# --------------------------------------------------------------------------
# tensor encoding
# --------------------------------------------------------------------------

def to_list(t: torch.Tensor) -> Any:
    # float32 values widened to float64 are exact; json writes repr (round-trips)
    return t.detach().to(torch.float64).cpu().tolist()


def encode(t: torch.Tensor, form: int, dtype: str) -> Any:
    t = t.detach().to(DTYPES[dtype]).contiguous()
    if not torch.isfinite(t).all():
        raise ValueError("non-finite value in a fixture tensor")
    if form == 1:
        return to_list(t)
    if form == 2:
        return {"shape": list(t.shape), "data": to_list(t.reshape(-1))}
    if form == 3:
        raw = np.ascontiguousarray(t.cpu().numpy().astype(NP_DTYPES[dtype])).tobytes()
        return {"shape": list(t.shape), "dtype": dtype, "encoding": "base64",
                "data": base64.b64encode(raw).decode("ascii")}
    raise ValueError(form)


class Encoder:
    """Chooses the form per key path: the longest matching prefix in `forms`, else `default`."""

    def __init__(self, dtype: str, default: int = 1, forms: dict[str, int] | None = None):
        self.dtype, self.default, self.forms = dtype, default, forms or {}

    def __call__(self, path: str, t: torch.Tensor) -> Any:
        best, form = -1, self.default
        for prefix, f in self.forms.items():
            if (path == prefix or path.startswith(prefix + ".")) and len(prefix) > best:
                best, form = len(prefix), f
        return encode(t, form, self.dtype)


# --------------------------------------------------------------------------
# a case
# --------------------------------------------------------------------------

@dataclass
class Case:
    name: str
    model: Model
    x: torch.Tensor
    t: torch.Tensor | None
    seed: int
    encoder: Encoder
    jacobian: bool = True
    vjp_params: bool = True
    vjp_batched_params: bool = True
    note: str = ""


def model_json(model: Model, enc: Encoder) -> dict[str, Any]:
    layers = []
    for i, layer in enumerate(model.layers):
        out = {}
        for key, val in layer.items():
            if isinstance(val, torch.Tensor):
                out[key] = enc(f"model.layers.{i}.{key}", val)
            else:
                out[key] = val
        layers.append(out)
    obj: dict[str, Any] = {"inputs": list(model.inputs), "dtype": model.dtype, "layers": layers}
    if model.weights:
        obj["weights"] = {n: enc(f"model.weights.{n}", w) for n, w in model.weights.items()}
    return obj


def close(a: torch.Tensor, b: torch.Tensor, dtype: str) -> bool:
    tol = 1e-10 if dtype == "float64" else 2e-4
    return torch.allclose(a.to(torch.float64), b.to(torch.float64), rtol=tol, atol=tol)


def compute(case: Case) -> dict[str, Any]:
    model, enc, dtype = case.model, case.encoder, case.model.dtype
    tdt = DTYPES[dtype]
    torch.manual_seed(case.seed + 1000)  # cotangents / tangents

    x = case.x.to(tdt)
    t = case.t.to(tdt) if model.has_t else None
    B, D = x.shape
    pnames_tensors = model.param_refs()
    params = {n: p.detach().to(tdt) for n, p in pnames_tensors}
    f = make_fn(model, params)
    with torch.no_grad():
        y = f(x, t)
    Dp = y.shape[1]

    v = torch.randn(B, Dp, dtype=tdt)
    vb = torch.randn(K, B, Dp, dtype=tdt)
    ux = torch.randn(B, D, dtype=tdt)
    uxb = torch.randn(K, B, D, dtype=tdt)
    ut = torch.randn(B, dtype=tdt) if model.has_t else None
    utb = torch.randn(K, B, dtype=tdt) if model.has_t else None

    # ---- VJP (reverse, torch.autograd.grad) -------------------------------
    def vjp(cot: torch.Tensor, batched: bool):
        xr = x.clone().requires_grad_(True)
        tr = t.clone().requires_grad_(True) if model.has_t else None
        pr = {n: p.clone().requires_grad_(True) for n, p in params.items()}
        yr = make_fn(model, pr)(xr, tr)
        ins = [xr] + ([tr] if model.has_t else []) + list(pr.values())
        gs = torch.autograd.grad(yr, ins, grad_outputs=cot, is_grads_batched=batched, allow_unused=True)
        out = {"x": gs[0]}
        if model.has_t:
            out["t"] = gs[1]
        rest = gs[2:] if model.has_t else gs[1:]
        out["params"] = {n: g for n, g in zip(pr.keys(), rest)}
        return yr.detach(), out

    y_ad, g = vjp(v, False)
    _, gb = vjp(vb, True)
    assert close(y_ad, y, dtype)

    # ---- JVP (forward, torch.func.jvp) ------------------------------------
    def jvp(tx, tt):
        if model.has_t:
            return torch.func.jvp(f, (x, t), (tx, tt))
        return torch.func.jvp(lambda xx: f(xx), (x,), (tx,))

    y_fw, jv = jvp(ux, ut)
    assert close(y_fw, y, dtype)
    jvb = torch.stack([jvp(uxb[k], utb[k] if model.has_t else None)[1] for k in range(K)])

    # ---- per-sample Jacobian ----------------------------------------------
    def f_single(xi, ti=None):
        if model.has_t:
            return f(xi.unsqueeze(0), ti.reshape(1)).squeeze(0)
        return f(xi.unsqueeze(0)).squeeze(0)

    argnums = (0, 1) if model.has_t else 0
    args = (x, t) if model.has_t else (x,)
    jac = torch.func.vmap(torch.func.jacrev(f_single, argnums=argnums))(*args)
    jx, jt = (jac[0], jac[1]) if model.has_t else (jac, None)
    assert jx.shape == (B, Dp, D)

    # ---- self-consistency (the relations the service must keep) -----------
    assert close(g["x"], torch.einsum("bi,bij->bj", v, jx), dtype), "vjp x vs jacobian"
    jv_ref = torch.einsum("bij,bj->bi", jx, ux)
    if model.has_t:
        assert jt.shape == (B, Dp)
        assert close(g["t"], torch.einsum("bi,bi->b", v, jt), dtype), "vjp t vs jacobian"
        jv_ref = jv_ref + jt * ut.unsqueeze(1)
    assert close(jv, jv_ref, dtype), "jvp vs jacobian"
    for k in range(K):
        _, gk = vjp(vb[k], False)
        assert close(gb["x"][k], gk["x"], dtype)
        if model.has_t:
            assert close(gb["t"][k], gk["t"], dtype)
        for n in gk["params"]:
            assert close(gb["params"][n][k], gk["params"][n], dtype), n
    if case.jacobian:
        jf = torch.func.vmap(torch.func.jacfwd(f_single, argnums=argnums))(*args)
        jfx = jf[0] if model.has_t else jf
        assert close(jfx, jx, dtype), "jacfwd vs jacrev"

    # ---- assemble ---------------------------------------------------------
    doc: dict[str, Any] = {"name": case.name}
    if case.note:
        doc["note"] = case.note
    doc["model"] = model_json(model, enc)
    doc["x"] = enc("x", x)
    if model.has_t:
        doc["t"] = enc("t", t)
    doc["grad_outputs"] = enc("grad_outputs", v)
    doc["grad_outputs_batched"] = enc("grad_outputs_batched", vb)
    doc["tangents"] = {"x": enc("tangents.x", ux)}
    doc["tangents_batched"] = {"x": enc("tangents_batched.x", uxb)}
    if model.has_t:
        doc["tangents"]["t"] = enc("tangents.t", ut)
        doc["tangents_batched"]["t"] = enc("tangents_batched.t", utb)

    exp: dict[str, Any] = {"outputs": enc("expected.outputs", y)}
    ev = {"x": enc("expected.vjp.x", g["x"])}
    evb = {"x": enc("expected.vjp_batched.x", gb["x"])}
    if model.has_t:
        ev["t"] = enc("expected.vjp.t", g["t"])
        evb["t"] = enc("expected.vjp_batched.t", gb["t"])
    if case.vjp_params:
        ev["params"] = {n: enc(f"expected.vjp.params.{n}", p) for n, p in g["params"].items()}
    if case.vjp_batched_params:
        evb["params"] = {n: enc(f"expected.vjp_batched.params.{n}", p) for n, p in gb["params"].items()}
    exp["vjp"] = ev
    exp["vjp_batched"] = evb
    exp["jvp"] = enc("expected.jvp", jv)
    exp["jvp_batched"] = enc("expected.jvp_batched", jvb)
    if case.jacobian:
        exp["jacobian"] = {"x": enc("expected.jacobian.x", jx)}
        if model.has_t:
            exp["jacobian"]["t"] = enc("expected.jacobian.t", jt)
    if Dp == D:
        div = torch.diagonal(jx, dim1=1, dim2=2).sum(-1)
        exp["divergence"] = enc("expected.divergence", div)
    doc["expected"] = exp
    return doc


# --------------------------------------------------------------------------
# case definitions
# --------------------------------------------------------------------------

def rnd(*shape, dtype, scale=1.0):
    return (torch.randn(*shape, dtype=torch.float64) * scale).to(DTYPES[dtype])


def lin(n_in, n_out, dtype, wscale=1.0, bscale=0.5):
    w = rnd(n_out, n_in, dtype=dtype, scale=wscale / math.sqrt(n_in))
    b = rnd(n_out, dtype=dtype, scale=bscale)
    return w, b


def case_relu_tanh_f64(seed):
    # Linear(3,5) -> relu -> Linear(5,3) -> tanh; ends with an activation.
    # Exact zero pre-activations hit relu's kink (PyTorch: relu'(0) = 0).
    dt = "float64"
    torch.manual_seed(seed)
    w0, b0 = lin(3, 5, dt, wscale=1.5)
    w0[1] = torch.tensor([0.5, 0.5, 0.25], dtype=torch.float64)
    b0[0] = 0.0
    b0[1] = 0.0
    w2, b2 = lin(5, 3, dt, wscale=1.5)
    x = rnd(4, 3, dtype=dt)
    x[0] = 0.0                                    # row 0: unit 0 and 1 pre-activations exactly 0
    x[2] = torch.tensor([1.0, -1.0, 0.0])         # row 2: unit 1 pre-activation exactly 0
    m = Model(["x"], dt, [
        {"op": "linear", "weight": w0, "bias": b0},
        {"op": "relu"},
        {"op": "linear", "weight": w2, "bias": b2},
        {"op": "tanh"},
    ])
    return Case("relu_tanh_f64", m, x, None, seed, Encoder(dt),
                note="relu pre-activations exactly 0 in rows 0 and 2 (relu'(0) = 0)")


def case_activations_only_f64(seed):
    # no linear layer: D' = D, each kink reached with exact zeros
    dt = "float64"
    torch.manual_seed(seed)
    x = rnd(3, 5, dtype=dt, scale=1.5)
    x[0, 0] = 0.0
    x[1, 2] = 0.0
    x[2, 4] = 0.0
    x[2, 0] = 2.0
    x[2, 1] = -3.0
    m = Model(["x"], dt, [
        {"op": "leaky_relu", "negative_slope": 0.2},
        {"op": "elu", "alpha": 0.5},
        {"op": "selu"},
        {"op": "softplus", "beta": 2.0, "threshold": 1.0},
        {"op": "tanh"},
    ])
    return Case("activations_only_f64", m, x, None, seed, Encoder(dt),
                note="activations only; zeros hit leaky_relu'(0)=slope, elu'(0)=alpha, selu'(0)=scale*alpha")


def case_softplus_first_t_f64(seed):
    # starts with an activation applied to [x, t]; softplus beta 2 threshold 1:
    # identity where beta*h > 1, log1p(exp(beta*h))/beta otherwise (h = 0.5 exactly is NOT above)
    dt = "float64"
    torch.manual_seed(seed)
    x = torch.tensor([[0.5, 0.2, 0.9],
                      [-0.3, 0.5000001, 0.4999999],
                      [1.7, -1.2, 0.55],
                      [0.45, 0.0, 3.0]], dtype=torch.float64)
    t = torch.tensor([0.5, 0.1, 0.9, 0.75], dtype=torch.float64)
    w0, b0 = lin(4, 5, dt, wscale=1.5)
    w2, b2 = lin(5, 3, dt)
    m = Model(["x", "t"], dt, [
        {"op": "softplus", "beta": 2.0, "threshold": 1.0},
        {"op": "linear", "weight": w0, "bias": b0},
        {"op": "sigmoid"},
        {"op": "linear", "weight": w2, "bias": b2},
    ])
    return Case("softplus_first_t_f64", m, x, t, seed, Encoder(dt),
                note="softplus(beta=2, threshold=1) first, on [x, t]; inputs 0.5 exactly sit at the threshold "
                     "(not above it: log1p branch), others just above/below")


def case_named_leaky_elu_t_f64(seed):
    dt = "float64"
    torch.manual_seed(seed)
    D = 4
    w0, b0 = lin(D + 1, 6, dt, wscale=2.0)
    w2, b2 = lin(6, 6, dt, wscale=2.0)
    w4, b4 = lin(6, D, dt)
    x = rnd(3, D, dtype=dt)
    t = torch.rand(3, dtype=torch.float64)
    m = Model(["x", "t"], dt, [
        {"op": "linear", "weight": "net.0.weight", "bias": "net.0.bias"},
        {"op": "leaky_relu", "negative_slope": 0.2},
        {"op": "linear", "weight": "net.2.weight", "bias": "net.2.bias"},
        {"op": "elu", "alpha": 0.5},
        {"op": "linear", "weight": "net.4.weight", "bias": "net.4.bias"},
    ], {"net.0.weight": w0, "net.0.bias": b0, "net.2.weight": w2, "net.2.bias": b2,
        "net.4.weight": w4, "net.4.bias": b4})
    return Case("named_leaky_elu_t_f64", m, x, t, seed, Encoder(dt))


def case_gelu_mixed_f64(seed):
    # gelu exact (default, key omitted) and tanh approximation; leaky_relu and elu with defaults;
    # weights mixed: named and inline (param names net.0.weight, layers.0.bias, layers.2.*, net.6.*)
    dt = "float64"
    torch.manual_seed(seed)
    w0, b0 = lin(4, 6, dt, wscale=2.0)
    w2, b2 = lin(6, 6, dt, wscale=2.0)
    w4, b4 = lin(6, 6, dt, wscale=2.0)
    w6, b6 = lin(6, 4, dt)
    x = rnd(2, 4, dtype=dt)
    m = Model(["x"], dt, [
        {"op": "linear", "weight": "net.0.weight", "bias": b0},
        {"op": "gelu"},
        {"op": "linear", "weight": w2, "bias": b2},
        {"op": "gelu", "approximate": "tanh"},
        {"op": "linear", "weight": w4, "bias": b4},
        {"op": "leaky_relu"},
        {"op": "linear", "weight": "net.6.weight", "bias": "net.6.bias"},
        {"op": "elu"},
    ], {"net.0.weight": w0, "net.6.weight": w6, "net.6.bias": b6})
    return Case("gelu_mixed_f64", m, x, None, seed, Encoder(dt),
                note="gelu default (erf) and tanh; leaky_relu/elu defaults; named and inline weights mixed")


def case_gelu_tanh_silu_t_f32(seed):
    dt = "float32"
    torch.manual_seed(seed)
    D = 3
    w0, b0 = lin(D + 1, 8, dt, wscale=2.0)
    w2, b2 = lin(8, 8, dt, wscale=2.0)
    w4, b4 = lin(8, D, dt)
    x = rnd(3, D, dtype=dt)
    t = torch.rand(3, dtype=torch.float32)
    m = Model(["x", "t"], dt, [
        {"op": "linear", "weight": "net.0.weight", "bias": "net.0.bias"},
        {"op": "gelu", "approximate": "tanh"},
        {"op": "linear", "weight": "net.2.weight", "bias": "net.2.bias"},
        {"op": "silu"},
        {"op": "linear", "weight": "net.4.weight", "bias": "net.4.bias"},
        {"op": "elu", "alpha": 1.0},
    ], {"net.0.weight": w0, "net.0.bias": b0, "net.2.weight": w2, "net.2.bias": b2,
        "net.4.weight": w4, "net.4.bias": b4})
    return Case("gelu_tanh_silu_t_f32", m, x, t, seed, Encoder(dt))


def case_silu_sigmoid_narrow_f64(seed):
    # D = 5 -> D' = 2 (no divergence); reverse is the cheaper Jacobian mode
    dt = "float64"
    torch.manual_seed(seed)
    w0, b0 = lin(5, 7, dt, wscale=2.0)
    w2, b2 = lin(7, 2, dt, wscale=2.0)
    x = rnd(5, 5, dtype=dt)
    m = Model(["x"], dt, [
        {"op": "linear", "weight": w0, "bias": b0},
        {"op": "silu"},
        {"op": "linear", "weight": w2, "bias": b2},
        {"op": "sigmoid"},
    ])
    return Case("silu_sigmoid_narrow_f64", m, x, None, seed, Encoder(dt), note="D=5, D'=2")


def case_tanh_sigmoid_wide_f32(seed):
    # D = 2 -> D' = 6 (no divergence); forward is the cheaper Jacobian mode
    dt = "float32"
    torch.manual_seed(seed)
    w0, b0 = lin(2, 5, dt, wscale=2.0)
    w2, b2 = lin(5, 6, dt, wscale=2.0)
    x = rnd(5, 2, dtype=dt)
    m = Model(["x"], dt, [
        {"op": "linear", "weight": w0, "bias": b0},
        {"op": "tanh"},
        {"op": "linear", "weight": w2, "bias": b2},
        {"op": "sigmoid"},
        {"op": "identity"},
    ])
    return Case("tanh_sigmoid_wide_f32", m, x, None, seed, Encoder(dt), note="D=2, D'=6")


def case_selu_nobias_f64(seed):
    # linear layers without bias (the "bias" key is absent); x and the weights in form 3 (float64 base64)
    dt = "float64"
    torch.manual_seed(seed)
    w0, _ = lin(4, 5, dt, wscale=2.0)
    w2, b2 = lin(5, 5, dt, wscale=2.0)
    w4, _ = lin(5, 4, dt)
    x = rnd(3, 4, dtype=dt)
    m = Model(["x"], dt, [
        {"op": "linear", "weight": w0},
        {"op": "selu"},
        {"op": "linear", "weight": w2, "bias": b2},
        {"op": "identity"},
        {"op": "selu"},
        {"op": "linear", "weight": w4},
    ])
    enc = Encoder(dt, 1, {"x": 3, "model.layers": 3, "expected.jacobian": 3})
    return Case("selu_nobias_f64", m, x, None, seed, enc,
                note="layers 0 and 5 have no bias; x, weights and jacobian in base64 float64")


def case_relu_softplus_form2_f32(seed):
    # starts with relu on x (zeros in x), softplus defaults (beta 1, threshold 20) with pre-activations above 20;
    # several tensors in form 2 ({"shape", "data"})
    dt = "float32"
    torch.manual_seed(seed)
    w1, b1 = lin(3, 4, dt, wscale=1.0)
    w1[0] = torch.tensor([4.0, 3.0, 3.0])     # row 0: 12 + 9 + 0.25 = 21.25 > 20 (identity branch)
    w1[2] = torch.tensor([-4.0, -3.0, -3.0])
    b1[0] = 0.25
    w3, b3 = lin(4, 3, dt)
    x = torch.tensor([[0.0, 4.0, 3.0],
                      [2.0, 0.0, -1.0]], dtype=torch.float32)
    m = Model(["x"], dt, [
        {"op": "relu"},
        {"op": "linear", "weight": w1, "bias": b1},
        {"op": "softplus"},
        {"op": "linear", "weight": w3, "bias": b3},
    ])
    enc = Encoder(dt, 1, {"x": 2, "model.layers.1.weight": 2, "grad_outputs_batched": 2,
                          "tangents": 2, "expected.vjp": 2, "expected.jacobian": 2})
    return Case("relu_softplus_form2_f32", m, x, None, seed, enc,
                note="relu first with x zeros; softplus default threshold 20 crossed (unit 0 row 0)")


def case_linear_only_b1_f64(seed):
    # one linear layer, B = 1: jacobian = W, divergence = trace(W); form 2 for the model weights
    dt = "float64"
    torch.manual_seed(seed)
    w, b = lin(3, 3, dt)
    x = rnd(1, 3, dtype=dt)
    m = Model(["x"], dt, [{"op": "linear", "weight": "lin.weight", "bias": "lin.bias"}],
              {"lin.weight": w, "lin.bias": b})
    enc = Encoder(dt, 1, {"model.weights": 2, "expected.outputs": 2})
    return Case("linear_only_b1_f64", m, x, None, seed, enc)


def case_toymlp_784_f32(seed):
    # torchcfm MLP(dim=784, w=64, time_varying=True) with SELU; every tensor in form 3
    dt = "float32"
    D, W = 784, 64
    net = toy_mlp(D, W, seed=seed).net  # torch.manual_seed(seed), then the shared ToyMLP's layers
    sd = {f"net.{k}": v.detach().clone() for k, v in net.state_dict().items()}
    x = torch.randn(1, D, dtype=torch.float32)
    t = torch.rand(1, dtype=torch.float32)
    layers: list[dict[str, Any]] = []
    for i, mod in enumerate(net):
        if isinstance(mod, torch.nn.Linear):
            layers.append({"op": "linear", "weight": f"net.{i}.weight", "bias": f"net.{i}.bias"})
        else:
            layers.append({"op": "selu"})
    m = Model(["x", "t"], dt, layers, sd)
    return Case("toymlp_784_f32", m, x, t, seed, Encoder(dt, 3), jacobian=False,
                vjp_params=True, vjp_batched_params=False,
                note="ToyMLP D=784, B=1; no jacobian; vjp_batched without params (size)")


CASES = [
    case_relu_tanh_f64,
    case_activations_only_f64,
    case_softplus_first_t_f64,
    case_named_leaky_elu_t_f64,
    case_gelu_mixed_f64,
    case_gelu_tanh_silu_t_f32,
    case_silu_sigmoid_narrow_f64,
    case_tanh_sigmoid_wide_f32,
    case_selu_nobias_f64,
    case_relu_softplus_form2_f32,
    case_linear_only_b1_f64,
    case_toymlp_784_f32,
]


# Values computed by PyTorch (everything under "expected") depend in their last bits on the
# CPU's vector paths, so a regeneration on another machine is compared with the committed file
# within a tolerance far tighter than the core's own tests use against these fixtures (1e-10 in
# float64, 1e-5 in float32, norm-relative). Everything else (names, shapes, inputs, seeds, the
# model, the encoding forms) must match exactly.
CHECK_TOL = {"float64": 1e-12, "float32": 1e-6}


def decode_any(v: Any) -> np.ndarray | None:
    """A fixture tensor in any of the three forms, as float64; None if `v` is not a tensor."""
    if isinstance(v, dict) and "shape" in v and "data" in v:
        if v.get("encoding") == "base64":
            raw = base64.b64decode(v["data"])
            return np.frombuffer(raw, dtype=NP_DTYPES[v["dtype"]]).astype(np.float64).reshape(v["shape"])
        return np.asarray(v["data"], dtype=np.float64).reshape(v["shape"])
    if isinstance(v, (list, int, float)) and not isinstance(v, bool):
        try:
            return np.asarray(v, dtype=np.float64)
        except ValueError:
            return None
    return None


def tensor_skeleton(v: Any) -> Any:
    """The parts of an encoded tensor that are not computed floats (form, shape, dtype)."""
    if isinstance(v, dict):
        return {k: val for k, val in v.items() if k != "data"}
    return np.shape(np.asarray(v, dtype=np.float64))


def compare(committed: Any, fresh: Any) -> tuple[list[str], dict[str, float]]:
    """Problems found and the largest norm-relative difference per expected tensor."""
    dtype = committed.get("model", {}).get("dtype", "float32")
    tol = CHECK_TOL[dtype]
    problems: list[str] = []
    worst: dict[str, float] = {}

    def walk(a: Any, b: Any, path: str, computed: bool) -> None:
        if computed:
            ta, tb = decode_any(a), decode_any(b)
            if ta is not None and tb is not None:
                if tensor_skeleton(a) != tensor_skeleton(b) or ta.shape != tb.shape:
                    problems.append(f"{path}: form or shape differs")
                    return
                scale = max(float(np.linalg.norm(ta)), 1e-300)
                rel = float(np.linalg.norm(ta - tb)) / scale if ta.size else 0.0
                worst[path] = max(worst.get(path, 0.0), rel)
                if not rel <= tol:
                    problems.append(f"{path}: norm-relative difference {rel:.2e} above {tol:.0e}")
                return
        if isinstance(a, dict) and isinstance(b, dict):
            if list(a.keys()) != list(b.keys()):
                problems.append(f"{path or '.'}: keys {list(a.keys())} vs {list(b.keys())}")
                return
            for k in a:
                walk(a[k], b[k], f"{path}.{k}" if path else k, computed or (not path and k == "expected"))
        elif a != b:
            problems.append(f"{path}: differs (not a computed value, must match exactly)")

    walk(committed, fresh, "", False)
    return problems, worst


def render(doc: dict[str, Any]) -> str:
    return json.dumps(doc, separators=(",", ":"), allow_nan=False) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=OUT_DIR, help="output directory (default: %(default)s)")
    ap.add_argument("--check", action="store_true", help="compare with the files on disk instead of writing")
    ap.add_argument("--only", nargs="*", help="case names to generate")
    args = ap.parse_args()

    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    failed = 0
    total = 0
    for idx, make in enumerate(CASES):
        case = make(seed=100 + idx)
        if args.only and case.name not in args.only:
            continue
        text = render(compute(case))
        path = os.path.join(args.out, case.name + ".json")
        total += len(text)
        if args.check:
            with open(path, encoding="utf-8") as fh:
                committed = fh.read()
            problems, worst = compare(json.loads(committed), json.loads(text))
            failed += bool(problems)
            if committed == text:
                detail = "identical"
            else:
                detail = "largest norm-relative difference in expected: " + (
                    ", ".join(f"{k} {v:.1e}" for k, v in sorted(worst.items())) or "none")
            print(f"{'DIFF' if problems else 'ok  '} {case.name}: {detail}")
            for p in problems:
                print(f"     {p}")
        else:
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(text)
            print(f"wrote {os.path.relpath(path, REPO)} ({len(text):,} bytes)")
    print(f"total {total:,} bytes; torch {torch.__version__}")
    if total > 3_000_000:
        print("warning: fixtures exceed 3 MB", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
