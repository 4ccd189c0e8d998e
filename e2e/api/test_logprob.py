"""POST /v1/logprob (log-likelihoods of a continuous normalizing flow, standard normal base) against
flow_matching's ODESolver.compute_likelihood (exact divergence) on torchcfm's MLP, against closed-form
linear flows (x0 = exp(−A) x1, log_det = −tr A), and the Hutchinson estimator's statistics: unbiased,
variance falling as 1/probes, reproducible by seed.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from gs_helpers import assert_problem, close, post

from gs_flows import (
    DTYPES,
    EVALS_PER_STEP,
    FIXED_METHODS,
    TINY,
    TINY_X,
    as_accurate,
    cfm_mlp,
    fm_logprob,
    held,
    linear_flow,
    linear_flow_solution,
    log_p0,
    model_json,
    refused,
    random_x,
    solve,
    tight_logprob,
)


def _consistent(ans: dict, dtype: str) -> None:
    """logprob = log p0(x0) + log_det, and x0 is the trajectory's end when there is one."""
    close(ans["logprob"], log_p0(ans["x0"]) + ans["log_det"], dtype, "logprob = log p0(x0) + log_det")
    if "trajectory" in ans:
        assert np.array_equal(ans["trajectory"][-1], ans["x0"]), "x0 is the trajectory's last state"


@pytest.mark.parametrize("step_size", [None, 0.2], ids=["grid", "step0.2"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", FIXED_METHODS)
def test_exact_fixed_step_matches_flow_matching(server, method, dtype, step_size):
    module = cfm_mlp(3, 32, dtype, seed=21)
    grid = [1.0, 0.6, 0.0]
    x = held(random_x(5, 3, seed=22), dtype)
    fields = {"time_grid": grid, "method": method, "return_intermediates": True}
    if step_size is not None:
        fields["step_size"] = step_size
    ans = solve(server, "logprob", model_json(module), x, dtype, **fields)
    lp, traj, log_det, nfe = fm_logprob(module, x, dtype, grid, method, step_size)
    assert ans["logprob"].shape == (5,) and ans["log_det"].shape == (5,) and ans["x0"].shape == (5, 3)
    close(ans["trajectory"], traj, dtype, f"{method} trajectory")
    close(ans["x0"], traj[-1], dtype, f"{method} x0")
    close(ans["log_det"], log_det, dtype, f"{method} log_det")
    close(ans["logprob"], lp, dtype, f"{method} logprob")
    assert np.array_equal(ans["trajectory"][0], x)
    _consistent(ans, dtype)
    assert ans["nfe"] == nfe, f"nfe {ans['nfe']} != flow_matching's {nfe}"
    assert ans["steps"] == {"accepted": nfe // EVALS_PER_STEP[method], "rejected": 0}, ans["steps"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_exact_dopri5_within_tolerance_of_flow_matching(server, dtype):
    module = cfm_mlp(3, 32, dtype, seed=23)
    x = held(random_x(6, 3, seed=24), dtype)
    grid = [1.0, 0.5, 0.0]
    exact_lp, exact_traj, exact_log_det = tight_logprob(module, x, grid)
    for atol, rtol in [(1e-5, 1e-5), (1e-6, 1e-4)] if dtype == "float64" else [(1e-5, 1e-5)]:
        ans = solve(server, "logprob", model_json(module), x, dtype, time_grid=grid, method="dopri5", atol=atol, rtol=rtol,
                    return_intermediates=True)
        lp, traj, log_det, nfe = fm_logprob(module, x, dtype, grid, "dopri5", atol=atol, rtol=rtol)
        what = f"dopri5 (atol {atol}, rtol {rtol})"
        # as accurate as flow_matching's against the exact solution (see gs_flows.as_accurate)
        as_accurate(ans["trajectory"], traj, exact_traj, atol, rtol, what=f"{what} trajectory")
        as_accurate(ans["log_det"], log_det, exact_log_det, atol, rtol, what=f"{what} log_det")
        as_accurate(ans["logprob"], lp, exact_lp, atol, rtol, what=f"{what} logprob")
        _consistent(ans, dtype)
        assert abs(ans["nfe"] - nfe) <= 0.25 * nfe + 12, f"nfe {ans['nfe']} vs torchdiffeq's {nfe} ({ans['steps']})"


def test_defaults(server):
    """time_grid [1, 0], dopri5 at 1e-5, exact divergence, standard normal base."""
    module = cfm_mlp(3, 32, "float64", seed=25)
    m = model_json(module)
    x = random_x(4, 3, seed=26)
    plain = solve(server, "logprob", m, x, "float64")
    explicit = solve(server, "logprob", m, x, "float64", time_grid=[1, 0], method="dopri5", atol=1e-5, rtol=1e-5,
                     divergence="exact", base="standard_normal", max_steps=10000)
    assert np.array_equal(plain["logprob"], explicit["logprob"]) and np.array_equal(plain["x0"], explicit["x0"])
    assert "trajectory" not in plain
    lp, traj, log_det, _ = fm_logprob(module, x, "float64", [1.0, 0.0], "dopri5")
    exact_lp, exact_traj, exact_log_det = tight_logprob(module, x, [1.0, 0.0])
    as_accurate(plain["log_det"], log_det, exact_log_det, 1e-5, 1e-5, what="default log_det")
    as_accurate(plain["x0"], traj[-1], exact_traj[-1], 1e-5, 1e-5, what="default x0")


@pytest.mark.parametrize("time_varying", [False, True], ids=["x", "xt"])
def test_linear_flow_closed_form(server, time_varying):
    """v = A x (+ t b): from 1 to 0, x0 = the exact solution (exp(−A) x1 without b) and log_det = −tr A."""
    rng = np.random.default_rng(27)
    d = 4
    a = rng.normal(0, 0.6, size=(d, d))
    b = rng.normal(0, 1, size=d) if time_varying else None
    model, _ = linear_flow(a, "float64", b)
    x1 = rng.normal(0, 1, size=(5, d))
    x0 = linear_flow_solution(a, x1, 1.0, 0.0, b)
    want_lp = log_p0(x0) - np.trace(a)
    for fields in ({"method": "dopri5", "atol": 1e-10, "rtol": 1e-10}, {"method": "rk4", "step_size": 0.005}):
        ans = solve(server, "logprob", model, x1, "float64", **fields)
        close(ans["x0"], x0, "float64", f"x0 ({fields['method']})", tol=1e-9)
        close(ans["log_det"], np.full(5, -np.trace(a)), "float64", f"log_det ({fields['method']})", tol=1e-9)
        close(ans["logprob"], want_lp, "float64", f"logprob ({fields['method']})", tol=1e-9)


# --------------------------------------------------------------------------------------
# Hutchinson
# --------------------------------------------------------------------------------------


def test_hutchinson_is_reproducible_by_seed(server):
    module = cfm_mlp(3, 32, "float64", seed=28)
    m = model_json(module)
    x = random_x(5, 3, seed=29)

    def est(**kw):
        return solve(server, "logprob", m, x, "float64", divergence="hutchinson", method="midpoint", step_size=0.25, **kw)

    a, b = est(seed=3, probes=2), est(seed=3, probes=2)
    assert np.array_equal(a["logprob"], b["logprob"]) and np.array_equal(a["log_det"], b["log_det"])
    c = est(seed=4, probes=2)
    assert not np.array_equal(a["log_det"], c["log_det"]), "different seeds gave identical estimates"
    assert np.array_equal(a["x0"], c["x0"]), "with fixed steps the noise changes the density only, never x"
    assert np.array_equal(est()["log_det"], est(seed=0, probes=1, noise="rademacher")["log_det"]), \
        "defaults: seed 0, 1 probe, rademacher"
    g = est(seed=3, probes=2, noise="gaussian")
    assert not np.array_equal(a["log_det"], g["log_det"])
    assert np.array_equal(g["log_det"], est(seed=3, probes=2, noise="gaussian")["log_det"])
    _consistent(a, "float64")


def test_hutchinson_rademacher_in_one_dimension_is_exact(server):
    """D = 1: εᵀJε = J for ε = ±1, so one Rademacher probe gives the exact divergence."""
    module = cfm_mlp(1, 16, "float64", seed=30)
    m = model_json(module)
    x = random_x(6, 1, seed=31)
    fields = {"method": "rk4", "time_grid": [1.0, 0.0], "step_size": 0.125}
    exact = solve(server, "logprob", m, x, "float64", **fields)
    hutch = solve(server, "logprob", m, x, "float64", divergence="hutchinson", seed=7, **fields)
    close(hutch["logprob"], exact["logprob"], "float64", "1-D Hutchinson vs exact")
    lp, _, _, _ = fm_logprob(module, x, "float64", [1.0, 0.0], "rk4", 0.125)
    close(exact["logprob"], lp, "float64", "1-D exact vs flow_matching")


N_ROWS = 400  # one sample row repeated: each row draws its own probes, so the rows are independent estimates


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_linear_flow_mean_and_variance(server, noise):
    """v = A x: with the noise fixed along the solve each row's log_det is −mean_p ε_pᵀAε_p exactly, whose mean
    is −tr A and whose variance is Σ_{i<j} (A_ij + A_ji)² / probes (Rademacher) or 2‖(A + Aᵀ)/2‖²_F / probes
    (Gaussian). The sample mean lies within 5 standard errors of −tr A, and the sample variance near theory."""
    rng = np.random.default_rng(32)
    d = 5
    a = rng.normal(0, 0.5, size=(d, d))
    model, _ = linear_flow(a, "float64")
    x = np.repeat(rng.normal(0, 1, size=(1, d)), N_ROWS, axis=0)
    s = a + a.T
    var1 = sum(s[i, j] ** 2 for i in range(d) for j in range(i + 1, d)) if noise == "rademacher" else 0.5 * np.sum(s**2)
    for probes, seed in [(1, 11), (16, 12)]:
        ans = solve(server, "logprob", model, x, "float64", divergence="hutchinson", probes=probes, seed=seed, noise=noise,
                    method="rk4")
        est = ans["log_det"]
        var = var1 / probes
        mean_err = abs(est.mean() + np.trace(a))
        assert mean_err <= 5 * np.sqrt(var / N_ROWS), f"{probes} probes: mean off by {mean_err:.3g} (se {np.sqrt(var / N_ROWS):.3g})"
        ratio = est.var(ddof=1) / var
        assert 0.6 <= ratio <= 1.5, f"{probes} probes ({noise}): sample variance / theory = {ratio:.3f}"


def test_hutchinson_unbiased_on_an_mlp_and_error_shrinks_with_probes(server):
    """A nonlinear flow: the mean of many independent 1-probe estimates approaches the exact log_det (of the
    same fixed-step solve), and the spread falls roughly as 1/√probes (16 probes: about 4× smaller)."""
    module = cfm_mlp(3, 32, "float64", seed=33)
    m = model_json(module)
    x = np.repeat(random_x(1, 3, seed=34), N_ROWS, axis=0)
    fields = {"method": "midpoint", "step_size": 0.25}
    exact = solve(server, "logprob", m, x[:1], "float64", **fields)["log_det"][0]
    sd = {}
    for probes in (1, 16):
        est = solve(server, "logprob", m, x, "float64", divergence="hutchinson", probes=probes, seed=40 + probes, **fields)["log_det"]
        sd[probes] = est.std(ddof=1)
        se = sd[probes] / np.sqrt(N_ROWS)
        assert abs(est.mean() - exact) <= 5 * se + 1e-9, f"{probes} probes: mean {est.mean():.6g} vs exact {exact:.6g} (se {se:.3g})"
        rms = np.sqrt(np.mean((est - exact) ** 2))
        assert rms <= 1.2 * sd[probes] + 1e-9, f"{probes} probes: rms error {rms:.3g} vs spread {sd[probes]:.3g}"
    assert sd[1] > 0, "one probe should not be exact here"
    assert 2.5 <= sd[1] / sd[16] <= 6.5, f"spread 1 probe / 16 probes = {sd[1] / sd[16]:.2f}, expected about 4"


# --------------------------------------------------------------------------------------
# bad requests: 422 naming the field
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field,extra",
    [
        ("divergence", {"divergence": "approximate"}),
        ("divergence", {"divergence": True}),
        ("noise", {"divergence": "hutchinson", "noise": "uniform"}),
        ("probes", {"divergence": "hutchinson", "probes": 0}),
        ("probes", {"divergence": "hutchinson", "probes": -3}),
        ("probes", {"divergence": "hutchinson", "probes": 1.5}),
        ("seed", {"divergence": "hutchinson", "seed": "abc"}),
        ("base", {"base": "uniform"}),
        ("method", {"method": "adams"}),
        ("time_grid", {"time_grid": [1.0]}),
        ("time_grid", {"time_grid": [1.0, 0.0, 0.5]}),
        ("step_size", {"method": "midpoint", "step_size": 0}),
        ("max_steps", {"max_steps": -1}),
        ("inputs.t", {"inputs": {"x": TINY_X, "t": [1.0, 1.0]}}),
    ],
    ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}={v[k]}" for k in v)[:40],
)
def test_bad_fields_are_422_naming_them(server, field, extra):
    body = {"model": TINY, "inputs": {"x": TINY_X}, **extra}
    refused(server, "/v1/logprob", body, field)


def test_non_finite_time_grid_is_422(server):
    body = json.dumps({"model": TINY, "inputs": {"x": TINY_X}})[:-1] + ', "time_grid": [1, -1e999]}'
    refused(server, "/v1/logprob", body, "time_grid")


def test_velocity_must_be_square(server):
    """v must map x to something of x's shape (D' = D)."""
    m = {"inputs": ["x"], "dtype": "float64", "layers": [{"op": "linear", "weight": [[0.5, -0.25], [0.125, 1.0], [1.0, 1.0]]}]}
    for op in ("logprob", "integrate"):
        assert_problem(post(server, f"/v1/{op}", {"model": m, "inputs": {"x": TINY_X}}), 422)


def test_max_steps_exceeded(server):
    module = cfm_mlp(3, 32, "float64", seed=35)
    body = {"model": model_json(module), "inputs": {"x": random_x(2, 3, seed=36).tolist()}, "atol": 1e-12, "rtol": 1e-12, "max_steps": 4}
    refused(server, "/v1/logprob", body, "max_steps")
