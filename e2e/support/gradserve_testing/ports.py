"""Which port a `gradserve serve --port 0` process has bound, read back from the process itself.

The one copy for every suite and bench script that starts a server (through `gradserve_testing.server`):
standard library only.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

LISTENING = re.compile(rb"listening on \S+:(\d+)")


def port_from_log(log_path: Path | None) -> int | None:
    """The port in the server's start-up line (Hummingbird: "Server started and listening on 127.0.0.1:41234")."""
    try:
        m = LISTENING.search(log_path.read_bytes()) if log_path else None
    except OSError:
        return None
    return int(m.group(1)) if m else None


def port_from_proc(pid: int) -> int | None:
    """The one TCP port process `pid` listens on, from /proc (Linux), or None."""
    try:
        inodes = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
        ports = set()
        for table in ("tcp", "tcp6"):
            try:
                with open(f"/proc/{pid}/net/{table}") as f:
                    rows = f.read().splitlines()[1:]
            except OSError:
                continue
            for row in rows:
                cols = row.split()
                # local_address is hex "ADDR:PORT"; state 0A is LISTEN; column 9 is the socket's inode
                if len(cols) > 9 and cols[3] == "0A" and cols[9] in inodes:
                    ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    except OSError:
        return None
    return ports.pop() if len(ports) == 1 else None
