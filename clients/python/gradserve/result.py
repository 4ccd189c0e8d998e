"""Answers as dicts with attribute access, shaped like the server's JSON answer."""

from __future__ import annotations

from typing import Any

import numpy as np

from .tensors import is_torch_tensor


def _short(v: Any) -> str:
    if isinstance(v, np.ndarray) or is_torch_tensor(v):
        dtype = str(v.dtype).replace("torch.", "")
        return f"<{type(v).__name__} {list(v.shape)} {dtype}>"
    if isinstance(v, Result):
        return v._repr_inner()
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k!r}: {_short(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list) and len(v) > 4:
        return f"[{_short(v[0])}, … {len(v)} items]"
    return repr(v)


class Result(dict):
    """The service's answer, with its fields (``outputs``, ``grads``, ``jvp``, ``jacobian``, ``mode``,
    ``divergence``, ``timing``…) readable as keys or attributes: ``r.grads.x`` is ``r["grads"]["x"]``.
    Parameter gradients are keyed by state_dict name: ``r.grads.params["net.0.weight"]``.

    ``requests`` is how many HTTP requests produced it (more than one when the batch was split).
    """

    requests: int = 1

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"this answer has no field {key!r}; it has {sorted(self)}") from None

    def __dir__(self):
        return list(super().__dir__()) + [k for k in self if isinstance(k, str) and k.isidentifier()]

    def _repr_inner(self) -> str:
        return "{" + ", ".join(f"{k}={_short(v)}" for k, v in self.items()) + "}"

    def __repr__(self) -> str:
        return "Result" + self._repr_inner()

    # dict's own pretty printers would show every number of a Jacobian
    def _repr_pretty_(self, p, cycle):  # IPython
        p.text(repr(self))


def wrap(v: Any) -> Any:
    """Dicts (recursively, through lists) as Result."""
    if isinstance(v, dict) and not isinstance(v, Result):
        return Result({k: wrap(x) for k, x in v.items()})
    if isinstance(v, list):
        return [wrap(x) for x in v]
    return v
