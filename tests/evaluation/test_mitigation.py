"""Threshold post-processing: the stored plain-JSON rule is fairlearn's rule, and it narrows the odds gap."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fairlearn.metrics import equalized_odds_difference

from fedready.errors import ConfigError
from fedready.evaluation.mitigation import apply_thresholds, fit_thresholds, positive_probability, split_halves


def _biased(n=6000, seed=0):
    """Scores that are systematically lower for group 'b' at equal labels."""
    rng = np.random.default_rng(seed)
    g = rng.choice(np.array(["a", "b"]), n)
    y = (rng.random(n) < np.where(g == "a", 0.35, 0.2)).astype(np.int64)
    logit = 2.0 * (y - 0.5) + rng.normal(0, 1.2, n) - np.where(g == "b", 1.0, 0.0)
    return 1 / (1 + np.exp(-logit)), y, g


def test_plain_json_rule_gives_fairlearns_probabilities():
    from fairlearn.postprocessing import ThresholdOptimizer

    from fedready.evaluation.mitigation import _scores_estimator

    s, y, g = _biased()
    rule = json.loads(json.dumps(fit_thresholds(s, y, g, attribute="g")))  # survives a JSON round trip
    opt = ThresholdOptimizer(estimator=_scores_estimator(), constraints="equalized_odds", prefit=True,
                             predict_method="predict_proba").fit(s[:, None], y, sensitive_features=g)  # fmt: skip
    ref = opt._pmf_predict(s[:, None], sensitive_features=g)[:, 1]
    assert np.allclose(positive_probability(s, g, rule), ref, atol=1e-12)


def test_cross_fitted_rule_halves_the_equalized_odds_gap_on_unseen_rows():
    s, y, g = _biased()
    a, b = split_halves(y, g, seed=0)
    assert not set(a) & set(b) and len(a) + len(b) == len(y)
    rule = fit_thresholds(s[a], y[a], g[a], attribute="g")
    before = (s[b] > 0.5).astype(int)
    after = apply_thresholds(s[b], g[b], rule, seed=0)
    eod_before = equalized_odds_difference(y[b], before, sensitive_features=g[b])
    eod_after = equalized_odds_difference(y[b], after, sensitive_features=g[b])
    assert eod_after <= eod_before / 2, (eod_before, eod_after)


def test_unknown_group_keeps_the_plain_decision():
    s, y, g = _biased()
    rule = fit_thresholds(s, y, g, attribute="g")
    probs = positive_probability(np.array([0.7, 0.3]), np.array(["c", "c"]), rule)
    assert list(probs) == [1.0, 0.0]


def test_single_class_labels_are_refused():
    with pytest.raises(ConfigError, match="one class"):
        fit_thresholds(np.array([0.2, 0.8]), np.array([1, 1]), np.array(["a", "b"]), attribute="g")


def _with_small_groups(*small: tuple[str, list[int]]):
    s, y, g = _biased(2000)
    g = g.astype(object)
    for name, labels in small:
        s = np.concatenate([s, np.linspace(0.3, 0.7, len(labels))])
        y = np.concatenate([y, labels])
        g = np.concatenate([g, [name] * len(labels)])
    return s, y, g.astype(str)


def test_a_group_of_one_label_is_skipped_and_keeps_the_plain_decision():
    s, y, g = _with_small_groups(("c", [1, 1, 1]))  # fairlearn alone: "Degenerate labels for sensitive feature value c"
    rule = fit_thresholds(s, y, g, attribute="g")
    assert rule["skipped"] == ["c"] and rule["pooled"] == []
    assert set(rule["groups"]) == {"a", "b", "c"}  # still known: a device does not refuse its rows
    probs = positive_probability(np.array([0.7, 0.3]), np.array(["c", "c"]), rule)
    assert list(probs) == [1.0, 0.0]


def test_small_groups_that_together_hold_both_labels_share_one_rule():
    s, y, g = _with_small_groups(("c", [1] * 4), ("d", [0] * 4 + [1]), ("e", [0] * 3))
    rule = fit_thresholds(s, y, g, attribute="g", names=["a", "b", "c", "d", "e", "f"])
    assert rule["pooled"] == ["c", "d", "e", "f"] and rule["skipped"] == []  # f: listed, without rows
    assert rule["groups"]["c"] == rule["groups"]["d"] == rule["groups"]["f"] != rule["groups"]["a"]
