"""Shared pieces of the adversarial suite (test_adversarial_*.py): the hardened request pipeline under hostile
and careless clients.

The adversarial server (conftest.py's `main`, one for the session) runs with a small budget (MAIN_FLAGS:
512 MiB for all requests together, 256 MiB per request, 2 workers + 8 queued, a 5 s deadline, a 3 s body
timeout, 128 connections). A sampler thread (RssSampler) reads its resident size (VmRSS) every 20 ms from
its start; the last test of the session (in test_adversarial_rss.py, moved to the end by conftest.py) asserts the peak
stayed under the budget plus RSS_MARGIN (the process's own ~40 MiB and allocator slack). Tests that need
other flags start servers of their own; those that measure memory there sample those servers the same way.

What is checked, every time: the documented 4xx in the route's own error shape, or, where the server
computes, an answer equal to PyTorch's (or to a closed form); and afterwards that the adversarial server is
alive (/healthz, after every test that uses it: conftest.py).

Here: the budget and flags, the sampler, readiness and metrics readers, waits on server states (HANG is
their bound, never a performance assertion), the error shapes of the three families of routes
(problem+json on /v1, Tesseract's {"detail": [...]} 422, UM-Bridge's {"error": {...}} 400), and the
models and bodies the tests send. Raw-socket HTTP is in raw_http.py.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import requests

from gs_helpers import MLP, START_TIMEOUT, TIMEOUT, ServerProcess, assert_problem, describe, post, vm_rss, wire

MiB = 1 << 20
BUDGET = 512 * MiB  # --memory-limit of the adversarial server
PER_REQUEST = 256 * MiB  # --max-request-memory
RSS_MARGIN = 160 * MiB  # the process itself (~40 MiB idle) and allocator slack above the budget
MAIN_FLAGS = [
    "--memory-limit", "512M", "--max-request-memory", "256M", "--workers", "2", "--max-queued", "8",
    "--deadline", "5", "--body-timeout", "3", "--max-connections", "128",
    # The long computation of the deadline and disconnect tests needs ~2 TFLOP (about 30 s here), so
    # that it runs past the 5 s deadline on machines several times faster than this one.
    "--max-request-gflop", "5000",
]
E62 = 1 << 62
HANG = 60.0  # an upper bound for waits on server states; never a performance assertion


# ======================================================================================
# Resident-size sampling
# ======================================================================================


class RssSampler(threading.Thread):
    """Reads a process's VmRSS every `period` seconds; `peak`, `peak_at` (monotonic) and `samples`."""

    def __init__(self, pid: int, period: float = 0.02):
        super().__init__(daemon=True)
        self.pid = pid
        self.period = period
        self.peak = 0
        self.peak_at = 0.0
        self.samples = 0
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            v = vm_rss(self.pid)
            if v is None:
                return
            self.samples += 1
            if v > self.peak:
                self.peak, self.peak_at = v, time.monotonic()
            self._halt.wait(self.period)

    def stop(self):
        self._halt.set()
        self.join(timeout=5)


def mib(n: int) -> str:
    return f"{n / MiB:.1f} MiB"


# ======================================================================================
# The adversarial server, its readiness and waits on its states
# ======================================================================================


class Main:
    """The adversarial server (conftest.py's `main`): its process, URL, port, pid, RSS sampler and idle size."""

    def __init__(self, proc: ServerProcess, sampler: RssSampler, baseline: int):
        self.proc = proc
        self.url = proc.url
        self.port = proc.port
        self.pid = proc.proc.pid
        self.sampler = sampler
        self.baseline = baseline
        self.long_job_ran_past_deadline = False


def readyz(url: str) -> dict:
    r = requests.get(url + "/readyz", timeout=TIMEOUT)
    assert r.status_code in (200, 503), describe(r)
    body = r.json()
    for k in ("status", "pending", "capacity", "memory_reserved_bytes", "memory_limit_bytes"):
        assert k in body, f"/readyz lacks {k}: {body}"
    return body


def metrics(url: str) -> dict[str, float]:
    r = requests.get(url + "/metrics", timeout=TIMEOUT)
    assert r.status_code == 200, describe(r)
    out = {}
    for line in r.text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
    return out


def wait_idle(url: str, timeout: float = HANG) -> tuple[float, dict]:
    """Polls /readyz until nothing is pending and nothing reserved; (when, readiness)."""
    deadline = time.monotonic() + timeout
    while True:
        rz = readyz(url)
        now = time.monotonic()
        if rz["pending"] == 0 and rz["memory_reserved_bytes"] == 0:
            return now, rz
        assert now < deadline, f"/readyz still shows work after {timeout} s: {rz}"
        time.sleep(0.01)


def wait_pending(url: str, at_least: int, timeout: float = HANG) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        rz = readyz(url)
        if rz["pending"] >= at_least:
            return rz
        assert time.monotonic() < deadline, f"pending never reached {at_least}: {rz}"
        time.sleep(0.005)


def start_with_host(_servers, data_dir: Path, extra_args: list[str], host_header: str) -> ServerProcess:
    """Like start_server, for a server that only answers a given Host (its /healthz included)."""
    s = ServerProcess(data_dir, extra_args, health_args={"headers": {"Host": host_header}})
    _servers.append(s)
    return s.start(START_TIMEOUT)


# ======================================================================================
# Error shapes of the three families of routes
# ======================================================================================


def tess_422(r: requests.Response) -> list[dict]:
    """Tesseract's validation error: 422 application/json {"detail": [{"type", "loc", "msg"}]}."""
    assert r.status_code == 422, describe(r)
    assert r.headers.get("Content-Type", "").startswith("application/json"), describe(r)
    detail = r.json()["detail"]
    assert isinstance(detail, list) and detail, describe(r)
    for d in detail:
        assert set(d) >= {"type", "loc", "msg"}, describe(r)
        assert isinstance(d["loc"], list) and d["loc"][0] == "body", describe(r)
    return detail


def umb_400(r: requests.Response) -> str:
    """UM-Bridge's error: 400 {"error": {"type": "InvalidInput", "message"}}."""
    assert r.status_code == 400, describe(r)
    assert r.headers.get("Content-Type", "").startswith("application/json"), describe(r)
    err = r.json()["error"]
    assert err["type"] == "InvalidInput" and isinstance(err["message"], str) and err["message"], describe(r)
    return err["message"]


def limit_problem(r: requests.Response, flag: str) -> dict:
    """/v1's plan refusal: 422 "Request exceeds a limit" whose detail names the flag."""
    p = assert_problem(r, 422)
    assert p["title"] == "Request exceeds a limit", describe(r)
    assert flag in p["detail"], describe(r)
    return p


def assert_problem_5xx(r: requests.Response, status: int) -> dict:
    assert r.status_code == status, describe(r)
    assert r.headers.get("Content-Type", "").startswith("application/problem+json"), describe(r)
    p = r.json()
    assert p["status"] == status, p
    return p


# ======================================================================================
# Models and tensors
# ======================================================================================


def b64(a, dtype: str = "float32") -> dict:
    return wire(np.asarray(a), "b64", dtype)


def tiny_t_model() -> dict:
    """The tiny time-conditioned model of the adapter examples: x [B, 2] ++ t → linear(3 → 2) → tanh."""
    return {"name": "tiny-t", "model": {"inputs": ["x", "t"], "dtype": "float64", "layers": [
        {"op": "linear", "weight": [[0.5, -0.25, 0.1], [0.125, 1.0, -0.3]], "bias": [0.1, -0.2]}, {"op": "tanh"}]}}


def register(url: str, body: dict) -> str:
    r = post(url, "/v1/models", body)
    assert r.status_code in (200, 201), describe(r)
    return r.json()["id"]


H = 65536  # the hidden width of the blow-up models


def wide_mlp(dtype: str, seed: int = 7) -> MLP:
    """x [B, 1] → linear(1 → 65536) → tanh → linear(65536 → 1), no biases. Positive weights and inputs,
    so that the float32 sum over 65536 hidden units has no cancellation (its rounding stays ~1e-6)."""
    rng = np.random.default_rng(seed)
    w1 = rng.uniform(0.5, 1.5, size=(H, 1))
    w2 = rng.uniform(0.5, 1.5, size=(1, H)) / H
    if dtype == "float32":
        w1 = w1.astype(np.float32).astype(np.float64)
        w2 = w2.astype(np.float32).astype(np.float64)
    return MLP([("linear", w1, None), ("act", {"op": "tanh"}), ("linear", w2, None)], False, dtype)


WIDE_TOL = {"float64": 1e-9, "float32": 1e-4}


def xs(b: int, dtype: str, seed: int = 3) -> np.ndarray:
    x = np.random.default_rng(seed).uniform(0.1, 1.0, size=(b, 1))
    return x.astype(np.float32).astype(np.float64) if dtype == "float32" else x


def long_job_body() -> bytes:
    """A reverse-mode Jacobian of 1000 layers (500 × [linear 512 → 512, tanh]) for 16 samples: ~2.15 TFLOP
    (the server's own plan says so), ~30 s on this 2-core machine, ~100 MiB at its peak. Its time goes
    into [8192, 512] × [512, 512] GEMMs of ~50 ms each, between which a stop request is seen."""
    rng = np.random.default_rng(11)
    w = (rng.normal(size=(512, 512)) / np.sqrt(512)).astype(np.float32)
    model = {"dtype": "float32", "weights": {"w": b64(w)}, "layers": [{"op": "linear", "weight": "w"}, {"op": "tanh"}] * 500}
    return json.dumps({"model": model, "inputs": {"x": b64(rng.normal(size=(16, 512)))}, "mode": "reverse",
                       "output_encoding": "base64", "return_outputs": False}).encode()


# A small forward request, answered by every server whatever its flags.
FORWARD = {"model": {"dtype": "float64", "layers": [{"op": "tanh"}]}, "inputs": {"x": [[0.5]]}}
