"""End-to-end tests of gradserve against PyTorch.

Every operation (forward, vjp, jvp, jacobian, divergence) is checked on random MLPs for every
activation, with and without t, in float32 and float64, in every tensor input form and every
output encoding; then the registry, limits, protocol details and service endpoints.
"""

from __future__ import annotations

import base64
import http.client
import itertools
import json
import shutil
import socket
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from gs_helpers import (
    ACTIVATIONS,
    MLP,
    TIMEOUT,
    TOL,
    act_id,
    assert_problem,
    close,
    decode_answer,
    delete,
    describe,
    error_paths,
    get,
    ok_json,
    peak_rss_bytes,
    post,
    ref_divergence,
    ref_forward,
    ref_jacobian,
    ref_jvp,
    ref_vjp,
    sent_value,
    st_read,
    st_write,
    wire,
)

DTYPES = ["float64", "float32"]
ENCODINGS = ["json", "base64", "safetensors"]
# (form, dtype of the bytes for b64 or None = the model's own dtype)
FORMS = [("nested", None), ("flat", None), ("b64", None), ("b64", "float32"), ("b64", "float64"), ("flat32", None)]

CASES = [(a, dt, has_t) for a in ACTIVATIONS for dt in DTYPES for has_t in (False, True)]
CASE_IDS = [f"{act_id(a)}-{dt}-{'xt' if has_t else 'x'}" for a, dt, has_t in CASES]


def seed_of(*parts) -> int:
    return zlib.crc32(repr(parts).encode())


class Req:
    """Builds a request's tensors in one wire form and remembers what the server will see."""

    def __init__(self, m: MLP, form: str, form_dtype: str | None):
        self.m = m
        self.form = form
        self.form_dtype = form_dtype or m.dtype

    def enc(self, arr):
        return wire(arr, self.form, self.form_dtype)

    def seen(self, arr):
        return None if arr is None else sent_value(arr, self.form, self.form_dtype, self.m.dtype)

    def inputs(self, x, t):
        d = {"x": self.enc(x)}
        if t is not None:
            d["t"] = self.enc(t)
        return d


def make_model(rng, act, dtype, has_t, d=4, d_out=None, named="mixed", extra_act=True):
    d_out = d if d_out is None else d_out
    acts = [act, act] + ([act] if extra_act else [])
    return MLP.random(rng, d, [7, 5, d_out], acts, has_t=has_t, dtype=dtype, named=named)


def make_inputs(rng, m: MLP, b=5, d=None):
    d = m.in_width if d is None else d
    x = rng.normal(0, 1.2, size=(b, d))
    t = rng.uniform(-1, 1, size=(b,)) if m.has_t else None
    return x, t


def run(url, op, m, req: Req, body: dict, encoding: str):
    body = dict(body)
    body.setdefault("model", m.to_json(req.form if req.form != "flat32" else "flat"))
    if encoding != "json":
        body["output_encoding"] = encoding
    r = post(url, f"/v1/{op}", body)
    assert r.status_code == 200, describe(r)
    ans = decode_answer(r, m.dtype, encoding)
    check_timing(ans, r)
    return ans, r


def check_timing(ans: dict, r: requests.Response):
    timing = ans.get("timing")
    assert isinstance(timing, dict), f"no timing in the answer{describe(r)}"
    for k in ("queue_ms", "decode_ms", "compute_ms", "encode_ms"):
        assert k in timing, f"timing lacks {k}: {timing}"
        assert isinstance(timing[k], (int, float)) and timing[k] >= 0, timing
    st = r.headers.get("Server-Timing")
    assert st, f"no Server-Timing header{describe(r)}"
    names = {part.split(";")[0].strip() for part in st.split(",")}
    assert {"queue", "decode", "compute", "encode"} <= names, st


def pick(i: int, op_salt: int):
    form, fdt = FORMS[(i + op_salt) % len(FORMS)]
    enc = ENCODINGS[(i // len(FORMS) + op_salt) % len(ENCODINGS)]
    return form, fdt, enc


# ======================================================================================
# Per-activation matrix: every operation, every activation, x / x+t, float32 / float64
# ======================================================================================


@pytest.mark.parametrize("case", range(len(CASES)), ids=CASE_IDS)
def test_forward(server, case):
    act, dtype, has_t = CASES[case]
    rng = np.random.default_rng(seed_of("fwd", case))
    m = make_model(rng, act, dtype, has_t, d=4, d_out=3)
    x, t = make_inputs(rng, m, b=6)
    form, fdt, enc = pick(case, 0)
    rq = Req(m, form, fdt)
    ans, _ = run(server, "forward", m, rq, {"inputs": rq.inputs(x, t)}, enc)
    close(ans["outputs"], ref_forward(m, rq.seen(x), rq.seen(t)), dtype, "outputs")


@pytest.mark.parametrize("case", range(len(CASES)), ids=CASE_IDS)
def test_vjp(server, case):
    act, dtype, has_t = CASES[case]
    rng = np.random.default_rng(seed_of("vjp", case))
    m = make_model(rng, act, dtype, has_t, d=4, d_out=3)
    x, t = make_inputs(rng, m, b=5)
    v = rng.normal(size=(5, 3))
    form, fdt, enc = pick(case, 1)
    rq = Req(m, form, fdt)
    wrt = ["x", "t", "params"] if has_t else ["x", "params"]
    ans, _ = run(server, "vjp", m, rq, {"inputs": rq.inputs(x, t), "grad_outputs": rq.enc(v), "wrt": wrt}, enc)
    ref = ref_vjp(m, rq.seen(x), rq.seen(t), rq.seen(v), wrt)
    close(ans["outputs"], ref["outputs"], dtype, "outputs")
    close(ans["grads"]["x"], ref["x"], dtype, "grads.x")
    if has_t:
        close(ans["grads"]["t"], ref["t"], dtype, "grads.t")
    else:
        assert "t" not in ans["grads"]
    names = [n for n, _ in m.param_names()]
    assert set(ans["grads"]["params"]) == set(names)
    for n in names:
        close(ans["grads"]["params"][n], ref["params." + n], dtype, f"grads.params.{n}")


@pytest.mark.parametrize("case", range(len(CASES)), ids=CASE_IDS)
def test_vjp_grads_batched(server, case):
    act, dtype, has_t = CASES[case]
    rng = np.random.default_rng(seed_of("vjpK", case))
    m = make_model(rng, act, dtype, has_t, d=3, d_out=4)
    x, t = make_inputs(rng, m, b=4)
    k = 3
    v = rng.normal(size=(k, 4, 4))
    form, fdt, enc = pick(case, 2)
    rq = Req(m, form, fdt)
    wrt = ["x", "t", "params"] if has_t else ["x", "params"]
    body = {"inputs": rq.inputs(x, t), "grad_outputs": rq.enc(v), "wrt": wrt, "is_grads_batched": True}
    ans, _ = run(server, "vjp", m, rq, body, enc)
    ref = ref_vjp(m, rq.seen(x), rq.seen(t), rq.seen(v), wrt, batched=True)
    close(ans["outputs"], ref["outputs"], dtype, "outputs")
    assert ans["grads"]["x"].shape == (k, 4, 3)
    close(ans["grads"]["x"], ref["x"], dtype, "grads.x")
    if has_t:
        assert ans["grads"]["t"].shape == (k, 4)
        close(ans["grads"]["t"], ref["t"], dtype, "grads.t")
    for n, p in m.param_names():
        assert ans["grads"]["params"][n].shape == (k, *p.shape), n
        close(ans["grads"]["params"][n], ref["params." + n], dtype, f"grads.params.{n}")


@pytest.mark.parametrize("case", range(len(CASES)), ids=CASE_IDS)
def test_jvp(server, case):
    act, dtype, has_t = CASES[case]
    rng = np.random.default_rng(seed_of("jvp", case))
    m = make_model(rng, act, dtype, has_t, d=4, d_out=5)
    x, t = make_inputs(rng, m, b=5)
    tx = rng.normal(size=x.shape)
    tt = rng.normal(size=t.shape) if has_t else None
    form, fdt, enc = pick(case, 3)
    rq = Req(m, form, fdt)
    tangents = {"x": rq.enc(tx)}
    if has_t:
        tangents["t"] = rq.enc(tt)
    ans, _ = run(server, "jvp", m, rq, {"inputs": rq.inputs(x, t), "tangents": tangents}, enc)
    y, u = ref_jvp(m, rq.seen(x), rq.seen(t), rq.seen(tx), rq.seen(tt))
    close(ans["outputs"], y, dtype, "outputs")
    close(ans["jvp"], u, dtype, "jvp")


@pytest.mark.parametrize("case", range(len(CASES)), ids=CASE_IDS)
def test_jvp_batched_tangents(server, case):
    act, dtype, has_t = CASES[case]
    rng = np.random.default_rng(seed_of("jvpK", case))
    m = make_model(rng, act, dtype, has_t, d=3, d_out=2)
    x, t = make_inputs(rng, m, b=4)
    k = 5
    tx = rng.normal(size=(k, *x.shape))
    tt = rng.normal(size=(k, *t.shape)) if has_t else None
    form, fdt, enc = pick(case, 4)
    rq = Req(m, form, fdt)
    tangents = {"x": rq.enc(tx)}
    if has_t:
        tangents["t"] = rq.enc(tt)
    ans, _ = run(server, "jvp", m, rq, {"inputs": rq.inputs(x, t), "tangents": tangents}, enc)
    y, u = ref_jvp(m, rq.seen(x), rq.seen(t), rq.seen(tx), rq.seen(tt), batched=True)
    assert ans["jvp"].shape == (k, 4, 2)
    close(ans["outputs"], y, dtype, "outputs")
    close(ans["jvp"], u, dtype, "jvp")


@pytest.mark.parametrize("case", range(len(CASES)), ids=CASE_IDS)
def test_jacobian(server, case):
    act, dtype, has_t = CASES[case]
    rng = np.random.default_rng(seed_of("jac", case))
    d_out = [2, 4, 6][case % 3]
    m = make_model(rng, act, dtype, has_t, d=4, d_out=d_out)
    x, t = make_inputs(rng, m, b=5)
    mode = ["auto", "reverse", "forward"][(case // 3) % 3]
    form, fdt, enc = pick(case, 5)
    rq = Req(m, form, fdt)
    wrt = ["x", "t"] if has_t else ["x"]
    ans, _ = run(server, "jacobian", m, rq, {"inputs": rq.inputs(x, t), "wrt": wrt, "mode": mode}, enc)
    j, y = ref_jacobian(m, rq.seen(x), rq.seen(t))
    close(ans["outputs"], y, dtype, "outputs")
    assert ans["jacobian"]["x"].shape == (5, d_out, 4)
    close(ans["jacobian"]["x"], j["x"], dtype, "jacobian.x")
    if has_t:
        assert ans["jacobian"]["t"].shape == (5, d_out)
        close(ans["jacobian"]["t"], j["t"], dtype, "jacobian.t")
    if mode != "auto":
        assert ans["mode"] == mode
    else:
        assert ans["mode"] in ("reverse", "forward")
        if d_out <= 2:
            assert ans["mode"] == "reverse", "auto must pick reverse when D' is much smaller than D"
        if d_out >= 6:
            assert ans["mode"] == "forward", "auto must pick forward when D' is much larger than D"


@pytest.mark.parametrize("case", range(len(CASES)), ids=CASE_IDS)
def test_divergence_exact(server, case):
    act, dtype, has_t = CASES[case]
    rng = np.random.default_rng(seed_of("div", case))
    m = make_model(rng, act, dtype, has_t, d=4, d_out=4)
    x, t = make_inputs(rng, m, b=6)
    form, fdt, enc = pick(case, 6)
    rq = Req(m, form, fdt)
    body = {"inputs": rq.inputs(x, t)}
    if case % 2:
        body["method"] = "exact"
    ans, _ = run(server, "divergence", m, rq, body, enc)
    assert ans["divergence"].shape == (6,)
    close(ans["divergence"], ref_divergence(m, rq.seen(x), rq.seen(t)), dtype, "divergence")
    assert ans.get("method", "exact") == "exact"


# ======================================================================================
# Every input form × every output encoding, per operation
# ======================================================================================

OPS = ["forward", "vjp", "vjp_batched", "jvp", "jvp_batched", "jacobian", "divergence", "hutchinson"]


def op_body(op, m: MLP, rq: Req, rng, x, t):
    """(path, body, reference answer) for one operation."""
    b = x.shape[0]
    xs, ts = rq.seen(x), rq.seen(t)
    if op == "forward":
        return "forward", {"inputs": rq.inputs(x, t)}, {"outputs": ref_forward(m, xs, ts)}
    if op in ("vjp", "vjp_batched"):
        batched = op == "vjp_batched"
        v = rng.normal(size=((2,) if batched else ()) + (b, m.out_width))
        wrt = ["x", "t", "params"] if m.has_t else ["x", "params"]
        body = {"inputs": rq.inputs(x, t), "grad_outputs": rq.enc(v), "wrt": wrt}
        if batched:
            body["is_grads_batched"] = True
        ref = ref_vjp(m, xs, ts, rq.seen(v), wrt, batched=batched)
        out = {"outputs": ref["outputs"], "grads.x": ref["x"]}
        if m.has_t:
            out["grads.t"] = ref["t"]
        for n, _ in m.param_names():
            out["grads.params." + n] = ref["params." + n]
        return "vjp", body, out
    if op in ("jvp", "jvp_batched"):
        batched = op == "jvp_batched"
        lead = (3,) if batched else ()
        tx = rng.normal(size=lead + x.shape)
        tt = rng.normal(size=lead + t.shape) if m.has_t else None
        tangents = {"x": rq.enc(tx)}
        if m.has_t:
            tangents["t"] = rq.enc(tt)
        y, u = ref_jvp(m, xs, ts, rq.seen(tx), rq.seen(tt), batched=batched)
        return "jvp", {"inputs": rq.inputs(x, t), "tangents": tangents}, {"outputs": y, "jvp": u}
    if op == "jacobian":
        wrt = ["x", "t"] if m.has_t else ["x"]
        j, y = ref_jacobian(m, xs, ts)
        out = {"outputs": y, "jacobian.x": j["x"]}
        if m.has_t:
            out["jacobian.t"] = j["t"]
        return "jacobian", {"inputs": rq.inputs(x, t), "wrt": wrt}, out
    if op == "divergence":
        return "divergence", {"inputs": rq.inputs(x, t), "method": "exact"}, {"divergence": ref_divergence(m, xs, ts)}
    if op == "hutchinson":
        # Checked for shape and determinism only here; accuracy has its own tests.
        return "divergence", {"inputs": rq.inputs(x, t), "method": "hutchinson", "probes": 8, "seed": 3}, {}
    raise ValueError(op)


def flatten_answer(ans: dict) -> dict:
    out = {}
    for k, v in ans.items():
        if k in ("timing", "mode", "method"):
            continue
        if isinstance(v, dict):
            for k2, v2 in v.items():
                if isinstance(v2, dict):
                    for k3, v3 in v2.items():
                        out[f"{k}.{k2}.{k3}"] = v3
                else:
                    out[f"{k}.{k2}"] = v2
        else:
            out[k] = v
    return out


GRID = [(op, f, e, dt) for op in OPS for f in range(len(FORMS)) for e in ENCODINGS for dt in DTYPES]


@pytest.mark.parametrize(
    "op,form_i,enc,dtype", GRID, ids=[f"{o}-{FORMS[f][0]}{FORMS[f][1] or ''}-{e}-{d}" for o, f, e, d in GRID])
def test_input_forms_and_output_encodings(server, op, form_i, enc, dtype):
    rng = np.random.default_rng(seed_of("grid", op, form_i, enc, dtype))
    has_t = (form_i + len(enc)) % 2 == 0
    act = ACTIVATIONS[(form_i * 3 + len(enc)) % len(ACTIVATIONS)]
    m = make_model(rng, act, dtype, has_t, d=3, d_out=3)
    x, t = make_inputs(rng, m, b=4)
    form, fdt = FORMS[form_i]
    rq = Req(m, form, fdt)
    path, body, ref = op_body(op, m, rq, rng, x, t)
    ans, r = run(server, path, m, rq, body, enc)
    got = flatten_answer(ans)
    if op == "hutchinson":
        assert got["divergence"].shape == (4,)
        again, _ = run(server, path, m, rq, body, enc)
        assert np.array_equal(flatten_answer(again)["divergence"], got["divergence"]), "same seed, different answer"
        assert ans.get("method") == "hutchinson"
        return
    assert set(got) == set(ref), f"answer fields {sorted(got)} != expected {sorted(ref)}"
    for k in ref:
        close(got[k], ref[k], dtype, k)
    if op == "jacobian":
        assert ans["mode"] in ("reverse", "forward")


def test_safetensors_answer_layout(server):
    """Names are the JSON paths; __metadata__ holds timing as JSON text and mode as a string."""
    rng = np.random.default_rng(7)
    m = make_model(rng, {"op": "tanh"}, "float64", True, d=3, d_out=2, named=True)
    x, t = make_inputs(rng, m, b=2)
    body = {"model": m.to_json(), "inputs": {"x": x.tolist(), "t": t.tolist()}, "wrt": ["x", "t"], "mode": "forward",
            "output_encoding": "safetensors"}
    r = post(server, "/v1/jacobian", body)
    assert r.status_code == 200, describe(r)
    assert r.headers["Content-Type"].startswith("application/octet-stream")
    tensors, meta, header = st_read(r.content)
    assert set(tensors) == {"outputs", "jacobian.x", "jacobian.t"}
    assert meta["mode"] == "forward"
    timing = json.loads(meta["timing"])
    assert set(timing) >= {"queue_ms", "decode_ms", "compute_ms", "encode_ms"}
    assert header["jacobian.x"]["shape"] == [2, 2, 3] and header["jacobian.x"]["dtype"] == "F64"
    # vjp with params: grads.params.<state_dict name>
    v = rng.normal(size=(2, 2))
    body = {"model": m.to_json(), "inputs": {"x": x.tolist(), "t": t.tolist()}, "grad_outputs": v.tolist(),
            "wrt": ["params", "t"], "output_encoding": "safetensors"}
    r = post(server, "/v1/vjp", body)
    tensors, meta, _ = st_read(r.content)
    want = {"outputs", "grads.t"} | {"grads.params." + n for n, _ in m.param_names()}
    assert set(tensors) == want
    assert all(n.startswith("grads.params.net.") for n in tensors if n.startswith("grads.params"))
    # divergence: method as a string
    m2 = make_model(rng, {"op": "silu"}, "float32", False, d=3, d_out=3)
    x2, _ = make_inputs(rng, m2, b=3)
    r = post(server, "/v1/divergence", {"model": m2.to_json(), "inputs": {"x": x2.tolist()}, "method": "hutchinson",
                                       "output_encoding": "safetensors"})
    tensors, meta, header = st_read(r.content)
    assert set(tensors) == {"divergence"} and header["divergence"]["dtype"] == "F32"
    assert meta["method"] == "hutchinson"


# ======================================================================================
# Safetensors request bodies
# ======================================================================================


ST_CASES = [(op, dt, enc) for op in ["forward", "vjp", "vjp_batched", "jacobian", "divergence"] for dt in DTYPES
            for enc in ENCODINGS] + [(op, dt, enc) for op in ["jvp", "jvp_batched"] for dt, enc in
                                     [("float64", "json"), ("float32", "safetensors")]]


@pytest.mark.parametrize("op,dtype,enc", ST_CASES, ids=[f"{o}-{d}-{e}" for o, d, e in ST_CASES])
def test_safetensors_request(server, op, dtype, enc):
    rng = np.random.default_rng(seed_of("streq", op, dtype, enc))
    has_t = op not in ("jvp_batched",) or dtype == "float64"
    m = make_model(rng, ACTIVATIONS[seed_of(op, dtype) % len(ACTIVATIONS)], dtype, has_t, d=3, d_out=3)
    x, t = make_inputs(rng, m, b=4)
    # Binary tensors: F32 into a float64 model is cast, so send the dtype the other way round half the time.
    bin_dtype = np.float32 if (dtype == "float32") != (enc == "base64") else np.float64

    def b(a):
        return np.asarray(a).astype(bin_dtype)

    def seen(a):
        return None if a is None else sent_value(b(a), "nested", "float64", dtype)

    rq = Req(m, "nested", None)
    path, body, _ = op_body(op, m, rq, rng, x, t)
    tensors = {"inputs.x": b(x)}
    if has_t:
        tensors["inputs.t"] = b(t)
    request = {k: v for k, v in body.items() if k not in ("inputs",)}
    ref = None
    xs, ts = seen(x), seen(t)
    if "grad_outputs" in request:
        v = np.asarray(request.pop("grad_outputs"), dtype=np.float64)
        tensors["grad_outputs"] = b(v)
        ref = ref_vjp(m, xs, ts, seen(v), request["wrt"], batched=bool(request.get("is_grads_batched")))
        ref = {"outputs": ref["outputs"], "grads.x": ref["x"], **({"grads.t": ref["t"]} if has_t else {}),
               **{"grads.params." + n: ref["params." + n] for n, _ in m.param_names()}}
    elif "tangents" in request:
        tg = request.pop("tangents")
        tx = np.asarray(tg["x"], dtype=np.float64)
        tensors["tangents.x"] = b(tx)
        tt = None
        if "t" in tg:
            tt = np.asarray(tg["t"], dtype=np.float64)
            tensors["tangents.t"] = b(tt)
        y, u = ref_jvp(m, xs, ts, seen(tx), seen(tt), batched=tx.ndim == 3)
        ref = {"outputs": y, "jvp": u}
    elif path == "forward":
        ref = {"outputs": ref_forward(m, xs, ts)}
    elif path == "jacobian":
        j, y = ref_jacobian(m, xs, ts)
        ref = {"outputs": y, "jacobian.x": j["x"], **({"jacobian.t": j["t"]} if has_t else {})}
    else:
        ref = {"divergence": ref_divergence(m, xs, ts)}
    request["model"] = m.to_json()
    if enc != "json":
        request["output_encoding"] = enc
    data = st_write(tensors, {"request": json.dumps(request)})
    r = post(server, f"/v1/{path}", data, headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 200, describe(r)
    ans = decode_answer(r, dtype, enc)
    check_timing(ans, r)
    got = flatten_answer(ans)
    assert set(got) == set(ref), f"{sorted(got)} != {sorted(ref)}"
    for k in ref:
        close(got[k], ref[k], dtype, k)


def test_safetensors_request_with_binary_weights(server):
    """Named weights may come as tensors `model.weights.<name>` of a safetensors body."""
    rng = np.random.default_rng(11)
    m = make_model(rng, {"op": "gelu"}, "float64", True, d=3, d_out=2, named=True)
    x, t = make_inputs(rng, m, b=3)
    spec = m.to_json()
    weights = spec.pop("weights")
    tensors = {"inputs.x": x, "inputs.t": t}
    for name in weights:
        arr = dict(m.param_names())[name]
        tensors["model.weights." + name] = np.asarray(arr, dtype=np.float64)
    data = st_write(tensors, {"request": json.dumps({"model": spec})})
    r = post(server, "/v1/forward", data, headers={"Content-Type": "application/octet-stream"})
    ans = decode_answer(r, "float64", "json")
    close(ans["outputs"], ref_forward(m, x, t), "float64", "outputs")


# ======================================================================================
# Operation details
# ======================================================================================


@pytest.mark.parametrize("dtype", DTYPES)
def test_vjp_wrt_subsets(server, dtype):
    rng = np.random.default_rng(seed_of("wrt", dtype))
    m = make_model(rng, {"op": "softplus"}, dtype, True, d=3, d_out=2)
    x, t = make_inputs(rng, m, b=4)
    v = rng.normal(size=(4, 2))
    full = ref_vjp(m, x if dtype == "float64" else sent_value(x, "nested", "float64", dtype),
                   sent_value(t, "nested", "float64", dtype), sent_value(v, "nested", "float64", dtype),
                   ["x", "t", "params"])
    for n in range(1, 4):
        for wrt in itertools.combinations(["x", "t", "params"], n):
            body = {"model": m.to_json(), "inputs": {"x": x.tolist(), "t": t.tolist()}, "grad_outputs": v.tolist(),
                    "wrt": list(wrt)}
            ans = decode_answer(post(server, "/v1/vjp", body), dtype, "json")
            assert set(ans["grads"]) == set(wrt), f"wrt={wrt}: got grads {sorted(ans['grads'])}"
            for k in wrt:
                if k == "params":
                    for pn, _ in m.param_names():
                        close(ans["grads"]["params"][pn], full["params." + pn], dtype, pn)
                else:
                    close(ans["grads"][k], full[k], dtype, k)
    # default wrt is ["x"]
    body = {"model": m.to_json(), "inputs": {"x": x.tolist(), "t": t.tolist()}, "grad_outputs": v.tolist()}
    ans = decode_answer(post(server, "/v1/vjp", body), dtype, "json")
    assert set(ans["grads"]) == {"x"}


def test_vjp_without_t_model(server):
    rng = np.random.default_rng(5)
    m = make_model(rng, {"op": "relu"}, "float64", False, d=3, d_out=2)
    x, _ = make_inputs(rng, m, b=3)
    v = rng.normal(size=(3, 2))
    body = {"model": m.to_json(), "inputs": {"x": x.tolist()}, "grad_outputs": v.tolist(), "wrt": ["t"]}
    assert_problem(post(server, "/v1/vjp", body), 422)
    body = {"model": m.to_json(), "inputs": {"x": x.tolist(), "t": [0.1, 0.2, 0.3]}, "grad_outputs": v.tolist()}
    p = assert_problem(post(server, "/v1/vjp", body), 422)
    assert "inputs.t" in error_paths(p)


@pytest.mark.parametrize("dtype", DTYPES)
def test_jvp_missing_tangents_are_zero(server, dtype):
    rng = np.random.default_rng(seed_of("jvp0", dtype))
    m = make_model(rng, {"op": "elu", "alpha": 0.5}, dtype, True, d=3, d_out=4)
    x, t = make_inputs(rng, m, b=4)
    xs, ts = sent_value(x, "nested", "float64", dtype), sent_value(t, "nested", "float64", dtype)
    tx = rng.normal(size=x.shape)
    tt = rng.normal(size=t.shape)
    base = {"model": m.to_json(), "inputs": {"x": x.tolist(), "t": t.tolist()}}
    # only x
    ans = decode_answer(post(server, "/v1/jvp", {**base, "tangents": {"x": tx.tolist()}}), dtype, "json")
    close(ans["jvp"], ref_jvp(m, xs, ts, sent_value(tx, "nested", "float64", dtype), None)[1], dtype, "jvp(x only)")
    # only t: the column of dy/dt
    ans = decode_answer(post(server, "/v1/jvp", {**base, "tangents": {"t": tt.tolist()}}), dtype, "json")
    close(ans["jvp"], ref_jvp(m, xs, ts, None, sent_value(tt, "nested", "float64", dtype))[1], dtype, "jvp(t only)")
    # only t, K-batched
    ttk = rng.normal(size=(3, 4))
    ans = decode_answer(post(server, "/v1/jvp", {**base, "tangents": {"t": ttk.tolist()}}), dtype, "json")
    ref = ref_jvp(m, xs, ts, None, sent_value(ttk, "nested", "float64", dtype), batched=True)[1]
    close(ans["jvp"], ref, dtype, "jvp(t only, K=3)")
    # empty tangents object: all zero
    ans = decode_answer(post(server, "/v1/jvp", {**base, "tangents": {}}), dtype, "json")
    assert np.all(ans["jvp"] == 0) and ans["jvp"].shape == (4, 4)
    # tangents are required
    assert_problem(post(server, "/v1/jvp", base), 422)
    # K must agree
    p = assert_problem(post(server, "/v1/jvp", {**base, "tangents": {"x": rng.normal(size=(2, 4, 3)).tolist(),
                                                                       "t": rng.normal(size=(3, 4)).tolist()}}), 422)
    assert any(pth.startswith("tangents") for pth in error_paths(p)), p


def test_jvp_vs_vjp_consistency(server):
    """<u, vᵀJ> == <Ju, v>, and the Jacobian agrees with both (einsum('bi,bij->bj', v, J) is the VJP)."""
    rng = np.random.default_rng(99)
    m = make_model(rng, {"op": "gelu", "approximate": "tanh"}, "float64", False, d=5, d_out=3)
    x, _ = make_inputs(rng, m, b=4)
    v = rng.normal(size=(4, 3))
    u = rng.normal(size=(4, 5))
    base = {"model": m.to_json(), "inputs": {"x": x.tolist()}}
    g = decode_answer(post(server, "/v1/vjp", {**base, "grad_outputs": v.tolist()}), "float64", "json")["grads"]["x"]
    ju = decode_answer(post(server, "/v1/jvp", {**base, "tangents": {"x": u.tolist()}}), "float64", "json")["jvp"]
    J = decode_answer(post(server, "/v1/jacobian", base), "float64", "json")["jacobian"]["x"]
    close(np.einsum("bi,bij->bj", v, J), g, "float64", "vjp vs jacobian")
    close(np.einsum("bij,bj->bi", J, u), ju, "float64", "jvp vs jacobian")
    close(np.sum(g * u, axis=1), np.sum(ju * v, axis=1), "float64", "<u, vJ> vs <Ju, v>")


@pytest.mark.parametrize("dtype", DTYPES)
def test_jacobian_modes_and_wrt(server, dtype):
    rng = np.random.default_rng(seed_of("modes", dtype))
    for d, d_out in [(5, 2), (2, 6), (4, 4)]:
        m = make_model(rng, {"op": "sigmoid"}, dtype, True, d=d, d_out=d_out)
        x, t = make_inputs(rng, m, b=3)
        xs, ts = sent_value(x, "nested", "float64", dtype), sent_value(t, "nested", "float64", dtype)
        j, y = ref_jacobian(m, xs, ts)
        for mode in ["auto", "reverse", "forward"]:
            for wrt in (["x"], ["t"], ["x", "t"]):
                body = {"model": m.to_json(), "inputs": {"x": x.tolist(), "t": t.tolist()}, "wrt": wrt, "mode": mode}
                ans = decode_answer(post(server, "/v1/jacobian", body), dtype, "json")
                assert set(ans["jacobian"]) == set(wrt), f"wrt={wrt} got {sorted(ans['jacobian'])}"
                for k in wrt:
                    close(ans["jacobian"][k], j[k], dtype, f"jacobian.{k} mode={mode} wrt={wrt}")
                if mode != "auto":
                    assert ans["mode"] == mode
                elif wrt == ["x"] and d_out < d:
                    assert ans["mode"] == "reverse"
                elif wrt == ["x"] and d_out > d + 1:
                    assert ans["mode"] == "forward"
        # default: wrt x, auto
        ans = decode_answer(post(server, "/v1/jacobian", {"model": m.to_json(), "inputs": {"x": x.tolist(), "t": t.tolist()}}),
                            dtype, "json")
        assert set(ans["jacobian"]) == {"x"}
    # wrt t on a model without t is 422
    m = make_model(rng, {"op": "sigmoid"}, dtype, False, d=3, d_out=3)
    x, _ = make_inputs(rng, m, b=2)
    assert_problem(post(server, "/v1/jacobian", {"model": m.to_json(), "inputs": {"x": x.tolist()}, "wrt": ["t"]}), 422)
    assert_problem(post(server, "/v1/jacobian", {"model": m.to_json(), "inputs": {"x": x.tolist()}, "wrt": ["params"]}), 422)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("has_t", [False, True])
def test_hutchinson(server, dtype, has_t):
    rng = np.random.default_rng(seed_of("hutch", dtype, has_t))
    m = make_model(rng, {"op": "tanh"}, dtype, has_t, d=4, d_out=4)
    x, t = make_inputs(rng, m, b=3)
    xs, ts = sent_value(x, "nested", "float64", dtype), sent_value(t, "nested", "float64", dtype) if has_t else None
    inputs = {"x": x.tolist()}
    if has_t:
        inputs["t"] = t.tolist()
    base = {"model": m.to_json(), "inputs": inputs, "method": "hutchinson"}

    def div(**kw):
        return decode_answer(post(server, "/v1/divergence", {**base, **kw}), dtype, "json")["divergence"]

    a = div(seed=5, probes=16)
    b = div(seed=5, probes=16)
    assert a.shape == (3,)
    assert np.array_equal(a, b), "same seed must give the same answer"
    c = div(seed=6, probes=16)
    assert not np.array_equal(a, c), "different seeds gave identical estimates"
    assert np.array_equal(div(), div(seed=0, probes=16)), "defaults are probes 16, seed 0"
    # Many probes: close to exact. Var(εᵀJε) = Σ_{i<j} (J_ij + J_ji)² for Rademacher ε.
    j, _ = ref_jacobian(m, xs, ts)
    J = j["x"]
    exact = np.trace(J, axis1=1, axis2=2)
    probes = 20000
    var = np.array([sum((Jb[i, k] + Jb[k, i]) ** 2 for i in range(4) for k in range(i + 1, 4)) for Jb in J])
    bound = 6 * np.sqrt(var / probes) + 1e-4 * np.max(np.abs(exact))
    est = div(seed=123, probes=probes)
    assert np.all(np.abs(est - exact) <= bound), f"hutchinson {est} vs exact {exact} (bound {bound})"
    # A single probe of an identity-only model is exact: εᵀIε = D.
    mi = {"inputs": ["x"], "dtype": dtype, "layers": [{"op": "identity"}]}
    ans = decode_answer(post(server, "/v1/divergence", {"model": mi, "inputs": {"x": x.tolist()}, "method": "hutchinson",
                                                       "probes": 1, "seed": 9}), dtype, "json")
    close(ans["divergence"], np.full(3, 4.0), dtype, "identity divergence")


def test_divergence_needs_square(server):
    rng = np.random.default_rng(3)
    m = make_model(rng, {"op": "tanh"}, "float64", False, d=4, d_out=3)
    x, _ = make_inputs(rng, m, b=2)
    assert_problem(post(server, "/v1/divergence", {"model": m.to_json(), "inputs": {"x": x.tolist()}}), 422)
    mm = make_model(rng, {"op": "tanh"}, "float64", False, d=4, d_out=4)
    p = assert_problem(post(server, "/v1/divergence", {"model": mm.to_json(), "inputs": {"x": x.tolist()}, "probes": 4}), 422)
    assert "probes" in error_paths(p)


@pytest.mark.parametrize("dtype", DTYPES)
def test_activation_only_model(server, dtype):
    """A model of activations only (D' = D)."""
    rng = np.random.default_rng(seed_of("actonly", dtype))
    layers = [("act", {"op": "softplus", "beta": 1.5}), ("act", {"op": "tanh"}), ("act", {"op": "leaky_relu", "negative_slope": 0.3})]
    m = MLP(layers, False, dtype)
    x = rng.normal(size=(3, 5))
    xs = sent_value(x, "nested", "float64", dtype)
    body = {"model": m.to_json(), "inputs": {"x": x.tolist()}}
    ans = decode_answer(post(server, "/v1/jacobian", body), dtype, "json")
    j, y = ref_jacobian(m, xs)
    close(ans["outputs"], y, dtype, "outputs")
    close(ans["jacobian"]["x"], j["x"], dtype, "jacobian.x")
    ans = decode_answer(post(server, "/v1/divergence", body), dtype, "json")
    close(ans["divergence"], np.trace(j["x"], axis1=1, axis2=2), dtype, "divergence")


def test_linear_without_bias_and_big_activations(server):
    """Bias-free layers; pre-activations far in the tails (softplus threshold, saturating sigmoid/tanh)."""
    rng = np.random.default_rng(21)
    for act in [{"op": "softplus"}, {"op": "sigmoid"}, {"op": "tanh"}, {"op": "elu"}, {"op": "selu"}, {"op": "gelu"},
                {"op": "silu"}, {"op": "softplus", "beta": 0.5, "threshold": 3}]:
        m = MLP.random(rng, 3, [6, 3], [act], dtype="float64", bias=False, scale=12.0)
        x = rng.normal(size=(6, 3)) * 3
        body = {"model": m.to_json(), "inputs": {"x": x.tolist()}, "mode": "forward"}
        ans = decode_answer(post(server, "/v1/jacobian", body), "float64", "json")
        j, y = ref_jacobian(m, x)
        close(ans["outputs"], y, "float64", f"{act} outputs")
        close(ans["jacobian"]["x"], j["x"], "float64", f"{act} jacobian")


# ======================================================================================
# Parameter names, timing, return_outputs
# ======================================================================================


def test_parameter_names(server):
    rng = np.random.default_rng(4)
    act = {"op": "silu"}
    # inline: layers.<i>.weight with i the index in `layers` (activations count)
    m = make_model(rng, act, "float64", False, d=3, d_out=2, named=False)
    x, _ = make_inputs(rng, m, b=2)
    v = rng.normal(size=(2, 2))
    body = {"model": m.to_json(), "inputs": {"x": x.tolist()}, "grad_outputs": v.tolist(), "wrt": ["params"]}
    ans = ok_json(post(server, "/v1/vjp", body))
    assert set(ans["grads"]["params"]) == {"layers.0.weight", "layers.0.bias", "layers.2.weight", "layers.2.bias",
                                           "layers.4.weight", "layers.4.bias"}
    # state_dict names are kept (including odd ones)
    spec = {"inputs": ["x"], "dtype": "float64", "layers": [
        {"op": "linear", "weight": "encoder.fc/1:w", "bias": "encoder.fc/1:b"}, {"op": "tanh"},
        {"op": "linear", "weight": [[0.5, -0.25, 1.0]]}]}
    spec["weights"] = {"encoder.fc/1:w": {"shape": [3, 3], "data": list(np.arange(9) / 10.0)},
                       "encoder.fc/1:b": [0.1, 0.2, 0.3]}
    body = {"model": spec, "inputs": {"x": x.tolist()}, "grad_outputs": [[1.0], [2.0]], "wrt": ["params"]}
    ans = ok_json(post(server, "/v1/vjp", body))
    assert set(ans["grads"]["params"]) == {"encoder.fc/1:w", "encoder.fc/1:b", "layers.2.weight"}
    # key order in JSON objects carries no meaning
    spec2 = {"weights": dict(reversed(list(spec["weights"].items()))), "layers": spec["layers"], "dtype": "float64",
             "inputs": ["x"]}
    ans2 = ok_json(post(server, "/v1/vjp", {**body, "model": spec2}))
    assert ans2["grads"] == ans["grads"]
    # a weight referenced by two layers
    shared = {"inputs": ["x"], "dtype": "float64", "layers": [
        {"op": "linear", "weight": "w"}, {"op": "tanh"}, {"op": "linear", "weight": "w"}],
        "weights": {"w": (np.eye(3) * 0.5).tolist()}}
    r = post(server, "/v1/vjp", {"model": shared, "inputs": {"x": x.tolist()}, "grad_outputs": np.ones((2, 3)).tolist(),
                                 "wrt": ["params"]})
    if r.status_code == 200:
        # tied weights: the gradient is the sum over both uses (as in torch)
        import torch

        W = torch.tensor(np.eye(3) * 0.5, requires_grad=True)
        y = torch.tanh(torch.tensor(x) @ W.T) @ W.T
        (g,) = torch.autograd.grad(y, [W], grad_outputs=torch.ones(2, 3, dtype=torch.float64))
        close(np.asarray(r.json()["grads"]["params"]["w"]), g.numpy(), "float64", "tied weight grad")
    else:
        assert_problem(r, 422)


def test_timing_and_server_timing_everywhere(server):
    rng = np.random.default_rng(8)
    m = make_model(rng, {"op": "relu"}, "float32", False, d=3, d_out=3)
    x, _ = make_inputs(rng, m, b=2)
    bodies = {
        "forward": {}, "vjp": {"grad_outputs": np.ones((2, 3)).tolist()}, "jvp": {"tangents": {"x": x.tolist()}},
        "jacobian": {}, "divergence": {},
    }
    for op, extra in bodies.items():
        for enc in ENCODINGS:
            body = {"model": m.to_json(), "inputs": {"x": x.tolist()}, **extra, "output_encoding": enc}
            r = post(server, f"/v1/{op}", body)
            check_timing(decode_answer(r, "float32", enc), r)


def test_return_outputs(server):
    rng = np.random.default_rng(9)
    m = make_model(rng, {"op": "tanh"}, "float64", True, d=3, d_out=3)
    x, t = make_inputs(rng, m, b=2)
    base = {"model": m.to_json(), "inputs": {"x": x.tolist(), "t": t.tolist()}}
    extras = {"vjp": {"grad_outputs": np.ones((2, 3)).tolist()}, "jvp": {"tangents": {"x": x.tolist()}}, "jacobian": {}}
    y = ref_forward(m, x, t)
    for op, extra in extras.items():
        for enc in ENCODINGS:
            ans = decode_answer(post(server, f"/v1/{op}", {**base, **extra, "return_outputs": False, "output_encoding": enc}),
                                "float64", enc)
            assert "outputs" not in ans, f"{op}/{enc}: outputs present although return_outputs is false"
            ans = decode_answer(post(server, f"/v1/{op}", {**base, **extra, "return_outputs": True, "output_encoding": enc}),
                                "float64", enc)
            close(ans["outputs"], y, "float64", f"{op} outputs")
    ans = decode_answer(post(server, "/v1/divergence", {**base, "return_outputs": False}), "float64", "json")
    assert "outputs" not in ans and ans["divergence"].shape == (2,)
    ans = decode_answer(post(server, "/v1/divergence", {**base, "return_outputs": True}), "float64", "json")
    if "outputs" in ans:
        close(ans["outputs"], y, "float64", "divergence outputs")
    # forward: outputs are the answer itself
    ans = decode_answer(post(server, "/v1/forward", {**base, "return_outputs": False}), "float64", "json")
    assert "timing" in ans


# ======================================================================================
# Registry
# ======================================================================================


def register(url, model, name=None, expect=(200, 201)):
    body = {"model": model}
    if name is not None:
        body["name"] = name
    r = post(url, "/v1/models", body)
    assert r.status_code in expect, describe(r)
    return r


def test_registry_lifecycle(server):
    rng = np.random.default_rng(12)
    m = make_model(rng, {"op": "selu"}, "float64", True, d=3, d_out=3, named="mixed")
    x, t = make_inputs(rng, m, b=3)
    r1 = register(server, m.to_json(), "first", expect=(201,))
    s1 = r1.json()
    mid = s1["id"]
    assert isinstance(mid, str) and len(mid) >= 16
    assert r1.headers.get("Location", "").endswith(mid)
    # same content, same id, 200 on repeat (name is not part of the id; other wire forms too)
    r2 = register(server, m.to_json(), "first", expect=(200,))
    assert r2.json()["id"] == mid
    r3 = register(server, m.to_json("b64"), "another name", expect=(200,))
    assert r3.json()["id"] == mid
    r4 = register(server, m.to_json("flat"), expect=(200,))
    assert r4.json()["id"] == mid
    # different content → different id
    m2 = make_model(rng, {"op": "selu"}, "float64", True, d=3, d_out=3)
    mid2 = register(server, m2.to_json(), "second", expect=(201,)).json()["id"]
    assert mid2 != mid
    # list / get
    listed = ok_json(get(server, "/v1/models"))["models"]
    ids = [e["id"] for e in listed]
    assert mid in ids and mid2 in ids
    one = ok_json(get(server, f"/v1/models/{mid}"))
    assert one["id"] == mid and one["name"] == "first"
    assert one["dtype"] == "float64" and one["inputs"] == ["x", "t"]
    assert one["input_width"] == 3 and one["output_width"] == 3
    n_params = sum(a.size for _, a in m.param_names())
    assert one["parameter_count"] == n_params
    assert {p["name"] for p in one["parameters"]} == {n for n, _ in m.param_names()}
    assert "weights" not in json.dumps(one), "the description must not carry weights"
    # compute by id == inline
    for op, extra in [("forward", {}), ("vjp", {"grad_outputs": np.ones((3, 3)).tolist(), "wrt": ["x", "t", "params"]}),
                      ("jvp", {"tangents": {"x": x.tolist()}}), ("jacobian", {"wrt": ["x", "t"]}), ("divergence", {})]:
        body = {"inputs": {"x": x.tolist(), "t": t.tolist()}, **extra}
        by_id = ok_json(post(server, f"/v1/{op}", {**body, "model": mid}))
        inline = ok_json(post(server, f"/v1/{op}", {**body, "model": m.to_json()}))
        by_id.pop("timing")
        inline.pop("timing")
        assert by_id == inline, op
    close(ok_json(post(server, "/v1/forward", {"model": mid, "inputs": {"x": x.tolist(), "t": t.tolist()}}))["outputs"],
          ref_forward(m, x, t), "float64", "forward by id")
    # delete: 204, then 404 everywhere
    r = delete(server, f"/v1/models/{mid2}")
    assert r.status_code == 204, describe(r)
    assert_problem(get(server, f"/v1/models/{mid2}"), 404)
    assert_problem(delete(server, f"/v1/models/{mid2}"), 404)
    p = assert_problem(post(server, "/v1/forward", {"model": mid2, "inputs": {"x": x.tolist(), "t": t.tolist()}}), 404)
    assert "model" in error_paths(p)
    assert mid2 not in [e["id"] for e in ok_json(get(server, "/v1/models"))["models"]]
    # re-registering after delete is a new 201
    assert register(server, m2.to_json(), expect=(201,)).json()["id"] == mid2


def test_registry_unknown_id(server):
    for op in ["forward", "vjp", "jvp", "jacobian", "divergence"]:
        body = {"model": "0" * 64, "inputs": {"x": [[1.0, 2.0]]}, "grad_outputs": [[1.0]], "tangents": {"x": [[1.0, 0.0]]}}
        body = {k: v for k, v in body.items() if k in ("model", "inputs") or (op, k) in (("vjp", "grad_outputs"), ("jvp", "tangents"))}
        p = assert_problem(post(server, f"/v1/{op}", body), 404)
        assert p["status"] == 404
    assert_problem(get(server, "/v1/models/doesnotexist"), 404)
    assert_problem(delete(server, "/v1/models/doesnotexist"), 404)


def test_registry_safetensors_registration(server):
    rng = np.random.default_rng(13)
    m = make_model(rng, {"op": "gelu"}, "float32", False, d=3, d_out=2, named=True)
    spec = m.to_json()
    weights = spec.pop("weights")
    tensors = {name: np.asarray(dict(m.param_names())[name], dtype=np.float32) for name in weights}
    data = st_write(tensors, {"model": json.dumps(spec), "name": "from-safetensors"})
    r = post(server, "/v1/models", data, headers={"Content-Type": "application/octet-stream"})
    assert r.status_code in (200, 201), describe(r)
    mid = r.json()["id"]
    if r.status_code == 201:
        assert r.json()["name"] == "from-safetensors"
    # the same content posted as JSON has the same id
    assert register(server, m.to_json(), expect=(200,)).json()["id"] == mid
    x, _ = make_inputs(rng, m, b=2)
    ans = decode_answer(post(server, "/v1/forward", {"model": mid, "inputs": {"x": x.tolist()}}), "float32", "json")
    close(ans["outputs"], ref_forward(m, sent_value(x, "nested", "float64", "float32")), "float32", "outputs")


def test_registry_invalid(server):
    assert_problem(post(server, "/v1/models", {"name": "x"}), 422)
    assert_problem(post(server, "/v1/models", {"model": {"layers": []}}), 422)
    assert_problem(post(server, "/v1/models", {"model": {"layers": [{"op": "relu"}]}, "extra": 1}), 422)
    assert_problem(post(server, "/v1/models", {"model": {"layers": [{"op": "relu"}]}, "name": 5}), 422)
    assert_problem(post(server, "/v1/models", b"{not json", headers={"Content-Type": "application/json"}), 400)


def test_restart_keeps_models_and_skips_damaged_files(start_server, tmp_path):
    rng = np.random.default_rng(14)
    data = tmp_path / "data"
    s1 = start_server(data_dir=data)
    m1 = make_model(rng, {"op": "tanh"}, "float64", False, d=3, d_out=2)
    m2 = make_model(rng, {"op": "relu"}, "float32", True, d=2, d_out=2)
    id1 = register(s1.url, m1.to_json(), "one", expect=(201,)).json()["id"]
    id2 = register(s1.url, m2.to_json(), "two", expect=(201,)).json()["id"]
    x, _ = make_inputs(rng, m1, b=2)
    before = ok_json(post(s1.url, "/v1/forward", {"model": id1, "inputs": {"x": x.tolist()}}))["outputs"]
    assert s1.stop() is not None
    assert (data / "models" / f"{id1}.json").exists()
    # same data dir: models are still there
    s2 = start_server(data_dir=data)
    ids = {e["id"] for e in ok_json(get(s2.url, "/v1/models"))["models"]}
    assert {id1, id2} <= ids
    assert ok_json(get(s2.url, f"/v1/models/{id1}"))["name"] == "one"
    after = ok_json(post(s2.url, "/v1/forward", {"model": id1, "inputs": {"x": x.tolist()}}))["outputs"]
    assert after == before
    s2.stop()
    # a copy with one file damaged: the server starts, skips it, keeps the other
    copy = tmp_path / "copy"
    shutil.copytree(data, copy)
    f = copy / "models" / f"{id2}.json"
    f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2] + b"\x00garbage")
    (copy / "models" / "notamodel.json").write_text("{]")
    s3 = start_server(data_dir=copy)
    assert get(s3.url, "/healthz").status_code == 200
    ids = {e["id"] for e in ok_json(get(s3.url, "/v1/models"))["models"]}
    assert id1 in ids and id2 not in ids
    assert_problem(get(s3.url, f"/v1/models/{id2}"), 404)
    ok_json(post(s3.url, "/v1/forward", {"model": id1, "inputs": {"x": x.tolist()}}))
    # the original directory is untouched
    s4 = start_server(data_dir=data)
    assert {id1, id2} <= {e["id"] for e in ok_json(get(s4.url, "/v1/models"))["models"]}
    s3.stop()
    s4.stop()


# ======================================================================================
# Service behaviour: health under load, limits, Expect, concurrency, auth, endpoints
# ======================================================================================


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


@pytest.fixture(scope="module")
def limited_server(start_server):
    return start_server(["--max-output-elements", "1000", "--max-body-bytes", "20000"])


def test_output_limit(limited_server):
    url = limited_server.url
    info = ok_json(get(url, "/v1/info"))
    assert info["limits"]["max_output_elements"] == 1000
    assert info["limits"]["max_body_bytes"] == 20000
    model = {"dtype": "float64", "layers": [{"op": "tanh"}]}
    x = np.full((10, 10), 0.5)
    # 10·10·10 Jacobian + 100 outputs > 1000
    p = assert_problem(post(url, "/v1/jacobian", {"model": model, "inputs": {"x": x.tolist()}}), 422)
    assert "1000" in p["detail"], p
    assert p["errors"] and any("1000" in e["message"] for e in p["errors"]), p
    # without the outputs it fits exactly
    r = post(url, "/v1/jacobian", {"model": model, "inputs": {"x": x.tolist()}, "return_outputs": False})
    assert r.status_code == 200, describe(r)
    # forward of 1001 numbers
    x2 = np.zeros((1001, 1))
    assert_problem(post(url, "/v1/forward", {"model": model, "inputs": {"x": x2.tolist()}}), 422)
    # K-batched vjp: K·B·D
    v = np.ones((11, 10, 10))
    p = assert_problem(post(url, "/v1/vjp", {"model": model, "inputs": {"x": x.tolist()}, "grad_outputs": v.tolist(),
                                            "is_grads_batched": True, "return_outputs": False}), 422)
    assert "1000" in p["detail"]
    # jvp: K·B·D'
    p = assert_problem(post(url, "/v1/jvp", {"model": model, "inputs": {"x": x.tolist()},
                                            "tangents": {"x": v.tolist()}, "return_outputs": False}), 422)
    assert "1000" in p["detail"]


def test_output_limit_checked_before_computing(server, server_process):
    """A Jacobian of 10⁹ numbers is refused before computing (computing it would take minutes and 8 GB):
    the answer is the 422 (not the 504 of the 60 s deadline), and the server never held the answer's
    8 GB: its peak resident size (VmHWM, where /proc has it) grows by far less than that."""
    x = np.random.default_rng(16).normal(size=(1000, 1000)).astype(np.float32)
    model = {"dtype": "float64", "layers": [{"op": "tanh"}]}
    before = peak_rss_bytes(server_process.proc.pid)
    r = post(server, "/v1/jacobian", {"model": model, "inputs": {"x": wire(x, "b64", "float32")}})
    p = assert_problem(r, 422)
    assert str(1 << 24) in p["detail"], p
    after = peak_rss_bytes(server_process.proc.pid)
    if before is not None and after is not None:
        grew = after - before
        assert grew < 1 << 30, f"the server's peak memory grew by {grew / 2**30:.2f} GiB for a request refused by its size"


def test_body_limit(limited_server):
    url = limited_server.url
    big = {"model": {"layers": [{"op": "tanh"}]}, "inputs": {"x": np.zeros((1, 4000)).tolist()}}
    data = json.dumps(big).encode()
    assert len(data) > 20000
    p = assert_problem(post(url, "/v1/forward", data), 413)
    assert p["status"] == 413
    assert_problem(post(url, "/v1/models", data), 413)
    # just under the limit is fine
    small = {"model": {"layers": [{"op": "tanh"}]}, "inputs": {"x": np.zeros((1, 100)).tolist()}}
    ok_json(post(url, "/v1/forward", small))


def test_body_limit_chunked(limited_server):
    """A chunked body (no Content-Length) above --max-body-bytes is a 413 too."""
    url = limited_server.url

    def gen():
        for _ in range(30):
            yield b" " * 1000
        yield b"{}"
    r = requests.post(url + "/v1/forward", data=gen(), headers={"Content-Type": "application/json"}, timeout=TIMEOUT)
    assert_problem(r, 413)


def raw_http(port, head: bytes, timeout=TIMEOUT):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(head)
    return s


def read_until(s, marker: bytes, timeout: float) -> bytes:
    s.settimeout(timeout)
    buf = b""
    deadline = time.monotonic() + timeout
    while marker not in buf and time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            break
        if not chunk:
            break
        buf += chunk
    return buf


def read_response(s, timeout=TIMEOUT) -> tuple[int, dict, bytes]:
    buf = read_until(s, b"\r\n\r\n", timeout)
    assert b"\r\n\r\n" in buf, f"no complete answer head within {timeout} s (got {buf[:300]!r})"
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:] if ":" in l)}
    n = int(headers.get("content-length", "0"))
    s.settimeout(timeout)
    while len(rest) < n:
        chunk = s.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, headers, rest


def expect_body():
    """A ~5.5 KB JSON body."""
    x = np.round(np.linspace(-1, 1, 16 * 36).reshape(-1, 16), 6)
    body = json.dumps({"model": {"dtype": "float64", "layers": [{"op": "tanh"}]}, "inputs": {"x": x.tolist()}}).encode()
    return body, x


def test_expect_100_continue(server_process):
    """`Expect: 100-continue`: the server answers 100 while the body is still unsent. The client below sends
    the body only after reading the 100, so a server that waited for the body would never send it (the
    read would run into its generous timeout): the ordering is the check, not how fast the 100 comes."""
    port = server_process.port
    body, x = expect_body()
    assert len(body) > 5000
    head = (f"POST /v1/forward HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n").encode()
    s = raw_http(port, head)
    try:
        first = read_until(s, b"\r\n\r\n", TIMEOUT)
        assert first.startswith(b"HTTP/1.1 100"), f"no 100 Continue before the body was sent (got {first!r})"
        leftover = first.split(b"\r\n\r\n", 1)[1]
        assert leftover == b""
        s.sendall(body)
        status, headers, payload = read_response(s)
        assert status == 200, payload[:500]
        close(json.loads(payload)["outputs"], np.tanh(x), "float64", "outputs")
    finally:
        s.close()
    # the same through http.client, the way curl would do it
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    conn.putrequest("POST", "/v1/forward")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(len(body)))
    conn.putheader("Expect", "100-continue")
    conn.endheaders()
    got = read_until(conn.sock, b"\r\n\r\n", TIMEOUT)  # the whole interim answer, however it is split
    assert got.startswith(b"HTTP/1.1 100") and got.endswith(b"\r\n\r\n"), got
    conn.sock.settimeout(TIMEOUT)
    conn.send(body)
    resp = conn.getresponse()
    assert resp.status == 200
    resp.read()
    conn.close()


def test_expect_100_continue_over_limit(limited_server):
    """Declared body above --max-body-bytes: no 100, a 413 straight away."""
    port = limited_server.port
    head = (f"POST /v1/forward HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: 50000\r\nExpect: 100-continue\r\n\r\n").encode()
    s = raw_http(port, head)
    try:
        status, headers, payload = read_response(s)  # the body is never sent: a 100 or a wait would fail here
        assert status == 413, (status, payload)
        assert headers.get("content-type", "").startswith("application/problem+json")
    finally:
        s.close()


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
