"""POST /v1/integrate (sampling a continuous normalizing flow) against flow_matching's ODESolver.sample
(torchdiffeq underneath) on torchcfm's MLP, and against closed-form linear flows.

Fixed-step methods (euler, midpoint, rk4; one step per grid interval, or torchdiffeq's grid of
``step_size`` with the outputs interpolated) agree to float rounding; dopri5 within its tolerances.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from gs_helpers import close, post

from gs_flows import (
    DTYPES,
    EVALS_PER_STEP,
    FIXED_METHODS,
    TINY,
    TINY_X,
    as_accurate,
    cfm_mlp,
    fm_sample,
    held,
    linear_flow,
    linear_flow_solution,
    model_json,
    refused,
    random_x,
    solve,
    tight_sample,
)

GRIDS = {"forward": [0.0, 0.25, 0.6, 1.0], "reverse": [1.0, 0.7, 0.0]}


@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("step_size", [None, 0.15], ids=["grid", "step0.15"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", FIXED_METHODS)
def test_fixed_step_matches_flow_matching(server, method, dtype, step_size, direction):
    module = cfm_mlp(3, 32, dtype, seed=1)
    grid = GRIDS[direction]
    x = held(random_x(5, 3, seed=2), dtype)
    fields = {"time_grid": grid, "method": method, "return_intermediates": True}
    if step_size is not None:
        fields["step_size"] = step_size
    ans = solve(server, "integrate", model_json(module), x, dtype, **fields)
    want, nfe = fm_sample(module, x, dtype, grid, method, step_size)
    assert ans["trajectory"].shape == (len(grid), 5, 3)
    close(ans["trajectory"], want, dtype, f"{method} trajectory")
    close(ans["x"], want[-1], dtype, f"{method} x")
    assert np.array_equal(ans["trajectory"][-1], ans["x"]), "x is the trajectory's last state"
    assert np.array_equal(ans["trajectory"][0], x), "the trajectory starts at the given state"
    # torchdiffeq's fixed grid: steps and evaluations are determined by the grid alone
    assert ans["nfe"] == nfe, f"nfe {ans['nfe']} != torchdiffeq's {nfe}"
    assert ans["steps"] == {"accepted": nfe // EVALS_PER_STEP[method], "rejected": 0}, ans["steps"]
    assert set(ans["timing"]) >= {"queue_ms", "decode_ms", "compute_ms", "encode_ms"}


@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_dopri5_within_tolerance_of_flow_matching(server, dtype, direction):
    """The server's dopri5 is as accurate as torchdiffeq's against the exact path (a float64 solve at 1e-12);
    see gs_flows.as_accurate for why not within 10·(atol + rtol·|x|) of torchdiffeq's numbers."""
    module = cfm_mlp(3, 32, dtype, seed=3)
    grid = GRIDS[direction]
    x = held(random_x(6, 3, seed=4), dtype)
    exact = tight_sample(module, x, grid)
    for atol, rtol in [(1e-5, 1e-5), (1e-7, 1e-4)] if dtype == "float64" else [(1e-5, 1e-5)]:
        ans = solve(server, "integrate", model_json(module), x, dtype, time_grid=grid, method="dopri5", atol=atol, rtol=rtol,
                    return_intermediates=True)
        want, nfe = fm_sample(module, x, dtype, grid, "dopri5", atol=atol, rtol=rtol)
        what = f"dopri5 (atol {atol}, rtol {rtol})"
        as_accurate(ans["trajectory"], want, exact, atol, rtol, what=f"{what} trajectory")
        assert np.array_equal(ans["trajectory"][-1], ans["x"])
        assert np.array_equal(ans["trajectory"][0], x)
        steps = ans["steps"]
        assert steps["accepted"] >= 1 and steps["rejected"] >= 0, steps
        # the same step control as torchdiffeq's (initial step, safety factor, mixed norm): about as many evaluations
        assert abs(ans["nfe"] - nfe) <= 0.25 * nfe + 12, f"nfe {ans['nfe']} vs torchdiffeq's {nfe} ({steps})"


def test_defaults_are_dopri5_from_0_to_1(server):
    module = cfm_mlp(3, 32, "float64", seed=5)
    x = random_x(4, 3, seed=6)
    m = model_json(module)
    plain = solve(server, "integrate", m, x, "float64")
    explicit = solve(server, "integrate", m, x, "float64", time_grid=[0, 1], method="dopri5", atol=1e-5, rtol=1e-5,
                     max_steps=10000, return_intermediates=False)
    assert np.array_equal(plain["x"], explicit["x"]) and plain["nfe"] == explicit["nfe"]
    assert "trajectory" not in plain
    want, _ = fm_sample(module, x, "float64", [0.0, 1.0], "dopri5")
    as_accurate(plain["x"], want[-1], tight_sample(module, x, [0.0, 1.0])[-1], 1e-5, 1e-5, what="default solve")


@pytest.mark.parametrize("time_varying", [False, True], ids=["x", "xt"])
def test_linear_flow_closed_form(server, time_varying):
    """v(x) = A x (+ t b): x(t1) = exp((t1 − t0) A) x(t0) (with b: the augmented matrix exponential)."""
    rng = np.random.default_rng(7)
    d = 4
    a = rng.normal(0, 0.6, size=(d, d))
    b = rng.normal(0, 1, size=d) if time_varying else None
    model, _ = linear_flow(a, "float64", b)
    x = rng.normal(0, 1, size=(5, d))
    grid = [0.0, 0.4, 1.0]
    want = np.stack([linear_flow_solution(a, x, 0.0, t, b) for t in grid])
    ans = solve(server, "integrate", model, x, "float64", time_grid=grid, method="dopri5", atol=1e-10, rtol=1e-10,
                return_intermediates=True)
    close(ans["trajectory"], want, "float64", "dopri5 at 1e-10", tol=1e-9)
    ans = solve(server, "integrate", model, x, "float64", time_grid=grid, method="rk4", step_size=0.01, return_intermediates=True)
    close(ans["trajectory"], want, "float64", "rk4, h = 0.01", tol=1e-9)
    # backwards: from x(1) to x(0)
    back = solve(server, "integrate", model, want[-1], "float64", time_grid=[1.0, 0.0], method="dopri5", atol=1e-10, rtol=1e-10)
    close(back["x"], x, "float64", "back from 1 to 0", tol=1e-9)


def test_rows_are_independent_with_fixed_steps(server):
    module = cfm_mlp(3, 32, "float64", seed=8)
    m = model_json(module)
    x = random_x(7, 3, seed=9)
    whole = solve(server, "integrate", m, x, "float64", method="rk4", step_size=0.1)
    for i in (0, 3, 6):
        one = solve(server, "integrate", m, x[i : i + 1], "float64", method="rk4", step_size=0.1)
        close(one["x"], whole["x"][i : i + 1], "float64", f"row {i} alone")


@pytest.mark.parametrize("encoding", ["json", "base64", "safetensors"])
def test_output_encodings(server, encoding):
    module = cfm_mlp(3, 32, "float32", seed=10)
    x = held(random_x(3, 3, seed=11), "float32")
    fields = {"time_grid": [0.0, 0.5, 1.0], "method": "midpoint", "return_intermediates": True}
    ans = solve(server, "integrate", model_json(module), x, "float32", output_encoding=encoding, **fields)
    want, nfe = fm_sample(module, x, "float32", fields["time_grid"], "midpoint")
    close(ans["trajectory"], want, "float32", f"trajectory ({encoding})")
    # safetensors: the fields other than tensors are JSON text in the file's __metadata__
    nfe_got = json.loads(ans["nfe"]) if encoding == "safetensors" else ans["nfe"]
    steps = json.loads(ans["steps"]) if encoding == "safetensors" else ans["steps"]
    assert nfe_got == nfe == 4 and steps == {"accepted": 2, "rejected": 0}, (ans["nfe"], ans["steps"])
    assert "timing" in ans


def test_a_registered_model(server):
    module = cfm_mlp(3, 32, "float64", seed=12)
    r = post(server, "/v1/models", {"model": model_json(module), "name": "cfm-integrate"})
    assert r.status_code in (200, 201), r.text
    mid = r.json()["id"]
    x = random_x(4, 3, seed=13)
    by_id = solve(server, "integrate", mid, x, "float64", method="euler", time_grid=[0, 0.5, 1])
    inline = solve(server, "integrate", model_json(module), x, "float64", method="euler", time_grid=[0, 0.5, 1])
    assert np.array_equal(by_id["x"], inline["x"])


# --------------------------------------------------------------------------------------
# bad requests: 422 naming the field
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field,extra",
    [
        ("method", {"method": "heun3"}),
        ("method", {"method": 4}),
        ("time_grid", {"time_grid": [0.0]}),
        ("time_grid", {"time_grid": []}),
        ("time_grid", {"time_grid": [0.0, 1.0, 0.5]}),
        ("time_grid", {"time_grid": [0.0, 0.0, 1.0]}),
        ("time_grid", {"time_grid": [1.0, 1.0]}),
        ("time_grid", {"time_grid": "0,1"}),
        ("step_size", {"method": "euler", "step_size": 0}),
        ("atol", {"atol": -1e-5}),
        ("rtol", {"rtol": -1e-5}),
        ("max_steps", {"max_steps": 0}),
        ("inputs.t", {"inputs": {"x": TINY_X, "t": [0.0, 0.0]}}),
        ("return_intermediates", {"return_intermediates": "yes"}),
    ],
    ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}={v[k]}" for k in v)[:40],
)
def test_bad_fields_are_422_naming_them(server, field, extra):
    body = {"model": TINY, "inputs": {"x": TINY_X}, **extra}
    refused(server, "/v1/integrate", body, field)


def test_non_finite_time_grid_is_422(server):
    body = json.dumps({"model": TINY, "inputs": {"x": TINY_X}})[:-1] + ', "time_grid": [0, 1e999]}'
    refused(server, "/v1/integrate", body, "time_grid")


def test_negative_step_size_is_422(start_server):
    """On a server of its own: a negative step crashed the process (the fixed-step grid was planned before the
    step was validated)."""
    s = start_server()
    for op in ("integrate", "logprob"):
        for method in FIXED_METHODS:
            for h in (-0.1, -1e300):
                body = {"model": TINY, "inputs": {"x": TINY_X}, "method": method, "step_size": h}
                refused(s.url, f"/v1/{op}", body, "step_size")
    assert s.alive()
    s.stop()


def test_step_size_with_dopri5(server):
    """flow_matching: 'step_size must be None for adaptive step solvers'; the server refuses it naming the field."""
    refused(server, "/v1/integrate", {"model": TINY, "inputs": {"x": TINY_X}, "method": "dopri5", "step_size": 0.1}, "step_size")


@pytest.mark.parametrize("method,extra", [("dopri5", {"atol": 1e-12, "rtol": 1e-12}), ("euler", {"step_size": 1e-3})])
def test_max_steps_exceeded_says_how_far_it_got(server, method, extra):
    module = cfm_mlp(3, 32, "float64", seed=14)
    body = {"model": model_json(module), "inputs": {"x": random_x(2, 3, seed=15).tolist()}, "method": method, "max_steps": 5, **extra}
    p = refused(server, "/v1/integrate", body, "max_steps")
    text = p["detail"] + " ".join(e["message"] for e in p["errors"])
    assert any(ch.isdigit() for ch in text.replace("max_steps", "")), f"no progress reported: {text}"
    # enough steps: the same request succeeds
    body["max_steps"] = 100000
    assert post(server, "/v1/integrate", body).status_code == 200
