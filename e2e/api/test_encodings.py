"""Every input form x every output encoding, per operation; safetensors answers and safetensors request bodies."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gs_helpers import (
    ACTIVATIONS,
    close,
    decode_answer,
    describe,
    post,
    ref_divergence,
    ref_forward,
    ref_jacobian,
    ref_jvp,
    ref_vjp,
    sent_value,
    st_read,
    st_write,
)

from e2e_cases import (
    DTYPES,
    ENCODINGS,
    FORMS,
    seed_of,
    Req,
    make_model,
    make_inputs,
    run,
    check_timing,
    OPS,
    op_body,
    flatten_answer,
)


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
