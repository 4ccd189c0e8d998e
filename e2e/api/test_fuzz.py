"""Malformed requests: every answer must be a 4xx application/problem+json, never a 5xx or a hang.

Cases are generated deterministically (random.Random(0)) by mutating a few valid requests for
every POST route: structural mutations of the JSON tree (wrong types, missing and unknown
fields, ragged/empty/deep/huge tensors, broken base64, wrong dtypes, unknown ops), text-level
mutations of the serialized JSON (truncation, NaN/Infinity and other invalid number tokens,
1e999, garbage bytes), non-object bodies, garbage bodies, and broken safetensors bodies.
Unparseable JSON must be 400 and valid JSON with invalid content 422 (404 for an unknown
model id).

The cases are made in fuzz_requests.py (the valid bases and the node kinds), fuzz_tree.py (tree
mutations) and fuzz_bodies.py (text, whole-body and safetensors cases, and generate_cases); requests
with one exact answer are in test_fuzz_specific.py.
"""

from __future__ import annotations

import pytest
import requests

from fuzz_bodies import ALL_ROUTES, CASES
from fuzz_requests import BASES, FUZZ_TIMEOUT
from gs_helpers import assert_problem, describe, get, post


def test_case_count():
    assert len(CASES) >= 500
    routes = {c[0] for c in CASES}
    assert routes == set(ALL_ROUTES)


@pytest.mark.parametrize("route,body", BASES, ids=[f"{r}-{i}" for i, (r, _) in enumerate(BASES)])
def test_bases_are_valid(server, route, body):
    """The unmutated requests succeed, so every mutation below is what makes a request invalid."""
    r = post(server, f"/v1/{route}", body)
    assert r.status_code in (200, 201), describe(r)


@pytest.mark.parametrize("i", range(len(CASES)), ids=[f"{i}-{c[0]}-{c[4][:60]}" for i, c in enumerate(CASES)])
def test_fuzz(server, i):
    route, data, ctype, expected, desc = CASES[i]
    try:
        r = requests.post(f"{server}/v1/{route}", data=data, headers={"Content-Type": ctype}, timeout=FUZZ_TIMEOUT)
    except requests.Timeout:
        pytest.fail(f"no answer within {FUZZ_TIMEOUT}s: {desc}; body {data[:300]!r}")
    assert r.status_code < 500, f"server error for {desc}" + describe(r)
    body = assert_problem(r)
    assert r.status_code in expected, f"{desc}: expected {sorted(expected)}, got {r.status_code}" + describe(r)
    assert isinstance(body["detail"], str) and body["detail"], describe(r)
    if r.status_code == 422:
        assert body["errors"], f"a 422 must name the field{describe(r)}"


def test_healthy_after_fuzz(server, server_process):
    assert server_process.alive(), "the server process died:\n" + server_process.log()
    r = get(server, "/healthz")
    assert r.status_code == 200
