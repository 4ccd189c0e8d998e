"""Adversarial suite: the issue's crash reproducers, each now a 4xx (or a correct 200), the --max-layers
boundary, and parameter-name collisions (a named weight that reuses the server's name of an inline one).
"""

from __future__ import annotations

import numpy as np
import pytest

from adversarial_support import H, WIDE_TOL, b64, limit_problem, register, tess_422, tiny_t_model
from gs_helpers import MLP, assert_problem, close, decode_answer, post, ref_divergence


# ======================================================================================
# The crash reproducers of the issue, each now a 4xx (or a correct 200)
# ======================================================================================


def test_reproducer_zero_size_base64_on_tesseract_jacobian_and_apply(main):
    mid = register(main.url, tiny_t_model())
    x = {"object_type": "array", "shape": [4294967296, 0], "dtype": "float32", "data": {"buffer": "", "encoding": "base64"}}
    d = tess_422(post(main.url, f"/tesseract/{mid}/jacobian", {"inputs": {"x": x, "t": [0.5]}, "jac_inputs": ["x"],
                                                                "jac_outputs": ["y"]}))
    assert d[0]["loc"][:3] == ["body", "inputs", "x"], d
    x = dict(x, shape=[9223372036854774784, 0])
    d = tess_422(post(main.url, f"/tesseract/{mid}/apply", {"inputs": {"x": x, "t": [0.5]}}))
    assert d[0]["loc"][:3] == ["body", "inputs", "x"], d


def test_reproducer_name_collision_on_vjp_wrt_params(main):
    model = {"layers": [{"op": "linear", "weight": [[1, 2]]}, {"op": "linear", "weight": "layers.0.weight"}],
             "weights": {"layers.0.weight": [[3]]}}
    r = post(main.url, "/v1/vjp", {"model": model, "inputs": {"x": [[1, 2]]}, "grad_outputs": [[1]], "wrt": ["params"]})
    p = assert_problem(r, 422)
    assert "layers[1].weight" in p["detail"] and "layers[0].weight" in p["detail"] and '"layers.0.weight"' in p["detail"], p
    assert "model.layers[1].weight" in [e["path"] for e in p["errors"]], p


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_reproducer_wide_divergence_is_exact(main, dtype):
    """linear [65536, 1] then linear [1, 65536], x [[0.5]]: the Jacobian route, divergence = Σ w2ᵢ·w1ᵢ."""
    # Constant weights, as in the issue: 65536 · 0.5 · 2⁻¹⁰ = 32 exactly (every partial sum is exact in float32).
    model = {"dtype": dtype, "layers": [{"op": "linear", "weight": [[0.5]] * H}, {"op": "linear", "weight": [[2.0 ** -10] * H]}]}
    ans = decode_answer(post(main.url, "/v1/divergence", {"model": model, "inputs": {"x": [[0.5]]}}), dtype, "json")
    assert ans["divergence"].tolist() == [32.0], ans
    assert ans.get("method") == "exact", ans
    # Random weights of both signs, against PyTorch's trace of vmap(jacrev(f)).
    rng = np.random.default_rng(5)
    w1, w2 = rng.normal(size=(H, 1)), rng.normal(size=(1, H))
    if dtype == "float32":
        w1, w2 = w1.astype(np.float32).astype(np.float64), w2.astype(np.float32).astype(np.float64)
    m = MLP([("linear", w1, None), ("linear", w2, None)], False, dtype)
    ans = decode_answer(post(main.url, "/v1/divergence", {"model": m.to_json("b64"), "inputs": {"x": [[0.5]]}}), dtype, "json")
    ref = ref_divergence(m, np.array([[0.5]]))
    # ~1e-6 relative in float32 for a 65536-term sum of terms of both signs; 1e-4 leaves room.
    close(ans["divergence"], ref, dtype, "wide divergence", tol=WIDE_TOL[dtype])


def test_reproducer_wide_forward_is_refused_by_memory(main):
    model = {"layers": [{"op": "linear", "weight": [[0.5]] * H}, {"op": "linear", "weight": [[2.0 ** -10] * H]}]}
    r = post(main.url, "/v1/forward", {"model": model, "inputs": {"x": {"shape": [H, 1], "data": [0.5] * H}}})
    p = limit_problem(r, "--max-request-memory")
    assert "65536" in p["detail"], p  # the hidden width that makes it big is named


@pytest.mark.parametrize("path", ["/v1/forward", "/v1/models"])
def test_reproducer_20000_layers_naming_one_weight(main, path):
    w = np.zeros((512, 512), dtype=np.float32)
    model = {"weights": {"w": b64(w)}, "layers": [{"op": "linear", "weight": "w"}] * 20000}
    body = {"model": model, "inputs": {"x": b64(np.zeros((1, 512)))}} if path == "/v1/forward" else {"name": "deep", "model": model}
    p = limit_problem(post(main.url, path, body), "--max-layers")
    assert "20000" in p["detail"], p


def test_max_layers_boundary(main):
    """1024 layers (the default --max-layers) are computed, and correctly; 1025 are refused."""
    w = [[0.5, 0.25], [-0.25, 0.5]]
    for n, expect in [(1024, 200), (1025, 422)]:
        model = {"dtype": "float64", "weights": {"w": w}, "layers": [{"op": "linear", "weight": "w"}] * n}
        r = post(main.url, "/v1/forward", {"model": model, "inputs": {"x": [[1.0, -1.0]]}})
        if expect == 422:
            limit_problem(r, "--max-layers")
            continue
        ans = decode_answer(r, "float64", "json")
        # W is 0.559·(rotation): after 1024 layers the result is 0.3125^512 · x rotated, computed in closed form.
        ref = np.array([1.0, -1.0])
        Wn = np.linalg.matrix_power(np.array(w), n)
        close(ans["outputs"], (Wn @ ref)[None, :], "float64", "1024-layer chain", tol=1e-9)


# ======================================================================================
# Parameter-name collisions
# ======================================================================================

COLLISIONS = {
    "weight-reuses-earlier-inline": ({"layers": [{"op": "linear", "weight": [[1, 2]]}, {"op": "linear", "weight": "layers.0.weight"}],
                                      "weights": {"layers.0.weight": [[3]]}}, "layers[1].weight", "layers[0].weight", "layers.0.weight"),
    "weight-reuses-later-inline": ({"layers": [{"op": "linear", "weight": "layers.1.weight"}, {"op": "linear", "weight": [[1]]}],
                                    "weights": {"layers.1.weight": [[1, 2]]}}, "layers[0].weight", "layers[1].weight", "layers.1.weight"),
    "bias-reuses-inline-bias": ({"layers": [{"op": "linear", "weight": [[1, 2]], "bias": [0.5]},
                                            {"op": "linear", "weight": [[2]], "bias": "layers.0.bias"}],
                                 "weights": {"layers.0.bias": [1.0]}}, "layers[1].bias", "layers[0].bias", "layers.0.bias"),
}


@pytest.mark.parametrize("kind", list(COLLISIONS))
@pytest.mark.parametrize("path", ["/v1/vjp", "/v1/forward", "/v1/models"])
def test_weight_name_collisions(main, path, kind):
    model, here, there, name = COLLISIONS[kind]
    if path == "/v1/models":
        body = {"name": "collide", "model": model}
    else:
        body = {"model": model, "inputs": {"x": [[1.0, 2.0]]}}
        if path == "/v1/vjp":
            body.update({"grad_outputs": [[1.0]], "wrt": ["x", "params"]})
    p = assert_problem(post(main.url, path, body), 422)
    assert here in p["detail"] and there in p["detail"] and f'"{name}"' in p["detail"], f"both places not named: {p}"
