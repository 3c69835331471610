"""Intervals of group disparities (benchmark and clients' noisy sums) cover the truth; gates decide on them."""

from __future__ import annotations

import numpy as np
import pytest

from fedready.estimates import constant_decision_groups, disparity_estimates, federated_fairness_estimates
from fedready.evaluation.gates import GATES, Policy, check_gates, decide, decision
from fedready.fairness import confusion_counts, group_names
from fedready.intervals import Estimate
from fedready.schema import DataSchema

SCHEMA = DataSchema.model_validate({
    "name": "s", "sensitive": ["g"], "target": {"column": "y", "positive": ["1"], "negative": ["0"]},
    "columns": [{"name": "x", "kind": "numeric", "min": 0, "max": 1},
                {"name": "g", "kind": "categorical", "categories": ["a", "b", "c"]}],
})  # fmt: skip
DISPARITIES = ("equalized_odds_difference", "equal_opportunity_difference", "demographic_parity_difference",
               "demographic_parity_ratio", "worst_group_accuracy")  # fmt: skip


def _population(tpr: np.ndarray, fpr: np.ndarray, base: np.ndarray) -> dict[str, float]:
    sel = base * tpr + (1 - base) * fpr
    acc = base * tpr + (1 - base) * (1 - fpr)
    return {"equalized_odds_difference": max(np.ptp(tpr), np.ptp(fpr)), "equal_opportunity_difference": np.ptp(tpr),
            "demographic_parity_difference": np.ptp(sel), "demographic_parity_ratio": sel.min() / sel.max(),
            "worst_group_accuracy": acc.min()}  # fmt: skip


def _draw(rng: np.random.Generator, sizes: np.ndarray, base: np.ndarray, tpr: np.ndarray, fpr: np.ndarray):
    g = np.repeat(np.array(["a", "b", "c"]), sizes)
    y = (rng.random(len(g)) < np.repeat(base, sizes)).astype(np.int64)
    hit = np.where(y == 1, np.repeat(tpr, sizes), np.repeat(fpr, sizes))
    return confusion_counts(y, (rng.random(len(g)) < hit).astype(np.int64), g, group_names(SCHEMA, "g"))


@pytest.mark.parametrize(
    ("tpr", "sigma"),
    [((0.6, 0.5, 0.55), 0.0), ((0.6, 0.6, 0.6), 0.0), ((0.6, 0.5, 0.55), 20.0)],
    ids=["benchmark-disparity", "benchmark-no-disparity", "clients-noisy-sums"],
)
def test_disparity_intervals_cover_the_population_value(tpr, sigma):
    rng = np.random.default_rng(11)
    sizes, base, fpr, tpr = np.array([3000, 800, 300]), np.array([0.3, 0.25, 0.2]), np.array([0.08, 0.05, 0.1]), \
        np.asarray(tpr)  # fmt: skip
    truth = _population(tpr, fpr, base)
    hits = {m: 0 for m in DISPARITIES}
    for _ in range(1000):
        table = _draw(rng, sizes, base, tpr, fpr).astype(np.float64)
        if sigma:
            table += rng.normal(0.0, sigma, table.shape)
            est = federated_fairness_estimates({"g": table}, SCHEMA, noise_std=sigma)
            est = {k.removeprefix("federated."): v for k, v in est.items()}
        else:
            est = disparity_estimates({"g": table}, SCHEMA)
        for m in DISPARITIES:
            e = est[f"fairness.g.{m}"]
            hits[m] += e["lo"] <= truth[m] <= e["hi"]
    assert {m: h / 1000 for m, h in hits.items() if h < 940} == {}


def test_a_group_too_small_to_estimate_is_left_out_and_named():
    # (tp, fp, tn, fn) for a, b, c and the unknown slot: c has 8 rows, all with one label but one
    table = np.array([[900, 100, 1900, 100], [60, 5, 160, 40], [2, 0, 5, 1], [0, 0, 0, 0]], dtype=np.float64)
    est = federated_fairness_estimates({"g": table}, SCHEMA, noise_std=0.0)
    eod = est["federated.fairness.g.equalized_odds_difference"]
    # a: TPR 0.9, FPR 0.05; b: TPR 0.6, FPR 0.03; c's TPR (2 of 3) would be far off, and is not read
    assert eod["value"] == pytest.approx(0.3) and "c (" in eod["note"] and "a (" not in eod["note"]


def test_constant_decisions_are_found_overall_and_per_post_processed_group():
    assert constant_decision_groups(np.zeros(50, dtype=int)) == ["overall"]
    assert constant_decision_groups(np.array([0, 1] * 5)) == []
    rule = {"groups": {
        "Male": {"p0": 1.0, "op0": ">", "t0": 0.5, "p1": 0.0, "op1": ">", "t1": 0.5, "p_ignore": 0.0,
                 "prediction_constant": 0.0},
        "Female": {"p0": 0.0, "op0": ">", "t0": 0.5, "p1": 1.0, "op1": ">", "t1": float("-inf"), "p_ignore": 0.0,
                   "prediction_constant": 0.0}}}  # fmt: skip
    assert constant_decision_groups(np.array([0, 1] * 5), {"sex": rule}) == ["sex=Female (post-processing)"]


@pytest.mark.parametrize(
    ("direction", "lo", "hi", "limit", "outcome"),
    [
        ("max", 0.05, 0.12, 0.15, "pass"),
        ("max", 0.16, 0.3, 0.15, "fail"),
        ("max", 0.1, 0.2, 0.15, "undecided"),
        ("min", 0.03, 0.05, 0.02, "pass"),
        ("min", -0.01, 0.01, 0.02, "fail"),
        ("min", 0.0, 0.04, 0.02, "undecided"),
        ("max", 1.0, 1.0, 1.0, "pass"),
    ],
)
def test_a_gate_passes_fails_or_is_undecided_by_where_its_interval_lies(direction, lo, hi, limit, outcome):
    assert decide(direction, Estimate((lo + hi) / 2, lo, hi, "clients"), limit) == outcome


def test_undefined_numbers_are_undecided_except_where_undefined_means_the_worst():
    policy = Policy("p", "1", (("max_client_accuracy_std", "", 0.15), ("max_epsilon", "", 1.0)))
    by = {r.gate: r for r in check_gates(policy, {})}
    assert by["max_client_accuracy_std"].outcome == "undecided" and "fedready evaluate" in by[
        "max_client_accuracy_std"].note  # fmt: skip
    assert by["max_epsilon"].outcome == "fail"  # no DP: no finite epsilon
    assert decision(list(by.values())) == "failed"


def test_an_undecided_gate_says_what_would_decide_it_in_one_rounded_line():
    report = {"federated": {"client_accuracy": {"std": Estimate(0.0812345, 0.0312, 0.1623, "clients", 13.4)
                                               .to_dict()}}}  # fmt: skip
    (r,) = check_gates(Policy("p", "1", (("max_client_accuracy_std", "", 0.15),)), report)
    assert r.outcome == "undecided" and r.source == "clients"
    assert r.line().startswith("max_client_accuracy_std: undecided, 0.081 [0.031, 0.162] (limit 0.150, clients)")
    assert "--query-noise" in r.line() and "\n" not in r.line()


def test_every_gate_reads_the_interval_stored_for_it():
    for name, gate in GATES.items():
        key = "sex" if gate.keyed_by == "attribute" else "gaussian-0.01" if gate.keyed_by else ""
        path = gate.path.replace("{key}", key)
        report = {"estimates": {path: Estimate(0.5, 0.4, 0.6, gate.source).to_dict()}}
        (r,) = check_gates(Policy("p", "1", ((name, key, 0.45),)), report)
        assert (r.lo, r.hi) == (0.4, 0.6) and r.outcome == "undecided", name
