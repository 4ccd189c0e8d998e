#!/usr/bin/env python3
"""Throughput of forward B = 256 on the seed's ToyMLP with real clients: several Python client processes
(not threads of one interpreter) running the project's own client, and wrk (a C load generator), each with
binary (safetensors) and JSON (base64 tensors) bodies both ways; and the transport floor under the same wrk
load, which bounds what any service on this HTTP stack could do on this machine.

    python bench/throughput.py                               # 4 processes and wrk -t2 -c4, 10 s each
    python bench/throughput.py --processes 4 --duration 10 --json bench/results-throughput.json
    python bench/throughput.py --workers 2                   # other flags are passed to `gradserve serve`

Starts its own server (a private copy of .build/release/gradserve, or $GRADSERVE_BIN) and its transport floor
(`gradserve floor`), registers the model once. The Python processes each hold one `gradserve.Client`
(`transport="safetensors"` or `"base64"`; its pooled connection reused) and call `forward(model_id, x, t)`
as a user would: the body encoded, the answer decoded into numpy; they start together (a barrier) and count
answers of the right shape for `--duration` seconds. The first answer of each kind is checked against a
float64 numpy reference. wrk posts a prebuilt body that names the model by id; every answer is checked
for its status and size (within the few bytes its timing numbers vary by).

Client and server share this machine's cores: the report says how the CPU split between the server, the
clients and the rest during each run (from /proc), so a number is read together with what the clients took.
The bound: the floor answers the same exchange (the same body, the same answer bytes) with no computation;
its server CPU per request under wrk, plus the clients' CPU per request (measured in the run itself), plus
the in-process computation (`POST /v1/benchmark`, one thread) is the least CPU one request can take, and the
machine's cores divided by it the most requests per second the clients and a server on this stack can
share them for. wrk needs `apt-get install wrk` (its rows are skipped without it).
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
from gradserve_testing.server import FloorProcess, ServerProcess  # noqa: E402
from gradserve_testing.toymlp import D, ToyReference, toy_model_json, toy_weights  # noqa: E402

import gradserve  # noqa: E402
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


def client_process(url: str, mid: str, x: np.ndarray, t: np.ndarray, transport: str, duration: float, barrier, out) -> None:
    c = gradserve.Client(url, transport=transport, retries=0)
    barrier.wait()
    cpu0 = time.process_time()
    n = bad = 0
    end = time.monotonic() + duration
    while time.monotonic() < end:
        try:
            y = c.forward(mid, x, t).outputs
            ok = y.shape == x.shape
        except gradserve.GradserveError:
            ok = False
        n, bad = (n + 1, bad) if ok else (n, bad + 1)
    out.put((n, bad, time.process_time() - cpu0))
    c.close()


def run_processes(url: str, mid: str, x: np.ndarray, t: np.ndarray, transport: str, procs: int, duration: float, server_pid: int) -> dict:
    ctx = mp.get_context("fork")
    barrier, out = ctx.Barrier(procs + 1), ctx.Queue()
    ps = [ctx.Process(target=client_process, args=(url, mid, x, t, transport, duration, barrier, out)) for _ in range(procs)]
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
        "client_cpu_ms_per_request": clients / max(n, 1) * 1e3,
        "cores_other": max(0.0, (m1 - m0) / wall - (s1 - s0) / wall - clients / wall),
    }


def run_wrk(url: str, body: bytes, ctype: str, duration: float, tmp: str, server_pid: int, headers: dict[str, str] | None = None) -> dict:
    path = os.path.join(tmp, f"body-{len(body)}")
    with open(path, "wb") as f:
        f.write(body)
    lua = path + ".lua"
    with open(lua, "w") as f:
        extra = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in (headers or {}).items())
        f.write(f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "{ctype}"\n{extra}'
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
        "server_cpu_ms_per_request": (s1 - s0) / wall / rps * 1e3,
        "clients_and_other_cpu_ms_per_request": max(0.0, (m1 - m0) / wall - (s1 - s0) / wall) / rps * 1e3,
    }


def in_process_ms(url: str, mid: str) -> float:
    """The forward's computation alone, in the server process on one thread (median of 200)."""
    r = requests.post(url + "/v1/benchmark", json={"model": mid, "operation": "forward", "batch": B, "iterations": 200, "methods": ["forward"]}, timeout=600)
    r.raise_for_status()
    return float(r.json()["results"][0]["median_ms"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--processes", type=int, default=4, help="Python client processes (default 4)")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per run (default 10)")
    ap.add_argument("--gradserve", default=None, help="binary (default $GRADSERVE_BIN or .build/release/gradserve)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args, serve_args = ap.parse_known_args()
    tmp = tempfile.mkdtemp(prefix="gradserve-throughput-")
    server = ServerProcess(extra_args=serve_args, binary=args.gradserve).start()
    floor = FloorProcess(binary=args.gradserve).start()
    has_wrk = shutil.which("wrk") is not None
    rows, bounds = [], {}
    try:
        r = requests.post(server.url + "/v1/models", json={"model": toy_model_json(seed=0)})
        r.raise_for_status()
        mid = r.json()["id"]
        kinds, x, t = bodies(mid)
        want = ToyReference(toy_weights(seed=0)).forward(x, t)
        url = server.url + "/v1/forward"
        info = requests.get(server.url + "/v1/info").json()
        cores = info["cores"]
        compute_ms = in_process_ms(server.url, mid)
        print(f"forward B={B}, ToyMLP, {args.duration:.0f} s per run; server: {info['workers']} workers, {info['cpu']} "
              f"({cores} cores, shared with the clients); its computation alone {compute_ms:.2f} ms (in-process, one thread)", flush=True)
        transports = {"binary": "safetensors", "json": "base64"}
        for kind, (body, ctype) in kinds.items():
            r = requests.post(url, data=body, headers={"Content-Type": ctype})
            r.raise_for_status()
            answer = decode_safetensors_answer(bytearray(r.content)) if kind == "binary" else decode_json_answer(r.json(), np.dtype("<f4"))
            y = gradserve.Client(server.url, transport=transports[kind]).forward(mid, x, t).outputs
            for name, got in (("wrk's body", answer["outputs"]), ("the client", y)):
                err = np.linalg.norm(got - want) / np.linalg.norm(want)
                assert err < 1e-4, f"{kind}, {name}: wrong answer ({err:.2e})"
            procs = run_processes(server.url, mid, x, t, transports[kind], args.processes, args.duration, server.pid)
            row = {"target": "gradserve", "clients": f"{args.processes} Python processes (gradserve.Client)", "bodies": kind, **procs}
            rows.append(row)
            print(f"{row['clients']:<40} {kind:<7} {row['requests_per_s']:7.0f} req/s  bad {row['bad']}  cores: server {row['cores_server']:.2f}, "
                  f"clients {row['cores_clients']:.2f} ({row['client_cpu_ms_per_request']:.2f} ms a request), other {row['cores_other']:.2f}", flush=True)
            if not has_wrk:
                continue
            targets = [("gradserve", url, {})]
            if kind == "binary":
                requests.put(f"{floor.url}/floor/forward", data=r.content, headers={"Content-Type": r.headers["Content-Type"]}).raise_for_status()
                targets.append(("floor", floor.url + "/v1/forward", {"X-Floor-Key": "forward"}))
            for target, u, headers in targets:
                pid = server.pid if target == "gradserve" else floor.pid
                row = {"target": target, "clients": "wrk -t2 -c4", "bodies": kind, **run_wrk(u, body, ctype, args.duration, tmp, pid, headers)}
                rows.append(row)
                print(f"{'wrk -t2 -c4' + (' on the floor' if target == 'floor' else ''):<40} {kind:<7} {row['requests_per_s']:7.0f} req/s  bad {row['bad']}  "
                      f"median {row['median_latency']}  cores: server {row['cores_server']:.2f} ({row['server_cpu_ms_per_request']:.2f} ms a request), "
                      f"wrk and other {row['cores_clients_and_other']:.2f} ({row['clients_and_other_cpu_ms_per_request']:.2f} ms)", flush=True)
            if kind == "binary":
                fl = rows[-1]
                # the least CPU one request takes: the floor's server side and the clients' side of the exchange, and the computation
                bounds["wrk"] = cores / (fl["server_cpu_ms_per_request"] + fl["clients_and_other_cpu_ms_per_request"] + compute_ms) * 1e3
                bounds["processes"] = cores / (fl["server_cpu_ms_per_request"] + procs["client_cpu_ms_per_request"] + compute_ms) * 1e3
    finally:
        server.stop(10)
        floor.stop(10)
        shutil.rmtree(tmp, ignore_errors=True)
    goals = []
    for row in rows:
        if row["bodies"] == "binary" and row["target"] == "gradserve":
            which = "wrk" if row["clients"].startswith("wrk") else "processes"
            goal = GOALS[which]
            g = {"goal": f"{row['clients']}, binary bodies >= {goal:.0f} req/s", "value": row["requests_per_s"], "met": row["requests_per_s"] >= goal}
            if which in bounds:
                g["bound"] = bounds[which]
            goals.append(g)
    for g in goals:
        bound = (f"; at most {g['bound']:.0f} on this machine: cores / (floor's server CPU + clients' CPU + computation) per request"
                 if "bound" in g else "")
        print(f"goal: {g['goal']}: {'met' if g['met'] else 'NOT met'} ({g['value']:.0f}; {g['value'] / TESSERACT_RPS:.1f}x the Tesseract runtime's "
              f"{TESSERACT_RPS:.0f}, measured earlier{bound})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": " ".join(sys.argv), "in_process_compute_ms": compute_ms, "rows": rows, "bounds": bounds, "goals": goals}, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
