"""nginx in front of gradserve replicas, as the test's stand-in for a Kubernetes Service: Debian's nginx, run in the
foreground by this process (no system service, no port 80) with deploy/nginx/gradserve.conf included as shipped.

nginx cannot report a port it chose, so its port is found by binding port 0 and closing it just before nginx binds
it; should another process take it in between, nginx exits with "Address already in use" and the start is tried
again on a fresh port (at most 5 times). Every wait is bounded.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import requests

from gradserve_testing import REPO
from gradserve_testing.server import temporary_dir

INCLUDE = REPO / "deploy" / "nginx" / "gradserve.conf"
START_TIMEOUT = 20.0


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.path.exists(p)), None)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nginx:
    """nginx balancing over `upstreams` (host:port strings) with the shipped include, in a private folder."""

    def __init__(self, upstreams: list[str], fail_timeout: str = "3s"):
        self.upstreams = list(upstreams)
        self.fail_timeout = fail_timeout
        self.dir = temporary_dir("gs-nginx-")
        os.chmod(self.dir, 0o755)  # nginx's workers run as an unprivileged user when started by root
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def access_log(self) -> Path:
        return self.dir / "access.log"

    def _write_config(self, port: int) -> Path:
        servers = "\n    ".join(f"server {u} max_fails=1 fail_timeout={self.fail_timeout};" for u in self.upstreams)
        lines = []
        for line in INCLUDE.read_text().splitlines():  # placeholders outside comments only
            if not line.lstrip().startswith("#"):
                line = line.replace("@SERVERS@", servers).replace("@LISTEN@", f"127.0.0.1:{port}")
                assert "@" not in line.split("#")[0], f"unreplaced placeholder: {line}"
            lines.append(line)
        include = "\n".join(lines) + "\n"
        (self.dir / "gradserve.conf").write_text(include)
        for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.dir / d).mkdir(exist_ok=True)
        conf = self.dir / "nginx.conf"
        conf.write_text(
            f"""daemon off;
worker_processes 1;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log info;
events {{ worker_connections 512; }}
http {{
    client_body_temp_path {self.dir}/body;
    proxy_temp_path {self.dir}/proxy;
    fastcgi_temp_path {self.dir}/fastcgi;
    uwsgi_temp_path {self.dir}/uwsgi;
    scgi_temp_path {self.dir}/scgi;
    include {self.dir}/gradserve.conf;
    access_log {self.access_log} gradserve;
}}
"""
        )
        return conf

    def start(self) -> "Nginx":
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError("nginx is not installed (apt-get install nginx-light)")
        last = ""
        for _ in range(5):
            port = _free_port()
            conf = self._write_config(port)
            log = open(self.dir / "stderr.log", "wb")
            self.proc = subprocess.Popen(
                [binary, "-p", str(self.dir), "-e", str(self.dir / "error.log"), "-c", str(conf)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: the workers can be stopped with the master
            )
            self.port = port
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    # any answer from nginx itself (even 502 while no replica is up) means it listens
                    requests.get(self.url + "/healthz", timeout=2)
                    return self
                except requests.ConnectionError:
                    time.sleep(0.05)
            last = self.errors()
            self.stop()
            if "Address already in use" not in last:
                break
        raise RuntimeError(f"nginx did not start: {last}")

    def errors(self) -> str:
        out = []
        for name in ("stderr.log", "error.log"):
            try:
                out.append((self.dir / name).read_text(errors="replace")[-3000:])
            except OSError:
                pass
        return "\n".join(out)

    def stop(self) -> None:
        """SIGQUIT (graceful) to this nginx's master by pid; after 10 s SIGKILL to its process group (the
        master and its workers, which this process started in a session of their own)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGQUIT)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)

    def __enter__(self) -> "Nginx":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
