"""`fedready status`: a run's outcome as an exit code, for scripts around `flwr run` (which exits 0)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from fedready.cli import app


def _summary(folder, **fields):
    folder.mkdir()
    (folder / "summary.json").write_text(json.dumps(fields), encoding="utf-8")
    return folder


def test_failed_run_exits_1_with_its_reason(tmp_path):
    run = _summary(tmp_path / "r", status="failed", reason="no round aggregated any update",
                   first_client_error="round 1: bundle refused", accuracy=None)  # fmt: skip
    out = CliRunner().invoke(app, ["status", str(run)])
    assert out.exit_code == 1 and "no round aggregated" in out.output and "bundle refused" in out.output


def test_completed_run_exits_0_with_its_numbers(tmp_path):
    run = _summary(tmp_path / "r", status="completed", rounds_completed=3, accuracy=0.81234, dp=True, epsilon=0.9)
    out = CliRunner().invoke(app, ["status", str(run)])
    assert out.exit_code == 0 and "accuracy 0.8123" in out.output and "epsilon 0.900" in out.output
    assert json.loads(CliRunner().invoke(app, ["status", str(run), "--json"]).output)["rounds_completed"] == 3


def test_a_folder_without_a_summary_is_a_one_line_error(tmp_path):
    out = CliRunner().invoke(app, ["status", str(tmp_path)])
    assert out.exit_code == 2 and "no summary.json" in out.output and "Traceback" not in out.output
