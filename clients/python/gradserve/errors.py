"""Exceptions carrying the server's problem details (RFC 9457 ``application/problem+json``)."""

from __future__ import annotations

import json
from typing import Any, NamedTuple


class FieldError(NamedTuple):
    """One entry of a problem's ``errors``: the request field (in the request's own names) and what is wrong."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class GradserveError(Exception):
    """An error answer of the service, or a failure to reach it.

    Attributes mirror the problem document: ``status`` (HTTP status, ``None`` when the server was
    not reached), ``title``, ``detail``, ``type``, ``errors`` (a list of :class:`FieldError`), plus
    ``retry_after`` (seconds, from a 503's ``Retry-After``), ``method`` and ``url`` of the request and
    ``body`` (the raw answer text, shortened).
    """

    def __init__(
        self,
        status: int | None,
        title: str,
        detail: str = "",
        errors: list[FieldError] | None = None,
        *,
        type: str | None = None,
        retry_after: float | None = None,
        method: str | None = None,
        url: str | None = None,
        body: str | None = None,
    ):
        self.status = status
        self.title = title
        self.detail = detail
        self.errors = list(errors or [])
        self.type = type
        self.retry_after = retry_after
        self.method = method
        self.url = url
        self.body = body
        super().__init__(self._message())

    def _message(self) -> str:
        head = f"{self.status} {self.title}" if self.status is not None else self.title
        msg = f"{head}: {self.detail}" if self.detail else head
        fields = [str(e) for e in self.errors]
        # The detail usually repeats a single field error; list them when it does not.
        if fields and not (len(fields) == 1 and fields[0] in (self.detail or "")):
            msg += "".join(f"\n  - {f}" for f in fields)
        if self.method and self.url:
            msg += f"\n  ({self.method} {self.url})"
        return msg

    _STATE = ("type", "retry_after", "method", "url", "body")

    def __reduce__(self):  # picklable (worker processes), keyword attributes included
        state = {k: getattr(self, k) for k in self._STATE}
        return (_rebuild, (self.__class__, self.status, self.title, self.detail, self.errors, state))

    @property
    def fields(self) -> dict[str, str]:
        """``{path: message}`` of the per-field errors."""
        return {e.path: e.message for e in self.errors}


def _rebuild(cls, status, title, detail, errors, state):
    return cls(status, title, detail, errors, **state)


class BadRequest(GradserveError, ValueError):
    """400: the body is not parseable (malformed JSON or safetensors)."""


class Unauthorized(GradserveError):
    """401: missing or wrong API key (``Client(api_key=...)`` or ``GRADSERVE_API_KEY``)."""


class NotFound(GradserveError, LookupError):
    """404: unknown model id (or route)."""


class PayloadTooLarge(GradserveError, ValueError):
    """413: the request body is above the server's ``--max-body-bytes``; pass ``batch_size=`` to split."""


class InvalidRequest(GradserveError, ValueError):
    """422: valid syntax, invalid content; ``errors`` names each field."""


class ServerBusy(GradserveError):
    """503: the server's queue is full (``retry_after`` seconds); the client retries a few times first."""


class DeadlineExceeded(GradserveError, TimeoutError):
    """504: the computation did not finish within the server's ``--deadline``."""


class ServerError(GradserveError):
    """Any other 5xx: a fault of the service; please report it with ``body``."""


class ConnectionFailed(GradserveError, ConnectionError):
    """The server could not be reached (refused, reset, closed before the whole answer came, timed out on
    our side). ``timed_out``: no answer within the client's timeout (the only kind the client does not
    retry: the server may still be computing)."""

    _STATE = GradserveError._STATE + ("timed_out",)

    def __init__(self, *args: Any, timed_out: bool = False, **kwargs: Any):
        self.timed_out = timed_out
        super().__init__(*args, **kwargs)


_BY_STATUS: dict[int, type[GradserveError]] = {
    400: BadRequest,
    401: Unauthorized,
    404: NotFound,
    413: PayloadTooLarge,
    422: InvalidRequest,
    503: ServerBusy,
    504: DeadlineExceeded,
}


def error_class(status: int) -> type[GradserveError]:
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return ServerError if status >= 500 else GradserveError


def from_response(status: int, reason: str, content_type: str, text: str, headers: Any, method: str, url: str) -> GradserveError:
    """Builds the exception for a non-2xx answer (a problem document, or anything else a proxy may send)."""
    problem: dict[str, Any] = {}
    if "json" in (content_type or ""):
        try:
            parsed = json.loads(text)
            if isinstance(parsed, dict):
                problem = parsed
        except ValueError:
            pass
    errors = []
    for e in problem.get("errors") or []:
        if isinstance(e, dict):
            errors.append(FieldError(str(e.get("path", "")), str(e.get("message", ""))))
    retry_after = None
    ra = headers.get("Retry-After") if headers is not None else None
    if ra is not None:
        try:
            retry_after = float(ra)
        except ValueError:
            retry_after = None
    title = str(problem.get("title") or reason or "HTTP error")
    detail = str(problem.get("detail") or ("" if problem else text[:500]))
    cls = error_class(status)
    return cls(
        status,
        title,
        detail,
        errors,
        type=problem.get("type"),
        retry_after=retry_after,
        method=method,
        url=url,
        body=text[:4000],
    )
