"""Drift detection against a reference profile of Adult's training split (the issue's "Done when").

The reference is the training split's histograms, exact and with the default noise (Gaussian,
epsilon 1) or Laplace noise; the monitored windows are Adult's test split as it is, with
``age`` shifted by +10 years, and resampled to 70% female (from about 33%).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedready.data import Table
from fedready.datasets.adult import adult_schema, load_adult
from fedready.errors import ConfigError
from fedready.monitoring import (
    MonitoringPolicy,
    NoiseRecord,
    compare,
    count_rows,
    js_distance,
    load_monitoring_policy,
    privatize,
    profile_document,
    psi,
)


def _counts(table: Table, *, labels: bool = False):
    schema = adult_schema()
    scores = np.random.default_rng(0).random(len(table))  # the model does not matter for input drift
    return count_rows(schema, table.columns, scores=scores, predictions=(scores >= 0.5).astype(int),
                      labels=table.labels(schema) if labels else None)  # fmt: skip


@pytest.fixture(scope="module")
def train_counts():
    return _counts(load_adult("train"), labels=True)


@pytest.fixture(scope="module")
def windows():
    test = load_adult("test")
    aged = dict(test.columns)
    aged["age"] = np.array([f"{float(a) + 10:g}" for a in test.columns["age"]])
    sex = test.columns["sex"]
    rng = np.random.default_rng(1)
    n = len(test)
    female, male = np.flatnonzero(sex == "Female"), np.flatnonzero(sex == "Male")
    mix = np.concatenate([rng.choice(female, int(0.7 * n)), rng.choice(male, n - int(0.7 * n))])
    assert 0.3 < (sex == "Female").mean() < 0.35
    return {"unshifted": _counts(test), "age+10": _counts(Table(aged)), "sex 70% female": _counts(test.take(mix))}


def _profile(counts, mechanism):
    if mechanism == "none":
        noisy, noise = counts, NoiseRecord("none")
    else:
        noisy, noise = privatize(counts, mechanism=mechanism, epsilon=1.0, delta=1e-5, seed=7)
    return profile_document(adult_schema(), noisy, noise, model_digest="sha256:test", clients=10)


@pytest.mark.parametrize("mechanism", ["none", "gaussian", "laplace"])
def test_shifts_are_flagged_and_the_unshifted_split_is_not(train_counts, windows, mechanism):
    profile = _profile(train_counts, mechanism)
    clean = compare(profile, windows["unshifted"])
    assert max(f["psi"] for f in clean["features"].values()) < 0.1
    assert clean["breaches"] == []
    aged = compare(profile, windows["age+10"])
    assert aged["features"]["age"]["psi"] > 1.0
    assert {(b["feature"], b["metric"]) for b in aged["breaches"]} >= {("age", "psi")}
    assert all(b["feature"] == "age" for b in aged["breaches"])  # nothing else moved
    mixed = compare(profile, windows["sex 70% female"])
    assert mixed["features"]["sex"]["psi"] > 0.4
    assert ("sex", "psi") in {(b["feature"], b["metric"]) for b in mixed["breaches"]}


def test_noise_is_calibrated_to_the_profile_sensitivity(train_counts):
    _, gauss = privatize(train_counts, mechanism="gaussian", epsilon=1.0, delta=1e-5, seed=0)
    h = train_counts.histograms  # one row is counted once in each histogram
    assert gauss.sensitivity == pytest.approx(np.sqrt(h)) and gauss.epsilon <= 1.0
    assert gauss.scale == pytest.approx(gauss.noise_multiplier * np.sqrt(h))
    _, lap = privatize(train_counts, mechanism="laplace", epsilon=0.5, delta=1e-5, seed=0)
    assert (lap.sensitivity, lap.scale, lap.delta) == (h, h / 0.5, 0.0)
    with pytest.raises(ValueError, match="unknown noise mechanism 'exponential'"):
        privatize(train_counts, mechanism="exponential", epsilon=1.0, delta=1e-5)


def test_small_windows_are_reported_but_not_alerted(train_counts, windows):
    profile = _profile(train_counts, "none")
    report = compare(profile, windows["age+10"], MonitoringPolicy(min_rows=10**6))
    assert report["features"]["age"]["psi"] > 1.0 and not report["enough_rows"] and report["breaches"] == []


def test_calibration_drift_needs_labels(train_counts):
    profile = _profile(train_counts, "none")
    test = load_adult("test")
    y = test.labels(adult_schema())
    honest = count_rows(adult_schema(), test.columns, scores=np.where(y == 1, 0.95, 0.05), predictions=y, labels=y)
    assert "calibration" not in compare(profile, _counts(test))
    report = compare(profile, honest)
    # the reference's random scores are badly calibrated, so a well-calibrated window improves it
    assert report["calibration"]["change"] < 0 and not any(b["kind"] == "calibration-drift" for b in report["breaches"])
    inverted = count_rows(adult_schema(), test.columns, scores=np.where(y == 1, 0.05, 0.95), predictions=1 - y,
                          labels=y)  # fmt: skip
    kinds = {b["kind"] for b in compare(profile, inverted)["breaches"]}
    assert {"calibration-drift", "prediction-drift"} <= kinds


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 1000), min_size=2, max_size=12), st.integers(0, 2**31))
def test_psi_and_distance_properties(counts, seed):
    a = np.array(counts, dtype=float)
    b = np.random.default_rng(seed).permutation(a)
    assert psi(a, a) == pytest.approx(0.0, abs=1e-12) and js_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert psi(a, b) >= 0 and 0 <= js_distance(a, b) <= 1
    assert psi(a, b) == pytest.approx(psi(b, a))  # PSI is symmetric


def test_thresholds_come_from_the_monitoring_table(tmp_path, adult_schema):
    from fedready.evaluation.gates import default_policy_path, load_policy

    policy = tmp_path / "policy.toml"
    policy.write_text(default_policy_path().read_text() + "\n[monitoring]\npsi_alert = 0.3\nmin_rows = 50\n")
    assert load_policy(policy, adult_schema).limits  # the gates still load beside [monitoring]
    got = load_monitoring_policy(policy)
    assert (got.psi_alert, got.min_rows, got.distance_alert) == (0.3, 50, MonitoringPolicy().distance_alert)
    assert load_monitoring_policy(None) == MonitoringPolicy()
    policy.write_text("[monitoring]\npsi_alarm = 0.3\n")
    with pytest.raises(ConfigError, match="monitoring.psi_alarm"):
        load_monitoring_policy(policy)


def test_noise_dominated_reference_buckets_are_pooled_not_compared_one_by_one():
    from fedready.monitoring._drift import pool_noisy_buckets, psi

    rng = np.random.default_rng(0)
    true = np.array([9000.0, 5000.0] + [30.0] * 30)  # two large buckets and thirty rare ones
    noisy = true + rng.normal(0, 170.0, true.size)  # a DP reference: std 170 on every summed bucket
    window = true * 0.5  # the same distribution, unshifted
    assert psi(noisy, window) > 0.2  # bucket by bucket, the noise alone looks like drift
    r, w = pool_noisy_buckets(noisy, window, 170.0)
    assert len(r) == 2 and psi(r, w) < 0.05  # no false alarm (the pooled rare mass is itself below the noise)
    common = np.array([9000.0, 5000.0] + [200.0] * 30)  # rare but resolvable once pooled: kept as one bucket
    r, _ = pool_noisy_buckets(common + rng.normal(0, 170.0, common.size), common, 170.0)
    assert len(r) < 8 and r[-1] > 3000
    shifted = window.copy()
    shifted[:2] = shifted[1::-1]  # the two informative buckets swap: real drift
    assert psi(*pool_noisy_buckets(noisy, shifted, 170.0)) > 0.2
    assert np.array_equal(pool_noisy_buckets(noisy, window, None)[0], noisy)  # exact profiles are untouched
