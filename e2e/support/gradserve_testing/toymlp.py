"""The seed's ToyMLP, the one builder of every suite, bench script and fixture generator.

torchcfm's ``MLP(dim, w, time_varying=True)`` with SELU: ``net(cat[x, t[:, None]])`` where
``net = Linear(dim + 1, w) → SELU → 2 × [Linear(w, w) → SELU] → Linear(w, dim)`` (dim 784, width 64 by
default), weights from ``torch.manual_seed(seed)`` and nn.Linear's default initialisation. Its model-format
dict comes from the client's PyTorch export (``gradserve.torch.export``), parameters under their
state_dict names (``net.0.weight`` …).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from . import CLIENT_DIR  # noqa: F401  (this checkout's client first on sys.path)

D, WIDTH = 784, 64


class ToyMLP(nn.Module):
    """torchcfm's MLP(dim, w, time_varying=True): net(cat[x, t[:, None]])."""

    def __init__(self, dim: int = D, w: int = WIDTH, time_varying: bool = True, act=nn.SELU, out_dim: int | None = None):
        super().__init__()
        self.time_varying = time_varying
        out_dim = dim if out_dim is None else out_dim
        self.net = nn.Sequential(
            nn.Linear(dim + (1 if time_varying else 0), w),
            act(),
            nn.Linear(w, w),
            act(),
            nn.Linear(w, w),
            act(),
            nn.Linear(w, out_dim),
        )

    def forward(self, x, t=None):
        if self.time_varying:
            x = torch.cat([x, t[:, None]], dim=-1)
        return self.net(x)


def toy_mlp(
    dim: int = D,
    w: int = WIDTH,
    *,
    time_varying: bool = True,
    act=nn.SELU,
    out_dim: int | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> ToyMLP:
    """A ToyMLP with the weights of torch.manual_seed(seed) (the global generator is reseeded)."""
    torch.manual_seed(seed)
    return ToyMLP(dim, w, time_varying, act, out_dim).to(dtype)


def toy_model(seed: int = 0, dtype: str = "float32", **kwargs) -> dict[str, Any]:
    """The model-format dict of ``toy_mlp(seed=seed, **kwargs)``, weights as numpy arrays of `dtype`."""
    from gradserve.torch import export

    return export(toy_mlp(seed=seed, **kwargs), dtype=dtype)


def toy_weights(seed: int = 0, dtype: str = "float32", **kwargs) -> dict[str, np.ndarray]:
    """The ToyMLP's parameters by state_dict name (``net.0.weight``, ``net.0.bias``, …, ``net.6.bias``)."""
    return toy_model(seed, dtype, **kwargs)["weights"]


def toy_model_json(seed: int = 0, dtype: str = "float32", **kwargs) -> dict[str, Any]:
    """The ToyMLP's model object, JSON-ready: weights as base64 tensor forms."""
    from gradserve.models import to_json

    return to_json(toy_model(seed, dtype, **kwargs))[0]


# ------------------------------------------------------------------------------------------------
# A float64 numpy reference (for bench scripts that check answers without PyTorch in the loop)
# ------------------------------------------------------------------------------------------------

LAYER_NAMES = ["net.0", "net.2", "net.4", "net.6"]  # the Linear layers' state_dict prefixes
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def selu(z: np.ndarray) -> np.ndarray:
    return SELU_SCALE * np.where(z > 0, z, SELU_ALPHA * np.expm1(np.minimum(z, 0)))


def selu_grad(z: np.ndarray) -> np.ndarray:
    return SELU_SCALE * np.where(z > 0, 1.0, SELU_ALPHA * np.exp(np.minimum(z, 0)))


class ToyReference:
    """The (time-varying, SELU) ToyMLP in float64 numpy from its weights by state_dict name (`toy_weights`):
    forward, VJP wrt x, per-sample Jacobian wrt x."""

    def __init__(self, weights: dict[str, np.ndarray]):
        self.W = [weights[f"{n}.weight"].astype(np.float64) for n in LAYER_NAMES]
        self.b = [weights[f"{n}.bias"].astype(np.float64) for n in LAYER_NAMES]
        self.d = self.W[0].shape[1] - 1

    def _pre(self, x: np.ndarray, t: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        h = np.concatenate([x.astype(np.float64), t.astype(np.float64)[:, None]], axis=1)
        zs = []
        for i in range(len(self.W)):
            z = h @ self.W[i].T + self.b[i]
            if i < len(self.W) - 1:
                zs.append(z)
                h = selu(z)
            else:
                h = z
        return zs, h

    def forward(self, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        return self._pre(x, t)[1]

    def vjp_x(self, x: np.ndarray, t: np.ndarray, v: np.ndarray) -> np.ndarray:
        zs, _ = self._pre(x, t)
        g = v.astype(np.float64)
        for i in range(len(self.W) - 1, -1, -1):
            g = g @ self.W[i]
            if i > 0:
                g = g * selu_grad(zs[i - 1])
        return g[:, : self.d]

    def jacobian_x(self, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        zs, _ = self._pre(x, t)
        out = []
        for s in range(x.shape[0]):
            J = self.W[-1]
            for i in range(len(self.W) - 2, -1, -1):
                J = (J * selu_grad(zs[i][s])[None, :]) @ self.W[i]
            out.append(J[:, : self.d])
        return np.stack(out)  # [B, D', D]
