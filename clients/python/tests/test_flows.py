"""Client.sample (/v1/integrate) and Client.logprob (/v1/logprob) against a live server, checked against
flow_matching's ODESolver (torchdiffeq) on torchcfm's MLP: torch in, torch out; numpy in, numpy out; split
batches (over requests and over two servers) merged, trajectories along axis 1; the server's refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flow_matching.solver import ODESolver  # run_tests.sh installs flow-matching (and torchdiffeq, tqdm)

import gradserve
from gradserve.torch import export

from conftest import assert_close, make_toy


def velocity(model):
    """model(x, t[B]) as flow_matching's velocity (x, t scalar)."""
    return lambda x, t: model(x, t.to(x.dtype).expand(x.shape[0]))


def log_p0(x):
    return -0.5 * (x**2).sum(1) - x.shape[1] / 2 * math.log(2 * math.pi)


def fm_sample(model, x, grid, method, step_size=None, **kw):
    with torch.no_grad():
        return ODESolver(velocity(model)).sample(
            x, step_size, method=method, time_grid=torch.tensor(grid, dtype=x.dtype), return_intermediates=True, **kw
        )


def fm_logprob(model, x, grid, method, step_size=None, **kw):
    traj, lp = ODESolver(velocity(model)).compute_likelihood(
        x, log_p0, step_size, method=method, time_grid=torch.tensor(grid, dtype=x.dtype), return_intermediates=True,
        exact_divergence=True, **kw
    )
    return traj.detach(), lp.detach()


@pytest.mark.parametrize("method,step_size", [("euler", None), ("midpoint", 0.2), ("rk4", 0.15)])
def test_sample_matches_flow_matching(client, method, step_size):
    m = make_toy(dim=4, w=16, seed=41)
    x = torch.randn(6, 4, dtype=torch.float64)
    grid = [0.0, 0.3, 1.0]
    r = client.sample(m, x, time_grid=grid, method=method, step_size=step_size, return_intermediates=True)
    want = fm_sample(m, x, grid, method, step_size)
    assert isinstance(r.x, torch.Tensor) and r.trajectory.shape == (3, 6, 4)
    assert_close(r.trajectory, want, torch.float64, "trajectory")
    assert_close(r.x, want[-1], torch.float64, "x")
    assert isinstance(r.nfe, int) and r.steps.rejected == 0 and r.requests == 1


def test_sample_dopri5_numpy_in_numpy_out(client):
    m = make_toy(dim=4, w=16, seed=42, dtype=torch.float32)
    x = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    r = client.sample(export(m), x)  # dopri5 from 0 to 1, atol = rtol = 1e-5
    assert isinstance(r.x, np.ndarray) and r.x.dtype == np.float32 and "trajectory" not in r
    want = fm_sample(m, torch.from_numpy(x), [0.0, 1.0], "dopri5")[-1].numpy()
    # two dopri5 solutions at 1e-5 (not the same steps: e2e/api/test_integrate.py compares their accuracy)
    assert np.max(np.abs(r.x - want)) < 1e-3
    assert r.nfe >= 6 * r.steps.accepted


def test_logprob_matches_flow_matching(client):
    m = make_toy(dim=4, w=16, seed=43)
    mid = client.register(export(m))
    x = torch.randn(5, 4, dtype=torch.float64)
    r = client.logprob(mid, x, method="midpoint", step_size=0.25, return_intermediates=True, time_grid=[1.0, 0.5, 0.0])
    traj, lp = fm_logprob(m, x, [1.0, 0.5, 0.0], "midpoint", 0.25)
    assert_close(r.logprob, lp, torch.float64, "logprob")
    assert_close(r.x0, traj[-1], torch.float64, "x0")
    assert_close(r.log_det, lp - log_p0(traj[-1]), torch.float64, "log_det")
    assert_close(r.trajectory, traj, torch.float64, "trajectory")
    assert r.nfe == 8 and r.steps == {"accepted": 4, "rejected": 0}


def test_split_batches_merge(client):
    m = make_toy(dim=4, w=16, seed=44)
    x = torch.randn(11, 4, dtype=torch.float64)
    grid = [0.0, 0.5, 1.0]
    whole = client.sample(m, x, time_grid=grid, method="rk4", step_size=0.1, return_intermediates=True)
    split = client.sample(m, x, time_grid=grid, method="rk4", step_size=0.1, return_intermediates=True, batch_size=4)
    assert split.requests == 3 and split.trajectory.shape == (3, 11, 4)
    assert_close(split.trajectory, whole.trajectory, torch.float64, "split trajectory")
    assert [p.rows for p in split.parts] == [4, 4, 3]
    assert split.nfe == 3 * whole.nfe and split.steps.accepted == 3 * whole.steps.accepted
    # dopri5: each part has its own steps; the answers agree within the tolerances
    a = client.sample(m, x, atol=1e-7, rtol=1e-7)
    b = client.sample(m, x, atol=1e-7, rtol=1e-7, batch_size=3)
    assert b.requests == 4 and len(b.parts) == 4 and b.nfe == sum(p.nfe for p in b.parts)
    assert (a.x - b.x).abs().max() < 1e-4  # global errors of a 1e-7 solve here: ~1e-5
    lp_whole = client.logprob(m, x, method="euler", step_size=0.1)
    lp_split = client.logprob(m, x, method="euler", step_size=0.1, batch_size=5)
    assert lp_split.requests == 3
    for key in ("logprob", "x0", "log_det"):
        assert_close(lp_split[key], lp_whole[key], torch.float64, key)


def test_two_servers_and_hutchinson(start_server):
    a, b = start_server(), start_server()
    m = make_toy(dim=3, w=16, seed=45)
    x = torch.randn(8, 3, dtype=torch.float64)
    with gradserve.Client([a.url, b.url], batch_size=4) as c:
        exact = c.logprob(m, x, method="midpoint", step_size=0.25)
        h1 = c.logprob(m, x, method="midpoint", step_size=0.25, divergence="hutchinson", probes=64, seed=5)
        h2 = c.logprob(m, x, method="midpoint", step_size=0.25, divergence="hutchinson", probes=64, seed=5)
    assert exact.requests == 2 and h1.requests == 2
    assert torch.equal(h1.logprob, h2.logprob), "same seed, same answer (on either replica)"
    assert_close(h1.x0, exact.x0, torch.float64, "x0 does not depend on the divergence")
    assert torch.all((h1.log_det - exact.log_det).abs() < 1.0), (h1.log_det, exact.log_det)


@pytest.mark.parametrize("transport", ["json", "safetensors"])
def test_transports(client, transport):
    m = make_toy(dim=4, w=16, seed=46, dtype=torch.float32)
    x = torch.randn(3, 4)
    r = client.sample(m, x, method="euler", time_grid=[0, 0.5, 1], return_intermediates=True, transport=transport)
    base = client.sample(m, x, method="euler", time_grid=[0, 0.5, 1], return_intermediates=True, transport="base64")
    assert torch.equal(r.trajectory, base.trajectory) and r.nfe == base.nfe == 2
    assert r.steps == {"accepted": 2, "rejected": 0} and set(r.timing) >= {"compute_ms"}
    lp = client.logprob(m, x, method="euler", transport=transport)
    assert lp.logprob.dtype == torch.float32 and lp.nfe == 1


def test_refusals_name_the_field(client):
    m = make_toy(dim=4, w=16, seed=47)
    x = torch.randn(2, 4, dtype=torch.float64)
    for call, field in [
        (lambda: client.sample(m, x, method="heun3"), "method"),
        (lambda: client.sample(m, x, time_grid=[0.0]), "time_grid"),
        (lambda: client.sample(m, x, method="euler", step_size=0), "step_size"),
        (lambda: client.logprob(m, x, divergence="sometimes"), "divergence"),
        (lambda: client.logprob(m, x, divergence="hutchinson", probes=0), "probes"),
        (lambda: client.logprob(m, x, divergence="hutchinson", noise="uniform"), "noise"),
        (lambda: client.sample(m, x, atol=1e-13, rtol=1e-13, max_steps=3), "max_steps"),
    ]:
        with pytest.raises(gradserve.InvalidRequest) as ei:
            call()
        assert any(e.path.split(".")[0].split("[")[0] == field for e in ei.value.errors), (field, ei.value.errors)
