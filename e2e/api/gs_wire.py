"""Tensor wire forms of the gradserve API for the end-to-end tests: tensors in the request forms (nested,
flat, base64), what the server sees of them, and answers in any output encoding (JSON, base64,
safetensors) decoded to numpy. Safetensors files are written and read by this checkout's client
(gradserve.tensors).
"""

from __future__ import annotations

import base64
import json

import numpy as np
import requests

from gs_http import describe, ok_json
from gradserve.tensors import read_safetensors, read_safetensors_header, write_safetensors  # noqa: F401  (re-exported)

NP_DTYPE = {"float32": np.dtype("<f4"), "float64": np.dtype("<f8")}
ST_DTYPE = {"float32": "F32", "float64": "F64"}
ST_NP = {"F32": np.dtype("<f4"), "F64": np.dtype("<f8")}


def wire(arr: np.ndarray, form: str, dtype: str = "float64"):
    """A tensor in one of the request forms: 'nested', 'flat', 'b64' (dtype = the bytes' dtype)."""
    arr = np.asarray(arr)
    if form == "nested":
        return arr.astype(np.float64).tolist()
    if form == "flat":
        return {"shape": list(arr.shape), "data": arr.astype(np.float64).ravel().tolist()}
    if form == "flat32":
        return {"shape": list(arr.shape), "dtype": "float32", "data": arr.astype(np.float64).ravel().tolist()}
    if form == "b64":
        raw = np.ascontiguousarray(arr, dtype=NP_DTYPE[dtype]).tobytes()
        return {"shape": list(arr.shape), "dtype": dtype, "encoding": "base64", "data": base64.b64encode(raw).decode()}
    raise ValueError(form)


def sent_value(arr: np.ndarray, form: str, dtype: str, model_dtype: str) -> np.ndarray:
    """What the server sees after decoding and casting to the model dtype (as float64)."""
    a = np.asarray(arr, dtype=np.float64)
    if form == "b64" and dtype == "float32" or form == "flat32":
        a = a.astype(np.float32).astype(np.float64)
    if model_dtype == "float32":
        a = a.astype(np.float32).astype(np.float64)
    return a


def decode_tensor(v, expect_dtype: str | None = None) -> np.ndarray:
    """A tensor from a JSON answer (nested arrays or the base64 form)."""
    if isinstance(v, dict):
        assert v.get("encoding") == "base64", v
        if expect_dtype is not None:
            assert v["dtype"] == expect_dtype, f"answer dtype {v['dtype']} != model dtype {expect_dtype}"
        raw = base64.b64decode(v["data"], validate=True)
        a = np.frombuffer(raw, dtype=NP_DTYPE[v["dtype"]]).reshape(v["shape"])
        return a.astype(np.float64)
    return np.asarray(v, dtype=np.float64)


def st_write(tensors: dict[str, np.ndarray | tuple], metadata: dict[str, str] | None = None) -> bytes:
    """A safetensors file (the client's writer). Values: numpy arrays (F64 if float64 else F32)."""
    arrays = {}
    for name, arr in tensors.items():
        arr = np.asarray(arr)
        arrays[name] = arr.astype("<f8") if arr.dtype == np.float64 else arr.astype("<f4")
    return write_safetensors(arrays, metadata)


def st_read(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, str], dict]:
    """Parses a safetensors file with the client's reader: (tensors as float64 arrays, metadata, raw header);
    each tensor's byte range must hold exactly its shape's elements."""
    assert len(data) >= 8
    header, _ = read_safetensors_header(data)
    header.pop("__metadata__", None)
    for name, info in header.items():
        b, e = info["data_offsets"]
        assert e - b == int(np.prod(info["shape"])) * ST_NP[info["dtype"]].itemsize, (name, info)
    tensors, meta = read_safetensors(data)
    return {name: arr.astype(np.float64) for name, arr in tensors.items()}, meta, header


def decode_answer(r: requests.Response, model_dtype: str, encoding: str) -> dict:
    """Any answer (json, base64 or safetensors) in one shape: a dict of numpy arrays and fields."""
    assert r.status_code == 200, describe(r)
    if encoding == "safetensors":
        assert r.headers.get("Content-Type", "").startswith("application/octet-stream"), describe(r)
        tensors, meta, header = st_read(r.content)
        want = ST_DTYPE[model_dtype]
        for name, info in header.items():
            assert info["dtype"] == want, f"{name}: dtype {info['dtype']} != {want}"
        ans: dict = {}
        for name, arr in tensors.items():
            parts = name.split(".")
            if parts[0] == "grads" and len(parts) > 2 and parts[1] == "params":
                ans.setdefault("grads", {}).setdefault("params", {})[".".join(parts[2:])] = arr
            elif len(parts) == 2:
                ans.setdefault(parts[0], {})[parts[1]] = arr
            else:
                assert len(parts) == 1, name
                ans[name] = arr
        for k, v in meta.items():
            if k == "timing":
                ans["timing"] = json.loads(v)
            else:
                ans[k] = v
        return ans
    body = ok_json(r)

    def conv(v):
        if isinstance(v, dict) and "encoding" in v:
            return decode_tensor(v, model_dtype)
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, list):
            if encoding == "base64":
                raise AssertionError("a tensor in nested form although output_encoding is base64")
            return decode_tensor(v)
        return v

    out = {}
    for k, v in body.items():
        out[k] = v if k in ("timing", "mode", "method") else conv(v)
    return out
