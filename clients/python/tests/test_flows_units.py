"""sample / logprob without a server: the request fields, the planning (answer sizes, splits), and the
merging of split answers (trajectories along axis 1, nfe and steps summed, ``parts``), through the client's
whole pipeline with its one HTTP exchange (``_send``) replaced by a local Euler solver of a linear flow."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import torch

import gradserve
from gradserve._flows import _grid, _solver_fields
from gradserve._merging import _assemble
from gradserve._planning import _Plan
from gradserve.models import Signature
from gradserve.tensors import decode_safetensors_answer

D = 3
A = np.array([[0.1, -0.4, 0.2], [0.3, 0.0, -0.1], [-0.2, 0.5, 0.25]])


def test_solver_fields_and_grids():
    assert _solver_fields(None, None, None, None, None, None, False) == {}
    f = _solver_fields(torch.tensor([1.0, 0.5, 0.0]), "rk4", 0.1, 1e-6, 1e-4, 50, True)
    assert f == {"time_grid": [1.0, 0.5, 0.0], "method": "rk4", "step_size": 0.1, "atol": 1e-6, "rtol": 1e-4,
                 "max_steps": 50, "return_intermediates": True}
    assert _grid(np.array([0, 1])) == [0.0, 1.0] and _grid((0, 0.5, 1)) == [0.0, 0.5, 1.0]
    assert all(type(v) is float for v in _grid(np.arange(3, dtype=np.float32)))
    with pytest.raises(TypeError):
        _grid(1.0)


def test_answer_size_per_row():
    sig = Signature(dtype=np.dtype("<f4"), has_t=True, input_width=D, output_width=D)
    x = np.zeros((10, D), np.float32)
    assert _Plan("integrate", {"inputs.x": x}, {}, sig).per_row == D
    assert _Plan("integrate", {"inputs.x": x}, {"return_intermediates": True}, sig).per_row == D + 2 * D
    p = _Plan("logprob", {"inputs.x": x}, {"return_intermediates": True, "time_grid": [1, 0.5, 0.25, 0]}, sig)
    assert p.per_row == D + 2 + 4 * D
    p.split(None, 4 * p.per_row, None, 0)  # the server's output limit: 4 rows per request
    assert p.spans == [(0, 4), (4, 8), (8, 10)]
    assert p.answer_bytes(4) == 4 * p.per_row * 4


def _part(x, nfe, acc, rej, traj=True):
    out = {"x": x, "nfe": nfe, "steps": {"accepted": acc, "rejected": rej},
           "timing": {"queue_ms": 1.0, "decode_ms": 0.5, "compute_ms": 2.0, "encode_ms": 0.25}}
    if traj:
        out["trajectory"] = np.stack([x - 1, x])
    return out


def test_merging_split_solves():
    x1, x2 = np.arange(6.0).reshape(2, 3), np.arange(6.0, 15.0).reshape(3, 3)
    r = _assemble("integrate", [_part(x1, 26, 4, 0), _part(x2, 32, 5, 0)], {"return_intermediates": True}, {"inputs.x": 0}, None)
    assert np.array_equal(r.x, np.concatenate([x1, x2])) and r.trajectory.shape == (2, 5, 3)
    assert np.array_equal(r.trajectory[1], r.x) and np.array_equal(r.trajectory[0], r.x - 1)
    assert r.nfe == 58 and r.steps == {"accepted": 9, "rejected": 0} and r.requests == 2
    assert r.timing == {"queue_ms": 2.0, "decode_ms": 1.0, "compute_ms": 4.0, "encode_ms": 0.5}
    assert [p.rows for p in r.parts] == [2, 3] and [p.nfe for p in r.parts] == [26, 32]
    assert max(p.nfe for p in r.parts) == 32 and r.parts[1].steps.accepted == 5
    one = _assemble("integrate", [_part(x1, 26, 4, 1)], {}, {"inputs.x": 0}, None)
    assert "parts" not in one and one.nfe == 26 and one.steps.rejected == 1
    lp = [{"logprob": np.zeros(2), "x0": x1, "log_det": np.ones(2), "nfe": 8, "steps": {"accepted": 4, "rejected": 0}},
          {"logprob": np.zeros(3), "x0": x2, "log_det": np.ones(3), "nfe": 8, "steps": {"accepted": 4, "rejected": 0}}]
    r = _assemble("logprob", lp, {}, {"inputs.x": 0}, torch.device("cpu"))
    assert isinstance(r.logprob, torch.Tensor) and r.x0.shape == (5, 3) and r.nfe == 16
    assert [p.rows for p in r.parts] == [2, 3]


def test_safetensors_answer_fields():
    buf = gradserve.write_safetensors(
        {"x": np.zeros((2, 3), np.float32), "trajectory": np.zeros((2, 2, 3), np.float32)},
        {"nfe": "26", "steps": '{"accepted":4,"rejected":0}', "timing": '{"queue_ms":0.1}', "mode": "reverse"},
    )
    doc = decode_safetensors_answer(bytearray(buf))
    assert doc["nfe"] == 26 and isinstance(doc["nfe"], int)
    assert doc["steps"] == {"accepted": 4, "rejected": 0} and doc["mode"] == "reverse"


# ------------------------------------------------------------------------------------------------
# the whole pipeline, the server replaced by Euler on v(x) = A x
# ------------------------------------------------------------------------------------------------


def _euler(x, grid):
    traj = [x]
    for t0, t1 in zip(grid[:-1], grid[1:]):
        traj.append(traj[-1] + (t1 - t0) * traj[-1] @ A.T)
    return np.stack(traj)


class FakeServer:
    """Stands in for ``Client._send``: records each request's rows and fields, answers by Euler."""

    def __init__(self):
        self.calls: list[tuple[str, int, dict]] = []
        self.lock = threading.Lock()

    def __call__(self, url, op, m, mid, tensors, fields, transport, answer_bytes, retries=None):
        x = tensors["inputs.x"].astype(np.float64)
        with self.lock:
            self.calls.append((op, x.shape[0], dict(fields)))
        grid = fields.get("time_grid", [0.0, 1.0] if op == "integrate" else [1.0, 0.0])
        traj = _euler(x, grid)
        n = len(grid) - 1
        out = {"nfe": n, "steps": {"accepted": n, "rejected": 0}, "timing": {"compute_ms": 1.0}}
        if fields.get("return_intermediates"):
            out["trajectory"] = traj
        if op == "integrate":
            out["x"] = traj[-1]
        else:
            log_det = np.full(x.shape[0], (grid[-1] - grid[0]) * np.trace(A))
            out.update(x0=traj[-1], log_det=log_det,
                       logprob=-0.5 * (traj[-1] ** 2).sum(1) - D / 2 * math.log(2 * math.pi) + log_det)
        return out


@pytest.fixture
def fake(monkeypatch):
    server = FakeServer()
    c = gradserve.Client(["http://a.invalid", "http://b.invalid"], batch_size=None)
    c._signatures["lin"] = Signature(dtype=np.dtype("<f8"), has_t=False, input_width=D, output_width=D, parameter_count=9)
    monkeypatch.setattr(c, "_send", server)
    monkeypatch.setattr(c, "_server_limits", lambda: (None, None))
    yield c, server
    c.close()


def test_sample_split_over_two_servers(fake):
    c, server = fake
    x = torch.randn(10, D, dtype=torch.float64)
    grid = [0.0, 0.25, 0.5, 1.0]
    r = c.sample("lin", x, time_grid=torch.tensor(grid), method="euler", return_intermediates=True, batch_size=4)
    assert r.requests == 3 and sorted(n for _, n, _ in server.calls) == [2, 4, 4]
    assert all(f == {"time_grid": grid, "method": "euler", "return_intermediates": True} for _, _, f in server.calls)
    want = _euler(x.numpy(), grid)
    assert isinstance(r.x, torch.Tensor) and isinstance(r.trajectory, torch.Tensor)
    assert r.trajectory.shape == (4, 10, D)
    np.testing.assert_allclose(r.trajectory.numpy(), want, rtol=1e-14)
    np.testing.assert_allclose(r.x.numpy(), want[-1], rtol=1e-14)
    assert r.nfe == 9 and r.steps == {"accepted": 9, "rejected": 0}
    assert [p.rows for p in r.parts] == [4, 4, 2] and all(p.nfe == 3 for p in r.parts)


def test_logprob_numpy_in_numpy_out(fake):
    c, server = fake
    x = np.random.default_rng(0).normal(size=(5, D))
    r = c.logprob("lin", x, divergence="hutchinson", probes=4, seed=9, noise="gaussian", method="rk4", step_size=0.5)
    assert r.requests == 1 and "parts" not in r
    assert server.calls[0][2] == {"method": "rk4", "step_size": 0.5, "divergence": "hutchinson", "probes": 4, "seed": 9,
                                  "noise": "gaussian"}
    assert isinstance(r.logprob, np.ndarray) and r.logprob.shape == (5,) and r.x0.shape == (5, D)
    np.testing.assert_allclose(r.log_det, -np.trace(A))
    np.testing.assert_allclose(r.x0, _euler(x, [1.0, 0.0])[-1])
    r = c.logprob("lin", x.tolist(), batch_size=2)
    assert r.requests == 3 and r.logprob.shape == (5,) and server.calls[-1][2] == {"divergence": "exact"}


def test_split_by_the_output_limit(fake, monkeypatch):
    c, server = fake
    monkeypatch.setattr(c, "_server_limits", lambda: (3 * (D + 2 * D), None))  # 3 rows with their trajectories
    r = c.sample("lin", np.ones((7, D)), return_intermediates=True)
    assert r.requests == 3 and r.trajectory.shape == (2, 7, D)
    r = c.sample("lin", np.ones((7, D)))  # without the trajectory 9 rows fit
    assert r.requests == 1
