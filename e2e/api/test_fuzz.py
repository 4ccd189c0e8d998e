"""Malformed requests: every answer must be a 4xx application/problem+json, never a 5xx or a hang.

Cases are generated deterministically (random.Random(0)) by mutating a few valid requests for
every POST route: structural mutations of the JSON tree (wrong types, missing and unknown
fields, ragged/empty/deep/huge tensors, broken base64, wrong dtypes, unknown ops), text-level
mutations of the serialized JSON (truncation, NaN/Infinity and other invalid number tokens,
1e999, garbage bytes), non-object bodies, garbage bodies, and broken safetensors bodies.
Unparseable JSON must be 400 and valid JSON with invalid content 422 (404 for an unknown
model id).
"""

from __future__ import annotations

import base64
import copy
import json
import random
import struct

import numpy as np
import pytest
import requests

from gs_helpers import MLP, assert_problem, describe, error_paths, get, post, read_safetensors_header, st_write, wire

# Seconds a malformed request may take before it counts as a hang: an upper bound that only a hang
# reaches (the server's own deadline is 60 s), not a speed claim; a loaded 2-core machine may take
# seconds over a large malformed body.
FUZZ_TIMEOUT = 60
N_TREE = 420
N_TEXT = 150
N_SAFETENSORS = 70
N_OTHER = 40


# --------------------------------------------------------------------------------------
# Valid base requests
# --------------------------------------------------------------------------------------


def _models():
    rng = np.random.default_rng(1234)
    acts = [{"op": "leaky_relu", "negative_slope": 0.1}, {"op": "softplus", "beta": 2.0, "threshold": 10.0}]
    m_t = MLP.random(rng, 3, [5, 4, 3], acts + [{"op": "gelu", "approximate": "tanh"}], has_t=True, dtype="float64",
                     named="mixed")
    m_x = MLP.random(rng, 3, [4, 3], [{"op": "elu", "alpha": 0.5}], has_t=False, dtype="float32", named=False)
    return rng, m_t, m_x


def base_requests():
    """(route, valid body object) pairs."""
    rng, m_t, m_x = _models()
    b = 2
    x3 = rng.normal(size=(b, 3))
    t = rng.normal(size=(b,))
    bases = [
        ("forward", {"model": m_t.to_json("nested"), "inputs": {"x": x3.tolist(), "t": t.tolist()}}),
        ("forward", {"model": m_x.to_json("flat"), "inputs": {"x": wire(x3, "b64", "float32")},
                     "output_encoding": "base64", "return_outputs": True}),
        ("vjp", {"model": m_t.to_json("b64"), "inputs": {"x": wire(x3, "flat"), "t": t.tolist()},
                 "grad_outputs": rng.normal(size=(b, 3)).tolist(), "wrt": ["x", "t", "params"], "is_grads_batched": False}),
        ("vjp", {"model": m_x.to_json("nested"), "inputs": {"x": x3.tolist()},
                 "grad_outputs": wire(rng.normal(size=(2, b, 3)), "b64", "float64"), "is_grads_batched": True,
                 "wrt": ["params"], "output_encoding": "safetensors"}),
        ("jvp", {"model": m_t.to_json("flat"), "inputs": {"x": x3.tolist(), "t": wire(t, "b64", "float32")},
                 "tangents": {"x": rng.normal(size=(b, 3)).tolist(), "t": t.tolist()}, "return_outputs": False}),
        ("jacobian", {"model": m_t.to_json("nested"), "inputs": {"x": wire(x3, "b64", "float64"), "t": t.tolist()},
                      "wrt": ["x", "t"], "mode": "forward"}),
        ("divergence", {"model": m_t.to_json("nested"), "inputs": {"x": x3.tolist(), "t": t.tolist()},
                        "method": "hutchinson", "probes": 4, "seed": 1}),
        ("divergence", {"model": m_x.to_json("b64"), "inputs": {"x": wire(x3, "flat")}, "method": "exact"}),
        ("models", {"name": "fuzz-base", "model": m_t.to_json("nested")}),
        ("benchmark", {"workload": "linear", "in": 4, "out": 4, "batch": 2, "iterations": 2}),
        ("benchmark", {"model": m_x.to_json("nested"), "operation": "jacobian", "batch": 2, "methods": ["reverse"],
                       "iterations": 2}),
    ]
    return bases


BASES = base_requests()

TOP_KIND = {
    "model": "model", "inputs": "io", "tangents": "io", "grad_outputs": "tensor", "wrt": "subset", "methods": "subset",
    "is_grads_batched": "bool", "return_outputs": "bool", "output_encoding": "choice", "mode": "choice",
    "method": "choice", "workload": "choice", "operation": "choice", "probes": "int", "seed": "int", "in": "int",
    "out": "int", "batch": "int", "iterations": "int", "name": "string",
}
REQUIRED_TOP = {
    "forward": ["model", "inputs"], "vjp": ["model", "inputs", "grad_outputs"], "jvp": ["model", "inputs", "tangents"],
    "jacobian": ["model", "inputs"], "divergence": ["model", "inputs"], "models": ["model"],
}


def is_tensor_object(v) -> bool:
    return isinstance(v, dict) and "shape" in v and "data" in v


def walk(v, path=()):
    yield path, v
    if isinstance(v, dict):
        if is_tensor_object(v):
            return
        for k, x in v.items():
            yield from walk(x, path + (k,))
    elif isinstance(v, list):
        if v and all(isinstance(x, (int, float)) or isinstance(x, list) for x in v):
            return  # a nested numeric tensor: a leaf for the tree walk
        for i, x in enumerate(v):
            yield from walk(x, path + (i,))


def kind_of(route: str, path: tuple, value) -> str | None:
    """What a node is, from its path (None: leave it alone)."""
    if not path:
        return "root"
    if len(path) == 1:
        return TOP_KIND.get(path[0])
    head = path[0]
    if head in ("inputs", "tangents") and len(path) == 2:
        return "tensor"
    if head == "model":
        rest = path[1:]
        if rest == ("inputs",):
            return "model_inputs"
        if rest == ("dtype",):
            return "choice"
        if rest == ("layers",):
            return "layers"
        if rest == ("weights",):
            return "weights"
        if len(rest) == 2 and rest[0] == "weights":
            return "tensor"
        if len(rest) == 2 and rest[0] == "layers":
            return "layer"
        if len(rest) == 3 and rest[0] == "layers":
            key = rest[2]
            if key == "op":
                return "op"
            if key in ("weight", "bias"):
                return "weight_ref" if isinstance(value, str) else "tensor"
            if key in ("negative_slope", "alpha", "beta", "threshold"):
                return "number"
            if key == "approximate":
                return "choice"
    if head in ("wrt", "methods") and len(path) == 2:
        return "subset_item"
    return None


WRONG = {
    "tensor": ["abc", True, None, 3.5, {}, [], [[]], ["a", "b"], {"shape": [2]}, {"data": [1.0]}, [[1.0, 2.0], [3.0]],
               [[1.0, "2"]], [[1.0, None]], [[True, False]], {"shape": [1], "data": [1.0], "extra": 1}],
    "bool": [1, 0, "true", None, [], {}, "false"],
    "choice": [1, None, [], {}, "bogus", True, "", "JSON"],
    "int": [-1, 1.5, "3", None, 1e20, True, [], {}, -1e20],
    "number": ["1", None, [], {}, True, [1.0], "0.1"],
    "subset": ["x", [], ["bogus"], [1], None, {}, [["x"]], 1],
    "subset_item": ["bogus", 1, None, [], {}, "X"],
    "io": [1, "str", [], None, True, [1.0, 2.0]],
    "model_inputs": ["x", 1, [1], {}, None, [None], [["x"]]],
    "layers": [[], {}, "relu", 1, None, [1, 2], [[]]],
    "layer": ["relu", 1, [], None, {}, True, [{"op": "relu"}]],
    "op": [1, None, "conv2d", "ReLU", "", "softmax", [], {}, "linear "],
    "weight_ref": ["no.such.weight", "", 1, None, {}, True],
    "weights": [[], 1, "w", None, True],
    "string": [1, None, [], {}, True],
    "model_obj": [1, [], None, True, {}, 3.5],
}


def wrong_values(kind: str, route: str):
    if kind == "model":
        # A string is an id: unknown → 404 on compute routes; not a model → 422 on /v1/models.
        return [(v, 422) for v in WRONG["model_obj"]] + [("not-a-registered-id", 422 if route == "models" else 404)]
    return [(v, 422) for v in WRONG[kind]]


def get_at(obj, path):
    for p in path:
        obj = obj[p]
    return obj


def set_at(obj, path, value):
    get_at(obj, path[:-1])[path[-1]] = value


def tensor_nodes(route, body):
    out = []
    for path, v in walk(body):
        if path and kind_of(route, path, v) == "tensor":
            out.append((path, v))
    return out


def b64_nodes(route, body):
    return [(p, v) for p, v in tensor_nodes(route, body) if isinstance(v, dict) and v.get("encoding") == "base64"]


def object_nodes(route, body):
    out = []
    for path, v in walk(body):
        if isinstance(v, dict):
            out.append((path, v))
    # tensor objects are leaves of walk(); add them explicitly
    for path, v in tensor_nodes(route, body):
        if isinstance(v, dict):
            out.append((path, v))
    return out


def np_of(v) -> np.ndarray:
    if isinstance(v, dict):
        if v.get("encoding") == "base64":
            dt = "<f4" if v.get("dtype") == "float32" else "<f8"
            return np.frombuffer(base64.b64decode(v["data"]), dtype=dt).reshape(v["shape"]).astype(np.float64)
        return np.asarray(v["data"], dtype=np.float64).reshape(v["shape"])
    return np.asarray(v, dtype=np.float64)


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


# --------------------------------------------------------------------------------------
# Text-level mutations of the serialized JSON
# --------------------------------------------------------------------------------------


def scan(text: str):
    """String spans and number-token spans of a JSON text."""
    strings, numbers = [], []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            j = i + 1
            while text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            strings.append((i, j + 1))
            i = j + 1
        elif c in "-0123456789":
            j = i + 1
            while j < n and text[j] in "0123456789.eE+-":
                j += 1
            numbers.append((i, j))
            i = j
        else:
            i += 1
    return strings, numbers


BAD_TOKENS = ["NaN", "Infinity", "-Infinity", "nan", "inf", "+1", "01", ".5", "1.", "0x10", "1e", "--1", "1e+", "- 1",
              "undefined", "None", "1_000", "١"]
GARBAGE = "@#$%&*;'<>?|\\^`~xqzXQZ\x01\x02\x7f"


def text_mutation(rng, route, obj):
    text = json.dumps(obj, separators=(",", ":")) if rng.random() < 0.7 else json.dumps(obj, indent=1)
    strings, numbers = scan(text)
    kind = rng.choice(["truncate", "bad-number", "1e999", "garbage", "garbage", "dup-key", "unclosed-string", "trailing"])
    if kind == "truncate":
        k = rng.randrange(0, len(text))
        return text[:k].encode(), {400}, f"truncate@{k}"
    if kind == "bad-number":
        s, e = rng.choice(numbers)
        return (text[:s] + rng.choice(BAD_TOKENS) + text[e:]).encode(), {400}, f"bad-number@{s}"
    if kind == "1e999":
        s, e = rng.choice(numbers)
        return (text[:s] + rng.choice(["1e999", "-1e999", "1E400", "123e45678"]) + text[e:]).encode(), {422}, f"1e999@{s}"
    if kind == "garbage":
        while True:
            pos = rng.randrange(0, len(text) + 1)
            if not any(s < pos < e for s, e in strings):
                break
        g = "".join(rng.choice(GARBAGE) for _ in range(rng.randint(1, 3)))
        data = text[:pos].encode() + g.encode() + text[pos:].encode()
        if rng.random() < 0.3:
            data = text[:pos].encode() + bytes([rng.choice([0xFF, 0xFE, 0x80, 0xC0])]) + text[pos:].encode()
        return data, {400}, f"garbage@{pos}"
    if kind == "dup-key":
        key = next(iter(obj))
        return (text[:-1] + f',"{key}":1' + "}").encode(), {400, 422}, "duplicate-key"
    if kind == "unclosed-string":
        s, e = rng.choice(strings)
        return (text[: e - 1]).encode(), {400}, "unclosed-string"
    return (text + rng.choice(["x", "{}", ",", "]", " 1", "\x00"])).encode(), {400}, "trailing-data"


# --------------------------------------------------------------------------------------
# Whole-body and safetensors cases
# --------------------------------------------------------------------------------------

COMPUTE_ROUTES = ["forward", "vjp", "jvp", "jacobian", "divergence"]
ALL_ROUTES = COMPUTE_ROUTES + ["models", "benchmark"]


def other_cases(rng):
    cases = []
    non_objects = [b"[]", b"1", b'"s"', b"null", b"true", b"false", b"[1,2]", b"[{}]", b"0", b"-1.5e3", b'""', b"[[1,2],[3,4]]"]
    unparseable = [b"", b" ", b"{", b"}", b"[", b"{'a': 1}", b"NaN", b"Infinity", b"nul", b"tru", b"{\"a\"}",
                   b"{\"a\":}", b"{\"a\":1,}", b"[1,]", b"\xff\xfe\xfd", b"\x00\x00\x00\x00", b"[" * 300 + b"]" * 300,
                   b"{\"a\":" * 300 + b"1" + b"}" * 300]
    for i, data in enumerate(non_objects):
        cases.append((ALL_ROUTES[i % len(ALL_ROUTES)], data, "application/json", {422}, f"non-object:{data[:12]!r}"))
    for i, data in enumerate(unparseable):
        cases.append((ALL_ROUTES[(i + 3) % len(ALL_ROUTES)], data, "application/json", {400}, f"unparseable:{data[:12]!r}"))
    while len(cases) < N_OTHER:
        n = rng.randint(1, 300)
        data = bytes([rng.choice(range(0x80, 0x100))]) + bytes(rng.randrange(256) for _ in range(n))
        cases.append((rng.choice(ALL_ROUTES), data, "application/json", {400}, f"garbage-bytes:{n}"))
    return cases


def safetensors_bases():
    rng, m_t, m_x = _models()
    x = rng.normal(size=(2, 3))
    t = rng.normal(size=(2,))
    bases = [
        ("forward", {"inputs.x": x, "inputs.t": t}, {"model": m_t.to_json()}),
        ("vjp", {"inputs.x": x.astype(np.float32), "grad_outputs": rng.normal(size=(2, 3))},
         {"model": m_x.to_json(), "wrt": ["x", "params"]}),
        ("jacobian", {"inputs.x": x, "inputs.t": t.astype(np.float32)}, {"model": m_t.to_json(), "wrt": ["t"]}),
        ("divergence", {"inputs.x": x}, {"model": m_x.to_json(), "method": "hutchinson", "probes": 2}),
    ]
    return bases


def st_header(data: bytes):
    header, base = read_safetensors_header(data)
    return base - 8, header


def st_rebuild(header: dict, payload: bytes) -> bytes:
    """A safetensors file with any header, broken ones included (which the client's writer never writes)."""
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + payload


def safetensors_mutation(rng):
    route, tensors, request = rng.choice(safetensors_bases())
    data = st_write(tensors, {"request": json.dumps(request)})
    n, header = st_header(data)
    payload = data[8 + n:]
    names = [k for k in header if k != "__metadata__"]
    kind = rng.randrange(14)
    status = {422}
    if kind == 0:
        k = rng.randrange(0, len(data))
        out = data[:k]
        desc = f"truncate@{k}"
    elif kind == 1:
        out = struct.pack("<Q", rng.choice([2 ** 63, 2 ** 40, n + 8, n - 8, 0, len(data)])) + data[8:]
        desc = "header-length"
    elif kind == 2:
        name = rng.choice(names)
        header[name]["dtype"] = rng.choice(["I64", "BF16", "F16", "U8", "f32", "", "BOOL"])
        out = st_rebuild(header, payload)
        desc = f"dtype:{name}"
    elif kind == 3:
        name = rng.choice(names)
        header[name]["shape"] = rng.choice([[3, 3], [0, 3], [], [-1, 3], [2 ** 40, 2 ** 40], [1.5], ["a"]])
        out = st_rebuild(header, payload)
        desc = f"shape:{name}"
    elif kind == 4:
        name = rng.choice(names)
        b, e = header[name]["data_offsets"]
        header[name]["data_offsets"] = rng.choice([[e, b], [b, e + 8], [b, e - 1], [0, 10 ** 12], [-8, e], [b], [b, b]])
        out = st_rebuild(header, payload)
        desc = f"offsets:{name}"
    elif kind == 5:
        out = st_rebuild([1, 2, 3], payload) if rng.random() < 0.5 else struct.pack("<Q", 8) + b"not json" + payload
        desc = "header-not-object"
    elif kind == 6:
        header["__metadata__"]["request"] = rng.choice(["{not json", "[1, 2]", "1", "null", "{\"model\": NaN}"])
        status = {400, 422}
        out = st_rebuild(header, payload)
        desc = "metadata-request"
    elif kind == 7:
        header["__metadata__"] = rng.choice([{"request": 5}, [1], "x", {"request": {"model": {}}}])
        out = st_rebuild(header, payload)
        desc = "metadata-type"
    elif kind == 8:
        name = rng.choice(names)
        arr = np.array(tensors[name], copy=True)
        arr.flat[0] = rng.choice([np.nan, np.inf])
        tensors[name] = arr
        out = st_write(tensors, {"request": json.dumps(request)})
        desc = f"non-finite:{name}"
    elif kind == 9:
        tensors[rng.choice(["inputs.y", "foo", "tangents.x" if route != "jvp" else "grad_outputs", "inputs", "outputs"])] = np.ones((2, 3))
        out = st_write(tensors, {"request": json.dumps(request)})
        desc = "unknown-tensor"
    elif kind == 10:
        del tensors["inputs.x"]
        out = st_write(tensors, {"request": json.dumps(request)})
        desc = "missing-inputs.x"
    elif kind == 11:
        name = rng.choice(names)
        shape = list(np.shape(tensors[name]))
        shape[-1] += 1
        tensors[name] = np.ones(shape)
        out = st_write(tensors, {"request": json.dumps(request)})
        desc = f"wrong-shape:{name}"
    elif kind == 12:
        out = bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
        desc = "random-bytes"
    else:
        out = json.dumps({"model": request["model"], "inputs": {"x": [[1.0, 2.0, 3.0]]}}).encode()
        desc = "json-as-octet-stream"
    return route, out, "application/octet-stream", status, f"safetensors-{desc}"


def registration_safetensors_mutation(rng):
    """Broken safetensors bodies for POST /v1/models."""
    _, m_t, _ = _models()
    spec = m_t.to_json()
    weights = spec.pop("weights")
    tensors = {name: np_of(w) for name, w in weights.items()}
    data = st_write(tensors, {"model": json.dumps(spec), "name": "st"})
    kind = rng.randrange(4)
    if kind == 0:
        out = data[: rng.randrange(len(data))]
    elif kind == 1:
        out = st_write(tensors, {"name": "no model"})
    elif kind == 2:
        out = st_write(tensors, {"model": "{\"layers\": []}"})
    else:
        tensors[next(iter(tensors))] = np.ones((1, 1))
        out = st_write(tensors, {"model": json.dumps(spec)})
    return "models", out, "application/octet-stream", {422}, f"register-safetensors#{kind}"


# --------------------------------------------------------------------------------------
# The cases
# --------------------------------------------------------------------------------------


def generate_cases():
    rng = random.Random(0)
    cases = []
    funcs = [f for f, w in TREE_MUTATIONS for _ in range(w)]
    while len(cases) < N_TREE:
        route, base = rng.choice(BASES)
        f = rng.choice(funcs)
        body = copy.deepcopy(base)
        res = f(rng, route, body)
        if res is None:
            continue
        obj, status, desc = res
        text = json.dumps(obj, allow_nan=False, separators=(",", ":") if rng.random() < 0.5 else (", ", ": "))
        cases.append((route, text.encode(), "application/json", status, desc))
    for _ in range(N_TEXT):
        route, base = rng.choice(BASES)
        data, status, desc = text_mutation(rng, route, copy.deepcopy(base))
        cases.append((route, data, "application/json", status, desc))
    for i in range(N_SAFETENSORS):
        cases.append(safetensors_mutation(rng) if i % 7 else registration_safetensors_mutation(rng))
    cases += other_cases(rng)
    return cases


CASES = generate_cases()


def test_case_count():
    assert len(CASES) >= 500
    routes = {c[0] for c in CASES}
    assert routes == set(ALL_ROUTES)


@pytest.mark.parametrize("route,body", BASES, ids=[f"{r}-{i}" for i, (r, _) in enumerate(BASES)])
def test_bases_are_valid(server, route, body):
    """The unmutated requests succeed, so every mutation below is what makes a request invalid."""
    r = post(server, f"/v1/{route}", body)
    assert r.status_code in (200, 201), describe(r)


@pytest.mark.parametrize("i", range(len(CASES)), ids=[f"{i}-{c[0]}-{c[4][:60]}" for i, c in enumerate(CASES)])
def test_fuzz(server, i):
    route, data, ctype, expected, desc = CASES[i]
    try:
        r = requests.post(f"{server}/v1/{route}", data=data, headers={"Content-Type": ctype}, timeout=FUZZ_TIMEOUT)
    except requests.Timeout:
        pytest.fail(f"no answer within {FUZZ_TIMEOUT}s: {desc}; body {data[:300]!r}")
    assert r.status_code < 500, f"server error for {desc}" + describe(r)
    body = assert_problem(r)
    assert r.status_code in expected, f"{desc}: expected {sorted(expected)}, got {r.status_code}" + describe(r)
    assert isinstance(body["detail"], str) and body["detail"], describe(r)
    if r.status_code == 422:
        assert body["errors"], f"a 422 must name the field{describe(r)}"


def test_healthy_after_fuzz(server, server_process):
    assert server_process.alive(), "the server process died:\n" + server_process.log()
    r = get(server, "/healthz")
    assert r.status_code == 200


# --------------------------------------------------------------------------------------
# Specific cases: exact status and the field named in `errors`
# --------------------------------------------------------------------------------------

_, M_T, M_X = _models()
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
