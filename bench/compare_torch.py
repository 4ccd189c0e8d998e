#!/usr/bin/env python3
# One file on purpose, over the ~400-line guideline: one self-contained benchmark. It re-runs this
# same file as its worker process (--_worker: the PyTorch, JAX and numpy workloads under the thread
# settings), so the workloads, the gradserve side and the report stay together, it runs alone, and
# its numbers trace to one place.
"""Side-by-side timing: gradserve vs PyTorch (and JAX jit, and numpy for the seed GEMM).

    python bench/compare_torch.py                         # threads 1 and 2, gradserve at .build/release/gradserve
    python bench/compare_torch.py --threads 1 --iterations 20 --seed-iterations 50
    python bench/compare_torch.py --no-gradserve          # only the PyTorch / JAX / numpy half
    python bench/compare_torch.py --json results.json     # also write machine-readable results ("--json" alone: stdout)

For every thread count T the script
  1. runs `<gradserve> bench --json --threads T --iterations N` and reads its JSON report, and
  2. runs the same workloads in a fresh Python worker process (so that the thread settings of
     torch, XLA and numpy's OpenBLAS take effect before those libraries load): torch.set_num_threads(T),
     OMP/MKL/OPENBLAS_NUM_THREADS=T, XLA_FLAGS intra-op parallelism T, and (with --pin, the default)
     CPU affinity restricted to T cores for the worker and for gradserve alike.
It prints median milliseconds per iteration and the ratios torch/gradserve and jax/gradserve
(> 1 means gradserve is faster).

Workloads (ToyMLP = float32, x [B, 784], t [B], Linear(785,64) -> SELU -> 2x[Linear(64,64) -> SELU] -> Linear(64,784),
t appended as the last input column):
  seed_linear                      nn.Linear(1000,1000) on x [1000,1000] f32 under no_grad; numpy x @ W.T + b
  toymlp_forward_b256              forward, no_grad
  toymlp_vjp_b256                  forward + torch.autograd.grad(y, x, grad_outputs=v)
  toymlp_jvp_b256                  torch.func.jvp wrt x (t tangent zero)
  toymlp_jacobian_{reverse,forward,auto}_b{3,16}
                                   vmap(jacrev(f_single)) / vmap(jacfwd(f_single)); auto = reverse (D' = D)
  toymlp_divergence_exact_b16      vmap(jacrev) + trace per sample
  toymlp_divergence_hutchinson_b16 16 Rademacher probes, vmap over the VJP (torch) / JVP (JAX)
  toymlp_jacobian_rowloop_b3       Python loop of autograd.grad over every (sample, output) pair,
                                   re-running the forward each time (B*D' = 2352 passes)

OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are passed through unchanged and printed in the header.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e" / "support"))
from gradserve_testing.report import cpu_name, write_json_text  # noqa: E402

SEED_FLOPS = 2.0 * 1000 * 1000 * 1000 + 1000 * 1000  # GEMM + bias add
D, WIDTH = 784, 64

WORKLOADS = [
    "seed_linear",
    "toymlp_forward_b256",
    "toymlp_vjp_b256",
    "toymlp_jvp_b256",
    "toymlp_jacobian_reverse_b3",
    "toymlp_jacobian_forward_b3",
    "toymlp_jacobian_auto_b3",
    "toymlp_jacobian_reverse_b16",
    "toymlp_jacobian_forward_b16",
    "toymlp_jacobian_auto_b16",
    "toymlp_divergence_exact_b16",
    "toymlp_divergence_hutchinson_b16",
    "toymlp_jacobian_rowloop_b3",
]
ENV_SHOWN = ["OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
             "MKL_NUM_THREADS", "XLA_FLAGS"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ==========================================================================
# timing helpers (worker side)
# ==========================================================================

def stats(times_s: list[float], flops: float | None = None) -> dict[str, Any]:
    ms = sorted(t * 1e3 for t in times_s)
    med = statistics.median(ms)
    p95 = ms[min(len(ms) - 1, max(0, int(round(0.95 * (len(ms) - 1)))))]
    out = {"iterations": len(ms), "total_s": sum(times_s), "min_ms": ms[0], "median_ms": med, "p95_ms": p95}
    out["gflops"] = (flops / (med * 1e-3) / 1e9) if flops else None
    return out


def time_it(fn: Callable[[], Any], sync: Callable[[Any], Any], iterations: int, warmup: int,
            max_seconds: float, flops: float | None = None) -> dict[str, Any]:
    for _ in range(warmup):
        sync(fn())
    times = []
    start = time.perf_counter()
    for i in range(iterations):
        t0 = time.perf_counter()
        sync(fn())
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > max_seconds and i >= 2:
            break
    return stats(times, flops)


# ==========================================================================
# torch workloads
# ==========================================================================

def torch_workloads(T: int, rng_seed: int = 0):
    import torch

    from gradserve_testing.toymlp import toy_mlp

    torch.set_num_threads(T)
    nn = torch.nn

    net = toy_mlp(D, WIDTH, seed=rng_seed).net  # torch.manual_seed(rng_seed), then the ToyMLP's layers
    for p in net.parameters():
        p.requires_grad_(False)

    def f(x, t):
        return net(torch.cat([x, t.unsqueeze(-1)], dim=-1))

    def f_single(x, t):  # x [D], t []
        return net(torch.cat([x, t.reshape(1)]))

    def inputs(B):
        return torch.randn(B, D), torch.rand(B)

    W: dict[str, tuple[Callable[[], Any], float | None]] = {}

    # seed: nn.Linear(1000, 1000) on x [1000, 1000]
    lin = nn.Linear(1000, 1000)
    xs = torch.randn(1000, 1000)

    def seed():
        with torch.no_grad():
            return lin(xs)
    W["seed_linear"] = (seed, SEED_FLOPS)

    x256, t256 = inputs(256)
    v256 = torch.randn(256, D)
    u256 = torch.randn(256, D)

    def fwd():
        with torch.no_grad():
            return f(x256, t256)
    W["toymlp_forward_b256"] = (fwd, None)

    def vjp():
        xr = x256.detach().requires_grad_(True)
        y = f(xr, t256)
        return torch.autograd.grad(y, xr, grad_outputs=v256)[0]
    W["toymlp_vjp_b256"] = (vjp, None)

    def jvp():
        return torch.func.jvp(lambda xx: f(xx, t256), (x256,), (u256,))[1]
    W["toymlp_jvp_b256"] = (jvp, None)

    jrev = torch.func.vmap(torch.func.jacrev(f_single, argnums=0))
    jfwd = torch.func.vmap(torch.func.jacfwd(f_single, argnums=0))
    for B in (3, 16):
        xb, tb = inputs(B)
        W[f"toymlp_jacobian_reverse_b{B}"] = ((lambda xb=xb, tb=tb: jrev(xb, tb)), None)
        W[f"toymlp_jacobian_forward_b{B}"] = ((lambda xb=xb, tb=tb: jfwd(xb, tb)), None)
        W[f"toymlp_jacobian_auto_b{B}"] = ((lambda xb=xb, tb=tb: jrev(xb, tb)), None)  # D' = D: reverse

    x16, t16 = inputs(16)

    def div_exact():
        return torch.diagonal(jrev(x16, t16), dim1=1, dim2=2).sum(-1)
    W["toymlp_divergence_exact_b16"] = (div_exact, None)

    gen = torch.Generator().manual_seed(0)

    def div_hutch(probes=16):
        z = torch.randint(0, 2, (probes, 16, D), generator=gen).to(torch.float32).mul_(2).sub_(1)
        _, vjp_fn = torch.func.vjp(lambda xx: f(xx, t16), x16)
        zj = torch.func.vmap(vjp_fn)(z)[0]        # [P, B, D]  zᵀJ
        return (zj * z).sum(-1).mean(0)           # [B]
    W["toymlp_divergence_hutchinson_b16"] = (div_hutch, None)

    x3, t3 = inputs(3)

    def rowloop():
        J = torch.empty(3, D, D)
        for b in range(3):
            for i in range(D):
                xr = x3.detach().requires_grad_(True)
                y = f(xr, t3)
                J[b, i] = torch.autograd.grad(y[b, i], xr)[0][b]
        return J
    W["toymlp_jacobian_rowloop_b3"] = (rowloop, None)

    data = {"net": {k: v.numpy().copy() for k, v in net.state_dict().items()},
            "lin": {k: v.numpy().copy() for k, v in lin.state_dict().items()},
            "xs": xs.numpy(), "x256": x256.numpy(), "t256": t256.numpy(), "v256": v256.numpy(),
            "u256": u256.numpy(), "x3": x3.numpy(), "t3": t3.numpy(), "x16": x16.numpy(), "t16": t16.numpy()}
    refs = {"vjp_b256": vjp().numpy(), "jvp_b256": jvp().numpy(), "jac_b3": jrev(x3, t3).numpy(),
            "jac_fwd_b3": jfwd(x3, t3).numpy(), "div_b16": div_exact().numpy(), "seed": seed().numpy()}
    return W, data, refs


# ==========================================================================
# numpy seed
# ==========================================================================

def numpy_seed(data):
    import numpy as np
    W = data["lin"]["weight"]
    b = data["lin"]["bias"]
    x = data["xs"]
    WT = np.ascontiguousarray(W.T)

    def seed():
        return x @ W.T + b
    return seed, WT


# ==========================================================================
# JAX workloads
# ==========================================================================

def jax_workloads(data):
    import jax
    import jax.numpy as jnp
    import numpy as np

    net = data["net"]
    params = [(jnp.asarray(net[f"{i}.weight"]), jnp.asarray(net[f"{i}.bias"])) for i in (0, 2, 4, 6)]

    def mlp(params, h):
        for j, (w, b) in enumerate(params):
            h = h @ w.T + b
            if j < len(params) - 1:
                h = jax.nn.selu(h)
        return h

    def f(params, x, t):
        return mlp(params, jnp.concatenate([x, t[..., None]], axis=-1))

    def f_single(params, x, t):
        return mlp(params, jnp.concatenate([x, t.reshape(1)]))

    J = {k: jnp.asarray(v) for k, v in data.items() if isinstance(v, np.ndarray)}
    lw, lb = jnp.asarray(data["lin"]["weight"]), jnp.asarray(data["lin"]["bias"])

    seed_j = jax.jit(lambda x, w, b: x @ w.T + b)
    fwd_j = jax.jit(f)
    vjp_j = jax.jit(lambda p, x, t, v: jax.vjp(lambda xx: f(p, xx, t), x)[1](v)[0])
    jvp_j = jax.jit(lambda p, x, t, u: jax.jvp(lambda xx: f(p, xx, t), (x,), (u,))[1])
    jrev_j = jax.jit(jax.vmap(jax.jacrev(f_single, argnums=1), in_axes=(None, 0, 0)))
    jfwd_j = jax.jit(jax.vmap(jax.jacfwd(f_single, argnums=1), in_axes=(None, 0, 0)))
    div_j = jax.jit(lambda p, x, t: jnp.trace(
        jax.vmap(jax.jacrev(f_single, argnums=1), in_axes=(None, 0, 0))(p, x, t), axis1=1, axis2=2))

    def hutch(p, x, t, key, probes=16):
        z = jax.random.rademacher(key, (probes,) + x.shape, dtype=x.dtype)
        jz = jax.vmap(lambda zz: jax.jvp(lambda xx: f(p, xx, t), (x,), (zz,))[1])(z)
        return jnp.mean(jnp.sum(jz * z, axis=-1), axis=0)
    hutch_j = jax.jit(hutch)
    row_j = jax.jit(lambda p, x, t, b, i: jax.grad(lambda xx: f(p, xx, t)[b, i])(x)[b])

    key = jax.random.PRNGKey(0)
    W: dict[str, tuple[Callable[[], Any], float | None]] = {
        "seed_linear": (lambda: seed_j(J["xs"], lw, lb), SEED_FLOPS),
        "toymlp_forward_b256": (lambda: fwd_j(params, J["x256"], J["t256"]), None),
        "toymlp_vjp_b256": (lambda: vjp_j(params, J["x256"], J["t256"], J["v256"]), None),
        "toymlp_jvp_b256": (lambda: jvp_j(params, J["x256"], J["t256"], J["u256"]), None),
        "toymlp_divergence_exact_b16": (lambda: div_j(params, J["x16"], J["t16"]), None),
        "toymlp_divergence_hutchinson_b16": (lambda: hutch_j(params, J["x16"], J["t16"], key), None),
    }
    jauto_j = jax.jit(jax.vmap(jax.jacobian(f_single, argnums=1), in_axes=(None, 0, 0)))  # jacobian = jacrev
    for B in (3, 16):
        xb, tb = J[f"x{B}"], J[f"t{B}"]
        W[f"toymlp_jacobian_reverse_b{B}"] = ((lambda xb=xb, tb=tb: jrev_j(params, xb, tb)), None)
        W[f"toymlp_jacobian_forward_b{B}"] = ((lambda xb=xb, tb=tb: jfwd_j(params, xb, tb)), None)
        W[f"toymlp_jacobian_auto_b{B}"] = ((lambda xb=xb, tb=tb: jauto_j(params, xb, tb)), None)

    def rowloop():
        rows = [row_j(params, J["x3"], J["t3"], b, i) for b in range(3) for i in range(D)]
        return jnp.stack(rows).reshape(3, D, D)
    W["toymlp_jacobian_rowloop_b3"] = (rowloop, None)

    refs = {"vjp_b256": np.asarray(W["toymlp_vjp_b256"][0]()), "jvp_b256": np.asarray(W["toymlp_jvp_b256"][0]()),
            "jac_b3": np.asarray(jrev_j(params, J["x3"], J["t3"])),
            "jac_fwd_b3": np.asarray(jfwd_j(params, J["x3"], J["t3"])),
            "div_b16": np.asarray(div_j(params, J["x16"], J["t16"])),
            "seed": np.asarray(seed_j(J["xs"], lw, lb))}
    return W, refs


def agree(a, b) -> float:
    import numpy as np
    return float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-30))


# ==========================================================================
# worker: one thread count, one process
# ==========================================================================

def worker(args) -> int:
    T = args.worker
    it, warm, max_s = args.iterations, args.warmup, args.max_seconds
    res: dict[str, Any] = {"threads": T, "torch": {}, "jax": {}, "numpy": {}, "info": {}, "checks": {}}
    info = res["info"]
    try:
        info["affinity"] = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        pass

    import numpy as np
    import torch
    info["torch"] = torch.__version__
    info["numpy"] = np.__version__
    try:
        cfg = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info["numpy_blas"] = f"{cfg.get('name')} {cfg.get('version')}"
    except Exception:  # noqa: BLE001
        info["numpy_blas"] = "unknown"
    blas = "MKL" if torch.backends.mkl.is_available() else "unknown"
    info["torch_blas"] = blas
    info["torch_threads"] = None

    only = set(args.only) if args.only else None

    def wanted(name):
        return only is None or name in only

    def iters_for(name):
        if name == "seed_linear":
            return args.seed_iterations, min(warm, 3)
        if name.endswith("rowloop_b3"):
            return args.rowloop_iterations, 1
        return it, warm

    W, data, trefs = torch_workloads(T)
    info["torch_threads"] = torch.get_num_threads()
    for name in WORKLOADS:
        if not wanted(name) or name not in W:
            continue
        fn, flops = W[name]
        n, w = iters_for(name)
        log(f"  [T={T}] torch {name} ({n} it)")
        res["torch"][name] = time_it(fn, lambda r: r, n, w, max_s, flops)

    if wanted("seed_linear") and not args.no_numpy:
        seed_np, _ = numpy_seed(data)
        n, w = iters_for("seed_linear")
        log(f"  [T={T}] numpy seed_linear ({n} it)")
        res["numpy"]["seed_linear"] = time_it(seed_np, lambda r: r, n, w, max_s, SEED_FLOPS)
        res["checks"]["numpy_vs_torch_seed"] = agree(seed_np(), trefs["seed"])

    if args.no_jax:
        info["jax"] = "disabled (--no-jax)"
    else:
        try:
            import jax
            info["jax"] = jax.__version__
            info["jax_devices"] = [str(d) for d in jax.devices()]
        except Exception as e:  # noqa: BLE001
            info["jax"] = f"not available ({type(e).__name__}: {e})"
        else:
            try:
                JW, jrefs = jax_workloads(data)
                for k in ("vjp_b256", "jvp_b256", "jac_b3", "jac_fwd_b3", "div_b16", "seed"):
                    res["checks"][f"jax_vs_torch_{k}"] = agree(jrefs[k], trefs[k])
                for name in WORKLOADS:
                    if not wanted(name) or name not in JW:
                        continue
                    fn, flops = JW[name]
                    n, w = iters_for(name)
                    w = max(w, 1)  # first call compiles
                    log(f"  [T={T}] jax {name} ({n} it)")
                    res["jax"][name] = time_it(fn, lambda r: jax.block_until_ready(r), n, w, max_s, flops)
            except Exception as e:  # noqa: BLE001
                info["jax_error"] = f"{type(e).__name__}: {e}"
                log(f"  jax failed: {info['jax_error']}")

    print("@@RESULT@@" + json.dumps(res), flush=True)
    return 0


def run_worker(T: int, args, pin: list[int] | None) -> dict[str, Any]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(T)
    xla = env.get("XLA_FLAGS", "")
    xla_extra = f"--xla_cpu_multi_thread_eigen={'true' if T > 1 else 'false'} intra_op_parallelism_threads={T}"
    env["XLA_FLAGS"] = (xla + " " + xla_extra).strip()
    env.setdefault("JAX_PLATFORMS", "cpu")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cmd = [sys.executable, os.path.abspath(__file__), "--_worker", str(T),
           "--iterations", str(args.iterations), "--seed-iterations", str(args.seed_iterations),
           "--rowloop-iterations", str(args.rowloop_iterations), "--warmup", str(args.warmup),
           "--max-seconds", str(args.max_seconds)]
    if args.no_jax:
        cmd.append("--no-jax")
    if args.no_numpy:
        cmd.append("--no-numpy")
    if args.only:
        cmd += ["--only", *args.only]
    preexec = (lambda: os.sched_setaffinity(0, pin)) if pin else None
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=None, text=True, preexec_fn=preexec)
    for line in p.stdout.splitlines():
        if line.startswith("@@RESULT@@"):
            return json.loads(line[len("@@RESULT@@"):])
    raise RuntimeError(f"worker for T={T} failed (rc={p.returncode})")


# ==========================================================================
# gradserve side
# ==========================================================================

def parse_json_blob(text: str) -> dict[str, Any]:
    text = text.strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    # tolerate log lines around the JSON document
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        raise ValueError("no JSON object in gradserve output")
    return json.loads(text[start:end + 1])


def run_gradserve(binary: str, T: int, args, pin: list[int] | None) -> dict[str, Any]:
    cmd = [binary, "bench", "--json", "--threads", str(T), "--iterations", str(args.iterations)]
    cmd += args.gradserve_arg or []
    log(f"  [T={T}] {' '.join(cmd)}")
    preexec = (lambda: os.sched_setaffinity(0, pin)) if pin else None
    t0 = time.perf_counter()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=args.gradserve_timeout, preexec_fn=preexec)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"exit status {p.returncode}: {p.stderr.strip()[-2000:]}")
    doc = parse_json_blob(p.stdout)
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
        raise ValueError("gradserve JSON has no 'results' list")
    doc["_wall_s"] = wall
    return doc


# ==========================================================================
# report
# ==========================================================================

def fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, (int, float)):
        if v == 0:
            return "0"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 100:
            return f"{v:.1f}"
        if abs(v) >= 1:
            return f"{v:.{digits}g}" if abs(v) < 10 else f"{v:.2f}"
        return f"{v:.{digits}g}"
    return str(v)


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return a / b


def med(d: dict[str, Any], name: str) -> float | None:
    r = d.get(name)
    return None if r is None else r.get("median_ms")


def print_report(runs: list[dict[str, Any]], header: dict[str, Any]) -> None:
    print("# gradserve vs PyTorch / JAX\n")
    for k, v in header.items():
        print(f"- {k}: {v}")
    print()
    for run in runs:
        T = run["threads"]
        gs = run.get("gradserve_results", {})
        w = run["worker"]
        print(f"## threads = {T}\n")
        info = w.get("info", {})
        print(f"- torch {info.get('torch')} ({info.get('torch_blas')}, {info.get('torch_threads')} threads), "
              f"numpy {info.get('numpy')} ({info.get('numpy_blas')}), jax {info.get('jax')}"
              + (f", affinity {info['affinity']}" if "affinity" in info else ""))
        if "jax_error" in info:
            print(f"- jax error: {info['jax_error']}")
        gm = run.get("gradserve_machine")
        if gm:
            bl = gm.get("blas", {}) or {}
            print(f"- gradserve: cpu {gm.get('cpu')}, cores {gm.get('cores')}, BLAS {bl.get('library')} "
                  f"{bl.get('version')} core {bl.get('core')} threads {bl.get('threads')}, "
                  f"peak {fmt(gm.get('peak_gflops'))} GFLOP/s")
        elif run.get("gradserve_error"):
            print(f"- gradserve: not run ({run['gradserve_error']})")
        if w.get("checks"):
            print("- agreement (max abs diff / max abs): "
                  + ", ".join(f"{k} {v:.1e}" for k, v in w["checks"].items()))
        print()

        # seed table
        if "seed_linear" in w["torch"] or "seed_linear" in gs:
            g = gs.get("seed_linear", {})
            gms = g.get("median_ms")
            ggf = g.get("gflops") or (SEED_FLOPS / (gms * 1e-3) / 1e9 if gms else None)
            tms, nms, jms = med(w["torch"], "seed_linear"), med(w["numpy"], "seed_linear"), med(w["jax"], "seed_linear")
            gf = lambda ms: None if ms is None else SEED_FLOPS / (ms * 1e-3) / 1e9  # noqa: E731
            print("| seed_linear (1000×1000 · 1000×1000ᵀ + b, f32) | gradserve | torch | numpy | jax |")
            print("|---|---|---|---|---|")
            print(f"| median ms | {fmt(gms)} | {fmt(tms)} | {fmt(nms)} | {fmt(jms)} |")
            print(f"| GFLOP/s (median) | {fmt(ggf)} | {fmt(gf(tms))} | {fmt(gf(nms))} | {fmt(gf(jms))} |")
            print(f"| share of gradserve peak | {fmt(g.get('peak_share'))} | – | – | – |")
            print(f"| time / gradserve | 1 | {fmt(ratio(tms, gms))} | {fmt(ratio(nms, gms))} | {fmt(ratio(jms, gms))} |")
            print()

        print("| workload | gradserve median ms | torch median ms | jax median ms | torch/gradserve | jax/gradserve |")
        print("|---|---|---|---|---|---|")
        names = [n for n in WORKLOADS if n != "seed_linear"]
        names += [n for n in gs if n not in WORKLOADS]
        for n in names:
            g, t, j = med(gs, n), med(w["torch"], n), med(w["jax"], n)
            if g is None and t is None and j is None:
                continue
            label = n
            if n in gs and gs[n].get("method"):
                label += f" ({gs[n]['method']})"
            print(f"| {label} | {fmt(g)} | {fmt(t)} | {fmt(j)} | {fmt(ratio(t, g))} | {fmt(ratio(j, g))} |")
        print()
    print("Ratios are median time of the other framework / median time of gradserve: > 1 means gradserve is faster.")
    print("torch 'auto' Jacobian = vmap(jacrev) (D' = D, ties go to reverse); JAX 'auto' = jax.jacobian (reverse).")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gradserve", default=".build/release/gradserve", help="gradserve binary (default: %(default)s)")
    ap.add_argument("--no-gradserve", action="store_true", help="only time PyTorch / JAX / numpy")
    ap.add_argument("--gradserve-arg", action="append", help="extra argument for `gradserve bench` (repeatable)")
    ap.add_argument("--gradserve-timeout", type=float, default=3600.0, help="seconds (default: %(default)s)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts (default: 1 2)")
    ap.add_argument("--iterations", type=int, default=30, help="timed iterations per workload (default: %(default)s)")
    ap.add_argument("--seed-iterations", type=int, default=500, help="iterations of the seed loop (default: %(default)s)")
    ap.add_argument("--rowloop-iterations", type=int, default=3, help="iterations of the row loop (default: %(default)s)")
    ap.add_argument("--warmup", type=int, default=3, help="warm-up iterations (default: %(default)s)")
    ap.add_argument("--max-seconds", type=float, default=60.0,
                    help="stop a workload's timing loop after this many seconds (at least 3 iterations; default: %(default)s)")
    ap.add_argument("--only", nargs="+", choices=WORKLOADS, help="restrict the torch/JAX side to these workloads")
    ap.add_argument("--no-jax", action="store_true", help="skip JAX even if importable")
    ap.add_argument("--no-numpy", action="store_true", help="skip the numpy seed")
    ap.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True,
                    help="restrict each run to T CPUs via sched_setaffinity (default: on)")
    ap.add_argument("--json", nargs="?", const="-", metavar="FILE",
                    help="also write machine-readable results to FILE ('-' or no value: stdout, after the table)")
    ap.add_argument("--_worker", type=int, dest="worker", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker is not None:
        return worker(args)

    for v in (args.iterations, args.seed_iterations, args.rowloop_iterations):
        if v < 1:
            ap.error("iteration counts must be >= 1")

    try:
        avail = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        avail = list(range(os.cpu_count() or 1))

    binary = None
    if not args.no_gradserve:
        cand = args.gradserve
        binary = cand if os.path.isfile(cand) and os.access(cand, os.X_OK) else shutil.which(cand)
        if binary is None:
            log(f"warning: gradserve binary {cand!r} not found or not executable; "
                "gradserve columns will be empty (use --no-gradserve to silence)")

    header = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "host": f"{platform.node()} — {cpu_name()}, {os.cpu_count()} logical CPUs ({len(avail)} usable)",
        "python": platform.python_version(),
        "iterations": f"{args.iterations} (seed {args.seed_iterations}, rowloop {args.rowloop_iterations}), "
                      f"warmup {args.warmup}, cap {args.max_seconds:g} s per workload",
        "pinning": "sched_setaffinity to the first T usable CPUs" if args.pin else "off",
    }
    for var in ENV_SHOWN:
        header[var] = os.environ.get(var, "(unset)")
    header["gradserve"] = binary or ("skipped (--no-gradserve)" if args.no_gradserve else "not found")

    runs = []
    for T in args.threads:
        if T < 1:
            ap.error("--threads must be >= 1")
        pin = avail[:T] if (args.pin and T <= len(avail)) else None
        if args.pin and T > len(avail):
            log(f"warning: T={T} exceeds the {len(avail)} usable CPUs; not pinning")
        run: dict[str, Any] = {"threads": T}
        log(f"threads = {T}")
        if binary:
            try:
                doc = run_gradserve(binary, T, args, pin)
                run["gradserve_machine"] = doc.get("machine")
                run["gradserve_results"] = {r["name"]: r for r in doc["results"] if isinstance(r, dict) and "name" in r}
                run["gradserve_wall_s"] = doc.get("_wall_s")
            except (OSError, subprocess.SubprocessError, ValueError, RuntimeError, KeyError, TypeError) as e:
                run["gradserve_error"] = f"{type(e).__name__}: {e}"
                log(f"  gradserve failed: {run['gradserve_error']}")
        elif not args.no_gradserve:
            run["gradserve_error"] = "binary not found"
        run["worker"] = run_worker(T, args, pin)
        runs.append(run)

    print_report(runs, header)

    if args.json:
        out = {"header": header, "workloads": WORKLOADS, "runs": []}
        for run in runs:
            w = run["worker"]
            rows = []
            for n in WORKLOADS + [n for n in run.get("gradserve_results", {}) if n not in WORKLOADS]:
                g = run.get("gradserve_results", {}).get(n)
                row = {"name": n, "gradserve": g, "torch": w["torch"].get(n), "jax": w["jax"].get(n),
                       "numpy": w["numpy"].get(n)}
                gm = g.get("median_ms") if g else None
                row["torch_over_gradserve"] = ratio(med(w["torch"], n), gm)
                row["jax_over_gradserve"] = ratio(med(w["jax"], n), gm)
                rows.append(row)
            out["runs"].append({"threads": run["threads"], "gradserve_machine": run.get("gradserve_machine"),
                                "gradserve_error": run.get("gradserve_error"), "info": w.get("info"),
                                "checks": w.get("checks"), "results": rows})
        write_json_text(json.dumps(out, indent=2), args.json, log, fenced=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
