"""Perturbations, seed stability, churn and calibration on small known cases."""

from __future__ import annotations

import numpy as np
import pytest

from fedready.calibration import calibration_report
from fedready.data import Table
from fedready.datasets.adult import load_adult
from fedready.errors import ConfigError
from fedready.evaluation.stability import (
    PERTURBATIONS,
    apply_perturbation,
    churn,
    default_perturbations,
    perturbation_report,
    seed_stability,
)


@pytest.fixture(scope="module")
def rows():
    return load_adult("test").take(np.arange(500))


def test_every_perturbation_kind_is_in_the_default_list(adult_schema):
    kinds = {n.split("-", 1)[0] for n in default_perturbations(adult_schema)}
    assert kinds == set(PERTURBATIONS)


def test_perturbations_change_only_what_they_say(adult_schema, rows):
    noisy = apply_perturbation(rows, adult_schema, "gaussian-0.1")
    assert not np.array_equal(noisy["hours-per-week"], rows.columns["hours-per-week"].astype(float))
    assert np.array_equal(noisy["occupation"], rows.columns["occupation"])
    ages = noisy["age"].astype(float)
    assert ages.min() >= 17 and ages.max() <= 90
    missing = apply_perturbation(rows, adult_schema, "missing-occupation")
    assert set(missing["occupation"]) == {"?"}
    swapped = apply_perturbation(rows, adult_schema, "swap-sex")
    changed = (swapped["sex"] != rows.columns["sex"]).mean()
    assert 0.05 < changed < 0.15 and set(swapped["sex"]) <= {"Male", "Female"}


@pytest.mark.parametrize("name", ["blur-0.1", "gaussian-", "gaussian-x", "missing-salary", "swap-age"])
def test_unknown_perturbation_is_a_config_error(adult_schema, rows, name):
    with pytest.raises(ConfigError):
        apply_perturbation(rows, adult_schema, name)


def test_perturbation_report_flips_and_drops(adult_schema, rows):
    y = rows.labels(adult_schema)

    def predict(cols):  # a rule on hours-per-week only
        return (np.asarray(cols["hours-per-week"], dtype=float) > 45).astype(int)

    groups = {"sex": rows.columns["sex"]}
    rep = perturbation_report(rows, adult_schema, y, predict, groups, names=["gaussian-0.2", "missing-occupation"])
    assert rep["missing-occupation"]["flip_rate"] == 0.0 and rep["missing-occupation"]["accuracy_drop"] == 0.0
    assert rep["gaussian-0.2"]["flip_rate"] > 0.05
    assert set(rep["gaussian-0.2"]["groups"]["sex"]) == {"Male", "Female"}


def test_seed_stability_and_churn():
    y = np.array([0, 1, 1, 0])
    a, b = np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0])
    s = seed_stability([a, b, a], y)
    assert s["disagreement_rate"] == 0.25 and s["accuracies"] == [1.0, 0.75, 1.0]
    assert s["pairwise_disagreement"] == pytest.approx((0.25 + 0 + 0.25) / 3)
    assert churn(a, b) == 0.25
    with pytest.raises(ValueError):
        seed_stability([a], y)


def test_calibration_of_perfect_and_overconfident_scores():
    y = np.array([0] * 50 + [1] * 50)
    perfect = calibration_report(y, y.astype(float))
    assert perfect["ece"] == 0.0 and perfect["brier"] == 0.0
    over = calibration_report(y, np.where(np.arange(100) % 2 == 0, 0.99, 0.01))  # confident, half wrong
    assert over["ece"] == pytest.approx(0.49) and over["brier"] == pytest.approx((0.99**2 + 0.01**2) / 2)
    assert sum(b["count"] for b in over["bins"]) == 100


def test_empty_table_is_refused():
    with pytest.raises(ValueError):
        calibration_report(np.array([]), np.array([]))
    assert len(Table({})) == 0
