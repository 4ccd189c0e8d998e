"""The shared helpers of the gradserve end-to-end and fuzz tests, in one import for the tests.

They live in three modules by concern, re-exported here:
- gs_http: servers (ServerProcess, … from e2e/support/gradserve_testing), RSS readers, HTTP requests and
  the checks of JSON and problem+json answers;
- gs_wire: tensor wire forms, safetensors files (this checkout's client) and decoding of any answer;
- gs_reference: random MLPs, their PyTorch reference (forward, VJP, JVP, Jacobian, divergence) and the
  norm-relative comparison `close`.
"""

from __future__ import annotations

from gs_http import (  # noqa: F401  (re-exported for the tests)
    START_TIMEOUT, TIMEOUT, ServerExited, ServerProcess, assert_problem, delete, describe, error_paths, get,
    listening_port, ok_json, peak_rss_bytes, post, server_binary, vm_rss, wait_healthy,
)
from gs_wire import (  # noqa: F401
    NP_DTYPE, ST_DTYPE, ST_NP, decode_answer, decode_tensor, read_safetensors, read_safetensors_header, sent_value,
    st_read, st_write, wire, write_safetensors,
)
from gs_reference import (  # noqa: F401
    ACTIVATIONS, MLP, TOL, act_id, close, ref_divergence, ref_forward, ref_jacobian, ref_jvp, ref_vjp, t64,
)
