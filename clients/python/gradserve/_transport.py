"""Transport: the HTTP side of the client. One exchange (``_Transport._exchange``: urllib3's connection
pool, the body read in one go, transport failures turned into ``ConnectionFailed`` and non-2xx answers
into ``GradserveError``), the retry policy (``RETRY_STATUSES``, ``backoff_delay``,
``retryable``) and its two loops: ``_Transport.request`` retries one server, ``_Transport._failover``
moves across replicas; and a compute request encoded (``_encode_request``) and its answer decoded
(``_Transport._send``)."""

from __future__ import annotations

import http.client
import json
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import requests
import urllib3

from . import errors as E
from ._planning import _choose_encoding
from .models import to_json
from .tensors import b64_form, decode_json_answer, decode_safetensors_answer, write_safetensors

if TYPE_CHECKING:
    from ._registry import _Model

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


class _Transport:
    """The HTTP plumbing of :class:`gradserve.Client` (a base class of it): sessions, worker threads,
    exchanges and retries. It works on the state ``Client.__init__`` sets up."""

    urls: list[str]
    api_key: str | None
    timeout: float
    parallel: int
    retries: int
    binary_threshold: int
    _managers: dict[str, urllib3.PoolManager]
    _lock: threading.Lock
    _pool: ThreadPoolExecutor | None
    _limits: dict[str, tuple[int | None, int | None]]

    def close(self) -> None:
        """Closes the pooled connections and the worker threads."""
        with self._lock:
            pool, self._pool = self._pool, None
            managers, self._managers = self._managers, {}
        if pool is not None:
            pool.shutdown(wait=True)
        for m in {id(v): v for v in managers.values()}.values():  # one manager may serve several servers
            m.clear()

    def _manager(self, base: str) -> urllib3.PoolManager:
        """The connection pool for server ``base``, shared by every thread. The environment is read once
        per server, as ``requests`` would read it on every call: a proxy from ``HTTP(S)_PROXY`` unless
        ``NO_PROXY`` exempts the host, and for https the CA bundle from ``REQUESTS_CA_BUNDLE`` or
        ``CURL_CA_BUNDLE``, else certifi's. Reading it per call cost ~0.3 ms of CPU per request
        (``requests`` walks ``os.environ`` and stats ``~/.netrc`` each time); ``requests``' session
        machinery another ~0.4 ms, which is why the exchange uses urllib3 directly."""
        with self._lock:
            m = self._managers.get(base)
            if m is not None:
                return m
            proxy = requests.utils.select_proxy(base, requests.utils.get_environ_proxies(base))
            key = f"proxy {proxy}" if proxy else "direct"
            m = self._managers.get(key)
            if m is None:
                ca = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or requests.certs.where()
                headers = {
                    "User-Agent": _USER_AGENT,
                    "Accept": "application/json, application/octet-stream, application/problem+json",
                    "Accept-Encoding": "gzip, deflate",
                }
                if self.api_key:
                    headers["Authorization"] = f"Bearer {self.api_key}"
                kw = dict(num_pools=max(4, len(self.urls)), maxsize=max(4, self.parallel), headers=headers, cert_reqs="CERT_REQUIRED", ca_certs=ca)
                m = urllib3.ProxyManager(proxy, **kw) if proxy else urllib3.PoolManager(**kw)
                self._managers[key] = m
            self._managers[base] = m
            return m

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
    ) -> _Reply:
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
    ) -> _Reply:
        """One try: the answer when it is 2xx, else the exception for it."""
        base = (url or self.urls[0]).rstrip("/")
        full = base + path
        headers = {}
        if json_body is not None:
            data = json.dumps(json_body, allow_nan=False).encode()
            content_type = content_type or "application/json"
        if content_type:
            headers["Content-Type"] = content_type
        limit = timeout or self.timeout
        sent = False
        try:
            manager = self._manager(base)
            raw = manager.request(
                method, full, body=data, headers={**manager.headers, **headers}, timeout=urllib3.Timeout(connect=limit, read=limit),
                retries=False, redirect=False, preload_content=False)
            sent = True
            read = False
            try:
                r = _Reply(raw.status, raw.reason or "", raw.headers, _read_body(raw))
                read = True
            finally:
                if not read:
                    raw.close()  # a connection left mid-body is not reused
                raw.release_conn()
        except (urllib3.exceptions.ReadTimeoutError, TimeoutError) as e:
            # the answer did not come in time (while waiting for its head, or while reading its body); the
            # server may still be computing it
            raise E.ConnectionFailed(None, "Timed out", f"no answer within {limit} s: {e}", method=method, url=full, timed_out=True) from e
        except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as e:
            # Not reached: no connection (refused, no such host, connect timeout, proxy, TLS), or reset or
            # closed before an answer began (a replica going away, a stale pooled connection). Otherwise the
            # answer was cut off.
            unreached = isinstance(e, _UNREACHED) or (isinstance(e, urllib3.exceptions.ProtocolError) and not sent)
            what = f"cannot reach {base}" if unreached else f"answer cut off by {base}"
            raise E.ConnectionFailed(None, "Connection failed", f"{what}: {e}", method=method, url=full) from e
        if r.status_code < 400:
            return r
        raise E.from_response(r.status_code, r.reason, r.headers.get("Content-Type", ""), r.text, r.headers, method, full)

    def _get_json(self, path: str, url: str | None = None, retries: int | None = None) -> Any:
        return self.request("GET", path, url=url, retries=retries).json()

    def _each_url(self, fn: Callable[[str], Any]) -> list[Any]:
        if len(self.urls) == 1:
            return [fn(self.urls[0])]
        return list(self._executor().map(fn, self.urls))

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

    def _server_limits(self) -> tuple[int | None, int | None]:
        """The smallest ``max_output_elements`` and ``max_body_bytes`` over the servers (``GET /v1/info``,
        cached per URL; one that cannot be reached now is asked again next time)."""
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
            content = r.content
            # _read_body gives a bytearray: the arrays are views of it, writable, no copy
            return decode_safetensors_answer(content if isinstance(content, bytearray) else bytearray(content))
        return decode_json_answer(r.json(), m.sig.dtype if m.sig is not None else None)


#: Transport failures before the request reached a server (see ``_Transport._exchange``).
_UNREACHED = (
    urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError, urllib3.exceptions.ProxyError, urllib3.exceptions.SSLError
)


class _Reply:
    """One answer, read whole: what ``requests.Response`` offered the client, without its per-call cost."""

    __slots__ = ("status_code", "reason", "headers", "content")

    def __init__(self, status: int, reason: str, headers: Any, content: bytes | bytearray) -> None:
        self.status_code = status
        self.reason = reason
        self.headers = headers  # urllib3's HTTPHeaderDict: case-insensitive
        self.content = content

    @property
    def text(self) -> str:
        return bytes(self.content).decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


def _read_body(raw: urllib3.HTTPResponse) -> bytes | bytearray:
    """The whole answer body in one read. With a ``Content-Length`` (and no content coding), straight into
    one ``bytearray`` of that size through the standard library's ``readinto`` (no intermediate copy, so a
    safetensors answer's arrays are views of it). Otherwise (chunked, compressed) urllib3's own single read.
    Either way far faster than ``requests``' 10 KiB chunks (~2x on a 7 MB Jacobian)."""
    fp = getattr(raw, "_fp", None)
    n = raw.length_remaining
    if not n or raw.headers.get("Content-Encoding") or not isinstance(fp, http.client.HTTPResponse) or fp.chunked:
        return raw.read(decode_content=True)
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = fp.readinto(view[got:])  # raises IncompleteRead when the connection ends early
        if not k:
            raise http.client.IncompleteRead(bytes(), n - got)
        got += k
    return buf


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
