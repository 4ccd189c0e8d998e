"""Tree mutations of the fuzz suite: structural changes of a valid request's JSON tree (wrong types, missing
and unknown fields, fields of other operations, ragged/wrong-width/empty/deep tensors, bad shapes, broken
base64, wrong dtypes, unknown ops and layer parameters, t for a model without t), each with the statuses
it must be answered with. TREE_MUTATIONS weights them for generate_cases (fuzz_bodies.py).
"""

from __future__ import annotations

import base64
import copy
import json

import numpy as np

from fuzz_requests import (
    REQUIRED_TOP, b64_nodes, get_at, kind_of, np_of, object_nodes, set_at, tensor_nodes, walk, wrong_values,
)
from gs_helpers import wire

# --------------------------------------------------------------------------------------
# Tree mutations: each returns (body object, expected statuses) or None when not applicable
# --------------------------------------------------------------------------------------


def m_wrong_type(rng, route, body):
    nodes = [(p, v, kind_of(route, p, v)) for p, v in walk(body) if p]
    nodes = [(p, v, k) for p, v, k in nodes if k]
    p, v, k = rng.choice(nodes)
    value, status = rng.choice(wrong_values(k, route))
    if value == v:
        return None
    set_at(body, p, copy.deepcopy(value))
    return body, {status}, f"wrong-type:{'.'.join(map(str, p))}"


def m_delete_required(rng, route, body):
    cands = [(k,) for k in REQUIRED_TOP.get(route, []) if k in body]
    if route == "benchmark":
        cands = [("workload",)] if "workload" in body else [("model",)]
    if "inputs" in body and isinstance(body["inputs"], dict):
        cands.append(("inputs", "x"))
    for p, v in walk(body):
        if p and kind_of(route, p, v) == "layer" and isinstance(v, dict):
            cands.append(p + ("op",))
            if v.get("op") == "linear":
                cands.append(p + ("weight",))
    for p, v in tensor_nodes(route, body):
        if isinstance(v, dict):
            cands += [p + ("shape",), p + ("data",)]
            if v.get("encoding"):
                cands.append(p + ("encoding",))
    if "model" in body and isinstance(body["model"], dict):
        cands.append(("model", "layers"))
    p = rng.choice(cands)
    del get_at(body, p[:-1])[p[-1]]
    return body, {422}, f"delete:{'.'.join(map(str, p))}"


def m_unknown_field(rng, route, body):
    nodes = object_nodes(route, body)
    p, v = rng.choice(nodes)
    key = rng.choice(["zz_unknown", "Model", "extra", "x ", "__proto__", "tangent", "grad_output"])
    if key in v:
        return None
    v[key] = rng.choice([1, "x", None, [], {"a": 1}])
    return body, {422}, f"unknown-field:{'.'.join(map(str, p + (key,)))}"


FOREIGN_FIELDS = {"wrt": ["x"], "mode": "auto", "tangents": {"x": [[1.0]]}, "grad_outputs": [[1.0]], "method": "exact",
                  "probes": 4, "is_grads_batched": False, "seed": 1, "workload": "linear", "operation": "forward"}
ROUTE_FIELDS = {
    "forward": {"model", "inputs", "output_encoding", "return_outputs"},
    "vjp": {"model", "inputs", "output_encoding", "return_outputs", "grad_outputs", "is_grads_batched", "wrt"},
    "jvp": {"model", "inputs", "output_encoding", "return_outputs", "tangents"},
    "jacobian": {"model", "inputs", "output_encoding", "return_outputs", "wrt", "mode"},
    "divergence": {"model", "inputs", "output_encoding", "return_outputs", "method", "probes", "seed"},
    "models": {"name", "model"},
}


def m_foreign_field(rng, route, body):
    """A field of another operation (unknown here)."""
    if route == "benchmark":
        return None
    cands = [k for k in FOREIGN_FIELDS if k not in ROUTE_FIELDS[route]]
    k = rng.choice(cands)
    body[k] = copy.deepcopy(FOREIGN_FIELDS[k])
    return body, {422}, f"foreign-field:{k}"


def m_ragged(rng, route, body):
    nested = [(p, v) for p, v in tensor_nodes(route, body) if isinstance(v, list) and v and isinstance(v[0], list)]
    if not nested:
        return None
    p, v = rng.choice(nested)
    a = copy.deepcopy(v)
    i = rng.randrange(1, len(a)) if len(a) > 1 else 0
    row = a[i]
    while isinstance(row, list) and row and isinstance(row[0], list):
        row = row[rng.randrange(len(row))]
    if rng.random() < 0.5 and len(row) > 0:
        row.pop()
    else:
        row.append(0.5)
    if len(a) == 1:
        a.append([1.0] * (len(a[0]) + 3))
    set_at(body, p, a)
    return body, {422}, f"ragged:{'.'.join(map(str, p))}"


def m_wrong_width(rng, route, body):
    """One more entry on the last axis: never matches the model (nor its neighbours)."""
    if route in ("models", "benchmark"):
        return None
    nodes = tensor_nodes(route, body)
    if not nodes:
        return None
    p, v = rng.choice(nodes)
    a = np_of(v)
    a = np.concatenate([a, np.full(a.shape[:-1] + (1,), 0.25)], axis=-1)
    if isinstance(v, dict) and v.get("encoding") == "base64":
        new = wire(a, "b64", v["dtype"])
    elif isinstance(v, dict):
        new = wire(a, "flat")
    else:
        new = a.tolist()
    set_at(body, p, new)
    return body, {422}, f"wrong-width:{'.'.join(map(str, p))}"


def m_empty(rng, route, body):
    nodes = tensor_nodes(route, body)
    if not nodes:
        return None
    p, v = rng.choice(nodes)
    new = rng.choice([[], [[]], [[], []], {"shape": [0, 3], "data": []}, {"shape": [], "data": []},
                      {"shape": [0], "dtype": "float64", "encoding": "base64", "data": ""}, [[[]]]])
    set_at(body, p, new)
    return body, {422}, f"empty:{'.'.join(map(str, p))}"


def m_deep(rng, route, body):
    nodes = tensor_nodes(route, body)
    if not nodes:
        return None
    p, v = rng.choice(nodes)
    depth = rng.choice([3, 40, 200, 300, 600])
    new = np_of(v).tolist()
    for _ in range(depth):
        new = [new]
    set_at(body, p, new)
    # deeper than the parser's limit: refused while parsing (400); else a rank mismatch (422)
    return body, ({400, 422} if depth >= 200 else {422}), f"deep{depth}:{'.'.join(map(str, p))}"


def m_shape(rng, route, body):
    objs = [(p, v) for p, v in tensor_nodes(route, body) if isinstance(v, dict)]
    if not objs:
        return None
    p, v = rng.choice(objs)
    v["shape"] = copy.deepcopy(rng.choice([
        [-1, 3], [2 ** 40, 2 ** 40], [10 ** 12], [2 ** 62, 4, 4], [0, 3], [], [1.5, 2], ["a", 2], [None], [-2],
        [2, -3], [2 ** 31 + 1], [2 ** 64], [1e300, 1e300], 5, "2,3", [[2, 3]], [1] * 70 + [2 ** 40],
    ]))
    return body, {422}, f"shape:{'.'.join(map(str, p))}={json.dumps(v['shape'])[:40]}"


def m_base64(rng, route, body):
    nodes = b64_nodes(route, body)
    if not nodes:
        return None
    p, v = rng.choice(nodes)
    data = v["data"]
    choice = rng.randrange(9)
    if choice == 0:
        v["data"] = data[:-4]
    elif choice == 1:
        v["data"] = data + "AAAA"
    elif choice == 2:
        i = rng.randrange(len(data))
        v["data"] = data[:i] + rng.choice("*!@#$%^&()~ \u00e9") + data[i + 1:]
    elif choice == 3:
        v["data"] = data[:-1]
    elif choice == 4:
        v["data"] = "===="
    elif choice == 5:
        v["dtype"] = "float64" if v["dtype"] == "float32" else "float32"
    elif choice == 6:
        a = np_of(v)
        a.flat[rng.randrange(a.size)] = rng.choice([np.nan, np.inf, -np.inf])
        v["data"] = base64.b64encode(a.astype("<f4" if v["dtype"] == "float32" else "<f8").tobytes()).decode()
    elif choice == 7:
        v["data"] = 12345
    else:
        v["encoding"] = rng.choice(["base32", "hex", "", "BASE64", None, 1])
    return body, {422}, f"base64#{choice}:{'.'.join(map(str, p))}"


def m_dtype(rng, route, body):
    objs = [(p, v) for p, v in tensor_nodes(route, body) if isinstance(v, dict)]
    if "model" in body and isinstance(body["model"], dict) and rng.random() < 0.4 or not objs:
        if not isinstance(body.get("model"), dict):
            return None
        body["model"]["dtype"] = rng.choice(["float16", "bfloat16", "double", "F32", "int32", "", "Float32"])
        return body, {422}, "model-dtype"
    p, v = rng.choice(objs)
    v["dtype"] = rng.choice(["float16", "int8", "F32", "", "double", "FLOAT32", "float"])
    return body, {422}, f"tensor-dtype:{'.'.join(map(str, p))}"


def m_unknown_op(rng, route, body):
    if not isinstance(body.get("model"), dict):
        return None
    layers = body["model"]["layers"]
    i = rng.randrange(len(layers))
    layers[i] = {"op": rng.choice(["conv2d", "batchnorm", "dropout", "Linear", "gelu_new", "hardtanh", "softmax"])}
    return body, {422}, f"unknown-op:model.layers[{i}]"


def m_layer_param(rng, route, body):
    if not isinstance(body.get("model"), dict):
        return None
    layers = body["model"]["layers"]
    i = rng.randrange(len(layers))
    op = layers[i].get("op")
    choices = {"linear": ("alpha", 1.0), "relu": ("negative_slope", 0.1), "gelu": ("approximate", "erf"),
               "softplus": ("beta", 0), "elu": ("negative_slope", 0.2), "leaky_relu": ("alpha", 1.0)}
    key, value = choices.get(op, ("threshold", 1.0))
    layers[i][key] = value
    return body, {422}, f"layer-param:model.layers[{i}].{key}"


def m_t_without_t(rng, route, body):
    """Anything about t for a model whose inputs are only x."""
    if route not in ("forward", "vjp", "jvp", "jacobian", "divergence") or not isinstance(body.get("model"), dict):
        return None
    if body["model"].get("inputs") == ["x", "t"]:
        return None
    b = np_of(body["inputs"]["x"]).shape[0]
    choice = rng.randrange(3)
    if choice == 0 or route in ("forward", "divergence"):
        body["inputs"]["t"] = [0.5] * b
    elif route == "vjp":
        body["wrt"] = ["x", "t"]
    elif route == "jacobian":
        body["wrt"] = ["t"]
    else:
        body["tangents"]["t"] = [0.5] * b
    return body, {422}, "t-without-t"


TREE_MUTATIONS = [
    (m_wrong_type, 8), (m_delete_required, 4), (m_unknown_field, 4), (m_foreign_field, 2), (m_ragged, 3),
    (m_wrong_width, 3), (m_empty, 3), (m_deep, 2), (m_shape, 3), (m_base64, 4), (m_dtype, 2), (m_unknown_op, 2),
    (m_layer_param, 2), (m_t_without_t, 1),
]
