#!/usr/bin/env python3
"""Throughput of forward at B = 256 on the ToyMLP with 4 concurrent connections, measured by wrk
(a C load generator, so the client's own cost stays small), for a base64-JSON body and a
safetensors body.

    python bench/wrk_forward.py [--gradserve .build/release/gradserve] [--duration 10] [--workers N]

Needs `wrk` (Debian: apt-get install wrk). Starts its own server (a copy of the binary, a temp
data dir, through e2e/support/gradserve_testing), registers the shared ToyMLP once and posts bodies that name it by id.
Client and server share this machine's cores, so the numbers are a lower bound for the server.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e", "support"))
from gradserve_testing.server import ServerProcess  # noqa: E402
from gradserve_testing.toymlp import toy_model_json  # noqa: E402

from gradserve.tensors import b64_form, write_safetensors  # noqa: E402

TESSERACT_RPS = 147.0  # Tesseract Core 1.15 with 2 workers, measured earlier on this machine (not in this run)


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
    server = ServerProcess(os.path.join(tmp, "data"), ["--workers", str(args.workers)] if args.workers else [],
                           binary=args.gradserve)
    try:
        base = server.start().url
        rng = np.random.default_rng(0)
        status, reg = post(base + "/v1/models", json.dumps({"name": "toymlp", "model": toy_model_json(seed=0)}).encode())
        model_id = json.loads(reg)["id"]
        x = rng.standard_normal((256, 784)).astype("<f4")
        t = rng.uniform(0, 1, 256).astype("<f4")

        json_body = json.dumps({"model": model_id, "inputs": {"x": b64_form(x), "t": b64_form(t)}, "output_encoding": "base64"}).encode()
        meta = {"request": json.dumps({"model": model_id, "output_encoding": "safetensors"})}
        st_body = write_safetensors({"inputs.x": x, "inputs.t": t}, meta)
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
        server.stop(10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
