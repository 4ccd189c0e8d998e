#!/usr/bin/env python3
"""Checks every link in the repository's Markdown files. Standard library only; no network.

    python3 scripts/check_links.py                    # every Markdown file git knows (tracked, or new and not ignored)
    python3 scripts/check_links.py README.md docs/api.md
    python3 scripts/check_links.py --list-external    # also list the http(s) links (not fetched)

What is checked, in inline links and images `[text](target)`, reference definitions
`[name]: target`, autolinks `<target>` and HTML `href="…"` / `src="…"` (not inside code):

- a relative target (`docs/api.md`, `../bench/`, `/scripts/serve.sh` from the repository root)
  must exist as a file or folder, and must not lead out of the repository (`../` above the root,
  or a symlink pointing outside it);
- an `#anchor` into a Markdown file (or `#anchor` alone, into the same file) must be a heading
  anchor as GitHub generates it (lowercased, punctuation dropped, spaces to `-`, `-1`, `-2` … for
  repeated headings) or an explicit `<a name="…">` / `id="…"`; anchors into other files are not
  checked (GitHub's `#L10` line anchors, notebooks);
- `http://` and `https://` links are not fetched: `--list-external` prints them; other schemes
  (`mailto:` …) are skipped.

Exit status: 0 when every link resolves, 1 with the list of broken links, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

# --------------------------------------------------------------------------------------
# Finding the files
# --------------------------------------------------------------------------------------

SKIP_DIRS = {".git", ".build", ".swiftpm", "node_modules", "__pycache__", ".venv", "data"}


def repo_root(start: Path) -> Path:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"], cwd=start, capture_output=True, text=True, check=True
        ).stdout.strip()
        if out:
            return Path(out)
    except (OSError, subprocess.CalledProcessError):
        pass
    return Path(__file__).resolve().parent.parent


def markdown_files(root: Path) -> list[Path]:
    """Markdown files git tracks plus new ones it does not ignore (files deleted from the working
    tree are left out); without git, every *.md under the root outside build folders."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", "*.md", "*.markdown"],
            cwd=root, capture_output=True, check=True,
        ).stdout
        names = sorted({n for n in out.decode("utf-8", "surrogateescape").split("\0") if n})
        return [root / n for n in names if (root / n).is_file()]
    except (OSError, subprocess.CalledProcessError):
        found = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
            found += [Path(dirpath) / f for f in sorted(filenames) if f.endswith((".md", ".markdown"))]
        return found


# --------------------------------------------------------------------------------------
# Reading Markdown: code, headings, links
# --------------------------------------------------------------------------------------

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?[ \t]*$")
SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
CODE_SPAN = re.compile(r"(`+)(.+?)(?<!`)\1(?!`)", re.S)
HTML_ANCHOR = re.compile(r"""<a\s[^>]*?\bname\s*=\s*["']([^"']+)["']|\bid\s*=\s*["']([^"']+)["']""", re.I)
REF_DEF = re.compile(r"^ {0,3}\[([^\]]+)\]:\s*(<[^>]*>|\S+)")
AUTOLINK = re.compile(r"<((?:https?|ftp|mailto):[^>\s]+)>", re.I)
HTML_LINK = re.compile(r"""\b(?:href|src)\s*=\s*["']([^"']+)["']""", re.I)


def blank_code_spans(line: str) -> str:
    """The line with inline code replaced by spaces (so links inside code are not read)."""
    return CODE_SPAN.sub(lambda m: " " * len(m.group(0)), line)


@dataclass
class Line:
    number: int
    text: str  # with code spans blanked; fenced code lines are not kept


def prose_lines(text: str) -> tuple[list[Line], list[tuple[int, str]]]:
    """Lines outside fenced code (code spans blanked), and the headings as (line, raw text)."""
    lines: list[Line] = []
    headings: list[tuple[int, str]] = []
    fence: str | None = None
    previous: str | None = None  # the previous prose line, for setext headings
    for i, raw in enumerate(text.splitlines(), start=1):
        m = FENCE.match(raw)
        if fence is not None:
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) and raw.strip() == m.group(1):
                fence = None
            previous = None
            continue
        if m:
            fence = m.group(1)
            previous = None
            continue
        h = ATX.match(raw)
        if h:
            content = re.sub(r"[ \t]+#+[ \t]*$", "", h.group(2) or "")
            content = "" if re.fullmatch(r"#+", content) else content
            headings.append((i, content))
            previous = None
        elif previous is not None and SETEXT.match(raw) and previous.strip() and not previous.lstrip().startswith(("|", ">", "-", "*", "+")):
            headings.append((i - 1, previous.strip()))
            previous = None
        else:
            previous = raw if raw.strip() else None
        lines.append(Line(i, blank_code_spans(raw)))
    return lines, headings


def heading_text(raw: str) -> str:
    """The text GitHub renders for a heading's Markdown (code kept, markup dropped)."""
    out = []
    pos = 0
    for m in CODE_SPAN.finditer(raw):
        out.append(strip_markup(raw[pos:m.start()]))
        out.append(m.group(2).strip() if m.group(2).strip() else m.group(2))
        pos = m.end()
    out.append(strip_markup(raw[pos:]))
    return "".join(out)


def strip_markup(s: str) -> str:
    s = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", s)  # links and images: their text
    s = re.sub(r"!?\[([^\]]*)\]\[[^\]]*\]", r"\1", s)  # reference links
    s = re.sub(r"<[^>]+>", "", s)  # HTML tags
    s = re.sub(r"(?<![\w])_+|_+(?![\w])", "", s)  # _emphasis_ (underscores inside words stay)
    s = s.replace("\\", "")
    return s


def slug(text: str) -> str:
    """GitHub's anchor for a heading's rendered text (github-slugger): lowercase, keep letters,
    marks, numbers, connector punctuation (`_`), spaces and hyphens; each space becomes `-`."""
    kept = []
    for ch in text.lower():
        cat = unicodedata.category(ch)
        if ch in " -" or cat[0] in "LMN" or cat == "Pc":
            kept.append(ch)
    return "".join(kept).replace(" ", "-")


def anchors_of(text: str) -> set[str]:
    _, headings = prose_lines(text)
    seen: dict[str, int] = {}
    out: set[str] = set()
    for _, raw in headings:
        base = slug(heading_text(raw))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    for m in HTML_ANCHOR.finditer(text):
        out.add(m.group(1) or m.group(2))
    return out


def inline_targets(line: str) -> list[str]:
    """Targets of `[text](target)` and `![alt](target)` on one line (balanced parentheses,
    `<…>` destinations, optional titles)."""
    targets = []
    i = 0
    while True:
        j = line.find("](", i)
        if j < 0:
            return targets
        if "[" not in line[:j]:
            i = j + 2
            continue
        k = j + 2
        while k < len(line) and line[k] in " \t":
            k += 1
        if k < len(line) and line[k] == "<":
            end = line.find(">", k)
            if end < 0:
                i = k
                continue
            targets.append(line[k + 1:end])
            i = end + 1
            continue
        depth = 0
        start = k
        while k < len(line):
            c = line[k]
            if c == "\\":
                k += 2
                continue
            if c == "(":
                depth += 1
            elif c == ")":
                if depth == 0:
                    break
                depth -= 1
            elif c in " \t" and depth == 0:
                break  # a title follows
            k += 1
        target = line[start:k]
        if target:
            targets.append(target)
        i = k + 1


@dataclass
class Link:
    file: Path
    line: int
    target: str


def links_in(path: Path, text: str) -> list[Link]:
    lines, _ = prose_lines(text)
    found: list[Link] = []
    for ln in lines:
        t = ln.text
        d = REF_DEF.match(t)
        if d:
            found.append(Link(path, ln.number, d.group(2).strip("<>")))
            continue
        for target in inline_targets(t):
            found.append(Link(path, ln.number, target))
        for m in AUTOLINK.finditer(t):
            found.append(Link(path, ln.number, m.group(1)))
        for m in HTML_LINK.finditer(t):
            found.append(Link(path, ln.number, m.group(1)))
    return found


# --------------------------------------------------------------------------------------
# Checking
# --------------------------------------------------------------------------------------

SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


class Checker:
    def __init__(self, root: Path):
        self.root = root.resolve()
        self.anchor_cache: dict[Path, set[str]] = {}

    def anchors(self, path: Path) -> set[str]:
        if path not in self.anchor_cache:
            self.anchor_cache[path] = anchors_of(path.read_text(encoding="utf-8", errors="replace"))
        return self.anchor_cache[path]

    def inside(self, p: Path) -> bool:
        try:
            p.relative_to(self.root)
            return True
        except ValueError:
            return False

    def check(self, link: Link) -> str | None:
        """None when the link resolves, else why not."""
        target = link.target.strip()
        if not target:
            return "empty link"
        if SCHEME.match(target):
            return None  # external: listed, not fetched
        path_part, _, anchor = target.partition("#")
        path_part = path_part.split("?", 1)[0]
        path_part = unquote(path_part)
        anchor = unquote(anchor)
        if path_part == "":
            dest = link.file
        elif path_part.startswith("/"):
            dest = Path(os.path.normpath(self.root / path_part.lstrip("/")))
        else:
            dest = Path(os.path.normpath(link.file.parent / path_part))
        if not self.inside(dest):
            return "leads out of the repository"
        if not dest.exists() and not dest.is_symlink():
            return "no such file or folder"
        if not self.inside(dest.resolve()):
            return "resolves (through a symlink) outside the repository"
        if not dest.exists():
            return "broken symlink"
        if anchor and dest.is_file() and dest.suffix.lower() in (".md", ".markdown"):
            if anchor not in self.anchors(dest):
                where = "this file" if dest == link.file else self.rel(dest)
                return f"no heading anchor #{anchor} in {where}"
        elif anchor and dest.is_dir():
            return f"an anchor (#{anchor}) on a folder"
        return None

    def rel(self, p: Path) -> str:
        try:
            return str(p.relative_to(self.root))
        except ValueError:
            return str(p)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("files", nargs="*", help="Markdown files to check (default: every one in the repository)")
    ap.add_argument("--root", type=Path, help="repository root (default: git's top level, else this script's parent folder's parent)")
    ap.add_argument("--list-external", action="store_true", help="also print every http(s) link (they are not fetched)")
    args = ap.parse_args(argv)

    root = (args.root or repo_root(Path.cwd())).resolve()
    if args.files:
        files = []
        for f in args.files:
            p = Path(f)
            p = (p if p.is_absolute() else Path.cwd() / p).resolve()
            if not p.is_file():
                print(f"check_links: {f}: no such file", file=sys.stderr)
                return 2
            files.append(p)
    else:
        files = [p.resolve() for p in markdown_files(root)]

    checker = Checker(root)
    broken: list[tuple[Link, str]] = []
    external: list[Link] = []
    total = 0
    for f in files:
        text = f.read_text(encoding="utf-8", errors="replace")
        for link in links_in(f, text):
            total += 1
            if re.match(r"^https?://", link.target.strip(), re.I):
                external.append(link)
                continue
            why = checker.check(link)
            if why:
                broken.append((link, why))

    if args.list_external:
        print(f"external links (not fetched): {len(external)}")
        for link in external:
            print(f"  {checker.rel(link.file)}:{link.line}: {link.target}")
    if broken:
        print(f"broken links: {len(broken)} of {total} in {len(files)} Markdown files")
        for link, why in broken:
            print(f"  {checker.rel(link.file)}:{link.line}: {link.target}: {why}")
        return 1
    print(f"ok: {total} links in {len(files)} Markdown files ({len(external)} external, not fetched)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
