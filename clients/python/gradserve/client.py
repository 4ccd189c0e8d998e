"""The HTTP client: ``Client(url).jacobian(model, x, t)`` and friends."""

from __future__ import annotations

import itertools
import json
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

import numpy as np
import requests
import urllib3

from . import errors as E
from .models import Signature, fingerprint, is_torch_module, normalize, to_json
from .result import Result, wrap
from .tensors import (
    b64_form,
    decode_json_answer,
    decode_safetensors_answer,
    is_torch_tensor,
    to_numpy,
    write_safetensors,
)

__all__ = ["Client", "DEFAULT_URL"]

DEFAULT_URL = "http://127.0.0.1:8080"
_TRANSPORTS = ("auto", "base64", "safetensors", "json")
_USER_AGENT = "gradserve-python/0.1.0"

#: Answers worth trying again: the server (or a load balancer in front of it) could not serve the request
#: now, and nothing was computed for it (502 from a proxy whose upstream died, 503 queue or memory full or
#: draining). Every other status, 4xx above all, is final: the same request would get the same answer.
RETRY_STATUSES = frozenset({502, 503})
BACKOFF_BASE = 0.2  # seconds before the first retry without a Retry-After; doubles each retry
BACKOFF_CAP = 5.0  # longest wait between two tries without a Retry-After
RETRY_AFTER_CAP = 10.0  # longest Retry-After honoured


def backoff_delay(attempt: int, retry_after: float | None = None) -> float:
    """Seconds to wait before retry number ``attempt`` (1, 2, …): the server's ``Retry-After`` when it
    sent one (at most ``RETRY_AFTER_CAP``), else exponential backoff with jitter, between half and all of
    ``min(BACKOFF_CAP, BACKOFF_BASE * 2**(attempt-1))`` (so that clients a dead replica dropped at the same
    moment do not all come back at once)."""
    if retry_after is not None and retry_after >= 0:
        return min(RETRY_AFTER_CAP, retry_after)
    d = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** max(0, attempt - 1))
    return d / 2 + random.random() * d / 2


def retryable(e: BaseException) -> bool:
    """Whether a failed exchange may be tried again (elsewhere or later): the server was not reached or
    the connection broke (``ConnectionFailed`` other than a read timeout), or it answered 502 or 503.
    Every computing route is a pure function of its request and registration is idempotent (the id is
    the content's hash), so repeating a request whose answer was lost is safe."""
    if isinstance(e, E.ConnectionFailed):
        return not e.timed_out
    return isinstance(e, E.GradserveError) and e.status in RETRY_STATUSES


def _wrt(v: str | Sequence[str] | None) -> list[str] | None:
    if v is None:
        return None
    return [v] if isinstance(v, str) else list(v)


class _Model:
    """A resolved ``model`` argument: a registered id, or an inline model (normalised)."""

    def __init__(self, id: str | None, model: dict | None, sig: Signature | None):
        self.id = id
        self.model = model
        self.sig = sig


class Client:
    """A client of one gradserve service (or of several replicas).

    ``url``: the server's base URL; default ``$GRADSERVE_URL``, then ``http://127.0.0.1:8080``. A list of
    URLs (or a comma-separated string) names replicas: split batches go to them in parallel and
    single requests take turns.

    ``api_key``: bearer token (default ``$GRADSERVE_API_KEY``). ``timeout``: seconds per request.
    ``batch_size``: default number of rows per request (``None``: one request, split only when the
    answer would exceed the server's output limit or the body its size limit). ``parallel``: requests in
    flight at once for a split batch (default: one per URL). ``transport``: ``"auto"`` (default: base64
    tensors in JSON, switching to binary safetensors bodies for large requests and answers, e.g.
    Jacobians), ``"base64"``, ``"safetensors"`` or ``"json"`` (nested lists, slow, readable).
    ``retries``: how often a request is tried again after a connection error (refused, reset, closed
    before the answer) or a 502 or 503 answer, waiting the answer's ``Retry-After`` or an exponential
    backoff with jitter (``backoff_delay``); 4xx answers and read timeouts are never retried. With several
    URLs each retry goes to the next replica at once, and waits only once every replica has failed.

    Arrays go in as numpy arrays, torch tensors or nested lists; answers come back as numpy arrays, or
    as torch tensors (on the device of the inputs) when any input was a torch tensor.
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
        binary_threshold: int = 64 * 1024,
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
        self._tls = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._turn = itertools.count()
        # registered models: id -> (normalised model, name), for re-registration after a 404
        self._known: dict[str, tuple[dict, str | None]] = {}
        self._ids: dict[str, str] = {}  # fingerprint -> id
        self._signatures: dict[str, Signature] = {}  # id -> sizes
        self._limits: dict[str, tuple[int | None, int | None]] = {}  # url -> (max output elements, max body bytes)

    # --------------------------------------------------------------------------------------------
    # plumbing
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

    def close(self) -> None:
        """Closes the pooled connections and the worker threads."""
        with self._lock:
            pool, self._pool = self._pool, None
            sessions, self._sessions = self._sessions, []
        if pool is not None:
            pool.shutdown(wait=True)
        for s in sessions:
            s.close()
        self._tls = threading.local()

    def _session(self) -> requests.Session:
        s = getattr(self._tls, "session", None)
        if s is None:
            s = requests.Session()
            adapter = requests.adapters.HTTPAdapter(pool_connections=max(4, len(self.urls)), pool_maxsize=max(4, self.parallel))
            s.mount("http://", adapter)
            s.mount("https://", adapter)
            s.headers["User-Agent"] = _USER_AGENT
            s.headers["Accept"] = "application/json, application/octet-stream, application/problem+json"
            if self.api_key:
                s.headers["Authorization"] = f"Bearer {self.api_key}"
            self._tls.session = s
            with self._lock:
                self._sessions.append(s)
        return s

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=max(1, self.parallel), thread_name_prefix="gradserve")
            return self._pool

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        data: bytes | None = None,
        content_type: str | None = None,
        url: str | None = None,
        timeout: float | None = None,
        retries: int | None = None,
    ) -> requests.Response:
        """One HTTP request to ``url`` (default: the first server). Connection errors, 502 and 503 are tried
        again up to ``retries`` times (default: the client's), after the answer's ``Retry-After`` or an
        exponential backoff (``backoff_delay``); raises :class:`GradserveError` (with the problem details)
        for any non-2xx answer and :class:`ConnectionFailed` when the server stays unreachable."""
        retries = self.retries if retries is None else retries
        attempt = 0
        while True:
            try:
                return self._exchange(method, path, json_body, data, content_type, url, timeout)
            except E.GradserveError as err:
                if attempt >= retries or not retryable(err):
                    raise
                attempt += 1
                time.sleep(backoff_delay(attempt, err.retry_after))

    def _exchange(
        self,
        method: str,
        path: str,
        json_body: Any,
        data: bytes | None,
        content_type: str | None,
        url: str | None,
        timeout: float | None,
    ) -> requests.Response:
        """One try: the answer when it is 2xx, else the exception for it."""
        base = (url or self.urls[0]).rstrip("/")
        full = base + path
        headers = {}
        if json_body is not None:
            data = json.dumps(json_body, allow_nan=False).encode()
            content_type = content_type or "application/json"
        if content_type:
            headers["Content-Type"] = content_type
        try:
            r = self._session().request(method, full, data=data, headers=headers, timeout=timeout or self.timeout, stream=True)
            # One read of the whole body: requests' own 10 KiB chunks cost ~2x on a 7 MB Jacobian.
            try:
                r._content = r.raw.read(decode_content=True)
                r._content_consumed = True
            finally:
                r.close()
        except requests.ConnectionError as e:  # refused, reset, closed early, or no connection in time
            raise E.ConnectionFailed(None, "Connection failed", f"cannot reach {base}: {e}", method=method, url=full) from e
        except requests.Timeout as e:  # the answer did not come in time: the server may still be computing it
            raise E.ConnectionFailed(
                None, "Timed out", f"no answer within {timeout or self.timeout} s: {e}", method=method, url=full, timed_out=True
            ) from e
        except urllib3.exceptions.ReadTimeoutError as e:  # while reading the body (r.raw.read)
            raise E.ConnectionFailed(
                None, "Timed out", f"no answer within {timeout or self.timeout} s: {e}", method=method, url=full, timed_out=True
            ) from e
        except (urllib3.exceptions.HTTPError, requests.exceptions.ChunkedEncodingError) as e:  # body cut off
            raise E.ConnectionFailed(None, "Connection failed", f"answer cut off by {base}: {e}", method=method, url=full) from e
        if r.status_code < 400:
            return r
        raise E.from_response(r.status_code, r.reason, r.headers.get("Content-Type", ""), r.text, r.headers, method, full)

    def _get_json(self, path: str, url: str | None = None, retries: int | None = None) -> Any:
        return self.request("GET", path, url=url, retries=retries).json()

    def _each_url(self, fn: Callable[[str], Any]) -> list[Any]:
        if len(self.urls) == 1:
            return [fn(self.urls[0])]
        return list(self._executor().map(fn, self.urls))

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

    def register(self, model: Any, name: str | None = None) -> str:
        """Registers a model (model-format dict or torch module) on every server and returns its id
        (a content hash: the same model always gets the same id). The client remembers the model, so
        when a server later answers 404 for this id (a restarted replica with a fresh data directory)
        it registers it again there and retries once. A replica that cannot be reached now (or answers
        502/503 after the retries) is skipped when another one registered the model: the re-registration
        on 404 covers it once it is back; only when no server took the model is the error raised."""
        m = self._inline(model)
        fp = fingerprint(m)

        def on(u: str) -> str | E.GradserveError:
            try:
                return self._register_on(u, m, name)
            except E.GradserveError as e:
                if len(self.urls) > 1 and retryable(e):
                    return e
                raise

        outcomes = self._each_url(on)
        ids = [o for o in outcomes if isinstance(o, str)]
        if not ids:
            raise outcomes[0]
        mid = ids[0]
        with self._lock:
            self._ids[fp] = mid
        return mid

    def _register_on(self, url: str, model: dict, name: str | None) -> str:
        sig = Signature.of_model(model)
        if sig.weight_bytes > 16 * self.binary_threshold or self.transport == "safetensors":
            jmodel, binw = to_json(model, binary=True)
            meta = {"model": json.dumps(jmodel)}
            if name is not None:
                meta["name"] = name
            r = self.request(
                "POST", "/v1/models", data=write_safetensors(binw, meta), content_type="application/octet-stream", url=url
            )
        else:
            body: dict[str, Any] = {"model": to_json(model)[0]}
            if name is not None:
                body["name"] = name
            r = self.request("POST", "/v1/models", json_body=body, url=url)
        summary = r.json()
        mid = summary["id"]
        with self._lock:
            self._known[mid] = (model, name)
            self._signatures[mid] = Signature.of_summary(summary)
        return mid

    def delete(self, model_id: str) -> None:
        """Deletes a registered model from every server (``NotFound`` if none had it); the client
        forgets it, so it is not registered again."""
        with self._lock:
            self._known.pop(model_id, None)
            for fp in [fp for fp, i in self._ids.items() if i == model_id]:
                del self._ids[fp]

        def one(u: str):
            try:
                self.request("DELETE", f"/v1/models/{model_id}", url=u)
                return None
            except E.NotFound as e:
                return e

        outcomes = self._each_url(one)
        if all(o is not None for o in outcomes):
            raise outcomes[0]

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

    def _inline(self, model: Any) -> dict:
        if is_torch_module(model):
            from .torch import export

            return normalize(export(model))
        return normalize(model)

    def _resolve(self, model: Any) -> _Model:
        if isinstance(model, str):
            return _Model(model, None, None)
        m = self._inline(model)
        return _Model(None, m, Signature.of_model(m))

    def _signature(self, m: _Model) -> Signature | None:
        if m.sig is not None:
            return m.sig
        with self._lock:
            sig = self._signatures.get(m.id)
        if sig is None:
            try:
                sig = Signature.of_summary(self._get_json(f"/v1/models/{m.id}"))
            except E.GradserveError:
                return None  # the request itself will say what is wrong
            with self._lock:
                self._signatures[m.id] = sig
        return sig

    def _server_limits(self) -> tuple[int | None, int | None]:
        out: list[int | None] = [None, None]
        for u in self.urls:
            with self._lock:
                lim = self._limits.get(u)
            if lim is None:
                try:
                    limits = self._get_json("/v1/info", u, retries=0).get("limits", {})
                    lim = (limits.get("max_output_elements"), limits.get("max_body_bytes"))
                except E.ConnectionFailed:
                    lim = (None, None)  # not cached: the server may come up later
                except E.GradserveError:
                    lim = (None, None)
                    with self._lock:
                        self._limits[u] = lim
                else:
                    with self._lock:
                        self._limits[u] = lim
            for i in range(2):
                if lim[i] is not None:
                    out[i] = lim[i] if out[i] is None else min(out[i], lim[i])
        return out[0], out[1]

    def _with_reregistration(self, url: str, m: _Model, send: Callable[[str | None], Any]) -> Any:
        """``send(id)`` (``send(None)`` for an inline model); on a 404 for an id this client registered,
        registers the model on ``url`` again and retries once."""
        if m.id is None:
            return send(None)
        try:
            return send(m.id)
        except E.NotFound as e:
            with self._lock:
                known = self._known.get(m.id)
            if known is None or not any(f.path == "model" for f in e.errors):
                raise
            new_id = self._register_on(url, known[0], known[1])
            return send(new_id)

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

    def _by_id(self, m: _Model) -> _Model:
        """An inline model used by several requests is registered once, then referred to by id."""
        if m.id is not None:
            return m
        fp = fingerprint(m.model)
        with self._lock:
            mid = self._ids.get(fp)
        if mid is None or mid not in self._known:
            mid = self.register(m.model)
        return _Model(mid, None, m.sig)

    # ---- transport ------------------------------------------------------------------------------

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

    def _failover(self, first: int, attempt: Callable[[str, int | None], Any]) -> Any:
        """``attempt(url, retries)`` on server ``first`` (modulo the number of servers). With one server,
        ``request`` itself retries (``retries`` None: the client's). With several, each try goes to the
        next server at once (``retries`` 0), and the client backs off only after every server failed in a
        row; a replica that died or is draining costs its requests no more than one extra exchange."""
        n = len(self.urls)
        if n == 1:
            return attempt(self.urls[0], None)
        tries = 0
        while True:
            url = self.urls[(first + tries) % n]
            try:
                return attempt(url, 0)
            except E.GradserveError as err:
                if tries >= self.retries or not retryable(err):
                    raise
                tries += 1
                if tries % n == 0:  # a whole round failed: wait before the next
                    time.sleep(backoff_delay(tries // n, err.retry_after))

    def _send(
        self,
        url: str,
        op: str,
        m: _Model,
        mid: str | None,
        tensors: dict[str, np.ndarray],
        fields: dict,
        transport: str,
        answer_bytes: int | None,
        retries: int | None = None,
    ) -> dict:
        """One HTTP exchange (``request`` retries connection errors, 502 and 503 ``retries`` times, default
        the client's): the request in the chosen encoding, the answer decoded."""
        nbytes = sum(a.nbytes for a in tensors.values())
        if mid is None and m.sig is not None:
            nbytes += m.sig.weight_bytes
        binary_in, encoding = _choose_encoding(transport, op, nbytes, answer_bytes, self.binary_threshold)
        doc: dict[str, Any] = {k: v for k, v in fields.items() if v is not None}
        doc["output_encoding"] = encoding
        body, ctype = _encode_request(doc, m, mid, tensors, binary_in, lists=transport == "json")
        r = self.request("POST", f"/v1/{op}", data=body, content_type=ctype, url=url, retries=retries)
        if r.headers.get("Content-Type", "").startswith("application/octet-stream"):
            return decode_safetensors_answer(bytearray(r.content))
        return decode_json_answer(r.json(), m.sig.dtype if m.sig is not None else None)


# ------------------------------------------------------------------------------------------------
# planning: the batch axes, the spans of rows per request, the answer's size, the encoding
# ------------------------------------------------------------------------------------------------


def _batch_axes(op: str, tensors: dict[str, np.ndarray], fields: dict) -> tuple[dict[str, int], int]:
    """The batch axis of each tensor (1 behind a leading K of batched cotangents/tangents), and K."""
    k = 1
    if op == "vjp" and fields.get("is_grads_batched"):
        k = tensors["grad_outputs"].shape[0] if tensors["grad_outputs"].ndim == 3 else 1
    if op == "jvp":
        tx, tt = tensors.get("tangents.x"), tensors.get("tangents.t")
        k = max(tx.shape[0] if tx is not None and tx.ndim == 3 else 1, tt.shape[0] if tt is not None and tt.ndim == 2 else 1)
    axes: dict[str, int] = {}
    for name, a in tensors.items():
        if name == "grad_outputs":
            axes[name] = 1 if fields.get("is_grads_batched") else 0
        elif name == "tangents.x":
            axes[name] = 1 if a.ndim == 3 else 0
        elif name == "tangents.t":
            axes[name] = 1 if a.ndim == 2 else 0
        else:
            axes[name] = 0
    return axes, k


def _answer_size(op: str, sig: Signature, d: int, k: int, fields: dict) -> tuple[int, int]:
    """Numbers in the answer: per row, and independent of the rows (as the server counts them)."""
    dp = sig.out_width(d)
    outputs = dp if fields.get("return_outputs", True) else 0
    if op == "forward":
        return dp, 0
    if op == "vjp":
        wrt = fields.get("wrt") or ["x"]
        per = outputs + (k * d if "x" in wrt else 0) + (k if "t" in wrt else 0)
        return per, (k * sig.parameter_count if "params" in wrt else 0)
    if op == "jvp":
        return outputs + k * dp, 0
    if op == "jacobian":
        wrt = fields.get("wrt") or ["x"]
        return outputs + (dp * d if "x" in wrt else 0) + (dp if "t" in wrt else 0), 0
    # divergence: the server bounds the work it does, not just the answer
    if fields.get("method") == "hutchinson":
        return int(fields.get("probes", 16)) * max(d, dp), 0
    return dp * d, 0


class _Plan:
    """How one compute call is split: its tensors with their batch axes, and ``spans``, the rows of each
    request (``[None]``: the whole call in one request)."""

    def __init__(self, op: str, tensors: dict[str, np.ndarray], fields: dict, sig: Signature | None):
        self.op, self.tensors, self.fields, self.sig = op, tensors, fields, sig
        x = tensors["inputs.x"]
        self.axes, k = _batch_axes(op, tensors, fields)
        self.b = x.shape[0] if x.ndim == 2 else None
        self.d = x.shape[1] if x.ndim == 2 else None
        self.per_row = self.const = None
        if self.b is not None and sig is not None:
            self.per_row, self.const = _answer_size(op, sig, self.d, k, fields)
        b = self.b
        self.splittable = (
            b is not None and b > 1 and all(a.ndim > self.axes[n] and a.shape[self.axes[n]] == b for n, a in tensors.items())
        )
        self.spans: list[tuple[int, int] | None] = [None]

    def split(self, want: int | None, max_out: int | None, max_body: int | None, fixed_bytes: int) -> None:
        """Rows per request: at most ``want``, and what fits ``max_out`` answer numbers and ``max_body``
        request bytes (``fixed_bytes``: the part of the body that does not grow with the rows)."""
        b = self.b
        rows = b
        if want is not None:
            rows = min(rows, int(want))
        if self.per_row and max_out is not None:
            rows = min(rows, max(1, (max_out - self.const) // self.per_row))
        if max_body is not None:
            row_bytes = sum(a.nbytes // b for a in self.tensors.values()) * 4 // 3 + 64
            rows = min(rows, max(1, (max_body - fixed_bytes) // max(1, row_bytes)))
        if rows < b:
            self.spans = [(lo, min(b, lo + rows)) for lo in range(0, b, rows)]

    def part(self, span: tuple[int, int] | None) -> dict[str, np.ndarray]:
        if span is None:
            return self.tensors
        lo, hi = span
        return {n: a[(slice(None),) * self.axes[n] + (slice(lo, hi),)] for n, a in self.tensors.items()}

    def rows(self, span: tuple[int, int] | None) -> int:
        return (span[1] - span[0]) if span else (self.b or 1)

    def answer_bytes(self, nrows: int) -> int | None:
        """The answer's size for ``nrows`` rows (None when the model's signature is unknown)."""
        if self.per_row is None:
            return None
        itemsize = self.sig.dtype.itemsize
        if self.op == "divergence":  # per_row bounds the work there; the answer is one number per row
            return nrows * (1 + (self.sig.out_width(self.d) if self.fields.get("return_outputs") else 0)) * itemsize
        return (self.per_row * nrows + self.const) * itemsize


def _choose_encoding(
    transport: str, op: str, request_bytes: int, answer_bytes: int | None, threshold: int
) -> tuple[bool, str]:
    """(whether the request goes as a safetensors body, the answer's ``output_encoding``). ``auto``:
    binary for whatever exceeds ``threshold`` bytes (an answer of unknown size: binary for a Jacobian)."""
    if transport != "auto":
        return transport == "safetensors", transport
    big_answer = answer_bytes > threshold if answer_bytes is not None else op == "jacobian"
    return request_bytes > threshold, "safetensors" if big_answer else "base64"


# ------------------------------------------------------------------------------------------------
# transport: the request body
# ------------------------------------------------------------------------------------------------


def _encode_request(
    doc: dict[str, Any], m: _Model, mid: str | None, tensors: dict[str, np.ndarray], binary: bool, lists: bool
) -> tuple[bytes, str]:
    """(body, content type): a safetensors file with the JSON fields in its ``request`` metadata (and
    an inline model's weights as tensors), or JSON with base64 (or, with ``lists``, nested-list) tensors."""
    if binary:
        arrays = dict(tensors)
        if mid is None:
            jmodel, binw = to_json(m.model, binary=True)
            doc["model"] = jmodel
            arrays.update({f"model.weights.{k}": v for k, v in binw.items()})
        else:
            doc["model"] = mid
        return write_safetensors(arrays, {"request": json.dumps(doc, allow_nan=False)}), "application/octet-stream"
    doc["model"] = mid if mid is not None else to_json(m.model, lists=lists)[0]
    for path, a in tensors.items():
        head, _, rest = path.partition(".")
        form = a.tolist() if lists else b64_form(a)
        if rest:
            doc.setdefault(head, {})[rest] = form
        else:
            doc[head] = form
    return json.dumps(doc, allow_nan=False).encode(), "application/json"


# ------------------------------------------------------------------------------------------------
# merging: the answers of a split batch reassembled
# ------------------------------------------------------------------------------------------------


def _assemble(op: str, parts: list[dict], fields: dict, axes: dict[str, int], device: Any) -> Result:
    """The call's answer: the parts merged, as torch tensors on ``device`` when the inputs were torch."""
    merged = parts[0] if len(parts) == 1 else _merge(op, parts, fields, axes)
    if op == "vjp" and "params" in (fields.get("wrt") or []):
        merged.setdefault("grads", {}).setdefault("params", {})  # a model without parameters
    result = wrap(_to_torch(merged, device) if device is not None else merged)
    result.requests = len(parts)
    return result


def _merge(op: str, parts: list[dict], fields: dict, axes: dict[str, int]) -> dict:
    """Concatenates the answers of a split batch in order (parameter gradients are summed: they are
    sums over the batch); ``timing`` is the sum over the requests."""
    k_axis = 1 if fields.get("is_grads_batched") else 0
    jvp_axis = 1 if axes.get("tangents.x", 0) == 1 or axes.get("tangents.t", 0) == 1 else 0

    def axis_of(path: tuple[str, ...]) -> int:
        if path[0] == "grads":
            return k_axis
        if path[0] == "jvp":
            return jvp_axis
        return 0

    def combine(values: list[Any], path: tuple[str, ...]) -> Any:
        v0 = values[0]
        if path == ("timing",):
            return {key: round(sum(float(v.get(key, 0)) for v in values), 3) for key in v0}
        if isinstance(v0, np.ndarray):
            if path[:2] == ("grads", "params"):
                return np.sum(values, axis=0, dtype=v0.dtype)
            return np.concatenate(values, axis=axis_of(path))
        if isinstance(v0, dict):
            return {key: combine([v[key] for v in values], path + (key,)) for key in v0}
        return v0  # mode, method: the same in every part

    return {key: combine([p[key] for p in parts], (key,)) for key in parts[0]}


def _to_torch(v: Any, device: Any) -> Any:
    import torch

    if isinstance(v, np.ndarray):
        t = torch.from_numpy(v if v.flags.writeable else v.copy())
        return t.to(device) if device is not None and device.type != "cpu" else t
    if isinstance(v, dict):
        return {k: _to_torch(x, device) for k, x in v.items()}
    return v
