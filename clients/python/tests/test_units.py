"""Pieces that need no server: safetensors, tensor forms, answers, the model → id cache key."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

import gradserve
from gradserve.models import Signature, fingerprint, normalize
from gradserve.result import Result, wrap
from gradserve.tensors import b64_form, decode_json_answer, decode_safetensors_answer, decode_tensor, to_numpy


def test_safetensors_round_trip_and_layout():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([1.5, -2.0], dtype=np.float64)
    buf = gradserve.write_safetensors({"inputs.x": a, "inputs.t": b}, {"request": '{"model": "id"}'})
    # The layout is checked with a deliberately independent reading of the header (not the client's reader).
    (n,) = struct.unpack("<Q", buf[:8])
    assert (8 + n) % 8 == 0
    header = json.loads(buf[8 : 8 + n])
    assert header["__metadata__"] == {"request": '{"model": "id"}'}
    assert header["inputs.x"] == {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}
    assert header["inputs.t"] == {"dtype": "F64", "shape": [2], "data_offsets": [24, 40]}
    tensors, meta = gradserve.read_safetensors(bytearray(buf))
    assert np.array_equal(tensors["inputs.x"], a) and np.array_equal(tensors["inputs.t"], b)
    assert tensors["inputs.x"].flags.writeable
    with pytest.raises(ValueError):
        gradserve.read_safetensors(b"\x00\x00")
    with pytest.raises(ValueError):
        gradserve.read_safetensors(struct.pack("<Q", 999) + b"{}")


def test_safetensors_answer_keeps_parameter_names_with_dots():
    g = np.ones((2, 2), np.float32)
    buf = gradserve.write_safetensors(
        {"outputs": g, "grads.x": g, "grads.params.net.0.weight": g, "jacobian.x": g},
        {"timing": '{"queue_ms": 1.5}', "mode": "reverse"},
    )
    doc = decode_safetensors_answer(bytearray(buf))
    assert set(doc) == {"outputs", "grads", "jacobian", "timing", "mode"}
    assert set(doc["grads"]["params"]) == {"net.0.weight"} and doc["timing"] == {"queue_ms": 1.5} and doc["mode"] == "reverse"


def test_tensor_forms():
    a = np.array([[1.0, 2.5], [-3.0, 4.0]], np.float64)
    f = b64_form(a)
    assert f["shape"] == [2, 2] and f["dtype"] == "float64" and f["encoding"] == "base64"
    assert np.array_equal(decode_tensor(f), a)
    assert np.array_equal(decode_tensor({"shape": [2, 2], "data": [1, 2.5, -3, 4]}), a)
    doc = decode_json_answer(
        {"outputs": [[1, 2]], "mode": "reverse", "timing": {"queue_ms": 1}, "grads": {"params": {"w": f}}}, np.float32
    )
    assert doc["outputs"].dtype == np.float32 and doc["mode"] == "reverse" and doc["timing"] == {"queue_ms": 1}
    assert np.array_equal(doc["grads"]["params"]["w"], a)


def test_to_numpy_casts():
    assert to_numpy([[1, 2]]).dtype == np.float64
    assert to_numpy(np.ones(3, np.float16)).dtype == np.float64
    assert to_numpy(torch.ones(2, dtype=torch.bfloat16)).dtype == np.float64
    assert to_numpy(torch.ones(2, requires_grad=True)).dtype == np.float32
    assert to_numpy(np.ones(3), np.float32).dtype == np.float32
    big_endian = np.ones(3, dtype=">f4")
    assert to_numpy(big_endian).dtype == np.dtype("<f4")
    with pytest.raises(ValueError):
        to_numpy([[1, 2], [3]])
    with pytest.raises(ValueError):
        to_numpy(np.array(["a"]))


def test_result_access():
    r = wrap({"grads": {"x": np.zeros((2, 3)), "params": {"net.0.weight": np.zeros(1)}}, "results": [{"method": "reverse"}]})
    assert isinstance(r, Result) and r.grads.x.shape == (2, 3) and r["grads"]["params"]["net.0.weight"].shape == (1,)
    assert r.results[0].method == "reverse"
    with pytest.raises(AttributeError, match="grads"):
        _ = r.jacobian
    assert "ndarray [2, 3]" in repr(r)


def test_fingerprint_and_signature():
    m = {
        "inputs": ["x", "t"],
        "layers": [{"op": "linear", "weight": "w", "bias": "b"}, {"op": "tanh"}, {"op": "linear", "weight": [[1.0, 2.0]]}],
        "weights": {"w": torch.ones(2, 4), "b": np.zeros(2)},
    }
    n = normalize(m)
    assert isinstance(n["weights"]["w"], np.ndarray) and n["weights"]["w"].dtype == np.float32
    assert fingerprint(n) == fingerprint(normalize(m))
    n2 = normalize(m)
    n2["weights"]["b"] = n2["weights"]["b"] + 1
    assert fingerprint(n2) != fingerprint(n)
    s = Signature.of_model(n)
    assert (s.has_t, s.input_width, s.output_width, s.parameter_count) == (True, 3, 1, 12)
    assert Signature.of_model({"layers": [{"op": "relu"}]}).out_width(7) == 7


def test_errors_pickle_and_read_well():
    import pickle

    e = gradserve.InvalidRequest(
        422,
        "Invalid request content",
        "inputs.x: bad",
        [gradserve.FieldError("inputs.x", "bad")],
        type="t",
        method="POST",
        url="http://h/v1/vjp",
    )
    e2 = pickle.loads(pickle.dumps(e))
    assert type(e2) is gradserve.InvalidRequest and e2.fields == {"inputs.x": "bad"} and e2.url == e.url and str(e2) == str(e)
    assert str(e).startswith("422 Invalid request content: inputs.x: bad") and "POST http://h/v1/vjp" in str(e)
    many = gradserve.InvalidRequest(
        422, "Invalid request content", "2 problems", [gradserve.FieldError("a", "x"), gradserve.FieldError("b", "y")]
    )
    assert "\n  - a: x" in str(many) and "\n  - b: y" in str(many)
    with pytest.raises(ValueError, match="complex"):
        to_numpy(np.ones(2, complex))
