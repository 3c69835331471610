"""Useless models are refused: a model trained on shuffled labels, and post-processing that decides a group
without looking at the model, never reach stable; each is refused in one line naming the gate.

Both run the real ``fedready pipeline`` on a synthetic table (3 clients, 3 rounds).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from fedready.cli import app
from tests.conftest import write_task

pytestmark = pytest.mark.slow


def _pipeline(task: dict, out, *extra: str):
    args = ["pipeline", "--data", str(task["data"]), "--schema", str(task["schema"]), "--test", str(task["test"]),
            "--clients", "3", "--rounds", "3", "--out", str(out), "--json", *extra]  # fmt: skip
    return CliRunner().invoke(app, args)


def _stable_version(out) -> str | None:
    from fedready.registry import Registry

    doc = Registry(out / "registry").channel("stable")
    return None if doc is None else doc.version


def test_a_model_trained_on_shuffled_labels_is_refused_and_never_reaches_stable(tmp_path):
    task = write_task(tmp_path / "task", rows=2400, test_rows=1500, seed=5)
    lines = task["data"].read_text().splitlines()
    header, rows = lines[0], [r.split(",") for r in lines[1:]]
    labels = np.random.default_rng(0).permutation([r[-1] for r in rows])  # the label no longer depends on the row
    task["data"].write_text("\n".join([header] + [",".join([*r[:-1], y]) for r, y in zip(rows, labels, strict=True)]))
    res = _pipeline(task, tmp_path / "out")
    assert res.exit_code in (1, 3), res.output
    steps = json.loads(res.stdout)
    assert "stable" not in steps["publish"]["channels"] and _stable_version(tmp_path / "out") is None
    lift = [ln for ln in res.stderr.splitlines() if "min_balanced_accuracy_lift:" in ln]
    assert lift and any(w in lift[0] for w in ("fail,", "undecided,")), res.stderr
    assert "blocking: min_balanced_accuracy_lift" in res.stderr  # the step that did not promote says why


def test_post_processing_that_decides_a_group_without_the_model_is_refused(tmp_path, monkeypatch):
    """fairlearn's ThresholdOptimizer can set t = -inf, p = 1 for a group: everybody in it approved."""
    import fedready.evaluation.suite as suite

    real = suite.fit_thresholds

    def constant_for_b(scores, y, groups, *, attribute):
        rule = real(scores, y, groups, attribute=attribute)
        rule["groups"]["B"] = {"p0": 0.0, "op0": ">", "t0": 0.5, "p1": 1.0, "op1": ">", "t1": float("-inf"),
                               "p_ignore": 0.0, "prediction_constant": 0.0}  # fmt: skip
        return rule

    monkeypatch.setattr(suite, "fit_thresholds", constant_for_b)
    task = write_task(tmp_path / "task", rows=2400, test_rows=1500, seed=6)
    res = _pipeline(task, tmp_path / "out")
    assert res.exit_code == 1, res.output  # a failed gate: promoted nowhere
    steps = json.loads(res.stdout)
    assert steps["publish"]["channels"] == [] and _stable_version(tmp_path / "out") is None
    (line,) = [ln for ln in res.stderr.splitlines() if ln.strip().startswith("max_constant_decision_groups:")]
    assert "fail" in line and "group=B (post-processing)" in line
    assert steps["device"] is None  # no channel serves it, so no device installs it
