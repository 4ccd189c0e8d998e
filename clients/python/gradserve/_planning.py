"""Planning a compute call: each tensor's batch axis, the spans of rows per request (so that every
request fits the servers' ``max_output_elements`` and ``max_body_bytes``), the answer's size, and the
encoding of the request and of the answer."""

from __future__ import annotations

import numpy as np

from .models import Signature


def _batch_axes(op: str, tensors: dict[str, np.ndarray], fields: dict) -> tuple[dict[str, int], int]:
    """The batch axis of each tensor (1 behind a leading K of batched cotangents/tangents), and K."""
    k = 1
    if op == "vjp" and fields.get("is_grads_batched"):
        k = tensors["grad_outputs"].shape[0] if tensors["grad_outputs"].ndim == 3 else 1
    if op == "jvp":
        tx, tt = tensors.get("tangents.x"), tensors.get("tangents.t")
        k = max(tx.shape[0] if tx is not None and tx.ndim == 3 else 1, tt.shape[0] if tt is not None and tt.ndim == 2 else 1)
    axes: dict[str, int] = {}
    for name, a in tensors.items():
        if name == "grad_outputs":
            axes[name] = 1 if fields.get("is_grads_batched") else 0
        elif name == "tangents.x":
            axes[name] = 1 if a.ndim == 3 else 0
        elif name == "tangents.t":
            axes[name] = 1 if a.ndim == 2 else 0
        else:
            axes[name] = 0
    return axes, k


def _answer_size(op: str, sig: Signature, d: int, k: int, fields: dict) -> tuple[int, int]:
    """Numbers in the answer: per row, and independent of the rows (as the server counts them)."""
    dp = sig.out_width(d)
    outputs = dp if fields.get("return_outputs", True) else 0
    if op == "forward":
        return dp, 0
    if op == "vjp":
        wrt = fields.get("wrt") or ["x"]
        per = outputs + (k * d if "x" in wrt else 0) + (k if "t" in wrt else 0)
        return per, (k * sig.parameter_count if "params" in wrt else 0)
    if op == "jvp":
        return outputs + k * dp, 0
    if op == "jacobian":
        wrt = fields.get("wrt") or ["x"]
        return outputs + (dp * d if "x" in wrt else 0) + (dp if "t" in wrt else 0), 0
    if op in ("integrate", "logprob"):
        # x (or x0), per row; logprob and log_det; the trajectory [T, B, D] (T grid times, default 2)
        per = d + (2 if op == "logprob" else 0)
        if fields.get("return_intermediates"):
            per += len(fields.get("time_grid") or (0, 1)) * d
        return per, 0
    # divergence: the server bounds the work it does, not just the answer
    if fields.get("method") == "hutchinson":
        return int(fields.get("probes", 16)) * max(d, dp), 0
    return dp * d, 0


class _Plan:
    """How one compute call is split: its tensors with their batch axes, and ``spans``, the rows of each
    request (``[None]``: the whole call in one request)."""

    def __init__(self, op: str, tensors: dict[str, np.ndarray], fields: dict, sig: Signature | None):
        self.op, self.tensors, self.fields, self.sig = op, tensors, fields, sig
        x = tensors["inputs.x"]
        self.axes, k = _batch_axes(op, tensors, fields)
        self.b = x.shape[0] if x.ndim == 2 else None
        self.d = x.shape[1] if x.ndim == 2 else None
        self.per_row = self.const = None
        if self.b is not None and sig is not None:
            self.per_row, self.const = _answer_size(op, sig, self.d, k, fields)
        b = self.b
        self.splittable = (
            b is not None and b > 1 and all(a.ndim > self.axes[n] and a.shape[self.axes[n]] == b for n, a in tensors.items())
        )
        self.spans: list[tuple[int, int] | None] = [None]

    def split(self, want: int | None, max_out: int | None, max_body: int | None, fixed_bytes: int) -> None:
        """Rows per request: at most ``want``, and what fits ``max_out`` answer numbers and ``max_body``
        request bytes (``fixed_bytes``: the part of the body that does not grow with the rows)."""
        b = self.b
        rows = b
        if want is not None:
            rows = min(rows, int(want))
        if self.per_row and max_out is not None:
            rows = min(rows, max(1, (max_out - self.const) // self.per_row))
        if max_body is not None:
            row_bytes = sum(a.nbytes // b for a in self.tensors.values()) * 4 // 3 + 64
            rows = min(rows, max(1, (max_body - fixed_bytes) // max(1, row_bytes)))
        if rows < b:
            self.spans = [(lo, min(b, lo + rows)) for lo in range(0, b, rows)]

    def part(self, span: tuple[int, int] | None) -> dict[str, np.ndarray]:
        if span is None:
            return self.tensors
        lo, hi = span
        return {n: a[(slice(None),) * self.axes[n] + (slice(lo, hi),)] for n, a in self.tensors.items()}

    def rows(self, span: tuple[int, int] | None) -> int:
        return (span[1] - span[0]) if span else (self.b or 1)

    def answer_bytes(self, nrows: int) -> int | None:
        """The answer's size for ``nrows`` rows (None when the model's signature is unknown)."""
        if self.per_row is None:
            return None
        itemsize = self.sig.dtype.itemsize
        if self.op == "divergence":  # per_row bounds the work there; the answer is one number per row
            return nrows * (1 + (self.sig.out_width(self.d) if self.fields.get("return_outputs") else 0)) * itemsize
        return (self.per_row * nrows + self.const) * itemsize


def _choose_encoding(
    transport: str, op: str, request_bytes: int, answer_bytes: int | None, threshold: int
) -> tuple[bool, str]:
    """(whether the request goes as a safetensors body, the answer's ``output_encoding``). ``auto``:
    binary for whatever exceeds ``threshold`` bytes (an answer of unknown size: binary for a Jacobian)."""
    if transport != "auto":
        return transport == "safetensors", transport
    big_answer = answer_bytes > threshold if answer_bytes is not None else op == "jacobian"
    return request_bytes > threshold, "safetensors" if big_answer else "base64"
