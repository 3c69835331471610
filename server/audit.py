"""An append-only, hash-chained audit log (JSON lines).

Each entry carries ``prev``, the sha256 of the previous line, so editing,
removing or reordering any line breaks the chain from that point on.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

__all__ = ["AuditLog", "verify_chain"]

GENESIS = "0" * 64


def _digest(line: str) -> str:
    return hashlib.sha256(line.encode("utf-8")).hexdigest()


class AuditLog:
    """Append events to ``path``; each line is one JSON object."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._prev = GENESIS
        if self.path.exists():
            lines = self.path.read_text(encoding="utf-8").splitlines()
            if lines:
                self._prev = _digest(lines[-1])

    def append(self, event: str, **fields: Any) -> None:
        """Append one event (``event`` names it; ``fields`` are its details)."""
        entry = {"event": event, "time": time.time(), **fields, "prev": self._prev}
        line = json.dumps(entry, sort_keys=True, default=str)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._prev = _digest(line)


def verify_chain(path: Path) -> tuple[bool, int | None]:
    """Check the chain; return (ok, 1-based number of the first bad line or None)."""
    prev = GENESIS
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            return False, n
        if entry.get("prev") != prev:
            return False, n
        prev = _digest(line)
    return True, None
