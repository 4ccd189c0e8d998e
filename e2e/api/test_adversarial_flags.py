"""Adversarial suite: the hardening flags validated at start (a bad value exits naming the flag, before
listening), and --memory-limit alone a valid configuration.
"""

from __future__ import annotations

import subprocess

import pytest

from adversarial_support import MiB
from gs_helpers import START_TIMEOUT, get, server_binary



@pytest.mark.parametrize("args,flag", [
    (["--deadline", "inf"], "--deadline"),
    (["--deadline", "-1"], "--deadline"),
    (["--deadline=-1"], "--deadline"),
    (["--memory-limit", "abc"], "--memory-limit"),
    (["--max-request-memory", "64G", "--memory-limit", "1G"], "--max-request-memory"),
    (["--workers", "0"], "--workers"),
    (["--body-timeout", "nan"], "--body-timeout"),
    (["--write-timeout", "0"], "--write-timeout"),
    (["--max-connections", "0"], "--max-connections"),
    (["--max-request-gflop", "inf"], "--max-request-gflop"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_flags_validated_at_start(tmp_path, args, flag):
    proc = subprocess.Popen([str(server_binary()), "serve", "--host", "127.0.0.1", "--port", "0", "--data-dir", str(tmp_path),
                             *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = proc.communicate(timeout=START_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"{args}: the server kept running: {out.decode(errors='replace')[-1000:]}")
    text = out.decode(errors="replace")
    assert proc.returncode != 0, f"{args}: exit {proc.returncode}: {text}"
    assert flag in text, f"{args}: the message does not name {flag}: {text}"
    assert "listening" not in text.lower(), f"{args}: it listened before exiting: {text}"


def test_memory_limit_alone_starts(start_server):
    """--memory-limit below the default per-request limit (1 GiB), without --max-request-memory, is a valid
    configuration (so is a container whose cgroup limit makes the default budget smaller than 1 GiB): the
    server starts, with a per-request limit inside the budget."""
    s = start_server(["--memory-limit", "512M"])
    limits = get(s.url, "/v1/info").json()["limits"]
    assert limits["memory_limit_bytes"] == 512 * MiB, limits
    assert limits["max_request_memory_bytes"] <= limits["memory_limit_bytes"], limits
