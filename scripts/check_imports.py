#!/usr/bin/env python3
"""Each Swift target declares exactly the modules it imports.

SwiftPM's `--explicit-target-dependency-import-check error` (also run by scripts/test.sh) only
catches imports of targets outside a target's dependency closure; a module reachable through
another dependency passes it. This check is exact, in both directions: every module a target
imports is one of its declared dependencies (target or product, which here carry the module's
name), and every declared dependency is imported somewhere in the target. Toolchain modules
(Foundation, Dispatch, Synchronization, Testing, XCTest, Glibc, Darwin) need no declaration.

Usage: scripts/check_imports.py   (from anywhere; reads `swift package dump-package`)
"""
import json
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
TOOLCHAIN = {"Foundation", "FoundationEssentials", "Dispatch", "Synchronization", "Testing", "XCTest", "Glibc", "Musl", "Darwin", "_Concurrency"}
IMPORT = re.compile(r"^\s*(?:@\w+(?:\([^)]*\))?\s+)*import\s+(?:(?:struct|class|enum|protocol|func|var|let|typealias)\s+)?([A-Za-z_][A-Za-z0-9_]*)", re.M)


def main() -> int:
    manifest = json.loads(subprocess.run(["swift", "package", "dump-package"], cwd=ROOT, check=True, capture_output=True, text=True).stdout)
    problems = []
    for target in manifest["targets"]:
        if target["type"] == "system":
            continue
        name = target["name"]
        folder = ROOT / (target.get("path") or ("Tests" if target["type"] == "test" else "Sources") + "/" + name)
        declared = {next(iter(dep.values()))[0] for dep in target["dependencies"]}
        imported = set()
        for source in folder.rglob("*.swift"):
            imported |= set(IMPORT.findall(source.read_text(encoding="utf-8")))
        imported -= TOOLCHAIN
        for module in sorted(imported - declared):
            problems.append(f"{name} imports {module} without declaring it in Package.swift")
        for module in sorted(declared - imported):
            problems.append(f"{name} declares {module} but no file of it imports it")
    for p in problems:
        print(p, file=sys.stderr)
    if not problems:
        print(f"imports match the declared dependencies of {sum(t['type'] != 'system' for t in manifest['targets'])} targets")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
