"""Merging: the answers of a split batch reassembled into the call's one answer (parts concatenated
along their batch axis — axis 1 for a trajectory ``[T, B, D]`` — parameter gradients, timings and an ODE
solve's ``nfe`` and ``steps`` summed, the latter also kept per request in ``parts``), as torch tensors when
the inputs were."""

from __future__ import annotations

from typing import Any

import numpy as np

from .result import Result, wrap


def _assemble(op: str, parts: list[dict], fields: dict, axes: dict[str, int], device: Any) -> Result:
    """The call's answer: the parts merged, as torch tensors on ``device`` when the inputs were torch."""
    merged = parts[0] if len(parts) == 1 else _merge(op, parts, fields, axes)
    if len(parts) > 1 and op in _SOLVES:
        merged["parts"] = [
            {"rows": _rows(op, p), "nfe": p.get("nfe"), "steps": p.get("steps")} for p in parts
        ]
    if op == "vjp" and "params" in (fields.get("wrt") or []):
        merged.setdefault("grads", {}).setdefault("params", {})  # a model without parameters
    result = wrap(_to_torch(merged, device) if device is not None else merged)
    result.requests = len(parts)
    return result


#: Operations that answer an ODE solve's ``nfe`` and ``steps``.
_SOLVES = ("integrate", "logprob")


def _rows(op: str, part: dict) -> int | None:
    a = part.get("x" if op == "integrate" else "logprob")
    return int(a.shape[0]) if isinstance(a, np.ndarray) and a.ndim >= 1 else None


def _merge(op: str, parts: list[dict], fields: dict, axes: dict[str, int]) -> dict:
    """Concatenates the answers of a split batch in order (parameter gradients are summed: they are
    sums over the batch); ``timing`` is the sum over the requests, and so are an ODE solve's ``nfe``
    and ``steps`` (velocity evaluations and steps of all the requests together)."""
    k_axis = 1 if fields.get("is_grads_batched") else 0
    jvp_axis = 1 if axes.get("tangents.x", 0) == 1 or axes.get("tangents.t", 0) == 1 else 0

    def axis_of(path: tuple[str, ...]) -> int:
        if path[0] == "grads":
            return k_axis
        if path[0] == "jvp":
            return jvp_axis
        if path[0] == "trajectory":
            return 1
        return 0

    def combine(values: list[Any], path: tuple[str, ...]) -> Any:
        v0 = values[0]
        if path == ("timing",):
            return {key: round(sum(float(v.get(key, 0)) for v in values), 3) for key in v0}
        if op in _SOLVES and path[0] in ("nfe", "steps") and isinstance(v0, (int, float)) and not isinstance(v0, bool):
            return sum(values)
        if isinstance(v0, np.ndarray):
            if path[:2] == ("grads", "params"):
                return np.sum(values, axis=0, dtype=v0.dtype)
            return np.concatenate(values, axis=axis_of(path))
        if isinstance(v0, dict):
            return {key: combine([v[key] for v in values], path + (key,)) for key in v0}
        return v0  # mode, method: the same in every part

    return {key: combine([p[key] for p in parts], (key,)) for key in parts[0]}


def _to_torch(v: Any, device: Any) -> Any:
    import torch

    if isinstance(v, np.ndarray):
        t = torch.from_numpy(v if v.flags.writeable else v.copy())
        return t.to(device) if device is not None and device.type != "cpu" else t
    if isinstance(v, dict):
        return {k: _to_torch(x, device) for k, x in v.items()}
    return v
