"""`fedready pipeline`: train -> evaluate -> compress -> sign -> publish -> device, and again (idempotent)."""

import json

import pytest
from typer.testing import CliRunner

from fedready.cli import app

pytestmark = pytest.mark.slow


def test_pipeline_runs_end_to_end_and_reruns_without_redoing_the_training(pipeline_run):
    tmp_path, args, first = pipeline_run  # shared with tests/security (the pipeline's device)
    assert first.exit_code == 0, first.output
    res = json.loads(first.stdout)
    assert res["train"]["epsilon"] <= 1.0 + 1e-9
    assert (tmp_path / "runs" / "pipeline" / "model_card.html").exists()
    assert (tmp_path / "runs" / "pipeline" / "compression" / "compression.json").exists()
    art = tmp_path / "artifacts" / "1.0.0"
    assert (art / "model.onnx").exists() and (art / "provenance.json").exists()
    assert res["device"]["version"] == "1.0.0" and len(res["device"]["predictions"]) == 5
    # a second run finds everything in place: same model, same artifact bytes, device up to date
    second = CliRunner().invoke(app, args)
    assert second.exit_code == 0, second.output
    again = json.loads(second.stdout)
    assert again["train"]["model_digest"] == res["train"]["model_digest"]
    assert "already trained" in second.stderr
    assert [p["prediction"] for p in again["device"]["predictions"]] == [
        p["prediction"] for p in res["device"]["predictions"]
    ]
