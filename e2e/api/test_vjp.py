"""Vector-Jacobian products against torch.autograd.grad: the per-activation matrix, batched cotangents, wrt subsets."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from gs_helpers import (
    assert_problem,
    close,
    decode_answer,
    error_paths,
    post,
    ref_vjp,
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
def test_vjp(server, case):
    act, dtype, has_t = CASES[case]
    rng = np.random.default_rng(seed_of("vjp", case))
    m = make_model(rng, act, dtype, has_t, d=4, d_out=3)
    x, t = make_inputs(rng, m, b=5)
    v = rng.normal(size=(5, 3))
    form, fdt, enc = pick(case, 1)
    rq = Req(m, form, fdt)
    wrt = ["x", "t", "params"] if has_t else ["x", "params"]
    ans, _ = run(server, "vjp", m, rq, {"inputs": rq.inputs(x, t), "grad_outputs": rq.enc(v), "wrt": wrt}, enc)
    ref = ref_vjp(m, rq.seen(x), rq.seen(t), rq.seen(v), wrt)
    close(ans["outputs"], ref["outputs"], dtype, "outputs")
    close(ans["grads"]["x"], ref["x"], dtype, "grads.x")
    if has_t:
        close(ans["grads"]["t"], ref["t"], dtype, "grads.t")
    else:
        assert "t" not in ans["grads"]
    names = [n for n, _ in m.param_names()]
    assert set(ans["grads"]["params"]) == set(names)
    for n in names:
        close(ans["grads"]["params"][n], ref["params." + n], dtype, f"grads.params.{n}")


@pytest.mark.parametrize("case", range(len(CASES)), ids=CASE_IDS)
def test_vjp_grads_batched(server, case):
    act, dtype, has_t = CASES[case]
    rng = np.random.default_rng(seed_of("vjpK", case))
    m = make_model(rng, act, dtype, has_t, d=3, d_out=4)
    x, t = make_inputs(rng, m, b=4)
    k = 3
    v = rng.normal(size=(k, 4, 4))
    form, fdt, enc = pick(case, 2)
    rq = Req(m, form, fdt)
    wrt = ["x", "t", "params"] if has_t else ["x", "params"]
    body = {"inputs": rq.inputs(x, t), "grad_outputs": rq.enc(v), "wrt": wrt, "is_grads_batched": True}
    ans, _ = run(server, "vjp", m, rq, body, enc)
    ref = ref_vjp(m, rq.seen(x), rq.seen(t), rq.seen(v), wrt, batched=True)
    close(ans["outputs"], ref["outputs"], dtype, "outputs")
    assert ans["grads"]["x"].shape == (k, 4, 3)
    close(ans["grads"]["x"], ref["x"], dtype, "grads.x")
    if has_t:
        assert ans["grads"]["t"].shape == (k, 4)
        close(ans["grads"]["t"], ref["t"], dtype, "grads.t")
    for n, p in m.param_names():
        assert ans["grads"]["params"][n].shape == (k, *p.shape), n
        close(ans["grads"]["params"][n], ref["params." + n], dtype, f"grads.params.{n}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_vjp_wrt_subsets(server, dtype):
    rng = np.random.default_rng(seed_of("wrt", dtype))
    m = make_model(rng, {"op": "softplus"}, dtype, True, d=3, d_out=2)
    x, t = make_inputs(rng, m, b=4)
    v = rng.normal(size=(4, 2))
    full = ref_vjp(m, x if dtype == "float64" else sent_value(x, "nested", "float64", dtype),
                   sent_value(t, "nested", "float64", dtype), sent_value(v, "nested", "float64", dtype),
                   ["x", "t", "params"])
    for n in range(1, 4):
        for wrt in itertools.combinations(["x", "t", "params"], n):
            body = {"model": m.to_json(), "inputs": {"x": x.tolist(), "t": t.tolist()}, "grad_outputs": v.tolist(),
                    "wrt": list(wrt)}
            ans = decode_answer(post(server, "/v1/vjp", body), dtype, "json")
            assert set(ans["grads"]) == set(wrt), f"wrt={wrt}: got grads {sorted(ans['grads'])}"
            for k in wrt:
                if k == "params":
                    for pn, _ in m.param_names():
                        close(ans["grads"]["params"][pn], full["params." + pn], dtype, pn)
                else:
                    close(ans["grads"][k], full[k], dtype, k)
    # default wrt is ["x"]
    body = {"model": m.to_json(), "inputs": {"x": x.tolist(), "t": t.tolist()}, "grad_outputs": v.tolist()}
    ans = decode_answer(post(server, "/v1/vjp", body), dtype, "json")
    assert set(ans["grads"]) == {"x"}


def test_vjp_without_t_model(server):
    rng = np.random.default_rng(5)
    m = make_model(rng, {"op": "relu"}, "float64", False, d=3, d_out=2)
    x, _ = make_inputs(rng, m, b=3)
    v = rng.normal(size=(3, 2))
    body = {"model": m.to_json(), "inputs": {"x": x.tolist()}, "grad_outputs": v.tolist(), "wrt": ["t"]}
    assert_problem(post(server, "/v1/vjp", body), 422)
    body = {"model": m.to_json(), "inputs": {"x": x.tolist(), "t": [0.1, 0.2, 0.3]}, "grad_outputs": v.tolist()}
    p = assert_problem(post(server, "/v1/vjp", body), 422)
    assert "inputs.t" in error_paths(p)
