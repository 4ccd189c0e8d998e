"""Fixtures for the protocol-adapter tests (Tesseract and UM-Bridge), run with the official
clients from PyPI against a live gradserve.

- `server`: the URL of one gradserve for the session, started by the shared test support
  (e2e/support/gradserve_testing.server.ServerProcess): a private copy of $GRADSERVE_BIN (or
  .build/release/gradserve) with its sibling `*.resources` bundles, under a neutral name, started with
  `serve --host 127.0.0.1 --port 0 --data-dir <tmp>` (the kernel picks the port when the server binds it;
  it is read back from the process); it is stopped with SIGTERM (by its own pid) at the end.
- `models`: the test models, registered with POST /v1/models, each with its PyTorch twin
  (float64 reference built from the very same weights):
    toy32 / toy64   ToyMLP: x [B, 784], t [B]; Linear(785, 64) → SELU → 2×[Linear(64, 64) → SELU]
                    → Linear(64, 784) (torchcfm's MLP(784, time_varying=True, w=64) with SELU; the
                    shared builder gradserve_testing.toymlp.toy_mlp)
    small32 / small64   no t: x [B, 6]; Linear(6, 16) → Tanh → Linear(16, 16) → SiLU → Linear(16, 4)
- `need(module)`: imports a client package or FAILS the test with a clear message (never skips).
- References (`ref_*`) are computed in float64 with torch.autograd.grad, torch.func.jvp and
  vmap(jacrev) from the same weights and the inputs as the model sees them (rounded to its dtype).

Any skip is turned into a failure: this suite must not pass by not running.
"""

from __future__ import annotations

import base64
import importlib
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from gradserve_testing.server import ServerProcess  # noqa: E402


try:
    import numpy as np
    import requests
    import torch
    import torch.func

    from gradserve_testing.toymlp import toy_mlp as shared_toy_mlp
except ImportError as e:  # a clear, loud message instead of a bare collection error
    raise ImportError(
        f"e2e/adapters needs numpy, requests and torch in the test venv ({sys.executable}): {e}. "
        "Run e2e/adapters/run_tests.sh, which installs what is missing into $GRADSERVE_VENV."
    ) from e

TOL = {"float32": 1e-5, "float64": 1e-10}
B = 3  # batch size of the tests

PIP_NAMES = {
    "tesseract_core": "tesseract-core[runtime]",
    "tesseract_jax": "tesseract-jax",
    "umbridge": "umbridge",
    "jax": "jax",
    "pydantic_core": "pydantic-core",
}


def need(module: str):
    """Import `module` or fail (not skip) the calling test with how to fix it."""
    try:
        return importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 (ImportError, or a broken install raising anything)
        top = module.split(".")[0]
        pytest.fail(
            f"cannot import {module!r} ({type(e).__name__}: {e}) with {sys.executable}. "
            f"Install it: `{sys.executable} -m pip install '{PIP_NAMES.get(top, top)}'` "
            "(e2e/adapters/run_tests.sh does this for $GRADSERVE_VENV).",
            pytrace=False,
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A skipped test is a failed test here: nothing may be skipped silently."""
    outcome = yield
    rep = outcome.get_result()
    if rep.skipped:
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.outcome = "failed"
        rep.longrepr = f"skipped tests count as failures in e2e/adapters: {reason}"


# --------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def server_process(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("gs-adapters") / "data"
    data_dir.mkdir()
    s = ServerProcess(data_dir).start()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def server(server_process) -> str:
    return server_process.url


@pytest.fixture(autouse=True)
def _server_still_alive(request):
    """After each test that used the server: it must still be running (a crash is a failure)."""
    yield
    if "server_process" in request.fixturenames or "server" in request.fixturenames or "models" in request.fixturenames:
        s = request.getfixturevalue("server_process")
        assert s.proc.poll() is None, f"gradserve died (exit {s.proc.returncode}): {s.log()}"


def describe(r: requests.Response) -> str:
    body = r.request.body or b""
    if isinstance(body, str):
        body = body.encode()
    return (
        f"\nREQUEST: {r.request.method} {r.request.url}\n  body: {body[:400]!r}"
        f"\nRESPONSE: {r.status_code} {dict(r.headers)}\n  body: {r.content[:1200]!r}"
    )


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------

ACT_OPS = {torch.nn.SELU: "selu", torch.nn.Tanh: "tanh", torch.nn.SiLU: "silu", torch.nn.GELU: "gelu"}


class Net(torch.nn.Module):
    """`net` (an nn.Sequential) on [x, t] (t appended as the last column) or on x."""

    def __init__(self, layers: list[torch.nn.Module], has_t: bool):
        super().__init__()
        self.net = torch.nn.Sequential(*layers)
        self.has_t = has_t

    def forward(self, x, t=None):
        if self.has_t:
            x = torch.cat([x, t.unsqueeze(-1)], dim=-1)
        return self.net(x)


def toy_mlp(dim: int = 784, w: int = 64, seed: int = 0) -> Net:
    """The ToyMLP (the shared builder's layers): Linear(dim+1, w) → SELU → 2×[Linear(w, w) → SELU] → Linear(w, dim), with t."""
    return Net(list(shared_toy_mlp(dim, w, seed=seed).net), has_t=True)


def small_mlp(seed: int = 1) -> Net:
    torch.manual_seed(seed)
    return Net([torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16), torch.nn.SiLU(),
                torch.nn.Linear(16, 4)], has_t=False)


def b64_tensor(a: torch.Tensor, dtype: str) -> dict:
    arr = a.detach().cpu().numpy().astype(dtype)
    return {"shape": list(arr.shape), "dtype": dtype, "encoding": "base64",
            "data": base64.b64encode(np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()).decode()}


def model_json(net: Net, dtype: str) -> dict:
    """gradserve's model format; weights by their state_dict names."""
    layers, weights = [], {}
    for i, m in enumerate(net.net):
        if isinstance(m, torch.nn.Linear):
            layers.append({"op": "linear", "weight": f"net.{i}.weight", "bias": f"net.{i}.bias"})
            weights[f"net.{i}.weight"] = b64_tensor(m.weight, dtype)
            weights[f"net.{i}.bias"] = b64_tensor(m.bias, dtype)
        else:
            layers.append({"op": ACT_OPS[type(m)]})
    return {"inputs": ["x", "t"] if net.has_t else ["x"], "dtype": dtype, "layers": layers, "weights": weights}


@dataclass
class Spec:
    key: str
    id: str
    dtype: str
    has_t: bool
    d: int
    d_out: int
    net: Net  # in the model dtype (what the server holds)
    ref: Net = field(repr=False)  # float64 copy of the same (rounded) weights, for the references

    @property
    def np_dtype(self):
        return np.dtype(self.dtype)

    def inputs(self, seed: int = 0, b: int = B) -> dict[str, np.ndarray]:
        """Random inputs in the model dtype: {"x": [b, D]} (+ {"t": [b]})."""
        rng = np.random.default_rng(seed)
        out = {"x": rng.standard_normal((b, self.d)).astype(self.dtype)}
        if self.has_t:
            out["t"] = rng.uniform(0, 1, size=(b,)).astype(self.dtype)
        return out

    def like_y(self, seed: int = 1, b: int = B) -> np.ndarray:
        return np.random.default_rng(seed).standard_normal((b, self.d_out)).astype(self.dtype)


def register(server: str, key: str, net: Net, dtype: str) -> Spec:
    r = requests.post(server + "/v1/models", json={"name": key, "model": model_json(net, dtype)}, timeout=60)
    assert r.status_code in (200, 201), describe(r)
    model_id = r.json()["id"]
    tdtype = torch.float32 if dtype == "float32" else torch.float64
    held = net.to(tdtype)
    ref = Net([type(m)() if not isinstance(m, torch.nn.Linear) else torch.nn.Linear(m.in_features, m.out_features)
               for m in net.net], net.has_t).to(torch.float64)
    ref.load_state_dict({k: v.to(torch.float64) for k, v in held.state_dict().items()})
    first = next(m for m in net.net if isinstance(m, torch.nn.Linear))
    last = [m for m in net.net if isinstance(m, torch.nn.Linear)][-1]
    d = first.in_features - (1 if net.has_t else 0)
    return Spec(key, model_id, dtype, net.has_t, d, last.out_features, held, ref)


@pytest.fixture(scope="session")
def models(server) -> dict[str, Spec]:
    out = {}
    for dtype in ("float32", "float64"):
        suffix = dtype[-2:]
        out[f"toy{suffix}"] = register(server, f"toy{suffix}", toy_mlp(), dtype)
        out[f"small{suffix}"] = register(server, f"small{suffix}", small_mlp(), dtype)
    return out


# --------------------------------------------------------------------------------------
# PyTorch references (float64, same weights) and comparison
# --------------------------------------------------------------------------------------


def t64(a) -> torch.Tensor:
    return torch.tensor(np.asarray(a, dtype=np.float64), dtype=torch.float64)


def _args(spec: Spec, inputs: dict):
    x = t64(inputs["x"])
    t = t64(inputs["t"]) if spec.has_t else None
    return x, t


def ref_forward(spec: Spec, inputs: dict) -> np.ndarray:
    with torch.no_grad():
        return spec.ref(*_args(spec, inputs)).numpy()


def ref_vjp(spec: Spec, inputs: dict, v) -> dict[str, np.ndarray]:
    """torch.autograd.grad(y, [x, t], grad_outputs=v): per-sample vᵀJ."""
    x, t = _args(spec, inputs)
    leaves = [x.requires_grad_()] + ([t.requires_grad_()] if t is not None else [])
    y = spec.ref(x, t)
    grads = torch.autograd.grad(y, leaves, grad_outputs=t64(v))
    return dict(zip(["x", "t"], (g.numpy() for g in grads)))


def ref_jvp(spec: Spec, inputs: dict, tangents: dict) -> np.ndarray:
    """torch.func.jvp of f(x, t) with the given tangents (missing = zero): J·u."""
    x, t = _args(spec, inputs)
    if spec.has_t:
        tx = t64(tangents["x"]) if "x" in tangents else torch.zeros_like(x)
        tt = t64(tangents["t"]) if "t" in tangents else torch.zeros_like(t)
        _, out = torch.func.jvp(lambda a, b: spec.ref(a, b), (x, t), (tx, tt))
    else:
        _, out = torch.func.jvp(lambda a: spec.ref(a), (x,), (t64(tangents["x"]),))
    return out.detach().numpy()


def ref_jacobian_per_sample(spec: Spec, inputs: dict) -> dict[str, np.ndarray]:
    """vmap(jacrev(f_single)): {"x": [B, D', D], "t": [B, D']}."""
    x, t = _args(spec, inputs)
    if spec.has_t:
        def single(xi, ti):
            return spec.ref(xi[None], ti[None])[0]

        jx, jt = torch.func.vmap(torch.func.jacrev(single, argnums=(0, 1)))(x, t)
        return {"x": jx.detach().numpy(), "t": jt.detach().numpy()}

    def single_x(xi):
        return spec.ref(xi[None])[0]

    return {"x": torch.func.vmap(torch.func.jacrev(single_x))(x).detach().numpy()}


def block_diagonal(per_sample: np.ndarray) -> np.ndarray:
    """[B, D', D] → [B, D', B, D] (or [B, D'] → [B, D', B]): Tesseract's (*y.shape, *x.shape),
    zero off the diagonal blocks."""
    b, r = per_sample.shape[:2]
    rest = per_sample.shape[2:]
    out = np.zeros((b, r, b, *rest), dtype=per_sample.dtype)
    for s in range(b):
        out[s, :, s] = per_sample[s]
    return out


def ref_jacobian_tesseract(spec: Spec, inputs: dict) -> dict[str, np.ndarray]:
    return {k: block_diagonal(v) for k, v in ref_jacobian_per_sample(spec, inputs).items()}


def assert_close(actual, expected, dtype: str, what: str = "") -> None:
    """Norm-relative: max|a − b| ≤ tol · max|b| (tol 1e-5 for float32, 1e-10 for float64)."""
    a = np.asarray(actual, dtype=np.float64)
    b = np.asarray(expected, dtype=np.float64)
    assert a.shape == b.shape, f"{what}: shape {a.shape} != expected {b.shape}"
    assert np.all(np.isfinite(a)), f"{what}: non-finite values"
    err = float(np.max(np.abs(a - b))) if a.size else 0.0
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    tol = TOL[dtype]
    assert err <= tol * max(scale, 1e-30), f"{what}: max|a-b| = {err:.3e} > {tol:g}·max|b| = {tol * scale:.3e}"
