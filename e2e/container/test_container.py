"""What the Dockerfile's runtime stage promises, checked in a root file system made like it (e2e/container/run_tests.sh
builds it and runs this inside a private network namespace): the image's ENTRYPOINT, run as the image's USER with
the root file system read-only except /data (and a tmpfs /tmp), answers /healthz and the HEALTHCHECK command, computes
a VJP that matches PyTorch, and keeps a registered model across a restart.

The ENTRYPOINT, USER and HEALTHCHECK are read from the Dockerfile itself, so the test runs what the image would.
Each server is `unshare --mount` (a private mount namespace: the root bound read-only onto itself, the data folder
bound onto /data, /proc, /dev, a tmpfs /tmp) then `chroot --userspec` into the root; the namespace goes when the
process does. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "e2e" / "support"))

from gradserve_testing.toymlp import toy_mlp  # noqa: E402

import gradserve  # noqa: E402

ROOT = Path(os.environ.get("GRADSERVE_CONTAINER_ROOT", "/nonexistent"))
pytestmark = pytest.mark.skipif(not (ROOT / "usr/local/bin/gradserve").exists(), reason="run through e2e/container/run_tests.sh")
START_TIMEOUT = 60.0


def dockerfile() -> dict:
    """ENTRYPOINT (exec form), USER and the HEALTHCHECK command of the Dockerfile's last (runtime) stage."""
    text = (REPO / "Dockerfile").read_text()
    runtime = text.split("\nFROM ")[-1]
    entry = json.loads(re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", runtime, re.M).group(1))
    user = re.search(r"^USER\s+(\S+)\s*$", runtime, re.M).group(1)
    health = re.search(r"^HEALTHCHECK\s.*?\bCMD\s+(.+)$", runtime, re.M).group(1)
    return {"entrypoint": entry, "user": user, "healthcheck": health}


def uid_of(user: str) -> tuple[int, int]:
    for line in (ROOT / "etc/passwd").read_text().splitlines():
        f = line.split(":")
        if f[0] == user or f[2] == user:
            return int(f[2]), int(f[3])
    raise AssertionError(f"USER {user} is not in the root's /etc/passwd (deploy/container/runtime-setup.sh)")


def port_of(entrypoint: list[str]) -> int:
    return int(entrypoint[entrypoint.index("--port") + 1])


def in_root(cmd: str, data: Path, uid: int, gid: int) -> list[str]:
    """`cmd` (a shell command line, run by the root's /bin/sh) in a private mount namespace: the root read-only,
    `data` on /data, then chroot as uid:gid. The last process is exec'd: its pid is the Popen's."""
    r = shlex.quote(str(ROOT))
    setup = " && ".join(
        [
            "mount --make-rprivate /",
            f"mount --bind {r} {r}",
            f"mount --bind {shlex.quote(str(data))} {r}/data",
            f"mount -t proc proc {r}/proc",
            f"mount --rbind /dev {r}/dev",
            f"mount -t tmpfs -o size=16m,mode=1777 tmpfs {r}/tmp",
            f"mount -o remount,bind,ro {r}",
            f"exec chroot --userspec={uid}:{gid} {r} /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/data /bin/sh -c {shlex.quote(cmd)}",
        ]
    )
    return ["unshare", "--mount", "--", "/bin/sh", "-c", setup]


class Container:
    """The image's ENTRYPOINT in the root, as its USER, with `data` as /data."""

    def __init__(self, data: Path):
        self.d = dockerfile()
        self.uid, self.gid = uid_of(self.d["user"])
        self.data = data
        self.port = port_of(self.d["entrypoint"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log = tempfile.NamedTemporaryFile(prefix="gs-container-log-", suffix=".txt", delete=False)

    def start(self) -> "Container":
        cmd = "exec " + " ".join(shlex.quote(a) for a in self.d["entrypoint"])
        self.proc = subprocess.Popen(in_root(cmd, self.data, self.uid, self.gid), stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited with {self.proc.returncode}: {self.text()}")
            try:
                if requests.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"no /healthz within {START_TIMEOUT} s: {self.text()}")
            time.sleep(0.05)

    def run(self, cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """A command in the same kind of root, as the same user (for the HEALTHCHECK and the checks)."""
        return subprocess.run(in_root(cmd, self.data, self.uid, self.gid), capture_output=True, text=True, timeout=timeout)

    def text(self) -> str:
        return Path(self.log.name).read_text(errors="replace")[-3000:]

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        return self.proc.returncode


@pytest.fixture
def data_dir():
    d = Path(tempfile.mkdtemp(prefix="gs-container-data-"))
    uid, gid = uid_of(dockerfile()["user"])
    os.chown(d, uid, gid)  # as the image's /data (runtime-setup.sh: chown gradserve /data)
    yield d
    subprocess.run(["rm", "-rf", str(d)], check=False)


def test_the_runtime_root_holds_what_the_binary_needs():
    """Every shared library the binary needs resolves in the root (the Swift runtime is linked in; OpenBLAS and
    the C++ runtime come from the runtime packages), and nothing else was installed by hand."""
    d = dockerfile()
    uid, gid = uid_of(d["user"])
    assert uid == 10001 and d["entrypoint"][0] == "gradserve"
    r = subprocess.run(["chroot", str(ROOT), "/usr/bin/ldd", "/usr/local/bin/gradserve"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "not found" not in r.stdout, r.stdout + r.stderr
    assert "libswiftCore" not in r.stdout, "the Swift runtime should be linked in (--static-swift-stdlib)"
    assert "libopenblas" in r.stdout, r.stdout
    assert (ROOT / "usr/local/bin/gradserve_GradServer.resources/openapi.yaml").exists()


def test_healthz_healthcheck_and_a_vjp_against_pytorch(data_dir):
    c = Container(data_dir).start()
    try:
        assert requests.get(c.url + "/healthz", timeout=5).json() == {"status": "ok"}
        hc = c.run(c.d["healthcheck"])
        assert hc.returncode == 0, f"HEALTHCHECK {c.d['healthcheck']}: {hc.returncode} {hc.stdout} {hc.stderr}"
        # the server runs as the image's user, and the root is read-only for it; /data is its own
        status = Path(f"/proc/{c.proc.pid}/status").read_text()
        assert re.search(rf"^Uid:\s+{c.uid}\s+{c.uid}\s+{c.uid}\s+{c.uid}$", status, re.M), status
        w = c.run("touch /usr/local/bin/x; echo $?; touch /x; echo $?; touch /data/x && echo data-ok")
        assert w.stdout.split() == ["1", "1", "data-ok"], w.stdout + w.stderr
        assert "Read-only file system" in w.stderr, w.stderr
        # a VJP of the seed's ToyMLP (float32 weights), checked against PyTorch in float64
        m32, m = toy_mlp(seed=5), toy_mlp(seed=5).double()
        rng = np.random.default_rng(0)
        x = rng.standard_normal((4, 784)).astype(np.float32)
        t = rng.random(4).astype(np.float32)
        v = rng.standard_normal((4, 784)).astype(np.float32)
        with gradserve.Client(c.url) as client:
            got = client.vjp(m32, x, t, v).grads.x
        xr = torch.from_numpy(x).double().requires_grad_(True)
        (want,) = torch.autograd.grad(m(xr, torch.from_numpy(t).double()), xr, grad_outputs=torch.from_numpy(v).double())
        err = np.linalg.norm(got - want.numpy()) / np.linalg.norm(want.numpy())
        assert err < 2e-5, f"VJP: norm-relative error {err:.2e} against PyTorch"
    finally:
        assert c.stop() == 0, c.text()


def test_a_registered_model_survives_a_restart(data_dir):
    m32, m = toy_mlp(seed=6), toy_mlp(seed=6).double()
    x = np.random.default_rng(1).standard_normal((3, 784)).astype(np.float32)
    t = np.linspace(0, 1, 3).astype(np.float32)
    c = Container(data_dir).start()
    try:
        with gradserve.Client(c.url) as client:
            mid = client.register(m32, name="survivor")
    finally:
        assert c.stop() == 0, c.text()
    files = list(data_dir.rglob("*.json"))
    assert files and all(f.stat().st_uid == c.uid for f in files), [(f, f.stat().st_uid) for f in files]
    c = Container(data_dir).start()
    try:
        with gradserve.Client(c.url) as other:  # a client that never registered it: the server must know it
            assert [(e.id, e.name) for e in other.models()] == [(mid, "survivor")]
            got = other.forward(mid, x, t).outputs
        want = m(torch.from_numpy(x).double(), torch.from_numpy(t).double()).detach().numpy()
        assert np.linalg.norm(got - want) / np.linalg.norm(want) < 2e-5
    finally:
        assert c.stop() == 0, c.text()
