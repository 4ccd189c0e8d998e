#!/usr/bin/env python3
"""Soak benchmark: a minute (or --seconds) of mixed traffic against one gradserve process, watching its memory.

    GRADSERVE_VENV/bin/python bench/soak.py                       # 60 s, 16 connections, --memory-limit 1G
    GRADSERVE_VENV/bin/python bench/soak.py --seconds 10 --connections 4
    GRADSERVE_VENV/bin/python bench/soak.py --memory-limit 512M -- --workers 1   # after --: more server flags

It starts the server itself (a private copy of $GRADSERVE_BIN, else .build/release/gradserve, on --port 0
with a temporary --data-dir and the given --memory-limit), registers the seed's ToyMLP (float32, inputs
["x", "t"], x [B, 784] ++ t → Linear(785, 64) → SELU → 2 × [Linear(64, 64) → SELU] → Linear(64, 784),
state_dict names net.0 … net.6) and checks one forward answer against numpy. Then --connections client
threads, each with its own requests.Session, send requests back to back for --seconds:

  ok         ~90 %: forward (B 1–64), VJP (B 1–64, wrt x), Jacobian (B 1–2, safetensors answer),
             divergence (exact B 1–16, Hutchinson B 8–32 with 16 probes), by model id, base64 tensors;
  malformed  ~5 %: truncated JSON, a NaN token, x one column short, an unknown op, a wrong dtype;
  over       ~5 %: over-budget requests: hidden-width blow-ups (a posted 1 → 65536 → 1 model at B 4096 and
             65536), a Jacobian of B = 64 (39·10⁶ numbers), a shape declaring 2³⁰ rows.

Every request is recorded (route, kind, status, client latency, the server's own Server-Timing total);
the server's VmRSS is sampled every 100 ms. Written: --out (JSON: p50/p90/p99 latency by route and kind,
answers by status, unexpected answers with examples, RSS over time and its summary, request rate) and
--plot (PNG: RSS over time, requests per second on a second axis); a table is printed.

It is a benchmark: it reports, it asserts nothing. What to look for: no 5xx other than 503/504, a flat
RSS (compare the first and last tenths of the run, and the fitted slope), and the p99 of the small
requests. Note that the client (Python, 16 threads) and the server share this machine's cores, so client
latencies include time the client spent waiting for the interpreter; the Server-Timing column does not.
"""

from __future__ import annotations

import argparse
import base64
import datetime as _dt
import json
import os
import platform
import random
import re
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e" / "support"))
from gradserve_testing.rss import vm_rss  # noqa: E402
from gradserve_testing.server import ServerProcess  # noqa: E402
from gradserve_testing.toymlp import ToyReference, toy_model_json, toy_weights  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
D = 784  # the ToyMLP's x width
SMALL_ROUTES = ("forward", "vjp", "divergence")  # the "small requests" of the p99 target (Jacobians are 2–5 MB answers)


# --------------------------------------------------------------------------------------
# Server
# --------------------------------------------------------------------------------------


# The server: gradserve_testing.server.ServerProcess (a private copy of $GRADSERVE_BIN or the release build,
# --port 0); the ToyMLP: gradserve_testing.toymlp (weights of torch.manual_seed(--seed)).


# --------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------


def b64(a: np.ndarray, dtype: str = "float32") -> dict:
    a = np.ascontiguousarray(a, dtype=dtype)
    return {"shape": list(a.shape), "dtype": dtype, "encoding": "base64", "data": base64.b64encode(a.tobytes()).decode()}


class Body:
    __slots__ = ("route", "kind", "label", "data", "ctype")

    def __init__(self, route: str, kind: str, label: str, data: bytes, ctype: str = "application/json"):
        self.route, self.kind, self.label, self.data, self.ctype = route, kind, label, data, ctype


def build_bodies(mid: str, rng: np.random.Generator) -> dict[str, list[tuple[float, list[Body]]]]:
    """kind → [(weight within the kind, [pre-encoded bodies])]."""

    def inputs(b):
        return {"x": b64(rng.normal(size=(b, D))), "t": b64(rng.uniform(size=(b,)))}

    def enc(obj) -> bytes:
        return json.dumps(obj).encode()

    variants = 4
    ok = []
    for b in (1, 8, 32, 64):
        ok.append((0.30 / 4, [Body("forward", "ok", f"forward B={b}", enc({"model": mid, "inputs": inputs(b), "output_encoding": "base64"}))
                              for _ in range(variants)]))
        ok.append((0.30 / 4, [Body("vjp", "ok", f"vjp B={b}", enc({"model": mid, "inputs": inputs(b), "grad_outputs": b64(rng.normal(size=(b, D))),
                                                                    "wrt": ["x"], "output_encoding": "base64"})) for _ in range(variants)]))
    for b in (1, 2):
        ok.append((0.10 / 2, [Body("jacobian", "ok", f"jacobian B={b}", enc({"model": mid, "inputs": inputs(b), "output_encoding": "safetensors",
                                                                            "return_outputs": False})) for _ in range(variants)]))
    for b in (1, 16):
        ok.append((0.10 / 2, [Body("divergence", "ok", f"divergence exact B={b}", enc({"model": mid, "inputs": inputs(b)}))
                              for _ in range(variants)]))
    for b in (8, 32):
        ok.append((0.10 / 2, [Body("divergence", "ok", f"divergence hutchinson B={b}",
                                   enc({"model": mid, "inputs": inputs(b), "method": "hutchinson", "probes": 16, "seed": int(rng.integers(1 << 30))}))
                              for _ in range(variants)]))

    good = json.dumps({"model": mid, "inputs": inputs(4)})
    short = {"model": mid, "inputs": {"x": b64(rng.normal(size=(4, D - 1))), "t": b64(rng.uniform(size=(4,)))}}
    malformed = [
        (0.01, [Body("forward", "malformed", "truncated JSON", good[: len(good) // 2].encode())]),
        (0.01, [Body("vjp", "malformed", "NaN token", f'{{"model": "{mid}", "inputs": {{"x": [[NaN]], "t": [0]}}, "grad_outputs": [[1]]}}'.encode())]),
        (0.01, [Body("forward", "malformed", "x one column short", enc(short))]),
        (0.01, [Body("jacobian", "malformed", "unknown op", enc({"model": {"layers": [{"op": "swish9"}]}, "inputs": {"x": [[0.5]]}}))]),
        (0.01, [Body("divergence", "malformed", "wrong dtype", enc({"model": mid, "inputs": {"x": {"shape": [1, D], "dtype": "int8",
                                                                                                       "encoding": "base64", "data": ""}, "t": [0]}}))]),
    ]

    h = 65536
    wide = {"dtype": "float32", "layers": [{"op": "linear", "weight": b64(rng.uniform(0.5, 1.5, size=(h, 1)))}, {"op": "tanh"},
                                           {"op": "linear", "weight": b64(rng.uniform(0.5, 1.5, size=(1, h)) / h)}]}
    over = [
        (0.0125, [Body("forward", "over", "wide forward B=65536", enc({"model": wide, "inputs": {"x": b64(np.full((h, 1), 0.5))}}))]),
        (0.0125, [Body("vjp", "over", "wide vjp B=4096", enc({"model": wide, "inputs": {"x": b64(np.full((4096, 1), 0.5))},
                                                             "grad_outputs": b64(np.ones((4096, 1)))}))]),
        (0.0125, [Body("jacobian", "over", "toy jacobian B=64", enc({"model": mid, "inputs": inputs(64)}))]),
        (0.0125, [Body("divergence", "over", "2^30 rows declared", enc({"model": mid, "inputs": {"x": {"shape": [1 << 30, D], "data": [0.0]},
                                                                                                "t": [0.0]}}))]),
    ]
    return {"ok": ok, "malformed": malformed, "over": over}


EXPECTED = {"ok": {200}, "malformed": {400, 422}, "over": {413, 422}}


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------


def server_ms(r: requests.Response) -> float | None:
    st = r.headers.get("Server-Timing")
    if not st:
        return None
    return sum(float(m.group(1)) for m in re.finditer(r"dur=([0-9.]+)", st))


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--memory-limit", default="1G")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "bench" / "results-soak.json"))
    ap.add_argument("--plot", default=str(REPO / "bench" / "soak-memory.png"))
    ap.add_argument("server_args", nargs="*", help="more `gradserve serve` flags, after --")
    a = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="gs-soak-"))
    server_args = ["--memory-limit", a.memory_limit, *a.server_args]
    server = ServerProcess(tmp / "data", server_args)
    try:
        url = server.start().url
        proc = server.proc
        info = requests.get(url + "/v1/info", timeout=30).json()
        rng = np.random.default_rng(a.seed)
        weights = toy_weights(seed=a.seed)
        r = requests.post(url + "/v1/models", json={"name": "toy-mlp", "model": toy_model_json(seed=a.seed)}, timeout=60)
        r.raise_for_status()
        mid = r.json()["id"]
        x, t = rng.normal(size=(3, D)).astype(np.float32), rng.uniform(size=(3,)).astype(np.float32)
        got = requests.post(url + "/v1/forward", json={"model": mid, "inputs": {"x": x.tolist(), "t": t.tolist()}}, timeout=60).json()["outputs"]
        ref = ToyReference(weights).forward(x, t)
        err = float(np.max(np.abs(np.asarray(got) - ref)) / np.max(np.abs(ref)))
        if err > 1e-5:
            sys.exit(f"the server's ToyMLP forward differs from numpy by {err:.2e} (norm-relative)")
        bodies = build_bodies(mid, rng)
        kinds = [(k, w, bs) for k, groups in bodies.items() for w, bs in groups]
        weights_ = [w for _, w, _ in kinds]

        time.sleep(2.5)  # the idle trim after start-up work, for a clean baseline
        baseline = vm_rss(proc.pid)
        records: list[tuple] = []  # (t_start_s, route, kind, label, status, latency_ms, server_ms, error)
        rec_lock = threading.Lock()
        rss: list[tuple[float, int]] = []
        stop = threading.Event()
        t0 = time.perf_counter()
        end = t0 + a.seconds

        def sampler():
            while not stop.is_set():
                v = vm_rss(proc.pid)
                if v is None:
                    return
                rss.append((time.perf_counter() - t0, v))
                stop.wait(0.1)

        def client(i: int):
            local_rng = random.Random(a.seed * 1000 + i)
            session = requests.Session()
            mine = []
            while time.perf_counter() < end:
                _, _, group = local_rng.choices(kinds, weights=weights_)[0]
                b = local_rng.choice(group)
                s = time.perf_counter()
                status, sms, error = None, None, None
                try:
                    resp = session.post(f"{url}/v1/{b.route}", data=b.data, headers={"Content-Type": b.ctype}, timeout=120)
                    _ = resp.content
                    status, sms = resp.status_code, server_ms(resp)
                    if status >= 500 and status not in (503, 504):
                        error = resp.text[:300]
                except requests.RequestException as e:
                    error = repr(e)[:300]
                    session = requests.Session()
                mine.append((s - t0, b.route, b.kind, b.label, status, (time.perf_counter() - s) * 1000, sms, error))
            with rec_lock:
                records.extend(mine)

        smp = threading.Thread(target=sampler, daemon=True)
        smp.start()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(a.connections)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        elapsed = time.perf_counter() - t0
        time.sleep(3)  # and the idle trim after the load
        stop.set()
        smp.join()
        after_idle = vm_rss(proc.pid)
        alive = proc.poll() is None
        ready = requests.get(url + "/readyz", timeout=30).json() if alive else None
        log_errors = [line for line in server.log_path.read_text(errors="replace").splitlines() if " error " in line][-20:]
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    records.sort()
    # ---- summary ------------------------------------------------------------------
    by = defaultdict(list)
    by_srv = defaultdict(list)
    statuses = Counter()
    statuses_by_kind = defaultdict(Counter)
    unexpected = defaultdict(list)
    unexpected_n = Counter()
    for ts, route, kind, label, status, lat, sms, error in records:
        statuses[str(status)] += 1
        statuses_by_kind[kind][str(status)] += 1
        if status in EXPECTED[kind]:
            by[(route, kind)].append(lat)
            if sms is not None:
                by_srv[(route, kind)].append(sms)
        if status not in EXPECTED[kind] and status != 503:
            key = f"{kind} {label} → {status}"
            unexpected_n[key] += 1
            if len(unexpected[key]) < 3:
                unexpected[key].append(error or "")
    lat_table = []
    for (route, kind), vals in sorted(by.items(), key=lambda kv: (["ok", "malformed", "over"].index(kv[0][1]), kv[0][0])):
        srv = by_srv.get((route, kind), [])
        lat_table.append({"route": route, "kind": kind, "n": len(vals), "p50_ms": pct(vals, 50), "p90_ms": pct(vals, 90),
                          "p99_ms": pct(vals, 99), "max_ms": round(max(vals), 3), "server_p50_ms": pct(srv, 50), "server_p99_ms": pct(srv, 99)})
    small = [lat for _, route, kind, _, status, lat, _, _ in records if kind == "ok" and route in SMALL_ROUTES and status == 200]
    small_srv = [sms for _, route, kind, _, status, _, sms, _ in records if kind == "ok" and route in SMALL_ROUTES and status == 200
                 and sms is not None]
    five_xx = {s: n for s, n in statuses.items() if s != "None" and int(s) >= 500}
    bad_5xx = {s: n for s, n in five_xx.items() if s not in ("503", "504")}

    times = np.array([t for t, _ in rss])
    vals = np.array([v for _, v in rss], dtype=np.float64)
    load = (times >= 0) & (times <= elapsed)
    tenth = max(elapsed / 10, 1.0)
    first = vals[load & (times <= tenth)]
    last = vals[load & (times >= elapsed - tenth)]
    slope = float(np.polyfit(times[load], vals[load], 1)[0]) * 60 / 2**20 if load.sum() > 2 else None
    half = load & (times >= elapsed / 2)  # past the warm-up: the pools and buffers a steady load needs
    slope2 = float(np.polyfit(times[half], vals[half], 1)[0]) * 60 / 2**20 if half.sum() > 2 else None
    per_second = Counter(int(ts) for ts, *_ in records)
    rate = [per_second.get(s, 0) for s in range(int(np.ceil(elapsed)))]
    mib = lambda v: None if v is None else round(float(v) / 2**20, 1)  # noqa: E731
    summary = {
        "when": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "cpu": info.get("cpu"), "blas": info.get("blas", {}).get("core")},
        "server": {"args": server_args, "workers": info.get("workers"), "limits": info.get("limits"), "alive_at_end": alive,
                   "readyz_at_end": ready, "error_log_lines": log_errors},
        "run": {"seconds": round(elapsed, 2), "connections": a.connections, "requests": len(records),
                "requests_per_s": round(len(records) / elapsed, 1), "mix": {k: round(sum(w for kk, w, _ in kinds if kk == k), 4) for k in bodies}},
        "answers_by_status": dict(sorted(statuses.items())),
        "answers_by_kind_and_status": {k: dict(sorted(v.items())) for k, v in statuses_by_kind.items()},
        "five_xx": five_xx,
        "five_xx_other_than_503_504": bad_5xx,
        "unexpected_answers": {k: {"count": unexpected_n[k], "examples": v} for k, v in unexpected.items()},
        "latency_ms": lat_table,
        "small_requests_ok": {"routes": list(SMALL_ROUTES), "n": len(small), "p50_ms": pct(small, 50), "p99_ms": pct(small, 99),
                              "server_p50_ms": pct(small_srv, 50), "server_p99_ms": pct(small_srv, 99), "target_p99_ms": 50},
        "rss_mib": {"idle_before": mib(baseline), "min": mib(vals[load].min()) if load.any() else None,
                    "max": mib(vals.max()) if len(vals) else None, "mean_under_load": mib(vals[load].mean()) if load.any() else None,
                    "first_tenth_mean": mib(first.mean()) if len(first) else None, "last_tenth_mean": mib(last.mean()) if len(last) else None,
                    "slope_mib_per_min": None if slope is None else round(slope, 2),
                    "slope_second_half_mib_per_min": None if slope2 is None else round(slope2, 2), "idle_3s_after": mib(after_idle),
                    "memory_limit": a.memory_limit, "samples": len(vals)},
        "rss_series": [[round(t, 2), mib(v)] for t, v in rss],
        "requests_per_second_series": rate,
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1) + "\n")

    # ---- plot ---------------------------------------------------------------------
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(10, 4.5))
        ax.plot(times, vals / 2**20, color="tab:blue", lw=1.2, label="server RSS (MiB)")
        ax.axvspan(0, elapsed, color="0.93", zorder=0)
        ax.set_xlabel("seconds")
        ax.set_ylabel("RSS (MiB)", color="tab:blue")
        ax.set_ylim(bottom=0)
        ax2 = ax.twinx()
        ax2.step(np.arange(len(rate)) + 0.5, rate, where="mid", color="tab:orange", lw=1, alpha=0.8, label="requests/s")
        ax2.set_ylabel("requests per second", color="tab:orange")
        ax2.set_ylim(bottom=0)
        ax.set_title(f"gradserve soak: {a.connections} connections, {elapsed:.0f} s, --memory-limit {a.memory_limit} "
                     f"({len(records)} requests; shaded: under load)", fontsize=10)
        fig.tight_layout()
        fig.savefig(a.plot, dpi=110)
    except ImportError:
        print("(matplotlib missing: no plot)")

    # ---- table --------------------------------------------------------------------
    print(f"\n{len(records)} requests in {elapsed:.1f} s ({len(records) / elapsed:.1f}/s), {a.connections} connections, "
          f"--memory-limit {a.memory_limit}, {info.get('workers')} workers")
    print(f"{'route':<11} {'kind':<10} {'n':>6} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'max ms':>9} {'srv p50':>9} {'srv p99':>9}")
    for row in lat_table:
        print(f"{row['route']:<11} {row['kind']:<10} {row['n']:>6} {row['p50_ms']:>9} {row['p90_ms']:>9} {row['p99_ms']:>9} "
              f"{row['max_ms']:>9} {row['server_p50_ms']!s:>9} {row['server_p99_ms']!s:>9}")
    s = summary["small_requests_ok"]
    print(f"small requests ({', '.join(SMALL_ROUTES)}, 200): p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms (target ≤ 50); "
          f"server-side p99 {s['server_p99_ms']} ms")
    print("answers by status:", dict(sorted(statuses.items())), "| by kind:", {k: dict(v) for k, v in statuses_by_kind.items()})
    print("5xx other than 503/504:", bad_5xx or "none")
    if unexpected:
        print("unexpected answers:", json.dumps(summary["unexpected_answers"], indent=1)[:2000])
    r_ = summary["rss_mib"]
    print(f"RSS MiB: idle {r_['idle_before']}, under load min {r_['min']} / mean {r_['mean_under_load']} / max {r_['max']}; "
          f"first tenth {r_['first_tenth_mean']}, last tenth {r_['last_tenth_mean']}, slope {r_['slope_mib_per_min']} MiB/min "
          f"({r_['slope_second_half_mib_per_min']} over the second half); "
          f"3 s after {r_['idle_3s_after']}")
    print(f"server alive at the end: {alive}; wrote {out} and {a.plot}")


if __name__ == "__main__":
    main()
