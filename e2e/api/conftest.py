"""pytest fixtures for the gradserve HTTP tests.

`server` is the URL of one gradserve process for the whole session (a private copy of
$GRADSERVE_BIN, else of .build/release/gradserve, started by the shared test support
e2e/support/gradserve_testing), with a temporary data directory; it is stopped with SIGTERM at the end.
`start_server` starts further servers (other flags, a given data directory) that are stopped at the end too.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gs_helpers import (  # noqa: E402,F401  (re-exported for the tests)
    ServerProcess,
    assert_problem,
    delete,
    describe,
    get,
    ok_json,
    post,
    server_binary,
)


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
