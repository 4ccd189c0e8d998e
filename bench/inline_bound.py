#!/usr/bin/env python3
"""How long can the event loop spend on one inline computation (`--inline-ms`)? Random registered models (1-256
layers of linear maps of width 1-1024 and every activation, float32 and float64) and random requests (forward,
VJP with and without K-batched cotangents and parameter gradients, JVP, Jacobian in every mode; B from 1 to what a
4 MiB body holds), each sent twice with safetensors bodies both ways: the first computes a plan on a compute
thread and is remembered, the repeat may run inline. Reports the longest inline computations (the server's own
`decode + compute + encode`, from `Server-Timing`; `queue` 0 means the event loop computed it) and the fastest
requests handed to the compute threads. A benchmark: it reports, it asserts nothing.

    ~/.cache/gradserve/venv/bin/python bench/inline_bound.py [--seed 1] [--requests 300] [-- serve flags]

Starts its own server (a private copy of .build/release/gradserve, or $GRADSERVE_BIN).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

import numpy as np
import requests

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e", "support"))
from gradserve_testing.server import ServerProcess  # noqa: E402

from gradserve.tensors import write_safetensors  # noqa: E402

ACTIVATIONS = ["relu", "leaky_relu", "elu", "selu", "gelu", "silu", "sigmoid", "tanh", "softplus", "identity"]


def random_model(rng: random.Random, seed: int, d: int) -> tuple[dict, int]:
    layers, w = [], d
    for layer in range(rng.choice([1, 2, 4, 16, 64, 256])):
        if rng.random() < 0.5:
            out = rng.choice([1, 2, 16, 64, 256, 1024])
            out = max(1, min(out, 2_000_000 // w))
            weight = np.random.default_rng(seed * 1000 + layer).standard_normal((out, w)) / np.sqrt(w)
            layers.append({"op": "linear", "weight": weight.round(4).tolist()})
            w = out
        else:
            layers.append({"op": rng.choice(ACTIVATIONS)})
    return {"inputs": ["x"], "dtype": rng.choice(["float32", "float32", "float64"]), "layers": layers}, w


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--requests", type=int, default=300)
    args, serve_args = ap.parse_known_args()
    rng = random.Random(args.seed)
    server = ServerProcess(extra_args=[a for a in serve_args if a != "--"]).start()
    rows = []
    try:
        session = requests.Session()
        for i in range(args.requests):
            d = rng.choice([1, 2, 8, 64, 784])
            model, d_out = random_model(rng, i, d)
            r = session.post(server.url + "/v1/models", json={"model": model})
            if r.status_code not in (200, 201):
                continue
            op = rng.choice(["forward", "vjp", "jvp", "jacobian"])
            dtype = np.float32 if model["dtype"] == "float32" else np.float64
            per_row = d * (2 if op in ("vjp", "jvp") else 1) * np.dtype(dtype).itemsize
            b = min(max(1, (4 << 20) // per_row - 16), rng.choice([1, 16, 256, 1024, 4096, 65536, 1 << 20]))
            tensors = {"inputs.x": (np.random.default_rng(i).standard_normal((b, d)) * 0.5).astype(dtype)}
            req: dict = {"model": r.json()["id"], "output_encoding": "safetensors"}
            if op == "vjp":
                k = rng.choice([1, 1, 4, 64])
                batched = k > 1 and b * d_out * k * np.dtype(dtype).itemsize < (3 << 20)
                tensors["grad_outputs"] = np.ones((k, b, d_out) if batched else (b, d_out), dtype)
                req.update({"is_grads_batched": batched, "wrt": rng.choice([["x"], ["x", "params"]])})
            if op == "jvp":
                tensors["tangents.x"] = np.ones((b, d), dtype)
            if op == "jacobian":
                req["mode"] = rng.choice(["auto", "forward", "reverse"])
            body = write_safetensors(tensors, {"request": json.dumps(req)})
            if len(body) > (4 << 20):
                continue
            headers = {"Content-Type": "application/octet-stream"}
            session.post(server.url + f"/v1/{op}", data=body, headers=headers, timeout=120)  # remembered
            r = session.post(server.url + f"/v1/{op}", data=body, headers=headers, timeout=120)
            timing = {}
            for part in r.headers.get("Server-Timing", "").split(","):
                if ";dur=" in part:
                    name, value = part.strip().split(";dur=")
                    timing[name] = float(value)
            inline = r.status_code == 200 and timing.get("queue", 1.0) == 0.0
            loop_ms = timing.get("decode", 0) + timing.get("compute", 0) + timing.get("encode", 0)
            shape = [x["op"] if x["op"] != "linear" else f"linear{len(x['weight'][0])}x{len(x['weight'])}" for x in model["layers"]]
            rows.append({"inline": inline, "ms": loop_ms, "status": r.status_code, "op": op, "B": b, "D": d, "dtype": model["dtype"],
                         "mode": req.get("mode"), "layers": shape})
    finally:
        server.stop()
    inline = sorted((r for r in rows if r["inline"]), key=lambda r: -r["ms"])
    pooled = sorted((r for r in rows if not r["inline"] and r["status"] == 200), key=lambda r: r["ms"])
    print(f"seed {args.seed}: {len(rows)} requests, {len(inline)} computed inline; statuses {sorted({r['status'] for r in rows})}")
    print("longest inline (decode + compute + encode):")
    for r in inline[:6]:
        print(f"  {r['ms']:6.2f} ms  {r['op']:<8} B={r['B']:<7} D={r['D']:<4} {r['dtype']} {r['mode'] or ''} {' '.join(r['layers'][:6])}{' …' if len(r['layers']) > 6 else ''}")
    print("fastest handed to a compute thread:", ", ".join(f"{r['ms']:.2f} ms ({r['op']} B={r['B']})" for r in pooled[:5]))


if __name__ == "__main__":
    main()
