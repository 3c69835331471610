"""Honest reference numbers: simulate reports the benchmark's majority-class rate and balanced accuracy, and warns
when the model does no better than always answering the majority class."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import fedready
from fedready.cli import app
from tests.conftest import write_task

pytestmark = pytest.mark.slow


def _noise_task(folder):
    """The synthetic task with its label replaced by noise: 85% "no", whatever the features say."""
    task = write_task(folder, rows=900, test_rows=400)
    for part, seed in (("data", 0), ("test", 1)):
        lines = task[part].read_text().splitlines()
        labels = np.where(np.random.default_rng(seed).random(len(lines) - 1) < 0.85, "no", "yes")
        rows = [ln.rsplit(",", 1)[0] + f",{y}" for ln, y in zip(lines[1:], labels, strict=True)]
        task[part].write_text("\n".join([lines[0], *rows]) + "\n")
    return task


def test_simulate_reports_the_majority_rate_and_balanced_accuracy_and_warns_below_it(tmp_path):
    task = _noise_task(tmp_path / "task")
    labels = [ln.rsplit(",", 1)[1] for ln in task["test"].read_text().splitlines()[1:]]
    majority = max(labels.count("no"), labels.count("yes")) / len(labels)

    result = fedready.simulate(task["data"], task["schema"], test=task["test"], model="logreg", num_clients=3,
                               rounds=2, out=tmp_path / "runs", name="api")  # fmt: skip
    assert result.majority_rate == pytest.approx(majority)
    assert 0 <= result.balanced_accuracy <= 1 and result.summary["chance"] == 0.5
    saved = json.loads((result.run_dir / "summary.json").read_text())
    assert saved["majority_rate"] == pytest.approx(majority) and saved["balanced_accuracy"] == result.balanced_accuracy
    assert result.below_majority == (result.accuracy <= majority)

    res = CliRunner().invoke(app, ["simulate", "--data", str(task["data"]), "--schema", str(task["schema"]), "--test",
                                   str(task["test"]), "--model", "logreg", "--clients", "3", "--rounds", "2", "--out",
                                   str(tmp_path / "runs"), "--name", "cli"])  # fmt: skip
    assert res.exit_code == 0, res.output[-3000:]
    summary = json.loads((tmp_path / "runs" / "cli" / "summary.json").read_text())
    lines = res.stderr.splitlines()
    assert (f"benchmark: majority class {majority:.4f}, balanced accuracy {summary['balanced_accuracy']:.4f} "
            "(chance 0.5000)") in lines  # fmt: skip
    warning = [ln for ln in lines if ln.startswith("warning: accuracy")]
    assert summary["accuracy"] <= majority  # noise labels: nothing to learn beyond the class balance
    assert warning == [f"warning: accuracy {summary['accuracy']:.4f} is no higher than always answering the majority "
                       f"class ({majority:.4f}): the model has not learned more than the class balance"]  # fmt: skip
