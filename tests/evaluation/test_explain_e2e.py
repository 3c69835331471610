"""``fedready explain``: counterfactuals really flip the model's decision and never touch protected columns."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from fedready.cli import app
from fedready.datasets.adult import adult_schema, load_adult
from fedready.encoding import FeatureEncoder
from fedready.evaluation.explain import counterfactual, encoded_predict_proba
from fedready.evaluation.model import load_run

pytestmark = pytest.mark.slow
PROTECTED = {"sex", "race", "age"}


def test_counterfactuals_flip_the_decision_and_change_only_actionable_columns(evaluated_run):
    run, _ = evaluated_run
    rm, schema, table = load_run(run), adult_schema(), load_adult("test")
    proba = encoded_predict_proba(rm.module, FeatureEncoder(schema))
    actionable = {c.name for c in schema.features if c.actionable}
    assert actionable and not actionable & PROTECTED
    rows = np.random.default_rng(0).choice(len(table), size=60, replace=False)
    found, decisions = 0, set()
    for i in rows:
        row = {k: str(v[i]) for k, v in table.columns.items()}
        before = int(proba({k: np.asarray([v]) for k, v in row.items()})[0].argmax())
        decisions.add(before)
        cf = counterfactual(row, schema, proba)
        if cf is None:
            continue
        found += 1
        changed = {c for c, _, _ in cf.changes}
        assert changed <= actionable and not changed & PROTECTED
        new = dict(row)
        for c, frm, to in cf.changes:
            assert frm == row[c] and to != frm
            new[c] = to
        after = int(proba({k: np.asarray([v]) for k, v in new.items()})[0].argmax())
        assert after != before and after == cf.decision, (i, cf)
    assert decisions == {0, 1}, "the sample should hold both decisions"
    assert found >= 45, f"only {found} of 60 rows got a counterfactual"


def test_explain_cli_prints_attributions_and_a_plain_words_counterfactual(evaluated_run):
    run, _ = evaluated_run
    for row in range(20):
        result = CliRunner().invoke(app, ["explain", str(run), "--row", str(row)], terminal_width=200)
        assert result.exit_code == 0, result.output
        assert "integrated gradients" in result.stdout and "hours-per-week" in result.stdout
        if "the decision would change to" in result.stdout:
            assert " instead of " in result.stdout
            return
    pytest.fail("no counterfactual among the first 20 rows")


def test_explain_row_out_of_range_is_exit_2(evaluated_run):
    run, _ = evaluated_run
    result = CliRunner().invoke(app, ["explain", str(run), "--row", "999999"])
    assert result.exit_code == 2 and "row" in result.stderr
