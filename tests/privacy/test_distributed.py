"""Distributed discrete Gaussian noise: the exact sampler, the sum of shares and its accounting (KLS 2021)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from fedready.client.state import query_noise_split
from fedready.config import make_config, query_threshold
from fedready.privacy.accounting import compose_epsilon
from fedready.privacy.distributed import (
    distributed_rho,
    distributed_tau,
    gaussian_equivalent,
    sample_discrete_gaussian,
)

N = 20_000


def _exact_moments(sigma2: float) -> tuple[float, float, float]:
    """Mean, variance and 4th moment of N_Z(0, sigma2), summed over its support (its variance is at most sigma2)."""
    ys = np.arange(-int(40 * math.sqrt(sigma2)) - 10, int(40 * math.sqrt(sigma2)) + 11).astype(np.float64)
    w = np.exp(-(ys**2) / (2 * sigma2))
    w /= w.sum()
    return float((w * ys).sum()), float((w * ys**2).sum()), float((w * ys**4).sum())


@pytest.mark.parametrize("sigma2", [0.7, 9.0, 1600.0])
def test_discrete_gaussian_mean_and_variance_within_bounds(sigma2):
    draws = sample_discrete_gaussian(sigma2, N)
    assert draws.dtype == np.int64 and draws.shape == (N,)
    mean, var, m4 = _exact_moments(sigma2)
    assert abs(mean) < 1e-12 and abs(var - sigma2) <= 0.15 * sigma2  # exact variance: sigma2 up to a tiny deficit
    # 5 standard errors: a correct sampler fails this about once in 3 million runs
    assert abs(draws.mean()) <= 5 * math.sqrt(var / N)
    assert abs(draws.var() - var) <= 5 * math.sqrt((m4 - var**2) / N)


def test_discrete_gaussian_takes_its_randomness_from_os_entropy_unless_seeded():
    # two secret samplers disagree; a seeded one (--insecure-seeded-noise only) repeats itself
    assert not np.array_equal(sample_discrete_gaussian(100.0, 50), sample_discrete_gaussian(100.0, 50))
    a = sample_discrete_gaussian(100.0, 50, randbelow=random.Random(7).randrange)
    b = sample_discrete_gaussian(100.0, 50, randbelow=random.Random(7).randrange)
    assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="positive"):
        sample_discrete_gaussian(0.0, 3)


def test_sum_of_t_shares_has_the_whole_variance():
    sigma2, t = 900.0, 4
    shares = np.stack([sample_discrete_gaussian(sigma2 / t, N // 2) for _ in range(t)])
    total = shares.sum(axis=0)
    assert abs(total.var() - sigma2) <= 5 * sigma2 * math.sqrt(2 / (N // 2))
    # one share alone carries a quarter of it: what a coordinator breaking SecAgg+ would face
    assert shares[0].var() == pytest.approx(sigma2 / t, rel=0.1)


def test_tau_is_computed_and_charged_not_assumed():
    # KLS 2021, Proposition 14: tau = 10 sum_{k<n} exp(-2 pi^2 s2 k / (k + 1))
    assert distributed_tau(1.0, 1) == 0.0
    assert distributed_tau(0.5, 2) == pytest.approx(10 * math.exp(-(math.pi**2) / 2))
    rho, tau = distributed_rho(share_variance=0.5, shares=4, l1=1, l2=1, dim=10)
    assert tau > 0.05 and rho > 1 / (2 * 4 * 0.5)  # small shares: tau costs, and is charged
    # at fedready's sigmas tau underflows to 0 and the charge is the Gaussian's, exactly
    rho, tau = distributed_rho(share_variance=26.8**2 / 9, shares=9, l1=3, l2=math.sqrt(3), dim=40)
    assert tau == 0.0 and rho == pytest.approx(3 / (2 * 26.8**2))
    # sum of t shares: the same zCDP as one whole discrete Gaussian of the total variance
    assert distributed_rho(share_variance=100.0, shares=1, l1=1, l2=1, dim=5)[0] == pytest.approx(1 / 200)
    # KLS 2021 Proposition 14 needs each share's sigma >= 1/2: variance 1/4 is inside, below it is refused
    assert distributed_rho(share_variance=0.25, shares=3, l1=1, l2=1, dim=1)[0] > 0
    with pytest.raises(ValueError, match="sigma >= 1/2"):
        distributed_rho(share_variance=0.24, shares=3, l1=1, l2=1, dim=1)


def test_the_query_charge_composes_into_the_budget_at_the_default():
    cfg = make_config(num_clients=10, secagg=True)
    t = query_threshold(cfg)
    assert t == 9
    accuracy_std, std = query_noise_split(cfg.query_noise, cfg.query_accuracy_share, accuracy=True, sum_vectors=7)
    rho, _ = distributed_rho(share_variance=std**2 / t, shares=t, l1=7, l2=math.sqrt(7), dim=120)
    z = gaussian_equivalent(0.5 / accuracy_std**2 + rho)
    assert z == pytest.approx(cfg.query_noise, rel=1e-12)  # the planned release, tau (0 here) included
    # the charge composes with training like any release, and the whole stays in the default budget
    assert compose_epsilon([(z, 1.0, 1)], delta=cfg.delta) < compose_epsilon([(z, 1.0, 1), (z, 1.0, 1)],
                                                                              delta=cfg.delta)  # fmt: skip
    assert compose_epsilon([(z, 1.0, 1)], delta=cfg.delta) < cfg.epsilon


def test_a_tiny_share_costs_more_than_the_plan():
    # sigmas where tau is not negligible are charged above the Gaussian's rho: the ledger never under-reports
    plain = 1 / (2 * 2.0)
    rho, tau = distributed_rho(share_variance=0.5, shares=4, l1=1, l2=1, dim=1)
    assert tau > 0 and rho > plain and gaussian_equivalent(rho) < gaussian_equivalent(plain)
