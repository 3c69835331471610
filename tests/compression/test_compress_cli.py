"""`fedready compress` end to end on a short real run."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from fedready.cli import app
from fedready.compression import onnx_predict_proba

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    args = ["simulate", "--clients", "3", "--rounds", "3", "--model", "mlp-wide", "--no-dp", "--partitioner", "iid",
            "--local-steps", "20", "--batch-size", "128", "--lr", "0.3", "--out", str(out), "--name", "r",
            "--json"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    return out / "r"


def _compress(run, policy, *extra):
    return CliRunner().invoke(app, ["compress", str(run), "--gate", str(policy), "--epochs", "3", "--no-timing",
                                    *extra], terminal_width=200)  # fmt: skip


def test_selects_the_smallest_passing_variant_and_writes_everything(run, tmp_path):
    policy = tmp_path / "p.toml"
    policy.write_text("[gates]\nmin_accuracy = 0.75\n[variant_gates]\nmax_accuracy_loss = 0.02\n")
    res = _compress(run, policy, "--student-widths", "8")
    assert res.exit_code == 0, res.output
    folder = run / "compression"
    report = json.loads((folder / "compression.json").read_text())
    passing = [v for v in report["variants"] if v["passed"]]
    smallest = min(passing, key=lambda v: v["bytes"])
    assert report["selected"] == smallest["name"]
    # the selected variant was judged on its fidelity to the trained model, with intervals
    gates = {g["gate"]: g for g in smallest["gates"]}
    assert gates["max_accuracy_loss"]["outcome"] == "pass" and gates["max_accuracy_loss"]["hi"] <= 0.02
    assert all(v["decision"] != "passed" for v in report["variants"] if v["bytes"] < smallest["bytes"])
    assert report["model"]["decision"] == "not-run" and report["decision"] == "not-run"  # no evaluate yet
    assert (folder / "selected.onnx").read_bytes() == (folder / smallest["file"]).read_bytes()
    assert (folder / "compression.md").read_text().count("\n|") >= len(report["variants"])
    assert (folder / "size_vs_accuracy.png").stat().st_size > 10_000
    assert json.loads((folder / "thresholds.json").read_text())["attribute"] == "sex"
    assert {"fp32", "int8-dynamic", "int8-static", "student-8"} <= {v["name"] for v in report["variants"]}
    # every variant file is real ONNX that predicts like the report says
    from fedready.task import load_task

    x, y = load_task().x_test, load_task().y_test
    p = onnx_predict_proba((folder / "selected.onnx").read_bytes(), x)
    assert abs(float(np.mean((p >= 0.5) == y)) - smallest["accuracy"]) < 1e-9


def test_no_variant_passing_exits_1_and_says_why(run, tmp_path):
    policy = tmp_path / "p.toml"
    policy.write_text("[gates]\nmin_accuracy = 0.5\n[variant_gates]\nmax_accuracy_loss = -0.05\n")  # must gain 5 pt
    res = _compress(run, policy)
    assert res.exit_code == 1
    assert "passes its variant gates" in res.stderr and "max_accuracy_loss: fail" in res.stderr
    assert len([ln for ln in res.stderr.splitlines() if "no variant selected" in ln]) == 1
    assert json.loads((run / "compression" / "compression.json").read_text())["selected"] is None
    assert not (run / "compression" / "selected.onnx").exists()


def test_fp32_only_undecided_ships_as_judged_and_exits_3(run, tmp_path):
    # min_agreement 1.0: fp32 agrees with itself on every row, but a Wilson interval never reaches 1 from below, so
    # fp32 is undecided; any variant that disagrees once fails. Nothing passes; fp32 as judged (calibrated) ships.
    policy = tmp_path / "p.toml"
    policy.write_text("[gates]\nmin_accuracy = 0.5\n[variant_gates]\nmin_agreement = 1.0\n")
    res = _compress(run, policy)
    assert res.exit_code == 3, res.output
    folder = run / "compression"
    report = json.loads((folder / "compression.json").read_text())
    fp32 = next(v for v in report["variants"] if v["name"] == "fp32")
    assert fp32["decision"] == "undecided" and not any(v["passed"] for v in report["variants"])
    assert report["selected"] == "fp32" and report["selected_decision"] == "undecided"
    assert report["decision"] in ("undecided", "not-run")  # the model's own gates: not evaluated in this fixture
    assert (folder / "selected.onnx").read_bytes() == (folder / "fp32.onnx").read_bytes()
    assert "no variant passes" in res.stderr and "selected variant's gates: undecided" in res.stderr


def test_bad_option_is_one_line_exit_2(run):
    res = CliRunner().invoke(app, ["compress", str(run), "--student-widths", "wide"])
    assert res.exit_code == 2 and "student-widths" in res.stderr and "Traceback" not in res.output


@pytest.mark.parametrize(("model", "shipped", "expected"), [
    ("passed", "passed", "passed"), ("passed", "undecided", "undecided"), ("undecided", "passed", "undecided"),
    ("passed", "failed", "failed"), ("undecided", "failed", "failed"), ("not-run", "passed", "not-run"),
])  # fmt: skip
def test_release_decision_is_the_worse_of_model_and_shipped_variant(model, shipped, expected):
    # when no variant is selected the fp32 variant's own decision is passed in: undecided stays undecided
    from fedready.compression.pipeline import release_decision

    assert release_decision(model, shipped) == expected
