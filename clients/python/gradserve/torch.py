"""PyTorch → the gradserve model format.

``export(module)`` takes an ``nn.Sequential`` of ``nn.Linear`` and the supported activation modules
(nested ``nn.Sequential`` are flattened), or a module whose ``net`` is one — torchcfm's
``MLP(dim, w, time_varying=True)`` — and returns the model-format dict with the parameters under their
``state_dict`` names (``"net.0.weight"``), so ``grads.params`` come back under the same names.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["export", "SUPPORTED", "UnsupportedModule"]


class UnsupportedModule(TypeError):
    """The module (named in the message) has no counterpart in the model format."""


def _act(op: str, **params):
    def make(m: nn.Module) -> dict:
        layer = {"op": op}
        for key, attr in params.items():
            layer[key] = getattr(m, attr)
        return layer

    return make


def _gelu(m: nn.GELU) -> dict:
    if m.approximate not in ("none", "tanh"):
        raise UnsupportedModule(f"GELU(approximate={m.approximate!r})")
    return {"op": "gelu", "approximate": m.approximate}


def _softplus(m: nn.Softplus) -> dict:
    return {"op": "softplus", "beta": float(m.beta), "threshold": float(m.threshold)}


#: Module class → its layer in the model format (exact classes: a subclass may compute something else).
SUPPORTED: dict[type, Any] = {
    nn.ReLU: _act("relu"),
    nn.LeakyReLU: lambda m: {"op": "leaky_relu", "negative_slope": float(m.negative_slope)},
    nn.ELU: lambda m: {"op": "elu", "alpha": float(m.alpha)},
    nn.SELU: _act("selu"),
    nn.GELU: _gelu,
    nn.SiLU: _act("silu"),
    nn.Sigmoid: _act("sigmoid"),
    nn.Tanh: _act("tanh"),
    nn.Softplus: _softplus,
    nn.Identity: _act("identity"),
}

_NAMES = ", ".join(["Linear"] + [c.__name__ for c in SUPPORTED])


def _describe(name: str, m: nn.Module) -> str:
    where = f"module {name!r}" if name else "the top module"
    return f"{where} ({m.__class__.__module__}.{m.__class__.__qualname__}: {m!r})"


def _flatten(seq: nn.Sequential, prefix: str) -> list[tuple[str, nn.Module]]:
    out = []
    # _modules, not named_children(): the same activation instance may appear twice in a Sequential
    # (named_children yields it once), and forward runs it at both places.
    for key, child in seq._modules.items():
        if child is None:
            continue
        name = prefix + key
        if type(child) is nn.Sequential:
            out += _flatten(child, name + ".")
        else:
            out.append((name, child))
    return out


def _find_sequential(module: nn.Module) -> tuple[nn.Sequential, str]:
    if type(module) is nn.Sequential:
        return module, ""
    net = getattr(module, "net", None)
    if type(net) is nn.Sequential:
        others = [n for n, _ in module.named_children() if n != "net"]
        if others:
            raise UnsupportedModule(
                f"{_describe('', module)} has submodules outside net: {others}; only its net (an nn.Sequential) can be exported"
            )
        stray = [n for n, _ in itertools.chain(module.named_parameters(recurse=False), module.named_buffers(recurse=False))]
        if stray:
            raise UnsupportedModule(f"{_describe('', module)} has parameters or buffers outside net: {stray}")
        return net, "net."
    raise UnsupportedModule(
        f"cannot export {_describe('', module)}: expected an nn.Sequential of Linear and activations, "
        f"or a module whose `net` is one (as torchcfm's MLP)"
    )


def export(module: nn.Module, *, time_varying: bool | None = None, dtype: str | None = None) -> dict:
    """The model-format dict of ``module`` (weights as numpy arrays, copied: later training does not change it).

    ``time_varying``: whether the model takes ``t`` (appended to x as the last feature column, the
    torchcfm convention); default: the module's ``time_varying`` attribute, else False.
    ``dtype``: ``"float32"`` or ``"float64"``; default: that of the module's parameters.
    Raises :class:`UnsupportedModule` naming the first module the format cannot express.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"export takes a torch.nn.Module, got {type(module).__name__}")
    seq, prefix = _find_sequential(module)
    if time_varying is None:
        time_varying = bool(getattr(module, "time_varying", False))
    state = module.state_dict(keep_vars=True)
    layers: list[dict] = []
    weights: dict[str, np.ndarray] = {}
    dtypes: set[torch.dtype] = set()
    shared: dict[int, str] = {}
    for name, m in _flatten(seq, prefix):
        if m._forward_hooks or m._forward_pre_hooks:
            raise UnsupportedModule(
                f"{_describe(name, m)} has forward hooks (weight_norm, pruning, …), which the format cannot express"
            )
        if type(m) is nn.Linear:
            layer: dict[str, Any] = {"op": "linear"}
            for part in ("weight", "bias"):
                p = getattr(m, part)
                if p is None:
                    continue
                if id(p) in shared:  # the same parameter used twice: one weight, its gradients summed
                    layer[part] = shared[id(p)]
                    continue
                key = f"{name}.{part}"
                if key not in state:
                    raise UnsupportedModule(f"{_describe(name, m)}: its {part} is not the state_dict entry {key!r}")
                dtypes.add(p.dtype)
                weights[key] = p.detach().to("cpu", copy=True)
                shared[id(p)] = key
                layer[part] = key
            layers.append(layer)
        elif type(m) in SUPPORTED:
            layers.append(SUPPORTED[type(m)](m))
        else:
            raise UnsupportedModule(f"{_describe(name, m)} is not supported; gradserve supports {_NAMES} (and nested Sequential)")
    if not layers:
        raise UnsupportedModule(f"{_describe('', module)} has no layers")
    if dtype is None:
        if len(dtypes) > 1:
            raise TypeError(f"the parameters mix dtypes {sorted(map(str, dtypes))}; pass dtype='float32' or 'float64'")
        pdt = dtypes.pop() if dtypes else torch.float32
        if pdt not in (torch.float32, torch.float64):
            raise TypeError(
                f"parameters are {pdt}; gradserve computes in float32 or float64: pass dtype='float32' (or cast the module)"
            )
        dtype = "float64" if pdt == torch.float64 else "float32"
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    np_dtype = np.float32 if dtype == "float32" else np.float64
    model: dict[str, Any] = {
        "inputs": ["x", "t"] if time_varying else ["x"],
        "dtype": dtype,
        "layers": layers,
    }
    if weights:
        model["weights"] = {
            k: np.ascontiguousarray(v.to(torch.float64 if dtype == "float64" else torch.float32).numpy(), dtype=np_dtype)
            for k, v in weights.items()
        }
    return model
