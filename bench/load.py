#!/usr/bin/env python3
# One file on purpose, over the ~400-line guideline: one self-contained benchmark (the lean client it
# times, the workloads with their numpy checks, the CPU accounting and the report), so it runs alone
# against any server and its numbers trace to one place.
"""End-to-end load test of gradserve from a Python client over loopback (ToyMLP).

    python bench/load.py                                  # starts .build/release/gradserve itself
    python bench/load.py --iterations 50 --duration 5     # quicker
    python bench/load.py --workers 2 --json out.json      # server flags pass through; also write JSON
    python bench/load.py --url http://127.0.0.1:8080      # measure a server that is already running

Model (the ToyMLP of bench/compare_torch.py): float32, inputs ["x", "t"], x [B, 784], t [B],
Linear(785,64) -> SELU -> Linear(64,64) -> SELU -> Linear(64,64) -> SELU -> Linear(64,784),
t appended as the last input column. Weights are built with numpy (seeded) the way torch
initialises nn.Linear (uniform in +-1/sqrt(fan_in) for weight and bias) and named like the
state_dict of an nn.Sequential: net.0.weight / net.0.bias, net.2.*, net.4.*, net.6.*.
The model is registered once (POST /v1/models, weights as base64 tensors) and every request
names it by id.

What is timed (one requests.Session per client, so the connection is reused):
  latency  = from the numpy inputs (before the request body is serialised: base64 + JSON) to the
             parsed numpy result (after the answer is decoded: JSON + base64, or safetensors).
             Reported as median and p95 over --iterations (--jacobian-iterations for the
             Jacobian) after --warmup untimed requests, with a breakdown: client encode, server
             (sum of the Server-Timing phases), transport + HTTP (the rest of the round trip),
             client decode.
  workloads: forward B=256; VJP B=256 (grad_outputs [256, 784], wrt x); Jacobian B=3 (wrt x,
             mode auto) with base64 tensors in JSON, and again with output_encoding safetensors.
  throughput: forward B=256, --concurrency clients (threads, each its own Session) for
             --duration seconds; completed, checked requests per second.
Before timing, the forward, the VJP and both Jacobian answers are checked once against a numpy
reference (float64 math, float32 tolerance), so the benchmark cannot silently time errors; every
timed answer must be 200 with the expected shape.

The Tesseract Core 1.15 numbers are constants: a reference measured earlier on this machine, not
in this run. Targets: a quarter of each reference time, six times the reference throughput.
Note that client and server share this machine's cores; the report says how busy the client, the
server and other processes kept them during each workload, and warns when others were busy.

The client avoids overheads that are not gradserve's: base64 text is spliced into the request JSON
rather than passed through json.dumps, and the answer is read in one raw read rather than through
requests' 10 KiB-chunked `.content`. Python's own base64 and JSON parsing remain in the timing: they
are what a Python caller pays (the breakdown shows them as "client encode" and "client decode").
"""

from __future__ import annotations

import argparse
import base64
import datetime as _dt
import json
import os
import re
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable

import numpy as np
import requests

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e", "support"))
from gradserve_testing.cpu import machine_busy_seconds, process_cpu_seconds  # noqa: E402
from gradserve_testing.report import cpu_name as machine_cpu, write_json_text  # noqa: E402
from gradserve_testing.server import ServerProcess  # noqa: E402
from gradserve_testing.toymlp import D, ToyReference as Reference, toy_model_json, toy_weights  # noqa: E402

from gradserve.tensors import read_safetensors  # noqa: E402

# Tesseract Core 1.15, measured earlier on this machine (not in this run).
REFERENCE_LABEL = "Tesseract Core 1.15 (reference measured earlier, not in this run)"
REFERENCE = {
    "forward_b256": 13.0,            # ms
    "vjp_b256": 21.0,                # ms
    "jacobian_b3": 176.0,            # ms
    "jacobian_b3_safetensors": 176.0,  # ms (same reference: Tesseract has no binary answer)
    "throughput_forward_b256": 147.0,  # req/s, 2 workers
}
REFERENCE_NOTE = {"throughput_forward_b256": "2 workers"}
TIME_TARGET_FACTOR = 0.25   # target time = reference / 4
THROUGHPUT_TARGET_FACTOR = 6.0  # target req/s = 6 x reference

# a workload is flagged when other processes kept more than this many cores busy during it
OTHER_LOAD_WARN = 0.25

# float32 tolerance against the float64 numpy reference
RTOL, ATOL = 1e-4, 1e-5


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ==========================================================================
# model, reference
# ==========================================================================

def check_close(name: str, got: np.ndarray, want: np.ndarray) -> float:
    if got.shape != want.shape:
        raise SystemExit(f"correctness check failed: {name}: shape {got.shape}, expected {want.shape}")
    if got.dtype != np.float32:
        raise SystemExit(f"correctness check failed: {name}: dtype {got.dtype}, expected float32")
    if not np.all(np.isfinite(got)):
        raise SystemExit(f"correctness check failed: {name}: non-finite values")
    err = np.abs(got.astype(np.float64) - want)
    bad = err > ATOL + RTOL * np.abs(want)
    if bad.any():
        i = np.unravel_index(np.argmax(err - RTOL * np.abs(want)), err.shape)
        raise SystemExit(
            f"correctness check failed: {name}: {int(bad.sum())} of {got.size} elements off "
            f"(worst at {tuple(int(k) for k in i)}: got {got[i]!r}, expected {want[i]!r})")
    return float(err.max())


# ==========================================================================
# codecs
# ==========================================================================

def b64_tensor(a: np.ndarray) -> dict[str, Any]:
    a = np.ascontiguousarray(a, dtype=np.float32)
    return {"shape": list(a.shape), "dtype": "float32", "encoding": "base64",
            "data": base64.b64encode(a.astype("<f4", copy=False).tobytes()).decode("ascii")}


_BLOB = re.compile(rb'"__gradserve_load_blob_(\d+)__"')


def encode_body(doc: dict[str, Any]) -> bytes:
    """JSON body with every numpy array as a base64 tensor. The base64 text is spliced in as bytes
    rather than passed through json.dumps (which would scan and copy every megabyte of it twice)."""
    blobs: list[bytes] = []

    def sub(o: Any) -> Any:
        if isinstance(o, np.ndarray):
            a = np.ascontiguousarray(o, dtype="<f4")
            blobs.append(base64.b64encode(a.data))
            return {"shape": list(a.shape), "dtype": "float32", "encoding": "base64",
                    "data": f"__gradserve_load_blob_{len(blobs) - 1}__"}
        if isinstance(o, dict):
            return {k: sub(v) for k, v in o.items()}
        return o

    parts = _BLOB.split(json.dumps(sub(doc), separators=(",", ":")).encode())
    # parts: text, index, text, index, ..., text
    out = []
    for i, part in enumerate(parts):
        out.append(part if i % 2 == 0 else b'"' + blobs[int(part)] + b'"')
    return b"".join(out)


def from_b64_tensor(obj: Any, path: str) -> np.ndarray:
    if not isinstance(obj, dict) or obj.get("encoding") != "base64":
        raise ValueError(f"{path}: expected a base64 tensor, got {str(obj)[:200]}")
    dt = {"float32": "<f4", "float64": "<f8"}[obj["dtype"]]
    return np.frombuffer(base64.b64decode(obj["data"]), dtype=dt).reshape(obj["shape"])


def server_timing_ms(resp: requests.Response) -> float | None:
    h = resp.headers.get("Server-Timing")
    if not h:
        return None
    total = 0.0
    for part in h.split(","):
        for field in part.split(";")[1:]:
            field = field.strip()
            if field.startswith("dur="):
                total += float(field[4:])
    return total


# ==========================================================================
# server
# ==========================================================================

class Server:
    """The measured server: the one at --url, else one started by the shared test support
    (gradserve_testing.server: a private copy of --gradserve, a temporary data dir, --port 0)."""

    def __init__(self, args: argparse.Namespace):
        self.process: ServerProcess | None = None
        self.proc: subprocess.Popen | None = None
        self.tmp: str | None = None
        self.url = args.url.rstrip("/") if args.url else None
        self.args = args

    def start(self) -> str:
        if self.url:
            return self.url
        src = self.args.gradserve
        if not os.path.isfile(src):
            raise SystemExit(f"no gradserve binary at {src} (build it, pass --gradserve, or --url)")
        self.tmp = tempfile.mkdtemp(prefix="gradserve-load-")
        data_dir = os.path.join(self.tmp, "data")
        os.makedirs(data_dir)
        extra = []
        if self.args.workers is not None:
            extra += ["--workers", str(self.args.workers)]
        if self.args.blas_threads is not None:
            extra += ["--blas-threads", str(self.args.blas_threads)]
        self.process = ServerProcess(data_dir, extra, binary=src)
        log(f"starting {' '.join(self.process.command())}")
        try:
            self.process.start(timeout=self.args.start_timeout)
        except RuntimeError as e:
            raise SystemExit(f"gradserve did not start: {e}") from None
        self.proc = self.process.proc
        self.url = self.process.url
        return self.url

    def log_tail(self, n: int = 4000) -> str:
        return self.process.log(n) if self.process is not None else ""

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
        if self.tmp and not self.args.keep_tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
        elif self.tmp:
            log_path = os.path.join(self.tmp, "server.log")
            if self.process is not None and self.process.log_path is not None:
                shutil.copy2(self.process.log_path, log_path)
            log(f"kept {self.tmp} (server log: {log_path})")


# ==========================================================================
# requests
# ==========================================================================

class Failure(Exception):
    pass


def call(session: requests.Session, url: str, body: bytes) -> tuple[requests.Response, bytes]:
    """POST and read the whole answer in one read: requests' `.content` reads in 10 KiB pieces,
    which costs a Python client ~10 ms on a 10 MB answer. raw.read() to the end also hands the
    connection back to the Session's pool (keep-alive)."""
    resp = session.post(url, data=body, headers={"Content-Type": "application/json"}, stream=True)
    data = resp.raw.read(decode_content=True)
    if resp.status_code != 200:
        raise Failure(f"POST {url}: HTTP {resp.status_code}: {data[:1000].decode('utf-8', 'replace')}")
    return resp, data


class Workload:
    """One timed request: build(inputs) -> body bytes; parse(response) -> numpy result."""

    def __init__(self, key: str, title: str, path: str, build: Callable[[], bytes],
                 parse: Callable[[requests.Response, bytes], np.ndarray], expect_shape: tuple[int, ...]):
        self.key, self.title, self.path = key, title, path
        self.build, self.parse, self.expect_shape = build, parse, expect_shape

    def once(self, session: requests.Session, base: str) -> tuple[np.ndarray, dict[str, float]]:
        t0 = time.perf_counter()
        body = self.build()
        t1 = time.perf_counter()
        resp, data = call(session, base + self.path, body)
        t2 = time.perf_counter()
        out = self.parse(resp, data)
        t3 = time.perf_counter()
        if out.shape != self.expect_shape or out.dtype != np.float32:
            raise Failure(f"{self.key}: answer {out.dtype} {out.shape}, expected float32 {self.expect_shape}")
        srv = server_timing_ms(resp)
        round_trip = (t2 - t1) * 1e3
        parts = {
            "total": (t3 - t0) * 1e3,
            "encode": (t1 - t0) * 1e3,
            "round_trip": round_trip,
            "decode": (t3 - t2) * 1e3,
            "server": srv if srv is not None else float("nan"),
            "transport": round_trip - srv if srv is not None else float("nan"),
            "response_bytes": float(len(data)),
            "request_bytes": float(len(body)),
        }
        return out, parts


def json_answer(field_path: list[str]) -> Callable[[requests.Response, bytes], np.ndarray]:
    def parse(resp: requests.Response, data: bytes) -> np.ndarray:
        obj = json.loads(data)
        for k in field_path:
            obj = obj[k]
        return from_b64_tensor(obj, ".".join(field_path))
    return parse


def safetensors_answer(name: str) -> Callable[[requests.Response, bytes], np.ndarray]:
    def parse(resp: requests.Response, data: bytes) -> np.ndarray:
        ct = resp.headers.get("Content-Type", "")
        if not ct.startswith("application/octet-stream"):
            raise Failure(f"safetensors answer has Content-Type {ct!r}")
        tensors, _ = read_safetensors(data)
        if name not in tensors:
            raise Failure(f"safetensors answer lacks {name!r} (has {sorted(tensors)})")
        return tensors[name]
    return parse


def stats(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0 or np.all(np.isnan(a)):
        return {"median": float("nan"), "p95": float("nan"), "min": float("nan"), "mean": float("nan")}
    return {"median": float(np.nanmedian(a)), "p95": float(np.nanpercentile(a, 95)),
            "min": float(np.nanmin(a)), "mean": float(np.nanmean(a))}


def measure_latency(w: Workload, base: str, warmup: int, iterations: int, server_pid: int | None = None) -> dict[str, Any]:
    session = requests.Session()
    for _ in range(warmup):
        w.once(session, base)
    samples: dict[str, list[float]] = {}
    watch = CpuWatch(server_pid).start()
    for _ in range(iterations):
        _, parts = w.once(session, base)
        for k, v in parts.items():
            samples.setdefault(k, []).append(v)
    cores = watch.stop()
    session.close()
    return {
        "cpu_cores_busy": cores,
        "iterations": iterations,
        "warmup": warmup,
        "ms": stats(samples["total"]),
        "breakdown_median_ms": {k: stats(samples[k])["median"]
                                for k in ("encode", "round_trip", "server", "transport", "decode")},
        "request_bytes": int(samples["request_bytes"][0]),
        "response_bytes": int(samples["response_bytes"][0]),
    }


class CpuWatch:
    """CPU seconds used by this client process, the server process (when known) and the whole machine
    between start() and stop(), so that a report can say how busy *other* processes kept the cores."""

    def __init__(self, server_pid: int | None):
        self.server_pid = server_pid

    def _snap(self) -> tuple[float, float | None, float | None, float | None]:
        return (time.perf_counter(), process_cpu_seconds(None),
                process_cpu_seconds(self.server_pid) if self.server_pid else None, machine_busy_seconds())

    def start(self) -> "CpuWatch":
        self.a = self._snap()
        return self

    def stop(self) -> dict[str, float | None]:
        b = self._snap()
        wall = b[0] - self.a[0]

        def d(i: int) -> float | None:
            return (b[i] - self.a[i]) / wall if b[i] is not None and self.a[i] is not None and wall > 0 else None

        client, server, machine = d(1), d(2), d(3)
        other = None
        if machine is not None and client is not None and server is not None:
            other = max(0.0, machine - client - server)
        return {"client": client, "server": server, "machine": machine, "other": other}


def measure_throughput(w: Workload, base: str, clients: int, duration: float, warmup: int,
                       server_pid: int | None = None) -> dict[str, Any]:
    barrier = threading.Barrier(clients + 1)
    stop_at = [0.0]
    results: list[dict[str, Any]] = [{} for _ in range(clients)]

    def worker(i: int) -> None:
        session = requests.Session()
        lat: list[float] = []
        errors: list[str] = []
        try:
            for _ in range(warmup):
                w.once(session, base)
        except Exception as e:  # noqa: BLE001
            errors.append(f"warmup: {e}")
        barrier.wait()
        while time.perf_counter() < stop_at[0]:
            try:
                _, parts = w.once(session, base)
                lat.append(parts["total"])
            except Exception as e:  # noqa: BLE001
                errors.append(str(e)[:300])
                if len(errors) > 50:
                    break
        session.close()
        results[i] = {"latencies": lat, "errors": errors}

    stop_at[0] = float("inf")  # until every client is warm; the loop re-reads it each request
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    stop_at[0] = t0 + duration
    watch = CpuWatch(server_pid).start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    cores = watch.stop()
    lat = [x for r in results for x in r["latencies"]]
    errors = [e for r in results for e in r["errors"]]
    completed = len(lat)
    return {
        "clients": clients,
        "duration_s": elapsed,
        "completed": completed,
        "errors": len(errors),
        "error_samples": errors[:5],
        "req_per_s": completed / elapsed if elapsed > 0 else 0.0,
        "per_client": [len(r["latencies"]) for r in results],
        "latency_ms": stats(lat),
        "cpu_cores_busy": cores,  # CPU seconds per wall second during the run (client process, server process)
    }


# ==========================================================================
# main
# ==========================================================================

def finite(o: Any) -> Any:
    """NaN / inf -> null, so that --json writes strict JSON."""
    if isinstance(o, float):
        return o if o == o and abs(o) != float("inf") else None
    if isinstance(o, dict):
        return {k: finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [finite(v) for v in o]
    return o


def fmt_cores(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def fmt_busy(c: dict[str, float | None]) -> str:
    return " / ".join(fmt_cores(c.get(k)) for k in ("client", "server", "other"))


def fmt_ms(x: float) -> str:
    return "n/a" if x != x else (f"{x:.2f} ms" if x < 100 else f"{x:.1f} ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--url", help="measure this running server instead of starting one")
    ap.add_argument("--gradserve", default=".build/release/gradserve", help="binary to start (copied to a temp dir first)")
    ap.add_argument("--workers", type=int, default=None, help="passed to `gradserve serve --workers` (default: the server's)")
    ap.add_argument("--blas-threads", type=int, default=None, help="passed to `gradserve serve --blas-threads`")
    ap.add_argument("--iterations", type=int, default=200, help="timed iterations for forward and VJP (default 200)")
    ap.add_argument("--jacobian-iterations", type=int, default=50, help="timed iterations for the Jacobians (default 50)")
    ap.add_argument("--warmup", type=int, default=10, help="untimed requests before each workload (default 10)")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of the throughput run (default 10)")
    ap.add_argument("--concurrency", type=int, default=4, help="client threads in the throughput run (default 4)")
    ap.add_argument("--no-vjp-outputs", action="store_true",
                    help='send "return_outputs": false with the VJP (default: the API default, which also returns outputs)')
    ap.add_argument("--seed", type=int, default=0, help="seed of weights and inputs")
    ap.add_argument("--json", metavar="PATH", help="also write the numbers as JSON to PATH ('-' = stdout)")
    ap.add_argument("--start-timeout", type=float, default=30.0, help="seconds to wait for /healthz")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (data dir, server log)")
    args = ap.parse_args()
    if args.iterations < 1 or args.jacobian_iterations < 1 or args.warmup < 0 or args.duration <= 0 or args.concurrency < 1:
        ap.error("iterations >= 1, warmup >= 0, duration > 0, concurrency >= 1")

    server = Server(args)
    try:
        base = server.start()
        return run(args, base, server)
    except Failure as e:
        log(f"FAILED: {e}")
        tail = server.log_tail()
        if tail:
            log(f"server log tail:\n{tail}")
        return 1
    finally:
        server.stop()


def run(args: argparse.Namespace, base: str, server: Server) -> int:
    try:
        with open("/proc/loadavg") as f:
            loadavg_start = " ".join(f.read().split()[:3])
    except OSError:
        loadavg_start = "n/a"
    session = requests.Session()
    info = session.get(base + "/v1/info").json()

    # ---- model, registered once
    weights = toy_weights(seed=args.seed)
    ref = Reference(weights)
    reg = session.post(base + "/v1/models", data=json.dumps({"name": "toymlp-load-bench", "model": toy_model_json(seed=args.seed)}),
                       headers={"Content-Type": "application/json"})
    if reg.status_code not in (200, 201):
        raise Failure(f"POST /v1/models: HTTP {reg.status_code}: {reg.text[:1000]}")
    model_id = reg.json()["id"]
    log(f"registered model {model_id} (HTTP {reg.status_code})")

    # ---- inputs
    rng = np.random.default_rng(args.seed + 1)
    x256 = rng.standard_normal((256, D), dtype=np.float32)
    t256 = rng.uniform(0, 1, 256).astype(np.float32)
    v256 = rng.standard_normal((256, D), dtype=np.float32)
    x3 = rng.standard_normal((3, D), dtype=np.float32)
    t3 = rng.uniform(0, 1, 3).astype(np.float32)

    def body(x: np.ndarray, t: np.ndarray, **extra: Any) -> bytes:
        doc = {"model": model_id, "inputs": {"x": x, "t": t}, "output_encoding": "base64", **extra}
        return encode_body(doc)

    # the spliced body must be the JSON that json.dumps would give
    probe = body(x3, t3, wrt=["x"], grad_outputs=x3)
    want = {"model": model_id, "inputs": {"x": b64_tensor(x3), "t": b64_tensor(t3)}, "output_encoding": "base64",
            "wrt": ["x"], "grad_outputs": b64_tensor(x3)}
    if json.loads(probe) != want:
        raise Failure("encode_body does not round-trip")
    vjp_extra: dict[str, Any] = {"return_outputs": False} if args.no_vjp_outputs else {}

    forward = Workload("forward_b256", "forward B=256", "/v1/forward",
                       lambda: body(x256, t256), json_answer(["outputs"]), (256, D))
    vjp = Workload("vjp_b256", "VJP B=256 (wrt x)", "/v1/vjp",
                   lambda: body(x256, t256, grad_outputs=v256, wrt=["x"], **vjp_extra), json_answer(["grads", "x"]), (256, D))
    jac = Workload("jacobian_b3", "Jacobian B=3 (wrt x, auto), base64", "/v1/jacobian",
                   lambda: body(x3, t3, wrt=["x"], mode="auto"), json_answer(["jacobian", "x"]), (3, D, D))
    jac_st = Workload("jacobian_b3_safetensors", "Jacobian B=3 (wrt x, auto), safetensors", "/v1/jacobian",
                      lambda: body(x3, t3, wrt=["x"], mode="auto", output_encoding="safetensors"),
                      safetensors_answer("jacobian.x"), (3, D, D))

    # ---- correctness, once, before any timing
    checks = {}
    y, _ = forward.once(session, base)
    checks["forward_b256"] = check_close("forward B=256", y, ref.forward(x256, t256))
    g, _ = vjp.once(session, base)
    checks["vjp_b256"] = check_close("VJP B=256 wrt x", g, ref.vjp_x(x256, t256, v256))
    J, _ = jac.once(session, base)
    checks["jacobian_b3"] = check_close("Jacobian B=3 wrt x (base64)", J, ref.jacobian_x(x3, t3))
    Js, _ = jac_st.once(session, base)
    if not np.array_equal(J, Js):
        raise Failure("the safetensors Jacobian differs from the base64 one")
    checks["jacobian_b3_safetensors"] = checks["jacobian_b3"]
    _, probe = call(session, base + "/v1/jacobian", body(x3[:1], t3[:1], wrt=["x"], mode="auto"))
    mode_used = json.loads(probe).get("mode")
    session.close()
    log("correctness: " + ", ".join(f"{k} max|err| {v:.2e}" for k, v in checks.items()) + f" (auto mode used: {mode_used})")

    # ---- latency
    server_pid = server.proc.pid if server.proc is not None else None
    results: dict[str, Any] = {}
    for w, n in ((forward, args.iterations), (vjp, args.iterations), (jac, args.jacobian_iterations),
                 (jac_st, args.jacobian_iterations)):
        log(f"latency: {w.title}: {args.warmup} warmup + {n} timed")
        results[w.key] = measure_latency(w, base, args.warmup, n, server_pid)
        log(f"  median {fmt_ms(results[w.key]['ms']['median'])}, p95 {fmt_ms(results[w.key]['ms']['p95'])}")

    # ---- throughput
    log(f"throughput: forward B=256, {args.concurrency} clients, {args.duration:g} s")
    tp = measure_throughput(forward, base, args.concurrency, args.duration, max(1, args.warmup // 2), server_pid)
    results["throughput_forward_b256"] = tp
    log(f"  {tp['req_per_s']:.1f} req/s, {tp['completed']} completed, {tp['errors']} errors")
    if tp["errors"]:
        log("  error samples: " + " | ".join(tp["error_samples"]))
    info_after = requests.get(base + "/v1/info").json()

    # ---- report
    blas = info.get("blas", {})
    cpu = machine_cpu()
    header = [
        "# gradserve end-to-end load test (Python client, loopback)",
        "",
        f"- date: {_dt.datetime.now().isoformat(timespec='seconds')}",
        f"- load average at start: {loadavg_start}",
        f"- machine CPU: {cpu}, {os.cpu_count()} logical CPUs ({platform.machine()}, {platform.system()} {platform.release()}); "
        f"client and server share them",
        f"- server: gradserve {info.get('version')} at {base}"
        + ("" if args.url else f" (started from {args.gradserve})")
        + f"; cpu {info.get('cpu')!r}, cores {info.get('cores')}",
        f"- server BLAS: {blas.get('library')} {blas.get('version')} ({blas.get('core')}), threads {blas.get('threads')}; "
        f"workers {info.get('workers')}",
        f"- client: Python {platform.python_version()}, numpy {np.__version__}, requests {requests.__version__}; "
        f"one requests.Session per client (keep-alive), base64 tensors in, output_encoding base64 (or safetensors) out",
        f"- model {model_id}: ToyMLP float32, x [B, {D}] + t [B], 785-64-64-64-784 SELU, registered once, named by id",
        f"- latency = numpy inputs -> serialise body -> POST -> parsed numpy result; warmup {args.warmup}; "
        f"iterations {args.iterations} (Jacobian {args.jacobian_iterations}); Jacobian auto mode used: {mode_used}; "
        + ("VJP answer without outputs (--no-vjp-outputs)" if args.no_vjp_outputs
           else "VJP answer carries outputs and grads.x (API default)"),
        f"- correctness (numpy float64 reference, rtol {RTOL:g} atol {ATOL:g}): "
        + ", ".join(f"{k} max|err| {v:.1e}" for k, v in checks.items()) + "; all PASS",
        "",
    ]
    rows = []
    table = [
        f"| workload | gradserve median | gradserve p95 | {REFERENCE_LABEL} | target | result |",
        "|---|---:|---:|---:|---:|:---:|",
    ]
    for w in (forward, vjp, jac, jac_st):
        r = results[w.key]
        refv = REFERENCE[w.key]
        target = refv * TIME_TARGET_FACTOR
        ok = r["ms"]["median"] <= target
        r.update({"reference_ms": refv, "target_ms": target, "pass": ok})
        table.append(f"| {w.title} | {fmt_ms(r['ms']['median'])} | {fmt_ms(r['ms']['p95'])} | {refv:g} ms | "
                     f"≤ {target:g} ms | {'PASS' if ok else 'FAIL'} |")
        rows.append(ok)
    refv = REFERENCE["throughput_forward_b256"]
    target = refv * THROUGHPUT_TARGET_FACTOR
    ok = tp["req_per_s"] >= target and tp["errors"] == 0
    tp.update({"reference_req_per_s": refv, "reference_note": REFERENCE_NOTE["throughput_forward_b256"],
               "target_req_per_s": target, "pass": ok})
    table.append(f"| throughput: forward B=256, {args.concurrency} clients, {tp['duration_s']:.1f} s | "
                 f"{tp['req_per_s']:.0f} req/s | {fmt_ms(tp['latency_ms']['p95'])} (latency) | "
                 f"{refv:g} req/s ({REFERENCE_NOTE['throughput_forward_b256']}) | ≥ {target:g} req/s | "
                 f"{'PASS' if ok else 'FAIL'} |")
    rows.append(ok)

    breakdown = [
        "",
        "Median breakdown (ms): client encode (numpy -> body) | server (sum of Server-Timing: queue, decode, compute, "
        "encode) | the rest of the round trip (loopback, HTTP, server body read and response write) | client decode "
        "(answer -> numpy)",
        "",
        "| workload | client encode | server | rest of round trip | client decode | request bytes | response bytes "
        "| cores busy: client / server / other processes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for w in (forward, vjp, jac, jac_st):
        b = results[w.key]["breakdown_median_ms"]
        breakdown.append(f"| {w.title} | {b['encode']:.2f} | {b['server']:.2f} | {b['transport']:.2f} | "
                         f"{b['decode']:.2f} | {results[w.key]['request_bytes']:,} | {results[w.key]['response_bytes']:,} | "
                         f"{fmt_busy(results[w.key]['cpu_cores_busy'])} |")
    footer = [
        "",
        f"Throughput: {tp['completed']} requests in {tp['duration_s']:.2f} s, per client {tp['per_client']}, "
        f"errors {tp['errors']}; latency under load median {fmt_ms(tp['latency_ms']['median'])}; "
        f"cores busy (client / server / other processes): {fmt_busy(tp['cpu_cores_busy'])} of {os.cpu_count()}.",
        f"Reference column: {REFERENCE_LABEL}. Targets: a quarter of each reference time; "
        f"{THROUGHPUT_TARGET_FACTOR:g}x the reference throughput. A latency row passes when its median meets the target.",
    ]
    noisy = [(k, r["cpu_cores_busy"]["other"]) for k, r in results.items()
             if (r.get("cpu_cores_busy") or {}).get("other") is not None and r["cpu_cores_busy"]["other"] > OTHER_LOAD_WARN]
    if noisy:
        footer.append("")
        footer.append("**WARNING: other processes were busy during " + ", ".join(f"{k} ({v:.2f} cores)" for k, v in noisy)
                      + f" on this {os.cpu_count()}-CPU machine; those numbers are inflated. Rerun on a quiet machine.**")
    footer += ["", f"**{sum(rows)}/{len(rows)} targets met.**"]
    print("\n".join(header + table + breakdown + footer), flush=True)

    if args.json:
        doc = {
            "date": _dt.datetime.now().isoformat(timespec="seconds"),
            "machine": {"cpu": cpu, "logical_cpus": os.cpu_count(), "platform": platform.platform()},
            "server": {"url": base, "started": not args.url, "info": info, "info_after": info_after},
            "client": {"python": platform.python_version(), "numpy": np.__version__, "requests": requests.__version__},
            "settings": {k: getattr(args, k) for k in ("iterations", "jacobian_iterations", "warmup", "duration",
                                                         "concurrency", "seed", "workers", "blas_threads",
                                                         "no_vjp_outputs")},
            "loadavg_start": loadavg_start,
            "model_id": model_id,
            "jacobian_mode_used": mode_used,
            "correctness_max_abs_err": checks,
            "reference": {"label": REFERENCE_LABEL, "values": REFERENCE, "notes": REFERENCE_NOTE},
            "results": results,
            "targets_met": sum(rows),
            "targets_total": len(rows),
        }
        write_json_text(json.dumps(finite(doc), indent=2, default=float), args.json, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
