#!/usr/bin/env python3
# One file on purpose, over the ~400-line guideline: a self-contained comparison (the runtime's
# tesseract_api.py template, both servers started, the cross-check, the alternating timing and the
# report), so it runs alone next to a Tesseract runtime and every number it prints traces to one place.
"""Side-by-side timing of the Tesseract SDK against (a) gradserve's /tesseract/<id> and (b) the
Tesseract runtime itself (`tesseract-runtime serve`, no Docker) serving the same ToyMLP in PyTorch.

ToyMLP (float32): x [B, 784], t [B]; Linear(785, 64) → SELU → 2×[Linear(64, 64) → SELU] →
Linear(64, 784), t appended as the last feature column; weights from torch.manual_seed(seed).
The same weights are registered in gradserve (POST /v1/models) and saved for the runtime's
`tesseract_api.py`, which this script writes to a temporary folder.

Both are called through `Tesseract.from_url(url).with_encoding(output_format="json+base64")`:
apply and vector_jacobian_product (wrt x and t) at B=256, jacobian (wrt x, [B, 784, B, 784])
at B=3. Results are checked against each other once, then each operation is timed with the two
servers called alternately (so drift hits both alike): median and p95 over --iterations calls,
after --warmup calls. Target: gradserve ≥ 4× faster (median) on each; the exit status is 1
when an operation misses it. A second table times the same requests without the SDK
(pre-encoded bodies, answers read but not decoded) and shows gradserve's Server-Timing, to tell
server time from the SDK's own encode/decode, which both sides pay alike.

    python bench/tesseract_compare.py [--iterations 50] [--warmup 5] [--json out.json]
                                      [--bin /abs/path/gradserve] [--gradserve-url URL]

Needs torch, numpy, requests and tesseract-core[runtime] in the running Python (the runtime is
started as `<this python's bin>/tesseract-runtime`). TESSERACT_OUTPUT_PATH goes to /dev/shm when
it exists (the runtime writes a run folder per request).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import requests
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "e2e" / "support"))
from gradserve_testing.server import ServerProcess  # noqa: E402
from gradserve_testing.toymlp import toy_mlp as shared_toy_mlp  # noqa: E402

D, W = 784, 64

TESSERACT_API = textwrap.dedent(
    '''
    # ToyMLP as a Tesseract (written by bench/tesseract_compare.py; adapted from the example in
    # /tmp/tesseract_example/tesseract_api.py). Weights from toymlp.npz beside this file: the
    # same ones registered in gradserve.
    #   y = net([x, t]),  net = Linear(D+1, W) → SELU → 2×[Linear(W, W) → SELU] → Linear(W, D)
    import os
    from typing import Any

    import numpy as np
    import torch
    from pydantic import BaseModel

    from tesseract_core.runtime import Array, Differentiable, Float32

    D = __D__
    W = __W__
    _here = os.path.dirname(os.path.abspath(__file__))
    net = torch.nn.Sequential(
        torch.nn.Linear(D + 1, W), torch.nn.SELU(),
        torch.nn.Linear(W, W), torch.nn.SELU(),
        torch.nn.Linear(W, W), torch.nn.SELU(),
        torch.nn.Linear(W, D),
    )
    with np.load(os.path.join(_here, "toymlp.npz")) as _w:
        net.load_state_dict({k: torch.from_numpy(_w[k]) for k in _w.files})
    net.eval()
    net.requires_grad_(False)


    class InputSchema(BaseModel):
        x: Differentiable[Array[(None, D), Float32]]
        t: Differentiable[Array[(None,), Float32]]


    class OutputSchema(BaseModel):
        y: Differentiable[Array[(None, D), Float32]]


    def _t(a: Any) -> torch.Tensor:
        # np.array(...) copies: validated arrays may be read-only views
        return torch.from_numpy(np.array(a, dtype=np.float32))


    def _np(x: torch.Tensor) -> np.ndarray:
        return x.detach().cpu().numpy()


    def _f(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return net(torch.cat([x, t[:, None]], dim=1))


    def _primals(inputs) -> dict[str, torch.Tensor]:
        return {"x": _t(inputs.x), "t": _t(inputs.t)}


    def _fn_of(paths, primals):
        """f of the selected inputs only (the others held fixed)."""
        def fn(*vals):
            p = dict(primals)
            p.update(zip(paths, vals))
            return _f(p["x"], p["t"])
        return fn


    def apply(inputs: InputSchema) -> OutputSchema:
        p = _primals(inputs)
        with torch.no_grad():
            return OutputSchema(y=_np(_f(p["x"], p["t"])))


    def abstract_eval(abstract_inputs):
        return {"y": {"shape": list(abstract_inputs.x.shape), "dtype": "float32"}}


    def vector_jacobian_product(inputs, vjp_inputs: set[str], vjp_outputs: set[str], cotangent_vector: dict[str, Any]):
        paths = tuple(sorted(vjp_inputs))
        p = _primals(inputs)
        _, vjp_fn = torch.func.vjp(_fn_of(paths, p), *(p[k] for k in paths))
        return {k: _np(g) for k, g in zip(paths, vjp_fn(_t(cotangent_vector["y"])))}


    def jacobian_vector_product(inputs, jvp_inputs: set[str], jvp_outputs: set[str], tangent_vector: dict[str, Any]):
        paths = tuple(sorted(jvp_inputs))
        p = _primals(inputs)
        _, out_t = torch.func.jvp(_fn_of(paths, p), tuple(p[k] for k in paths), tuple(_t(tangent_vector[k]) for k in paths))
        return {"y": _np(out_t)}


    def jacobian(inputs, jac_inputs: set[str], jac_outputs: set[str]):
        # (*y.shape, *in.shape): [B, D, B, D] for x, [B, D, B] for t (block-diagonal in the batch)
        paths = tuple(sorted(jac_inputs))
        p = _primals(inputs)
        jac = torch.func.jacrev(_fn_of(paths, p), argnums=tuple(range(len(paths))))(*(p[k] for k in paths))
        return {"y": {k: _np(j) for k, j in zip(paths, jac)}}
    '''
).replace("__D__", str(D)).replace("__W__", str(W))


# --------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------


def toy_mlp(seed: int) -> torch.nn.Sequential:
    """The shared ToyMLP's layers (state_dict names "0.weight" … "6.bias"), weights of torch.manual_seed(seed)."""
    return shared_toy_mlp(D, W, seed=seed).net


def b64(a: np.ndarray) -> dict:
    a = np.ascontiguousarray(a, dtype="<f4")
    return {"shape": list(a.shape), "dtype": "float32", "encoding": "base64", "data": base64.b64encode(a.tobytes()).decode()}


def gradserve_model(state: dict[str, np.ndarray]) -> dict:
    layers = []
    for i in range(7):
        if i % 2 == 0:
            layers.append({"op": "linear", "weight": f"{i}.weight", "bias": f"{i}.bias"})
        else:
            layers.append({"op": "selu"})
    return {"inputs": ["x", "t"], "dtype": "float32", "layers": layers, "weights": {k: b64(v) for k, v in state.items()}}


# --------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not up within {timeout}s:\n{log.read_text(errors='replace')[-3000:]}")


def stop(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # by pid, this process only
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def start_gradserve(binary: Path, work: Path) -> tuple[str, ServerProcess]:
    """gradserve through the shared test support: a private copy of the binary and its resource bundles,
    under a neutral name, on a port of its own."""
    if not binary.is_file():
        raise SystemExit(f"no gradserve binary at {binary} (build it, or pass --bin / set GRADSERVE_BIN)")
    data = work / "gs-data"
    data.mkdir()
    server = ServerProcess(data, binary=binary).start(timeout=30)
    return server.url, server


def start_runtime(api_dir: Path, out_dir: Path, work: Path) -> tuple[str, subprocess.Popen]:
    exe = Path(sys.executable).parent / "tesseract-runtime"
    if not exe.exists():
        found = shutil.which("tesseract-runtime")
        if not found:
            raise SystemExit("tesseract-runtime not found: pip install 'tesseract-core[runtime]'")
        exe = Path(found)
    port = free_port()
    log = work / "tesseract-runtime.log"
    env = dict(os.environ, TESSERACT_API_PATH=str(api_dir / "tesseract_api.py"), TESSERACT_OUTPUT_PATH=str(out_dir))
    with open(log, "wb") as f:
        proc = subprocess.Popen([str(exe), "serve", "--host", "127.0.0.1", "--port", str(port)], stdout=f, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/health", proc, log, 120)
    return url, proc


# --------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    k = (len(s) - 1) * q
    lo, hi = int(np.floor(k)), int(np.ceil(k))
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def stats(xs: list[float]) -> dict:
    return {"median_ms": statistics.median(xs), "p95_ms": percentile(xs, 0.95), "min_ms": min(xs)}


def wire(a: np.ndarray) -> dict:
    """The SDK's request encoding of an array (base64, C order, little-endian)."""
    a = np.ascontiguousarray(a, dtype="<f4")
    return {"shape": list(a.shape), "dtype": "float32", "data": {"buffer": base64.b64encode(a.tobytes()).decode(), "encoding": "base64"}}


def wire_inputs(inp: dict) -> dict:
    return {k: wire(v) for k, v in inp.items()}


def close(a, b, tol: float = 1e-5) -> float:
    """Norm-relative difference max|a-b| / max|b|."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    assert a.shape == b.shape, f"shapes differ: {a.shape} vs {b.shape}"
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", "-n", type=int, default=50, help="timed calls per operation and server (default 50)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed calls first (default 5)")
    ap.add_argument("--batch", type=int, default=256, help="B for apply and VJP (default 256)")
    ap.add_argument("--jac-batch", type=int, default=3, help="B for the Jacobian (default 3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bin", default=os.environ.get("GRADSERVE_BIN", str(REPO / ".build" / "release" / "gradserve")),
                    help="gradserve binary (default $GRADSERVE_BIN or .build/release/gradserve)")
    ap.add_argument("--gradserve-url", help="use this running gradserve instead of starting one")
    ap.add_argument("--target", type=float, default=4.0, help="speedup target (default 4)")
    ap.add_argument("--json", help="write the numbers to this file")
    args = ap.parse_args()

    from tesseract_core import Tesseract

    net = toy_mlp(args.seed)
    state = {k: v.detach().numpy().astype(np.float32) for k, v in net.state_dict().items()}

    work = Path(tempfile.mkdtemp(prefix="gs-tess-bench-"))
    shm = Path("/dev/shm")
    out_dir = Path(tempfile.mkdtemp(prefix="gs-tess-out-", dir=shm if shm.is_dir() and os.access(shm, os.W_OK) else None))
    api_dir = work / "api"
    api_dir.mkdir()
    (api_dir / "tesseract_api.py").write_text(TESSERACT_API)
    np.savez(api_dir / "toymlp.npz", **state)

    gs_proc = rt_proc = None
    try:
        if args.gradserve_url:
            gs_url = args.gradserve_url.rstrip("/")
        else:
            gs_url, gs_proc = start_gradserve(Path(args.bin).resolve(), work)
        rt_url, rt_proc = start_runtime(api_dir, out_dir, work)

        r = requests.post(gs_url + "/v1/models", json={"name": "toymlp-bench", "model": gradserve_model(state)}, timeout=60)
        r.raise_for_status()
        model_id = r.json()["id"]
        info = requests.get(gs_url + "/v1/info", timeout=10).json()

        gs = Tesseract.from_url(f"{gs_url}/tesseract/{model_id}", timeout=600).with_encoding(output_format="json+base64")
        rt = Tesseract.from_url(rt_url, timeout=600).with_encoding(output_format="json+base64")

        rng = np.random.default_rng(args.seed)

        def inputs(b):
            return {"x": rng.standard_normal((b, D)).astype(np.float32), "t": rng.uniform(0, 1, b).astype(np.float32)}

        big, small = inputs(args.batch), inputs(args.jac_batch)
        cot = rng.standard_normal((args.batch, D)).astype(np.float32)
        ops = {
            "apply": (args.batch, lambda c: c.apply(big)["y"]),
            "vjp": (args.batch, lambda c: c.vector_jacobian_product(big, ["x", "t"], ["y"], {"y": cot})),
            "jacobian": (args.jac_batch, lambda c: c.jacobian(small, ["x"], ["y"])["y"]["x"]),
        }
        # The same requests without the SDK: pre-encoded bodies, answers read but not decoded. This
        # is server + transport only; the SDK's own encode/decode is the difference to the above.
        raw_bodies = {
            "apply": ("apply", {"inputs": wire_inputs(big)}),
            "vjp": ("vector_jacobian_product", {"inputs": wire_inputs(big), "vjp_inputs": ["x", "t"], "vjp_outputs": ["y"],
                                                "cotangent_vector": {"y": wire(cot)}}),
            "jacobian": ("jacobian", {"inputs": wire_inputs(small), "jac_inputs": ["x"], "jac_outputs": ["y"]}),
        }
        raw_bases = {"gradserve": f"{gs_url}/tesseract/{model_id}", "runtime": rt_url}
        session = requests.Session()
        raw_headers = {"Content-Type": "application/json", "Accept": "application/json+base64"}
        server_timing: dict[str, list[float]] = {}

        def raw_call(label: str, name: str) -> None:
            endpoint, body = raw_bodies[name]
            r = session.post(f"{raw_bases[label]}/{endpoint}", data=body, headers=raw_headers, timeout=600)
            if r.status_code != 200:
                raise SystemExit(f"raw {label} {endpoint}: {r.status_code} {r.text[:500]}")
            if label == "gradserve":
                for part in r.headers.get("Server-Timing", "").split(","):
                    if part.strip().startswith("compute;dur="):
                        server_timing.setdefault(name, []).append(float(part.split("=", 1)[1]))

        raw_bodies = {k: (e, json.dumps(b).encode()) for k, (e, b) in raw_bodies.items()}

        # Correctness, once: the two servers against each other (and against local PyTorch).
        with torch.no_grad():
            local = net(torch.cat([torch.from_numpy(big["x"]), torch.from_numpy(big["t"])[:, None]], 1)).numpy()
        checks = {}
        for name, (_, call) in ops.items():
            a, b = call(gs), call(rt)
            if name == "vjp":
                err = max(close(a[k], b[k]) for k in ("x", "t"))
            else:
                err = close(a, b)
            checks[name] = err
            if err > 1e-5:
                raise SystemExit(f"{name}: gradserve and the Tesseract runtime disagree: max|a-b|/max|b| = {err:.3e}")
        checks["apply_vs_local_torch"] = close(gs.apply(big)["y"], local)
        if checks["apply_vs_local_torch"] > 1e-5:
            raise SystemExit(f"apply: gradserve and local PyTorch disagree: {checks['apply_vs_local_torch']:.3e}")

        results = []
        for name, (b, call) in ops.items():
            for _ in range(args.warmup):
                call(gs)
                call(rt)
                raw_call("gradserve", name)
                raw_call("runtime", name)
            server_timing.pop(name, None)
            times = {"gradserve": [], "runtime": []}
            for _ in range(args.iterations):  # alternate, so drift hits both alike
                for label, c in (("gradserve", gs), ("runtime", rt)):
                    t0 = time.perf_counter()
                    call(c)
                    times[label].append((time.perf_counter() - t0) * 1000)
            raw = {"gradserve": [], "runtime": []}
            for _ in range(args.iterations):
                for label in ("gradserve", "runtime"):
                    t0 = time.perf_counter()
                    raw_call(label, name)
                    raw[label].append((time.perf_counter() - t0) * 1000)
            row = {"op": name, "batch": b}
            for label, xs in times.items():
                row[label] = stats(xs)
            row["speedup_median"] = row["runtime"]["median_ms"] / row["gradserve"]["median_ms"]
            row["speedup_p95"] = row["runtime"]["p95_ms"] / row["gradserve"]["p95_ms"]
            row["meets_target"] = row["speedup_median"] >= args.target
            row["raw_http"] = {label: stats(xs) for label, xs in raw.items()}
            row["raw_http"]["speedup_median"] = row["raw_http"]["runtime"]["median_ms"] / row["raw_http"]["gradserve"]["median_ms"]
            row["gradserve_server_timing_compute_ms"] = stats(server_timing.get(name, [float("nan")]))
            results.append(row)

        machine = {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "gradserve_info": info,
        }
        try:
            import tesseract_core

            machine["tesseract_core"] = tesseract_core.__version__
        except Exception:  # noqa: BLE001
            pass

        print(f"\nTesseract SDK (json+base64) → gradserve /tesseract/<id> vs tesseract-runtime (PyTorch), ToyMLP float32, "
              f"{args.iterations} iterations after {args.warmup} warm-up, {os.cpu_count()} CPUs\n")
        print("| operation | B | gradserve median ms | gradserve p95 ms | runtime median ms | runtime p95 ms | speedup (median) | speedup (p95) | ≥ %g× |" % args.target)
        print("|---|---:|---:|---:|---:|---:|---:|---:|:---:|")
        for r_ in results:
            g, t_ = r_["gradserve"], r_["runtime"]
            print(f"| {r_['op']} | {r_['batch']} | {g['median_ms']:.2f} | {g['p95_ms']:.2f} | {t_['median_ms']:.2f} | {t_['p95_ms']:.2f} "
                  f"| {r_['speedup_median']:.1f}× | {r_['speedup_p95']:.1f}× | {'yes' if r_['meets_target'] else 'NO'} |")
        print("\nThe same requests without the SDK (pre-encoded JSON bodies, answers read but not decoded: "
              "server + loopback transport only); gradserve's own Server-Timing `compute` (parse + compute + encode):\n")
        print("| operation | B | gradserve median ms | runtime median ms | speedup (median) | gradserve Server-Timing compute median ms |")
        print("|---|---:|---:|---:|---:|---:|")
        for r_ in results:
            raw_ = r_["raw_http"]
            print(f"| {r_['op']} | {r_['batch']} | {raw_['gradserve']['median_ms']:.2f} | {raw_['runtime']['median_ms']:.2f} "
                  f"| {raw_['speedup_median']:.1f}× | {r_['gradserve_server_timing_compute_ms']['median_ms']:.2f} |")
        print("\ncorrectness (max|gradserve − runtime| / max|runtime|): " + ", ".join(f"{k} {v:.1e}" for k, v in checks.items()))

        if args.json:
            Path(args.json).write_text(json.dumps({
                "benchmark": "tesseract_compare", "model": "ToyMLP float32 (785→64→64→64→784, SELU)",
                "encoding": "json+base64", "iterations": args.iterations, "warmup": args.warmup,
                "target_speedup": args.target, "machine": machine, "correctness": checks, "results": results,
            }, indent=2))
            print(f"wrote {args.json}")
        return 0 if all(r_["meets_target"] for r_ in results) else 1
    finally:
        stop(rt_proc)
        if gs_proc is not None:
            gs_proc.stop()
        shutil.rmtree(out_dir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
