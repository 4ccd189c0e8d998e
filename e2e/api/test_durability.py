"""Nothing acknowledged is lost: models answered 201 survive a kill -9 at any moment."""

import random
import signal
import threading
import time

import requests

from gs_helpers import TIMEOUT, post


def tiny_model(seed: int) -> dict:
    rng = random.Random(seed)
    return {"layers": [{"op": "linear", "weight": [[rng.uniform(-1, 1) for _ in range(3)] for _ in range(2)]}, {"op": "tanh"}]}


def test_kill_9_during_registrations_keeps_every_acknowledged_model(start_server, tmp_path):
    data = tmp_path / "data"
    acknowledged: list[str] = []
    for round_ in range(3):
        server = start_server(data_dir=data)
        stop = threading.Event()

        def register_forever(offset: int):
            i = 0
            session = requests.Session()
            while not stop.is_set():
                try:
                    r = post(server.url, "/v1/models", {"name": f"m{offset}-{i}", "model": tiny_model(round_ * 100_000 + offset * 10_000 + i)},
                             session=session, timeout=TIMEOUT)
                except requests.RequestException:
                    return  # the server died under us: whatever was not answered was not acknowledged
                if r.status_code == 201:
                    acknowledged.append(r.json()["id"])
                i += 1

        threads = [threading.Thread(target=register_forever, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        # Kill once this round has had a given number of registrations acknowledged (a count, not a
        # wall-clock delay, so a slow machine kills as far into the work as a fast one), while the
        # three writers are still sending: mid-write, with requests in flight.
        target = len(acknowledged) + 15 * (round_ + 1)
        deadline = time.monotonic() + TIMEOUT
        while len(acknowledged) < target and time.monotonic() < deadline and any(t.is_alive() for t in threads):
            time.sleep(0.002)
        assert len(acknowledged) >= target, (
            f"round {round_}: only {len(acknowledged)} of {target} registrations acknowledged before the kill:\n{server.log()}")
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(timeout=TIMEOUT)
        stop.set()
        for t in threads:
            t.join(timeout=TIMEOUT)

    assert len(acknowledged) > 10, "the test registered too few models to mean anything"
    server = start_server(data_dir=data)
    listed = {m["id"] for m in requests.get(server.url + "/v1/models", timeout=TIMEOUT).json()["models"]}
    missing = [i for i in acknowledged if i not in listed]
    assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged models were lost after kill -9"
    # And each is usable, not merely listed.
    for model_id in acknowledged[:: max(1, len(acknowledged) // 10)]:
        r = post(server.url, "/v1/forward", {"model": model_id, "inputs": {"x": [[0.1, 0.2, 0.3]]}})
        assert r.status_code == 200, r.text
