#!/usr/bin/env python3
"""Throughput of forward at B = 256 on the ToyMLP with 4 concurrent connections, measured by wrk
(a C load generator, so the client's own cost stays small), for a base64-JSON body and a
safetensors body.

    python bench/wrk_forward.py [--gradserve .build/release/gradserve] [--duration 10] [--workers N]

Needs `wrk` (Debian: apt-get install wrk). Starts its own server (a copy of the binary, a temp
data dir), registers the ToyMLP of bench/load.py once and posts bodies that name it by id.
Client and server share this machine's cores, so the numbers are a lower bound for the server.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np

TESSERACT_RPS = 147.0  # Tesseract Core 1.15 with 2 workers, measured earlier on this machine (not in this run)


def toymlp(rng):
    dims = [(785, 64), (64, 64), (64, 64), (64, 784)]
    weights, layers = {}, []
    for i, (fan_in, out) in enumerate(dims):
        bound = 1 / np.sqrt(fan_in)
        for kind, shape in (("weight", (out, fan_in)), ("bias", (out,))):
            a = rng.uniform(-bound, bound, shape).astype("<f4")
            weights[f"net.{2 * i}.{kind}"] = {"shape": list(shape), "dtype": "float32", "encoding": "base64",
                                               "data": base64.b64encode(a.tobytes()).decode()}
        layers.append({"op": "linear", "weight": f"net.{2 * i}.weight", "bias": f"net.{2 * i}.bias"})
        if i < 3:
            layers.append({"op": "selu"})
    return {"inputs": ["x", "t"], "dtype": "float32", "layers": layers, "weights": weights}


def post(url, body: bytes, ctype="application/json"):
    req = urllib.request.Request(url, data=body, headers={"Content-Type": ctype}, method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, r.read()


def run_wrk(url, body_path, ctype, duration):
    lua = body_path + ".lua"
    with open(lua, "w") as f:
        f.write(f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "{ctype}"\n'
                f'local f = io.open("{body_path}", "rb")\nwrk.body = f:read("*a")\nf:close()\n')
    out = subprocess.run(["wrk", "-t2", "-c4", f"-d{duration}s", "--latency", "-s", lua, url],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = re.search(r"50%\s+([\d.]+)(\w+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, f"{p50.group(1)} {p50.group(2)}" if p50 else "?", int(non2xx.group(1)) if non2xx else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gradserve", default=".build/release/gradserve")
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (apt-get install wrk)")
    tmp = tempfile.mkdtemp(prefix="gradserve-wrk-")
    binary = os.path.join(tmp, "gradserve")
    shutil.copy2(args.gradserve, binary)
    bundle = os.path.join(os.path.dirname(args.gradserve), "gradserve_GradServer.resources")
    if os.path.isdir(bundle):
        shutil.copytree(bundle, os.path.join(tmp, "gradserve_GradServer.resources"))
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    cmd = [binary, "serve", "--port", str(port), "--data-dir", os.path.join(tmp, "data")]
    if args.workers:
        cmd += ["--workers", str(args.workers)]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(base + "/healthz", timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        rng = np.random.default_rng(0)
        status, reg = post(base + "/v1/models", json.dumps({"name": "toymlp", "model": toymlp(rng)}).encode())
        model_id = json.loads(reg)["id"]
        x = rng.standard_normal((256, 784)).astype("<f4")
        t = rng.uniform(0, 1, 256).astype("<f4")

        def b64(a):
            return {"shape": list(a.shape), "dtype": "float32", "encoding": "base64", "data": base64.b64encode(a.tobytes()).decode()}

        json_body = json.dumps({"model": model_id, "inputs": {"x": b64(x), "t": b64(t)}, "output_encoding": "base64"}).encode()
        meta = {"request": json.dumps({"model": model_id, "output_encoding": "safetensors"})}
        header = {"__metadata__": meta,
                  "inputs.x": {"dtype": "F32", "shape": [256, 784], "data_offsets": [0, x.nbytes]},
                  "inputs.t": {"dtype": "F32", "shape": [256], "data_offsets": [x.nbytes, x.nbytes + t.nbytes]}}
        h = json.dumps(header).encode()
        h += b" " * (-len(h) % 8)
        st_body = struct.pack("<Q", len(h)) + h + x.tobytes() + t.tobytes()
        rows = []
        for name, body, ctype in (("base64 JSON in and out", json_body, "application/json"),
                                  ("safetensors in and out", st_body, "application/octet-stream")):
            path = os.path.join(tmp, name.split()[0] + ".body")
            with open(path, "wb") as f:
                f.write(body)
            status, _ = post(base + "/v1/forward", body, ctype)
            assert status == 200, status
            rps, p50, bad = run_wrk(base + "/v1/forward", path, ctype, args.duration)
            rows.append((name, rps, p50, bad))
        info = json.loads(urllib.request.urlopen(base + "/v1/info").read())
        print(f"forward B=256, ToyMLP, wrk -t2 -c4 -d{args.duration}s; server workers {info['workers']}, "
              f"BLAS threads {info['blas']['threads']}, {info['cpu']} ({info['cores']} cores, shared with wrk)\n")
        print("| body | req/s | median latency | non-2xx | vs Tesseract 147 req/s (earlier, not this run) | target ≥ 882 |")
        print("|---|---:|---:|---:|---:|:---:|")
        for name, rps, p50, bad in rows:
            print(f"| {name} | {rps:.0f} | {p50} | {bad} | {rps / TESSERACT_RPS:.1f}× | {'PASS' if rps >= 6 * TESSERACT_RPS else 'FAIL'} |")
    finally:
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
