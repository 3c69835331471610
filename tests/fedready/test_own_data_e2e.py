"""Your own data and model, end to end: `fedready pipeline --data ... --model module:factory`."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fedready.cli import app

pytestmark = pytest.mark.slow


def _pipeline(task, out, *extra):
    # a 2-round model on 3 small clients is not meant to pass the gates: it is published with a recorded
    # override, so the test reaches the device; the decision itself is still made and reported
    args = ["pipeline", "--data", str(task["data"]), "--schema", str(task["schema"]), "--clients", "3", "--rounds",
            "2", "--out", str(out), "--json", "--force", "--reason", "test: the device step of a 2-round model",
            *extra]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output[-3000:]
    out = json.loads(res.stdout)
    assert out["publish"]["decision"] in {"passed", "failed", "undecided"} and out["publish"]["channels"]
    return res, out


def test_own_multiclass_data_and_own_batchnorm_model_go_from_training_to_the_device(multiclass_task, tmp_path):
    res, out = _pipeline(multiclass_task, tmp_path, "--test", str(multiclass_task["test"]), "--model",
                         "fedready_test_models:residual_batchnorm")  # fmt: skip
    assert "BatchNorm1d replaced with GroupNorm for Opacus" in res.stderr
    assert 0 < out["train"]["epsilon"] <= 1.0 + 1e-9
    run = tmp_path / "runs" / "pipeline"
    assert json.loads((run / "schema.json").read_text())["name"] == "synthetic-3"
    report = json.loads((run / "evaluation.json").read_text())
    assert report["metrics"]["classes"] == ["0", "1", "2"] and report["policy"]["name"] == "fedready-default"
    comp = json.loads((run / "compression" / "compression.json").read_text())
    names = {v["name"] for v in comp["variants"]}
    assert {"fp32", "int8-dynamic", "int8-static", "prune-unstructured-0.5", "student-64"} <= names
    assert not any(n.startswith("prune-structured") for n in names)
    assert [s["variant"] for s in comp["skipped"]] == ["prune-structured"]
    assert "skipped prune-structured" in res.stderr or "prune-structured" in json.dumps(out)
    assert (tmp_path / "artifacts" / "1.0.0" / "model.onnx").exists()
    preds = out["device"]["predictions"]
    assert len(preds) == 5 and all(p["label"] in {"0", "1", "2"} and len(p["probabilities"]) == 3 for p in preds)
    assert all(abs(sum(p["probabilities"].values()) - 1) < 1e-4 for p in preds)


def test_own_binary_data_with_a_held_out_fraction(binary_task, tmp_path):
    import fedready

    assert callable(fedready.pipeline) and callable(fedready.simulate)  # no submodule shadows the API
    res, out = _pipeline(binary_task, tmp_path, "--test-fraction", "0.25", "--model", "mlp")
    assert "a seeded, stratified 0.25 of" in res.stderr
    preds = out["device"]["predictions"]
    assert {p["label"] for p in preds} <= {"yes", "no"} and all(0 <= p["probability"] <= 1 for p in preds)
    report = json.loads((tmp_path / "runs" / "pipeline" / "evaluation.json").read_text())
    assert report["mitigation"]["attribute"] == "group"  # binary: post-processing for the sensitive attribute
    gates = {g["gate"] for g in report["gates"]}
    assert "max_equalized_odds_difference[group]" in gates  # the default policy's "*", filled in by the schema


def test_a_sensitive_group_of_three_rows_all_of_one_label_runs_the_pipeline_to_the_end(tmp_path):
    from tests.conftest import write_task

    task = write_task(tmp_path / "task", rows=900, test_rows=400)
    schema = task["schema"].read_text().replace('categories = ["A", "B"]', 'categories = ["A", "B", "C"]')
    task["schema"].write_text(schema)
    for part, rows in (("test", ["40,30000,C,red,0.5,yes"] * 3), ("data", ["35,20000,C,blue,0.1,no"] * 3)):
        task[part].write_text(task[part].read_text() + "\n".join(rows) + "\n")
    res, out = _pipeline(task, tmp_path / "out", "--test", str(task["test"]), "--model", "logreg", "--force",
                         "--reason", "test: a 2-round model")  # fmt: skip
    line = ("threshold post-processing: group 'C' (3 benchmark rows, one label) of 'group' too small for a rule of "
            "its own (under 5 rows of a label): skipped, it keeps the plain decision (score > 0.5)")  # fmt: skip
    assert f"    {line}" in res.stderr.splitlines(), res.stderr[-3000:]
    run = tmp_path / "out" / "runs" / "pipeline"
    rule = json.loads((run / "thresholds.json").read_text())
    assert rule["skipped"] == ["C"] and set(rule["groups"]) == {"A", "B", "C"}
    assert "Threshold post-processing: group 'C' (3 benchmark rows, one label)" in (run / "model_card.md").read_text()
    assert len(out["device"]["predictions"]) == 5
