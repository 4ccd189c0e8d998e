"""gradserve.torch.export: every supported module, checked as export + service against the module itself."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import gradserve
from gradserve.torch import SUPPORTED, UnsupportedModule, export

from conftest import ToyMLP, assert_close, inputs, make_toy, ref_forward, ref_jacobian, ref_jvp, ref_vjp

ACTIVATIONS = [
    nn.ReLU(),
    nn.LeakyReLU(),
    nn.LeakyReLU(negative_slope=0.2),
    nn.ELU(),
    nn.ELU(alpha=0.5),
    nn.SELU(),
    nn.GELU(),
    nn.GELU(approximate="tanh"),
    nn.SiLU(),
    nn.Sigmoid(),
    nn.Tanh(),
    nn.Softplus(),
    nn.Softplus(beta=2.0, threshold=1.5),
    nn.Identity(),
]


def test_every_supported_class_is_tested():
    assert {type(a) for a in ACTIVATIONS} == set(SUPPORTED)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("act", ACTIVATIONS, ids=repr)
def test_activation_against_pytorch(client, act, dtype):
    torch.manual_seed(3)
    # inputs scaled so every branch of each activation is hit (softplus threshold, ELU/LeakyReLU negatives)
    m = nn.Sequential(nn.Linear(6, 10), act, nn.Linear(10, 6), act).to(dtype)
    with torch.no_grad():
        m[0].weight.mul_(3.0)
    x, _ = inputs(5, 6, dtype, with_t=False)
    model = export(m)
    assert model["dtype"] == ("float64" if dtype == torch.float64 else "float32")
    assert model["inputs"] == ["x"]
    v = torch.randn(5, 6, dtype=dtype)
    u = torch.randn(5, 6, dtype=dtype)
    r = client.vjp(model, x, None, v, wrt=["x", "params"])
    y, want = ref_vjp(m, x, None, v)
    assert_close(r.outputs, y, dtype, "outputs")
    assert_close(r.grads.x, want["x"], dtype, "grads.x")
    assert set(r.grads.params) == set(m.state_dict())
    for name, g in want["params"].items():
        assert_close(r.grads.params[name], g, dtype, f"grads.params.{name}")
    assert_close(client.jvp(model, x, None, u).jvp, ref_jvp(m, x, None, u, None), dtype, "jvp")
    assert_close(client.jacobian(model, x).jacobian.x, ref_jacobian(m, x, None)[0], dtype, "jacobian")


def test_activation_parameters_are_carried():
    layers = export(nn.Sequential(nn.LeakyReLU(0.3), nn.ELU(0.7), nn.GELU("tanh"), nn.Softplus(3.0, 4.0)))["layers"]
    assert layers == [
        {"op": "leaky_relu", "negative_slope": 0.3},
        {"op": "elu", "alpha": 0.7},
        {"op": "gelu", "approximate": "tanh"},
        {"op": "softplus", "beta": 3.0, "threshold": 4.0},
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torchcfm_mlp_time_varying(client, dtype):
    m = make_toy(dim=10, w=32, dtype=dtype, seed=5)
    model = export(m)
    assert model["inputs"] == ["x", "t"]
    assert set(model["weights"]) == set(m.state_dict()) == {f"net.{i}.{p}" for i in (0, 2, 4, 6) for p in ("weight", "bias")}
    assert model["layers"][0] == {"op": "linear", "weight": "net.0.weight", "bias": "net.0.bias"}
    x, t = inputs(4, 10, dtype)
    assert_close(client.forward(model, x, t).outputs, ref_forward(m, x, t), dtype, "t as the last column")
    jx, jt = ref_jacobian(m, x, t)
    r = client.jacobian(model, x, t, wrt=["x", "t"])
    assert_close(r.jacobian.x, jx, dtype, "jacobian.x")
    assert_close(r.jacobian.t, jt, dtype, "jacobian.t")


def test_time_varying_override_and_plain_sequential_names(client):
    torch.manual_seed(6)
    seq = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 4, bias=False)).double()
    model = export(seq, time_varying=True)
    assert model["inputs"] == ["x", "t"] and set(model["weights"]) == {"0.weight", "0.bias", "2.weight"}
    assert model["layers"][2] == {"op": "linear", "weight": "2.weight"}
    x, t = inputs(3, 4)
    want = seq(torch.cat([x, t[:, None]], -1)).detach()
    assert_close(client.forward(model, x, t).outputs, want, torch.float64, "time_varying=True on a Sequential")
    assert export(make_toy(), time_varying=False)["inputs"] == ["x"]


def test_nested_sequential_is_flattened_with_state_dict_names(client):
    torch.manual_seed(7)
    m = nn.Sequential(nn.Sequential(nn.Linear(4, 6), nn.SiLU()), nn.Sequential(nn.Sequential(nn.Linear(6, 3)))).double()
    model = export(m)
    assert set(model["weights"]) == set(m.state_dict()) == {"0.0.weight", "0.0.bias", "1.0.0.weight", "1.0.0.bias"}
    x, _ = inputs(3, 4, with_t=False)
    v = torch.randn(3, 3, dtype=torch.float64)
    r = client.vjp(model, x, None, v, wrt=["params"])
    _, want = ref_vjp(m, x, None, v)
    for name, g in want["params"].items():
        assert_close(r.grads.params[name], g, torch.float64, name)


def test_shared_modules(client):
    """A module used twice: an activation runs at both places; a shared Linear is one weight (named as
    in named_parameters) whose gradient sums both uses, as in torch."""
    torch.manual_seed(8)
    lin, act = nn.Linear(5, 5), nn.Tanh()
    m = nn.Sequential(lin, act, lin, act).double()
    model = export(m)
    assert set(model["weights"]) == {n for n, _ in m.named_parameters()} == {"0.weight", "0.bias"}
    assert [layer.get("weight") for layer in model["layers"]] == ["0.weight", None, "0.weight", None]
    x, _ = inputs(4, 5, with_t=False)
    v = torch.randn(4, 5, dtype=torch.float64)
    r = client.vjp(model, x, None, v, wrt=["x", "params"])
    y, want = ref_vjp(m, x, None, v)
    assert_close(r.outputs, y, torch.float64, "outputs")
    assert set(r.grads.params) == set(want["params"])
    for name, g in want["params"].items():
        assert_close(r.grads.params[name], g, torch.float64, name)


def test_the_seed_toymlp(client):
    """The ToyMLP of the notebook: x [3, 784], t [3], float32."""
    torch.manual_seed(0)
    m = ToyMLP(784, 64, True)
    x, t = torch.randn(3, 784), torch.rand(3)
    model = export(m)
    r = client.jacobian(model, x, t)
    assert r.jacobian.x.shape == (3, 784, 784)
    assert_close(r.jacobian.x, ref_jacobian(m, x, t)[0], torch.float32, "ToyMLP jacobian")


def test_weights_are_copied_and_json_ready():
    m = make_toy(dtype=torch.float32)
    model = export(m)
    before = model["weights"]["net.0.weight"].copy()
    with torch.no_grad():
        m.net[0].weight.add_(1.0)
    assert np.array_equal(model["weights"]["net.0.weight"], before)
    assert isinstance(model["weights"]["net.0.weight"], np.ndarray) and model["weights"]["net.0.weight"].dtype == np.float32
    doc = json.loads(gradserve.dumps(model))
    w = doc["weights"]["net.0.weight"]
    assert w["encoding"] == "base64" and w["dtype"] == "float32" and w["shape"] == [16, 13]


def test_dtype_choice():
    m = make_toy(dtype=torch.float32)
    assert export(m, dtype="float64")["weights"]["net.0.weight"].dtype == np.float64
    with pytest.raises(TypeError, match="float16"):
        export(m.half())
    assert export(make_toy(dtype=torch.float32).half(), dtype="float32")["dtype"] == "float32"
    mixed = make_toy(dtype=torch.float32)
    mixed.net[0].double()
    with pytest.raises(TypeError, match="mix"):
        export(mixed)
    with pytest.raises(ValueError):
        export(m, dtype="int8")


class Custom(nn.Module):
    def forward(self, x):
        return x * 2


class MyLinear(nn.Linear):
    def forward(self, x):
        return super().forward(x) * 2


class WithExtra(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 3))
        self.scale = nn.Parameter(torch.ones(3))

    def forward(self, x):
        return self.net(x) * self.scale


class WithSubmodule(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 3))
        self.head = nn.Linear(3, 1)


class NoNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(3, 3))


@pytest.mark.parametrize(
    "module, names",
    [
        (nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.1)), ["'1'", "Dropout"]),
        (nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.BatchNorm1d(3)), ["'2'", "BatchNorm1d"]),
        (nn.Sequential(nn.Conv1d(1, 1, 3)), ["'0'", "Conv1d"]),
        (nn.Sequential(nn.Linear(3, 3), nn.Softmax(dim=-1)), ["'1'", "Softmax"]),
        (nn.Sequential(nn.Linear(3, 3), nn.Hardtanh()), ["'1'", "Hardtanh"]),
        (nn.Sequential(nn.Linear(3, 3), nn.PReLU()), ["'1'", "PReLU"]),
        (nn.Sequential(nn.Linear(3, 3), Custom()), ["'1'", "Custom"]),
        (nn.Sequential(MyLinear(3, 3)), ["'0'", "MyLinear"]),
        (nn.Sequential(nn.Sequential(nn.Linear(3, 3), nn.Mish())), ["'0.1'", "Mish"]),
        (ToyMLP(4, 8, act=nn.Mish), ["'net.1'", "Mish"]),
        (WithExtra(), ["outside net", "scale"]),
        (WithSubmodule(), ["outside net", "head"]),
        (NoNet(), ["NoNet", "Sequential"]),
        (nn.Linear(3, 3), ["Linear", "Sequential"]),
        (nn.Sequential(), ["no layers"]),
    ],
    ids=lambda v: v.__class__.__name__ if isinstance(v, nn.Module) else None,
)
def test_refuses_unsupported_modules_naming_them(module, names):
    with pytest.raises(UnsupportedModule) as ei:
        export(module)
    for n in names:
        assert n in str(ei.value), (n, str(ei.value))


def test_refuses_hooked_linear():
    seq = nn.Sequential(nn.Linear(3, 3))
    seq[0].register_forward_hook(lambda mod, inp, out: out * 2)
    with pytest.raises(UnsupportedModule, match="hooks"):
        export(seq)
    seq = nn.Sequential(torch.nn.utils.parametrizations.weight_norm(nn.Linear(3, 3)))
    with pytest.raises(UnsupportedModule, match="ParametrizedLinear"):
        export(seq)


def test_export_needs_a_module():
    with pytest.raises(TypeError):
        export({"layers": []})
