#!/usr/bin/env python3
"""Throughput of forward B = 256 on the seed's ToyMLP with real clients: several Python client processes
(not threads of one interpreter), and wrk (a C load generator), each with binary (safetensors) and JSON
(base64 tensors) bodies both ways.

    python bench/throughput.py                               # 4 processes and wrk -t2 -c4, 10 s each
    python bench/throughput.py --processes 4 --duration 10 --json bench/results-throughput.json
    python bench/throughput.py --workers 2                   # other flags are passed to `gradserve serve`

Starts its own server (a private copy of .build/release/gradserve, or $GRADSERVE_BIN), registers the model
once, and posts prebuilt bodies that name it by id. Every answer is checked for its status and size (within the few bytes its timing numbers vary by); the
first answer of each body is checked against a float64 numpy reference. The Python processes each keep one
`requests.Session` (the connection reused) and read each answer whole; they start together (a barrier) and
count answers for `--duration` seconds.

Client and server share this machine's cores: the report says how the CPU split between the server, the
clients and the rest during each run (from /proc), so a number is read together with what the clients took.
wrk needs `apt-get install wrk` (its rows are skipped without it).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import requests

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e", "support"))
from gradserve_testing.cpu import machine_busy_seconds, process_cpu_seconds  # noqa: E402
from gradserve_testing.server import ServerProcess  # noqa: E402
from gradserve_testing.toymlp import D, ToyReference, toy_model_json, toy_weights  # noqa: E402

from gradserve.tensors import b64_form, decode_json_answer, decode_safetensors_answer, write_safetensors  # noqa: E402

B = 256
TESSERACT_RPS = 147.0  # Tesseract Core 1.15's runtime on this machine, measured earlier (bench/tesseract_compare.py), not in this run
GOALS = {"processes": 600.0, "wrk": 1500.0}  # req/s with binary bodies (issue: end to end as fast as the wire allows)


def bodies(model_id: str) -> tuple[dict[str, tuple[bytes, str]], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, D)).astype("<f4")
    t = rng.uniform(0, 1, B).astype("<f4")
    st = write_safetensors({"inputs.x": x, "inputs.t": t}, {"request": json.dumps({"model": model_id, "output_encoding": "safetensors"})})
    js = json.dumps({"model": model_id, "inputs": {"x": b64_form(x), "t": b64_form(t)}, "output_encoding": "base64"}).encode()
    return {"binary": (st, "application/octet-stream"), "json": (js, "application/json")}, x, t


def client_process(url: str, body: bytes, ctype: str, answer_len: int, duration: float, barrier, out) -> None:
    s = requests.Session()
    headers = {"Content-Type": ctype}
    barrier.wait()
    cpu0 = time.process_time()
    n = bad = 0
    end = time.monotonic() + duration
    while time.monotonic() < end:
        r = s.post(url, data=body, headers=headers, stream=True)
        data = r.raw.read()
        r.close()
        # a JSON answer's length varies with its timing numbers; a safetensors answer's by a few bytes of metadata
        if r.status_code == 200 and abs(len(data) - answer_len) < 256:
            n += 1
        else:
            bad += 1
    out.put((n, bad, time.process_time() - cpu0))


def run_processes(url: str, body: bytes, ctype: str, answer_len: int, procs: int, duration: float, server_pid: int) -> dict:
    ctx = mp.get_context("fork")
    barrier, out = ctx.Barrier(procs + 1), ctx.Queue()
    ps = [ctx.Process(target=client_process, args=(url, body, ctype, answer_len, duration, barrier, out)) for _ in range(procs)]
    for p in ps:
        p.start()
    barrier.wait()
    s0, m0, t0 = process_cpu_seconds(server_pid), machine_busy_seconds(), time.monotonic()
    results = [out.get(timeout=duration + 60) for _ in ps]
    wall = time.monotonic() - t0
    s1, m1 = process_cpu_seconds(server_pid), machine_busy_seconds()
    for p in ps:
        p.join()
    n = sum(r[0] for r in results)
    clients = sum(r[2] for r in results)
    return {
        "requests_per_s": n / duration,
        "answers": n,
        "bad": sum(r[1] for r in results),
        "cores_server": (s1 - s0) / wall,
        "cores_clients": clients / wall,
        "cores_other": max(0.0, (m1 - m0) / wall - (s1 - s0) / wall - clients / wall),
    }


def run_wrk(url: str, body: bytes, ctype: str, duration: float, tmp: str, server_pid: int) -> dict:
    path = os.path.join(tmp, f"body-{len(body)}")
    with open(path, "wb") as f:
        f.write(body)
    lua = path + ".lua"
    with open(lua, "w") as f:
        f.write(f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "{ctype}"\n'
                f'local f = io.open("{path}", "rb")\nwrk.body = f:read("*a")\nf:close()\n')
    s0, m0, t0 = process_cpu_seconds(server_pid), machine_busy_seconds(), time.monotonic()
    out = subprocess.run(["wrk", "-t2", "-c4", f"-d{int(duration)}s", "--latency", "-s", lua, url],
                         capture_output=True, text=True, check=True).stdout
    wall = time.monotonic() - t0
    s1, m1 = process_cpu_seconds(server_pid), machine_busy_seconds()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = re.search(r"50%\s+([\d.]+)(\w+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "requests_per_s": rps,
        "median_latency": f"{p50.group(1)} {p50.group(2)}" if p50 else "?",
        "bad": int(non2xx.group(1)) if non2xx else 0,
        "cores_server": (s1 - s0) / wall,
        "cores_clients_and_other": max(0.0, (m1 - m0) / wall - (s1 - s0) / wall),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--processes", type=int, default=4, help="Python client processes (default 4)")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per run (default 10)")
    ap.add_argument("--gradserve", default=None, help="binary (default $GRADSERVE_BIN or .build/release/gradserve)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args, serve_args = ap.parse_known_args()
    tmp = tempfile.mkdtemp(prefix="gradserve-throughput-")
    server = ServerProcess(extra_args=serve_args, binary=args.gradserve).start()
    rows = []
    try:
        r = requests.post(server.url + "/v1/models", json={"model": toy_model_json(seed=0)})
        r.raise_for_status()
        kinds, x, t = bodies(r.json()["id"])
        want = ToyReference(toy_weights(seed=0)).forward(x, t)
        url = server.url + "/v1/forward"
        info = requests.get(server.url + "/v1/info").json()
        print(f"forward B={B}, ToyMLP, {args.duration:.0f} s per run; server: {info['workers']} workers, {info['cpu']} "
              f"({info['cores']} cores, shared with the clients)", flush=True)
        for kind, (body, ctype) in kinds.items():
            r = requests.post(url, data=body, headers={"Content-Type": ctype})
            r.raise_for_status()
            answer = decode_safetensors_answer(bytearray(r.content)) if kind == "binary" else decode_json_answer(r.json(), np.dtype("<f4"))
            err = np.linalg.norm(answer["outputs"] - want) / np.linalg.norm(want)
            assert err < 1e-4, f"{kind}: wrong answer ({err:.2e})"
            row = {"clients": f"{args.processes} Python processes", "bodies": kind, **run_processes(url, body, ctype, len(r.content), args.processes, args.duration, server.pid)}
            rows.append(row)
            print(f"{row['clients']:<22} {kind:<7} {row['requests_per_s']:7.0f} req/s  bad {row['bad']}  cores: server {row['cores_server']:.2f}, "
                  f"clients {row['cores_clients']:.2f}, other {row['cores_other']:.2f}", flush=True)
            if shutil.which("wrk"):
                row = {"clients": "wrk -t2 -c4", "bodies": kind, **run_wrk(url, body, ctype, args.duration, tmp, server.pid)}
                rows.append(row)
                print(f"{row['clients']:<22} {kind:<7} {row['requests_per_s']:7.0f} req/s  bad {row['bad']}  median {row['median_latency']}  "
                      f"cores: server {row['cores_server']:.2f}, wrk and other {row['cores_clients_and_other']:.2f}", flush=True)
    finally:
        server.stop(10)
        shutil.rmtree(tmp, ignore_errors=True)
    goals = []
    for row in rows:
        if row["bodies"] == "binary":
            goal = GOALS["wrk" if row["clients"].startswith("wrk") else "processes"]
            goals.append({"goal": f"{row['clients']}, binary bodies >= {goal:.0f} req/s", "value": row["requests_per_s"], "met": row["requests_per_s"] >= goal})
    for g in goals:
        print(f"goal: {g['goal']}: {'met' if g['met'] else 'NOT met'} ({g['value']:.0f}; {g['value'] / TESSERACT_RPS:.1f}x the Tesseract runtime's {TESSERACT_RPS:.0f}, measured earlier)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": " ".join(sys.argv), "rows": rows, "goals": goals}, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
