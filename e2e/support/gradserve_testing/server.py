"""Starting and stopping `gradserve serve` processes: the one launcher of every Python suite and bench script.

The binary is a private copy (under a neutral name, with the SwiftPM resource bundles beside it) of the one
given, else of $GRADSERVE_BIN, else of <repo>/.build/release/gradserve: the owner may rebuild the original at
any moment, and a `pkill gradserve` elsewhere on a shared machine must not hit the server under test.

A server listens on a port of its own: --port 0, the kernel picks one when the server binds it, so no other
process can take it between a probe and the bind; the port is read back from this very process (`ports`), so
a server of another test run is never mistaken for it.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import requests

from . import REPO
from .ports import port_from_log, port_from_proc

DEFAULT_BIN = REPO / ".build" / "release" / "gradserve"
START_TIMEOUT = 60.0  # seconds for a server to listen and answer /healthz (a loaded 2-core machine is slow)
COPY_NAME = "gs-under-test"  # a neutral process name

_copies: dict[Path, Path] = {}  # source binary -> its private copy
_temporary: list[Path] = []  # folders and files this process created, removed at exit


@atexit.register
def _remove_temporary() -> None:
    for p in reversed(_temporary):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def temporary_dir(prefix: str) -> Path:
    """A fresh folder, removed when this process exits."""
    p = Path(tempfile.mkdtemp(prefix=prefix))
    _temporary.append(p)
    return p


def source_binary(binary: str | Path | None = None) -> Path:
    """The binary to copy: `binary`, else $GRADSERVE_BIN, else the release build (relative paths from the cwd)."""
    src = binary or os.environ.get("GRADSERVE_BIN") or DEFAULT_BIN
    return Path(src).resolve()


def server_binary(binary: str | Path | None = None) -> Path:
    """The private copy of `source_binary(binary)`, made once per process (and removed at its exit)."""
    src = source_binary(binary)
    copy = _copies.get(src)
    if copy is not None and copy.exists():
        return copy
    if not src.is_file():
        raise RuntimeError(
            f"no gradserve binary at {src}: build it (swift build -c release --product gradserve) or set GRADSERVE_BIN"
        )
    folder = temporary_dir("gs-bin-")
    copy = folder / COPY_NAME
    shutil.copy2(src, copy)
    for bundle in list(src.parent.glob("*.resources")) + list(src.parent.glob("*.bundle")):
        if bundle.is_dir():
            shutil.copytree(bundle, folder / bundle.name, dirs_exist_ok=True)
    _copies[src] = copy
    return copy


class ServerExited(RuntimeError):
    """The server process ended while it was being started."""


def listening_port(proc: subprocess.Popen, log_path: Path | None, timeout: float = START_TIMEOUT) -> int:
    """The port server process `proc` (started with --port 0, or a given port) has bound: from its start-up
    log line, else from /proc. Being the port of this very process, a server that another test run
    started meanwhile can never be mistaken for it. Raises if the process exits or binds nothing in time."""
    deadline = time.monotonic() + timeout
    while True:
        port = port_from_log(log_path) or port_from_proc(proc.pid)
        if port:
            return port
        if proc.poll() is not None:
            raise ServerExited(f"server exited with {proc.returncode} before listening")
        if time.monotonic() > deadline:
            raise RuntimeError(f"server did not start listening within {timeout}s")
        time.sleep(0.05)


def wait_healthy(proc: subprocess.Popen, url: str, timeout: float = START_TIMEOUT, **request_args) -> None:
    """Polls GET {url}/healthz until it answers 200 (the process must stay alive meanwhile). `request_args`
    go to requests.get (headers=, verify=)."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        if proc.poll() is not None:
            raise ServerExited(f"server exited with {proc.returncode} while starting")
        try:
            r = requests.get(url + "/healthz", timeout=10, **request_args)
            if r.status_code == 200:
                return
            last = f"status {r.status_code}"
        except requests.RequestException as e:
            last = repr(e)
        if time.monotonic() > deadline:
            raise RuntimeError(f"server did not become healthy within {timeout}s (last: {last})")
        time.sleep(0.05)


class ServerProcess:
    """One `gradserve serve --host 127.0.0.1 --port 0 --data-dir <data_dir> <extra_args>` process.

    data_dir: the data directory (default: a fresh temporary one, removed at exit). env: extra environment
    (GRADSERVE_API_KEY of the caller's environment is never passed on). binary: the binary to copy (default
    $GRADSERVE_BIN, else the release build). scheme / health_args: for a TLS server (scheme "https",
    health_args={"verify": cert}) or one that answers only a given Host (health_args={"headers": {...}},
    where "{port}" in a header value is replaced by the port)."""

    def __init__(
        self,
        data_dir: str | Path | None = None,
        extra_args: list[str] | None = None,
        env: dict | None = None,
        *,
        binary: str | Path | None = None,
        scheme: str = "http",
        health_args: dict | None = None,
    ):
        self.data_dir = Path(data_dir) if data_dir is not None else temporary_dir("gs-data-")
        self.extra_args = list(extra_args or [])
        self.env = env
        self.binary = binary
        self.scheme = scheme
        self.health_args = dict(health_args or {})
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.log_path: Path | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def command(self, port: int | None = None) -> list[str]:
        return [
            str(server_binary(self.binary)), "serve", "--host", "127.0.0.1", "--port", str(port or 0),
            "--data-dir", str(self.data_dir), *self.extra_args,
        ]

    def _health_args(self) -> dict:
        args = dict(self.health_args)
        if "headers" in args:
            args["headers"] = {k: v.format(port=self.port) for k, v in args["headers"].items()}
        return args

    def start(self, timeout: float = START_TIMEOUT, port: int | None = None) -> "ServerProcess":
        """Starts the server and waits (up to `timeout`) for its port and a 200 from /healthz; raises
        RuntimeError with the log's end otherwise. With `port` (a restart that keeps its URL) the port may
        still be held for a moment, or taken meanwhile: the start is then tried again, up to 3 times."""
        attempts = 1 if port is None else 3
        for attempt in range(attempts):
            if attempt:
                time.sleep(1.0)
            try:
                self._start_once(timeout, port)
                return self
            except ServerExited as e:
                if attempt == attempts - 1:
                    raise RuntimeError(f"{e}: {self.log()}") from None
        raise AssertionError("unreachable")

    def _start_once(self, timeout: float, port: int | None) -> None:
        fd, log = tempfile.mkstemp(prefix="gs-log-", suffix=".txt")
        os.close(fd)
        self.log_path = Path(log)
        _temporary.append(self.log_path)
        self._log = open(self.log_path, "wb")
        env = dict(os.environ)
        env.pop("GRADSERVE_API_KEY", None)
        env.update(self.env or {})
        self.proc = subprocess.Popen(self.command(port), stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env)
        self.port = None
        deadline = time.monotonic() + timeout
        try:
            self.port = listening_port(self.proc, self.log_path, timeout)
            if port is not None and self.port != port:
                raise RuntimeError(f"server listens on {self.port}, not on the requested {port}")
            wait_healthy(self.proc, self.url, max(1.0, deadline - time.monotonic()), **self._health_args())
        except ServerExited:
            self.stop()
            raise
        except RuntimeError as e:
            self.stop()
            raise RuntimeError(f"{e}: {self.log()}") from None

    def log(self, n: int = 4000) -> str:
        """The end of the server's log."""
        try:
            return self.log_path.read_text(errors="replace")[-n:] if self.log_path else ""
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (this process only, by its pid), SIGKILL after `timeout`; returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self._log and not self._log.closed:
            self._log.close()
        return self.proc.returncode

    def restart(self, fresh_data: bool = False) -> "ServerProcess":
        """Stops and starts again on the same port (optionally with an empty data directory)."""
        port = self.port
        self.stop()
        if fresh_data:
            self.data_dir = temporary_dir("gs-data-")
        return self.start(port=port)

    def __enter__(self) -> "ServerProcess":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


class FloorProcess(ServerProcess):
    """`gradserve floor`: the transport floor (the service's HTTP stack answering stored bytes, no computation;
    bench/transport.py). The same start, port discovery and stop as a server."""

    def command(self, port: int | None = None) -> list[str]:
        return [str(server_binary(self.binary)), "floor", "--host", "127.0.0.1", "--port", str(port or 0), *self.extra_args]
