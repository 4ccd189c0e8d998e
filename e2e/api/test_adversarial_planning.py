"""Adversarial suite: limits planned before allocating. Hidden-width blow-ups refused by
--max-request-memory on /v1 and the adapters (and the same 65536-wide model computing correctly, equal to
PyTorch, at batches that fit), answers over --max-output-elements, and FLOP-heavy chains over
--max-request-gflop.
"""

from __future__ import annotations

import base64

import numpy as np
import pytest

from adversarial_support import H, WIDE_TOL, b64, limit_problem, register, tess_422, umb_400, wide_mlp, xs
from gs_helpers import (
    MLP, assert_problem, close, decode_answer, describe, post, ref_divergence, ref_forward, ref_jacobian, ref_jvp,
    ref_vjp, wire,
)



def wide_blowups(m: MLP, dtype: str):
    """(what, op, body) that must each be refused by --max-request-memory (sizes in the model's dtype)."""
    mj = m.to_json("b64")
    one = lambda *shape: wire(np.full(shape, 0.5), "b64", dtype)  # noqa: E731
    return [
        ("forward B=65536 (form 2)", "forward", {"model": mj, "inputs": {"x": {"shape": [H, 1], "data": [0.5] * H}}}),
        ("forward B=4096", "forward", {"model": mj, "inputs": {"x": one(4096, 1)}}),
        ("vjp B=4096", "vjp", {"model": mj, "inputs": {"x": one(4096, 1)}, "grad_outputs": one(4096, 1)}),
        ("vjp B=4096 wrt params", "vjp", {"model": mj, "inputs": {"x": one(4096, 1)}, "grad_outputs": one(4096, 1),
                                          "wrt": ["params"]}),
        ("vjp K=4096 batched grad_outputs", "vjp", {"model": mj, "inputs": {"x": one(1, 1)}, "grad_outputs": one(4096, 1, 1),
                                                    "is_grads_batched": True}),
        ("vjp K=64 B=64", "vjp", {"model": mj, "inputs": {"x": one(64, 1)}, "grad_outputs": one(64, 64, 1), "is_grads_batched": True}),
        ("jvp B=4096", "jvp", {"model": mj, "inputs": {"x": one(4096, 1)}, "tangents": {"x": one(4096, 1)}}),
        ("jvp K=4096 batched tangents (nested)", "jvp", {"model": mj, "inputs": {"x": [[0.5]]}, "tangents": {"x": [[[1.0]]] * 4096}}),
        ("jacobian B=4096 reverse", "jacobian", {"model": mj, "inputs": {"x": one(4096, 1)}, "mode": "reverse"}),
        ("jacobian B=4096 forward", "jacobian", {"model": mj, "inputs": {"x": one(4096, 1)}, "mode": "forward"}),
        ("divergence exact B=4096", "divergence", {"model": mj, "inputs": {"x": one(4096, 1)}}),
        ("hutchinson B=1, 4096 probes", "divergence", {"model": mj, "inputs": {"x": one(1, 1)}, "method": "hutchinson",
                                                       "probes": 4096}),
        ("hutchinson B=64, 1000 probes", "divergence", {"model": mj, "inputs": {"x": one(64, 1)}, "method": "hutchinson",
                                                        "probes": 1000}),
    ]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_hidden_width_blowups_are_refused_before_allocating(main, dtype):
    m = wide_mlp(dtype)
    for what, op, body in wide_blowups(m, dtype):
        r = post(main.url, f"/v1/{op}", body)
        p = limit_problem(r, "--max-request-memory")
        assert "65536" in p["detail"], f"{what}: the hidden width is not named: {p}"
        assert p["errors"], f"{what}: {p}"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_hidden_width_small_batches_compute_correctly(main, dtype):
    """The same 65536-wide model at batches that fit: every operation answers, equal to PyTorch."""
    m = wide_mlp(dtype)
    mj = m.to_json("b64")
    tol = WIDE_TOL[dtype]
    x = xs(3, dtype)
    rng = np.random.default_rng(4)
    ans = decode_answer(post(main.url, "/v1/forward", {"model": mj, "inputs": {"x": wire(x, "nested")}}), dtype, "json")
    close(ans["outputs"], ref_forward(m, x), dtype, "forward", tol=tol)

    v = rng.uniform(0.5, 1.0, size=(3, 1))
    ans = decode_answer(post(main.url, "/v1/vjp", {"model": mj, "inputs": {"x": wire(x, "flat")}, "grad_outputs": wire(v, "flat"),
                                                   "wrt": ["x", "params"], "output_encoding": "base64"}), dtype, "base64")
    ref = ref_vjp(m, x, None, v, ["x", "params"])
    close(ans["grads"]["x"], ref["x"], dtype, "vjp x", tol=tol)
    for name, _ in m.param_names():
        close(ans["grads"]["params"][name], ref["params." + name], dtype, f"vjp {name}", tol=tol)

    vk = rng.uniform(0.5, 1.0, size=(4, 2, 1))
    x2 = xs(2, dtype, seed=9)
    ans = decode_answer(post(main.url, "/v1/vjp", {"model": mj, "inputs": {"x": wire(x2, "b64", dtype)}, "grad_outputs": wire(vk, "b64", dtype),
                                                   "is_grads_batched": True}), dtype, "json")
    ref = ref_vjp(m, x2, None, vk.astype(np.float32).astype(np.float64) if dtype == "float32" else vk, ["x"], batched=True)
    close(ans["grads"]["x"], ref["x"], dtype, "K-batched vjp", tol=tol)

    u = rng.uniform(0.5, 1.0, size=(3, 1))
    ans = decode_answer(post(main.url, "/v1/jvp", {"model": mj, "inputs": {"x": wire(x, "nested")}, "tangents": {"x": wire(u, "nested")}}),
                        dtype, "json")
    close(ans["jvp"], ref_jvp(m, x, None, u, None)[1], dtype, "jvp", tol=tol)
    uk = rng.uniform(0.5, 1.0, size=(4, 2, 1))
    ans = decode_answer(post(main.url, "/v1/jvp", {"model": mj, "inputs": {"x": wire(x2, "nested")}, "tangents": {"x": wire(uk, "nested")}}),
                        dtype, "json")
    close(ans["jvp"], ref_jvp(m, x2, None, uk, None, batched=True)[1], dtype, "batched-tangent jvp", tol=tol)

    j, _ = ref_jacobian(m, x)
    for mode in ("reverse", "forward"):
        ans = decode_answer(post(main.url, "/v1/jacobian", {"model": mj, "inputs": {"x": wire(x, "nested")}, "mode": mode}), dtype, "json")
        close(ans["jacobian"]["x"], j["x"], dtype, f"jacobian {mode}", tol=tol)

    exact = ref_divergence(m, x)
    ans = decode_answer(post(main.url, "/v1/divergence", {"model": mj, "inputs": {"x": wire(x, "nested")}}), dtype, "json")
    close(ans["divergence"], exact, dtype, "divergence", tol=tol)
    # D = 1: every Rademacher probe gives εᵀJε = J exactly, so Hutchinson with many probes is exact too.
    ans = decode_answer(post(main.url, "/v1/divergence", {"model": mj, "inputs": {"x": wire(x, "nested")}, "method": "hutchinson",
                                                          "probes": 16, "seed": 3}), dtype, "json")
    close(ans["divergence"], exact, dtype, "hutchinson, 16 probes", tol=tol)


def test_hidden_width_blowups_on_the_adapters(main):
    m = wide_mlp("float64")
    mid = register(main.url, {"name": "wide", "model": m.to_json("b64")})
    big = [[0.5]] * 5000
    tess = f"/tesseract/{mid}"
    for route, body in [
        ("apply", {"inputs": {"x": {"object_type": "array", "shape": [H, 1], "dtype": "float64",
                                    "data": {"buffer": base64.b64encode(np.full((H, 1), 0.5).tobytes()).decode(), "encoding": "base64"}}}}),
        ("vector_jacobian_product", {"inputs": {"x": big}, "vjp_inputs": ["x"], "vjp_outputs": ["y"], "cotangent_vector": {"y": big}}),
        ("jacobian_vector_product", {"inputs": {"x": big}, "jvp_inputs": ["x"], "jvp_outputs": ["y"], "tangent_vector": {"x": big}}),
    ]:
        d = tess_422(post(main.url, f"{tess}/{route}", body))
        assert "--max-request-memory" in d[0]["msg"], f"{route}: {d}"
    # Tesseract's Jacobian is [B, D', B, D]: B = 5000 is 25·10⁶ numbers.
    d = tess_422(post(main.url, f"{tess}/jacobian", {"inputs": {"x": big}, "jac_inputs": ["x"], "jac_outputs": ["y"]}))
    assert "16777216" in d[0]["msg"], d
    umb = f"/umbridge/{mid}"
    flat = [0.5] * 5000
    for route, extra in [("Evaluate", {}), ("Gradient", {"outWrt": 0, "inWrt": 0, "sens": flat}),
                         ("ApplyJacobian", {"outWrt": 0, "inWrt": 0, "vec": flat})]:
        msg = umb_400(post(main.url, f"{umb}/{route}", {"name": "forward", "input": [flat], "config": {"batch": 5000}, **extra}))
        assert "--max-request-memory" in msg, f"{route}: {msg}"
    # ... and the small calls answer, equal to PyTorch.
    x = np.array([[0.5], [0.25]])
    r = post(main.url, f"{tess}/apply", {"inputs": {"x": x.tolist()}})
    assert r.status_code == 200, describe(r)
    close(np.asarray(r.json()["y"]["data"]["buffer"]), ref_forward(m, x), "float64", "tesseract apply", tol=1e-9)
    r = post(main.url, f"{umb}/Evaluate", {"name": "forward", "input": [[0.5]], "config": {}})
    assert r.status_code == 200, describe(r)
    close(np.asarray(r.json()["output"][0]), ref_forward(m, np.array([[0.5]]))[0], "float64", "umbridge evaluate", tol=1e-9)


def test_answer_too_large(main):
    """Over --max-output-elements (2²⁴): 422 "Answer too large" naming the limit and the answer's field,
    decided from the shapes alone (some of these declare far more numbers than they carry)."""
    wide = {"layers": [{"op": "linear", "weight": b64(np.ones((H, 1)))}]}  # x [B, 1] → y [B, 65536]
    narrow = {"layers": [{"op": "linear", "weight": b64(np.ones((1, H)))}]}  # x [B, 65536] → y [B, 1]
    tanh = {"layers": [{"op": "tanh"}]}
    for op, body, path in [
        ("forward", {"model": wide, "inputs": {"x": b64(np.zeros((300, 1)))}}, "outputs"),
        ("jacobian", {"model": tanh, "inputs": {"x": b64(np.zeros((30, 784)))}}, "jacobian"),
        ("jacobian", {"model": wide, "inputs": {"x": b64(np.zeros((300, 1)))}, "return_outputs": False}, "jacobian"),
        ("jvp", {"model": wide, "inputs": {"x": b64(np.zeros((300, 1)))}, "tangents": {"x": b64(np.zeros((300, 1)))},
                 "return_outputs": False}, "jvp"),
        ("jvp", {"model": tanh, "inputs": {"x": [[0.5]]}, "tangents": {"x": {"shape": [1 << 25, 1, 1], "data": [0.0]}}}, "jvp"),
        ("vjp", {"model": narrow, "inputs": {"x": b64(np.zeros((1, H)))}, "grad_outputs": b64(np.zeros((300, 1, 1))),
                 "is_grads_batched": True, "return_outputs": False}, "grads"),
    ]:
        r = post(main.url, f"/v1/{op}", body)
        p = assert_problem(r, 422)
        assert p["title"] == "Answer too large", describe(r)
        assert "--max-output-elements" in p["detail"] and "16777216" in p["detail"], p
        assert [e["path"] for e in p["errors"]] == [path], p


def test_flop_heavy_chain(start_server):
    s = start_server(["--max-request-gflop", "1"])
    rng = np.random.default_rng(2)
    w = (rng.normal(size=(512, 512)) / np.sqrt(512)).astype(np.float32)
    model = {"dtype": "float32", "weights": {"w": b64(w)}, "layers": [{"op": "linear", "weight": "w"}, {"op": "tanh"}] * 50}
    x = rng.normal(size=(64, 512)).astype(np.float32)
    # 1.7 GFLOP forward, tens of GFLOP for the Jacobian and divergence: refused before computing, naming the flag.
    p = limit_problem(post(s.url, "/v1/forward", {"model": model, "inputs": {"x": b64(x)}}), "--max-request-gflop")
    assert "GFLOP" in p["detail"], p
    limit_problem(post(s.url, "/v1/jacobian", {"model": model, "inputs": {"x": b64(x[:2])}}), "--max-request-gflop")
    limit_problem(post(s.url, "/v1/divergence", {"model": model, "inputs": {"x": b64(x[:16])}}), "--max-request-gflop")
    # 0.17 GFLOP: computed, and right (float32 model, float64 reference of its rounded weights).
    small = {"dtype": "float32", "weights": {"w": b64(w)}, "layers": [{"op": "linear", "weight": "w"}, {"op": "tanh"}] * 5}
    ans = decode_answer(post(s.url, "/v1/forward", {"model": small, "inputs": {"x": b64(x)}}), "float32", "json")
    wd = w.astype(np.float64)
    h = x.astype(np.float64)
    for _ in range(5):
        h = np.tanh(h @ wd.T)
    close(ans["outputs"], h, "float32", "5-layer chain")
