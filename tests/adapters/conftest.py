"""Fixtures for the protocol-adapter tests (Tesseract and UM-Bridge), run with the official
clients from PyPI against a live gradserve.

- `server`: the URL of one gradserve for the session. The binary ($GRADSERVE_BIN, absolute, or
  .build/release/gradserve) is copied, with its sibling `*.resources` bundles, into a temporary
  folder under a neutral name and started with `serve --host 127.0.0.1 --port 0 --data-dir <tmp>`
  (the kernel picks the port when the server binds it; the fixture reads it back from the process);
  it is stopped with SIGTERM (by its own pid) at the end.
- `models`: the test models, registered with POST /v1/models, each with its PyTorch twin
  (float64 reference built from the very same weights):
    toy32 / toy64   ToyMLP: x [B, 784], t [B]; Linear(785, 64) → SELU → 2×[Linear(64, 64) → SELU]
                    → Linear(64, 784) (torchcfm's MLP(784, time_varying=True, w=64) with SELU)
    small32 / small64   no t: x [B, 6]; Linear(6, 16) → Tanh → Linear(16, 16) → SiLU → Linear(16, 4)
- `need(module)`: imports a client package or FAILS the test with a clear message (never skips).
- References (`ref_*`) are computed in float64 with torch.autograd.grad, torch.func.jvp and
  vmap(jacrev) from the same weights and the inputs as the model sees them (rounded to its dtype).

Any skip is turned into a failure: this suite must not pass by not running.
"""

from __future__ import annotations

import base64
import importlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# One port reader for every suite (tests/python/gs_ports.py, standard library only).
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "python"))
from gs_ports import port_from_log, port_from_proc  # noqa: E402


try:
    import numpy as np
    import requests
    import torch
    import torch.func
except ImportError as e:  # a clear, loud message instead of a bare collection error
    raise ImportError(
        f"tests/adapters needs numpy, requests and torch in the test venv ({sys.executable}): {e}. "
        "Run tests/adapters/run_tests.sh, which installs what is missing into $GRADSERVE_VENV."
    ) from e

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BIN = REPO / ".build" / "release" / "gradserve"
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
            "(tests/adapters/run_tests.sh does this for $GRADSERVE_VENV).",
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
        rep.longrepr = f"skipped tests count as failures in tests/adapters: {reason}"


# --------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------


def source_binary() -> Path:
    env = os.environ.get("GRADSERVE_BIN")
    if env:
        p = Path(env)
        if not p.is_absolute():
            raise RuntimeError(f"GRADSERVE_BIN must be an absolute path, got {env!r}")
        return p
    return DEFAULT_BIN


def private_copy() -> tuple[Path, Path]:
    """Copies the binary and its sibling resource bundles to a fresh folder under a neutral name
    (the owner may rebuild the original, and other sessions' cleanups must not hit ours).
    Returns (binary, folder)."""
    src = source_binary()
    if not src.is_file():
        raise RuntimeError(f"no gradserve binary at {src}: build it (swift build -c release) or set GRADSERVE_BIN")
    folder = Path(tempfile.mkdtemp(prefix="gs-adapters-bin-"))
    dst = folder / "gs-adapters-under-test"
    shutil.copy2(src, dst)
    for bundle in list(src.parent.glob("*.resources")) + list(src.parent.glob("*.bundle")):
        if bundle.is_dir():
            shutil.copytree(bundle, folder / bundle.name, dirs_exist_ok=True)
    return dst, folder


START_TIMEOUT = 60.0  # seconds for the server to listen and answer /healthz (a loaded 2-core machine is slow)
@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""


def start_server(binary: Path, data_dir: Path, timeout: float = START_TIMEOUT) -> Server:
    """Starts the server on --port 0 and waits (up to `timeout`) for its port and a 200 from /healthz.
    The port is read from this very process (its log line, else /proc), so a server of another test run
    can never be mistaken for it, and no probed port can be taken between probe and bind."""
    log_path = data_dir.parent / "gs-adapters-server.log"
    env = dict(os.environ)
    env.pop("GRADSERVE_API_KEY", None)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(binary), "serve", "--host", "127.0.0.1", "--port", "0", "--data-dir", str(data_dir)],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )
    s = Server("", proc, log_path)
    deadline = time.monotonic() + timeout
    port = None
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {s.log()}")
        if port is None:
            port = port_from_log(log_path) or port_from_proc(proc.pid)
            if port:
                s.url = f"http://127.0.0.1:{port}"
        if port is not None:
            try:
                if requests.get(s.url + "/healthz", timeout=10).status_code == 200:
                    return s
            except requests.RequestException:
                pass
        if time.monotonic() > deadline:
            stop_server(s)
            raise RuntimeError(f"server not {'healthy' if port else 'listening'} within {timeout}s: {s.log()}")
        time.sleep(0.05)


def stop_server(s: Server) -> None:
    if s.proc.poll() is None:
        s.proc.send_signal(signal.SIGTERM)  # this process only, by its pid
        try:
            s.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            s.proc.kill()
            s.proc.wait(timeout=5)


@pytest.fixture(scope="session")
def server_process(tmp_path_factory):
    binary, folder = private_copy()
    data_dir = tmp_path_factory.mktemp("gs-adapters") / "data"
    data_dir.mkdir()
    s = start_server(binary, data_dir)
    yield s
    stop_server(s)
    shutil.rmtree(folder, ignore_errors=True)


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
    """The ToyMLP: Linear(dim+1, w) → SELU → 2×[Linear(w, w) → SELU] → Linear(w, dim), with t."""
    torch.manual_seed(seed)
    return Net([torch.nn.Linear(dim + 1, w), torch.nn.SELU(), torch.nn.Linear(w, w), torch.nn.SELU(),
                torch.nn.Linear(w, w), torch.nn.SELU(), torch.nn.Linear(w, dim)], has_t=True)


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
