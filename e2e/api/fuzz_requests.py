"""Valid base requests of the fuzz suite (test_fuzz.py, test_fuzz_specific.py) and the tools the mutations
take them apart with: what each node of a request is (its kind, from its path), walking the JSON tree,
getting and setting a node by path, the tensor nodes, and the wrong values of every kind of node.
"""

from __future__ import annotations

import base64

import numpy as np

from gs_helpers import MLP, wire

# Seconds a malformed request may take before it counts as a hang: an upper bound that only a hang
# reaches (the server's own deadline is 60 s), not a speed claim; a loaded 2-core machine may take
# seconds over a large malformed body.
FUZZ_TIMEOUT = 60


# --------------------------------------------------------------------------------------
# Valid base requests
# --------------------------------------------------------------------------------------


def fuzz_models():
    rng = np.random.default_rng(1234)
    acts = [{"op": "leaky_relu", "negative_slope": 0.1}, {"op": "softplus", "beta": 2.0, "threshold": 10.0}]
    m_t = MLP.random(rng, 3, [5, 4, 3], acts + [{"op": "gelu", "approximate": "tanh"}], has_t=True, dtype="float64",
                     named="mixed")
    m_x = MLP.random(rng, 3, [4, 3], [{"op": "elu", "alpha": 0.5}], has_t=False, dtype="float32", named=False)
    return rng, m_t, m_x


def base_requests():
    """(route, valid body object) pairs."""
    rng, m_t, m_x = fuzz_models()
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
