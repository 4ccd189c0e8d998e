"""Registering once, referring by id, and re-registration after a replica lost its models."""

from __future__ import annotations

import pytest
import requests
import torch

import gradserve
from gradserve.torch import export

from conftest import assert_close, inputs, make_toy, ref_jacobian, ref_vjp


def _post_count(url: str, path: str) -> float:
    """POSTs the server has answered on `path` (from its Prometheus metrics)."""
    total = 0.0
    for line in requests.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("gradserve_http_requests_total{") and 'method="POST"' in line and f'route="{path}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_register_and_refer_by_id(client):
    m = make_toy(seed=11)
    mid = client.register(export(m), name="toy")
    assert isinstance(mid, str) and len(mid) >= 16
    assert client.register(export(m), name="again") == mid  # a content hash
    assert client.register(m) == mid  # a module is exported first
    info = client.models(mid)
    assert info.id == mid and info.input_width == 12 and info.output_width == 12 and info.inputs == ["x", "t"]
    assert info.parameter_count == sum(p.numel() for p in m.parameters())
    assert {p.name for p in info.parameters} == set(m.state_dict())
    assert mid in [s.id for s in client.models()]
    x, t = inputs(3, 12)
    v = torch.randn(3, 12, dtype=torch.float64)
    r = client.vjp(mid, x, t, v, wrt=["x", "params"])
    _, want = ref_vjp(m, x, t, v)
    assert_close(r.grads.x, want["x"], torch.float64, "grads.x by id")
    assert_close(r.grads.params["net.0.weight"], want["params"]["net.0.weight"], torch.float64, "params by id")
    client.delete(mid)
    assert mid not in [s.id for s in client.models()]
    with pytest.raises(gradserve.NotFound):
        client.forward(mid, x, t)  # deleted on purpose: not registered again


def test_reregisters_after_restart_with_fresh_data(start_server):
    s = start_server()
    m = make_toy(seed=12)
    x, t = inputs(3, 12)
    with gradserve.Client(s.url) as c:
        mid = c.register(export(m))
        s.restart(fresh_data=True)  # a replica that lost its data directory
        assert c.models() == []
        before = _post_count(s.url, "/v1/models")
        r = c.jacobian(mid, x, t)
        assert _post_count(s.url, "/v1/models") == before + 1  # registered again, once
        assert [e.id for e in c.models()] == [mid]
        assert_close(r.jacobian.x, ref_jacobian(m, x, t)[0], torch.float64, "after re-registration")
        # every operation (and the benchmark) recovers the same way
        for fn in (
            lambda: c.forward(mid, x, t),
            lambda: c.vjp(mid, x, t, x),
            lambda: c.jvp(mid, x, t, x),
            lambda: c.divergence(mid, x, t),
            lambda: c.benchmark(mid, operation="forward", batch=1, iterations=1),
        ):
            s.restart(fresh_data=True)
            fn()
            assert [e.id for e in c.models()] == [mid]


def test_an_id_registered_elsewhere_is_not_reregistered(start_server):
    s = start_server()
    m = make_toy(seed=13)
    x, t = inputs(2, 12)
    with gradserve.Client(s.url) as owner:
        mid = owner.register(export(m))
    s.restart(fresh_data=True)
    with gradserve.Client(s.url) as other:  # never registered it: cannot know the model
        with pytest.raises(gradserve.NotFound):
            other.forward(mid, x, t)


def test_a_retry_that_fails_again_raises(start_server, monkeypatch):
    """Re-registration happens once: if the id is still unknown afterwards the 404 surfaces."""
    s = start_server()
    m = make_toy(seed=14)
    x, t = inputs(2, 12)
    with gradserve.Client(s.url) as c:
        mid = c.register(export(m))
        s.restart(fresh_data=True)
        calls = []
        monkeypatch.setattr(c, "_register_on", lambda url, model, name: calls.append(url) or "f" * 64)
        with pytest.raises(gradserve.NotFound):
            c.forward(mid, x, t)
        assert calls == [s.url]


def test_inline_model_split_is_registered_once(start_server):
    s = start_server()
    m = make_toy(seed=15)
    x, t = inputs(10, 12)
    with gradserve.Client(s.url) as c:
        before = _post_count(s.url, "/v1/models")
        r = c.jacobian(export(m), x, t, batch_size=3)
        r2 = c.jacobian(export(m), x, t, batch_size=3)
        assert r.requests == r2.requests == 4
        assert _post_count(s.url, "/v1/models") == before + 1
        assert len(c.models()) == 1
        assert_close(r.jacobian.x, ref_jacobian(m, x, t)[0], torch.float64, "split inline")


def test_binary_registration_gives_the_same_id(server):
    m = make_toy(seed=16)
    with gradserve.Client(server) as a, gradserve.Client(server, transport="safetensors") as b:
        assert a.register(export(m)) == b.register(export(m))
        b.binary_threshold = 0
        assert b.register(export(m), name="binary") == a.register(m)
