"""Per-sample Jacobians against vmap(jacrev): the per-activation matrix, modes and wrt."""

from __future__ import annotations

import numpy as np
import pytest

from gs_helpers import (
    assert_problem,
    close,
    decode_answer,
    post,
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
def test_jacobian(server, case):
    act, dtype, has_t = CASES[case]
    rng = np.random.default_rng(seed_of("jac", case))
    d_out = [2, 4, 6][case % 3]
    m = make_model(rng, act, dtype, has_t, d=4, d_out=d_out)
    x, t = make_inputs(rng, m, b=5)
    mode = ["auto", "reverse", "forward"][(case // 3) % 3]
    form, fdt, enc = pick(case, 5)
    rq = Req(m, form, fdt)
    wrt = ["x", "t"] if has_t else ["x"]
    ans, _ = run(server, "jacobian", m, rq, {"inputs": rq.inputs(x, t), "wrt": wrt, "mode": mode}, enc)
    j, y = ref_jacobian(m, rq.seen(x), rq.seen(t))
    close(ans["outputs"], y, dtype, "outputs")
    assert ans["jacobian"]["x"].shape == (5, d_out, 4)
    close(ans["jacobian"]["x"], j["x"], dtype, "jacobian.x")
    if has_t:
        assert ans["jacobian"]["t"].shape == (5, d_out)
        close(ans["jacobian"]["t"], j["t"], dtype, "jacobian.t")
    if mode != "auto":
        assert ans["mode"] == mode
    else:
        assert ans["mode"] in ("reverse", "forward")
        if d_out <= 2:
            assert ans["mode"] == "reverse", "auto must pick reverse when D' is much smaller than D"
        if d_out >= 6:
            assert ans["mode"] == "forward", "auto must pick forward when D' is much larger than D"


@pytest.mark.parametrize("dtype", DTYPES)
def test_jacobian_modes_and_wrt(server, dtype):
    rng = np.random.default_rng(seed_of("modes", dtype))
    for d, d_out in [(5, 2), (2, 6), (4, 4)]:
        m = make_model(rng, {"op": "sigmoid"}, dtype, True, d=d, d_out=d_out)
        x, t = make_inputs(rng, m, b=3)
        xs, ts = sent_value(x, "nested", "float64", dtype), sent_value(t, "nested", "float64", dtype)
        j, y = ref_jacobian(m, xs, ts)
        for mode in ["auto", "reverse", "forward"]:
            for wrt in (["x"], ["t"], ["x", "t"]):
                body = {"model": m.to_json(), "inputs": {"x": x.tolist(), "t": t.tolist()}, "wrt": wrt, "mode": mode}
                ans = decode_answer(post(server, "/v1/jacobian", body), dtype, "json")
                assert set(ans["jacobian"]) == set(wrt), f"wrt={wrt} got {sorted(ans['jacobian'])}"
                for k in wrt:
                    close(ans["jacobian"][k], j[k], dtype, f"jacobian.{k} mode={mode} wrt={wrt}")
                if mode != "auto":
                    assert ans["mode"] == mode
                elif wrt == ["x"] and d_out < d:
                    assert ans["mode"] == "reverse"
                elif wrt == ["x"] and d_out > d + 1:
                    assert ans["mode"] == "forward"
        # default: wrt x, auto
        ans = decode_answer(post(server, "/v1/jacobian", {"model": m.to_json(), "inputs": {"x": x.tolist(), "t": t.tolist()}}),
                            dtype, "json")
        assert set(ans["jacobian"]) == {"x"}
    # wrt t on a model without t is 422
    m = make_model(rng, {"op": "sigmoid"}, dtype, False, d=3, d_out=3)
    x, _ = make_inputs(rng, m, b=2)
    assert_problem(post(server, "/v1/jacobian", {"model": m.to_json(), "inputs": {"x": x.tolist()}, "wrt": ["t"]}), 422)
    assert_problem(post(server, "/v1/jacobian", {"model": m.to_json(), "inputs": {"x": x.tolist()}, "wrt": ["params"]}), 422)
