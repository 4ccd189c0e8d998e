"""Forward passes against PyTorch: every activation, x / x+t, float32 / float64."""

from __future__ import annotations

import numpy as np
import pytest

from gs_helpers import (
    close,
    ref_forward,
)

from e2e_cases import (
    CASES,
    CASE_IDS,
    seed_of,
    Req,
    make_model,
    make_inputs,
    run,
    pick,
)


@pytest.mark.parametrize("case", range(len(CASES)), ids=CASE_IDS)
def test_forward(server, case):
    act, dtype, has_t = CASES[case]
    rng = np.random.default_rng(seed_of("fwd", case))
    m = make_model(rng, act, dtype, has_t, d=4, d_out=3)
    x, t = make_inputs(rng, m, b=6)
    form, fdt, enc = pick(case, 0)
    rq = Req(m, form, fdt)
    ans, _ = run(server, "forward", m, rq, {"inputs": rq.inputs(x, t)}, enc)
    close(ans["outputs"], ref_forward(m, rq.seen(x), rq.seen(t)), dtype, "outputs")
