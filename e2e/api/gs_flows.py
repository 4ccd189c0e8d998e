"""The reference side of the flow tests (test_integrate.py, test_logprob.py): torchcfm's MLP as a velocity
field, flow_matching's ``ODESolver`` (torchdiffeq underneath) with its evaluations counted, linear flows with
closed-form solutions (``torch.linalg.matrix_exp``), and the requests and answers of ``/v1/integrate`` and
``/v1/logprob``.

Models go to the server in the model format written by the client's PyTorch export
(``gradserve.torch.export``); the reference runs the very same module in PyTorch.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from flow_matching.solver import ODESolver
from gradserve.models import to_json
from gradserve.torch import export
from gradserve_testing.toymlp import toy_mlp

from gs_helpers import assert_problem, decode_answer, describe, error_paths, post, sent_value

TORCH_DTYPE = {"float32": torch.float32, "float64": torch.float64}
FIXED_METHODS = ["euler", "midpoint", "rk4"]
EVALS_PER_STEP = {"euler": 1, "midpoint": 2, "rk4": 4}
DTYPES = ["float64", "float32"]

# A small time-varying field (D = 2) and inputs for the requests that must be refused.
TINY = {"inputs": ["x", "t"], "dtype": "float64",
        "layers": [{"op": "linear", "weight": [[0.5, -0.25, 0.1], [0.125, 1.0, -0.3]]}, {"op": "tanh"}]}
TINY_X = [[0.1, 0.2], [0.3, -0.4]]


def random_x(b: int, d: int, seed: int) -> np.ndarray:
    """A [B, D] standard normal batch, reproducible by seed."""
    return np.random.default_rng(seed).normal(0, 1, size=(b, d))


def held(x: np.ndarray, dtype: str) -> np.ndarray:
    """x as the server holds it (sent as nested JSON, cast to the model's dtype)."""
    return sent_value(x, "nested", "float64", dtype)


def names_field(field: str, paths: list[str]) -> bool:
    """Whether one of a problem's error paths is ``field`` or inside it."""
    return any(p == field or p.startswith(field + ".") or p.startswith(field + "[") for p in paths)


def refused(url: str, path: str, body, field: str) -> dict:
    """POSTs `body` to `path`, which must answer 422 with an error at `field` (or inside it); the problem."""
    p = assert_problem(post(url, path, body), 422)
    assert names_field(field, error_paths(p)), f"expected an error at {field}, got {p['errors']}"
    return p


def cfm_mlp(dim: int = 3, w: int = 32, dtype: str = "float64", seed: int = 0, time_varying: bool = True):
    """torchcfm's ``MLP(dim, w, time_varying=True)``: Linear(dim+1, w) → SELU → Linear(w, w) → SELU →
    Linear(w, w) → SELU → Linear(w, dim), weights from ``torch.manual_seed(seed)``."""
    return toy_mlp(dim, w, time_varying=time_varying, seed=seed, dtype=TORCH_DTYPE[dtype])


def model_json(module: torch.nn.Module) -> dict:
    """The module in the model format, JSON-ready (weights as base64 tensors)."""
    return to_json(export(module))[0]


def linear_flow(a: np.ndarray, dtype: str = "float64", b: np.ndarray | None = None) -> tuple[dict, torch.nn.Module]:
    """v(x) = A x (inputs ["x"]), or with ``b`` v(x, t) = A x + t b (inputs ["x", "t"]: one linear layer
    without bias whose weight is [A | b]): the model object and the same flow as a torch module."""
    d = a.shape[0]
    has_t = b is not None
    w = np.concatenate([a, b[:, None]], axis=1) if has_t else a
    lin = torch.nn.Linear(d + (1 if has_t else 0), d, bias=False).to(TORCH_DTYPE[dtype])
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(w))

    class Flow(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(lin)
            self.time_varying = has_t

        def forward(self, x, t=None):
            return self.net(torch.cat([x, t[:, None]], dim=-1) if has_t else x)

    module = Flow()
    return model_json(module), module


def linear_flow_solution(a: np.ndarray, x: np.ndarray, t0: float, t1: float, b: np.ndarray | None = None) -> np.ndarray:
    """The exact state at t1 of dx/dt = A x (+ t b) from x at t0: the augmented system z = [x, t, 1],
    dz/dt = M z with M = [[A, b, 0], [0, 0, 1], [0, 0, 0]], so z(t1) = exp((t1 − t0) M) z(t0)."""
    d = a.shape[0]
    m = np.zeros((d + 2, d + 2))
    m[:d, :d] = a
    if b is not None:
        m[:d, d] = b
    m[d, d + 1] = 1.0
    e = torch.linalg.matrix_exp(torch.from_numpy((t1 - t0) * m)).numpy()
    z = np.concatenate([x, np.full((x.shape[0], 1), t0), np.ones((x.shape[0], 1))], axis=1)
    return (z @ e.T)[:, :d]


def log_p0(x: torch.Tensor | np.ndarray):
    """The standard normal's log-density per row: −½‖x‖² − (D/2)·log 2π."""
    if isinstance(x, np.ndarray):
        return -0.5 * np.sum(x**2, axis=1) - x.shape[1] / 2 * math.log(2 * math.pi)
    return -0.5 * (x**2).sum(dim=1) - x.shape[1] / 2 * math.log(2 * math.pi)


class Velocity:
    """``module`` as flow_matching's velocity ``(x, t) -> v`` (t one scalar for the whole batch), counting
    its evaluations."""

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.nfe = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        if getattr(self.module, "time_varying", False):
            return self.module(x, t.to(x.dtype).expand(x.shape[0]))
        return self.module(x)


def _grid(time_grid, dtype: str) -> torch.Tensor:
    return torch.tensor(time_grid, dtype=TORCH_DTYPE[dtype])


def fm_sample(module, x: np.ndarray, dtype: str, time_grid, method: str, step_size=None, atol=1e-5, rtol=1e-5):
    """flow_matching's ODESolver.sample with return_intermediates: (trajectory [T, B, D] as float64 numpy, nfe)."""
    v = Velocity(module)
    xt = torch.from_numpy(np.asarray(x)).to(TORCH_DTYPE[dtype])
    with torch.no_grad():
        sol = ODESolver(v).sample(
            xt, step_size, method=method, atol=atol, rtol=rtol, time_grid=_grid(time_grid, dtype), return_intermediates=True
        )
    return sol.detach().to(torch.float64).numpy(), v.nfe


def fm_logprob(module, x: np.ndarray, dtype: str, time_grid, method: str, step_size=None, atol=1e-5, rtol=1e-5):
    """flow_matching's ODESolver.compute_likelihood with the exact divergence and a standard normal base:
    (logprob [B], trajectory [T, B, D], log_det [B], nfe), float64 numpy."""
    v = Velocity(module)
    xt = torch.from_numpy(np.asarray(x)).to(TORCH_DTYPE[dtype])
    sol, lp = ODESolver(v).compute_likelihood(
        xt, log_p0, step_size, method=method, atol=atol, rtol=rtol, time_grid=_grid(time_grid, dtype),
        return_intermediates=True, exact_divergence=True,
    )
    sol = sol.detach().to(torch.float64)
    lp = lp.detach().to(torch.float64)
    return lp.numpy(), sol.numpy(), (lp - log_p0(sol[-1])).numpy(), v.nfe


def tight_sample(module, x: np.ndarray, time_grid) -> np.ndarray:
    """The exact paths, for all practical purposes: the module in float64, dopri5 at atol = rtol = 1e-11."""
    import copy

    return fm_sample(copy.deepcopy(module).double(), x, "float64", time_grid, "dopri5", atol=1e-11, rtol=1e-11)[0]


def tight_logprob(module, x: np.ndarray, time_grid):
    """(logprob, trajectory, log_det) of the module in float64 by rk4 with 500 steps per unit time: within ~1e-5
    of the exact log_det on torchcfm's SELU MLP (whose kinks make a tight dopri5 take ~10⁴ steps), two orders
    below the 1e-5-tolerance solves' errors there."""
    import copy

    return fm_logprob(copy.deepcopy(module).double(), x, "float64", time_grid, "rk4", step_size=2e-3)[:3]


def solve(url: str, op: str, model, x: np.ndarray, dtype: str, **fields) -> dict:
    """One /v1/integrate or /v1/logprob request (x as nested lists, answer as base64 unless ``fields`` says
    otherwise), its answer decoded to float64 numpy."""
    body = {"model": model, "inputs": {"x": np.asarray(x, dtype=np.float64).tolist()}, **fields}
    body.setdefault("output_encoding", "base64")
    r = post(url, f"/v1/{op}", body)
    assert r.status_code == 200, describe(r)
    return decode_answer(r, dtype, body["output_encoding"])


def as_accurate(got, ref, exact, atol: float, rtol: float, what: str = "", factor: float = 4.0) -> None:
    """An adaptive solve (``got``) about as accurate as flow_matching's (``ref``), both against the exact
    solution: max|got − exact| ≤ factor·max|ref − exact| + 10·max(atol + rtol·|exact|).

    dopri5's tolerances bound each step's local error, not the global one: on torchcfm's SELU MLP (whose
    Jacobian jumps where a SELU input crosses 0) torchdiffeq's own global error is 10–40× the tolerance for
    x and 50–1000× for the log-determinant, and the server's is of the same size (sometimes smaller, sometimes
    larger: it lands its steps on the grid times where torchdiffeq steps past them and interpolates). This
    bound catches a wrong tableau, a missing error control or a wrong norm, which cost orders of magnitude."""
    got, ref, exact = (np.asarray(a, dtype=np.float64) for a in (got, ref, exact))
    assert got.shape == exact.shape == ref.shape, f"{what}: shapes {got.shape}, {ref.shape}, {exact.shape}"
    err, ref_err = float(np.max(np.abs(got - exact))), float(np.max(np.abs(ref - exact)))
    floor = 10 * float(np.max(atol + rtol * np.abs(exact)))
    assert err <= factor * ref_err + floor, (
        f"{what}: error {err:.3e} vs the exact solution, flow_matching's {ref_err:.3e} (allowed {factor:g}× that + {floor:.3e})"
    )


def bound(got: np.ndarray, want: np.ndarray, atol: float, rtol: float, factor: float = 10.0, what: str = "") -> None:
    """An adaptive solve's agreement with another one: |Δ| ≤ factor·(atol + rtol·|want|) elementwise."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != expected {want.shape}"
    allowed = factor * (atol + rtol * np.abs(want))
    excess = np.abs(got - want) / allowed
    worst = np.unravel_index(int(np.argmax(excess)), excess.shape)
    assert excess[worst] <= 1.0, (
        f"{what}: |Δ| = {abs(got[worst] - want[worst]):.3e} at {worst} > {factor:g}·(atol + rtol·|x|) = {allowed[worst]:.3e}"
    )
