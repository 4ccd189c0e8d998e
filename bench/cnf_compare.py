#!/usr/bin/env python3
"""Continuous normalizing flows, side by side in one run: gradserve's /v1/logprob and /v1/integrate end to
end over HTTP (through the client: a registered model, safetensors bodies both ways) against
flow_matching's ODESolver (torchdiffeq underneath) in this process, on the seed's ToyMLP.

ToyMLP (float32): x [B, 784], t appended as the last column; Linear(785, 64) → SELU → 2×[Linear(64, 64) →
SELU] → Linear(64, 784); weights from torch.manual_seed(0) (e2e/support/gradserve_testing/toymlp.py).

    python bench/cnf_compare.py                        # starts a server from .build/release/gradserve ($GRADSERVE_BIN)
    python bench/cnf_compare.py --threads 2 --iterations 50
    python bench/cnf_compare.py --json bench/results-cnf.json   # also write the results ("--json -": stdout)
    python bench/cnf_compare.py --url http://127.0.0.1:8080     # a running server instead

Workloads (the same solver, steps and tolerances on both sides):
  logprob_midpoint_b16   B = 16 from t = 1 to 0, midpoint, step_size 0.25 (4 steps, 8 evaluations):
                         gradserve exact divergence vs flow_matching's compute_likelihood with
                         exact_divergence=True (one autograd pass per dimension, 784 per evaluation) and
                         with exact_divergence=False (Hutchinson, 1 Rademacher probe)
  logprob_dopri5_b16     the same with dopri5, atol = rtol = 1e-5 (each side's own adaptive steps)
  integrate_dopri5_b256  B = 256 from t = 0 to 1, dopri5, atol = rtol = 1e-5: /v1/integrate vs
                         ODESolver.sample (torchdiffeq) under no_grad
Goals (project issue 11): logprob exact ≥ 200× faster than PyTorch's exact; not slower than PyTorch's
1-probe Hutchinson; integrate dopri5 at B = 256 faster end to end than torchdiffeq in process. Each cell is
the median of --iterations calls after --warmup (PyTorch's exact divergence: --slow-iterations, no warmup; a
cell stops early past --max-seconds, after 2 calls).
The answers are cross-checked once (exact logprob and samples against flow_matching's). --check: exit
status 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "e2e" / "support"))
from gradserve_testing.report import cpu_name, write_json_text  # noqa: E402
from gradserve_testing.server import ServerProcess  # noqa: E402
from gradserve_testing.toymlp import D, WIDTH, toy_mlp  # noqa: E402

import gradserve  # noqa: E402  (this checkout's client, first on sys.path through gradserve_testing)
from gradserve.torch import export  # noqa: E402


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def timed(fn: Callable[[], Any], iterations: int, warmup: int, max_seconds: float) -> tuple[dict, Any]:
    """Median / min / p95 milliseconds of `fn()` and its last result."""
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    start = time.perf_counter()
    for i in range(iterations):
        t0 = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t0) * 1e3)
        if time.perf_counter() - start > max_seconds and i >= 1:
            break
    ms = sorted(times)
    p95 = ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))]
    return {"iterations": len(ms), "median_ms": statistics.median(ms), "min_ms": ms[0], "p95_ms": p95}, out


def log_p0(x: torch.Tensor) -> torch.Tensor:
    return -0.5 * (x**2).sum(1) - x.shape[1] / 2 * math.log(2 * math.pi)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=30, help="calls per cell (median)")
    ap.add_argument("--slow-iterations", type=int, default=3, help="calls of PyTorch's exact divergence (~1.5 s and ~15 s each)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--max-seconds", type=float, default=60.0, help="per cell: stop after this long (at least 2 calls)")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads and the server's --threads-per-request")
    ap.add_argument("--url", help="a running server instead of starting one")
    ap.add_argument("--bin", help="the gradserve binary (default $GRADSERVE_BIN, else .build/release/gradserve)")
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH ('-': stdout)")
    ap.add_argument("--check", action="store_true", help="exit status 1 when a goal is missed")
    args = ap.parse_args()

    from flow_matching.solver import ODESolver

    torch.set_num_threads(args.threads)
    server = None
    if args.url:
        url = args.url
    else:
        server = ServerProcess(None, ["--threads-per-request", str(args.threads), "--workers", "1"], binary=args.bin).start()
        url = server.url
    try:
        client = gradserve.Client(url, transport="safetensors")  # binary bodies both ways
        info = client.info()
        model = toy_mlp(seed=0, dtype=torch.float32)
        mid = client.register(export(model), name="toymlp-cnf")
        solver = ODESolver(lambda x, t: model(x, t.expand(x.shape[0])))
        gen = torch.Generator().manual_seed(1)
        x16 = torch.randn(16, D, generator=gen)
        x256 = torch.randn(256, D, generator=gen)
        it = dict(iterations=args.iterations, warmup=args.warmup, max_seconds=args.max_seconds)
        slow = dict(iterations=args.slow_iterations, warmup=0, max_seconds=args.max_seconds)
        results: dict[str, dict] = {}
        correctness: dict[str, float] = {}

        for name, solve in [
            ("logprob_midpoint_b16", {"method": "midpoint", "step_size": 0.25}),
            ("logprob_dopri5_b16", {"method": "dopri5", "atol": 1e-5, "rtol": 1e-5}),
        ]:
            fm_opts = {"method": solve["method"], "atol": solve.get("atol", 1e-5), "rtol": solve.get("rtol", 1e-5)}
            step = solve.get("step_size")
            log(f"{name}: gradserve exact")
            gs, gs_ans = timed(lambda: client.logprob(mid, x16, divergence="exact", **solve), **it)
            log(f"{name}: flow_matching exact (784 autograd passes per evaluation)")
            fm, (fm_x0, fm_lp) = timed(lambda: solver.compute_likelihood(x16, log_p0, step, exact_divergence=True, **fm_opts), **slow)
            log(f"{name}: flow_matching Hutchinson, 1 probe")
            fmh, _ = timed(lambda: solver.compute_likelihood(x16, log_p0, step, exact_divergence=False, **fm_opts), **it)
            gsh, _ = timed(lambda: client.logprob(mid, x16, divergence="hutchinson", probes=1, **solve), **it)
            correctness[f"{name}_max_abs_logprob_diff"] = float((gs_ans.logprob - fm_lp.detach()).abs().max())
            correctness[f"{name}_max_abs_logprob"] = float(fm_lp.detach().abs().max())
            results[name] = {
                "batch": 16, **solve, "nfe": gs_ans.nfe, "steps": dict(gs_ans.steps),
                "gradserve_exact": {**gs, "compute_ms": gs_ans.timing["compute_ms"]},
                "gradserve_hutchinson_1": gsh,
                "flow_matching_exact": fm,
                "flow_matching_hutchinson_1": fmh,
                "ratio_vs_exact": fm["median_ms"] / gs["median_ms"],
                "ratio_vs_hutchinson_1": fmh["median_ms"] / gs["median_ms"],
            }

        log("integrate_dopri5_b256: gradserve")
        gs, gs_ans = timed(lambda: client.sample(mid, x256, method="dopri5", atol=1e-5, rtol=1e-5), **it)

        def fm_sample():
            with torch.no_grad():
                return solver.sample(x256, None, method="dopri5", atol=1e-5, rtol=1e-5)

        log("integrate_dopri5_b256: flow_matching / torchdiffeq")
        fm, fm_x = timed(fm_sample, **it)
        correctness["integrate_dopri5_b256_max_abs_x_diff"] = float((gs_ans.x - fm_x).abs().max())
        correctness["integrate_dopri5_b256_max_abs_x"] = float(fm_x.abs().max())
        results["integrate_dopri5_b256"] = {
            "batch": 256, "method": "dopri5", "atol": 1e-5, "rtol": 1e-5, "nfe": gs_ans.nfe, "steps": dict(gs_ans.steps),
            "gradserve": {**gs, "compute_ms": gs_ans.timing["compute_ms"]},
            "torchdiffeq": fm,
            "ratio": fm["median_ms"] / gs["median_ms"],
        }
    finally:
        if server is not None:
            server.stop()

    mp, dp, ig = results["logprob_midpoint_b16"], results["logprob_dopri5_b16"], results["integrate_dopri5_b256"]
    goals = {
        "logprob_exact_200x_vs_torch_exact": mp["ratio_vs_exact"] >= 200,
        "logprob_exact_not_slower_than_torch_hutchinson_1": mp["ratio_vs_hutchinson_1"] >= 1
        and dp["ratio_vs_hutchinson_1"] >= 1,
        "integrate_dopri5_b256_faster_than_torchdiffeq": ig["ratio"] > 1,
    }

    print(f"\ngradserve {info.get('version')} at {url}; {cpu_name()}, {os.cpu_count()} cores; torch {torch.__version__}, "
          f"{args.threads} thread(s) on both sides; medians of up to {args.iterations} calls, PyTorch exact {args.slow_iterations} (ms)")
    print(f"{'workload':24s} {'gradserve exact':>16s} {'(compute)':>10s} {'gs Hutch-1':>11s} {'torch exact':>12s} "
          f"{'torch Hutch-1':>14s} {'× exact':>9s} {'× Hutch-1':>10s} {'nfe':>5s}")
    for name in ("logprob_midpoint_b16", "logprob_dopri5_b16"):
        r = results[name]
        print(f"{name:24s} {r['gradserve_exact']['median_ms']:16.2f} {r['gradserve_exact']['compute_ms']:10.2f} "
              f"{r['gradserve_hutchinson_1']['median_ms']:11.2f} {r['flow_matching_exact']['median_ms']:12.1f} "
              f"{r['flow_matching_hutchinson_1']['median_ms']:14.2f} {r['ratio_vs_exact']:9.0f} "
              f"{r['ratio_vs_hutchinson_1']:10.2f} {r['nfe']:5d}")
    print(f"{'workload':24s} {'gradserve':>16s} {'(compute)':>10s} {'torchdiffeq':>11s} {'ratio':>12s} {'nfe':>5s}")
    print(f"{'integrate_dopri5_b256':24s} {ig['gradserve']['median_ms']:16.2f} {ig['gradserve']['compute_ms']:10.2f} "
          f"{ig['torchdiffeq']['median_ms']:11.2f} {ig['ratio']:12.2f} {ig['nfe']:5d}")
    print("goals: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in goals.items()))
    print("cross-check: " + ", ".join(f"{k} {v:.3g}" for k, v in correctness.items()))

    if args.json:
        doc = {
            "benchmark": "cnf_compare",
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "model": f"ToyMLP float32, D={D}, w={WIDTH}, time-varying, seed 0",
            "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
                        "torch": torch.__version__, "threads": args.threads, "gradserve": info.get("version")},
            "iterations": args.iterations, "slow_iterations": args.slow_iterations, "warmup": args.warmup,
            "results": results, "goals": goals, "correctness": correctness,
        }
        write_json_text(json.dumps(doc, indent=2), args.json, log)
    return 1 if args.check and not all(goals.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
