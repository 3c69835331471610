"""The "What leaves a client" table (docs/reference/privacy.md), and the keys clients really sent (their wire logs)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.docs_text import section

HEADING = "What leaves a client"


def readme_wire_keys() -> set[str]:
    """Every ``record.key`` the table lists (``record.*`` for a record listed as a whole)."""
    keys = set()
    for line in section(HEADING).splitlines():
        if not line.startswith("|") or line.startswith("|---"):
            continue
        first = line.split("|")[1]
        keys |= set(re.findall(r"`([A-Za-z0-9_.*/<>-]+\.[A-Za-z0-9_.*/<>-]+)`", first))
    return keys


def _matches(key: str, allowed: set[str]) -> bool:
    if key in allowed:
        return True
    # a listed prefix pattern such as `metrics.counts/<attribute>` or `metrics.profile/feature/<column>`
    return any("<" in a and key.startswith(a.split("<", 1)[0]) for a in allowed)


def sent_keys(wire_log: Path) -> set[str]:
    """``record.key`` of every key in every message the log recorded (``record.*`` for model arrays)."""
    out = set()
    for line in Path(wire_log).read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        for name, rec in entry["records"].items():
            if rec["kind"] == "ArrayRecord":
                if rec["keys"]:  # SecAgg+ clears `fitres.parameters` after masking: an empty record carries nothing
                    out.add(f"{name}.*")
            else:
                out |= {f"{name}.{k}" for k in rec["keys"]}
    return out


def unlisted(wire_log: Path) -> set[str]:
    """Keys a client sent that the table does not list.

    Under SecAgg+ Flower's legacy path carries the client's metrics in the record ``fitres.metrics``:
    those keys are checked against the ``metrics.`` rows.
    """
    allowed = readme_wire_keys()
    sent = {"metrics." + k.removeprefix("fitres.metrics.") if k.startswith("fitres.metrics.") else k
            for k in sent_keys(wire_log)}  # fmt: skip
    return {k for k in sent if not _matches(k, allowed)}
