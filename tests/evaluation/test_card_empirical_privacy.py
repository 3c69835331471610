"""The model card's "empirical privacy" line: present where an audit exists, refreshed when one is recorded."""

from __future__ import annotations

import json
import shutil

import pytest

from fedready.evaluation.card import record_audit
from fedready.privacy.auditing import AUDIT_FILE

pytestmark = pytest.mark.slow  # shares the session's evaluated run


def _audit(level: str, bound: float, accounted: float | None) -> dict:
    exceeds = accounted is not None and bound > accounted
    return {"level": level, "epsilon_lower_bound": bound, "delta": 1e-5, "confidence": 0.95, "canaries": 1000,
            "accounted": {"epsilon": accounted}, "exceeds_accounted": exceeds}  # fmt: skip


def test_recording_an_audit_adds_the_empirical_privacy_line_to_the_card(evaluated_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(evaluated_run[0], run)
    before = (run / "model_card.md").read_text()
    assert "empirical privacy" not in before
    record_audit(_audit("client", 4.389, None), run)
    record_audit(_audit("sample", 0.0, 0.94), run)
    card = (run / "model_card.md").read_text()
    assert "empirical privacy (client level): epsilon >= 4.389 at delta 1e-05 (95% confidence" in card
    assert "vs no epsilon accounted" in card and "1000 canary clients" in card
    assert "empirical privacy (sample level): epsilon >= 0.000" in card and "vs accounted 0.940" in card
    assert "ABOVE" not in card and "empirical privacy" in (run / "model_card.html").read_text()
    doc = json.loads((run / AUDIT_FILE).read_text())
    assert set(doc["audits"]) == {"client", "sample"}  # the second level kept the first
    record_audit(_audit("client", 2.5, 1.84), run)  # a bound above the accounted epsilon is called out
    assert "ABOVE the accounted epsilon" in (run / "model_card.md").read_text()
