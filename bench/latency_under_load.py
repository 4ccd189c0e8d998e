#!/usr/bin/env python3
"""Latency of small requests while heavy ones run: wrk measures the small ones (a C client, so the
percentiles are the server's and the kernel's, not a Python interpreter's), Python threads keep the
server busy with large Jacobians and over-budget requests at the same time.

    GRADSERVE_VENV/bin/python bench/latency_under_load.py [--seconds 20] [--connections 8] [--heavy 2]

Needs `wrk` (Debian: apt-get install wrk). Starts its own server (--port 0, a temp data dir, default
flags), registers the seed's ToyMLP (D = 784, width 64, time-varying, float32). Small: forward B = 8 by
id (base64 JSON). Heavy, from `--heavy` threads: Jacobian B = 16 (39 MB safetensors answers) and, one in
ten, a hidden-width blow-up that must be refused (422). Reports wrk's latency percentiles for the small
requests and the answers the heavy threads got. A benchmark: it reports, it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e" / "support"))
from gradserve_testing.server import ServerProcess  # noqa: E402
from gradserve_testing.toymlp import toy_model_json  # noqa: E402

from gradserve.tensors import b64_form  # noqa: E402


def f32(a) -> dict:
    """A float32 tensor in the base64 JSON form."""
    return b64_form(np.asarray(a, dtype=np.float32))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--heavy", type=int, default=2, help="threads sending Jacobians B = 16 back to back")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results-latency-under-load.json"))
    args = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (apt-get install wrk)")

    rng = np.random.default_rng(0)
    tmp = Path(tempfile.mkdtemp(prefix="gs-latency-"))
    server = ServerProcess(tmp / "data").start()
    url = server.url
    try:
        mid = requests.post(url + "/v1/models", json={"model": toy_model_json(seed=0)}, timeout=60).json()["id"]
        small = {"model": mid, "inputs": {"x": f32(rng.normal(size=(8, 784))),
                                          "t": f32(rng.uniform(size=8))}, "output_encoding": "base64"}
        heavy = {"model": mid, "inputs": {"x": f32(rng.normal(size=(16, 784))),
                                          "t": f32(rng.uniform(size=16))}, "output_encoding": "safetensors"}
        column = f32(np.full((65536, 1), 1e-3))
        over = {"model": {"dtype": "float32", "layers": [{"op": "linear", "weight": column},
                                                         {"op": "linear", "weight": f32(np.full((1, 65536), 1e-3))}]},
                "inputs": {"x": f32(np.zeros((65536, 1)))}}
        body = tmp / "small.json"
        body.write_text(json.dumps(small))
        lua = tmp / "post.lua"
        lua.write_text(f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                       f'local f = io.open("{body}", "rb")\nwrk.body = f:read("*a")\nf:close()\n')

        stop = threading.Event()
        statuses: Counter = Counter()

        def busy(i: int) -> None:
            s = requests.Session()
            n = 0
            while not stop.is_set():
                n += 1
                r = s.post(url + "/v1/jacobian", json=over if n % 10 == 0 else heavy, timeout=120)
                statuses[("over" if n % 10 == 0 else "jacobian", r.status_code)] += 1

        threads = [threading.Thread(target=busy, args=(i,), daemon=True) for i in range(args.heavy)]
        for t in threads:
            t.start()
        time.sleep(1)
        out = subprocess.run(["wrk", "-t2", f"-c{args.connections}", f"-d{args.seconds}s", "--latency", "-s", str(lua),
                              url + "/v1/forward"], capture_output=True, text=True, check=True).stdout
        stop.set()
        for t in threads:
            t.join(130)
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    def ms(text: str) -> float:
        v, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()
        return float(v) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    pct = {p: ms(v) for p, v in re.findall(r"^\s+(\d+)%\s+(\S+)", out, re.M)}
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result = {
        "small": "forward B=8, ToyMLP by id, base64 JSON", "heavy": f"{args.heavy} threads: jacobian B=16 (safetensors), 1 in 10 over budget",
        "connections": args.connections, "seconds": args.seconds, "small_requests_per_s": rps,
        "small_latency_ms": pct, "small_non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "heavy_answers": {f"{k}:{s}": n for (k, s), n in sorted(statuses.items())},
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(out)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
