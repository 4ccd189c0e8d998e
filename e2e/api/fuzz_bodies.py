"""Whole-body cases of the fuzz suite and the generation of all its cases: text-level mutations of the
serialized JSON (truncation, invalid number tokens, 1e999, garbage bytes, duplicate keys, trailing data),
non-object and unparseable bodies, broken safetensors bodies (compute requests and registrations), and
generate_cases, which draws them all, with the tree mutations of fuzz_tree.py, from random.Random(0).
"""

from __future__ import annotations

import copy
import json
import random
import struct

import numpy as np

from fuzz_requests import BASES, fuzz_models, np_of
from fuzz_tree import TREE_MUTATIONS
from gs_helpers import read_safetensors_header, st_write

N_TREE = 420
N_TEXT = 150
N_SAFETENSORS = 70
N_OTHER = 40


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
    rng, m_t, m_x = fuzz_models()
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
    _, m_t, _ = fuzz_models()
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
