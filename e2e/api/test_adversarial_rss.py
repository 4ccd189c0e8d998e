"""Adversarial suite: resident memory. Slow readers and concurrent large bodies keep the server within its
budget, the idle heap trim returns freed memory, and, last, the peak resident size of the adversarial
server over all the adversarial files stayed under its budget plus RSS_MARGIN.

Its last test reads the peak of the whole session's sampling; conftest.py's
pytest_collection_modifyitems runs it after every other test, whatever the file order.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections import Counter

import numpy as np

from adversarial_support import BUDGET, HANG, MiB, RSS_MARGIN, RssSampler, b64, mib, readyz, register, wait_idle
from gs_helpers import MLP, close, describe, post, vm_rss
from raw_http import post_head, read_answer


def test_slow_readers_stay_within_the_budget(start_server):
    """16 clients ask for 43 MB answers and never read them. Until --write-timeout the server must either
    keep those answers inside --memory-limit (refusing what does not fit with 503) or not hold them: its
    resident size stays under the budget plus the margin."""
    s = start_server(["--memory-limit", "512M", "--max-request-memory", "256M", "--workers", "2", "--write-timeout", "30"])
    time.sleep(0.5)
    base = vm_rss(s.proc.pid)
    sampler = RssSampler(s.proc.pid)
    sampler.start()
    body = json.dumps({"model": {"dtype": "float32", "layers": [{"op": "linear", "weight": b64(np.ones((8192, 1)))}]},
                       "inputs": {"x": b64(np.ones((1024, 1)))}, "output_encoding": "base64"}).encode()
    socks = []
    try:
        for _ in range(16):
            c = socket.socket()
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            c.connect(("127.0.0.1", s.port))
            c.sendall(post_head("/v1/forward", len(body)).encode() + body)
            socks.append(c)
            time.sleep(0.3)
        time.sleep(0.5)
    finally:
        peak, rz = sampler.peak, readyz(s.url)
        for c in socks:
            c.close()
        sampler.stop()
    assert peak < BUDGET + RSS_MARGIN, (
        f"16 unread 43 MB answers took the server to {mib(peak)} resident (idle {mib(base)}), above the "
        f"{mib(BUDGET)} budget + {mib(RSS_MARGIN)}; /readyz meanwhile said {rz}")


def test_concurrent_bodies_above_the_budget(main):
    """12 × 30 MB JSON bodies at once (7× each = 200 MiB; two fit the 512 MiB budget): every answer is
    200, 413, 422 or 503; a connection error only after a status line was read (a 503 that closes the
    connection before the rest of the body is sent); 200s are correct; the resident size stays bounded."""
    rng = np.random.default_rng(0)
    x = np.round(rng.uniform(-1, 1, size=(43000, 64)), 7)
    body = json.dumps({"model": {"dtype": "float32", "layers": [{"op": "tanh"}]}, "inputs": {"x": x.tolist()},
                       "output_encoding": "base64"}).encode()
    assert len(body) > 28 * MiB
    wait_idle(main.url)
    t0 = time.monotonic()
    results: list = [None] * 12

    def one(i):
        status, headers, payload, err = None, {}, b"", None
        s = socket.create_connection(("127.0.0.1", main.port), timeout=HANG)
        try:
            try:
                s.sendall(post_head("/v1/forward", len(body)).encode())
                s.sendall(body)
            except OSError as e:
                err = f"send: {e!r}"
            try:
                status, headers, payload = read_answer(s, HANG)
            except (OSError, AssertionError) as e:
                err = (err or "") + f" read: {e!r}"
        finally:
            s.close()
        results[i] = (status, headers, payload, err)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = Counter(r[0] for r in results)
    for status, headers, payload, err in results:
        assert status in (200, 413, 422, 503), f"{status} {headers} {payload[:300]!r} {err}; all: {statuses}"
        if status == 200:
            ans = json.loads(payload)["outputs"]
            got = np.frombuffer(base64.b64decode(ans["data"]), dtype="<f4").reshape(ans["shape"])
            close(got, np.tanh(x.astype(np.float32).astype(np.float64)), "float32", "30 MB forward")
        else:
            p = json.loads(payload)
            assert p["status"] == status, p
            if status == 503:
                assert headers.get("retry-after"), headers
    assert statuses[503] >= 1, f"12 × 208 MiB never exceeded a 512 MiB budget? {statuses}"
    wait_idle(main.url)
    peak_here = main.sampler.peak if main.sampler.peak_at >= t0 else 0
    assert peak_here < BUDGET + RSS_MARGIN, f"peak resident {mib(peak_here)} during 12 × 30 MB bodies"


def test_idle_trim_returns_memory(start_server):
    """~2 s after the last request the server returns freed memory: after four large Jacobians (the
    seed's ToyMLP, B = 16, 39 MB answers) the resident size comes back near its idle size."""
    s = start_server(["--workers", "2", "--memory-limit", "1G"])
    rng = np.random.default_rng(1)
    m = MLP.random(rng, 784, [64, 64, 64, 784], [{"op": "selu"}] * 3, has_t=True, dtype="float32")
    mid = register(s.url, {"name": "toy", "model": m.to_json("b64")})
    post(s.url, "/v1/forward", {"model": mid, "inputs": {"x": b64(np.zeros((1, 784))), "t": [0.0]}})
    time.sleep(3)
    idle = vm_rss(s.proc.pid)
    body = {"model": mid, "inputs": {"x": b64(rng.normal(size=(16, 784))), "t": b64(rng.uniform(size=16))},
            "output_encoding": "safetensors"}
    for _ in range(4):
        r = post(s.url, "/v1/jacobian", body)
        assert r.status_code == 200, describe(r)
    after = vm_rss(s.proc.pid)
    deadline = time.monotonic() + 8
    now = after
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = vm_rss(s.proc.pid)
        if now <= idle + 48 * MiB:
            break
    assert now <= idle + 48 * MiB, (
        f"resident size idle {mib(idle)}, right after four Jacobians {mib(after)}, 8 s later still {mib(now)}")


# ======================================================================================
# Last: the adversarial server's resident size stayed within its budget
# ======================================================================================


def test_zz_module_peak_rss_under_budget(main):
    end = time.monotonic() + 5  # run alone (-k), the sampler has only just started
    while main.sampler.samples <= 10 and time.monotonic() < end:
        time.sleep(0.05)
    peak = main.sampler.peak
    print(f"\nmodule server: idle {mib(main.baseline)}, peak {mib(peak)} over {main.sampler.samples} samples "
          f"(budget {mib(BUDGET)} + margin {mib(RSS_MARGIN)})")
    assert main.sampler.samples > 10, "the sampler did not run"
    assert peak < BUDGET + RSS_MARGIN, (
        f"the module server's resident size peaked at {mib(peak)} (idle {mib(main.baseline)}), above the {mib(BUDGET)} "
        f"--memory-limit + {mib(RSS_MARGIN)}")
