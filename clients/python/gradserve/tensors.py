"""Tensor transport: numpy/torch in, the wire forms of the API out, and back.

Wire forms (see the API contract): nested JSON arrays, ``{"shape", "dtype", "encoding": "base64",
"data"}`` inside JSON, or a safetensors file (``application/octet-stream``) whose tensors are named by
their dotted path (``inputs.x``, ``grads.params.net.0.weight``) and whose ``__metadata__`` carries the
other fields. Safetensors is parsed with numpy alone: an 8-byte little-endian header length, a JSON
header, then the raw little-endian bytes.
"""

from __future__ import annotations

import base64
import json
import re
import struct
import sys
from typing import Any

import numpy as np

FLOAT32 = np.dtype("<f4")
FLOAT64 = np.dtype("<f8")
DTYPES = {"float32": FLOAT32, "float64": FLOAT64}
_ST_TO_NP = {"F32": FLOAT32, "F64": FLOAT64}
_NP_TO_ST = {"float32": "F32", "float64": "F64"}


def is_torch_tensor(a: Any) -> bool:
    """Whether ``a`` is a ``torch.Tensor`` (without importing torch when the user did not)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(a, getattr(torch, "Tensor", ()))


def is_array(a: Any) -> bool:
    return isinstance(a, np.ndarray) or is_torch_tensor(a)


def to_numpy(a: Any, dtype: str | np.dtype | None = None) -> np.ndarray:
    """A contiguous little-endian float32/float64 numpy array of ``a`` (numpy, torch, nested lists,
    scalars). ``dtype`` (the model's) is applied when given; otherwise float32 and float64 stay as they
    are and anything else becomes float64 (exact for integers and half precision)."""
    if is_torch_tensor(a):
        t = a.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        if not t.is_floating_point() or t.dtype not in (_torch().float32, _torch().float64):
            t = t.to(_torch().float64)
        a = t.numpy()
    else:
        a = np.asarray(a)
    if a.dtype == object:
        raise ValueError("expected a rectangular array of numbers")
    if a.dtype.kind == "c":
        raise ValueError("expected real numbers, got a complex array")
    if dtype is not None:
        target = np.dtype(dtype).newbyteorder("<")
    elif a.dtype.kind == "f" and a.dtype.itemsize in (4, 8):
        target = a.dtype.newbyteorder("<")
    else:
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
            raise ValueError(f"expected numbers, got an array of {a.dtype}")
        target = FLOAT64
    return np.ascontiguousarray(a, dtype=target)


def _torch():
    import torch

    return torch


def b64_form(a: np.ndarray) -> dict:
    """The binary-in-JSON tensor form."""
    a = to_numpy(a)
    return {"shape": list(a.shape), "dtype": a.dtype.name, "encoding": "base64", "data": base64.b64encode(a.data).decode("ascii")}


def decode_tensor(obj: Any, dtype: np.dtype | None = None) -> np.ndarray:
    """A numpy array (writable) from any wire form."""
    if isinstance(obj, dict):
        if obj.get("encoding") == "base64":
            dt = DTYPES.get(obj.get("dtype", "float32"))
            if dt is None:
                raise ValueError(f"unknown tensor dtype {obj.get('dtype')!r}")
            raw = bytearray(base64.b64decode(obj["data"]))
            return np.frombuffer(raw, dtype=dt).reshape(obj["shape"])
        if "shape" in obj and "data" in obj:
            return np.array(obj["data"], dtype=dtype or FLOAT64).reshape(obj["shape"])
        raise ValueError(f"not a tensor: keys {sorted(obj)}")
    return np.array(obj, dtype=dtype or FLOAT64)


def is_tensor_form(obj: Any) -> bool:
    return isinstance(obj, dict) and "shape" in obj and "data" in obj and set(obj) <= {"shape", "data", "dtype", "encoding"}


# ------------------------------------------------------------------------------------------------
# safetensors
# ------------------------------------------------------------------------------------------------


def write_safetensors(tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> bytes:
    """A safetensors file: tensors in the given order, each little-endian float32/float64."""
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    parts = []
    offset = 0
    for name, a in tensors.items():
        a = to_numpy(a)
        n = a.nbytes
        header[name] = {"dtype": _NP_TO_ST[a.dtype.name], "shape": list(a.shape), "data_offsets": [offset, offset + n]}
        parts.append(a.data)
        offset += n
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # data aligned to 8 bytes
    return b"".join([struct.pack("<Q", len(head)), head, *parts])


def read_safetensors_header(buf: bytes | bytearray | memoryview) -> tuple[dict[str, Any], int]:
    """The JSON header of a safetensors file (``__metadata__`` included, as written) and the offset of its
    data section (8 + the header's length)."""
    mv = memoryview(buf)
    if len(mv) < 8:
        raise ValueError("safetensors: shorter than its 8-byte header length")
    (n,) = struct.unpack("<Q", mv[:8])
    if 8 + n > len(mv):
        raise ValueError(f"safetensors: header length {n} beyond the {len(mv)}-byte body")
    return json.loads(bytes(mv[8 : 8 + n])), 8 + n


def read_safetensors(buf: bytes | bytearray | memoryview) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors (writable when ``buf`` is a bytearray) and the string metadata of a safetensors file."""
    mv = memoryview(buf)
    header, base = read_safetensors_header(mv)
    meta = header.pop("__metadata__", None) or {}
    tensors = {}
    for name, info in header.items():
        dt = _ST_TO_NP.get(info["dtype"])
        if dt is None:
            raise ValueError(f"safetensors: tensor {name} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        count = (end - start) // dt.itemsize
        tensors[name] = np.frombuffer(mv, dtype=dt, count=count, offset=base + start).reshape(info["shape"])
    return tensors, meta


# ------------------------------------------------------------------------------------------------
# answers
# ------------------------------------------------------------------------------------------------

_NON_TENSOR = {"timing", "mode", "method"}


def decode_json_answer(doc: dict, dtype: np.dtype | None) -> dict:
    """Turns every tensor of a JSON answer (nested arrays or base64 forms) into numpy."""

    def walk(v: Any, key: str) -> Any:
        if key in _NON_TENSOR:
            return v
        if isinstance(v, list) or is_tensor_form(v):
            return decode_tensor(v, dtype)
        if isinstance(v, dict):
            return {k: walk(x, k) for k, x in v.items()}
        return v

    return {k: walk(v, k) for k, v in doc.items()}


def decode_safetensors_answer(buf: bytes | bytearray) -> dict:
    """The JSON-shaped answer of a safetensors body: tensors placed by their dotted names (parameter
    names keep their dots: ``grads.params.net.0.weight``), metadata fields parsed back."""
    tensors, meta = read_safetensors(buf)
    out: dict[str, Any] = {}
    for name, a in tensors.items():
        if name.startswith("grads.params."):
            path = ["grads", "params", name[len("grads.params.") :]]
        else:
            path = name.split(".")
        node = out
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = a
    for k, v in meta.items():
        text = v.strip()
        # JSON objects and arrays (timing, steps) and numbers (nfe) parsed back; strings (mode) as they are
        if text[:1] in "{[" or _NUMBER.fullmatch(text):
            try:
                out[k] = json.loads(text)
                continue
            except ValueError:
                pass
        out[k] = v
    return out


_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")
