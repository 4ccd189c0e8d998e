"""SIGTERM under load (issue 13, item 6): the server finishes the requests it admitted, refuses new ones with 503
while readiness already fails, and exits (status 0) within the grace period.

One worker is held by a benchmark of BLOCK seconds (POST /v1/benchmark with --benchmark-max-seconds BLOCK) and
QUEUED VJPs of the seed's ToyMLP wait behind it; SIGTERM comes while they are admitted and unfinished. Then:
- every admitted request is answered 200, the VJPs checked against PyTorch;
- a new request, on a new connection, is answered 503 with Retry-After, and GET /readyz 503, as long as the
  admitted work runs (a client retries the 503 elsewhere; a Kubernetes readiness probe takes the pod out);
- the process exits 0 within GRACE seconds of the signal (the Deployment's terminationGracePeriodSeconds minus
  its preStop pause is 40 s; the admitted work here needs BLOCK + a little).
Bounded: every wait has a timeout; nothing asserts how fast anything is, only the order of events.
"""

from __future__ import annotations

import signal
import threading
import time

import numpy as np
import requests
import torch

import gradserve
from gradserve_testing.server import ServerProcess
from gradserve_testing.toymlp import toy_mlp

from conftest import REPORT

BLOCK = 4  # seconds the benchmark holds the only worker
QUEUED = 3  # VJPs admitted behind it
GRACE = 40  # seconds: terminationGracePeriodSeconds (45) minus the preStop pause (5) in deploy/kubernetes
WAIT = 30  # seconds for anything to happen before the test gives up


def _vjp_reference(m, x, t, v):
    xr = torch.from_numpy(x).double().requires_grad_(True)
    (g,) = torch.autograd.grad(m(xr, torch.from_numpy(t).double()), xr, grad_outputs=torch.from_numpy(v).double())
    return g.numpy()


class Draining:
    """A server with one worker busy for BLOCK seconds and QUEUED VJPs behind it, then SIGTERM."""

    def __init__(self):
        self.s = ServerProcess(
            extra_args=["--workers", "1", "--max-queued", "16", "--benchmark-max-seconds", str(BLOCK)]
        ).start()
        self.m32 = toy_mlp(seed=3)
        self.m = toy_mlp(seed=3).double()
        self.client = gradserve.Client(self.s.url, retries=0)  # admitted requests must succeed at once
        self.mid = self.client.register(self.m32)
        self.results: dict[str, object] = {}
        self.threads: list[threading.Thread] = []
        self.signalled_at: float | None = None

    def _bench(self):
        try:
            with gradserve.Client(self.s.url, retries=0, timeout=120) as c:
                c.benchmark(workload="linear", in_features=512, out_features=512, batch=512, iterations=100000)
            self.results["benchmark"] = 200
        except Exception as e:  # noqa: BLE001
            self.results["benchmark"] = e

    def _vjp(self, i):
        rng = np.random.default_rng(i)
        x = rng.standard_normal((8, 784)).astype(np.float32)
        t = rng.random(8).astype(np.float32)
        v = rng.standard_normal((8, 784)).astype(np.float32)
        try:
            with gradserve.Client(self.s.url, retries=0, timeout=120) as c:
                got = c.vjp(self.mid, x, t, v).grads.x
            want = _vjp_reference(self.m, x, t, v)
            err = np.linalg.norm(got - want) / np.linalg.norm(want)
            self.results[f"vjp {i}"] = 200 if err < 2e-5 else AssertionError(f"vjp {i}: error {err:.2e} against PyTorch")
        except Exception as e:  # noqa: BLE001
            self.results[f"vjp {i}"] = e

    def pending(self) -> int:
        return requests.get(self.s.url + "/readyz", timeout=5).json().get("pending", 0)

    def start_load_and_signal(self):
        self.threads.append(threading.Thread(target=self._bench, daemon=True))
        self.threads[-1].start()
        self._wait(lambda: self.pending() >= 1, "the benchmark to hold the worker")
        for i in range(QUEUED):
            self.threads.append(threading.Thread(target=self._vjp, args=(i,), daemon=True))
            self.threads[-1].start()
        self._wait(lambda: self.pending() >= 1 + QUEUED, "the VJPs to be admitted")
        self.signalled_at = time.monotonic()
        self.s.proc.send_signal(signal.SIGTERM)

    def _wait(self, cond, what):
        deadline = time.monotonic() + WAIT
        while not cond():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.02)

    def draining(self) -> bool:
        """The admitted work is still running (so the server must still be there to answer 503)."""
        return self.s.alive() and len(self.results) < 1 + QUEUED

    def finish(self) -> tuple[int | None, float]:
        """Waits for the process to exit (up to GRACE after the signal, then kills it): exit status, seconds."""
        try:
            rc = self.s.proc.wait(timeout=max(1.0, GRACE - (time.monotonic() - self.signalled_at)))
        except Exception:  # noqa: BLE001
            self.s.proc.kill()
            self.s.proc.wait(timeout=10)
            rc = None
        took = time.monotonic() - self.signalled_at
        for th in self.threads:
            th.join(timeout=WAIT)
        self.client.close()
        self.s.stop()
        return rc, took


def test_sigterm_finishes_admitted_requests_and_exits_within_the_grace_period():
    d = Draining()
    d.start_load_and_signal()
    rc, took = d.finish()
    REPORT.append(f"SIGTERM with 1 running + {QUEUED} queued: answers {_fmt(d.results)}; exit status {rc} after {took:.1f} s")
    assert all(v == 200 for v in d.results.values()) and len(d.results) == 1 + QUEUED, d.results
    assert rc == 0, f"exit status {rc} (None: still running {GRACE} s after SIGTERM, killed)"


def test_sigterm_refuses_new_requests_with_503_while_readiness_fails():
    """While admitted work drains, a new connection must still be answered: 503 (Retry-After) for compute, 503
    for /readyz (a Kubernetes readiness probe must see 503, and a client a 503 to retry elsewhere); a refused
    connection would fail this test."""
    d = Draining()
    d.start_load_and_signal()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + WAIT
        ready = compute = None  # the first 503 of each, once seen
        while d.draining() and time.monotonic() < deadline and (ready is None or compute is None):
            try:
                with requests.Session() as fresh:  # a new connection each time
                    r = fresh.get(d.s.url + "/readyz", timeout=5)
                    ready = ready or (r.status_code if r.status_code == 503 else None)
                    seen.append(f"/readyz {r.status_code}")
            except requests.ConnectionError as e:
                seen.append(f"/readyz connection error ({type(e).__name__})")
            if ready is None:
                # The signal not handled yet (a few ms after it was sent): a compute request now would rightly be
                # admitted behind the queue, and wait out the whole drain.
                time.sleep(0.01)
                continue
            try:
                with requests.Session() as fresh:
                    r = fresh.post(
                        d.s.url + "/v1/forward",
                        json={"model": {"layers": [{"op": "linear", "weight": [[1.0]]}]}, "inputs": {"x": [[1.0]]}},
                        timeout=5,
                    )
                    if r.status_code == 503:
                        compute = compute or (r.status_code, r.headers.get("Retry-After"))
                    seen.append(f"POST /v1/forward {r.status_code}")
            except requests.ConnectionError as e:
                seen.append(f"POST /v1/forward connection error ({type(e).__name__})")
            time.sleep(0.1)
    finally:
        rc, took = d.finish()
    summary = ", ".join(f"{k} ×{seen.count(k)}" for k in dict.fromkeys(seen))
    REPORT.append(f"SIGTERM, new requests while draining: {summary}; admitted: {_fmt(d.results)}; exit {rc} after {took:.1f} s")
    assert ready == 503, f"GET /readyz during the drain: {summary or 'nothing observed'} (wanted 503)"
    assert compute is not None and compute[1], f"a new compute request during the drain: {summary} (wanted 503 with Retry-After)"
    assert all(v == 200 for v in d.results.values()), d.results


def _fmt(results: dict) -> str:
    return ", ".join(f"{k}: {v if v == 200 else type(v).__name__ + ' ' + str(v)[:120]}" for k, v in sorted(results.items()))
