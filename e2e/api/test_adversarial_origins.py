"""Adversarial suite: cross-site requests and Host checks. A foreign Origin is refused (403, no CORS
header) on every family, --allow-origin admits one origin, --allowed-hosts answers only the hosts it lists.
"""

from __future__ import annotations

import json

import numpy as np
import requests

from adversarial_support import FORWARD, start_with_host, tiny_t_model
from gs_helpers import TIMEOUT, assert_problem, close, decode_answer, delete, describe, get, post



def test_foreign_origin_is_refused(main, tiny_id):
    evil = {"Origin": "https://evil.example"}
    for r in [
        post(main.url, "/v1/forward", FORWARD, headers=evil),
        post(main.url, "/v1/forward", json.dumps(FORWARD), headers={**evil, "Content-Type": "application/x-www-form-urlencoded"}),
        post(main.url, "/v1/forward", FORWARD, headers={"Origin": "null"}),
        post(main.url, "/v1/forward", FORWARD, headers={"Origin": main.url}),  # not listed either
        get(main.url, "/v1/models", headers=evil),
        post(main.url, "/v1/models", tiny_t_model(), headers=evil),
        delete(main.url, f"/v1/models/{tiny_id}", headers=evil),
        post(main.url, f"/tesseract/{tiny_id}/apply", {"inputs": {"x": [[0.3, -0.7]], "t": [0.5]}}, headers=evil),
        post(main.url, f"/umbridge/{tiny_id}/Evaluate", {"name": "forward", "input": [[0.3, -0.7], [0.5]]}, headers=evil),
    ]:
        assert_problem(r, 403)
        assert "Access-Control-Allow-Origin" not in r.headers, describe(r)
    # the model was not deleted by the refused DELETE, and without an Origin everything works
    assert get(main.url, f"/v1/models/{tiny_id}").status_code == 200
    ans = decode_answer(post(main.url, "/v1/forward", FORWARD), "float64", "json")
    close(ans["outputs"], np.tanh([[0.5]]), "float64", "no Origin")
    r = post(main.url, "/v1/forward", json.dumps(FORWARD), headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200, describe(r)


def test_allowed_origin(start_server):
    s = start_server(["--allow-origin", "https://nb.example"])
    r = post(s.url, "/v1/forward", FORWARD, headers={"Origin": "https://nb.example"})
    assert r.status_code == 200, describe(r)
    assert r.headers.get("Access-Control-Allow-Origin") == "https://nb.example", describe(r)
    close(r.json()["outputs"], np.tanh([[0.5]]), "float64", "allowed origin")
    r = requests.options(s.url + "/v1/forward", headers={"Origin": "https://nb.example", "Access-Control-Request-Method": "POST",
                                                         "Access-Control-Request-Headers": "content-type"}, timeout=TIMEOUT)
    assert r.status_code in (200, 204) and r.headers.get("Access-Control-Allow-Origin") == "https://nb.example", describe(r)
    assert_problem(post(s.url, "/v1/forward", FORWARD, headers={"Origin": "https://evil.example"}), 403)
    assert post(s.url, "/v1/forward", FORWARD).status_code == 200


def test_allowed_hosts(_servers, tmp_path):
    s = start_with_host(_servers, tmp_path, ["--allowed-hosts", "localhost"], "localhost:{port}")
    for host in ("evil.example", f"evil.example:{s.port}", "127.0.0.1"):
        for r in (post(s.url, "/v1/forward", FORWARD, headers={"Host": host}),
                  get(s.url, "/v1/models", headers={"Host": host})):
            assert_problem(r, 403)
    r = post(s.url, "/v1/forward", FORWARD, headers={"Host": f"localhost:{s.port}"})
    assert r.status_code == 200, describe(r)
    close(r.json()["outputs"], np.tanh([[0.5]]), "float64", "allowed host")
