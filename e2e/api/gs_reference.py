"""Random MLPs and their PyTorch reference for the gradserve end-to-end tests: the activations the API
knows, an MLP class that writes itself as a model object and as a torch function, reference forward,
VJP, JVP, Jacobian and divergence, and the norm-relative comparison the answers are checked with.
"""

from __future__ import annotations

import numpy as np

from gs_wire import wire

TOL = {"float64": 1e-10, "float32": 1e-5}


def close(a, b, dtype: str, what: str = "", tol: float | None = None):
    """Norm-relative: max|a-b| <= tol * max|b| (with a tiny floor for all-zero references)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, f"{what}: shape {a.shape} != expected {b.shape}"
    t = TOL[dtype] if tol is None else tol
    scale = max(float(np.max(np.abs(b))) if b.size else 0.0, 1e-30)
    err = float(np.max(np.abs(a - b))) if a.size else 0.0
    assert err <= t * scale or err <= 1e-300, f"{what}: max|a-b| = {err:.3e} > {t:g} * max|b| = {t * scale:.3e}"


# --------------------------------------------------------------------------------------
# Random models and the PyTorch reference
# --------------------------------------------------------------------------------------

ACTIVATIONS = [
    {"op": "relu"},
    {"op": "leaky_relu"},
    {"op": "leaky_relu", "negative_slope": 0.23},
    {"op": "elu"},
    {"op": "elu", "alpha": 0.65},
    {"op": "selu"},
    {"op": "gelu"},
    {"op": "gelu", "approximate": "none"},
    {"op": "gelu", "approximate": "tanh"},
    {"op": "silu"},
    {"op": "sigmoid"},
    {"op": "tanh"},
    {"op": "softplus"},
    {"op": "softplus", "beta": 2.0, "threshold": 1.5},
    {"op": "identity"},
]


def act_id(a: dict) -> str:
    extra = "-".join(f"{k}={v}" for k, v in a.items() if k != "op")
    return a["op"] + (f"[{extra}]" if extra else "")


class MLP:
    """A random MLP: linear layers (numpy weights, already rounded to the model dtype) and activations.

    `names[i]` is the state_dict-style name prefix of linear layer i when it is referenced through
    `weights`, else None (inline, named `layers.<i>.weight`/`layers.<i>.bias` by the server)."""

    def __init__(self, layers: list, has_t: bool, dtype: str, names: dict | None = None):
        self.layers = layers  # ("linear", W, b|None) or ("act", dict)
        self.has_t = has_t
        self.dtype = dtype
        self.names = names or {}

    @staticmethod
    def random(rng: np.random.Generator, d: int, widths: list[int], acts: list[dict], has_t=False, dtype="float64",
               bias=True, named: bool | str = False, scale: float = 1.0) -> "MLP":
        """`widths` are the linear output widths; activation k follows linear k (if given)."""
        layers = []
        names = {}
        fan_in = d + (1 if has_t else 0)
        li = 0
        for k, w in enumerate(widths):
            W = rng.normal(0, scale / np.sqrt(fan_in), size=(w, fan_in))
            b = rng.normal(0, 0.5, size=(w,)) if bias else None
            if dtype == "float32":
                W = W.astype(np.float32).astype(np.float64)
                b = None if b is None else b.astype(np.float32).astype(np.float64)
            idx = len(layers)
            if named is True or (named == "mixed" and k % 2 == 0):
                names[idx] = f"net.{idx}"
            layers.append(("linear", W, b))
            fan_in = w
            li += 1
            if k < len(acts):
                layers.append(("act", dict(acts[k])))
        return MLP(layers, has_t, dtype, names)

    # ---- JSON ----------------------------------------------------------------------
    def to_json(self, form: str = "nested") -> dict:
        """The model object; weights in `form` (nested/flat/b64). Named layers go through `weights`."""
        out_layers = []
        weights = {}
        for i, layer in enumerate(self.layers):
            if layer[0] == "act":
                out_layers.append(dict(layer[1]))
                continue
            _, W, b = layer
            if i in self.names:
                n = self.names[i]
                weights[f"{n}.weight"] = wire(W, form, self.dtype)
                entry = {"op": "linear", "weight": f"{n}.weight"}
                if b is not None:
                    weights[f"{n}.bias"] = wire(b, form, self.dtype)
                    entry["bias"] = f"{n}.bias"
            else:
                entry = {"op": "linear", "weight": wire(W, form, self.dtype)}
                if b is not None:
                    entry["bias"] = wire(b, form, self.dtype)
            out_layers.append(entry)
        m = {"inputs": ["x", "t"] if self.has_t else ["x"], "dtype": self.dtype, "layers": out_layers}
        if weights:
            m["weights"] = weights
        return m

    def param_names(self) -> list[str]:
        """Server-side parameter names in order, with their arrays."""
        out = []
        for i, layer in enumerate(self.layers):
            if layer[0] != "linear":
                continue
            base = self.names.get(i)
            out.append((f"{base}.weight" if base else f"layers.{i}.weight", layer[1]))
            if layer[2] is not None:
                out.append((f"{base}.bias" if base else f"layers.{i}.bias", layer[2]))
        return out

    @property
    def out_width(self) -> int:
        for layer in reversed(self.layers):
            if layer[0] == "linear":
                return layer[1].shape[0]
        raise ValueError("no linear layer")

    @property
    def in_width(self) -> int:
        for layer in self.layers:
            if layer[0] == "linear":
                return layer[1].shape[1] - (1 if self.has_t else 0)
        raise ValueError("no linear layer")

    # ---- PyTorch --------------------------------------------------------------------
    def torch_params(self):
        import torch

        return [torch.tensor(a, dtype=torch.float64, requires_grad=True) for _, a in self.param_names()]

    def torch_fn(self, params=None):
        """f(x [B, D], t [B] or None) -> [B, D'] in float64, with the given parameter tensors."""
        import torch
        import torch.nn.functional as F

        if params is None:
            params = [torch.tensor(a, dtype=torch.float64) for _, a in self.param_names()]

        def f(x, t=None):
            h = x
            if self.has_t:
                h = torch.cat([x, t.unsqueeze(-1)], dim=-1)
            p = iter(params)
            for layer in self.layers:
                if layer[0] == "linear":
                    W = next(p)
                    b = next(p) if layer[2] is not None else None
                    h = F.linear(h, W, b)
                    continue
                a = layer[1]
                op = a["op"]
                if op == "relu":
                    h = F.relu(h)
                elif op == "leaky_relu":
                    h = F.leaky_relu(h, a.get("negative_slope", 0.01))
                elif op == "elu":
                    h = F.elu(h, a.get("alpha", 1.0))
                elif op == "selu":
                    h = F.selu(h)
                elif op == "gelu":
                    h = F.gelu(h, approximate=a.get("approximate", "none"))
                elif op == "silu":
                    h = F.silu(h)
                elif op == "sigmoid":
                    h = torch.sigmoid(h)
                elif op == "tanh":
                    h = torch.tanh(h)
                elif op == "softplus":
                    h = F.softplus(h, a.get("beta", 1.0), a.get("threshold", 20.0))
                elif op == "identity":
                    pass
                else:
                    raise ValueError(op)
            return h

        return f


def t64(a):
    import torch

    return torch.tensor(np.asarray(a, dtype=np.float64), dtype=torch.float64)


def ref_forward(m: MLP, x, t=None):
    f = m.torch_fn()
    with __import__("torch").no_grad():
        return f(t64(x), None if t is None else t64(t)).numpy()


def ref_vjp(m: MLP, x, t, v, wrt, batched=False):
    """torch.autograd.grad(y, [x, t, *params], grad_outputs=v[, is_grads_batched])."""
    import torch

    xt = t64(x).requires_grad_(True)
    tt = t64(t).requires_grad_(True) if t is not None else None
    params = m.torch_params()
    y = m.torch_fn(params)(xt, tt)
    targets = []
    keys = []
    if "x" in wrt:
        targets.append(xt)
        keys.append("x")
    if "t" in wrt:
        targets.append(tt)
        keys.append("t")
    if "params" in wrt:
        for (name, _), p in zip(m.param_names(), params):
            targets.append(p)
            keys.append("params." + name)
    grads = torch.autograd.grad(y, targets, grad_outputs=t64(v), is_grads_batched=batched, allow_unused=True)
    out = {"outputs": y.detach().numpy()}
    for k, g in zip(keys, grads):
        if g is None:
            g = torch.zeros_like(targets[keys.index(k)]) if not batched else torch.zeros(
                (np.asarray(v).shape[0], *targets[keys.index(k)].shape), dtype=torch.float64)
        out[k] = g.detach().numpy()
    return out


def ref_jvp(m: MLP, x, t, tx, tt, batched=False):
    """torch.func.jvp with missing tangents as zeros; K-batched via vmap over the tangents."""
    import torch
    from torch.func import jvp, vmap

    f = m.torch_fn()
    X = t64(x)
    T = t64(t) if t is not None else None
    if batched:
        k = (np.asarray(tx).shape[0] if tx is not None else np.asarray(tt).shape[0])
        TX = t64(tx) if tx is not None else torch.zeros((k, *X.shape), dtype=torch.float64)
        if m.has_t:
            TT = t64(tt) if tt is not None else torch.zeros((k, *T.shape), dtype=torch.float64)
            res = vmap(lambda a, b: jvp(f, (X, T), (a, b))[1])(TX, TT)
        else:
            res = vmap(lambda a: jvp(lambda xx: f(xx), (X,), (a,))[1])(TX)
        return f(X, T).numpy(), res.detach().numpy()
    TX = t64(tx) if tx is not None else torch.zeros_like(X)
    if m.has_t:
        TT = t64(tt) if tt is not None else torch.zeros_like(T)
        y, u = jvp(f, (X, T), (TX, TT))
    else:
        y, u = jvp(lambda xx: f(xx), (X,), (TX,))
    return y.detach().numpy(), u.detach().numpy()


def ref_jacobian(m: MLP, x, t=None):
    """vmap(jacrev(f_single)) per sample: ({'x': [B, D', D], 't': [B, D']}, outputs)."""
    import torch
    from torch.func import jacrev, vmap

    f = m.torch_fn()
    X = t64(x)
    if m.has_t:
        T = t64(t)

        def single(xi, ti):
            return f(xi.unsqueeze(0), ti.unsqueeze(0)).squeeze(0)

        jx, jt = vmap(jacrev(single, argnums=(0, 1)))(X, T)
        return {"x": jx.detach().numpy(), "t": jt.detach().numpy()}, f(X, T).detach().numpy()

    def single(xi):
        return f(xi.unsqueeze(0)).squeeze(0)

    jx = vmap(jacrev(single))(X)
    return {"x": jx.detach().numpy()}, f(X).detach().numpy()


def ref_divergence(m: MLP, x, t=None):
    j, _ = ref_jacobian(m, x, t)
    import torch

    return torch.vmap(torch.trace)(torch.tensor(j["x"])).numpy()
