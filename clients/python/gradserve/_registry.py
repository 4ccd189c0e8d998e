"""Models: registration on every server (``register``, ``delete``), the ``model`` argument of a call
resolved (an id, a model-format dict or a torch module), its signature (sizes and dtype) looked up, and
a model re-registered where a server lost it (404 for an id this client registered)."""

from __future__ import annotations

import json
from typing import Any, Callable

from . import errors as E
from ._transport import _Transport, retryable
from .models import Signature, fingerprint, is_torch_module, normalize, to_json
from .tensors import write_safetensors


class _Model:
    """A resolved ``model`` argument: a registered id, or an inline model (normalised)."""

    def __init__(self, id: str | None, model: dict | None, sig: Signature | None):
        self.id = id
        self.model = model
        self.sig = sig


class _Registry(_Transport):
    """The model side of :class:`gradserve.Client` (a base class of it), on the state ``Client.__init__``
    sets up: ``_known`` (id -> (normalised model, name), for re-registration), ``_ids`` (fingerprint ->
    id), ``_signatures`` (id -> sizes)."""

    transport: str
    _known: dict[str, tuple[dict, str | None]]
    _ids: dict[str, str]
    _signatures: dict[str, Signature]

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
