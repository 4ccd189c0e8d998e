"""The model format on the client side: normalising what users pass, sizes, wire encoding."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .tensors import DTYPES, b64_form, is_array, is_tensor_form, to_numpy


def is_torch_module(m: Any) -> bool:
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(m, torch.nn.Module)


def normalize(model: dict) -> dict:
    """A copy of a model-format dict in which every array (numpy or torch) is a numpy array of the
    model's dtype; JSON forms (nested lists, base64 forms) stay as given."""
    if not isinstance(model, dict):
        raise TypeError(f"a model is a dict in the model format, a registered id, or a torch module; got {type(model).__name__}")
    dtype = DTYPES.get(model.get("dtype", "float32"))
    out = {k: v for k, v in model.items() if k not in ("layers", "weights")}
    if "layers" in model:
        layers = []
        for layer in model["layers"]:
            if isinstance(layer, dict):
                layer = {k: (to_numpy(v, dtype) if is_array(v) else v) for k, v in layer.items()}
            layers.append(layer)
        out["layers"] = layers
    if "weights" in model:
        w = model["weights"]
        out["weights"] = {k: (to_numpy(v, dtype) if is_array(v) else v) for k, v in w.items()} if isinstance(w, dict) else w
    return out


def _jsonable(v: Any, lists: bool) -> Any:
    if isinstance(v, np.ndarray):
        return v.tolist() if lists else b64_form(v)
    return v


def to_json(model: dict, *, binary: bool = False, lists: bool = False) -> tuple[dict, dict[str, np.ndarray]]:
    """The model as JSON-ready dict, plus (when ``binary``) the named weights to send as binary tensors
    instead (their names, unprefixed). Arrays left in JSON become base64 forms (nested lists with ``lists``)."""
    out = {k: v for k, v in model.items() if k not in ("layers", "weights")}
    bin_weights: dict[str, np.ndarray] = {}
    if "layers" in model:
        out["layers"] = [
            {k: _jsonable(v, lists) for k, v in layer.items()} if isinstance(layer, dict) else layer for layer in model["layers"]
        ]
    if "weights" in model:
        w = model["weights"]
        if isinstance(w, dict):
            jw = {}
            for k, v in w.items():
                if binary and isinstance(v, np.ndarray):
                    bin_weights[k] = v
                else:
                    jw[k] = _jsonable(v, lists)
            if jw or not bin_weights:
                out["weights"] = jw
        else:
            out["weights"] = w
    return out, bin_weights


def dumps(model: dict, **kwargs) -> str:
    """The model (arrays as base64 tensor forms) as JSON text, e.g. for ``curl -d @model.json``."""
    return json.dumps(to_json(normalize(model))[0], **kwargs)


def fingerprint(model: dict) -> str:
    """A stable digest of a normalised model's content (for the client's model → id cache)."""
    h = hashlib.sha256()

    def feed(v: Any) -> None:
        if isinstance(v, np.ndarray):
            h.update(f"A{v.dtype.name}{list(v.shape)}".encode())
            h.update(v.data)
        elif isinstance(v, dict):
            h.update(b"{")
            for k in sorted(v):
                h.update(json.dumps(k).encode())
                feed(v[k])
            h.update(b"}")
        elif isinstance(v, (list, tuple)):
            h.update(b"[")
            for x in v:
                feed(x)
                h.update(b",")
            h.update(b"]")
        else:
            h.update(json.dumps(v).encode())

    feed(model)
    return h.hexdigest()


def _shape(v: Any, weights: dict | None) -> tuple[int, ...] | None:
    if isinstance(v, str):
        if isinstance(weights, dict) and v in weights:
            return _shape(weights[v], None)
        return None
    if isinstance(v, np.ndarray):
        return v.shape
    if is_tensor_form(v):
        return tuple(v["shape"])
    if isinstance(v, list):
        try:
            return np.shape(v)
        except ValueError:
            return None
    return None


@dataclass
class Signature:
    """What the client knows of a model's sizes (for splitting and for choosing the transport)."""

    dtype: np.dtype = field(default_factory=lambda: DTYPES["float32"])
    has_t: bool | None = None
    input_width: int | None = None  # D (features of x), None without linear layers
    output_width: int | None = None  # D', None when it equals D (no linear layer)
    parameter_count: int = 0
    weight_bytes: int = 0  # of the weights sent with each inline request

    def out_width(self, d: int) -> int:
        return self.output_width if self.output_width is not None else d

    @classmethod
    def of_model(cls, model: dict) -> "Signature":
        s = cls()
        s.dtype = DTYPES.get(model.get("dtype", "float32"), DTYPES["float32"])
        inputs = model.get("inputs", ["x"])
        s.has_t = isinstance(inputs, list) and "t" in inputs
        weights = model.get("weights")
        first = True
        count = 0
        for layer in model.get("layers", []) or []:
            if not isinstance(layer, dict) or layer.get("op") != "linear":
                continue
            ws = _shape(layer.get("weight"), weights)
            bs = _shape(layer.get("bias"), weights) if layer.get("bias") is not None else ()
            if ws is None or len(ws) != 2:
                return cls(dtype=s.dtype, has_t=s.has_t)  # unknown sizes: no estimates
            if first:
                s.input_width = ws[1] - (1 if s.has_t else 0)
                first = False
            s.output_width = ws[0]
            count += ws[0] * ws[1] + (int(np.prod(bs)) if bs else 0)
        s.parameter_count = count
        s.weight_bytes = count * s.dtype.itemsize
        return s

    @classmethod
    def of_summary(cls, summary: dict) -> "Signature":
        return cls(
            dtype=DTYPES.get(summary.get("dtype", "float32"), DTYPES["float32"]),
            has_t="t" in (summary.get("inputs") or ["x"]),
            input_width=summary.get("input_width"),
            output_width=summary.get("output_width"),
            parameter_count=int(summary.get("parameter_count") or 0),
            weight_bytes=0,
        )
