"""Distributed discrete Gaussian noise: each client adds a share, the secure sum carries the whole.

Notes
-----
Counts are integers, so the noise is too: the discrete Gaussian ``N_Z(0, s^2)`` (probability of
``y`` proportional to ``exp(-y^2 / (2 s^2))`` on the integers), sampled *exactly* with the rejection
sampler of Canonne, Kamath and Steinke 2020 ("The Discrete Gaussian for Differential Privacy",
NeurIPS; arXiv:2004.00010, Algorithms 1-3): rational arithmetic and uniform integers only, no
floating point, so no low-order bits leak (Mironov 2012). Every uniform integer comes from
``secrets.randbelow`` (operating-system entropy), never from ``--seed``.

Under SecAgg+ each of the ``n`` clients in the sum adds ``N_Z(0, sigma^2 / t)`` to every coordinate,
where ``t`` is the least number of clients the server may find in the sum (the query round's
SecAgg+ reconstruction threshold; the server refuses a sum of fewer). The guarantee needs at least ``t``
*honest* clients in the sum: a colluding client's share is known to the coordinator, so with ``c`` of
the ``n`` colluding the noise left is ``(n - c) sigma^2 / t`` (``t = asked - c`` tolerates ``c``
colluders). The sum of ``n >= t`` shares
has variance ``n sigma^2 / t >= sigma^2`` and is close to ``N_Z(0, n sigma^2 / t)``; Kairouz, Liu and
Steinke 2021 ("The Distributed Discrete Gaussian Mechanism for Federated Learning with Secure
Aggregation", ICML; arXiv:2102.06387, Proposition 14) bound the mechanism ``x + sum of n shares``:
it is ``rho``-zCDP (Renyi DP ``alpha rho`` at every order ``alpha``) with

    rho = 1/2 min( D2^2 / (n s2) + 2 D1 tau / sqrt(n s2) + tau^2 d,  (D2 / sqrt(n s2) + tau sqrt(d))^2 ),
    tau = 10 sum_{k=1}^{n-1} exp(-2 pi^2 s2 k / (k + 1)),

for shares of variance ``s2`` (each share's sigma ``sqrt(s2)`` at least 1/2, so ``s2 >= 1/4``), L1 and L2
sensitivities ``D1``, ``D2`` and ``d`` coordinates. :func:`distributed_rho` computes it (the ``tau``
terms are charged, however small), and :func:`gaussian_equivalent` turns it into the noise multiplier of
a Gaussian mechanism with the same Renyi curve, ``1 / sqrt(2 rho)``, which is what the ledger records. A
single discrete Gaussian of variance ``s2`` (a client's full local noise) is ``D2^2 / (2 s2)``-zCDP for
integer sensitivities (Canonne, Kamath, Steinke 2020, Theorem 4): the same zCDP bound as the continuous
Gaussian.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable
from fractions import Fraction

import numpy as np

from fedready.config import MIN_SHARE_VARIANCE

__all__ = [
    "distributed_rho",
    "distributed_tau",
    "gaussian_equivalent",
    "sample_discrete_gaussian",
]

RandBelow = Callable[[int], int]  # uniform integer in [0, n)


def _bernoulli(p: Fraction, randbelow: RandBelow) -> bool:
    return randbelow(p.denominator) < p.numerator


def _bernoulli_exp(gamma: Fraction, randbelow: RandBelow) -> bool:
    """True with probability ``exp(-gamma)`` (CKS 2020, Algorithm 1), exactly."""
    if gamma <= 1:
        k, a = 1, True
        while a:
            a = _bernoulli(gamma / k, randbelow)
            k = k + 1 if a else k
        return k % 2 == 1
    for _ in range(math.floor(gamma)):
        if not _bernoulli_exp(Fraction(1), randbelow):
            return False
    return _bernoulli_exp(gamma - math.floor(gamma), randbelow)


def _geometric_exp(x: Fraction, randbelow: RandBelow) -> int:
    """``floor`` of an exponential: ``P(k) = (1 - e^-x) e^(-x k)`` (CKS 2020, Algorithm 2)."""
    s, t = x.numerator, x.denominator
    while True:
        u = randbelow(t)
        if _bernoulli_exp(Fraction(u, t), randbelow):
            break
    v = 0
    while _bernoulli_exp(Fraction(1), randbelow):
        v += 1
    return (v * t + u) // s


def _discrete_laplace(scale: int, randbelow: RandBelow) -> int:
    """``P(y)`` proportional to ``exp(-|y| / scale)`` on the integers (CKS 2020, Algorithm 2)."""
    while True:
        negative = randbelow(2) == 1
        magnitude = _geometric_exp(Fraction(1, scale), randbelow)
        if negative and magnitude == 0:
            continue
        return -magnitude if negative else magnitude


def _one_discrete_gaussian(sigma2: Fraction, randbelow: RandBelow) -> int:
    """One draw of ``N_Z(0, sigma2)`` (CKS 2020, Algorithm 3)."""
    t = math.isqrt(math.floor(sigma2)) + 1  # floor(sigma) + 1
    while True:
        y = _discrete_laplace(t, randbelow)
        gamma = (abs(y) - sigma2 / t) ** 2 / (2 * sigma2)
        if _bernoulli_exp(gamma, randbelow):
            return y


def sample_discrete_gaussian(sigma2: float, size: int, *, randbelow: RandBelow | None = None) -> np.ndarray:
    """``size`` independent draws of the discrete Gaussian ``N_Z(0, sigma2)``, as int64.

    Parameters
    ----------
    sigma2 : float
        The variance parameter (> 0); taken as the exact rational the float denotes.
    size : int
        How many draws.
    randbelow : callable, optional
        Uniform integers in ``[0, n)``; default ``secrets.randbelow`` (operating-system entropy).
        Only ``--insecure-seeded-noise`` (stamped "not private") passes a seeded one.

    Raises
    ------
    ValueError
        If ``sigma2`` is not a positive finite number.
    """
    if not (math.isfinite(sigma2) and sigma2 > 0):
        raise ValueError(f"the discrete Gaussian needs a positive finite variance, got {sigma2}")
    draw = randbelow or secrets.randbelow
    s2 = Fraction(sigma2)
    return np.array([_one_discrete_gaussian(s2, draw) for _ in range(int(size))], dtype=np.int64)


def distributed_tau(share_variance: float, shares: int) -> float:
    """KLS 2021's ``tau`` for a sum of ``shares`` discrete Gaussians of variance ``share_variance``."""
    return 10.0 * sum(math.exp(-2.0 * math.pi**2 * share_variance * k / (k + 1)) for k in range(1, shares))


def distributed_rho(*, share_variance: float, shares: int, l1: float, l2: float, dim: int) -> tuple[float, float]:
    """``(rho, tau)``: the zCDP of ``x + (sum of shares discrete Gaussians)`` (KLS 2021, Proposition 14).

    ``l1``, ``l2``: the vector's sensitivities; ``dim``: its coordinates.

    Raises
    ------
    ValueError
        If ``share_variance`` is below 1/4 (a share's sigma below 1/2: outside the proposition) or ``shares``
        below 1. A configuration that would give such a share is refused before the run
        (``fedready.config``); this is the backstop.
    """
    if share_variance < MIN_SHARE_VARIANCE or shares < 1:
        raise ValueError(f"KLS 2021 needs each share's sigma >= 1/2 (variance >= 1/4) and shares >= 1; got variance "
                         f"{share_variance}, shares {shares}")  # fmt: skip
    tau = distributed_tau(share_variance, shares)
    total = shares * share_variance
    first = l2**2 / total + 2.0 * l1 * tau / math.sqrt(total) + tau**2 * dim
    second = (l2 / math.sqrt(total) + tau * math.sqrt(dim)) ** 2
    return 0.5 * min(first, second), tau


def gaussian_equivalent(rho: float) -> float:
    """The noise multiplier of the Gaussian mechanism whose Renyi curve is ``alpha rho``: ``1 / sqrt(2 rho)``."""
    return 1.0 / math.sqrt(2.0 * rho)
