"""Invalid requests with an exact answer: the status and the field named in `errors` for specific invalid
contents, 400 for unparseable JSON, 422 for numbers that overflow, and seeds near Int64.max (the
counterpart of the generated cases of test_fuzz.py).
"""

from __future__ import annotations

import base64

import numpy as np
import pytest
import requests

from fuzz_requests import FUZZ_TIMEOUT, fuzz_models
from gs_helpers import assert_problem, describe, error_paths, get, post, wire


_, M_T, M_X = fuzz_models()
X3 = [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.7, 0.8, 0.9]]


def fwd(**over):
    body = {"model": M_X.to_json(), "inputs": {"x": X3}}
    body.update(over)
    return body


SPECIFIC = [
    ("ragged-x", "forward", fwd(inputs={"x": [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.7, 0.8]]}), 422, "inputs.x[2]"),
    ("ragged-x-row1", "forward", fwd(inputs={"x": [[0.1, 0.2, 0.3], [0.4, 0.5], [0.7, 0.8, 0.9]]}), 422, "inputs.x[1]"),
    ("x-string-element", "forward", fwd(inputs={"x": [[0.1, 0.2, 0.3], [0.4, "a", 0.6]]}), 422, "inputs.x[1]"),
    ("empty-x", "forward", fwd(inputs={"x": []}), 422, "inputs.x"),
    ("x-missing", "forward", fwd(inputs={}), 422, "inputs.x"),
    ("x-wrong-width", "forward", fwd(inputs={"x": [[0.1, 0.2]]}), 422, "inputs.x"),
    ("x-rank1", "forward", fwd(inputs={"x": [0.1, 0.2, 0.3]}), 422, "inputs.x"),
    ("neg-shape", "forward", fwd(inputs={"x": {"shape": [-1, 3], "data": [1.0, 2.0, 3.0]}}), 422, "inputs.x.shape[0]"),
    ("shape-data-mismatch", "forward", fwd(inputs={"x": {"shape": [2, 3], "data": [1.0, 2.0, 3.0]}}), 422, "inputs.x.data"),
    ("overflow-shape", "forward", fwd(inputs={"x": {"shape": [2 ** 40, 2 ** 40], "data": [1.0]}}), 422, "inputs.x.shape"),
    ("zero-shape", "forward", fwd(inputs={"x": {"shape": [0, 3], "data": []}}), 422, "inputs.x.shape"),
    ("b64-length", "forward", fwd(inputs={"x": {"shape": [1, 3], "dtype": "float64", "encoding": "base64",
                                                  "data": base64.b64encode(b"\0" * 16).decode()}}), 422, "inputs.x.data"),
    ("b64-chars", "forward", fwd(inputs={"x": {"shape": [1, 3], "dtype": "float32", "encoding": "base64",
                                                 "data": "AAAA*AAAAAAAAAAA"}}), 422, "inputs.x.data"),
    ("b64-nan", "forward", fwd(inputs={"x": {"shape": [1, 3], "dtype": "float64", "encoding": "base64",
                                               "data": base64.b64encode(np.array([1, np.nan, 2], "<f8").tobytes()).decode()}}),
     422, "inputs.x.data"),
    ("tensor-dtype", "forward", fwd(inputs={"x": {"shape": [1, 3], "dtype": "int8", "data": [1, 2, 3]}}), 422, "inputs.x.dtype"),
    ("model-dtype", "forward", fwd(model={**M_X.to_json(), "dtype": "float16"}), 422, "model.dtype"),
    ("unknown-top-field", "forward", fwd(foo=1), 422, "foo"),
    ("unknown-input", "forward", fwd(inputs={"x": X3, "y": X3}), 422, "inputs.y"),
    ("unknown-op", "forward", fwd(model={"layers": [{"op": "relu"}, {"op": "conv2d"}]}), 422, "model.layers[1].op"),
    ("unknown-layer-field", "forward", fwd(model={"layers": [{"op": "relu", "inplace": True}]}), 422, "model.layers[0].inplace"),
    ("empty-layers", "forward", fwd(model={"layers": []}), 422, "model.layers"),
    ("unref-weight", "forward", fwd(model={"layers": [{"op": "relu"}], "weights": {"w": [[1.0]]}}), 422, "model.weights.w"),
    ("missing-weight-name", "forward", fwd(model={"layers": [{"op": "linear", "weight": "nope"}]}), 422,
     "model.layers[0].weight"),
    ("softplus-beta-0", "forward", fwd(model={"layers": [{"op": "softplus", "beta": 0}]}), 422, "model.layers[0].beta"),
    ("t-without-t", "forward", fwd(inputs={"x": X3, "t": [1.0, 2.0, 3.0]}), 422, "inputs.t"),
    ("vjp-missing-grad", "vjp", fwd(), 422, "grad_outputs"),
    ("vjp-bad-wrt", "vjp", fwd(grad_outputs=[[1.0, 2.0, 3.0]] * 3, wrt=["x", "y"]), 422, "wrt[1]"),
    ("jvp-missing-tangents", "jvp", fwd(), 422, "tangents"),
    ("jacobian-bad-mode", "jacobian", fwd(mode="sideways"), 422, "mode"),
    ("divergence-probes-0", "divergence", fwd(method="hutchinson", probes=0), 422, "probes"),
    ("bad-encoding", "forward", fwd(output_encoding="xml"), 422, "output_encoding"),
    ("return-outputs-string", "vjp", fwd(grad_outputs=[[1.0, 2.0, 3.0]] * 3, return_outputs="no"), 422, "return_outputs"),
    ("float32-overflow", "forward", fwd(inputs={"x": [[1e300, 0.1, 0.2]]}), 422, "inputs.x"),
    ("float32-overflow-b64", "forward", fwd(inputs={"x": wire(np.array([[0.1, -1e200, 0.2]]), "b64", "float64")}), 422,
     "inputs.x"),
    ("non-object-body", "forward", [1, 2, 3], 422, None),
    ("registry-name-type", "models", {"name": 1, "model": M_X.to_json()}, 422, "name"),
]


@pytest.mark.parametrize("name,route,body,status,path", SPECIFIC, ids=[s[0] for s in SPECIFIC])
def test_specific_invalid_content(server, name, route, body, status, path):
    r = post(server, f"/v1/{route}", body)
    p = assert_problem(r, status)
    if path is not None:
        # the named field, or a more precise path inside it (inputs.x[1] → inputs.x[1][1])
        named = [e for e in error_paths(p) if e == path or e.startswith(path + "[") or e.startswith(path + ".")]
        assert named, f"{name}: errors {p['errors']} do not name {path}" + describe(r)


@pytest.mark.parametrize("text", [
    '{"model": {"layers": [{"op": "relu"}]}, "inputs": {"x": [[NaN, 1.0]]}}',
    '{"model": {"layers": [{"op": "relu"}]}, "inputs": {"x": [[Infinity, 1.0]]}}',
    '{"model": {"layers": [{"op": "relu"}]}, "inputs": {"x": [[-Infinity, 1.0]]}}',
    '{"model": {"layers": [{"op": "relu"}]}, "inputs": {"x": [[1.0, 2.0]]}',
    '{"model": {"layers": [{"op": "relu"}]}, "inputs": {"x": [[1.0, 2.0]]}} trailing',
    '{"model": {"layers": [{"op": "relu"}]}, "model": {"layers": [{"op": "relu"}]}, "inputs": {"x": [[1.0]]}}',
])
def test_unparseable_is_400(server, text):
    assert_problem(post(server, "/v1/forward", text.encode()), 400)


@pytest.mark.parametrize("text,path", [
    ('{"model": {"layers": [{"op": "relu"}]}, "inputs": {"x": [[1e999, 1.0]]}}', "inputs.x"),
    ('{"model": {"layers": [{"op": "relu"}]}, "inputs": {"x": {"shape": [1, 2], "data": [1.0, -1e999]}}}', "inputs.x.data"),
    ('{"model": {"layers": [{"op": "leaky_relu", "negative_slope": 1e999}]}, "inputs": {"x": [[1.0]]}}',
     "model.layers[0].negative_slope"),
])
def test_overflowing_numbers_are_422(server, text, path):
    p = assert_problem(post(server, "/v1/forward", text.encode()), 422)
    assert path in error_paths(p), p


def test_seed_near_int64_max_does_not_crash(start_server):
    """`seed` is documented as 0...Int64.max; numbers that round to 2^63 as a double must not kill the server.
    (Its own server: a crash here must not take the session's server down with it.)"""
    s = start_server()
    base = {"model": M_T.to_json(), "inputs": {"x": X3, "t": [0.1, 0.2, 0.3]}, "method": "hutchinson", "probes": 2}
    for seed, allowed in [(2 ** 63, {422}), (2 ** 63 - 1, {200, 422}), (2 ** 64, {422}), (2 ** 63 - 1024, {200})]:
        try:
            r = post(s.url, "/v1/divergence", {**base, "seed": seed}, timeout=FUZZ_TIMEOUT)
        except requests.RequestException as e:
            pytest.fail(f"seed={seed}: no answer ({e.__class__.__name__}); server alive: {s.alive()}\n{s.log()[-1500:]}")
        assert r.status_code in allowed, f"seed={seed}" + describe(r)
        if r.status_code != 200:
            assert_problem(r)
        assert s.alive(), f"seed={seed}: the server died"
    assert get(s.url, "/healthz").status_code == 200
