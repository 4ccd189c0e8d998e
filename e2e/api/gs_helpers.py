"""Shared helpers for the gradserve end-to-end and fuzz tests.

Servers (ServerProcess, …), RSS readers and the port reader come from the shared test-support package
(e2e/support/gradserve_testing, re-exported here); safetensors files are written and read by this checkout's
client (gradserve.tensors). Here: HTTP helpers, tensor wire forms, random MLPs and their PyTorch reference.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))

from gradserve_testing.rss import peak_rss_bytes, vm_rss  # noqa: E402,F401  (re-exported for the tests)
from gradserve_testing.server import (  # noqa: E402,F401
    START_TIMEOUT,
    ServerExited,
    ServerProcess,
    listening_port,
    server_binary,
    wait_healthy,
)
from gradserve.tensors import read_safetensors, read_safetensors_header, write_safetensors  # noqa: E402

TIMEOUT = 120  # seconds, for ordinary requests: an upper bound for a hang, above the server's own 60 s deadline


# --------------------------------------------------------------------------------------
# HTTP helpers
# --------------------------------------------------------------------------------------

_session = requests.Session()


def post(url: str, path: str, body, *, headers: dict | None = None, timeout: float = TIMEOUT, session=None) -> requests.Response:
    """POST `body` (dict/list → JSON; bytes/str sent as is, JSON content type unless headers say otherwise)."""
    s = session or _session
    h = {"Content-Type": "application/json"}
    if headers:
        h.update(headers)
    if isinstance(body, (bytes, bytearray)):
        data = bytes(body)
    elif isinstance(body, str):
        data = body.encode()
    else:
        data = json.dumps(body, allow_nan=False).encode()
    return s.post(url + path, data=data, headers=h, timeout=timeout)


def get(url: str, path: str, *, headers: dict | None = None, timeout: float = TIMEOUT, session=None) -> requests.Response:
    return (session or _session).get(url + path, headers=headers or {}, timeout=timeout)


def delete(url: str, path: str, *, headers: dict | None = None, timeout: float = TIMEOUT, session=None) -> requests.Response:
    return (session or _session).delete(url + path, headers=headers or {}, timeout=timeout)


def describe(r: requests.Response) -> str:
    """The request and answer, for assertion messages."""
    req = r.request
    body = req.body
    if isinstance(body, str):
        body = body.encode()
    elif not isinstance(body, (bytes, bytearray)):
        body = repr(body).encode() if body is not None else b""
    shown = body[:600] + (b"..." if len(body) > 600 else b"")
    return (
        f"\nREQUEST: {req.method} {req.url} ({len(body)} bytes)\n  headers: {dict(req.headers)}\n  body: {shown!r}"
        f"\nRESPONSE: {r.status_code} {dict(r.headers)}\n  body: {r.content[:1500]!r}"
    )


def ok_json(r: requests.Response) -> dict:
    assert r.status_code == 200, describe(r)
    assert r.headers.get("Content-Type", "").startswith("application/json"), describe(r)
    return r.json()


def assert_problem(r: requests.Response, status=None) -> dict:
    """The answer is an application/problem+json error with the RFC 9457 fields."""
    if status is not None:
        assert r.status_code == status, describe(r)
    assert 400 <= r.status_code < 500, describe(r)
    assert r.headers.get("Content-Type", "").split(";")[0].strip() == "application/problem+json", describe(r)
    body = r.json()
    for key in ("type", "title", "status", "detail", "errors"):
        assert key in body, f"problem lacks {key}" + describe(r)
    assert body["status"] == r.status_code, describe(r)
    assert isinstance(body["errors"], list), describe(r)
    for e in body["errors"]:
        assert isinstance(e, dict) and "path" in e and "message" in e, describe(r)
    return body


def error_paths(body: dict) -> list[str]:
    return [e["path"] for e in body.get("errors", [])]


# --------------------------------------------------------------------------------------
# Tensor wire forms
# --------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------
# Comparisons
# --------------------------------------------------------------------------------------

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
