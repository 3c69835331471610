"""The auditing statistics on simulated mechanisms whose true epsilon is known.

The fakes here are the mechanisms themselves, in NumPy: a one-shot Gaussian release of the sum of
inserted canary updates, and DP-FedAvg over rounds (Poisson-sampled clients, updates clipped to C,
Gaussian noise z * C on the sum) with real clients whose updates drift steadily, as trained ones do.
"""

from __future__ import annotations

from functools import lru_cache

import dp_accounting
import numpy as np
import pytest

from fedready.privacy.accounting import compose_epsilon
from fedready.privacy.auditing import (
    canary_audit,
    cosine_scores,
    inclusion_bits,
    isotropic_directions,
    one_run_audit,
    subsampled_gaussian_scores,
)

DIM = 2722  # parameters of fedready's default model (mlp, 16 hidden units) on Adult's 167 features
DELTA = 1e-5


@lru_cache(maxsize=4)
def _directions(count: int, orthogonal: bool) -> np.ndarray:
    """Canary directions, drawn once per shape: they are fixed before any run, like a real audit's."""
    directions = isotropic_directions(count, DIM, rng=np.random.default_rng(1234), orthogonal=orthogonal)
    directions.setflags(write=False)
    return directions


def _one_shot_release(canaries: int, noise: float, seed: int, *, orthogonal: bool = False):
    """Sum of the inserted unit canaries plus N(0, noise^2 I): the Gaussian mechanism, sensitivity 1."""
    rng = np.random.default_rng(seed)
    directions = _directions(canaries, orthogonal)
    bits = inclusion_bits(canaries, rng=rng)
    release = directions[bits].sum(axis=0) + noise * rng.standard_normal(DIM)
    return cosine_scores(release, directions), bits


def simulate_dp_fedavg(
    *,
    canaries: int,
    noise_multiplier: float,
    noise_fraction: float,
    seed: int,
    clients: int = 100,
    sample_rate: float = 0.1,
    rounds: int = 50,
    drift_share: float = 0.5,
):
    """Client-level DP-FedAvg with canary clients; returns (per-round projections, final cosines, bits).

    Every round each real client and each inserted canary takes part with probability
    ``sample_rate``; every update has norm C = 1; the sum gets N(0, (noise_fraction * z)^2 I), so
    ``noise_fraction < 1`` is the under-noising bug (the ledger still charges ``z``). A real client's
    update is ``drift_share`` of a slowly turning common direction plus its own isotropic part.
    Projections are in units of one client's contribution, as :func:`subsampled_gaussian_scores` wants.
    """
    rng = np.random.default_rng(seed)
    directions = _directions(canaries, canaries <= DIM)
    bits = inclusion_bits(canaries, rng=rng)
    common = rng.standard_normal(DIM)
    projections = np.zeros((canaries, rounds))
    total = np.zeros(DIM)
    for t in range(rounds):
        common += 0.3 * np.linalg.norm(common) / np.sqrt(DIM) * rng.standard_normal(DIM)  # slow turn
        g = common / np.linalg.norm(common)
        own = rng.standard_normal((rng.binomial(clients, sample_rate), DIM))
        own /= np.linalg.norm(own, axis=1, keepdims=True)
        s = (drift_share * g + np.sqrt(1 - drift_share**2) * own).sum(axis=0)
        s += directions[bits & (rng.random(canaries) < sample_rate)].sum(axis=0)
        s += noise_fraction * noise_multiplier * rng.standard_normal(DIM)
        projections[:, t] = directions @ s
        total += s
    return projections, cosine_scores(total, directions), bits


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_noiseless_release_of_500_canaries_gives_a_large_bound(seed):
    scores, bits = _one_shot_release(500, 0.0, seed)
    audit = one_run_audit(scores, bits, delta=DELTA)
    assert audit.epsilon >= 3.0


@pytest.mark.parametrize("noise", [0.5, 1.0, 2.0])
def test_properly_noised_release_stays_below_its_true_epsilon_across_seeds(noise):
    true_eps = dp_accounting.get_epsilon_gaussian(noise, DELTA)
    bounds = [one_run_audit(*_one_shot_release(1000, noise, seed), delta=DELTA).epsilon for seed in range(5)]
    assert max(bounds) < true_eps
    if noise == 0.5:  # true epsilon 10: the audit sees a lot of it, so it is not vacuous
        assert min(bounds) > 1.5


@pytest.mark.parametrize("noise", [0.5, 1.0, 2.0])
def test_gaussian_fit_of_cosines_recovers_the_mechanisms_epsilon(noise):
    # Orthogonal canaries: each cosine is (inserted + N(0, noise^2)) / |release|, a common scale,
    # so the fit sees exactly the Gaussian mechanism's two distributions (up to sampling error).
    scores, bits = _one_shot_release(2000, noise, 3, orthogonal=True)
    audit = canary_audit(scores, bits, delta=DELTA)
    true_eps = dp_accounting.get_epsilon_gaussian(noise, DELTA)
    assert audit.estimate == pytest.approx(true_eps, rel=0.15)
    assert audit.bound.epsilon < true_eps


def _accounted(z: float) -> float:
    return compose_epsilon([(z, 0.1, 50)], delta=DELTA)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_correct_dp_fedavg_run_stays_below_the_ledger(seed):
    z = 1.0
    projections, cosines, bits = simulate_dp_fedavg(canaries=1000, noise_multiplier=z, noise_fraction=1.0, seed=seed)
    per_round = subsampled_gaussian_scores(projections, sample_rate=0.1, noise_multiplier=z)
    for scores in (per_round, cosines):
        assert one_run_audit(scores, bits, delta=DELTA).epsilon < _accounted(z)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_tenth_of_the_charged_noise_is_caught(seed):
    # z = 2 is charged (epsilon 1.84 over 50 rounds at q = 0.1); the mechanism adds z / 10.
    z = 2.0
    projections, _, bits = simulate_dp_fedavg(canaries=1000, noise_multiplier=z, noise_fraction=0.1, seed=seed)
    scores = subsampled_gaussian_scores(projections, sample_rate=0.1, noise_multiplier=z)
    assert one_run_audit(scores, bits, delta=DELTA).epsilon > _accounted(z)
