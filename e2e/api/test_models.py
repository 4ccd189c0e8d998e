"""Model shapes: activation-only models, bias-free layers with pre-activations in the tails, parameter names."""

from __future__ import annotations

import numpy as np
import pytest

from gs_helpers import (
    MLP,
    assert_problem,
    close,
    decode_answer,
    ok_json,
    post,
    ref_jacobian,
    sent_value,
)

from e2e_cases import (
    DTYPES,
    seed_of,
    make_model,
    make_inputs,
)


@pytest.mark.parametrize("dtype", DTYPES)
def test_activation_only_model(server, dtype):
    """A model of activations only (D' = D)."""
    rng = np.random.default_rng(seed_of("actonly", dtype))
    layers = [("act", {"op": "softplus", "beta": 1.5}), ("act", {"op": "tanh"}), ("act", {"op": "leaky_relu", "negative_slope": 0.3})]
    m = MLP(layers, False, dtype)
    x = rng.normal(size=(3, 5))
    xs = sent_value(x, "nested", "float64", dtype)
    body = {"model": m.to_json(), "inputs": {"x": x.tolist()}}
    ans = decode_answer(post(server, "/v1/jacobian", body), dtype, "json")
    j, y = ref_jacobian(m, xs)
    close(ans["outputs"], y, dtype, "outputs")
    close(ans["jacobian"]["x"], j["x"], dtype, "jacobian.x")
    ans = decode_answer(post(server, "/v1/divergence", body), dtype, "json")
    close(ans["divergence"], np.trace(j["x"], axis1=1, axis2=2), dtype, "divergence")


def test_linear_without_bias_and_big_activations(server):
    """Bias-free layers; pre-activations far in the tails (softplus threshold, saturating sigmoid/tanh)."""
    rng = np.random.default_rng(21)
    for act in [{"op": "softplus"}, {"op": "sigmoid"}, {"op": "tanh"}, {"op": "elu"}, {"op": "selu"}, {"op": "gelu"},
                {"op": "silu"}, {"op": "softplus", "beta": 0.5, "threshold": 3}]:
        m = MLP.random(rng, 3, [6, 3], [act], dtype="float64", bias=False, scale=12.0)
        x = rng.normal(size=(6, 3)) * 3
        body = {"model": m.to_json(), "inputs": {"x": x.tolist()}, "mode": "forward"}
        ans = decode_answer(post(server, "/v1/jacobian", body), "float64", "json")
        j, y = ref_jacobian(m, x)
        close(ans["outputs"], y, "float64", f"{act} outputs")
        close(ans["jacobian"]["x"], j["x"], "float64", f"{act} jacobian")


def test_parameter_names(server):
    rng = np.random.default_rng(4)
    act = {"op": "silu"}
    # inline: layers.<i>.weight with i the index in `layers` (activations count)
    m = make_model(rng, act, "float64", False, d=3, d_out=2, named=False)
    x, _ = make_inputs(rng, m, b=2)
    v = rng.normal(size=(2, 2))
    body = {"model": m.to_json(), "inputs": {"x": x.tolist()}, "grad_outputs": v.tolist(), "wrt": ["params"]}
    ans = ok_json(post(server, "/v1/vjp", body))
    assert set(ans["grads"]["params"]) == {"layers.0.weight", "layers.0.bias", "layers.2.weight", "layers.2.bias",
                                           "layers.4.weight", "layers.4.bias"}
    # state_dict names are kept (including odd ones)
    spec = {"inputs": ["x"], "dtype": "float64", "layers": [
        {"op": "linear", "weight": "encoder.fc/1:w", "bias": "encoder.fc/1:b"}, {"op": "tanh"},
        {"op": "linear", "weight": [[0.5, -0.25, 1.0]]}]}
    spec["weights"] = {"encoder.fc/1:w": {"shape": [3, 3], "data": list(np.arange(9) / 10.0)},
                       "encoder.fc/1:b": [0.1, 0.2, 0.3]}
    body = {"model": spec, "inputs": {"x": x.tolist()}, "grad_outputs": [[1.0], [2.0]], "wrt": ["params"]}
    ans = ok_json(post(server, "/v1/vjp", body))
    assert set(ans["grads"]["params"]) == {"encoder.fc/1:w", "encoder.fc/1:b", "layers.2.weight"}
    # key order in JSON objects carries no meaning
    spec2 = {"weights": dict(reversed(list(spec["weights"].items()))), "layers": spec["layers"], "dtype": "float64",
             "inputs": ["x"]}
    ans2 = ok_json(post(server, "/v1/vjp", {**body, "model": spec2}))
    assert ans2["grads"] == ans["grads"]
    # a weight referenced by two layers
    shared = {"inputs": ["x"], "dtype": "float64", "layers": [
        {"op": "linear", "weight": "w"}, {"op": "tanh"}, {"op": "linear", "weight": "w"}],
        "weights": {"w": (np.eye(3) * 0.5).tolist()}}
    r = post(server, "/v1/vjp", {"model": shared, "inputs": {"x": x.tolist()}, "grad_outputs": np.ones((2, 3)).tolist(),
                                 "wrt": ["params"]})
    if r.status_code == 200:
        # tied weights: the gradient is the sum over both uses (as in torch)
        import torch

        W = torch.tensor(np.eye(3) * 0.5, requires_grad=True)
        y = torch.tanh(torch.tensor(x) @ W.T) @ W.T
        (g,) = torch.autograd.grad(y, [W], grad_outputs=torch.ones(2, 3, dtype=torch.float64))
        close(np.asarray(r.json()["grads"]["params"]["w"]), g.numpy(), "float64", "tied weight grad")
    else:
        assert_problem(r, 422)
