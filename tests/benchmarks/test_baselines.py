"""The benchmarks' baselines do the work they are compared against (a baseline that fails is not fast)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"

pytestmark = pytest.mark.slow


def test_bare_flower_app_trains_every_sampled_client_and_learns(tmp_path):
    out = subprocess.run(
        [sys.executable, str(BENCH / "bare_flower" / "app.py"), "--clients", "3", "--rounds", "2", "--noise", "1.0"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["updates"] == 3 * 2 and result["failed"] == 0
    by_round = result["accuracy_by_round"]
    assert by_round["2"] > by_round["0"] + 0.2  # the untrained model sits at 36% on Adult's test split


def test_dp_overhead_reports_ghost_clipping_as_correct_and_what_fedready_uses():
    out = subprocess.run(
        [sys.executable, str(BENCH / "dp_overhead.py"), "--repeat", "1", "--models", "mlp", "--federated-rounds", "0"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    data = json.loads(out.stdout)
    (r,) = data["results"]
    assert data["federated_round"] is None  # skipped here: the suite has its own simulate end-to-end tests
    assert data["client_round"]["dp_ms"] > 0 and data["client_round"]["non_private_ms"] > 0
    assert r["ghost_matches_hooks"] is True and r["fedready_default_mode"] == "ghost"
    assert r["non_private_ms"] > 0 and r["dp_ghost_ms"] > 0 and r["dp_hooks_ms"] > 0
