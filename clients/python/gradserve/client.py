"""The HTTP client: ``Client(url).jacobian(model, x, t)`` and friends.

``Client`` holds the public calls and the compute pipeline (``_compute``: planned, ``_run``, merged); its
parts live in private modules of the package: ``_flows`` (``sample`` and ``logprob``, the continuous
normalizing flow calls: ``_Flows``, a base class of ``Client``), ``_registry`` (registration, model resolution,
re-registration: ``_Registry``, the base class of ``Client``), ``_transport`` (HTTP exchanges, retries
and failover, request encoding: ``_Transport``, the base class of ``_Registry``), ``_planning`` (batch
splitting, answer sizes, encodings) and ``_merging`` (a split batch's answers reassembled). The retry
policy is re-exported here (``backoff_delay``, ``retryable``, ``RETRY_STATUSES``, ``BACKOFF_BASE``,
``BACKOFF_CAP``, ``RETRY_AFTER_CAP``)."""

from __future__ import annotations

import itertools
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import numpy as np
import urllib3

from . import errors as E
from ._flows import _Flows
from ._merging import _assemble
from ._planning import _Plan
from ._registry import _Model, _Registry
# the retry policy, importable from here as before
from ._transport import BACKOFF_BASE, BACKOFF_CAP, RETRY_AFTER_CAP, RETRY_STATUSES, backoff_delay, retryable  # noqa: F401
from .models import Signature, to_json
from .result import Result, wrap
from .tensors import is_torch_tensor, to_numpy

__all__ = ["Client", "DEFAULT_URL"]

DEFAULT_URL = "http://127.0.0.1:8080"
_TRANSPORTS = ("auto", "base64", "safetensors", "json")


def _wrt(v: str | Sequence[str] | None) -> list[str] | None:
    if v is None:
        return None
    return [v] if isinstance(v, str) else list(v)


class Client(_Flows, _Registry):
    """A client of one gradserve service (or of several replicas).

    ``url``: the server's base URL; default ``$GRADSERVE_URL``, then ``http://127.0.0.1:8080``. A list of
    URLs (or a comma-separated string) names replicas: split batches go to them in parallel and
    single requests take turns.

    ``api_key``: bearer token (default ``$GRADSERVE_API_KEY``). ``timeout``: seconds per request.
    ``batch_size``: default number of rows per request (``None``: one request, split only when the
    answer would exceed the server's output limit or the body its size limit). ``parallel``: requests in
    flight at once for a split batch (default: one per URL). ``transport``: ``"auto"`` (default: binary
    safetensors bodies both ways, as the server offers them for every operation; tensors of at most
    ``binary_threshold`` bytes (1 KiB) go as base64 in JSON, readable), ``"safetensors"``, ``"base64"`` or
    ``"json"`` (nested lists, slow, readable: for debugging).
    ``retries``: how often a request is tried again after a connection error (refused, reset, closed
    before the answer) or a 502 or 503 answer, waiting the answer's ``Retry-After`` or an exponential
    backoff with jitter (``backoff_delay``); 4xx answers and read timeouts are never retried. With several
    URLs each retry goes to the next replica at once, and waits only once every replica has failed.

    Arrays go in as numpy arrays, torch tensors or nested lists; answers come back as numpy arrays, or
    as torch tensors (on the device of the inputs) when any input was a torch tensor.

    Operations: ``forward``, ``vjp``, ``jvp``, ``jacobian``, ``divergence``, ``benchmark``; continuous
    normalizing flows: ``sample`` (``/v1/integrate``) and ``logprob`` (``/v1/logprob``), from ``_Flows``.
    """

    def __init__(
        self,
        url: str | Sequence[str] | None = None,
        api_key: str | None = None,
        timeout: float = 120.0,
        *,
        batch_size: int | None = None,
        parallel: int | None = None,
        transport: str = "auto",
        retries: int = 3,
        binary_threshold: int = 1024,
    ):
        if url is None:
            url = os.environ.get("GRADSERVE_URL") or DEFAULT_URL
        urls = [u.strip() for u in url.split(",")] if isinstance(url, str) else [str(u).strip() for u in url]
        urls = [u if "://" in u else "http://" + u for u in urls if u]
        if not urls:
            raise ValueError("no server URL given")
        self.urls: list[str] = [u.rstrip("/") for u in urls]
        self.api_key = api_key if api_key is not None else os.environ.get("GRADSERVE_API_KEY") or None
        self.timeout = timeout
        if transport not in _TRANSPORTS:
            raise ValueError(f"transport must be one of {_TRANSPORTS}, got {transport!r}")
        self.transport = transport
        self.batch_size = batch_size
        self.parallel = parallel if parallel is not None else len(self.urls)
        self.retries = retries
        self.binary_threshold = binary_threshold
        self._managers: dict[str, urllib3.PoolManager] = {}
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._turn = itertools.count()
        # registered models: id -> (normalised model, name), for re-registration after a 404
        self._known: dict[str, tuple[dict, str | None]] = {}
        self._ids: dict[str, str] = {}  # fingerprint -> id
        self._signatures: dict[str, Signature] = {}  # id -> sizes
        self._limits: dict[str, tuple[int | None, int | None]] = {}  # url -> (max output elements, max body bytes)

    # --------------------------------------------------------------------------------------------
    # basics (the HTTP plumbing: _transport._Transport)
    # --------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The first (or only) server URL."""
        return self.urls[0]

    def __repr__(self) -> str:
        return f"Client({self.urls[0] if len(self.urls) == 1 else self.urls!r})"

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --------------------------------------------------------------------------------------------
    # service routes
    # --------------------------------------------------------------------------------------------

    def health(self, *, ready: bool = False, wait: float = 0.0, url: str | None = None) -> Result:
        """``GET /healthz`` (or ``/readyz`` with ``ready=True``) of one server. ``wait`` seconds: keep
        trying while the server is still starting (connection refused)."""
        deadline = time.monotonic() + wait
        while True:
            try:
                return wrap(self._get_json("/readyz" if ready else "/healthz", url, retries=0))
            except E.ConnectionFailed:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.1)

    def info(self, url: str | None = None) -> Result:
        """``GET /v1/info``: version, BLAS, threads, limits."""
        return wrap(self._get_json("/v1/info", url))

    def models(self, model_id: str | None = None, *, url: str | None = None) -> list[Result] | Result:
        """The registered models (``GET /v1/models``), or one model's signature with ``model_id``."""
        if model_id is not None:
            return wrap(self._get_json(f"/v1/models/{model_id}", url))
        return wrap(self._get_json("/v1/models", url)["models"])

    # --------------------------------------------------------------------------------------------
    # compute
    # --------------------------------------------------------------------------------------------

    def forward(
        self, model: Any, x: Any, t: Any = None, *, batch_size: int | None = None, transport: str | None = None
    ) -> Result:
        """``f(x, t)``: ``outputs`` ``[B, D']``."""
        return self._compute("forward", model, {"inputs.x": x, "inputs.t": t}, {}, batch_size, transport)

    def vjp(
        self,
        model: Any,
        x: Any,
        t: Any = None,
        grad_outputs: Any = None,
        *,
        wrt: str | Sequence[str] = ("x",),
        is_grads_batched: bool = False,
        return_outputs: bool | None = None,
        batch_size: int | None = None,
        transport: str | None = None,
    ) -> Result:
        """Vector-Jacobian product: ``torch.autograd.grad(y, [x, t, *params], grad_outputs=v)``.

        Answer: ``grads.x`` ``[B, D]`` (per sample ``vᵀJ``, shaped like x), ``grads.t`` ``[B]``,
        ``grads.params[name]`` (summed over the batch), ``outputs``. ``wrt`` ⊆ ``("x", "t", "params")``.
        With ``is_grads_batched`` grad_outputs is ``[K, B, D']`` and every gradient gets a leading K."""
        if grad_outputs is None:
            raise TypeError("vjp needs grad_outputs (the cotangent v, [B, D'] like the outputs)")
        fields: dict[str, Any] = {"wrt": _wrt(wrt)}
        if is_grads_batched:
            fields["is_grads_batched"] = True
        if return_outputs is not None:
            fields["return_outputs"] = bool(return_outputs)
        return self._compute(
            "vjp", model, {"inputs.x": x, "inputs.t": t, "grad_outputs": grad_outputs}, fields, batch_size, transport
        )

    def jvp(
        self,
        model: Any,
        x: Any,
        t: Any = None,
        tangents: Any = None,
        *,
        return_outputs: bool | None = None,
        batch_size: int | None = None,
        transport: str | None = None,
    ) -> Result:
        """Jacobian-vector product (true forward mode, as ``torch.func.jvp``): ``jvp`` ``[B, D']`` = ``J u``.

        ``tangents``: the tangent of x (``[B, D]``, or ``[K, B, D]`` for K tangents at once), a dict
        ``{"x": …, "t": …}``, or a tuple ``(u_x, u_t)``; a missing entry counts as zero."""
        if tangents is None:
            raise TypeError("jvp needs tangents (u: [B, D] like x, or {'x': …, 't': …})")
        if isinstance(tangents, dict):
            unknown = set(tangents) - {"x", "t"}
            if unknown:
                raise ValueError(f"tangents has keys x and t, not {sorted(unknown)}")
            tx, tt = tangents.get("x"), tangents.get("t")
        elif isinstance(tangents, tuple):
            if len(tangents) != 2:
                raise ValueError("tangents as a tuple is (u_x, u_t)")
            tx, tt = tangents
        else:
            tx, tt = tangents, None
        if tx is None and tt is None:
            raise ValueError("tangents: give the tangent of x, of t, or both")
        fields: dict[str, Any] = {}
        if return_outputs is not None:
            fields["return_outputs"] = bool(return_outputs)
        return self._compute(
            "jvp", model, {"inputs.x": x, "inputs.t": t, "tangents.x": tx, "tangents.t": tt}, fields, batch_size, transport
        )

    def jacobian(
        self,
        model: Any,
        x: Any,
        t: Any = None,
        *,
        wrt: str | Sequence[str] = ("x",),
        mode: str = "auto",
        return_outputs: bool | None = None,
        batch_size: int | None = None,
        transport: str | None = None,
    ) -> Result:
        """Per-sample Jacobians (``vmap(jacrev(f_single))``): ``jacobian.x`` ``[B, D', D]`` with
        ``J[b, i, j] = ∂y_i/∂x_j`` (so the VJP is ``einsum('bi,bij->bj', v, J)``), ``jacobian.t``
        ``[B, D']``, and the ``mode`` used (``auto`` picks reverse when D' ≤ D)."""
        fields: dict[str, Any] = {"wrt": _wrt(wrt), "mode": mode}
        if return_outputs is not None:
            fields["return_outputs"] = bool(return_outputs)
        return self._compute("jacobian", model, {"inputs.x": x, "inputs.t": t}, fields, batch_size, transport)

    def divergence(
        self,
        model: Any,
        x: Any,
        t: Any = None,
        *,
        method: str = "exact",
        probes: int | None = None,
        seed: int | None = None,
        return_outputs: bool = False,
        batch_size: int | None = None,
        transport: str | None = None,
    ) -> Result:
        """``divergence`` ``[B]``: the trace of ``∂y/∂x`` per sample (needs D' = D; t is not part of
        it). ``method="hutchinson"`` estimates it with ``probes`` Rademacher probes (server default 16)
        from ``seed`` (default 0). A split batch draws its probes per request, so its estimate differs
        from the unsplit one (it is just as unbiased)."""
        fields: dict[str, Any] = {"method": method}
        if probes is not None:
            fields["probes"] = int(probes)
        if seed is not None:
            fields["seed"] = int(seed)
        if return_outputs:
            fields["return_outputs"] = True
        return self._compute("divergence", model, {"inputs.x": x, "inputs.t": t}, fields, batch_size, transport)

    def benchmark(
        self,
        model: Any = None,
        *,
        operation: str | None = None,
        batch: int | None = None,
        methods: Sequence[str] | None = None,
        iterations: int | None = None,
        d: int | None = None,
        workload: str | None = None,
        in_features: int | None = None,
        out_features: int | None = None,
        url: str | None = None,
    ) -> Result:
        """A server-side timing report (``POST /v1/benchmark``): for a model, ``operation`` (default
        jacobian) with each of ``methods`` (jacobian: reverse, forward, auto, rowloop) on ``batch`` random
        rows; or ``workload="linear"`` (``nn.Linear(in_features, out_features)`` on ``[batch, in]``).
        Answer: ``machine`` (CPU, BLAS, peak GFLOP/s) and ``results`` (per method: min/median/p95 ms,
        GFLOP/s, share of peak)."""
        body: dict[str, Any] = {}
        if workload is not None:
            if model is not None:
                raise ValueError("give a model or a workload, not both")
            body["workload"] = workload
            for k, v in (("in", in_features), ("out", out_features)):
                if v is not None:
                    body[k] = int(v)
        elif model is None:
            raise TypeError("benchmark needs a model (or workload='linear')")
        for k, v in (("operation", operation), ("batch", batch), ("iterations", iterations), ("d", d)):
            if v is not None:
                body[k] = v
        if methods is not None:
            body["methods"] = _wrt(methods)
        target = url or self.urls[0]
        if model is None:
            return wrap(self.request("POST", "/v1/benchmark", json_body=body, url=target).json())
        m = self._resolve(model)

        def send(model_field: Any) -> Result:
            return wrap(self.request("POST", "/v1/benchmark", json_body={**body, "model": model_field}, url=target).json())

        return self._with_reregistration(target, m, lambda mid: send(mid) if mid else send(to_json(m.model)[0]))

    # --------------------------------------------------------------------------------------------
    # internals of the compute calls
    # --------------------------------------------------------------------------------------------

    def _compute(
        self,
        op: str,
        model: Any,
        arrays: dict[str, Any],
        fields: dict[str, Any],
        batch_size: int | None,
        transport: str | None,
    ) -> Result:
        """One compute call: planned (`_Plan`: how to split the batch), sent (`_run`: one HTTP exchange
        per span, `_send`), merged (`_assemble`: the answers reassembled)."""
        transport = transport or self.transport
        if transport not in _TRANSPORTS:
            raise ValueError(f"transport must be one of {_TRANSPORTS}, got {transport!r}")
        m = self._resolve(model)
        sig = self._signature(m)
        if arrays.get("inputs.x") is None:
            raise TypeError("x is required: the inputs, [B, D]")
        given = {k: v for k, v in arrays.items() if v is not None}
        device = next((v.device for v in given.values() if is_torch_tensor(v)), None)
        tensors = {k: to_numpy(v, sig.dtype if sig is not None else None) for k, v in given.items()}
        plan = self._plan(op, m, sig, tensors, fields, batch_size)
        if len(plan.spans) > 1:
            m = self._by_id(m)
        parts = self._run(plan, m, transport)
        return _assemble(op, parts, fields, plan.axes, device)

    # ---- planning -------------------------------------------------------------------------------

    def _plan(
        self, op: str, m: _Model, sig: Signature | None, tensors: dict[str, np.ndarray], fields: dict, batch_size: int | None
    ) -> "_Plan":
        """How many rows per request: ``batch_size`` (else the client's), and what fits the servers'
        ``max_output_elements`` and ``max_body_bytes``."""
        plan = _Plan(op, tensors, fields, sig)
        if plan.splittable:
            want = batch_size if batch_size is not None else self.batch_size
            if want is not None and int(want) < 1:
                raise ValueError("batch_size must be at least 1")
            max_out, max_body = self._server_limits()
            fixed = (sig.weight_bytes if sig is not None and m.id is None else 0) * 4 // 3 + 4096
            plan.split(want, max_out, max_body, fixed)
        return plan

    # ---- the spans sent -------------------------------------------------------------------------

    def _run(self, plan: "_Plan", m: _Model, transport: str) -> list[dict]:
        """The answers of the plan's spans, in order: one span on the next server in turn; several spread
        over the servers, in parallel with ``parallel`` > 1."""
        spans = plan.spans

        def run_span(i: int, span: tuple[int, int] | None) -> dict:
            first = i if len(spans) > 1 else next(self._turn)
            part = plan.part(span)
            answer_bytes = plan.answer_bytes(plan.rows(span))
            return self._failover(
                first,
                lambda url, retries: self._with_reregistration(
                    url, m, lambda mid: self._send(url, plan.op, m, mid, part, plan.fields, transport, answer_bytes, retries)
                ),
            )

        if len(spans) == 1:
            return [run_span(0, spans[0])]
        if self.parallel <= 1:
            return [run_span(i, c) for i, c in enumerate(spans)]
        futures = [self._executor().submit(run_span, i, c) for i, c in enumerate(spans)]
        return [f.result() for f in futures]
