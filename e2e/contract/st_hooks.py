"""Schemathesis hooks for the gradserve contract run (loaded through SCHEMATHESIS_HOOKS).

- A deserializer for `application/octet-stream` answers (`"output_encoding": "safetensors"`): the
  body must be a well-formed safetensors file holding exactly the tensors the JSON answer of the
  same operation would hold, named by their JSON path, with the other fields in `__metadata__`.
  It returns the body as text so that the OpenAPI schema (`type: string, format: binary`) applies.
  This decoder is deliberately independent of the client's (gradserve.read_safetensors): it checks the
  server's answers against the documented layout (header length, header keys, dtypes, shapes, data
  offsets), as a second implementation that shares none of the client's assumptions.
- A deserializer for `application/json+base64` answers (the Tesseract adapter's base64 format, chosen by
  `Accept`): the body is JSON, so the OpenAPI schema of that media type applies to it.
- `before_call`: every other POST to a Tesseract compute endpoint asks for `application/json+base64`
  (schemathesis sends no `Accept`, which means JSON), so both documented answer formats are checked.
- `operations_reach_success`: fails the run when an operation never answered 2xx, so a spec whose
  examples stopped reaching the compute paths is noticed instead of passing on 422s alone. The
  adapter operations (`/tesseract/{id}/…`, `/umbridge/{id}/…`) reach 2xx only for a registered id:
  run_contract.sh registers the `tiny-t` example of `POST /v1/models` before the run and checks that
  its id is the documented example id (ids are content addresses), so the examples hit a real model.
"""

from __future__ import annotations

import itertools
import json
import re
import struct

import schemathesis

# Tensor names each operation may answer (prefix match for `grads.params.<name>`), the names it
# must answer (one of each group), and the `__metadata__` keys besides `timing`.
ANSWERS = {
    "/v1/forward": ({"outputs"}, [("outputs",)], set()),
    "/v1/vjp": ({"outputs", "grads.x", "grads.t", "grads.params."}, [("grads.x", "grads.t", "grads.params.")], set()),
    "/v1/jvp": ({"outputs", "jvp"}, [("jvp",)], set()),
    "/v1/jacobian": ({"outputs", "jacobian.x", "jacobian.t"}, [("jacobian.x", "jacobian.t")], {"mode"}),
    "/v1/divergence": ({"outputs", "divergence"}, [("divergence",)], {"method"}),
}
TIMING_KEYS = {"read_ms", "queue_ms", "decode_ms", "compute_ms", "encode_ms"}
DTYPE_BYTES = {"F32": 4, "F64": 8}


def _matches(name: str, pattern: str) -> bool:
    return name.startswith(pattern) and len(name) > len(pattern) if pattern.endswith(".") else name == pattern


def check_safetensors_answer(path: str, body: bytes) -> None:
    """Raises ValueError describing the first problem with a safetensors answer."""
    if len(body) < 8:
        raise ValueError(f"safetensors answer of {len(body)} bytes has no 8-byte header length")
    (n,) = struct.unpack("<Q", body[:8])
    if 8 + n > len(body):
        raise ValueError(f"header length {n} does not fit in a {len(body)}-byte answer")
    try:
        header = json.loads(body[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"safetensors header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise ValueError("safetensors header is not a JSON object")
    data_len = len(body) - 8 - n
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ValueError("__metadata__ must be an object of strings")
    spans = []
    dtypes = set()
    for name, t in header.items():
        if not isinstance(t, dict) or set(t) != {"dtype", "shape", "data_offsets"}:
            raise ValueError(f"tensor {name!r}: expected dtype, shape, data_offsets; got {t!r}")
        if t["dtype"] not in DTYPE_BYTES:
            raise ValueError(f"tensor {name!r}: dtype {t['dtype']!r} is not F32 or F64")
        dtypes.add(t["dtype"])
        shape = t["shape"]
        if not isinstance(shape, list) or not shape or not all(isinstance(d, int) and d >= 1 for d in shape):
            raise ValueError(f"tensor {name!r}: bad shape {shape!r}")
        begin, end = t["data_offsets"]
        count = 1
        for d in shape:
            count *= d
        if not (0 <= begin <= end <= data_len) or end - begin != count * DTYPE_BYTES[t["dtype"]]:
            raise ValueError(f"tensor {name!r}: data_offsets {[begin, end]} do not hold {t['dtype']} {shape} in {data_len} bytes")
        spans.append((begin, end))
    spans.sort()
    position = 0
    for begin, end in spans:
        if begin != position:
            raise ValueError(f"data section has a gap or overlap at byte {position}")
        position = end
    if position != data_len:
        raise ValueError(f"data section has {data_len - position} trailing bytes")
    if len(dtypes) > 1:
        raise ValueError(f"tensors mix dtypes {sorted(dtypes)}; answers are in the model's dtype")
    spec = ANSWERS.get(path)
    if spec is None:
        raise ValueError(f"{path} is not documented to answer safetensors")
    allowed, required, meta_keys = spec
    for name in header:
        if not any(_matches(name, p) for p in allowed):
            raise ValueError(f"tensor {name!r} is not part of the {path} answer")
    for group in required:
        if not any(_matches(name, p) for name in header for p in group):
            raise ValueError(f"the {path} answer lacks {' or '.join(group)}")
    if "timing" not in metadata:
        raise ValueError("__metadata__ lacks timing")
    timing = json.loads(metadata["timing"])
    if set(timing) != TIMING_KEYS or not all(isinstance(v, (int, float)) and v >= 0 for v in timing.values()):
        raise ValueError(f"__metadata__.timing is not {sorted(TIMING_KEYS)} in ms: {metadata['timing']!r}")
    extra = set(metadata) - {"timing"} - meta_keys
    if extra or not meta_keys <= set(metadata):
        raise ValueError(f"__metadata__ keys {sorted(metadata)}; expected timing and {sorted(meta_keys)}")
    if "mode" in metadata and metadata["mode"] not in ("reverse", "forward"):
        raise ValueError(f"__metadata__.mode {metadata['mode']!r}")
    if "method" in metadata and metadata["method"] not in ("exact", "hutchinson"):
        raise ValueError(f"__metadata__.method {metadata['method']!r}")


@schemathesis.deserializer("application/octet-stream")
def safetensors_answer(ctx, response):
    path = re.sub(r"^.*?(/v1/)", r"\1", ctx.operation.path)
    check_safetensors_answer(path, response.content)
    return response.content.decode("latin-1")


@schemathesis.deserializer("application/json+base64")
def tesseract_base64_answer(ctx, response):
    return json.loads(response.content)


TESSERACT_COMPUTE = re.compile(r"^/tesseract/\{id\}/(apply|abstract_eval|vector_jacobian_product|jacobian_vector_product|jacobian)$")
_accept_turn = itertools.count()


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    if case.operation.method.upper() == "POST" and TESSERACT_COMPUTE.match(case.operation.path) and next(_accept_turn) % 2:
        if case.headers is None:
            case.headers = {}
        case.headers.setdefault("Accept", "application/json+base64")


# Operations that must answer 2xx at least once in a run (their examples are valid requests).
MUST_SUCCEED = {
    "GET /healthz",
    "GET /readyz",
    "GET /metrics",
    "GET /openapi.yaml",
    "GET /v1/info",
    "POST /v1/forward",
    "POST /v1/vjp",
    "POST /v1/jvp",
    "POST /v1/jacobian",
    "POST /v1/divergence",
    "POST /v1/benchmark",
    "GET /v1/models",
    "POST /v1/models",
    # The adapters, on the model run_contract.sh registers (ApplyHessian always answers an error).
    "GET /tesseract/{id}/health",
    "GET /tesseract/{id}/openapi.json",
    "POST /tesseract/{id}/apply",
    "POST /tesseract/{id}/abstract_eval",
    "POST /tesseract/{id}/vector_jacobian_product",
    "POST /tesseract/{id}/jacobian_vector_product",
    "POST /tesseract/{id}/jacobian",
    "GET /umbridge/{id}/Info",
    "POST /umbridge/{id}/ModelInfo",
    "POST /umbridge/{id}/InputSizes",
    "POST /umbridge/{id}/OutputSizes",
    "POST /umbridge/{id}/Evaluate",
    "POST /umbridge/{id}/Gradient",
    "POST /umbridge/{id}/ApplyJacobian",
}


@schemathesis.check
class operations_reach_success:
    """Every operation in MUST_SUCCEED that was tested answered 2xx at least once."""

    def __init__(self):
        self.tested = set()
        self.reached = set()

    def after_response(self, ctx, response, case):
        label = f"{case.operation.method.upper()} {case.operation.path}"
        self.tested.add(label)
        if 200 <= response.status_code < 300:
            self.reached.add(label)

    def after_run(self, ctx):
        missing = sorted((self.tested & MUST_SUCCEED) - self.reached)
        if missing:
            raise AssertionError("never answered 2xx (the examples no longer reach the compute paths?): " + ", ".join(missing))
