"""HTTP helpers for the gradserve end-to-end tests: requests with JSON bodies, the answer shown in
assertion messages, and checks of the JSON and problem+json answers.

Servers (ServerProcess, …), RSS readers and the port reader come from the shared test-support package
(e2e/support/gradserve_testing, re-exported here). Tensor wire forms are in gs_wire, random MLPs and their
PyTorch reference in gs_reference; gs_helpers re-exports all three for the tests.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))

from gradserve_testing.rss import peak_rss_bytes, vm_rss  # noqa: E402,F401  (re-exported for the tests)
from gradserve_testing.server import (  # noqa: E402,F401
    START_TIMEOUT,
    ServerExited,
    ServerProcess,
    listening_port,
    server_binary,
    wait_healthy,
)

TIMEOUT = 120  # seconds, for ordinary requests: an upper bound for a hang, above the server's own 60 s deadline


# --------------------------------------------------------------------------------------
# HTTP helpers
# --------------------------------------------------------------------------------------

_session = requests.Session()


def post(url: str, path: str, body, *, headers: dict | None = None, timeout: float = TIMEOUT, session=None) -> requests.Response:
    """POST `body` (dict/list → JSON; bytes/str sent as is, JSON content type unless headers say otherwise)."""
    s = session or _session
    h = {"Content-Type": "application/json"}
    if headers:
        h.update(headers)
    if isinstance(body, (bytes, bytearray)):
        data = bytes(body)
    elif isinstance(body, str):
        data = body.encode()
    else:
        data = json.dumps(body, allow_nan=False).encode()
    return s.post(url + path, data=data, headers=h, timeout=timeout)


def get(url: str, path: str, *, headers: dict | None = None, timeout: float = TIMEOUT, session=None) -> requests.Response:
    return (session or _session).get(url + path, headers=headers or {}, timeout=timeout)


def delete(url: str, path: str, *, headers: dict | None = None, timeout: float = TIMEOUT, session=None) -> requests.Response:
    return (session or _session).delete(url + path, headers=headers or {}, timeout=timeout)


def describe(r: requests.Response) -> str:
    """The request and answer, for assertion messages."""
    req = r.request
    body = req.body
    if isinstance(body, str):
        body = body.encode()
    elif not isinstance(body, (bytes, bytearray)):
        body = repr(body).encode() if body is not None else b""
    shown = body[:600] + (b"..." if len(body) > 600 else b"")
    return (
        f"\nREQUEST: {req.method} {req.url} ({len(body)} bytes)\n  headers: {dict(req.headers)}\n  body: {shown!r}"
        f"\nRESPONSE: {r.status_code} {dict(r.headers)}\n  body: {r.content[:1500]!r}"
    )


def ok_json(r: requests.Response) -> dict:
    assert r.status_code == 200, describe(r)
    assert r.headers.get("Content-Type", "").startswith("application/json"), describe(r)
    return r.json()


def assert_problem(r: requests.Response, status=None) -> dict:
    """The answer is an application/problem+json error with the RFC 9457 fields."""
    if status is not None:
        assert r.status_code == status, describe(r)
    assert 400 <= r.status_code < 500, describe(r)
    assert r.headers.get("Content-Type", "").split(";")[0].strip() == "application/problem+json", describe(r)
    body = r.json()
    for key in ("type", "title", "status", "detail", "errors"):
        assert key in body, f"problem lacks {key}" + describe(r)
    assert body["status"] == r.status_code, describe(r)
    assert isinstance(body["errors"], list), describe(r)
    for e in body["errors"]:
        assert isinstance(e, dict) and "path" in e and "message" in e, describe(r)
    return body


def error_paths(body: dict) -> list[str]:
    return [e["path"] for e in body.get("errors", [])]
