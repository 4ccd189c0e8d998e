"""Streamed Jacobians: a safetensors Jacobian answer larger than two blocks (JacobianStream.blockBytes, 4 MiB) is
written as it is computed. Checked against PyTorch (vmap(jacrev), float64 from the same float32 weights) and
against the same Jacobian built whole (base64); its Content-Length; the server's peak memory far below the
answer's size; and a client that leaves mid-stream gives the request's place in the compute pool back."""

from __future__ import annotations

import json
import socket
import time
from urllib.parse import urlparse

import numpy as np
import requests
import torch
from torch.func import jacrev, vmap

from gs_helpers import decode_answer
from gs_wire import st_read, st_write
from gradserve_testing.rss import peak_rss_bytes, vm_rss
from gradserve_testing.toymlp import D, toy_mlp, toy_model_json

B = 16  # a [16, 784, 784] float32 Jacobian: 39 MB, ten blocks


def setup(server) -> tuple[str, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    r = requests.post(server.url + "/v1/models", json={"model": toy_model_json(seed=0)}, timeout=60)
    r.raise_for_status()
    rng = np.random.default_rng(16)
    x = rng.standard_normal((B, D)).astype(np.float32)
    t = rng.random(B).astype(np.float32)
    m = toy_mlp(seed=0).double()
    xt, tt = torch.from_numpy(x).double(), torch.from_numpy(t).double()
    f = lambda xi, ti: m(xi[None], ti[None])[0]  # noqa: E731
    want = {
        "jacobian.x": vmap(jacrev(f))(xt, tt).detach().numpy(),
        "jacobian.t": vmap(jacrev(f, argnums=1))(xt, tt).detach().numpy(),
        "outputs": m(xt, tt).detach().numpy(),
    }
    return r.json()["id"], x, t, want


def body(mid: str, x: np.ndarray, t: np.ndarray, encoding: str) -> bytes:
    request = {"model": mid, "wrt": ["x", "t"], "output_encoding": encoding}
    return st_write({"inputs.x": x, "inputs.t": t}, {"request": json.dumps(request)})


def rel(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def test_streamed_jacobian_matches_pytorch_and_the_whole_answer_with_little_memory(start_server):
    server = start_server()
    mid, x, t, want = setup(server)
    # warm: a small Jacobian, so the baseline includes the model and the threads' first allocations
    requests.post(server.url + "/v1/jacobian", data=body(mid, x[:1], t[:1], "safetensors"),
                  headers={"Content-Type": "application/octet-stream"}, timeout=60).raise_for_status()
    base = vm_rss(server.pid)
    r = requests.post(server.url + "/v1/jacobian", data=body(mid, x, t, "safetensors"),
                      headers={"Content-Type": "application/octet-stream"}, timeout=120)
    peak = peak_rss_bytes(server.pid)
    assert r.status_code == 200, r.text[:300]
    assert int(r.headers["Content-Length"]) == len(r.content)
    got, meta, header = st_read(r.content)
    assert set(got) == {"jacobian.x", "jacobian.t", "outputs"}
    assert header["jacobian.x"]["data_offsets"][0] == 0, "jacobian.x comes first: it is the streamed part"
    assert meta["mode"] == "reverse" and set(json.loads(meta["timing"])) >= {"read_ms", "queue_ms", "decode_ms", "compute_ms"}
    for name, w in want.items():
        assert got[name].shape == w.shape, name
        assert rel(got[name], w) < 2e-5, f"{name}: {rel(got[name], w):.2e} against PyTorch"
    # the same Jacobian built whole (a base64 answer is never streamed)
    whole = requests.post(server.url + "/v1/jacobian", data=body(mid, x, t, "base64"),
                          headers={"Content-Type": "application/octet-stream"}, timeout=120)
    assert whole.status_code == 200
    w = decode_answer(whole, "float32", "base64")
    assert rel(got["jacobian.x"], w["jacobian"]["x"]) < 1e-6 and rel(got["outputs"], w["outputs"]) < 1e-6
    # built whole, the answer and its encoding are held at once (2x its size); streamed, a few blocks
    answer = want["jacobian.x"].size * 4
    assert base is not None and peak is not None
    assert peak - base < 0.6 * answer, f"peak {peak / 2**20:.0f} MiB, {(peak - base) / 2**20:.0f} MiB above the baseline, for a {answer / 2**20:.0f} MiB answer"


def test_a_client_that_leaves_mid_stream_gives_its_place_back(start_server):
    server = start_server(["--workers", "1", "--max-queued", "0"])
    mid, x, t, _ = setup(server)
    data = body(mid, x, t, "safetensors")
    u = urlparse(server.url)
    with socket.create_connection((u.hostname, u.port), timeout=30) as s:
        s.sendall(
            b"POST /v1/jacobian HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
            + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        got = b""
        while len(got) < 1 << 20:  # the head and the first block's start
            chunk = s.recv(65536)
            assert chunk, "the server closed before answering"
            got += chunk
        assert got.startswith(b"HTTP/1.1 200")
    # gone: the stream stops, and the one worker's place (no queue) comes back
    deadline = time.monotonic() + 20
    while True:
        pending = requests.get(server.url + "/readyz", timeout=10).json().get("pending")
        if pending == 0:
            break
        assert time.monotonic() < deadline, f"the place was not given back: pending {pending}"
        time.sleep(0.05)
    r = requests.post(server.url + "/v1/jacobian", data=body(mid, x[:2], t[:2], "safetensors"),
                      headers={"Content-Type": "application/octet-stream"}, timeout=60)
    assert r.status_code == 200, r.text[:300]
