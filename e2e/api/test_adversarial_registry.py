"""Adversarial suite: the model registry under races, kill -9 and quotas. Serialized writes, durable
acknowledgements, --max-models and --max-registry-bytes (507, also under concurrency), and a full disk.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from adversarial_support import assert_problem_5xx, b64, register
from gs_helpers import TIMEOUT, assert_problem, close, decode_answer, delete, describe, get, post



def test_registry_race_then_kill_9(start_server, tmp_path):
    """100 concurrent registrations and deletions of one model, then one final acknowledged operation,
    kill -9, restart on the same --data-dir: the model exists after restart exactly when that last
    acknowledged operation says so. Twice: ending with a registration, then with a deletion."""
    data = tmp_path / "data"
    body = {"name": "race", "model": {"inputs": ["x"], "dtype": "float64",
                                      "layers": [{"op": "linear", "weight": [[1.0, 2.0], [3.0, 4.0]]}, {"op": "tanh"}]}}
    s = start_server(data_dir=data)
    mid = register(s.url, body)
    for final in ("register", "delete"):
        def op(i, url=s.url):
            sess = requests.Session()
            if i % 2 == 0:
                return "reg", post(url, "/v1/models", body, session=sess).status_code
            return "del", delete(url, f"/v1/models/{mid}", session=sess).status_code

        present_before = get(s.url, f"/v1/models/{mid}").status_code == 200
        with ThreadPoolExecutor(100) as ex:
            outcomes = Counter(ex.map(op, range(100)))
        assert set(outcomes) <= {("reg", 200), ("reg", 201), ("del", 204), ("del", 404)}, outcomes
        # Serialized: every 201 created the model and every 204 removed it, alternately.
        present_after = get(s.url, f"/v1/models/{mid}").status_code == 200
        assert int(present_before) + outcomes[("reg", 201)] - outcomes[("del", 204)] == int(present_after), (outcomes, present_before,
                                                                                                       present_after)
        if final == "register":
            r = post(s.url, "/v1/models", body)
            assert r.status_code in (200, 201), describe(r)
        else:
            r = delete(s.url, f"/v1/models/{mid}")
            assert r.status_code in (204, 404), describe(r)
        s.proc.send_signal(signal.SIGKILL)
        s.proc.wait(timeout=TIMEOUT)
        s = start_server(data_dir=data)
        r = get(s.url, f"/v1/models/{mid}")
        if final == "register":
            assert r.status_code == 200, f"acknowledged registration lost by kill -9: {describe(r)}\n{s.log()}"
            ans = decode_answer(post(s.url, "/v1/forward", {"model": mid, "inputs": {"x": [[0.5, -0.5]]}}), "float64", "json")
            close(ans["outputs"], np.tanh(np.array([[0.5, -0.5]]) @ np.array([[1.0, 2.0], [3.0, 4.0]]).T), "float64", "after restart")
        else:
            assert_problem(r, 404)
            assert all(e["id"] != mid for e in get(s.url, "/v1/models").json()["models"])
        assert "damaged" not in s.log().lower(), s.log()


def test_registry_quotas_507(start_server):
    s = start_server(["--max-models", "3", "--max-registry-bytes", "1M"])
    ids = [register(s.url, {"name": f"m{i}", "model": {"layers": [{"op": "linear", "weight": [[float(i), 1.0]]}]}}) for i in range(3)]
    p = assert_problem_5xx(post(s.url, "/v1/models", {"name": "m3", "model": {"layers": [{"op": "linear", "weight": [[3.0, 1.0]]}]}}), 507)
    assert "--max-models" in p["detail"], p
    # the same content again is not a new model: 200, not 507
    r = post(s.url, "/v1/models", {"name": "m0", "model": {"layers": [{"op": "linear", "weight": [[0.0, 1.0]]}]}})
    assert r.status_code == 200, describe(r)
    assert delete(s.url, f"/v1/models/{ids[0]}").status_code == 204
    big = {"name": "big", "model": {"layers": [{"op": "linear", "weight": b64(np.random.default_rng(0).normal(size=(1024, 300)))}]}}
    p = assert_problem_5xx(post(s.url, "/v1/models", big), 507)
    assert "--max-registry-bytes" in p["detail"], p
    assert len(get(s.url, "/v1/models").json()["models"]) == 2
    # Quotas hold under concurrency: 40 distinct models at once into a registry with room for one more.
    def reg(i, url=s.url):
        return post(url, "/v1/models", {"name": f"c{i}", "model": {"layers": [{"op": "linear", "weight": [[i + 10.0, 1.0]]}]}},
                    session=requests.Session()).status_code
    with ThreadPoolExecutor(40) as ex:
        got = Counter(ex.map(reg, range(40)))
    assert got == Counter({201: 1, 507: 39}), got
    assert len(get(s.url, "/v1/models").json()["models"]) == 3


def test_disk_full_is_507_and_leaves_no_partial_file(start_server, tmp_path):
    """A registry on a full disk answers 507 problem+json; no partial or temp file stays behind, and what
    was acknowledged before loads again after a restart. Needs a small tmpfs (root); skipped without."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        s = start_server(["--data-dir", str(disk / "data")])
        rng = np.random.default_rng(7)
        acknowledged, refused = [], None
        for i in range(40):  # each model file is ~44 KB of base64: the 256 KiB disk fills within a few
            r = post(s.url, "/v1/models", {"name": f"d{i}", "model": {"layers": [{"op": "linear", "weight": b64(rng.normal(size=(32, 256)))}]}})
            if r.status_code == 201:
                acknowledged.append(r.json()["id"])
                continue
            refused = assert_problem_5xx(r, 507)
            break
        assert refused is not None, "the 256 KiB disk never filled"
        assert acknowledged, "not even one model fitted"
        assert "full" in refused["detail"], refused
        files = sorted(p.name for p in (disk / "data" / "models").iterdir())
        assert files == sorted(f"{i}.json" for i in acknowledged), files  # no partial file, no temp file
        s.stop()
        s.start()
        assert sorted(m["id"] for m in get(s.url, "/v1/models").json()["models"]) == sorted(acknowledged)
        s.stop()
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
