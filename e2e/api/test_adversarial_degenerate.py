"""Adversarial suite: zero-size and 2⁶²-extent tensors on every route of the three families (Tesseract,
UM-Bridge, /v1), each refused in the route's own error shape and at the field that carries it.
"""

from __future__ import annotations

import json

import pytest

from adversarial_support import E62, tess_422, umb_400
from gs_helpers import assert_problem, post


TESS_SHAPES = [[0, 2], [4294967296, 0], [9223372036854774784, 0], [E62, 2], [2, E62], [E62, E62]]


def tess_array(shape, form: str):
    if form == "base64":
        return {"object_type": "array", "shape": shape, "dtype": "float32", "data": {"buffer": "", "encoding": "base64"}}
    if form == "json":
        return {"object_type": "array", "shape": shape, "dtype": "float64", "data": {"buffer": [], "encoding": "json"}}
    return [[] for _ in range(min(shape[0], 2))] if shape[1] == 0 else []  # plain (nested) list forms


@pytest.mark.parametrize("form", ["base64", "json", "list"])
@pytest.mark.parametrize("shape", TESS_SHAPES, ids=lambda s: "x".join(str(v) for v in s))
def test_tesseract_degenerate_arrays(main, tiny_id, shape, form):
    base = f"/tesseract/{tiny_id}"
    bad = tess_array(shape, form)
    good_x, good_t, good_y = [[0.3, -0.7]], [0.5], [[1.0, 0.0]]
    cases = [
        ("apply", {"inputs": {"x": bad, "t": good_t}}, ["inputs", "x"]),
        ("apply", {"inputs": {"x": good_x, "t": bad}}, ["inputs", "t"]),
        ("jacobian", {"inputs": {"x": bad, "t": good_t}, "jac_inputs": ["x", "t"], "jac_outputs": ["y"]}, ["inputs", "x"]),
        ("vector_jacobian_product", {"inputs": {"x": bad, "t": good_t}, "vjp_inputs": ["x"], "vjp_outputs": ["y"],
                                     "cotangent_vector": {"y": good_y}}, ["inputs", "x"]),
        ("vector_jacobian_product", {"inputs": {"x": good_x, "t": good_t}, "vjp_inputs": ["x"], "vjp_outputs": ["y"],
                                     "cotangent_vector": {"y": bad}}, ["cotangent_vector", "y"]),
        ("jacobian_vector_product", {"inputs": {"x": bad, "t": good_t}, "jvp_inputs": ["x"], "jvp_outputs": ["y"],
                                     "tangent_vector": {"x": good_x}}, ["inputs", "x"]),
        ("jacobian_vector_product", {"inputs": {"x": good_x, "t": good_t}, "jvp_inputs": ["x"], "jvp_outputs": ["y"],
                                     "tangent_vector": {"x": bad}}, ["tangent_vector", "x"]),
    ]
    for route, body, loc in cases:
        d = tess_422(post(main.url, f"{base}/{route}", body))
        assert d[0]["loc"][1:3] == loc, f"{route}: {d}"
    # abstract_eval computes nothing: any shape answers (with the shape it would have) or is a 422.
    r = post(main.url, f"{base}/abstract_eval", {"inputs": {"x": {"shape": shape, "dtype": "float32"},
                                                             "t": {"shape": shape[:1], "dtype": "float32"}}})
    if r.status_code != 200:
        tess_422(r)


UMB_BATCHES = [0, -1, E62, 1 << 40, 2 ** 64, 2 ** 31, 1e300, 1.5, "3", None, True, [], {}]


@pytest.mark.parametrize("batch", UMB_BATCHES, ids=repr)
def test_umbridge_absurd_batch(main, tiny_id, batch):
    base = f"/umbridge/{tiny_id}"
    one = [[0.3, -0.7], [0.5]]
    for route, body in [
        ("Evaluate", {"name": "forward", "input": one}),
        ("Gradient", {"name": "forward", "outWrt": 0, "inWrt": 0, "input": one, "sens": [1.0, 0.0]}),
        ("ApplyJacobian", {"name": "forward", "outWrt": 0, "inWrt": 0, "input": one, "vec": [1.0, 0.0]}),
        ("InputSizes", {"name": "forward"}),
        ("OutputSizes", {"name": "forward"}),
    ]:
        umb_400(post(main.url, f"{base}/{route}", {**body, "config": {"batch": batch}}))


@pytest.mark.parametrize("route", ["Evaluate", "Gradient", "ApplyJacobian"])
def test_umbridge_empty_and_huge_vectors(main, tiny_id, route):
    base = f"/umbridge/{tiny_id}"
    extra = {"Evaluate": {}, "Gradient": {"outWrt": 0, "inWrt": 0, "sens": [1.0, 0.0]},
             "ApplyJacobian": {"outWrt": 0, "inWrt": 0, "vec": [1.0, 0.0]}}[route]
    for inp, config in [([], {}), ([[]], {}), ([[], []], {}), ([[], []], {"batch": 1}), ([[0.3, -0.7], []], {}),
                        ([[0.3, -0.7], [0.5]], {"batch": 1 << 20})]:
        umb_400(post(main.url, f"{base}/{route}", {"name": "forward", "input": inp, "config": config, **extra}))
    if route != "Evaluate":
        key = "sens" if route == "Gradient" else "vec"
        umb_400(post(main.url, f"{base}/{route}", {"name": "forward", "input": [[0.3, -0.7], [0.5]], "config": {},
                                                    **{**extra, key: []}}))
        umb_400(post(main.url, f"{base}/{route}", {"name": "forward", "input": [[0.3, -0.7], [0.5]], "config": {},
                                                    **{**extra, "inWrt": E62}}))


V1_BAD = {
    "nested-empty": [],
    "nested-empty-row": [[]],
    "flat-0x2": {"shape": [0, 2], "data": []},
    "flat-2^62x0": {"shape": [E62, 0], "data": []},
    "flat-2^62x2": {"shape": [E62, 2], "data": [1, 2]},
    "flat-2^62x2^62": {"shape": [E62, E62], "data": []},
    "flat-2^32x2^32": {"shape": [1 << 32, 1 << 32], "data": []},
    "flat-2^20x2^20": {"shape": [1 << 20, 1 << 20], "data": [1]},
    "b64-0x2": {"shape": [0, 2], "dtype": "float32", "encoding": "base64", "data": ""},
    "b64-2^32x0": {"shape": [4294967296, 0], "dtype": "float32", "encoding": "base64", "data": ""},
    "b64-2^62x2": {"shape": [E62, 2], "dtype": "float64", "encoding": "base64", "data": "AAAAAAAAAAA="},
    "b64-(2^63-1024)x0": {"shape": [9223372036854774784, 0], "dtype": "float64", "encoding": "base64", "data": ""},
}
V1_MODEL = {"layers": [{"op": "linear", "weight": [[0.5, -0.25], [0.125, 1.0]], "bias": [0.1, -0.2]}, {"op": "tanh"}]}
V1_CASES = [  # (operation, the field that carries the bad tensor, its error path, the rest of the request)
    ("forward", "inputs.x", {}),
    ("vjp", "inputs.x", {"grad_outputs": [[1, 0]]}),
    ("vjp", "grad_outputs", {}),
    ("vjp", "grad_outputs", {"is_grads_batched": True}),
    ("jvp", "inputs.x", {"tangents": {"x": [[1, 0]]}}),
    ("jvp", "tangents.x", {}),
    ("jacobian", "inputs.x", {}),
    ("jacobian", "inputs.x", {"mode": "forward"}),
    ("divergence", "inputs.x", {}),
    ("divergence", "inputs.x", {"method": "hutchinson", "probes": 4}),
    ("forward", "model.layers[0].weight", {}),
    ("vjp", "model.layers[0].bias", {"grad_outputs": [[1, 0]], "wrt": ["params"]}),
]


@pytest.mark.parametrize("bad", list(V1_BAD), ids=str)
@pytest.mark.parametrize("case", range(len(V1_CASES)), ids=[f"{c[0]}-{c[1]}{'-' + '-'.join(c[2]) if c[2] else ''}"
                                                            for c in V1_CASES])
def test_v1_degenerate_tensors(main, bad, case):
    op, field, extra = V1_CASES[case]
    body = {"model": json.loads(json.dumps(V1_MODEL)), "inputs": {"x": [[0.3, -0.7]]}, **extra}
    value = V1_BAD[bad]
    if field == "inputs.x":
        body["inputs"]["x"] = value
    elif field == "grad_outputs":
        body["grad_outputs"] = value
    elif field == "tangents.x":
        body["tangents"] = {"x": value}
    elif field == "model.layers[0].weight":
        body["model"]["layers"][0]["weight"] = value
    elif field == "model.layers[0].bias":
        body["model"]["layers"][0]["bias"] = value
    p = assert_problem(post(main.url, f"/v1/{op}", body), 422)
    assert any(e["path"].startswith(field) for e in p["errors"]), f"no error at {field}: {p}"
