#!/usr/bin/env python3
"""Resident memory after large requests, and the warm-page speed of repeated large Jacobians.

    GRADSERVE_VENV/bin/python bench/heap_return.py [--repeats 15] [--out bench/results-heap.json]

The server keeps freed heap blocks (so back-to-back large Jacobians reuse warm pages) and gives
them back to the kernel once it has been idle for ~2 s. This measures both halves on the seed's
ToyMLP (D = 784, width 64, time-varying, float32), Jacobian B = 16 (39 MB of float32 numbers),
answers as safetensors:

  1. warm:  `--repeats` Jacobians back to back; the server's own compute + encode phases
            (Server-Timing), median.
  2. cold:  the same with a 3 s pause before each, so every one starts after a trim.
  3. RSS:   idle baseline, right after the warm run, and 3 s later.

It is a benchmark (machine-dependent by nature), not a test: it reports, it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e" / "support"))
from gradserve_testing.rss import vm_rss  # noqa: E402
from gradserve_testing.server import ServerProcess  # noqa: E402
from gradserve_testing.toymlp import toy_model_json  # noqa: E402

from gradserve.tensors import b64_form  # noqa: E402


def rss(pid: int) -> int:
    return vm_rss(pid) or 0


def phases(r: requests.Response) -> float:
    total = 0.0
    for part in r.headers.get("Server-Timing", "").split(","):
        name, _, dur = part.strip().partition(";dur=")
        if name in ("compute", "encode"):
            total += float(dur)
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results-heap.json"))
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    server = ServerProcess().start()
    url = server.url
    pid = server.proc.pid
    try:
        s = requests.Session()
        mid = s.post(url + "/v1/models", json={"model": toy_model_json(seed=0)}, timeout=60).json()["id"]
        x = rng.normal(size=(16, 784)).astype(np.float32)
        t = rng.uniform(size=16).astype(np.float32)
        body = {"model": mid, "inputs": {"x": b64_form(x), "t": b64_form(t)},
                "output_encoding": "safetensors"}
        time.sleep(3)
        baseline = rss(pid)

        def one() -> float:
            r = s.post(url + "/v1/jacobian", json=body, timeout=120)
            r.raise_for_status()
            assert len(r.content) > 39_000_000
            return phases(r)

        one()  # first touch
        warm = [one() for _ in range(args.repeats)]
        after = rss(pid)
        time.sleep(3)
        settled = rss(pid)
        cold = []
        for _ in range(max(3, args.repeats // 3)):
            time.sleep(3)
            cold.append(one())
        result = {
            "workload": "ToyMLP D=784 w=64 float32, jacobian B=16, safetensors answer",
            "warm_median_ms": statistics.median(warm), "cold_median_ms": statistics.median(cold),
            "warm_ms": warm, "cold_ms": cold,
            "rss_idle_mib": baseline / 2**20, "rss_after_warm_run_mib": after / 2**20, "rss_3s_later_mib": settled / 2**20,
        }
    finally:
        server.stop()
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"warm (back to back)   compute+encode median {result['warm_median_ms']:.1f} ms")
    print(f"cold (after a trim)   compute+encode median {result['cold_median_ms']:.1f} ms")
    print(f"RSS idle {result['rss_idle_mib']:.0f} MiB, after the warm run {result['rss_after_warm_run_mib']:.0f} MiB, "
          f"3 s later {result['rss_3s_later_mib']:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
