"""Every suite runs on a CSV with its own declared schema; bad input is a clear error or 'undefined'."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedready.client.training import train
from fedready.config import make_config
from fedready.data import read_csv
from fedready.encoding import FeatureEncoder
from fedready.errors import ConfigError
from fedready.evaluation import evaluate_run, explain_run_row
from fedready.files import atomic_write_bytes
from fedready.modelio import arrays_digest, save_npz
from fedready.models import create_model
from fedready.schema import load_schema

SCHEMA = """
name = "loans"
sensitive = ["group"]
[target]
column = "approved"
positive = ["yes"]
negative = ["no"]
[[columns]]
name = "income"
kind = "numeric"
min = 0
max = 200
bins = [50, 100]
actionable = true
[[columns]]
name = "region"
kind = "categorical"
categories = ["north", "south"]
[[columns]]
name = "group"
kind = "categorical"
categories = ["a", "b", "c"]
"""


def _csv(path, n=600, seed=0, one_class=False):
    rng = np.random.default_rng(seed)
    income = rng.uniform(0, 200, n)
    group = rng.choice(["a", "b"], n)  # 'c' is declared but has no members
    region = rng.choice(["north", "south"], n)
    approved = (income + np.where(group == "a", 20, 0) + rng.normal(0, 20, n) > 110) | one_class
    lines = ["income,region,group,approved"] + [
        f"{i:.1f},{r},{g},{'yes' if a else 'no'}" for i, r, g, a in zip(income, region, group, approved, strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def loans(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("loans")
    schema_path = tmp_path / "schema.toml"
    schema_path.write_text(SCHEMA)
    schema = load_schema(schema_path)
    csv = _csv(tmp_path / "loans.csv")
    table = read_csv(csv, schema)
    x, y = FeatureEncoder(schema).transform(table.columns), table.labels(schema)
    model = create_model("logreg", x.shape[1], seed=0)
    train(model, x, y, epochs=10, batch_size=64, lr=0.5, momentum=0.0, seed=0)
    arrays = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"config": make_config(model="logreg", dp=False).model_dump()}))
    (run / "summary.json").write_text(json.dumps({"run_id": "loans", "dp": False, "model_digest": arrays_digest(arrays),
                                                  "rounds_completed": 1}))  # fmt: skip
    atomic_write_bytes(run / "model.npz", save_npz(arrays))
    policy = tmp_path / "policy.toml"
    policy.write_text("[gates]\nmin_accuracy = 0.7\n[gates.max_equalized_odds_difference]\ngroup = 0.5\n")
    return run, csv, schema_path, policy


def test_every_suite_runs_on_a_csv_and_an_empty_group_is_undefined(loans):
    run, csv, schema_path, policy = loans
    report = evaluate_run(run, data=csv, schema=schema_path, policy=policy, federated=False)
    json.dumps(report, allow_nan=False)  # no NaN or infinity anywhere
    assert report["metrics"]["accuracy"] > 0.8
    fair = report["fairness"]["group"]
    assert fair["groups"]["c"] == {"count": 0, "accuracy": None, "selection_rate": None, "tpr": None, "fpr": None}
    assert "c" in fair["undefined_groups"] and fair["equalized_odds_difference"] is not None
    assert report["mitigation"]["attribute"] == "group"
    assert set(report["importance"]) == {"income", "region", "group"}
    assert {g["gate"] for g in report["gates"]} == {"min_accuracy", "max_equalized_odds_difference[group]"}
    card = (run / "model_card.md").read_text()
    assert "| c | 0 | undefined |" in card
    assert json.loads((run / "thresholds.json").read_text())["attribute"] == "group"
    out = explain_run_row(run, row=3, csv=csv, schema=schema_path)
    assert set(out["attributions"]) == {"income", "region", "group"}
    if out["counterfactual"] is not None:
        assert {c["column"] for c in out["counterfactual"]["changes"]} == {"income"}


def test_gate_on_an_attribute_the_schema_does_not_declare_names_it(loans, tmp_path):
    run, csv, schema_path, _ = loans
    bad = tmp_path / "bad.toml"
    bad.write_text("[gates.max_equalized_odds_difference]\nsex = 0.1\n")
    with pytest.raises(ConfigError) as e:
        evaluate_run(run, data=csv, schema=schema_path, policy=bad, federated=False, write=False)
    assert e.value.field == "gates.max_equalized_odds_difference.sex" and "group" in str(e.value)


def test_single_class_labels_are_a_clear_error(loans, tmp_path):
    run, _, schema_path, policy = loans
    csv = _csv(tmp_path / "one.csv", one_class=True)
    with pytest.raises(ConfigError, match="only the class .yes."):
        evaluate_run(run, data=csv, schema=schema_path, policy=policy, federated=False, write=False)


def test_a_schema_that_does_not_fit_the_model_is_refused(loans, tmp_path):
    run, csv, _, policy = loans
    with pytest.raises(ConfigError, match="inputs"):
        evaluate_run(run, policy=None, federated=False, write=False)  # Adult's schema, loans model


def test_sensitive_columns_cannot_be_actionable(tmp_path):
    p = tmp_path / "s.toml"
    p.write_text(SCHEMA.replace('categories = ["a", "b", "c"]', 'categories = ["a", "b", "c"]\nactionable = true'))
    with pytest.raises(ConfigError, match="cannot be actionable"):
        load_schema(p)
