"""tesseract-jax (`apply_tesseract`) on gradserve's /tesseract/{id}: jit, grad, jvp and jacrev,
compared with PyTorch. float32 models only (JAX's default dtype; float64 needs jax_enable_x64).

Models: toy32 (ToyMLP with t, x [3, 784]) and small32 (x [3, 6] → y [3, 4], no t). Both client
encodings: the default (JSON buffers) and json+base64.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import B, assert_close, need, ref_forward, ref_jacobian_tesseract, ref_jvp, ref_vjp

MODELS = ["toy32", "small32"]
ENCODINGS = ["default", "json+base64"]


@pytest.fixture(scope="module")
def jax():
    jax = need("jax")
    assert not jax.config.jax_enable_x64, "these tests expect JAX's default float32"
    return jax


@pytest.fixture(scope="module")
def jnp(jax):
    return need("jax.numpy")


@pytest.fixture(scope="module")
def apply_tesseract():
    return need("tesseract_jax").apply_tesseract


@pytest.fixture(scope="module")
def Tesseract():
    return need("tesseract_core").Tesseract


@pytest.fixture(scope="module")
def clients(Tesseract, models, server):
    return {k: Tesseract.from_url(f"{server}/tesseract/{models[k].id}", timeout=180) for k in MODELS}


def fn_of(apply_tesseract, clients, spec, encoding):
    """f(x, t) -> y through apply_tesseract (t ignored for models without t)."""
    t = clients[spec.key]
    if encoding != "default":
        t = t.with_encoding(output_format=encoding)
    if spec.has_t:
        return lambda x, tt: apply_tesseract(t, {"x": x, "t": tt})["y"]
    return lambda x, tt: apply_tesseract(t, {"x": x})["y"]


def args(jnp, spec, seed):
    inp = spec.inputs(seed=seed)
    x = jnp.asarray(inp["x"])
    tt = jnp.asarray(inp["t"]) if spec.has_t else jnp.zeros((B,), jnp.float32)
    return inp, x, tt


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("key", MODELS)
def test_apply_eager_and_jit(jax, jnp, apply_tesseract, clients, models, key, encoding):
    spec = models[key]
    f = fn_of(apply_tesseract, clients, spec, encoding)
    inp, x, tt = args(jnp, spec, 20)
    ref = ref_forward(spec, inp)
    y = f(x, tt)
    assert y.dtype == jnp.float32 and y.shape == (B, spec.d_out)
    assert_close(np.asarray(y), ref, "float32", f"{key} eager apply")
    yj = jax.jit(f)(x, tt)
    assert yj.dtype == jnp.float32 and yj.shape == (B, spec.d_out)
    assert_close(np.asarray(yj), ref, "float32", f"{key} jit apply")


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("key", MODELS)
def test_grad(jax, jnp, apply_tesseract, clients, models, key, encoding):
    """jax.grad of loss = sum(w * y) is the VJP with cotangent w: torch.autograd.grad(y, [x, t], w)."""
    spec = models[key]
    f = fn_of(apply_tesseract, clients, spec, encoding)
    inp, x, tt = args(jnp, spec, 21)
    w = spec.like_y(seed=22)
    wj = jnp.asarray(w)

    def loss(x, tt):
        return jnp.sum(wj * f(x, tt))

    ref = ref_vjp(spec, inp, w)
    argnums = (0, 1) if spec.has_t else (0,)
    for label, g in [("grad", jax.grad(loss, argnums=argnums)), ("jit(grad)", jax.jit(jax.grad(loss, argnums=argnums)))]:
        grads = g(x, tt)
        assert grads[0].dtype == jnp.float32 and grads[0].shape == x.shape
        assert_close(np.asarray(grads[0]), ref["x"], "float32", f"{key} {label} x")
        if spec.has_t:
            assert grads[1].shape == (B,)
            assert_close(np.asarray(grads[1]), ref["t"], "float32", f"{key} {label} t")


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("key", MODELS)
def test_value_and_grad_of_squared_loss(jax, jnp, apply_tesseract, clients, models, key, encoding):
    """A nonlinear loss: grad of mean(y²) = VJP with cotangent 2y/n."""
    spec = models[key]
    f = fn_of(apply_tesseract, clients, spec, encoding)
    inp, x, tt = args(jnp, spec, 23)
    value, g = jax.jit(jax.value_and_grad(lambda x: jnp.mean(f(x, tt) ** 2)))(x)
    y = ref_forward(spec, inp)
    assert abs(float(value) - float(np.mean(y**2))) <= 1e-5 * float(np.mean(y**2))
    assert_close(np.asarray(g), ref_vjp(spec, inp, 2 * y / y.size)["x"], "float32", f"{key} value_and_grad")


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("key", MODELS)
def test_jvp(jax, jnp, apply_tesseract, clients, models, key, encoding):
    spec = models[key]
    f = fn_of(apply_tesseract, clients, spec, encoding)
    inp, x, tt = args(jnp, spec, 24)
    tan = spec.inputs(seed=25)
    tx = jnp.asarray(tan["x"])
    # x only
    y, dy = jax.jvp(lambda x: f(x, tt), (x,), (tx,))
    assert_close(np.asarray(y), ref_forward(spec, inp), "float32", f"{key} jvp primal")
    assert_close(np.asarray(dy), ref_jvp(spec, inp, {"x": tan["x"]}), "float32", f"{key} jvp x")
    if spec.has_t:
        ttan = jnp.asarray(tan["t"])
        _, dy2 = jax.jit(lambda x, tt, a, b: jax.jvp(f, (x, tt), (a, b)))(x, tt, tx, ttan)
        assert_close(np.asarray(dy2), ref_jvp(spec, inp, tan), "float32", f"{key} jvp x,t")


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("key", MODELS)
def test_jacrev(jax, jnp, apply_tesseract, clients, models, key, encoding):
    """jacrev of y [B, D'] w.r.t. x [B, D] is [B, D', B, D] (block-diagonal), and [B, D', B] for t."""
    spec = models[key]
    f = fn_of(apply_tesseract, clients, spec, encoding)
    inp, x, tt = args(jnp, spec, 26)
    ref = ref_jacobian_tesseract(spec, inp)
    jx = jax.jacrev(f, argnums=0)(x, tt)
    assert jx.shape == (B, spec.d_out, B, spec.d) and jx.dtype == jnp.float32
    assert_close(np.asarray(jx), ref["x"], "float32", f"{key} jacrev x")
    if spec.has_t:
        jt = jax.jit(jax.jacrev(f, argnums=1))(x, tt)
        assert jt.shape == (B, spec.d_out, B)
        assert_close(np.asarray(jt), ref["t"], "float32", f"{key} jit(jacrev) t")
