"""UM-Bridge (protocol 1.0) under /umbridge/{id}, driven by the official client
(`umbridge.HTTPModel(url, "forward")`), compared with PyTorch.

One model "forward". Per point: inputs [x (D), t (1)] (or [x (D)]), output [y (D')].
With config={"batch": B}: [x (B·D), t (B)] → [y (B·D')], row-major.
Gradient(outWrt=0, inWrt, sens) = sensᵀJ (VJP); ApplyJacobian(outWrt=0, inWrt, vec) = J·vec (JVP).
"""

from __future__ import annotations

import numpy as np
import pytest
import requests
from conftest import B, assert_close, describe, need, ref_forward, ref_jvp, ref_vjp

MODELS = ["toy32", "small32", "toy64", "small64"]


@pytest.fixture(scope="module")
def umbridge():
    return need("umbridge")


@pytest.fixture(scope="module")
def clients(umbridge, models, server):
    return {k: umbridge.HTTPModel(f"{server}/umbridge/{spec.id}", "forward") for k, spec in models.items()}


def point_params(spec, inp, i):
    """The client's parameters for sample i: [[x_i…], [t_i]] (lists of Python floats)."""
    p = [inp["x"][i].tolist()]
    if spec.has_t:
        p.append([float(inp["t"][i])])
    return p


def batch_params(spec, inp):
    p = [inp["x"].reshape(-1).tolist()]
    if spec.has_t:
        p.append(inp["t"].tolist())
    return p


@pytest.mark.parametrize("key", MODELS)
def test_sizes_and_support(clients, models, key):
    spec = models[key]
    m = clients[key]
    assert m.supports_evaluate() and m.supports_gradient() and m.supports_apply_jacobian()
    assert not m.supports_apply_hessian()
    assert m.get_input_sizes() == ([spec.d, 1] if spec.has_t else [spec.d])
    assert m.get_output_sizes() == [spec.d_out]
    assert m.get_input_sizes({"batch": B}) == ([B * spec.d, B] if spec.has_t else [B * spec.d])
    assert m.get_output_sizes({"batch": B}) == [B * spec.d_out]


@pytest.mark.parametrize("key", MODELS)
def test_evaluate_per_point(clients, models, key):
    spec = models[key]
    inp = spec.inputs(seed=30)
    ref = ref_forward(spec, inp)
    for i in range(B):
        out = clients[key](point_params(spec, inp, i))
        assert isinstance(out, list) and len(out) == 1 and len(out[0]) == spec.d_out
        assert_close(out[0], ref[i], spec.dtype, f"{key} Evaluate point {i}")


@pytest.mark.parametrize("key", MODELS)
def test_evaluate_batched(clients, models, key):
    spec = models[key]
    inp = spec.inputs(seed=31)
    out = clients[key](batch_params(spec, inp), config={"batch": B})
    assert len(out) == 1 and len(out[0]) == B * spec.d_out
    assert_close(np.reshape(out[0], (B, spec.d_out)), ref_forward(spec, inp), spec.dtype, f"{key} Evaluate batched")


@pytest.mark.parametrize("key", MODELS)
def test_gradient_per_point(clients, models, key):
    """Gradient = sensᵀJ for input inWrt (x: length D, t: length 1)."""
    spec = models[key]
    inp = spec.inputs(seed=32)
    sens = spec.like_y(seed=33)
    ref = ref_vjp(spec, inp, sens)  # per-sample rows are independent
    for i in range(B):
        gx = clients[key].gradient(0, 0, point_params(spec, inp, i), sens[i].tolist())
        assert_close(gx, ref["x"][i], spec.dtype, f"{key} Gradient x point {i}")
        if spec.has_t:
            gt = clients[key].gradient(0, 1, point_params(spec, inp, i), sens[i].tolist())
            assert_close(gt, ref["t"][i : i + 1], spec.dtype, f"{key} Gradient t point {i}")


@pytest.mark.parametrize("key", MODELS)
def test_gradient_batched(clients, models, key):
    spec = models[key]
    inp = spec.inputs(seed=34)
    sens = spec.like_y(seed=35)
    ref = ref_vjp(spec, inp, sens)
    cfg = {"batch": B}
    gx = clients[key].gradient(0, 0, batch_params(spec, inp), sens.reshape(-1).tolist(), config=cfg)
    assert len(gx) == B * spec.d
    assert_close(np.reshape(gx, (B, spec.d)), ref["x"], spec.dtype, f"{key} Gradient x batched")
    if spec.has_t:
        gt = clients[key].gradient(0, 1, batch_params(spec, inp), sens.reshape(-1).tolist(), config=cfg)
        assert_close(gt, ref["t"], spec.dtype, f"{key} Gradient t batched")


@pytest.mark.parametrize("key", MODELS)
def test_apply_jacobian_per_point(clients, models, key):
    """ApplyJacobian = J·vec for input inWrt, length D' (a JVP)."""
    spec = models[key]
    inp = spec.inputs(seed=36)
    tan = spec.inputs(seed=37)
    ref_x = ref_jvp(spec, inp, {"x": tan["x"]})
    ref_t = ref_jvp(spec, inp, {"t": tan["t"]}) if spec.has_t else None
    for i in range(B):
        jx = clients[key].apply_jacobian(0, 0, point_params(spec, inp, i), tan["x"][i].tolist())
        assert_close(jx, ref_x[i], spec.dtype, f"{key} ApplyJacobian x point {i}")
        if spec.has_t:
            jt = clients[key].apply_jacobian(0, 1, point_params(spec, inp, i), [float(tan["t"][i])])
            assert_close(jt, ref_t[i], spec.dtype, f"{key} ApplyJacobian t point {i}")


@pytest.mark.parametrize("key", MODELS)
def test_apply_jacobian_batched(clients, models, key):
    spec = models[key]
    inp = spec.inputs(seed=38)
    tan = spec.inputs(seed=39)
    cfg = {"batch": B}
    jx = clients[key].apply_jacobian(0, 0, batch_params(spec, inp), tan["x"].reshape(-1).tolist(), config=cfg)
    assert_close(np.reshape(jx, (B, spec.d_out)), ref_jvp(spec, inp, {"x": tan["x"]}), spec.dtype, f"{key} ApplyJacobian x batched")
    if spec.has_t:
        jt = clients[key].apply_jacobian(0, 1, batch_params(spec, inp), tan["t"].tolist(), config=cfg)
        assert_close(np.reshape(jt, (B, spec.d_out)), ref_jvp(spec, inp, {"t": tan["t"]}), spec.dtype, f"{key} ApplyJacobian t batched")


def test_trailing_slash_url(umbridge, models, server):
    """HTTPModel(".../umbridge/<id>/") sends GET /umbridge/<id>//Info and POST …//Evaluate: must work."""
    spec = models["toy32"]
    m = umbridge.HTTPModel(f"{server}/umbridge/{spec.id}/", "forward")
    assert m.get_input_sizes() == [spec.d, 1]
    inp = spec.inputs(seed=40)
    out = m(point_params(spec, inp, 0))
    assert_close(out[0], ref_forward(spec, inp)[0], "float32", "Evaluate via //")
    sens = spec.like_y(seed=41)
    g = m.gradient(0, 0, point_params(spec, inp, 0), sens[0].tolist())
    assert_close(g, ref_vjp(spec, inp, sens)["x"][0], "float32", "Gradient via //")


def test_raw_double_slash_routes(server, models):
    spec = models["small64"]
    r = requests.get(f"{server}/umbridge/{spec.id}//Info", timeout=30)
    assert r.status_code == 200 and r.json() == {"protocolVersion": 1.0, "models": ["forward"]}, describe(r)
    r = requests.post(f"{server}/umbridge/{spec.id}//Evaluate", json={"name": "forward", "input": [[0.0] * spec.d], "config": {}}, timeout=30)
    assert r.status_code == 200 and len(r.json()["output"][0]) == spec.d_out, describe(r)


# --------------------------------------------------------------------------------------
# Errors, with the client's own error type
# --------------------------------------------------------------------------------------


def _model_error(fn, kind: str = "InvalidInput"):
    with pytest.raises(Exception) as info:
        fn()
    assert type(info.value) is Exception, f"expected the client's Exception, got {type(info.value).__name__}: {info.value}"
    assert str(info.value).startswith(f"Model returned error of type {kind}: "), str(info.value)
    return str(info.value)


def test_wrong_input_length(clients, models):
    spec = models["toy32"]
    m = clients["toy32"]
    msg = _model_error(lambda: m([[1.0, 2.0], [0.5]]))
    assert "Input parameter 0" in msg and str(spec.d) in msg
    _model_error(lambda: m([[0.0] * spec.d, [0.5, 0.5]]))
    # batched config, per-point vectors
    _model_error(lambda: m([[0.0] * spec.d, [0.5]], config={"batch": B}))


def test_wrong_number_of_inputs(clients, models):
    spec = models["toy32"]
    _model_error(lambda: clients["toy32"]([[0.0] * spec.d]))
    spec = models["small32"]
    _model_error(lambda: clients["small32"]([[0.0] * spec.d, [0.5]]))


def test_wrong_sens_and_vec_lengths(clients, models):
    spec = models["small64"]
    m = clients["small64"]
    p = [[0.1] * spec.d]
    _model_error(lambda: m.gradient(0, 0, p, [1.0] * (spec.d_out + 1)))
    _model_error(lambda: m.apply_jacobian(0, 0, p, [1.0] * (spec.d + 1)))


def test_wrong_wrt_indices(clients, models):
    spec = models["small64"]
    m = clients["small64"]
    p = [[0.1] * spec.d]
    _model_error(lambda: m.gradient(0, 1, p, [1.0] * spec.d_out))
    _model_error(lambda: m.gradient(1, 0, p, [1.0] * spec.d_out))
    _model_error(lambda: m.apply_jacobian(0, 3, p, [1.0] * spec.d))


def test_bad_config(clients, models):
    spec = models["small64"]
    _model_error(lambda: clients["small64"]([[0.1] * spec.d], config={"batch": 0}))
    _model_error(lambda: clients["small64"]([[0.1] * spec.d], config={"batch": "two"}))


def test_apply_hessian_is_refused_by_the_client(clients, models):
    spec = models["small64"]
    with pytest.raises(Exception, match="ApplyHessian not supported by model"):
        clients["small64"].apply_hessian(0, 0, 0, [[0.1] * spec.d], [1.0] * spec.d_out, [1.0] * spec.d)


def test_unknown_model_name(umbridge, models, server):
    with pytest.raises(Exception, match=r"Model backward not supported by server! Supported models are: \['forward'\]"):
        umbridge.HTTPModel(f"{server}/umbridge/{models['small64'].id}", "backward")


def test_unknown_model_id_on_evaluate(umbridge, models, server):
    """A client whose model disappears (or points at a wrong id) gets ModelNotFound."""
    spec = models["small64"]
    m = umbridge.HTTPModel(f"{server}/umbridge/{spec.id}", "forward")
    m.url = f"{server}/umbridge/0000000000000000deadbeef"
    _model_error(lambda: m([[0.1] * spec.d]), kind="ModelNotFound")
    _model_error(lambda: m.gradient(0, 0, [[0.1] * spec.d], [1.0] * spec.d_out), kind="ModelNotFound")


def test_unknown_model_id_on_connect(umbridge, server):
    """HTTPModel(url-with-unknown-id) must fail with a clear Exception from the client, not a
    KeyError. The client reads GET /Info without any error check (protocols.md §2.4: /Info must
    simply succeed), so an unknown id should answer {"protocolVersion": 1.0, "models": []} (an
    "error" key may ride along), making the client raise its own
    `Exception("Model forward not supported by server! …")`."""
    url = f"{server}/umbridge/0000000000000000deadbeef"
    r = requests.get(url + "/Info", timeout=30)
    assert r.status_code < 500, describe(r)
    try:
        umbridge.HTTPModel(url, "forward")
    except Exception as e:  # noqa: BLE001
        assert type(e) is Exception and "not supported by server" in str(e), (
            f"HTTPModel on an unknown id raised {type(e).__name__}: {e!r}; GET {url}/Info answered "
            f"{r.status_code} {r.text}"
        )
    else:
        pytest.fail("HTTPModel on an unknown id did not raise")


def test_raw_errors_are_umbridge_errors_never_500(server, models):
    spec = models["small64"]
    base = f"{server}/umbridge/{spec.id}"
    cases = [
        ("/Evaluate", b"{not json"),
        ("/Evaluate", b"[]"),
        ("/Evaluate", b'{"name": "forward", "input": [[1, 2]], "config": {}}'),
        ("/Evaluate", b'{"name": "forward", "input": [[1, 2, 3, 4, 5, null]], "config": {}}'),
        ("/Gradient", b'{"name": "forward", "input": [[1, 2, 3, 4, 5, 6]], "outWrt": 0, "inWrt": 0, "config": {}}'),
        ("/ApplyHessian", b'{"name": "forward", "input": [[1, 2, 3, 4, 5, 6]], "config": {}}'),
        ("/Evaluate", b'{"name": "other", "input": [[1, 2, 3, 4, 5, 6]], "config": {}}'),
    ]
    for path, body in cases:
        r = requests.post(base + path, data=body, headers={"Content-Type": "application/json"}, timeout=30)
        assert 400 <= r.status_code < 500, describe(r)
        err = r.json().get("error")
        assert isinstance(err, dict) and isinstance(err.get("type"), str) and isinstance(err.get("message"), str), describe(r)
