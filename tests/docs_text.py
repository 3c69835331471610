"""The documentation's text, wherever a section now lives: the README or a page of the docs site (docs/)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def pages() -> list[Path]:
    """The README, then every Markdown page under docs/ (the site's sources)."""
    return [README, *sorted((ROOT / "docs").rglob("*.md"))]


def _find(heading: str) -> tuple[str, int, int]:
    """(page text, start of the heading line, its level) of the one page that has ``heading`` at any level."""
    pattern = re.compile(rf"^(#+) {re.escape(heading)}\n", re.M)
    hits = [(p.read_text(encoding="utf-8"), m) for p in pages() for m in [pattern.search(p.read_text(encoding="utf-8"))]
            if m is not None]  # fmt: skip
    assert len(hits) == 1, f"heading '{heading}' in {len(hits)} pages of README.md and docs/, expected exactly one"
    text, m = hits[0]
    return text, m.start(), len(m.group(1))


def section(heading: str) -> str:
    """The section under ``heading`` (without leading #'s), up to the next heading of the same or a higher level."""
    text, start, level = _find(heading)
    fence, out = False, []
    for i, line in enumerate(text[start:].splitlines(keepends=True)):
        if line.startswith("```"):
            fence = not fence
        m = re.match(r"(#+) ", line)
        if i and not fence and m and len(m.group(1)) <= level:
            break
        out.append(line)
    return "".join(out)


def after(heading: str) -> str:
    """The page's text from ``heading`` to its end (what follows a section too)."""
    text, start, _ = _find(heading)
    return text[start:]
