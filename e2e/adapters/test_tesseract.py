"""The Tesseract protocol under /tesseract/{id}, driven by the official SDK
(`tesseract_core.Tesseract.from_url`), compared with PyTorch.

Models: toy32/toy64 (ToyMLP, x [3, 784], t [3]) and small32/small64 (x [3, 6] → y [3, 4], no t);
both output encodings: the SDK's default (`Accept: application/*` → JSON buffers) and
`with_encoding(output_format="json+base64")`.
"""

from __future__ import annotations

import numpy as np
import pytest
import requests
from conftest import (
    B,
    assert_close,
    describe,
    need,
    ref_forward,
    ref_jacobian_tesseract,
    ref_jvp,
    ref_vjp,
)

MODELS = ["toy32", "small32", "toy64", "small64"]
ENCODINGS = ["default", "json+base64"]
ENDPOINTS = {"apply", "abstract_eval", "vector_jacobian_product", "jacobian_vector_product", "jacobian", "health"}
TIMEOUT = 180


@pytest.fixture(scope="module")
def Tesseract():
    return need("tesseract_core").Tesseract


@pytest.fixture(scope="module")
def ValidationError():
    return need("pydantic_core").ValidationError


@pytest.fixture(scope="module")
def clients(Tesseract, models, server):
    """One SDK client per model (its openapi.json is fetched once and cached)."""
    return {k: Tesseract.from_url(f"{server}/tesseract/{spec.id}", timeout=TIMEOUT) for k, spec in models.items()}


def client(clients, key: str, encoding: str):
    t = clients[key]
    return t if encoding == "default" else t.with_encoding(output_format=encoding)


def wrt_sets(spec):
    return [["x"], ["t"], ["x", "t"]] if spec.has_t else [["x"]]


def check_array(a, spec, shape, what):
    assert isinstance(a, np.ndarray), f"{what}: the SDK returned {type(a).__name__}, not a decoded array: {str(a)[:300]}"
    assert a.dtype == spec.np_dtype, f"{what}: dtype {a.dtype}, model dtype {spec.dtype}"
    assert a.shape == tuple(shape), f"{what}: shape {a.shape}, expected {tuple(shape)}"


# --------------------------------------------------------------------------------------
# Discovery
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", MODELS)
def test_health_and_available_endpoints(clients, key):
    t = clients[key]
    assert t.health() == {"status": "ok"}
    assert set(t.available_endpoints) == ENDPOINTS


@pytest.mark.parametrize("key", MODELS)
def test_openapi_schema_describes_the_model(clients, models, key):
    """What tesseract-jax reads: the apply schemas and the differentiable arrays, per model."""
    spec = models[key]
    schema = clients[key].openapi_schema
    comps = schema["components"]["schemas"]
    names = ["x", "t"] if spec.has_t else ["x"]
    assert sorted(comps["Apply_InputSchema"]["properties"]) == sorted(names)
    assert list(comps["Apply_OutputSchema"]["properties"]) == ["y"]
    diff_in = comps["ApplyInputSchema"]["differentiable_arrays"]
    assert sorted(diff_in) == sorted(names)
    assert diff_in["x"] == {"shape": [None, spec.d], "dtype": spec.dtype}
    if spec.has_t:
        assert diff_in["t"] == {"shape": [None], "dtype": spec.dtype}
    assert comps["ApplyOutputSchema"]["differentiable_arrays"] == {"y": {"shape": [None, spec.d_out], "dtype": spec.dtype}}
    assert set(schema["x-supported-output-formats"]) >= {"json", "json+base64"}
    caps = clients[key].server_capabilities
    assert caps is not None and "json+base64" in caps.output_formats


@pytest.mark.parametrize("key", MODELS)
def test_abstract_eval(clients, models, key):
    spec = models[key]
    inp = {"x": {"shape": [5, spec.d], "dtype": spec.dtype}}
    if spec.has_t:
        inp["t"] = {"shape": [5], "dtype": spec.dtype}
    assert clients[key].abstract_eval(inp) == {"y": {"shape": [5, spec.d_out], "dtype": spec.dtype}}


# --------------------------------------------------------------------------------------
# apply / VJP / JVP / Jacobian against PyTorch
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("key", MODELS)
def test_apply(clients, models, key, encoding):
    spec = models[key]
    inp = spec.inputs(seed=10)
    out = client(clients, key, encoding).apply(inp)
    assert set(out) == {"y"}, f"apply must answer exactly the output fields, got {sorted(out)}"
    check_array(out["y"], spec, (B, spec.d_out), "apply y")
    assert_close(out["y"], ref_forward(spec, inp), spec.dtype, f"{key} apply")


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("key", MODELS)
def test_vector_jacobian_product(clients, models, key, encoding):
    """VJP = torch.autograd.grad(y, [x, t], grad_outputs=v), keyed by input name, for every subset."""
    spec = models[key]
    inp = spec.inputs(seed=11)
    v = spec.like_y(seed=12)
    ref = ref_vjp(spec, inp, v)
    t = client(clients, key, encoding)
    for wrt in wrt_sets(spec):
        out = t.vector_jacobian_product(inp, wrt, ["y"], {"y": v})
        assert set(out) == set(wrt), f"vjp_inputs {wrt}: answer keys {sorted(out)}"
        for name in wrt:
            check_array(out[name], spec, inp[name].shape, f"vjp {name}")
            assert_close(out[name], ref[name], spec.dtype, f"{key} vjp wrt {wrt}: {name}")


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("key", MODELS)
def test_jacobian_vector_product(clients, models, key, encoding):
    """JVP = torch.func.jvp(f, (x, t), (tx, tt)), with tangents only for jvp_inputs."""
    spec = models[key]
    inp = spec.inputs(seed=13)
    tangents = spec.inputs(seed=14)
    t = client(clients, key, encoding)
    for wrt in wrt_sets(spec):
        tv = {k: tangents[k] for k in wrt}
        out = t.jacobian_vector_product(inp, wrt, ["y"], tv)
        assert set(out) == {"y"}, f"jvp answer keys {sorted(out)}"
        check_array(out["y"], spec, (B, spec.d_out), "jvp y")
        assert_close(out["y"], ref_jvp(spec, inp, tv), spec.dtype, f"{key} jvp wrt {wrt}")


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("key", MODELS)
def test_jacobian(clients, models, key, encoding):
    """Tesseract's Jacobian is (*y.shape, *x.shape) = [B, D', B, D] (and [B, D', B] for t):
    vmap(jacrev) per sample, expanded block-diagonally, zero off the diagonal blocks."""
    spec = models[key]
    inp = spec.inputs(seed=15)
    ref = ref_jacobian_tesseract(spec, inp)
    wrt = ["x", "t"] if spec.has_t else ["x"]
    out = client(clients, key, encoding).jacobian(inp, wrt, ["y"])
    assert set(out) == {"y"} and set(out["y"]) == set(wrt), f"jacobian answer keys {out.keys()} / {out.get('y', {}).keys()}"
    for name in wrt:
        j = out["y"][name]
        check_array(j, spec, ref[name].shape, f"jacobian y/{name}")
        for s in range(B):
            for r in range(B):
                if s != r:
                    assert not np.any(j[s, :, r]), f"jacobian y/{name}: block ({s}, {r}) off the diagonal is not zero"
        assert_close(j, ref[name], spec.dtype, f"{key} jacobian y/{name}")


def test_jacobian_t_only(clients, models):
    spec = models["toy32"]
    inp = spec.inputs(seed=16)
    out = clients["toy32"].with_encoding(output_format="json+base64").jacobian(inp, ["t"], ["y"])
    assert set(out["y"]) == {"t"}
    assert_close(out["y"]["t"], ref_jacobian_tesseract(spec, inp)["t"], "float32", "jacobian y/t")


def test_inputs_are_cast_to_the_model_dtype(clients, models):
    """float64 arrays into a float32 model answer float32 (as the Tesseract runtime does); the
    values are those of the inputs rounded to float32."""
    spec = models["toy32"]
    rng = np.random.default_rng(17)
    x64 = rng.standard_normal((B, spec.d))
    t64_ = rng.uniform(0, 1, size=B)
    y = clients["toy32"].with_encoding(output_format="json+base64").apply({"x": x64, "t": t64_})["y"]
    assert y.dtype == np.float32
    rounded = {"x": x64.astype(np.float32), "t": t64_.astype(np.float32)}
    assert_close(y, ref_forward(spec, rounded), "float32", "apply(float64 inputs)")


@pytest.mark.parametrize("key", ["small32", "small64"])
def test_plain_list_inputs(clients, models, key):
    """The SDK sends Python lists as they are; the runtime accepts them, so must the adapter."""
    spec = models[key]
    inp = spec.inputs(seed=18)
    y = clients[key].apply({"x": inp["x"].tolist()})["y"]
    check_array(y, spec, (B, spec.d_out), "apply(list)")
    assert_close(y, ref_forward(spec, inp), spec.dtype, "apply(list)")


def test_repeated_calls_on_one_connection(clients, models):
    """The SDK keeps one keep-alive session: many calls in a row must all answer."""
    spec = models["small32"]
    t = clients["small32"].with_encoding(output_format="json+base64")
    for i in range(20):
        inp = spec.inputs(seed=100 + i, b=1 + i % 4)
        assert_close(t.apply(inp)["y"], ref_forward(spec, inp), "float32", f"call {i}")


# --------------------------------------------------------------------------------------
# Errors, with the SDK's own error types
# --------------------------------------------------------------------------------------


def _validation(ValidationError, fn, *fields):
    with pytest.raises(ValidationError) as info:
        fn()
    msg = str(info.value)
    for f in fields:
        assert f in msg, f"the ValidationError should name {f!r}: {msg}"
    return msg


def test_wrong_x_width_is_a_validation_error(clients, models, ValidationError):
    spec = models["toy32"]
    bad = {"x": np.zeros((B, spec.d - 1), np.float32), "t": np.zeros(B, np.float32)}
    _validation(ValidationError, lambda: clients["toy32"].apply(bad), "inputs.x")
    _validation(ValidationError, lambda: clients["toy32"].jacobian(bad, ["x"], ["y"]), "inputs.x")


def test_wrong_x_rank_is_a_validation_error(clients, models, ValidationError):
    spec = models["small32"]
    _validation(ValidationError, lambda: clients["small32"].apply({"x": np.zeros(spec.d, np.float32)}), "inputs.x")


def test_wrong_t_shape_is_a_validation_error(clients, models, ValidationError):
    spec = models["toy32"]
    inp = spec.inputs()
    _validation(ValidationError, lambda: clients["toy32"].apply({"x": inp["x"], "t": np.zeros(B + 1, np.float32)}), "inputs.t")
    _validation(ValidationError, lambda: clients["toy32"].apply({"x": inp["x"], "t": np.zeros((B, 1), np.float32)}), "inputs.t")


def test_missing_t_is_a_validation_error(clients, models, ValidationError):
    spec = models["toy32"]
    _validation(ValidationError, lambda: clients["toy32"].apply({"x": spec.inputs()["x"]}), "inputs.t")


def test_t_for_a_model_without_t_is_a_validation_error(clients, models, ValidationError):
    spec = models["small32"]
    inp = {"x": spec.inputs()["x"], "t": np.zeros(B, np.float32)}
    _validation(ValidationError, lambda: clients["small32"].apply(inp), "inputs.t")


def test_wrong_cotangent_shape_is_a_validation_error(clients, models, ValidationError):
    """The error must name the Tesseract field (cotangent_vector.y), not a gradserve-internal one."""
    spec = models["toy32"]
    inp = spec.inputs()
    bad = np.zeros((B, spec.d_out + 1), np.float32)
    _validation(ValidationError, lambda: clients["toy32"].vector_jacobian_product(inp, ["x"], ["y"], {"y": bad}), "cotangent_vector.y")


def test_wrong_tangent_shape_is_a_validation_error(clients, models, ValidationError):
    """The error must name the Tesseract field (tangent_vector.x), not a gradserve-internal one."""
    spec = models["toy32"]
    inp = spec.inputs()
    bad = np.zeros((B, spec.d + 1), np.float32)
    _validation(ValidationError, lambda: clients["toy32"].jacobian_vector_product(inp, ["x"], ["y"], {"x": bad}), "tangent_vector.x")


def test_k_batched_tangent_is_a_validation_error(clients, models, ValidationError):
    """A tangent must have its input's shape ([B, D]); gradserve's K-batched [K, B, D] form of
    /v1/jvp is not part of the Tesseract contract (the answer would not be shaped like y)."""
    spec = models["small32"]
    inp = spec.inputs()
    bad = np.stack([inp["x"], inp["x"]])  # [2, B, D]
    _validation(ValidationError, lambda: clients["small32"].jacobian_vector_product(inp, ["x"], ["y"], {"x": bad}), "tangent_vector.x")


def test_unknown_derivative_paths_are_validation_errors(clients, models, ValidationError):
    spec = models["small32"]
    inp = spec.inputs()
    _validation(ValidationError, lambda: clients["small32"].jacobian(inp, ["z"], ["y"]), "jac_inputs")
    _validation(ValidationError, lambda: clients["small32"].jacobian(inp, ["x"], ["w"]), "jac_outputs")
    _validation(ValidationError, lambda: clients["small32"].vector_jacobian_product(inp, ["t"], ["y"], {"y": spec.like_y()}), "vjp_inputs")


def test_non_finite_input_is_a_validation_error(clients, models, ValidationError):
    spec = models["small64"]
    x = spec.inputs()["x"]
    x[1, 2] = np.nan
    _validation(ValidationError, lambda: clients["small64"].apply({"x": x}), "inputs.x")


def test_unknown_model_id(Tesseract, server):
    """An unknown id is a 404 (the SDK raises RuntimeError("Error 404 …")), never a 500."""
    t = Tesseract.from_url(f"{server}/tesseract/0000000000000000deadbeef", timeout=30)
    with pytest.raises(RuntimeError, match="Error 404"):
        t.health()
    with pytest.raises(RuntimeError, match="Error 404"):
        t.apply({"x": np.zeros((1, 6), np.float32)})


def test_raw_errors_are_never_500(server, models):
    """The same failures on the wire: 422 with Tesseract's detail list, 404 for an unknown id."""
    spec = models["small32"]
    base = f"{server}/tesseract/{spec.id}"
    cases = [
        ("/apply", b"{not json"),
        ("/apply", b"[]"),
        ("/apply", b'{"inputs": {"x": [[1, 2], [3]]}}'),
        ("/apply", b'{"inputs": {"x": [[1, 2, 3, 4, 5, 6]]}, "extra": 1}'),
        ("/jacobian", b'{"inputs": {"x": [[1, 2, 3, 4, 5, 6]]}}'),
        ("/vector_jacobian_product", b'{"inputs": {"x": [[1, 2, 3, 4, 5, 6]]}, "vjp_inputs": ["x"], "vjp_outputs": ["y"]}'),
        ("/abstract_eval", b'{"inputs": {"x": {"shape": [2], "dtype": "float32"}}}'),
    ]
    for path, body in cases:
        r = requests.post(base + path, data=body, headers={"Content-Type": "application/json"}, timeout=30)
        assert r.status_code == 422, describe(r)
        detail = r.json()["detail"]
        assert isinstance(detail, list) and detail and all({"type", "loc", "msg"} <= set(e) for e in detail), describe(r)
    r = requests.post(f"{server}/tesseract/nope/apply", json={"inputs": {"x": [[1.0] * 6]}}, timeout=30)
    assert r.status_code == 404, describe(r)


def test_accept_negotiation(server, models):
    """What the SDK's two encodings send on the wire: `application/*; gpu_transport=none` (the
    from_url default, against a server advertising its formats) gets JSON buffers;
    `application/json+base64; gpu_transport=none` gets base64; an unsupported one is 406."""
    spec = models["small32"]
    url = f"{server}/tesseract/{spec.id}/apply"
    body = {"inputs": {"x": [[0.5] * spec.d]}}
    for accept, encoding in [("application/*; gpu_transport=none", "json"), ("*/*", "json"),
                             ("application/json+base64; gpu_transport=none", "base64")]:
        r = requests.post(url, json=body, headers={"Accept": accept}, timeout=30)
        assert r.status_code == 200, describe(r)
        y = r.json()["y"]
        assert y["object_type"] == "array" and y["data"]["encoding"] == encoding, describe(r)
    for accept in ["application/json+binref", "application/json+base64; compression=lz4", "application/json; gpu_transport=cuda_ipc"]:
        r = requests.post(url, json=body, headers={"Accept": accept}, timeout=30)
        assert r.status_code == 406, describe(r)
