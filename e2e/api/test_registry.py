"""The model registry: lifecycle, unknown ids, safetensors registration, invalid models, restarts."""

from __future__ import annotations

import json
import shutil

import numpy as np

from gs_helpers import (
    assert_problem,
    close,
    decode_answer,
    delete,
    describe,
    error_paths,
    get,
    ok_json,
    post,
    ref_forward,
    sent_value,
    st_write,
)

from e2e_cases import (
    make_model,
    make_inputs,
    register,
)


def test_registry_lifecycle(server):
    rng = np.random.default_rng(12)
    m = make_model(rng, {"op": "selu"}, "float64", True, d=3, d_out=3, named="mixed")
    x, t = make_inputs(rng, m, b=3)
    r1 = register(server, m.to_json(), "first", expect=(201,))
    s1 = r1.json()
    mid = s1["id"]
    assert isinstance(mid, str) and len(mid) >= 16
    assert r1.headers.get("Location", "").endswith(mid)
    # same content, same id, 200 on repeat (name is not part of the id; other wire forms too)
    r2 = register(server, m.to_json(), "first", expect=(200,))
    assert r2.json()["id"] == mid
    r3 = register(server, m.to_json("b64"), "another name", expect=(200,))
    assert r3.json()["id"] == mid
    r4 = register(server, m.to_json("flat"), expect=(200,))
    assert r4.json()["id"] == mid
    # different content → different id
    m2 = make_model(rng, {"op": "selu"}, "float64", True, d=3, d_out=3)
    mid2 = register(server, m2.to_json(), "second", expect=(201,)).json()["id"]
    assert mid2 != mid
    # list / get
    listed = ok_json(get(server, "/v1/models"))["models"]
    ids = [e["id"] for e in listed]
    assert mid in ids and mid2 in ids
    one = ok_json(get(server, f"/v1/models/{mid}"))
    assert one["id"] == mid and one["name"] == "first"
    assert one["dtype"] == "float64" and one["inputs"] == ["x", "t"]
    assert one["input_width"] == 3 and one["output_width"] == 3
    n_params = sum(a.size for _, a in m.param_names())
    assert one["parameter_count"] == n_params
    assert {p["name"] for p in one["parameters"]} == {n for n, _ in m.param_names()}
    assert "weights" not in json.dumps(one), "the description must not carry weights"
    # compute by id == inline
    for op, extra in [("forward", {}), ("vjp", {"grad_outputs": np.ones((3, 3)).tolist(), "wrt": ["x", "t", "params"]}),
                      ("jvp", {"tangents": {"x": x.tolist()}}), ("jacobian", {"wrt": ["x", "t"]}), ("divergence", {})]:
        body = {"inputs": {"x": x.tolist(), "t": t.tolist()}, **extra}
        by_id = ok_json(post(server, f"/v1/{op}", {**body, "model": mid}))
        inline = ok_json(post(server, f"/v1/{op}", {**body, "model": m.to_json()}))
        by_id.pop("timing")
        inline.pop("timing")
        assert by_id == inline, op
    close(ok_json(post(server, "/v1/forward", {"model": mid, "inputs": {"x": x.tolist(), "t": t.tolist()}}))["outputs"],
          ref_forward(m, x, t), "float64", "forward by id")
    # delete: 204, then 404 everywhere
    r = delete(server, f"/v1/models/{mid2}")
    assert r.status_code == 204, describe(r)
    assert_problem(get(server, f"/v1/models/{mid2}"), 404)
    assert_problem(delete(server, f"/v1/models/{mid2}"), 404)
    p = assert_problem(post(server, "/v1/forward", {"model": mid2, "inputs": {"x": x.tolist(), "t": t.tolist()}}), 404)
    assert "model" in error_paths(p)
    assert mid2 not in [e["id"] for e in ok_json(get(server, "/v1/models"))["models"]]
    # re-registering after delete is a new 201
    assert register(server, m2.to_json(), expect=(201,)).json()["id"] == mid2


def test_registry_unknown_id(server):
    for op in ["forward", "vjp", "jvp", "jacobian", "divergence"]:
        body = {"model": "0" * 64, "inputs": {"x": [[1.0, 2.0]]}, "grad_outputs": [[1.0]], "tangents": {"x": [[1.0, 0.0]]}}
        body = {k: v for k, v in body.items() if k in ("model", "inputs") or (op, k) in (("vjp", "grad_outputs"), ("jvp", "tangents"))}
        p = assert_problem(post(server, f"/v1/{op}", body), 404)
        assert p["status"] == 404
    assert_problem(get(server, "/v1/models/doesnotexist"), 404)
    assert_problem(delete(server, "/v1/models/doesnotexist"), 404)


def test_registry_safetensors_registration(server):
    rng = np.random.default_rng(13)
    m = make_model(rng, {"op": "gelu"}, "float32", False, d=3, d_out=2, named=True)
    spec = m.to_json()
    weights = spec.pop("weights")
    tensors = {name: np.asarray(dict(m.param_names())[name], dtype=np.float32) for name in weights}
    data = st_write(tensors, {"model": json.dumps(spec), "name": "from-safetensors"})
    r = post(server, "/v1/models", data, headers={"Content-Type": "application/octet-stream"})
    assert r.status_code in (200, 201), describe(r)
    mid = r.json()["id"]
    if r.status_code == 201:
        assert r.json()["name"] == "from-safetensors"
    # the same content posted as JSON has the same id
    assert register(server, m.to_json(), expect=(200,)).json()["id"] == mid
    x, _ = make_inputs(rng, m, b=2)
    ans = decode_answer(post(server, "/v1/forward", {"model": mid, "inputs": {"x": x.tolist()}}), "float32", "json")
    close(ans["outputs"], ref_forward(m, sent_value(x, "nested", "float64", "float32")), "float32", "outputs")


def test_registry_invalid(server):
    assert_problem(post(server, "/v1/models", {"name": "x"}), 422)
    assert_problem(post(server, "/v1/models", {"model": {"layers": []}}), 422)
    assert_problem(post(server, "/v1/models", {"model": {"layers": [{"op": "relu"}]}, "extra": 1}), 422)
    assert_problem(post(server, "/v1/models", {"model": {"layers": [{"op": "relu"}]}, "name": 5}), 422)
    assert_problem(post(server, "/v1/models", b"{not json", headers={"Content-Type": "application/json"}), 400)


def test_restart_keeps_models_and_skips_damaged_files(start_server, tmp_path):
    rng = np.random.default_rng(14)
    data = tmp_path / "data"
    s1 = start_server(data_dir=data)
    m1 = make_model(rng, {"op": "tanh"}, "float64", False, d=3, d_out=2)
    m2 = make_model(rng, {"op": "relu"}, "float32", True, d=2, d_out=2)
    id1 = register(s1.url, m1.to_json(), "one", expect=(201,)).json()["id"]
    id2 = register(s1.url, m2.to_json(), "two", expect=(201,)).json()["id"]
    x, _ = make_inputs(rng, m1, b=2)
    before = ok_json(post(s1.url, "/v1/forward", {"model": id1, "inputs": {"x": x.tolist()}}))["outputs"]
    assert s1.stop() is not None
    assert (data / "models" / f"{id1}.json").exists()
    # same data dir: models are still there
    s2 = start_server(data_dir=data)
    ids = {e["id"] for e in ok_json(get(s2.url, "/v1/models"))["models"]}
    assert {id1, id2} <= ids
    assert ok_json(get(s2.url, f"/v1/models/{id1}"))["name"] == "one"
    after = ok_json(post(s2.url, "/v1/forward", {"model": id1, "inputs": {"x": x.tolist()}}))["outputs"]
    assert after == before
    s2.stop()
    # a copy with one file damaged: the server starts, skips it, keeps the other
    copy = tmp_path / "copy"
    shutil.copytree(data, copy)
    f = copy / "models" / f"{id2}.json"
    f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2] + b"\x00garbage")
    (copy / "models" / "notamodel.json").write_text("{]")
    s3 = start_server(data_dir=copy)
    assert get(s3.url, "/healthz").status_code == 200
    ids = {e["id"] for e in ok_json(get(s3.url, "/v1/models"))["models"]}
    assert id1 in ids and id2 not in ids
    assert_problem(get(s3.url, f"/v1/models/{id2}"), 404)
    ok_json(post(s3.url, "/v1/forward", {"model": id1, "inputs": {"x": x.tolist()}}))
    # the original directory is untouched
    s4 = start_server(data_dir=data)
    assert {id1, id2} <= {e["id"] for e in ok_json(get(s4.url, "/v1/models"))["models"]}
    s3.stop()
    s4.stop()
