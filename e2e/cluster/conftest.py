"""The multi-replica suites (e2e/cluster): shared test support on sys.path, the report printed at the end.

Tests append lines to `REPORT` (answers by replica and status, drain timelines); pytest prints them in its
terminal summary, so CI logs show them without -s.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))

REPORT: list[str] = []


def pytest_terminal_summary(terminalreporter):
    if REPORT:
        terminalreporter.section("cluster report")
        for line in REPORT:
            terminalreporter.write_line(line)
