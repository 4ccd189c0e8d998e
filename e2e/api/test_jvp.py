"""Jacobian-vector products against torch.func.jvp: the per-activation matrix, batched tangents, missing tangents, consistency with the VJP."""

from __future__ import annotations

import numpy as np
import pytest

from gs_helpers import (
    assert_problem,
    close,
    decode_answer,
    error_paths,
    post,
    ref_jvp,
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
def test_jvp(server, case):
    act, dtype, has_t = CASES[case]
    rng = np.random.default_rng(seed_of("jvp", case))
    m = make_model(rng, act, dtype, has_t, d=4, d_out=5)
    x, t = make_inputs(rng, m, b=5)
    tx = rng.normal(size=x.shape)
    tt = rng.normal(size=t.shape) if has_t else None
    form, fdt, enc = pick(case, 3)
    rq = Req(m, form, fdt)
    tangents = {"x": rq.enc(tx)}
    if has_t:
        tangents["t"] = rq.enc(tt)
    ans, _ = run(server, "jvp", m, rq, {"inputs": rq.inputs(x, t), "tangents": tangents}, enc)
    y, u = ref_jvp(m, rq.seen(x), rq.seen(t), rq.seen(tx), rq.seen(tt))
    close(ans["outputs"], y, dtype, "outputs")
    close(ans["jvp"], u, dtype, "jvp")


@pytest.mark.parametrize("case", range(len(CASES)), ids=CASE_IDS)
def test_jvp_batched_tangents(server, case):
    act, dtype, has_t = CASES[case]
    rng = np.random.default_rng(seed_of("jvpK", case))
    m = make_model(rng, act, dtype, has_t, d=3, d_out=2)
    x, t = make_inputs(rng, m, b=4)
    k = 5
    tx = rng.normal(size=(k, *x.shape))
    tt = rng.normal(size=(k, *t.shape)) if has_t else None
    form, fdt, enc = pick(case, 4)
    rq = Req(m, form, fdt)
    tangents = {"x": rq.enc(tx)}
    if has_t:
        tangents["t"] = rq.enc(tt)
    ans, _ = run(server, "jvp", m, rq, {"inputs": rq.inputs(x, t), "tangents": tangents}, enc)
    y, u = ref_jvp(m, rq.seen(x), rq.seen(t), rq.seen(tx), rq.seen(tt), batched=True)
    assert ans["jvp"].shape == (k, 4, 2)
    close(ans["outputs"], y, dtype, "outputs")
    close(ans["jvp"], u, dtype, "jvp")


@pytest.mark.parametrize("dtype", DTYPES)
def test_jvp_missing_tangents_are_zero(server, dtype):
    rng = np.random.default_rng(seed_of("jvp0", dtype))
    m = make_model(rng, {"op": "elu", "alpha": 0.5}, dtype, True, d=3, d_out=4)
    x, t = make_inputs(rng, m, b=4)
    xs, ts = sent_value(x, "nested", "float64", dtype), sent_value(t, "nested", "float64", dtype)
    tx = rng.normal(size=x.shape)
    tt = rng.normal(size=t.shape)
    base = {"model": m.to_json(), "inputs": {"x": x.tolist(), "t": t.tolist()}}
    # only x
    ans = decode_answer(post(server, "/v1/jvp", {**base, "tangents": {"x": tx.tolist()}}), dtype, "json")
    close(ans["jvp"], ref_jvp(m, xs, ts, sent_value(tx, "nested", "float64", dtype), None)[1], dtype, "jvp(x only)")
    # only t: the column of dy/dt
    ans = decode_answer(post(server, "/v1/jvp", {**base, "tangents": {"t": tt.tolist()}}), dtype, "json")
    close(ans["jvp"], ref_jvp(m, xs, ts, None, sent_value(tt, "nested", "float64", dtype))[1], dtype, "jvp(t only)")
    # only t, K-batched
    ttk = rng.normal(size=(3, 4))
    ans = decode_answer(post(server, "/v1/jvp", {**base, "tangents": {"t": ttk.tolist()}}), dtype, "json")
    ref = ref_jvp(m, xs, ts, None, sent_value(ttk, "nested", "float64", dtype), batched=True)[1]
    close(ans["jvp"], ref, dtype, "jvp(t only, K=3)")
    # empty tangents object: all zero
    ans = decode_answer(post(server, "/v1/jvp", {**base, "tangents": {}}), dtype, "json")
    assert np.all(ans["jvp"] == 0) and ans["jvp"].shape == (4, 4)
    # tangents are required
    assert_problem(post(server, "/v1/jvp", base), 422)
    # K must agree
    p = assert_problem(post(server, "/v1/jvp", {**base, "tangents": {"x": rng.normal(size=(2, 4, 3)).tolist(),
                                                                       "t": rng.normal(size=(3, 4)).tolist()}}), 422)
    assert any(pth.startswith("tangents") for pth in error_paths(p)), p


def test_jvp_vs_vjp_consistency(server):
    """<u, vᵀJ> == <Ju, v>, and the Jacobian agrees with both (einsum('bi,bij->bj', v, J) is the VJP)."""
    rng = np.random.default_rng(99)
    m = make_model(rng, {"op": "gelu", "approximate": "tanh"}, "float64", False, d=5, d_out=3)
    x, _ = make_inputs(rng, m, b=4)
    v = rng.normal(size=(4, 3))
    u = rng.normal(size=(4, 5))
    base = {"model": m.to_json(), "inputs": {"x": x.tolist()}}
    g = decode_answer(post(server, "/v1/vjp", {**base, "grad_outputs": v.tolist()}), "float64", "json")["grads"]["x"]
    ju = decode_answer(post(server, "/v1/jvp", {**base, "tangents": {"x": u.tolist()}}), "float64", "json")["jvp"]
    J = decode_answer(post(server, "/v1/jacobian", base), "float64", "json")["jacobian"]["x"]
    close(np.einsum("bi,bij->bj", v, J), g, "float64", "vjp vs jacobian")
    close(np.einsum("bij,bj->bi", J, u), ju, "float64", "jvp vs jacobian")
    close(np.sum(g * u, axis=1), np.sum(ju * v, axis=1), "float64", "<u, vJ> vs <Ju, v>")
