"""Service behaviour: health under load, concurrency, auth, endpoints (limits and
Expect: 100-continue: test_service_limits.py)."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from e2e_cases import DTYPES, ENCODINGS, Req, flatten_answer, make_inputs, make_model, op_body, register
from gs_helpers import (
    ACTIVATIONS, MLP, TIMEOUT, assert_problem, close, decode_answer, describe, get, ok_json, post, ref_jacobian, st_read,
    wire,
)


def _health_checks_during_jacobian(url: str, body: dict) -> dict:
    """Sends the Jacobian `body`; once /readyz counts it as a pending compute job, alternates GET /healthz
    and GET /readyz until the Jacobian's answer arrives. A health check counts as answered *during* the
    Jacobian when the /readyz right after it still shows the job in the pool (it leaves the pool only
    after its answer is encoded). Returns the Jacobian's response and that count."""
    s = requests.Session()

    def pending() -> int:
        r = s.get(url + "/readyz", timeout=TIMEOUT)
        assert r.status_code in (200, 503), describe(r)
        return int(r.json().get("pending", 0))

    out: dict = {"during": 0, "seen_pending": False}
    done = threading.Event()

    def long_job():
        try:
            out["r"] = post(url, "/v1/jacobian", body, timeout=10 * TIMEOUT, session=requests.Session())
        except Exception as e:  # noqa: BLE001 (reported by the test below)
            out["error"] = e
        finally:
            done.set()

    th = threading.Thread(target=long_job, daemon=True)
    th.start()
    while not done.is_set() and not out["seen_pending"]:
        out["seen_pending"] = pending() >= 1
        time.sleep(0.005)
    while out["seen_pending"] and not done.is_set():
        r = s.get(url + "/healthz", timeout=TIMEOUT)
        assert r.status_code == 200, describe(r)
        if pending() >= 1 and not done.is_set():
            out["during"] += 1
        time.sleep(0.005)
    th.join(timeout=10 * TIMEOUT)
    assert "error" not in out, f"the Jacobian request failed: {out.get('error')!r}"
    return out


def test_health_answers_during_long_jacobian(start_server):
    """/healthz answers while a long Jacobian computes: health checks sent after the Jacobian entered the
    compute pool complete while it is still there, before its answer arrives. An ordering, not a latency:
    a health route that waited for the compute would only answer after it, when the job has left the pool.
    Should the Jacobian end too soon for three checks on a fast machine, it is repeated with twice the batch.
    (Its own server, so that no other test's job can be counted as pending.)"""
    url = start_server().url
    rng = np.random.default_rng(15)
    m = MLP.random(rng, 784, [512, 512, 10], [{"op": "tanh"}, {"op": "tanh"}], dtype="float64")
    mid = register(url, m.to_json("b64"), "wide").json()["id"]
    attempts = []
    for batch in (48, 96, 192):
        x = rng.normal(size=(batch, 784))
        body = {"model": mid, "inputs": {"x": wire(x, "b64")}, "mode": "forward", "output_encoding": "safetensors",
                "return_outputs": False}
        out = _health_checks_during_jacobian(url, body)
        r = out["r"]
        assert r.status_code == 200, describe(r)
        tensors, meta, _ = st_read(r.content)
        assert tensors["jacobian.x"].shape == (batch, 10, 784)
        attempts.append((batch, out["seen_pending"], out["during"], json.loads(meta["timing"])["compute_ms"]))
        if out["during"] >= 3:
            break
    assert out["during"] >= 3, (
        "/healthz was not answered while the Jacobian computed; (batch, Jacobian seen pending, health checks answered "
        f"while it was pending, compute_ms) per attempt: {attempts}")
    # spot-check the numbers on a few samples
    j, _ = ref_jacobian(m, x[:2])
    close(tensors["jacobian.x"][:2], j["x"], "float64", "wide jacobian")


def test_concurrent_requests(server):
    rng = np.random.default_rng(17)
    jobs = []
    for i in range(8):
        dtype = DTYPES[i % 2]
        m = make_model(rng, ACTIVATIONS[i], dtype, i % 3 == 0, d=6, d_out=6)
        x, t = make_inputs(rng, m, b=32)
        op = ["forward", "vjp", "jvp", "jacobian", "divergence", "vjp", "jacobian", "jvp"][i]
        rq = Req(m, "b64", None)
        path, body, ref = op_body(op, m, rq, rng, x, t)
        body["model"] = m.to_json("b64")
        jobs.append((path, body, ref, dtype))

    def call(job):
        path, body, ref, dtype = job
        return post(server, f"/v1/{path}", body, session=requests.Session())

    with ThreadPoolExecutor(8) as ex:
        for _round in range(3):
            results = list(ex.map(call, jobs))
            for (path, body, ref, dtype), r in zip(jobs, results):
                got = flatten_answer(decode_answer(r, dtype, "json"))
                assert set(got) == set(ref), path
                for k in ref:
                    close(got[k], ref[k], dtype, f"{path} {k}")


def test_api_key(start_server):
    s = start_server(["--api-key", "s3cret-key"])
    url = s.url
    body = {"model": {"layers": [{"op": "relu"}]}, "inputs": {"x": [[-1.0, 2.0]]}}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-key"},
                    {"Authorization": "Bearer s3cret-keyX"}, {"Authorization": "Bearer "}, {"Authorization": "Basic s3cret-key"}):
        assert_problem(post(url, "/v1/forward", body, headers=headers), 401)
        assert_problem(get(url, "/v1/info", headers=headers), 401)
        assert_problem(get(url, "/v1/models", headers=headers), 401)
    r = post(url, "/v1/forward", body, headers={"Authorization": "Bearer wrong"})
    assert "Bearer" in r.headers.get("WWW-Authenticate", "")
    good = {"Authorization": "Bearer s3cret-key"}
    assert ok_json(post(url, "/v1/forward", body, headers=good))["outputs"] == [[0.0, 2.0]]
    assert ok_json(get(url, "/v1/info", headers=good))["auth"] is True
    ok_json(get(url, "/v1/models", headers=good))
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.yaml"]:
        assert get(url, path).status_code == 200, path
    # the key can come from the environment too
    s2 = start_server(env={"GRADSERVE_API_KEY": "env-key"})
    assert_problem(post(s2.url, "/v1/forward", body), 401)
    ok_json(post(s2.url, "/v1/forward", body, headers={"Authorization": "Bearer env-key"}))


def test_metrics(server):
    ok_json(post(server, "/v1/forward", {"model": {"layers": [{"op": "relu"}]}, "inputs": {"x": [[1.0]]}}))
    r = get(server, "/metrics")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain")
    assert "gradserve_http_requests_total" in r.text
    assert "# TYPE gradserve_http_requests_total counter" in r.text
    # the answers' write time (head to last byte on the socket): the forward above is counted once its
    # last byte was written (recorded on its connection's event loop, so allow a moment)
    deadline = time.monotonic() + 5
    while True:
        count = [ln for ln in get(server, "/metrics").text.splitlines() if ln.startswith("gradserve_http_response_write_seconds_count")]
        if count and float(count[0].split()[-1]) >= 1:
            break
        assert time.monotonic() < deadline, count
        time.sleep(0.05)


def test_info(server):
    info = ok_json(get(server, "/v1/info"))
    for k in ("version", "blas", "limits", "operations", "output_encodings", "auth", "workers", "cores"):
        assert k in info, k
    assert info["blas"]["library"] == "OpenBLAS"
    assert "threads" in info["blas"] and "version" in info["blas"]
    assert info["limits"]["max_output_elements"] == 1 << 24
    for k in ("max_body_bytes", "max_queued", "deadline_s"):
        assert k in info["limits"]
    assert set(info["operations"]) >= {"forward", "vjp", "jvp", "jacobian", "divergence", "benchmark"}
    assert set(info["output_encodings"]) == set(ENCODINGS)
    assert info["auth"] is False


def test_health_and_ready(server):
    r = get(server, "/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    r = get(server, "/readyz")
    assert r.status_code == 200 and r.json()["status"] == "ready"


def test_openapi(server):
    r = get(server, "/openapi.yaml")
    assert r.status_code == 200
    assert r.text.lstrip().startswith("openapi:")


def test_openapi_describes_the_api(server):
    """docs/api.md: openapi.yaml is the contract and must say the same as the service."""
    text = get(server, "/openapi.yaml").text
    for path in ["/v1/forward", "/v1/vjp", "/v1/jvp", "/v1/jacobian", "/v1/divergence", "/v1/models", "/healthz"]:
        assert path in text, f"openapi.yaml does not mention {path} (served {len(text)} bytes: {text[:200]!r})"


@pytest.mark.parametrize("method,path,allow", [
    ("GET", "/v1/forward", "POST"), ("PUT", "/v1/jacobian", "POST"), ("DELETE", "/healthz", "GET"),
    ("POST", "/v1/info", "GET"), ("PATCH", "/v1/models", "GET"), ("POST", "/v1/models/abc", "DELETE"),
])
def test_method_not_allowed(server, method, path, allow):
    r = requests.request(method, server + path, timeout=TIMEOUT)
    p = assert_problem(r, 405)
    assert allow in [a.strip() for a in r.headers.get("Allow", "").split(",")], r.headers
    assert p["status"] == 405


def test_unknown_route_is_problem_404(server):
    assert_problem(get(server, "/v2/nothing"), 404)
    assert_problem(post(server, "/v1/backward", {}), 404)


def test_unsupported_media_type(server):
    r = post(server, "/v1/forward", b"x=1", headers={"Content-Type": "text/plain"})
    assert_problem(r, 415)


def test_benchmark(server):
    r = post(server, "/v1/benchmark", {"workload": "linear", "in": 16, "out": 8, "batch": 4, "iterations": 3})
    rep = ok_json(r)
    assert "machine" in rep and "results" in rep
    assert rep["machine"]["blas"]["library"] == "OpenBLAS"
    (res,) = rep["results"]
    for k in ("iterations", "total_s", "min_ms", "median_ms", "p95_ms", "gflops", "peak_share"):
        assert k in res, k
    assert res["min_ms"] <= res["median_ms"] <= res["p95_ms"]
    rng = np.random.default_rng(18)
    m = make_model(rng, {"op": "tanh"}, "float64", False, d=6, d_out=6)
    rep = ok_json(post(server, "/v1/benchmark", {"model": m.to_json(), "operation": "jacobian", "batch": 3,
                                                "methods": ["reverse", "forward", "rowloop"], "iterations": 2}))
    methods = [r["method"] for r in rep["results"]]
    assert set(methods) >= {"reverse", "forward", "rowloop"}, methods
