"""Answer fields: timing and Server-Timing everywhere, return_outputs."""

from __future__ import annotations

import numpy as np

from gs_helpers import (
    close,
    decode_answer,
    post,
    ref_forward,
)

from e2e_cases import (
    ENCODINGS,
    make_model,
    make_inputs,
    check_timing,
)


def test_timing_and_server_timing_everywhere(server):
    rng = np.random.default_rng(8)
    m = make_model(rng, {"op": "relu"}, "float32", False, d=3, d_out=3)
    x, _ = make_inputs(rng, m, b=2)
    bodies = {
        "forward": {}, "vjp": {"grad_outputs": np.ones((2, 3)).tolist()}, "jvp": {"tangents": {"x": x.tolist()}},
        "jacobian": {}, "divergence": {},
    }
    for op, extra in bodies.items():
        for enc in ENCODINGS:
            body = {"model": m.to_json(), "inputs": {"x": x.tolist()}, **extra, "output_encoding": enc}
            r = post(server, f"/v1/{op}", body)
            check_timing(decode_answer(r, "float32", enc), r)


def test_return_outputs(server):
    rng = np.random.default_rng(9)
    m = make_model(rng, {"op": "tanh"}, "float64", True, d=3, d_out=3)
    x, t = make_inputs(rng, m, b=2)
    base = {"model": m.to_json(), "inputs": {"x": x.tolist(), "t": t.tolist()}}
    extras = {"vjp": {"grad_outputs": np.ones((2, 3)).tolist()}, "jvp": {"tangents": {"x": x.tolist()}}, "jacobian": {}}
    y = ref_forward(m, x, t)
    for op, extra in extras.items():
        for enc in ENCODINGS:
            ans = decode_answer(post(server, f"/v1/{op}", {**base, **extra, "return_outputs": False, "output_encoding": enc}),
                                "float64", enc)
            assert "outputs" not in ans, f"{op}/{enc}: outputs present although return_outputs is false"
            ans = decode_answer(post(server, f"/v1/{op}", {**base, **extra, "return_outputs": True, "output_encoding": enc}),
                                "float64", enc)
            close(ans["outputs"], y, "float64", f"{op} outputs")
    ans = decode_answer(post(server, "/v1/divergence", {**base, "return_outputs": False}), "float64", "json")
    assert "outputs" not in ans and ans["divergence"].shape == (2,)
    ans = decode_answer(post(server, "/v1/divergence", {**base, "return_outputs": True}), "float64", "json")
    if "outputs" in ans:
        close(ans["outputs"], y, "float64", "divergence outputs")
    # forward: outputs are the answer itself
    ans = decode_answer(post(server, "/v1/forward", {**base, "return_outputs": False}), "float64", "json")
    assert "timing" in ans
