#!/usr/bin/env python3
"""Capacity on paper, from the committed benchmark output: requests per second per core for each operation at
the seed's sizes, the replicas a stated load needs, and the autoscaler's targets (docs/capacity.md shows what
this prints; `--check` fails when the document and the benchmarks disagree, `--write` updates the document).

Inputs (standard library only):
- bench/results-core.json (`gradserve bench` through bench/compare_torch.py): compute time of each ToyMLP
  workload on one core (the `threads: 1` run), no HTTP.
- bench/results-load.json (bench/load.py): the server's whole time per request over HTTP (read, decode, plan,
  compute, encode: `breakdown_median_ms.server`) for forward and VJP at B = 256 and the Jacobian at B = 3, and
  the bytes each request and answer took.

Model: one worker computes one request at a time on one core (`--workers` = cores, `--threads-per-request 1`),
so a core serves 1000 / server_ms requests per second. Where the load benchmark did not measure an operation
(JVP, divergence), its server time is its compute time plus the codec cost per megabyte the measured requests
show, times its bytes. Planning keeps replicas at the HPA's CPU target (70 %) and adds one replica so that the
load still fits while one is down (a SIGKILL, a node drain).

    python3 scripts/capacity.py                      # the tables
    python3 scripts/capacity.py --rate 10000 --op jacobian_b3_safetensors --cores 2
    python3 scripts/capacity.py --check              # docs/capacity.md agrees (CI)
    python3 scripts/capacity.py --write              # rewrite the generated part of docs/capacity.md
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORE = REPO / "bench" / "results-core.json"
LOAD = REPO / "bench" / "results-load.json"
DOC = REPO / "docs" / "capacity.md"
BEGIN, END = "<!-- capacity.py: begin -->", "<!-- capacity.py: end -->"

TARGET_CPU = 0.70  # the HPA's CPU target (deploy/kubernetes/hpa.yaml)
CORES = 2  # cores per replica (deploy/kubernetes/deployment.yaml)
MB = 1e6

# (row name, core workload, load result or None, request bytes, answer bytes when not measured)
D, B256 = 784, 256
F32 = 4
B64 = 4 / 3  # base64 inflation
OPERATIONS = [
    ("forward B = 256 (base64)", "toymlp_forward_b256", "forward_b256", None),
    ("VJP B = 256 (base64)", "toymlp_vjp_b256", "vjp_b256", None),
    # JVP: x, t and the tangent in, outputs and jvp out: as many bytes as the VJP moves
    ("JVP B = 256 (base64)", "toymlp_jvp_b256", None, ("vjp_b256",)),
    ("Jacobian B = 3 (base64 answer)", "toymlp_jacobian_auto_b3", "jacobian_b3", None),
    ("Jacobian B = 3 (safetensors answer)", "toymlp_jacobian_auto_b3", "jacobian_b3_safetensors", None),
    # divergence, exact, B = 16: x and t in (base64), 16 numbers out
    ("divergence exact B = 16 (base64)", "toymlp_divergence_exact_b16", None, (16 * (D + 1) * F32 * B64 + 16 * 20,)),
]


def load_json(p: Path) -> dict:
    return json.loads(p.read_text())


def compute_ms(core: dict) -> tuple[dict[str, float], str]:
    run = next(r for r in core["runs"] if r["threads"] == 1)
    return {r["name"]: r["gradserve"]["median_ms"] for r in run["results"]}, core["header"]["host"]


def rows(core: dict, load: dict) -> list[dict]:
    comp, _ = compute_ms(core)
    res = load["results"]
    # codec and HTTP cost per megabyte moved, from the measured requests other than the Jacobian (whose answer
    # is built and copied differently): server time minus compute time, over request + answer bytes
    per_mb = []
    for name, workload in (("forward_b256", "toymlp_forward_b256"), ("vjp_b256", "toymlp_vjp_b256")):
        r = res[name]
        per_mb.append((r["breakdown_median_ms"]["server"] - comp[workload]) / ((r["request_bytes"] + r["response_bytes"]) / MB))
    codec_ms_per_mb = sum(per_mb) / len(per_mb)
    out = []
    for label, workload, measured, estimate in OPERATIONS:
        c = comp[workload]
        if measured is not None:
            server = res[measured]["breakdown_median_ms"]["server"]
            how = "measured (load.py)"
        else:
            (basis,) = estimate
            nbytes = res[basis]["request_bytes"] + res[basis]["response_bytes"] if isinstance(basis, str) else basis
            server = c + codec_ms_per_mb * nbytes / MB
            how = "estimated: compute + codec"
        out.append({"op": label, "compute_ms": c, "server_ms": server, "per_core": 1000.0 / server, "how": how})
    return out


def plan(per_core: float, rate: float, cores: int = CORES, target: float = TARGET_CPU) -> dict:
    need_cores = rate / (per_core * target)
    replicas = math.ceil(need_cores / cores)
    return {"cores": need_cores, "replicas": replicas, "with_spare": replicas + 1}


def render(core: dict, load: dict, rate: float, op_for_rate: str) -> str:
    rs = rows(core, load)
    _, host = compute_ms(core)
    lines = [
        f"Benchmarks: `bench/results-core.json` ({core['header']['date']}, {host}) and `bench/results-load.json` "
        f"({load['date']}). One core serves `1000 / server ms` requests per second; a replica of {CORES} cores at "
        f"the HPA's {TARGET_CPU:.0%} CPU target serves {CORES} × {TARGET_CPU:.0%} of that.",
        "",
        "| operation (seed's ToyMLP, float32) | compute ms | server ms per request | requests/s per core | "
        f"per {CORES}-core replica at {TARGET_CPU:.0%} | server time is |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in rs:
        lines.append(
            f"| {r['op']} | {r['compute_ms']:.2f} | {r['server_ms']:.2f} | {r['per_core']:.0f} | "
            f"{r['per_core'] * CORES * TARGET_CPU:.0f} | {r['how']} |"
        )
    lines += [
        "",
        f"| load | per core | cores at {TARGET_CPU:.0%} | {CORES}-core replicas | with one spare |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rs:
        if not r["op"].startswith("Jacobian") and r["op"] != op_for_rate:
            continue
        p = plan(r["per_core"], rate)
        lines.append(f"| {rate:,.0f}/s {r['op']} | {r['per_core']:.0f}/s | {p['cores']:.1f} | {p['replicas']} | {p['with_spare']} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=10_000, help="requests per second of the stated load (10 000)")
    ap.add_argument("--op", default="Jacobian B = 3 (safetensors answer)", help="operation row the load is made of")
    ap.add_argument("--check", action="store_true", help="fail unless docs/capacity.md shows exactly this output")
    ap.add_argument("--write", action="store_true", help="rewrite the generated part of docs/capacity.md")
    a = ap.parse_args()
    text = render(load_json(CORE), load_json(LOAD), a.rate, a.op)
    if not (a.check or a.write):
        print(text)
        return 0
    doc = DOC.read_text()
    if BEGIN not in doc or END not in doc:
        print(f"{DOC}: markers {BEGIN} … {END} missing", file=sys.stderr)
        return 1
    head, rest = doc.split(BEGIN, 1)
    old, tail = rest.split(END, 1)
    if a.write:
        DOC.write_text(head + BEGIN + "\n" + text + "\n" + END + tail)
        print(f"wrote {DOC.relative_to(REPO)}")
        return 0
    if old.strip() != text.strip():
        print(f"{DOC.relative_to(REPO)} does not match the benchmarks: run python3 scripts/capacity.py --write", file=sys.stderr)
        return 1
    print(f"{DOC.relative_to(REPO)} matches bench/results-*.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
