"""Starting and stopping gradserve processes for the client tests and the notebook run.

The binary is $GRADSERVE_BIN, else a private copy of <repo>/.build/release/gradserve (with its
SwiftPM resource bundle beside it): the owner may rebuild the original at any moment.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import sys
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

# One port reader for every suite (tests/python/gs_ports.py, standard library only).
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests" / "python"))
from gs_ports import port_from_log, port_from_proc  # noqa: E402


REPO = Path(__file__).resolve().parents[3]
DEFAULT_BIN = REPO / ".build" / "release" / "gradserve"

_copy: Path | None = None
_temporary: list[Path] = []  # data directories and logs this process created, removed at exit


def _tmp(path: str) -> Path:
    p = Path(path)
    _temporary.append(p)
    return p


@atexit.register
def _remove_temporary() -> None:
    for p in _temporary:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def server_binary() -> Path:
    global _copy
    env = os.environ.get("GRADSERVE_BIN")
    if env:
        p = Path(env).resolve()
        if not p.exists():
            raise RuntimeError(f"GRADSERVE_BIN={env} does not exist")
        return p
    if _copy is None or not _copy.exists():
        if not DEFAULT_BIN.exists():
            raise RuntimeError(f"no server binary at {DEFAULT_BIN}: build it (swift build -c release) or set GRADSERVE_BIN")
        d = Path(tempfile.mkdtemp(prefix="gsclient-bin-"))
        dst = d / "gs-client-under-test"  # a neutral name: a `pkill gradserve` elsewhere must not hit it
        shutil.copy2(DEFAULT_BIN, dst)
        for bundle in DEFAULT_BIN.parent.glob("*.resources"):
            shutil.copytree(bundle, d / bundle.name, dirs_exist_ok=True)
        _copy = dst
        atexit.register(shutil.rmtree, d, True)
    return _copy


START_TIMEOUT = 60.0  # seconds for a server to listen and answer /healthz (a loaded 2-core machine is slow)
class Server:
    """One `gradserve serve` with its own data directory, on a port the kernel picks when the server binds
    it (--port 0; read back from the process itself), or on a given port (a restart keeps its URL)."""

    def __init__(self, data_dir: str | Path | None = None, args: list[str] | None = None, env: dict | None = None):
        self.data_dir = Path(data_dir) if data_dir else _tmp(tempfile.mkdtemp(prefix="gsclient-data-"))
        self.args = list(args or [])
        self.env = env
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = START_TIMEOUT, port: int | None = None) -> "Server":
        last = ""
        # With --port 0 a single attempt does; a given port (a restart) may still be held for a moment,
        # or taken meanwhile: then the server exits and is tried again.
        for attempt in range(1 if port is None else 3):
            if attempt:
                time.sleep(1.0)
            fd, log = tempfile.mkstemp(prefix="gsclient-log-", suffix=".txt")
            self.log_path = _tmp(log)
            env = dict(os.environ)
            env.pop("GRADSERVE_API_KEY", None)
            env.update(self.env or {})
            cmd = [
                str(server_binary()),
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port or 0),
                "--data-dir",
                str(self.data_dir),
                *self.args,
            ]
            self.proc = subprocess.Popen(cmd, stdout=fd, stderr=subprocess.STDOUT, env=env)
            os.close(fd)
            self.port = None
            deadline = time.monotonic() + timeout
            while True:
                if self.proc.poll() is not None:
                    last = f"server exited with {self.proc.returncode}: {self.log()}"
                    break
                if self.port is None:
                    # the port of this very process: a server of another test run is never mistaken for it
                    self.port = port_from_log(self.log_path) or port_from_proc(self.proc.pid)
                if self.port is not None:
                    if port is not None and self.port != port:
                        self.stop()
                        raise RuntimeError(f"server listens on {self.port}, not on the requested {port}: {self.log()}")
                    try:
                        with urllib.request.urlopen(self.url + "/healthz", timeout=10) as r:
                            if r.status == 200:
                                return self
                    except OSError:
                        pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"server not {'healthy' if self.port else 'listening'} within {timeout}s: {self.log()}")
                time.sleep(0.05)
        raise RuntimeError(last or "server failed to start")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:] if self.log_path else ""
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def restart(self, fresh_data: bool = False) -> "Server":
        """Stops and starts again on the same port (optionally with an empty data directory)."""
        port = self.port
        self.stop()
        if fresh_data:
            self.data_dir = _tmp(tempfile.mkdtemp(prefix="gsclient-data-"))
        return self.start(port=port)
