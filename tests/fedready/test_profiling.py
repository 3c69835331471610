"""Phase timings for benchmarks/profile_round.py: written only when asked for, and never data."""

from __future__ import annotations

import json
import time

from fedready import profiling


def test_nothing_is_written_unless_profiling_is_on(tmp_path, monkeypatch):
    monkeypatch.setattr(profiling, "_PATH", None)
    with profiling.span("server", "x", round=1):
        pass
    profiling.record("client", "y", 0.1)
    laps = profiling.Laps("server", round=1)
    laps("z")
    assert not profiling.enabled() and list(tmp_path.iterdir()) == []


def test_spans_and_laps_record_one_line_per_phase(tmp_path, monkeypatch):
    out = tmp_path / "profile.jsonl"
    monkeypatch.setattr(profiling, "_PATH", str(out))
    with profiling.span("client", "state write", round=3, client=7):
        time.sleep(0.01)
    inner = [0.0]
    laps = profiling.Laps("server", round=3, inner=("audit log", lambda: inner[0]))
    time.sleep(0.01)
    inner[0] += 0.004  # time spent inside the next lap in the shared sub-phase
    laps("aggregation")
    laps.close()
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(x["side"], x["phase"], x["round"]) for x in lines] == [
        ("client", "state write", 3), ("server", "aggregation", 3), ("server", "(rest)", 3), ("server", "audit log", 3),
    ]  # fmt: skip
    assert lines[0]["client"] == "7" and lines[0]["seconds"] >= 0.01
    assert lines[1]["seconds"] >= 0.005 and lines[1]["seconds"] < lines[0]["seconds"] + 0.01
    assert lines[3]["seconds"] == 0.004  # the sub-phase, taken out of the lap it happened in
    assert set(lines[0]) == {"side", "phase", "round", "client", "seconds", "pid"}  # names and durations only


def test_a_profile_that_cannot_be_written_never_fails_the_run(tmp_path, monkeypatch):
    monkeypatch.setattr(profiling, "_PATH", str(tmp_path / "no-such-folder" / "profile.jsonl"))
    with profiling.span("client", "state write", round=1):
        pass
    profiling.record("server", "aggregation", 0.1, round=1)
    assert not (tmp_path / "no-such-folder").exists()
