"""Three gradserve replicas on loopback, one killed with SIGKILL and restarted under a mixed load; no request lost.

1. Behind nginx (Debian's package, deploy/nginx/gradserve.conf as shipped: least connections, passive health
   checks, the compute POSTs retried on the next replica): the Python client sends forward, VJP, JVP, Jacobian
   (B = 3, the seed's) and divergence requests of the seed's ToyMLP (from a shared --models-dir, so every
   replica has it) through nginx from several threads; one replica is killed mid-run and restarted on its port.
2. The same with the client's own multi-URL splitting and no load balancer: batches split over the three
   replicas, a model registered by the client besides the --models-dir one; the killed replica restarts with an
   empty data directory, so the client must register its model there again (404, then re-registration).

Every answer is checked against PyTorch (float64 from the same float32 weights) once the phase is over, on the
test's own thread (PyTorch never runs beside the load; a wrong answer's failure says which replica gave it, what
that replica answers when asked again, and whether the reference reproduces). No request may fail: the
client retries connection errors, 502 and 503 with backoff (never a 4xx). The report (printed at the end of
the pytest run) shows the answers by replica and status. Bounded: each phase ends after its quota of answers
once the restarted replica has answered again, or fails after PHASE_TIMEOUT seconds; no timing is asserted.
"""

from __future__ import annotations

import collections
import json
import signal
import threading
import time

import numpy as np
import pytest
import requests
import torch
from torch.func import jacrev, jvp as tjvp, vmap

import gradserve_testing  # noqa: F401 - first: puts this checkout's client on sys.path (run alone too)
import gradserve
from gradserve import errors as E
from gradserve_testing.server import ServerProcess, temporary_dir
from gradserve_testing.toymlp import toy_mlp, toy_model_json

from conftest import REPORT
from lb import Nginx, nginx_binary

pytestmark = pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed (apt-get install nginx-light)")

REPLICAS = 3
THREADS = 4
QUOTA_BEFORE_KILL = 24  # answers before the kill
QUOTA_WHILE_DOWN = 24  # answers while the replica is down
QUOTA_AFTER = 6  # answers the restarted replica must give before the phase ends
PHASE_TIMEOUT = 240.0  # seconds: a phase that has not finished by then fails
OPS = ("forward", "vjp", "jvp", "jacobian", "divergence")
BATCH = {"forward": 16, "vjp": 16, "jvp": 16, "jacobian": 3, "divergence": 4}
TOL = 2e-5  # norm-relative error of a float32 answer against the float64 reference


# ------------------------------------------------------------------------------------------------
# the model, the references, the checks
# ------------------------------------------------------------------------------------------------


class Reference:
    """The seed's ToyMLP (float32 weights of seed `seed`) and its PyTorch float64 references."""

    def __init__(self, seed: int):
        self.seed = seed
        self.model32 = toy_mlp(seed=seed)
        self.m = toy_mlp(seed=seed).double()
        self.d = 784

    def inputs(self, op: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
        b = BATCH[op]
        x = rng.standard_normal((b, self.d)).astype(np.float32)
        t = rng.random(b).astype(np.float32)
        extra = {}
        if op == "vjp":
            extra["v"] = rng.standard_normal((b, self.d)).astype(np.float32)
        if op == "jvp":
            extra["u"] = rng.standard_normal((b, self.d)).astype(np.float32)
        return {"x": x, "t": t, **extra}

    def expected(self, op: str, a: dict[str, np.ndarray]) -> np.ndarray:
        """PyTorch's answer; called from the test's thread only (``Load.verify``), never beside the load."""
        x, t = torch.from_numpy(a["x"]).double(), torch.from_numpy(a["t"]).double()
        if op == "forward":
            return self.m(x, t).detach().numpy()
        if op == "vjp":
            xr = x.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(self.m(xr, t), xr, grad_outputs=torch.from_numpy(a["v"]).double())
            return g.numpy()
        if op == "jvp":
            return tjvp(lambda xx: self.m(xx, t), (x,), (torch.from_numpy(a["u"]).double(),))[1].detach().numpy()
        J = vmap(jacrev(lambda xi, ti: self.m(xi[None], ti[None])[0]))(x, t).detach()
        if op == "jacobian":
            return J.numpy()
        return torch.diagonal(J, dim1=1, dim2=2).sum(-1).numpy()  # divergence


def call(c: gradserve.Client, mid: str, op: str, a: dict[str, np.ndarray], batch_size: int | None = None) -> np.ndarray:
    if op == "forward":
        return c.forward(mid, a["x"], a["t"], batch_size=batch_size).outputs
    if op == "vjp":
        return c.vjp(mid, a["x"], a["t"], a["v"], batch_size=batch_size).grads.x
    if op == "jvp":
        return c.jvp(mid, a["x"], a["t"], a["u"], batch_size=batch_size).jvp
    if op == "jacobian":
        return c.jacobian(mid, a["x"], a["t"], batch_size=batch_size).jacobian.x
    return c.divergence(mid, a["x"], a["t"], batch_size=batch_size).divergence


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    got = np.asarray(got, dtype=np.float64)
    if got.shape != want.shape:
        return float("inf")
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))


# ------------------------------------------------------------------------------------------------
# a client that records every exchange: which replica answered, with which status
# ------------------------------------------------------------------------------------------------


class RecordingClient(gradserve.Client):
    """Records each HTTP exchange: (url, path, status or 'connection', X-Upstream, X-Upstream-Status); and per
    thread, which replica answered the exchanges since ``begin()`` (``answered_by``)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.log: list[tuple] = []
        self._log_lock = threading.Lock()
        self._answered = threading.local()

    def begin(self) -> None:
        self._answered.by = []

    def answered_by(self) -> str:
        """The replica (its address behind nginx, its URL otherwise) of this thread's last answer since ``begin``;
        a split call's spans are answered on the client's worker threads: 'split over replicas'."""
        by = getattr(self._answered, "by", [])
        return by[-1] if by else "split over replicas"

    def _exchange(self, method, path, json_body, data, content_type, url, timeout):
        base = (url or self.urls[0]).rstrip("/")
        try:
            r = super()._exchange(method, path, json_body, data, content_type, url, timeout)
            entry = (base, method, path, r.status_code, r.headers.get("X-Upstream", ""), r.headers.get("X-Upstream-Status", ""))
            with self._log_lock:
                self.log.append(entry)
            if hasattr(self._answered, "by"):
                self._answered.by.append(entry[4].split(", ")[-1] or base)
            return r
        except E.GradserveError as e:
            status = e.status if e.status is not None else "connection"
            with self._log_lock:
                self.log.append((base, method, path, status, "", ""))
            raise


def ask_again(c: gradserve.Client):
    """For ``Load.verify``: the same request sent again to the replica that answered it (``http://`` + its
    address behind nginx), or through ``c`` when that is not known."""

    def again(op: str, name: str, a: dict, by: str, ids: dict) -> np.ndarray:
        if by.startswith("split"):
            return call(c, ids[name], op, a)
        url = by if by.startswith("http") else f"http://{by}"
        with gradserve.Client(url, retries=0) as one:
            return call(one, ids[name], op, a)

    return again


@pytest.fixture(scope="module")
def models_dir():
    d = temporary_dir("gs-models-")
    (d / "toymlp-seed0.json").write_text(json.dumps({"name": "toymlp-seed0", "model": toy_model_json(seed=0)}))
    return d


def start_replicas(models_dir) -> list[ServerProcess]:
    # 3 replicas on a 2-core machine: one worker each, and a queue deep enough for the load
    args = ["--workers", "1", "--max-queued", "32", "--models-dir", str(models_dir)]
    return [ServerProcess(extra_args=args).start() for _ in range(REPLICAS)]


def kill_mid_request(replica: ServerProcess, wait: float = 5.0) -> bool:
    """SIGKILL once the replica reports a computation running or queued (/readyz "pending"), or after `wait`
    seconds anyway; whether it was mid-request."""
    deadline = time.monotonic() + wait
    busy = False
    while not busy and time.monotonic() < deadline:
        try:
            busy = requests.get(replica.url + "/readyz", timeout=2).json().get("pending", 0) >= 1
        except (requests.RequestException, ValueError):
            pass
    kill(replica)
    return busy


def kill(replica: ServerProcess) -> None:
    """SIGKILL, this replica's process only (by pid), and wait for it."""
    replica.proc.send_signal(signal.SIGKILL)
    replica.proc.wait(timeout=10)


class Load:
    """THREADS threads sending random operations until `stop`. Every answer is kept with its request and which
    replica answered; `verify` checks them all against PyTorch afterwards, on the test's own thread (PyTorch's
    references are not computed beside the load's threads). A request that failed is kept as lost."""

    def __init__(self, send, refs: dict[str, Reference], ids: dict[str, str], seed: int, client: RecordingClient):
        self.send, self.refs, self.ids = send, refs, ids
        self.begin, self.answered_by = client.begin, client.answered_by
        self.stop = threading.Event()
        self.answers = 0
        self.by_op: collections.Counter = collections.Counter()
        self.failures: list[str] = []
        self.kept: list[tuple] = []  # (op, model name, request arrays, answer, replica that answered)
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(seed + i,), daemon=True) for i in range(THREADS)]

    def _run(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        names = sorted(self.ids)
        while not self.stop.is_set():
            op = OPS[rng.integers(len(OPS))]
            name = names[rng.integers(len(names))]
            a = self.refs[name].inputs(op, rng)
            try:
                self.begin()
                got = np.array(self.send(self.ids[name], op, a), dtype=np.float64)
                by = self.answered_by()
            except Exception as e:  # noqa: BLE001 - every failure is a lost request: kept and reported
                with self.lock:
                    self.failures.append(f"{op} on {name}: {type(e).__name__}: {str(e)[:300]}")
                continue
            with self.lock:
                self.kept.append((op, name, a, got, by))
                self.answers += 1
                self.by_op[op] += 1

    def verify(self, ask_again=None) -> None:
        """Every kept answer against PyTorch (float64). A wrong one fails the test with what tells where the
        error came from: the reference computed again, and the same request asked again (``ask_again(op, name,
        a, replica, ids)``) of the replica that answered it."""
        for op, name, a, got, by in self.kept:
            ref = self.refs[name]
            want = ref.expected(op, a)
            err = relative_error(got, want)
            if err < TOL:
                continue
            again_ref = relative_error(ref.expected(op, a), want)
            lines = [
                f"{op} on {name}, answered by {by}: norm-relative error {err:.2e} against PyTorch",
                f"  got  {got.ravel()[:8]}", f"  want {want.ravel()[:8]}",
                f"  the reference computed again differs from the first by {again_ref:.2e}",
            ]
            if ask_again is not None:
                try:
                    again = np.asarray(ask_again(op, name, a, by, self.ids), dtype=np.float64)
                    lines.append(f"  asked again: {again.ravel()[:8]} (error {relative_error(again, want):.2e})")
                except Exception as e:  # noqa: BLE001 - a diagnostic only
                    lines.append(f"  asking again failed: {type(e).__name__}: {str(e)[:200]}")
            raise AssertionError("\n".join(lines))

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=PHASE_TIMEOUT)

    def wait_for(self, n: int, deadline: float, what: str, extra=lambda: True) -> None:
        while not (self.answers >= n and extra()):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}: {self.answers} answers, failures: {self.failures[:5]}")
            if self.failures:
                raise AssertionError(f"requests lost: {self.failures[:5]}")
            time.sleep(0.05)


def report_table(title: str, rows: collections.Counter, cols: list, name) -> None:
    keys = sorted({k[0] for k in rows}, key=lambda k: str(name(k)))
    REPORT.append(title)
    REPORT.append("  " + f"{'replica':<26}" + "".join(f"{str(c):>12}" for c in cols))
    for k in keys:
        REPORT.append("  " + f"{name(k):<26}" + "".join(f"{rows.get((k, c), 0):>12}" for c in cols))


def test_behind_nginx_one_replica_killed_and_restarted(models_dir):
    replicas = start_replicas(models_dir)
    try:
        addr = {f"127.0.0.1:{r.port}": f"replica {i}" for i, r in enumerate(replicas)}
        with Nginx(list(addr)) as lb:
            c = RecordingClient(lb.url, retries=8)
            ids = {m["name"]: m["id"] for m in c.request("GET", "/v1/models").json()["models"]}
            refs = {"toymlp-seed0": Reference(0)}
            deadline = time.monotonic() + PHASE_TIMEOUT
            victim = replicas[1]
            vaddr = f"127.0.0.1:{victim.port}"
            restarted_at = [None]

            def served_by_victim_since_restart() -> int:
                if restarted_at[0] is None:
                    return 0
                return sum(1 for e in c.log[restarted_at[0]:] if e[4].split(", ")[-1] == vaddr and e[3] == 200)

            with Load(lambda mid, op, a: call(c, mid, op, a), refs, ids, seed=100, client=c) as load:
                load.wait_for(QUOTA_BEFORE_KILL, deadline, "answers before the kill")
                mid_request = kill_mid_request(victim)
                killed_at = len(c.log)
                load.wait_for(load.answers + QUOTA_WHILE_DOWN, deadline, "answers while a replica is down")
                victim.start(port=victim.port)
                restarted_at[0] = len(c.log)
                load.wait_for(0, deadline, "the restarted replica to answer again",
                              lambda: served_by_victim_since_restart() >= QUOTA_AFTER)
            assert not load.failures, f"requests lost: {load.failures[:5]}"
            load.verify(ask_again(c))
            lb.stop()

        # which replica answered (nginx's last upstream), and with which status each replica was tried
        answered, tried = collections.Counter(), collections.Counter()
        retried_by_nginx = client_retries = 0
        for base, method, path, status, ups, ups_status in c.log:
            if ups and path != "/v1/models":
                tried_list = ups.split(", ")
                for u, s in zip(tried_list, ups_status.split(", ")):
                    tried[(u, s)] += 1
                answered[(tried_list[-1], status)] += 1
                retried_by_nginx += len(tried_list) > 1
            if status != 200:
                client_retries += 1
        statuses = sorted({k[1] for k in tried}, key=str)
        REPORT.append(
            f"behind nginx: {load.answers} answers checked against PyTorch ({dict(load.by_op)}), 0 lost; "
            f"{victim_name(addr, vaddr)} SIGKILLed after {QUOTA_BEFORE_KILL} answers "
            f"({'with a computation in flight' if mid_request else 'between requests'}) and restarted; "
            f"{retried_by_nginx} requests retried by nginx on another replica, {client_retries} client retries"
        )
        report_table("  answers by replica (nginx's last upstream) and status:", answered,
                     sorted({k[1] for k in answered}, key=str), lambda a: addr.get(a, a))
        report_table("  tries by replica and upstream status (502: connection lost mid-request):", tried, statuses,
                     lambda a: addr.get(a, a))
        # the kill hit traffic: some request found the dead replica and went elsewhere
        assert retried_by_nginx + client_retries >= 1, "no request ever met the dead replica: the test did not test"
        assert any(e[4].split(", ")[-1] == vaddr for e in c.log[killed_at:]), "the restarted replica never answered"
    finally:
        for r in replicas:
            r.stop()


def victim_name(addr: dict, vaddr: str) -> str:
    return addr[vaddr]


def test_client_multi_url_one_replica_killed_and_restarted_empty(models_dir):
    replicas = start_replicas(models_dir)
    try:
        urls = [r.url for r in replicas]
        name = {u: f"replica {i}" for i, u in enumerate(urls)}
        # parallel = the number of replicas: a split batch's spans go to all three at once
        c = RecordingClient(urls, retries=8)
        ids = {m["name"]: m["id"] for m in c.models()}
        refs = {"toymlp-seed0": Reference(0), "toymlp-seed7 (registered)": Reference(7)}
        ids["toymlp-seed7 (registered)"] = c.register(refs["toymlp-seed7 (registered)"].model32)
        victim = replicas[2]
        deadline = time.monotonic() + PHASE_TIMEOUT
        restarted_at = [None]

        def victim_answers_since_restart() -> int:
            if restarted_at[0] is None:
                return 0
            return sum(1 for e in c.log[restarted_at[0]:] if e[0] == victim.url and e[3] == 200 and e[2] != "/v1/models")

        def reregistrations() -> int:
            return sum(1 for e in c.log[restarted_at[0]:] if e[0] == victim.url and e[2] == "/v1/models" and e[3] == 201)

        # split every batch (batch_size 1 for the B = 3 Jacobians, 4 rows otherwise), so each request
        # reaches every replica
        def send(mid, op, a):
            return call(c, mid, op, a, batch_size=1 if op == "jacobian" else 4)

        with Load(send, refs, ids, seed=200, client=c) as load:
            load.wait_for(QUOTA_BEFORE_KILL, deadline, "answers before the kill")
            kill(victim)
            load.wait_for(load.answers + QUOTA_WHILE_DOWN, deadline, "answers while a replica is down")
            victim.data_dir = temporary_dir("gs-data-")  # an empty registry: the client's model is gone there
            # Counted from before the start: the client may register its model there again the moment
            # the replica is up, before this thread runs again (it did, and the phase waited for a
            # re-registration it had already missed).
            restarted_at[0] = len(c.log)
            victim.start(port=victim.port)
            load.wait_for(0, deadline, "the restarted replica to answer again, the client's model registered there again",
                          lambda: victim_answers_since_restart() >= QUOTA_AFTER and reregistrations() >= 1)
        assert not load.failures, f"requests lost: {load.failures[:5]}"
        load.verify(ask_again(c))

        by = collections.Counter((e[0], e[3]) for e in c.log if e[2] != "/v1/models")
        reregistered = [e for e in c.log[restarted_at[0]:] if e[0] == victim.url and e[1] == "POST" and e[2] == "/v1/models"]
        not_found = [e for e in c.log[restarted_at[0]:] if e[0] == victim.url and e[3] == 404]
        registrations = collections.Counter((e[0], e[3]) for e in c.log if e[2] == "/v1/models" and e[1] == "POST")
        REPORT.append(
            f"client multi-URL (no balancer): {load.answers} answers checked against PyTorch ({dict(load.by_op)}), 0 lost; "
            f"{name[victim.url]} SIGKILLed and restarted with an empty data directory: "
            f"{len(not_found)} × 404 there, then {len(reregistered)} re-registration(s) by the client"
        )
        report_table("  compute exchanges by replica and status ('connection': refused or cut; 404: model unknown there):",
                     by, sorted({k[1] for k in by}, key=str), lambda u: name.get(u, u))
        report_table("  registrations (POST /v1/models) by replica and status:", registrations,
                     sorted({k[1] for k in registrations}, key=str), lambda u: name.get(u, u))
        assert by[(victim.url, "connection")] >= 1, "no request ever met the dead replica: the test did not test"
        assert not any(isinstance(k[1], int) and 400 <= k[1] < 500 and k[1] != 404 for k in by), by
        # The client registers its model again on the restarted replica either after a 404 there or
        # ahead of one (a replica it saw fail is registered again before its next request): either
        # way the model must be back (asserted below); a 404 is not required.
        assert reregistered, "the restarted replica never got the client's model again"
        c.close()
    finally:
        for r in replicas:
            r.stop()
