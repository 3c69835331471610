"""Federated fairness numbers equal fairlearn's on the pooled predictions, on a real run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_difference,
    demographic_parity_ratio,
    equal_opportunity_difference,
    equalized_odds_difference,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from sklearn.metrics import accuracy_score

from fedready.datasets.adult import adult_schema
from fedready.evaluation.model import load_run
from fedready.fairness import group_labels
from fedready.federation import client_shard, client_validation_attributes

pytestmark = pytest.mark.slow
TOL = 1e-9


def _pooled(run):
    rm = load_run(run)
    schema = rm.schema
    ys, preds, attrs, per_client = [], [], {}, {}
    for pid in range(rm.cfg.num_clients):
        shard = client_shard(rm.cfg, pid)
        p = rm.predict(shard.x_val)
        ys.append(shard.y_val)
        preds.append(p)
        per_client[str(pid)] = (float((p == shard.y_val).mean()), len(shard.y_val))
        for a, raw in client_validation_attributes(rm.cfg, pid).items():
            attrs.setdefault(a, []).append(group_labels(schema, a, raw))
    return np.concatenate(ys), np.concatenate(preds), {a: np.concatenate(v) for a, v in attrs.items()}, per_client


def test_federated_counts_equal_fairlearn_on_pooled_predictions(evaluated_run):
    run, report = evaluated_run
    fed = json.loads((run / "federated_eval.json").read_text())
    assert fed["model_digest"] == report["model_digest"]
    assert fed["clients_answered"] == load_run(run).cfg.num_clients and not fed["clients_failed"]
    y, p, attrs, per_client = _pooled(run)
    assert set(fed["fairness"]) == set(adult_schema().sensitive) == set(attrs)
    for attr, g in attrs.items():
        mine = fed["fairness"][attr]
        undefined = set(mine["undefined_groups"])
        # fairlearn scores a rate with a zero denominator as 0.0; we call it undefined and leave it out.
        mf = MetricFrame(metrics={"accuracy": accuracy_score, "selection_rate": selection_rate,
                                  "tpr": true_positive_rate, "fpr": false_positive_rate},
                         y_true=y, y_pred=p, sensitive_features=g)  # fmt: skip
        for name, row in mf.by_group.iterrows():
            ours = mine["groups"][name]
            assert ours["count"] == int((g == name).sum())
            for metric in ("accuracy", "selection_rate"):
                assert ours[metric] == pytest.approx(row[metric], abs=TOL)
            for metric in ("tpr", "fpr"):
                if ours[metric] is None:
                    assert name in undefined and row[metric] == 0.0
                else:
                    assert ours[metric] == pytest.approx(row[metric], abs=TOL)
        ref = {
            "demographic_parity_difference": demographic_parity_difference(y, p, sensitive_features=g),
            "demographic_parity_ratio": demographic_parity_ratio(y, p, sensitive_features=g),
            "worst_group_accuracy": mf.group_min()["accuracy"],
        }
        if not undefined:
            ref["equalized_odds_difference"] = equalized_odds_difference(y, p, sensitive_features=g)
            ref["equal_opportunity_difference"] = equal_opportunity_difference(y, p, sensitive_features=g)
        else:  # the same rule from fairlearn's per-group rates, leaving out zero denominators
            pos = {n: (y[g == n] == 1).any() for n in mf.by_group.index}
            neg = {n: (y[g == n] == 0).any() for n in mf.by_group.index}
            tpr = mf.by_group["tpr"][[n for n in mf.by_group.index if pos[n]]]
            fpr = mf.by_group["fpr"][[n for n in mf.by_group.index if neg[n]]]
            ref["equal_opportunity_difference"] = tpr.max() - tpr.min()
            ref["equalized_odds_difference"] = max(tpr.max() - tpr.min(), fpr.max() - fpr.min())
        for key, value in ref.items():
            assert mine[key] == pytest.approx(value, abs=TOL), (attr, key)
    spread = fed["client_accuracy"]
    for c, (acc, _) in per_client.items():
        assert spread["clients"][c]["value"] == pytest.approx(acc, abs=TOL)
        assert spread["clients"][c]["noise_std"] == 0.0  # exact counts: the interval is the sampling error only
    # exact counts: the spread subtracts the binomial variance of each client's validation sample
    kept = [(a, n) for c, (a, n) in per_client.items() if c not in spread["undefined_clients"]]
    acc = np.array([a for a, _ in kept])
    v = np.array([min(max(a, 0.05), 0.95) * (1 - min(max(a, 0.05), 0.95)) / n for a, n in kept])
    expected = np.sqrt(max(0.0, acc.var() - (1 - 1 / len(acc)) * v.mean()))
    assert spread["std"]["value"] == pytest.approx(expected, abs=TOL)
    assert spread["std"]["lo"] <= spread["std"]["value"] <= spread["std"]["hi"]
    assert spread["worst_accuracy"]["value"] == pytest.approx(acc.min(), abs=TOL)


def test_holdout_fairness_is_fairlearn_metricframe(evaluated_run):
    from fedready.datasets.adult import load_adult
    from fedready.task import load_task

    run, report = evaluated_run
    x, y = load_task().x_test, load_task().y_test
    p = load_run(run).predict(x)
    sex = load_adult("test").columns["sex"]
    assert report["metrics"]["accuracy"] == pytest.approx(float((p == y).mean()), abs=TOL)
    assert report["fairness"]["sex"]["equalized_odds_difference"] == pytest.approx(
        equalized_odds_difference(y, p, sensitive_features=sex), abs=TOL)  # fmt: skip


def test_multiclass_federated_counts_equal_fairlearn_one_vs_rest_on_pooled_predictions(evaluated_multiclass_run):
    run, report = evaluated_multiclass_run
    fed = json.loads((run / "federated_eval.json").read_text())
    y, p, attrs, _ = _pooled(run)
    classes = load_run(run).schema.classes
    assert classes == ["0", "1", "2"] and set(np.unique(p)) <= {0, 1, 2} and len(np.unique(p)) > 1
    g = attrs["group"]
    mine = fed["fairness"]["group"]
    assert mine["one_vs_rest"] and set(mine["per_class"]) == set(classes)
    worst = {k: [] for k in ("demographic_parity_difference", "equalized_odds_difference",
                             "equal_opportunity_difference")}  # fmt: skip
    for j, c in enumerate(classes):
        yt, yp = (y == j).astype(int), (p == j).astype(int)
        ref = {
            "demographic_parity_difference": demographic_parity_difference(yt, yp, sensitive_features=g),
            "equalized_odds_difference": equalized_odds_difference(yt, yp, sensitive_features=g),
            "equal_opportunity_difference": equal_opportunity_difference(yt, yp, sensitive_features=g),
            "demographic_parity_ratio": demographic_parity_ratio(yt, yp, sensitive_features=g),
        }
        for key, value in ref.items():
            assert mine["per_class"][c][key] == pytest.approx(value, abs=TOL), (c, key)
        for key in worst:
            worst[key].append(ref[key])
    for key, values in worst.items():  # the headline is the worst class
        assert mine[key] == pytest.approx(max(values), abs=TOL), key
    mf = MetricFrame(metrics=accuracy_score, y_true=y, y_pred=p, sensitive_features=g)
    for name, acc in mf.by_group.items():
        assert mine["groups"][name]["accuracy"] == pytest.approx(acc, abs=TOL)
    assert mine["worst_group_accuracy"] == pytest.approx(mf.group_min(), abs=TOL)
    # the benchmark's numbers (fairlearn on pooled rows) follow the same definition; post-processing says it skipped
    assert report["fairness"]["group"]["one_vs_rest"] and "binary targets only" in report["mitigation_skipped"]
    assert report["metrics"]["classes"] == classes and 0 <= report["calibration"]["ece"] <= 1
    card = (run / "model_card.md").read_text()
    assert "3-class classifier" in card and "class (one-vs-rest)" in card
