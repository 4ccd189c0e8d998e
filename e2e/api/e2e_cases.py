"""Shared pieces of the end-to-end tests (e2e/api/test_*.py): the case matrix, random models and inputs,
one request in any output encoding, operation bodies, registration."""

from __future__ import annotations

import zlib

import requests

from gs_helpers import (
    ACTIVATIONS,
    MLP,
    act_id,
    decode_answer,
    describe,
    post,
    ref_divergence,
    ref_forward,
    ref_jacobian,
    ref_jvp,
    ref_vjp,
    sent_value,
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


def register(url, model, name=None, expect=(200, 201)):
    body = {"model": model}
    if name is not None:
        body["name"] = name
    r = post(url, "/v1/models", body)
    assert r.status_code in expect, describe(r)
    return r
