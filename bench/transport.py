#!/usr/bin/env python3
"""gradserve against its transport floor, side by side in one run (issue: end to end as fast as the wire allows).

    python bench/transport.py                          # starts .build/release/gradserve serve and gradserve floor
    python bench/transport.py --iterations 100 --json bench/results-transport.json
    python bench/transport.py --workers 1              # other flags are passed to `gradserve serve`

The floor (`gradserve floor`, Sources/GradServer/TransportFloor.swift) is the service's HTTP stack with no
computation: it reads the whole body and answers bytes stored beforehand. For each workload (the seed's ToyMLP,
float32: forward B = 256, VJP B = 256, Jacobian B = 3 and B = 16) and each encoding (`json`: nested lists in,
JSON out; `base64`: base64 tensors in JSON both ways; `safetensors`: safetensors bodies both ways), the script
builds the request body once, asks gradserve, checks the answer against a float64 numpy reference, stores that
very answer on the floor, and then times the same request against gradserve and the floor, alternating, with
the same client (one `requests.Session` per server, the connection reused, the body prebuilt, the answer read
whole; no encoding or decoding inside the timed span).

Reported per cell (medians, ms): gradserve's round trip, the floor's, the server's own phases from its
`Server-Timing` (read: the body, from the request's arrival to its last byte; queue, decode, compute, encode;
return: the hand-off from the compute thread back to the HTTP server), the same computation
in-process (`POST /v1/benchmark`, in the same server process, same run), and the rest:
gradserve − floor − in-process compute (what the service adds beyond the wire and the arithmetic).

Then through the Python client (`gradserve.Client`, default transport): Jacobian B = 3 and B = 16 against
PyTorch's in-process `vmap(jacrev)` (float32, the same weights), as a ratio; skipped without PyTorch.

Last, the server's peak memory for one Jacobian B = 16 (39 MB), each on a fresh server: safetensors (streamed as it is
computed) and base64 (built whole): the peak resident size above the warm baseline, against the answer's size.

Client and server share this machine's cores; numbers drift with its load, so compare within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import requests

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e", "support"))
from gradserve_testing.rss import peak_rss_bytes, vm_rss  # noqa: E402
from gradserve_testing.server import FloorProcess, ServerProcess  # noqa: E402
from gradserve_testing.toymlp import D, ToyReference, toy_model_json, toy_weights  # noqa: E402

import gradserve  # noqa: E402  (this checkout's client: gradserve_testing put it on sys.path)
from gradserve._registry import _Model  # noqa: E402
from gradserve._transport import _encode_request  # noqa: E402
from gradserve.tensors import decode_json_answer, decode_safetensors_answer  # noqa: E402

WORKLOADS = [("forward", 256), ("vjp", 256), ("jacobian", 3), ("jacobian", 16)]
ENCODINGS = ["json", "base64", "safetensors"]
BENCH_METHOD = {"forward": "forward", "vjp": "reverse", "jacobian": "auto"}
PHASES = ["read", "queue", "decode", "compute", "encode", "return"]
SLACK_MS = 0.3  # the goal: gradserve <= floor + in-process compute + 0.3 ms (forward and VJP, binary bodies)


def inputs(op: str, b: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    a = {"inputs.x": rng.standard_normal((b, D)).astype(np.float32), "inputs.t": rng.random(b).astype(np.float32)}
    if op == "vjp":
        a["grad_outputs"] = rng.standard_normal((b, D)).astype(np.float32)
    return a


def body_for(op: str, mid: str, tensors: dict[str, np.ndarray], encoding: str) -> tuple[bytes, str]:
    doc = {"output_encoding": encoding}
    if op == "vjp":
        doc["wrt"] = ["x"]
    return _encode_request(doc, _Model(mid, None, None), mid, tensors, binary=encoding == "safetensors", lists=encoding == "json")


def decode(r: requests.Response) -> dict:
    if r.headers.get("Content-Type", "").startswith("application/octet-stream"):
        return decode_safetensors_answer(bytearray(r.content))
    return decode_json_answer(r.json(), np.dtype(np.float32))


def check(op: str, answer: dict, a: dict[str, np.ndarray], ref: ToyReference) -> None:
    x, t = a["inputs.x"], a["inputs.t"]
    if op == "forward":
        got, want = answer["outputs"], ref.forward(x, t)
    elif op == "vjp":
        got, want = answer["grads"]["x"], ref.vjp_x(x, t, a["grad_outputs"])
    else:
        got, want = answer["jacobian"]["x"], ref.jacobian_x(x, t)
    err = np.linalg.norm(np.asarray(got, np.float64) - want) / np.linalg.norm(want)
    if not err < 1e-4:
        raise SystemExit(f"{op}: wrong answer (norm-relative error {err:.2e}); nothing timed")


def server_timing(header: str) -> dict[str, float]:
    out = {}
    for part in header.split(","):
        name, _, rest = part.strip().partition(";")
        if rest.startswith("dur="):
            out[name] = float(rest[4:])
    return out


def timed_post(s: requests.Session, url: str, body: bytes, headers: dict) -> tuple[float, requests.Response]:
    t0 = time.perf_counter()
    r = s.post(url, data=body, headers=headers, stream=True)
    # the answer read in one go, as gradserve's client reads it (requests' own 10 KiB chunks cost ~2x on MBs)
    r._content = r.raw.read(decode_content=True)
    r._content_consumed = True
    r.close()
    ms = (time.perf_counter() - t0) * 1e3
    if r.status_code != 200:
        raise SystemExit(f"{url}: {r.status_code} {r.text[:300]}")
    return ms, r


def in_process_ms(url: str, mid: str, op: str, b: int, iterations: int) -> float:
    r = requests.post(
        url + "/v1/benchmark",
        json={"model": mid, "operation": op, "batch": b, "iterations": iterations, "methods": [BENCH_METHOD[op]]},
        timeout=600,
    )
    r.raise_for_status()
    return float(r.json()["results"][0]["median_ms"])


def run_cells(
    gs: ServerProcess, floor: FloorProcess, mid: str, ref: ToyReference, iterations: int, log, only: str | None, encodings: list[str]
) -> list[dict]:
    rng = np.random.default_rng(0)
    sg, sf = requests.Session(), requests.Session()
    cells = []
    for op, b in WORKLOADS:
        a = inputs(op, b, rng)
        if only and only not in f"{op} B={b}":
            continue
        compute = in_process_ms(gs.url, mid, op, b, max(50, iterations))
        for enc in encodings:
            iters = iterations if not (op == "jacobian" and b >= 16 and enc == "json") else max(10, iterations // 5)
            body, ctype = body_for(op, mid, a, enc)
            key = f"{op}-{b}-{enc}"
            headers = {"Content-Type": ctype, "X-Floor-Key": key}
            _, r = timed_post(sg, f"{gs.url}/v1/{op}", body, headers)
            check(op, decode(r), a, ref)
            requests.put(f"{floor.url}/floor/{key}", data=r.content, headers={"Content-Type": r.headers["Content-Type"]}).raise_for_status()
            _, rf = timed_post(sf, f"{floor.url}/v1/{op}", body, headers)
            assert rf.content == r.content
            for _ in range(3):  # warm both
                timed_post(sg, f"{gs.url}/v1/{op}", body, headers)
                timed_post(sf, f"{floor.url}/v1/{op}", body, headers)
            tg, tf, phases = [], [], {p: [] for p in PHASES}
            for _ in range(iters):
                ms, r = timed_post(sg, f"{gs.url}/v1/{op}", body, headers)
                tg.append(ms)
                st = server_timing(r.headers.get("Server-Timing", ""))
                for p in PHASES:
                    phases[p].append(st.get(p, 0.0))
                tf.append(timed_post(sf, f"{floor.url}/v1/{op}", body, headers)[0])
            cell = {
                "workload": f"{op} B={b}",
                "encoding": enc,
                "request_bytes": len(body),
                "answer_bytes": len(r.content),
                "iterations": iters,
                "gradserve_ms": statistics.median(tg),
                "floor_ms": statistics.median(tf),
                "in_process_compute_ms": compute,
                "phases_ms": {p: statistics.median(v) for p, v in phases.items()},
            }
            cell["server_phases_ms"] = sum(cell["phases_ms"].values())
            cell["rest_ms"] = cell["gradserve_ms"] - cell["floor_ms"] - compute
            cells.append(cell)
            log(
                f"{cell['workload']:<16} {enc:<11} gradserve {cell['gradserve_ms']:7.2f}  floor {cell['floor_ms']:7.2f}  "
                f"compute(in-process) {compute:6.2f}  rest {cell['rest_ms']:6.2f}  | "
                + "  ".join(f"{p} {cell['phases_ms'][p]:.2f}" for p in PHASES)
            )
    return cells


def client_vs_torch(gs: ServerProcess, iterations: int, log) -> list[dict]:
    try:
        import torch
        from torch.func import jacrev, vmap
    except ImportError:
        log("PyTorch not installed: the client-vs-PyTorch rows are skipped")
        return []
    from gradserve_testing.toymlp import toy_mlp

    torch.set_num_threads(1)
    model = toy_mlp(seed=0)
    rows = []
    with gradserve.Client(gs.url) as c:
        mid = c.register(model)
        for b in (3, 16):
            rng = np.random.default_rng(b)
            x = torch.from_numpy(rng.standard_normal((b, D)).astype(np.float32))
            t = torch.from_numpy(rng.random(b).astype(np.float32))
            f = vmap(jacrev(lambda xi, ti: model(xi[None], ti[None])[0]))
            want = f(x, t).detach()
            got = c.jacobian(mid, x, t).jacobian.x
            err = float((got - want).norm() / want.norm())
            if not err < 1e-4:
                raise SystemExit(f"client jacobian B={b}: norm-relative error {err:.2e} against PyTorch")
            tc, tt = [], []
            for _ in range(iterations):
                t0 = time.perf_counter()
                c.jacobian(mid, x, t)
                tc.append((time.perf_counter() - t0) * 1e3)
                t0 = time.perf_counter()
                with torch.no_grad():
                    f(x, t)
                tt.append((time.perf_counter() - t0) * 1e3)
            row = {"workload": f"jacobian B={b}", "client_ms": statistics.median(tc), "torch_vmap_jacrev_ms": statistics.median(tt)}
            row["ratio"] = row["client_ms"] / row["torch_vmap_jacrev_ms"]
            rows.append(row)
            log(f"client jacobian B={b:<3} {row['client_ms']:7.2f} ms   PyTorch vmap(jacrev) in-process {row['torch_vmap_jacrev_ms']:7.2f} ms   ratio {row['ratio']:.2f}")
    return rows


def peak_memory(serve_args: list[str], binary: str | None, log) -> list[dict]:
    """Peak resident memory above the warm baseline for one Jacobian B = 16 (a 39 MB answer), each on a
    fresh server: safetensors (streamed) and base64 (built whole)."""
    rows = []
    rng = np.random.default_rng(16)
    a = inputs("jacobian", 16, rng)
    for enc in ("safetensors", "base64"):
        gs = ServerProcess(extra_args=serve_args, binary=binary).start()
        try:
            mid = requests.post(gs.url + "/v1/models", json={"model": toy_model_json(seed=0)}).json()["id"]
            small, small_type = body_for("jacobian", mid, {k: v[:1] for k, v in a.items()}, enc)
            requests.post(f"{gs.url}/v1/jacobian", data=small, headers={"Content-Type": small_type}).raise_for_status()
            base = vm_rss(gs.pid)
            b, ctype = body_for("jacobian", mid, a, enc)
            r = requests.post(f"{gs.url}/v1/jacobian", data=b, headers={"Content-Type": ctype})
            r.raise_for_status()
            peak = peak_rss_bytes(gs.pid)
        finally:
            gs.stop()
        answer = 16 * D * D * 4
        row = {"workload": "jacobian B=16", "encoding": enc, "answer_bytes": answer, "baseline_bytes": base, "peak_bytes": peak,
               "above_baseline_over_answer": (peak - base) / answer}
        rows.append(row)
        log(f"peak memory, jacobian B=16 {enc:<11}: {(peak - base) / 2**20:6.1f} MiB above the baseline for a {answer / 2**20:.1f} MiB answer "
            f"({row['above_baseline_over_answer']:.2f}x)")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--gradserve", default=None, help="binary (default $GRADSERVE_BIN or .build/release/gradserve)")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--only", default=None, help="only workloads whose name contains this (e.g. 'B=256')")
    ap.add_argument("--encodings", default=",".join(ENCODINGS), help="comma-separated (default: all)")
    ap.add_argument("--no-client", action="store_true", help="skip the client-vs-PyTorch rows")
    args, serve_args = ap.parse_known_args()
    log = lambda s: print(s, flush=True)  # noqa: E731
    gs = ServerProcess(extra_args=serve_args, binary=args.gradserve).start()
    floor = FloorProcess(binary=args.gradserve).start()
    try:
        r = requests.post(gs.url + "/v1/models", json={"model": toy_model_json(seed=0)})
        r.raise_for_status()
        mid = r.json()["id"]
        ref = ToyReference(toy_weights(seed=0))
        log(f"gradserve {gs.url} (serve {' '.join(serve_args) or 'defaults'}), floor {floor.url}; medians of {args.iterations}")
        cells = run_cells(gs, floor, mid, ref, args.iterations, log, args.only, args.encodings.split(","))
        client = [] if args.no_client else client_vs_torch(gs, max(20, args.iterations // 2), log)
    finally:
        gs.stop()
        floor.stop()
    memory = peak_memory(serve_args, args.gradserve, log)
    goals = []
    for c in cells:
        if c["encoding"] == "safetensors" and c["workload"] in ("forward B=256", "vjp B=256"):
            bound = c["floor_ms"] + c["in_process_compute_ms"] + SLACK_MS
            goals.append({"goal": f"{c['workload']} safetensors <= floor + compute + {SLACK_MS} ms", "value_ms": c["gradserve_ms"], "bound_ms": bound, "met": c["gradserve_ms"] <= bound})
    for row in client:
        if row["workload"] == "jacobian B=3":
            goals.append({"goal": "client jacobian B=3 <= 2x PyTorch vmap(jacrev)", "value": row["ratio"], "bound": 2.0, "met": row["ratio"] <= 2.0})
    for m in memory:
        if m["encoding"] == "safetensors":
            goals.append({"goal": "peak memory for a B=16 Jacobian <= 1.2x the answer above the baseline", "value": m["above_baseline_over_answer"],
                          "bound": 1.2, "met": m["above_baseline_over_answer"] <= 1.2})
    for g in goals:
        log(f"goal: {g['goal']}: {'met' if g['met'] else 'NOT met'} ({g.get('value_ms', g.get('value')):.2f} vs {g.get('bound_ms', g.get('bound')):.2f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": " ".join(sys.argv), "cells": cells, "client": client, "memory": memory, "goals": goals}, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
