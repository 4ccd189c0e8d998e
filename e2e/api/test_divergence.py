"""Divergences (exact trace and Hutchinson) against PyTorch."""

from __future__ import annotations

import numpy as np
import pytest

from gs_helpers import (
    assert_problem,
    close,
    decode_answer,
    error_paths,
    post,
    ref_divergence,
    ref_jacobian,
    sent_value,
)

from e2e_cases import (
    DTYPES,
    CASES,
    CASE_IDS,
    seed_of,
    Req,
    make_model,
    make_inputs,
    run,
    pick,
)


@pytest.mark.parametrize("case", range(len(CASES)), ids=CASE_IDS)
def test_divergence_exact(server, case):
    act, dtype, has_t = CASES[case]
    rng = np.random.default_rng(seed_of("div", case))
    m = make_model(rng, act, dtype, has_t, d=4, d_out=4)
    x, t = make_inputs(rng, m, b=6)
    form, fdt, enc = pick(case, 6)
    rq = Req(m, form, fdt)
    body = {"inputs": rq.inputs(x, t)}
    if case % 2:
        body["method"] = "exact"
    ans, _ = run(server, "divergence", m, rq, body, enc)
    assert ans["divergence"].shape == (6,)
    close(ans["divergence"], ref_divergence(m, rq.seen(x), rq.seen(t)), dtype, "divergence")
    assert ans.get("method", "exact") == "exact"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("has_t", [False, True])
def test_hutchinson(server, dtype, has_t):
    rng = np.random.default_rng(seed_of("hutch", dtype, has_t))
    m = make_model(rng, {"op": "tanh"}, dtype, has_t, d=4, d_out=4)
    x, t = make_inputs(rng, m, b=3)
    xs, ts = sent_value(x, "nested", "float64", dtype), sent_value(t, "nested", "float64", dtype) if has_t else None
    inputs = {"x": x.tolist()}
    if has_t:
        inputs["t"] = t.tolist()
    base = {"model": m.to_json(), "inputs": inputs, "method": "hutchinson"}

    def div(**kw):
        return decode_answer(post(server, "/v1/divergence", {**base, **kw}), dtype, "json")["divergence"]

    a = div(seed=5, probes=16)
    b = div(seed=5, probes=16)
    assert a.shape == (3,)
    assert np.array_equal(a, b), "same seed must give the same answer"
    c = div(seed=6, probes=16)
    assert not np.array_equal(a, c), "different seeds gave identical estimates"
    assert np.array_equal(div(), div(seed=0, probes=16)), "defaults are probes 16, seed 0"
    # Many probes: close to exact. Var(εᵀJε) = Σ_{i<j} (J_ij + J_ji)² for Rademacher ε.
    j, _ = ref_jacobian(m, xs, ts)
    J = j["x"]
    exact = np.trace(J, axis1=1, axis2=2)
    probes = 20000
    var = np.array([sum((Jb[i, k] + Jb[k, i]) ** 2 for i in range(4) for k in range(i + 1, 4)) for Jb in J])
    bound = 6 * np.sqrt(var / probes) + 1e-4 * np.max(np.abs(exact))
    est = div(seed=123, probes=probes)
    assert np.all(np.abs(est - exact) <= bound), f"hutchinson {est} vs exact {exact} (bound {bound})"
    # A single probe of an identity-only model is exact: εᵀIε = D.
    mi = {"inputs": ["x"], "dtype": dtype, "layers": [{"op": "identity"}]}
    ans = decode_answer(post(server, "/v1/divergence", {"model": mi, "inputs": {"x": x.tolist()}, "method": "hutchinson",
                                                       "probes": 1, "seed": 9}), dtype, "json")
    close(ans["divergence"], np.full(3, 4.0), dtype, "identity divergence")


def test_divergence_needs_square(server):
    rng = np.random.default_rng(3)
    m = make_model(rng, {"op": "tanh"}, "float64", False, d=4, d_out=3)
    x, _ = make_inputs(rng, m, b=2)
    assert_problem(post(server, "/v1/divergence", {"model": m.to_json(), "inputs": {"x": x.tolist()}}), 422)
    mm = make_model(rng, {"op": "tanh"}, "float64", False, d=4, d_out=4)
    p = assert_problem(post(server, "/v1/divergence", {"model": mm.to_json(), "inputs": {"x": x.tolist()}, "probes": 4}), 422)
    assert "probes" in error_paths(p)
