"""pytest fixtures for the gradserve HTTP tests.

`server` is the URL of one gradserve process for the whole session (a private copy of
$GRADSERVE_BIN, else of .build/release/gradserve, started by the shared test support
e2e/support/gradserve_testing), with a temporary data directory; it is stopped with SIGTERM at the end.
`start_server` starts further servers (other flags, a given data directory) that are stopped at the end too.
`main` is the adversarial suite's server (test_adversarial_*.py, see adversarial_support.py): one for the
session, with a small budget and its resident size sampled from its start; `tiny_id` is a tiny model
registered there. Every test that uses `main` checks afterwards that it is still alive.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gs_helpers import (  # noqa: E402,F401  (re-exported for the tests)
    TIMEOUT,
    ServerProcess,
    assert_problem,
    delete,
    describe,
    get,
    ok_json,
    post,
    server_binary,
    vm_rss,
)
from adversarial_support import MAIN_FLAGS, Main, RssSampler, register, tiny_t_model  # noqa: E402


@pytest.fixture(scope="session")
def _servers():
    started: list[ServerProcess] = []
    yield started
    for s in reversed(started):
        s.stop()


@pytest.fixture(scope="session")
def start_server(_servers, tmp_path_factory):
    """start_server(extra_args=[...], data_dir=None, env=None) -> ServerProcess (already healthy)."""

    def start(extra_args=None, data_dir=None, env=None) -> ServerProcess:
        if data_dir is None:
            data_dir = tmp_path_factory.mktemp("data")
        s = ServerProcess(data_dir, extra_args, env)
        s.start()
        _servers.append(s)
        return s

    return start


@pytest.fixture(scope="session")
def server_process(start_server) -> ServerProcess:
    return start_server()


@pytest.fixture(scope="session")
def server(server_process) -> str:
    """The URL of the session's server, e.g. http://127.0.0.1:41234."""
    return server_process.url


@pytest.fixture(scope="session")
def data_dir(server_process) -> Path:
    return server_process.data_dir


def pytest_report_header(config):
    try:
        return f"gradserve binary: {server_binary()}"
    except Exception as e:  # pragma: no cover
        return f"gradserve binary: unavailable ({e})"


@pytest.fixture(scope="module")
def limited_server(start_server):
    """A server with small output and body limits (one per test module)."""
    return start_server(["--max-output-elements", "1000", "--max-body-bytes", "20000"])


# --------------------------------------------------------------------------------------
# The adversarial suite's server (test_adversarial_*.py)
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def main(start_server):
    """One server with MAIN_FLAGS for all the adversarial files. Its sampler runs from here to the end of the
    session; its peak is asserted by the last test of the session (see pytest_collection_modifyitems)."""
    s = start_server(MAIN_FLAGS)
    # Warm up every route once, then let the idle trim run, and take the idle resident size.
    m = {"inputs": ["x"], "layers": [{"op": "linear", "weight": [[0.5, -0.25], [0.125, 1.0]]}, {"op": "tanh"}]}
    for op, extra in [("forward", {}), ("vjp", {"grad_outputs": [[1, 0]]}), ("jvp", {"tangents": {"x": [[1, 0]]}}),
                      ("jacobian", {}), ("divergence", {})]:
        assert post(s.url, f"/v1/{op}", {"model": m, "inputs": {"x": [[0.1, 0.2]]}, **extra}).status_code == 200
    time.sleep(2.5)
    baseline = vm_rss(s.proc.pid) or 0
    sampler = RssSampler(s.proc.pid)
    sampler.start()
    yield Main(s, sampler, baseline)
    sampler.stop()


@pytest.fixture(autouse=True)
def _module_server_still_alive(request):
    yield
    if "main" in request.fixturenames:
        m = request.getfixturevalue("main")
        assert m.proc.alive(), f"the module server died:\n{m.proc.log()}"
        r = requests.get(m.url + "/healthz", timeout=TIMEOUT)
        assert r.status_code == 200, describe(r)


@pytest.fixture(scope="session")
def tiny_id(main):
    return register(main.url, tiny_t_model())


def pytest_collection_modifyitems(config, items):
    """The adversarial server's final peak-memory check runs after every other test, whatever
    the file order: it judges the whole run's peak."""
    last = [i for i in items if i.name == "test_zz_module_peak_rss_under_budget"]
    items[:] = [i for i in items if i not in last] + last
