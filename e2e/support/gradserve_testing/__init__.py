"""Test support shared by every Python suite and bench script of this repository.

- `server`: `ServerProcess`, one `gradserve serve` on a port of its own (--port 0, read back from that very
  process by `ports`), run from a private copy of the binary (`server_binary`).
- `ports`: which port a server process listens on (standard library only).
- `rss`: a process's resident set size (now and peak), from /proc.
- `cpu`: a process's and the machine's CPU seconds, from /proc.
- `toymlp`: the seed's ToyMLP (torchcfm's MLP(784, w=64, time_varying=True) with SELU) as a PyTorch module.

Importing the package puts this checkout's Python client (clients/python) first on sys.path, so suites and
bench scripts use the client of the same checkout (its safetensors codec and PyTorch export among others).

Callers put e2e/support on sys.path (`sys.path.insert(0, str(<repo>/"e2e"/"support"))`) and import from here.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
CLIENT_DIR = REPO / "clients" / "python"

if str(CLIENT_DIR) not in sys.path:
    sys.path.insert(0, str(CLIENT_DIR))
