"""Resident set sizes of a process, from /proc/<pid>/status (Linux); None elsewhere."""

from __future__ import annotations


def _status_bytes(pid: int, field: str) -> int | None:
    """A size field (`VmRSS`, `VmHWM`, …) of /proc/<pid>/status in bytes, or None without /proc."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def peak_rss_bytes(pid: int) -> int | None:
    """Process `pid`'s peak resident set size (VmHWM), or None without /proc."""
    return _status_bytes(pid, "VmHWM")


def vm_rss(pid: int) -> int | None:
    """Process `pid`'s resident set size now (VmRSS), or None without /proc."""
    return _status_bytes(pid, "VmRSS")
