"""Noise calibration and epsilon composition with Opacus's accountants.

Notes
-----
Calibration targets the *whole* training: the noise multiplier is chosen so that
``rounds * local_epochs * steps_per_epoch`` steps of the Poisson-subsampled Gaussian
mechanism compose to at most ``(epsilon, delta)``. Composing per round and
reporting only the last round's epsilon (a fresh ``PrivacyEngine`` every round)
under-reports the spending by roughly the square root of the number of rounds.
Accounting: Mironov 2017, "Renyi Differential Privacy" (arXiv:1702.07476), and
Gopi et al. 2021, PRV accountant (arXiv:2106.02848).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache

import numpy as np
from opacus.accountants import RDPAccountant, create_accountant
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.accountants.utils import get_noise_multiplier

from fedready.errors import ConfigError

__all__ = ["ACCOUNTANTS", "calibrate_noise", "calibrate_with_releases", "compose_epsilon", "dp_accounting_epsilon"]

ACCOUNTANTS = ("rdp", "prv")

Step = tuple[float, float, int]  # (noise_multiplier, sample_rate, steps), Opacus's history format


def _check(epsilon: float | None, delta: float, accountant: str) -> None:
    if accountant not in ACCOUNTANTS:
        raise ConfigError("accountant", f"unknown accountant '{accountant}'; expected one of: {', '.join(ACCOUNTANTS)}")
    if epsilon is not None and not (epsilon > 0 and math.isfinite(epsilon)):
        raise ConfigError("epsilon", f"must be a finite number > 0, got {epsilon}")
    if not 0 < delta < 1:
        raise ConfigError("delta", f"must be in (0, 1), got {delta}")


def calibrate_noise(*, target_epsilon: float, target_delta: float, sample_rate: float, steps: int,
                    accountant: str = "rdp") -> float:  # fmt: skip
    """Return the smallest noise multiplier (to Opacus's tolerance) meeting the budget.

    Parameters
    ----------
    target_epsilon, target_delta : float
        The budget for the whole training, all rounds included.
    sample_rate : float
        Poisson sampling rate per step, in (0, 1].
    steps : int
        Total planned steps over every round and local epoch.
    accountant : {"rdp", "prv"}
        Opacus accountant used to search for the noise.

    Returns
    -------
    float
        A noise multiplier whose composed epsilon after ``steps`` is <= ``target_epsilon``.
    """
    _check(target_epsilon, target_delta, accountant)
    if not 0 < sample_rate <= 1:
        raise ConfigError("batch_size", f"sample rate must be in (0, 1], got {sample_rate}")
    if steps < 1:
        raise ConfigError("rounds", f"planned steps must be >= 1, got {steps}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus warns about optimal RDP orders at the edges
        sigma = get_noise_multiplier(target_epsilon=target_epsilon, target_delta=target_delta,
                                     sample_rate=sample_rate, steps=steps, accountant=accountant)  # fmt: skip
    # Opacus's binary search ends below the target; check it rather than trust it.
    spent = compose_epsilon([(sigma, sample_rate, steps)], delta=target_delta, accountant=accountant)
    if spent > target_epsilon:
        raise RuntimeError(f"calibration overshot: epsilon {spent} > target {target_epsilon}")
    return float(sigma)


def compose_epsilon(history: Iterable[Sequence[float]], *, delta: float, accountant: str = "rdp") -> float:
    """Compose a history of ``(noise_multiplier, sample_rate, steps)`` into one epsilon.

    Uses only Opacus's accountant, so anyone can recompute a ledger's numbers.
    An empty history costs nothing (epsilon 0).
    """
    _check(None, delta, accountant)
    # Steps of the same mechanism (same noise and rate) compose by adding up, so rounds
    # with equal parameters are merged first: the cost then stays flat as rounds accrue.
    merged: dict[tuple[float, float], int] = {}
    for s, q, n in history:
        if int(n) > 0:
            key = (float(s), float(q))
            merged[key] = merged.get(key, 0) + int(n)
    if not merged:
        return 0.0
    if accountant == "rdp":
        return _rdp_epsilon(merged, delta)
    acc = create_accountant(mechanism=accountant)
    acc.history = [(s, q, n) for (s, q), n in merged.items()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(acc.get_epsilon(delta=delta))


@lru_cache(maxsize=1024)
def _rdp_per_step(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    """Opacus's RDP curve of one step of the subsampled Gaussian mechanism, at its default orders."""
    curve = rdp_analysis.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1,
                                     orders=RDPAccountant.DEFAULT_ALPHAS)  # fmt: skip
    curve.setflags(write=False)
    return curve


def _rdp_epsilon(merged: dict[tuple[float, float], int], delta: float) -> float:
    """What ``RDPAccountant.get_epsilon`` returns for this history, with each curve computed once per process.

    Opacus computes ``compute_rdp(q, z, steps) = curve(q, z) * steps`` for every history entry on every
    call (about 20 ms for a fractional rate); clients compose after every round, so the curve of each
    ``(z, q)`` is cached and only scaled here. Same functions, same orders, same result.
    """
    rdp = sum(_rdp_per_step(s, q) * n for (s, q), n in merged.items())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eps, _ = rdp_analysis.get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)
    return float(eps)


def calibrate_with_releases(*, target_epsilon: float, target_delta: float, sample_rate: float, steps: int,
                            releases: Sequence[Step] = (), accountant: str = "rdp") -> float:  # fmt: skip
    """The smallest DP-SGD noise multiplier whose composition *with* ``releases`` meets the budget.

    A client's training is not the only thing it releases: its noisy row count, the noisy
    counts it answers after training (group counts, reference profile) are releases about the
    same rows. Their noise is fixed by configuration, so the training noise is calibrated for
    what is left: ``compose(training + releases) <= target_epsilon``.

    Parameters
    ----------
    releases : sequence of (noise_multiplier, sample_rate, steps)
        The other planned releases (Gaussian, Opacus's history format).

    Raises
    ------
    ConfigError
        If the other releases alone already spend the budget (raise their noise or the budget).
    """
    if not releases:
        return calibrate_noise(target_epsilon=target_epsilon, target_delta=target_delta, sample_rate=sample_rate,
                               steps=steps, accountant=accountant)  # fmt: skip
    _check(target_epsilon, target_delta, accountant)
    if not 0 < sample_rate <= 1:
        raise ConfigError("batch_size", f"sample rate must be in (0, 1], got {sample_rate}")
    if steps < 1:
        raise ConfigError("rounds", f"planned steps must be >= 1, got {steps}")
    fixed = compose_epsilon(releases, delta=target_delta, accountant=accountant)
    if fixed >= target_epsilon:
        raise ConfigError("epsilon", f"the count and query releases alone spend epsilon {fixed:.3f} >= budget "
                                     f"{target_epsilon}; raise --epsilon or --query-noise / --count-noise")  # fmt: skip

    def spent(z: float) -> float:
        return compose_epsilon([*releases, (z, sample_rate, steps)], delta=target_delta, accountant=accountant)

    # Each evaluation of a fractional-rate curve costs 0.1-0.5 s (Opacus's fractional orders), so the search
    # runs on the integer orders first (milliseconds): their epsilon is never below the full set's (a minimum
    # over fewer orders), so that noise fits, and it is usually within 0.01% of the smallest that does. The
    # bracket is then bisected on a log scale with every order until it is 1e-4 wide (relative): the upper
    # end (returned, and checked) is within 0.01% of the smallest noise that fits.
    try:  # the integer orders cannot fit when the other releases alone spend the budget on them (orders < 2 rule)
        hi = _calibrate_integer_orders(target_epsilon, target_delta, sample_rate, steps, releases) \
            if accountant == "rdp" else None  # fmt: skip
    except ConfigError:
        hi = None
    if hi is not None:
        lo = hi / (1.0 + 1e-4)
        if spent(lo) <= target_epsilon:  # the fractional orders allow less noise: find it (Brent, log scale)
            lo, hi = lo / 1.05, lo
            while spent(lo) <= target_epsilon:
                if lo < 1e-6:  # training that costs nothing: the other releases alone decide
                    return float(hi)
                lo, hi = lo / 1.05, lo
            return _brent_smallest(spent, target_epsilon, lo, hi)
    else:
        lo = calibrate_noise(target_epsilon=target_epsilon, target_delta=target_delta, sample_rate=sample_rate,
                             steps=steps, accountant=accountant)  # fmt: skip
        hi = 1.25 * lo
    hi = _bisect_smallest(spent, target_epsilon, lo, hi)
    assert spent(hi) <= target_epsilon
    return float(hi)


def _bisect_smallest(spent: Callable[[float], float], target: float, lo: float, hi: float) -> float:
    """The smallest noise (within 1e-4, relative) with ``spent(z) <= target``, searched up from ``[lo, hi]``:
    ``hi`` doubles until it fits, then the bracket is bisected on a log scale."""
    while spent(hi) > target:
        lo, hi = hi, 2.0 * hi
        if hi > 1e6:
            raise ConfigError("epsilon", f"no noise level meets epsilon {target} beside the other releases")
    while hi / lo > 1.0 + 1e-4:
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if spent(mid) > target else (lo, mid)
    return hi


PLD_MIN_NOISE = 0.2  # below it the PLD cross-check costs seconds to minutes and gigabytes per summary


PLD_GRID = 1e-3  # value discretisation interval of the PLD cross-check


def dp_accounting_epsilon(history: Iterable[Sequence[float]], *, delta: float) -> dict[str, float | None]:
    """The same releases through Google's ``dp-accounting``: an independent cross-check.

    Each ``(noise_multiplier, sample_rate, steps)`` is composed as ``steps`` Poisson-subsampled
    Gaussian events (add/remove adjacency), the mechanism fedready implements. Returns the RDP
    epsilon (same bound as Opacus's, computed by different code) and the tighter privacy-loss-
    distribution (PLD) epsilon. The PLD is left out (``None``) when a noise multiplier is below
    ``PLD_MIN_NOISE``: its grid grows as 1/z^2 (gigabytes and minutes at z = 0.01), and the
    guarantee there is above 50 anyway.
    """
    import logging

    import dp_accounting
    from dp_accounting import pld, rdp

    # Composition is commutative: releases with the same (z, q) are one self-composed event of all their
    # steps. A run's history repeats the same (z, q) every round; composed one by one, the PLD convolves
    # once per round (seconds per summary), self-composed it convolves once (the same epsilon).
    steps_of: dict[tuple[float, float], int] = {}
    for z, q, n in history:
        if int(n) > 0:
            key = (float(z), min(1.0, float(q)))
            steps_of[key] = steps_of.get(key, 0) + int(n)
    events, smallest_z = [], math.inf
    for (z, q), n in steps_of.items():
        smallest_z = min(smallest_z, z)
        base = dp_accounting.GaussianDpEvent(z)
        one = base if q >= 1.0 else dp_accounting.PoissonSampledDpEvent(q, base)
        events.append(dp_accounting.SelfComposedDpEvent(one, n))
    if not events:
        return {"rdp": 0.0, "pld": 0.0}
    event = dp_accounting.ComposedDpEvent(events)
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)  # it warns for RDP orders it skips
    try:
        r = rdp.RdpAccountant()
        r.compose(event)
        if smallest_z < PLD_MIN_NOISE:
            return {"rdp": float(r.get_epsilon(delta)), "pld": None}
        # a 1e-3 grid (the library's default is 1e-4): the estimate stays pessimistic, an upper bound, within
        # 0.01% of the finer grid's on fedready's histories, and ten times faster
        p = pld.PLDAccountant(value_discretization_interval=PLD_GRID)
        p.compose(event)
        return {"rdp": float(r.get_epsilon(delta)), "pld": float(p.get_epsilon(delta))}
    finally:
        absl.setLevel(level)


_INTEGER_ORDERS = [a for a in RDPAccountant.DEFAULT_ALPHAS if float(a).is_integer()]


def _calibrate_integer_orders(target_epsilon: float, delta: float, sample_rate: float, steps: int,
                              releases: Sequence[Step]) -> float:  # fmt: skip
    """The smallest noise (within 1e-4, relative) meeting the budget with Opacus's integer RDP orders only.

    An upper bound of the noise the full set of orders needs (their epsilon is a minimum over more orders).
    """
    fixed = sum(rdp_analysis.compute_rdp(q=q, noise_multiplier=z, steps=int(n), orders=_INTEGER_ORDERS)
                for z, q, n in releases if int(n) > 0)  # fmt: skip

    def spent(z: float) -> float:
        curve = rdp_analysis.compute_rdp(q=sample_rate, noise_multiplier=z, steps=steps, orders=_INTEGER_ORDERS)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            eps, _ = rdp_analysis.get_privacy_spent(orders=_INTEGER_ORDERS, rdp=fixed + curve, delta=delta)
        return float(eps)

    return _bisect_smallest(spent, target_epsilon, 1e-3, 1.0)


def _brent_smallest(spent: Callable[[float], float], target: float, lo: float, hi: float) -> float:
    """The smallest noise (within 1e-4, relative) with ``spent(z) <= target``, for ``spent(lo) > target >= spent(hi)``.

    Brent's method on ``log z`` (about 5 evaluations where bisection takes 9); the root is bracketed to
    2e-5, so ``z`` just above it fits and ``z / (1 + 1e-4)`` does not, as the bisection guarantees.
    """
    from scipy.optimize import brentq  # SciPy comes with Opacus

    try:
        root = brentq(lambda x: spent(math.exp(x)) - target, math.log(lo), math.log(hi), xtol=2e-5, rtol=1e-12)
    except ValueError:  # exp(log(x)) one unit in the last place off an end, so both ends on one side: bisect
        return _bisect_smallest(spent, target, lo, hi)
    z = math.exp(root + 3e-5)
    while spent(z) > target:  # never on a smooth curve; kept so the result is checked, not assumed
        z *= 1.0 + 1e-5
    return float(z)
