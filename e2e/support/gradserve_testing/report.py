"""What bench scripts report: the machine they ran on, and their --json output."""

from __future__ import annotations

import platform
from typing import Callable


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_json_text(text: str, path: str, log: Callable[[str], None], fenced: bool = False) -> None:
    """--json PATH: `text` into the file PATH (and a "wrote PATH" line to `log`), or to stdout for "-"
    (inside a ```json fence with `fenced`)."""
    if path == "-":
        print("\n```json\n" + text + "\n```" if fenced else text)
        return
    with open(path, "w") as f:
        f.write(text + "\n")
    log(f"wrote {path}")
