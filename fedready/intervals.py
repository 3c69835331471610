"""Numbers with their uncertainty: estimates and confidence intervals from exact or DP-noised counts.

Two sources feed fedready's release decisions (docs/guides/operator.md, "Evaluation and release gates"):

* the coordinator's **benchmark** (its public holdout): exact counts of a finite sample, so an
  interval covers the sampling error only (Wilson intervals, or a bootstrap over its rows);
* the **clients'** validation rows: counts each client noised itself (Gaussian, a known std) before
  they left, so an interval covers the DP noise *and* the finite sample of validation rows.

Everything here is post-processing of released values (no privacy cost) and needs only numpy,
so the lean edge install can read and render the results. The Monte Carlo draws are seeded:
they are not DP noise, and a fixed seed makes a report reproducible from its inputs.

Notes
-----
The clients' accuracy spread is the population standard deviation, over the clients that can be
estimated, of their true accuracies (each client's expected accuracy on its own data). Its
estimator subtracts the known noise and sampling variance from the observed spread (a method of
moments, as in random-effects meta-analysis: DerSimonian & Laird 1986), and its interval is found
by inverting a parametric bootstrap test (the constrained maximum-likelihood configuration of the
client accuracies for each candidate spread, simulated with the binomial sampling and the known
Gaussian noise; Efron & Tibshirani 1993, ch. 12 and 16). ``tests/test_intervals.py`` measures the
coverage of every interval on synthetic noised counts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

__all__ = [
    "DECISIONS",
    "LEVEL",
    "worst_decision",
    "Estimate",
    "ClientSpread",
    "accuracy_from_counts",
    "bootstrap_rows",
    "client_spread",
    "noisy_table_bootstrap",
    "wilson",
]

Interval = tuple[float | None, float | None]  # (lo, hi); (None, None) when there is none
LEVEL = 0.95  # the confidence level of every interval fedready reports
MIN_PRECISION = 0.1  # a client whose accuracy's standard error exceeds this is too small to estimate
_MC_SEED = 0x1E7A  # Monte Carlo seed of the bootstraps (not DP noise: a reproducible computation)


DECISIONS = ("passed", "undecided", "failed", "not-run")  # a release decision, from best to worst


def worst_decision(*decisions: str) -> str:
    """The worst of release decisions (an unknown word counts as "failed": never read as passed)."""
    return max((d if d in DECISIONS else "failed" for d in decisions), key=DECISIONS.index)


def _z(level: float) -> float:
    return NormalDist().inv_cdf(0.5 + level / 2)


@dataclass(frozen=True)
class Estimate:
    """A number with its interval and where it came from.

    ``value`` is None when the number is undefined (``note`` says why). ``noise_std`` is the
    std of the DP noise on the counts it was computed from (0: exact counts). ``lo == hi ==
    value`` for a number known exactly (the ledger's epsilon).
    """

    value: float | None
    lo: float | None
    hi: float | None
    source: str  # "benchmark" | "clients" | "ledger"
    noise_std: float = 0.0
    level: float = LEVEL
    note: str = ""

    @classmethod
    def exact(cls, value: float | None, source: str, note: str = "") -> Estimate:
        return cls(value, value, value, source, 0.0, LEVEL, note)

    @classmethod
    def undefined(cls, source: str, note: str, noise_std: float = 0.0) -> Estimate:
        return cls(None, None, None, source, noise_std, LEVEL, note)

    @property
    def width(self) -> float | None:
        return None if self.lo is None or self.hi is None else self.hi - self.lo

    def to_dict(self) -> dict[str, Any]:
        d = {"value": self.value, "lo": self.lo, "hi": self.hi, "source": self.source,
             "noise_std": self.noise_std, "level": self.level}  # fmt: skip
        if self.note:
            d["note"] = self.note
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Estimate:
        return cls(d.get("value"), d.get("lo"), d.get("hi"), str(d.get("source", "")), float(d.get("noise_std", 0.0)),
                   float(d.get("level", LEVEL)), str(d.get("note", "")))  # fmt: skip

    def text(self, digits: int = 3) -> str:
        """``0.084 [0.031, 0.131]`` (or ``undefined``): the way every interval is printed."""
        if self.value is None:
            return "undefined"
        if self.lo is None or self.hi is None or (self.lo == self.hi == self.value):
            return f"{self.value:.{digits}f}"
        return f"{self.value:.{digits}f} [{self.lo:.{digits}f}, {self.hi:.{digits}f}]"


def wilson(k: float, n: float, *, level: float = LEVEL, extra_var: float = 0.0) -> tuple[float, float]:
    """Wilson score interval for a proportion ``k / n`` (Wilson 1927), optionally widened by noise.

    ``extra_var`` is an additional variance of the estimated proportion (the DP noise's share):
    the interval then uses the design-effect adjusted sample size ``n_eff = p(1 - p) / V``, with
    ``V`` the binomial plus the extra variance (Korn & Graubard 1998), so a noisy proportion gets
    a Wilson interval that is as wide as its total error.
    """
    if n <= 0:
        return 0.0, 1.0
    p = min(1.0, max(0.0, k / n))
    if extra_var > 0:
        pq = max(p * (1 - p), 1.0 / (4 * n))  # never a zero binomial variance at the edges
        n = pq / (pq / n + extra_var)
    z = _z(level)
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


def _accuracy_var(p: np.ndarray | float, n: np.ndarray | float, noise_std: float) -> Any:
    """Variance of ``c~ / (c~ + w~)``: binomial sampling plus Gaussian noise on both counts (delta method)."""
    return np.asarray(p) * (1 - np.asarray(p)) / n + noise_std**2 * (np.asarray(p) ** 2 + (1 - np.asarray(p)) ** 2) / (
        np.asarray(n) ** 2
    )


def accuracy_from_counts(correct: float, wrong: float, *, noise_std: float = 0.0, source: str = "clients",
                         level: float = LEVEL) -> Estimate:  # fmt: skip
    """A client's accuracy from its (possibly noised) counts of correct and wrong decisions.

    The row count is their sum. Undefined when the (noisy) count is below 1, or when the
    standard error (sampling plus noise) exceeds ``MIN_PRECISION``: such a client is too small to
    estimate at this noise, and the note says how many rows would do.
    """
    n = correct + wrong
    if n < 1:
        return Estimate.undefined(source, f"no validation rows (noisy count {n:.0f})", noise_std)
    p = min(1.0, max(0.0, correct / n))
    pv = min(max(p, 0.05), 0.95)  # a standard error that does not vanish at an estimate of 0 or 1
    se = math.sqrt(float(_accuracy_var(pv, n, noise_std)))
    if se > MIN_PRECISION:
        need = _rows_for_precision(pv, noise_std)
        return Estimate(p, None, None, source, noise_std, level,
                        f"too few validation rows to estimate (about {n:.0f}; about {need:.0f} needed at noise std "
                        f"{noise_std:.3g})")  # fmt: skip
    lo, hi = wilson(p * n, n, level=level, extra_var=noise_std**2 * (p**2 + (1 - p) ** 2) / n**2)
    return Estimate(p, lo, hi, source, noise_std, level)


def _rows_for_precision(p: float, noise_std: float) -> float:
    """Fewest rows at which an accuracy near ``p`` has standard error ``MIN_PRECISION`` at this noise."""
    lo, hi = 1.0, 1e9
    for _ in range(100):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if math.sqrt(float(_accuracy_var(p, mid, noise_std))) > MIN_PRECISION else (lo, mid)
    return hi


@dataclass(frozen=True)
class ClientSpread:
    """The accuracy of each client and their spread, each with its interval."""

    clients: dict[str, Estimate]
    undefined: dict[str, str]  # client -> why it was left out of the spread
    std: Estimate
    worst_client: str | None
    worst: Estimate

    def to_dict(self) -> dict[str, Any]:
        return {
            "clients": {c: e.to_dict() for c, e in self.clients.items()},
            "undefined_clients": dict(self.undefined),
            "std": self.std.to_dict(),
            "worst_client": self.worst_client,
            "worst_accuracy": self.worst.to_dict(),
            "estimated_clients": len(self.clients) - len(self.undefined),
        }


def _constrained_pattern(a: np.ndarray, v: np.ndarray, tau: float) -> np.ndarray | None:
    """The client accuracies in [0, 1] closest to ``a`` (variances ``v``) whose spread is ``tau``; None if none is.

    Stationary points of ``sum((a - p)^2 / v)`` subject to ``std(p) = tau`` have the form
    ``p_i = m + w_i (a_i - m)`` with ``w_i = 1 / (1 + lam * v_i)`` and ``m`` the ``w``-weighted mean
    of ``a``: noisy clients shrink (or stretch) the most. ``lam`` is found by bisection. Accuracies
    leave [0, 1] when a spread is stretched far: the pattern is then clipped and stretched about
    its centre until the clipped spread is ``tau``, and a spread no stretch of it reaches in [0, 1]
    gives None (no configuration of this shape explains it).
    """
    p = _unbounded_pattern(a, v, tau)
    if p.min() >= 0.0 and p.max() <= 1.0:
        return p
    centre = float(np.clip(p.mean(), 0.0, 1.0))

    def clipped(s: float) -> np.ndarray:
        return np.clip(centre + s * (p - centre), 0.0, 1.0)

    lo, hi = 0.0, 1.0
    if float(clipped(1e6).std()) < tau:
        return None
    while float(clipped(hi).std()) < tau:
        lo, hi = hi, hi * 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if float(clipped(mid).std()) < tau else (lo, mid)
    return clipped(hi)


def _unbounded_pattern(a: np.ndarray, v: np.ndarray, tau: float) -> np.ndarray:
    """:func:`_constrained_pattern` without the [0, 1] bounds."""
    s0 = float(a.std())
    if tau <= 0 or s0 == 0:
        centre = float(np.sum(a / v) / np.sum(1 / v))
        return np.full_like(a, centre) if tau <= 0 else a.copy()

    def pattern(lam: float) -> np.ndarray:
        w = 1.0 / (1.0 + lam * v)
        centre = float(np.sum(w * a) / np.sum(w))  # the mean of the pattern: sum(w * (a - centre)) = 0
        return centre + w * (a - centre)

    def spread(lam: float) -> float:
        return float(pattern(lam).std())

    if tau < s0:
        lo, hi = 0.0, 1.0
        while spread(hi) > tau and hi < 1e12:
            hi *= 4
    else:
        lo, hi = -(1 - 1e-9) / float(v.max()), 0.0
        if spread(lo) < tau:  # cannot stretch this far while keeping every client's sign: scale the pattern
            return float(a.mean()) + (a - float(a.mean())) * tau / s0
    for _ in range(60):  # spread(lam) falls as lam grows: spread(lo) > tau > spread(hi)
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if spread(mid) > tau else (lo, mid)
    return pattern((lo + hi) / 2)


def _simulated_spread(p: np.ndarray, n: np.ndarray, noise_std: float, z: np.ndarray) -> np.ndarray:
    """Observed spreads of noisy counts drawn around true accuracies ``p`` (``z``: standard normals)."""
    p = np.clip(p, 1e-4, 1 - 1e-4)
    c = np.clip(np.round(n * p + np.sqrt(n * p * (1 - p)) * z[0]), 0, n)
    cn, wn = c + noise_std * z[1], (n - c) + noise_std * z[2]
    a = np.clip(cn / np.maximum(cn + wn, 1e-9), 0.0, 1.0)
    return np.asarray(a.std(axis=-1))


def _spread_interval(a: np.ndarray, n: np.ndarray, noise_std: float, level: float,
                     draws: int = 1000) -> tuple[float, float]:  # fmt: skip
    """Interval for the spread of true accuracies by inverting a parametric bootstrap test.

    A candidate spread ``tau`` is kept when the observed spread is not in either ``(1 - level) /
    2`` tail of the spreads simulated at the constrained configuration for ``tau``.
    """
    m = len(a)
    v = np.maximum(_accuracy_var(np.clip(a, 0.05, 0.95), n, noise_std), 1e-9)
    observed = float(a.std())
    z = np.random.default_rng(_MC_SEED).standard_normal((3, draws, m))
    tail = (1 - level) / 2

    def keep_low(t: float) -> bool:  # t is not too small to explain what was observed
        p = _constrained_pattern(a, v, t)  # None: t is beyond what this shape reaches in [0, 1], i.e. large
        return p is None or float(np.mean(_simulated_spread(p, n, noise_std, z) >= observed)) >= tail

    def keep_high(t: float) -> bool:  # t is not too large to explain what was observed
        p = _constrained_pattern(a, v, t)
        return p is not None and float(np.mean(_simulated_spread(p, n, noise_std, z) <= observed)) >= tail

    top = 0.5  # no spread of accuracies in [0, 1] exceeds 0.5
    lo_bound = 0.0 if keep_low(0.0) else _bisect(lambda t: not keep_low(t), 0.0, top)
    hi_bound = top if keep_high(top) else _bisect(keep_high, 0.0, top)
    return lo_bound, max(lo_bound, hi_bound)


def _bisect(true_below: Callable[[float], bool], lo: float, hi: float, tol: float = 5e-4) -> float:
    """The boundary of a predicate that holds below it and fails above it, on ``[lo, hi]``."""
    while hi - lo > tol:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if true_below(mid) else (lo, mid)
    return (lo + hi) / 2


def client_spread(per_client: Mapping[str, tuple[float, float]], *, noise_std: float = 0.0,
                  level: float = LEVEL) -> ClientSpread:  # fmt: skip
    """Each client's accuracy and the spread across clients, from (correct, wrong) counts.

    Parameters
    ----------
    per_client : mapping
        Client id -> (correct, wrong) decisions on its validation rows, exact or noised.
    noise_std : float
        Std of the Gaussian noise each count carries (0: exact counts).

    Returns
    -------
    ClientSpread
        Clients too small to estimate (see :func:`accuracy_from_counts`) are named in
        ``undefined`` and left out of the spread and of the worst client. The spread's value
        is the noise-corrected estimate ``sqrt(max(0, S^2 - (1 - 1/m) mean(v)))``; its interval
        covers the noise and the finite validation samples (module notes).
    """
    clients = {c: accuracy_from_counts(k, w, noise_std=noise_std, level=level)
               for c, (k, w) in sorted(per_client.items(), key=lambda kv: _client_key(kv[0]))}  # fmt: skip
    undefined = {c: e.note for c, e in clients.items() if e.lo is None}
    ok = [c for c in clients if c not in undefined]
    source = "clients"
    if len(ok) < 2:
        why = "fewer than two clients can be estimated" + (f" ({len(undefined)} too small)" if undefined else "")
        std = Estimate.undefined(source, why, noise_std)
    else:
        a = np.array([float(clients[c].value) for c in ok])  # type: ignore[arg-type]
        n = np.array([max(1.0, round(sum(per_client[c]))) for c in ok])
        v = _accuracy_var(np.clip(a, 0.05, 0.95), n, noise_std)
        m = len(a)
        value = math.sqrt(max(0.0, float(a.var()) - (1 - 1 / m) * float(np.mean(v))))
        lo, hi = _spread_interval(a, n, noise_std, level)
        std = Estimate(value, lo, hi, source, noise_std, level,
                       f"over {m} clients" + (f"; left out: {', '.join(undefined)}" if undefined else ""))  # fmt: skip
    if ok:
        worst_client = min(ok, key=lambda c: float(clients[c].value))  # type: ignore[arg-type]
        worst = clients[worst_client]
    else:
        worst_client, worst = None, Estimate.undefined(source, "no client can be estimated", noise_std)
    return ClientSpread(clients, undefined, std, worst_client, worst)


def _client_key(c: str) -> tuple[int, Any]:
    return (0, int(c)) if c.isdigit() else (1, c)


def _bc_interval(vals: np.ndarray, point: float | None, level: float) -> tuple[float, float]:
    """Bias-corrected percentile interval (Efron 1981; Efron & Tibshirani 1993, section 14.3).

    Statistics such as a disparity (a largest difference between groups) are biased upwards by
    sampling noise, and so is their bootstrap distribution around the estimate: the correction
    ``z0`` moves both percentiles by how far the estimate sits below the bootstrap median.
    """
    tail = (1 - level) / 2
    if point is None:
        return float(np.quantile(vals, tail)), float(np.quantile(vals, 1 - tail))
    below = (np.sum(vals < point) + 0.5 * np.sum(vals == point)) / len(vals)
    below = min(max(below, 0.5 / len(vals)), 1 - 0.5 / len(vals))
    nd = NormalDist()
    z0, z = nd.inv_cdf(below), nd.inv_cdf(1 - tail)
    lo_q, hi_q = nd.cdf(2 * z0 - z), nd.cdf(2 * z0 + z)
    return float(np.quantile(vals, lo_q)), float(np.quantile(vals, hi_q))


def _collect(draws: int, level: float, samples: dict[str, list[float]], missing: dict[str, int],
             point: Mapping[str, float | None] | None) -> dict[str, tuple[float | None, float | None]]:  # fmt: skip
    out: dict[str, tuple[float | None, float | None]] = {}
    for k in set(samples) | set(missing):
        vals = samples.get(k, [])
        if missing.get(k, 0) > draws // 10 or not vals:
            out[k] = (None, None)  # undefined on too many resamples: no interval
            continue
        p = None if point is None else point.get(k)
        out[k] = _bc_interval(np.asarray(vals), p, level)
    return out


def _add(out: dict[str, float | None], samples: dict[str, list[float]], missing: dict[str, int]) -> None:
    for k, v in out.items():
        if v is None or not math.isfinite(v):
            missing[k] = missing.get(k, 0) + 1
        else:
            samples.setdefault(k, []).append(float(v))


def bootstrap_rows(statistic: Callable[[np.ndarray], dict[str, float | None]], rows: int, *, draws: int = 200,
                   level: float = LEVEL, seed: int = _MC_SEED,
                   point: Mapping[str, float | None] | None = None) -> dict[str, Interval]:  # fmt: skip
    """Intervals of named statistics over bootstrap resamples of ``rows`` benchmark rows.

    ``statistic(index)`` computes every statistic on the rows ``index`` (with repeats) and returns
    them by name (None when undefined on that resample). A statistic undefined on more than a
    tenth of the resamples gets no interval (None, None). With ``point`` (the statistics on all
    rows) the intervals are bias-corrected (:func:`_bc_interval`), else plain percentiles. The
    benchmark's exact numbers are a finite sample of the population the model will serve; this is
    their sampling error.
    """
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {}
    missing: dict[str, int] = {}
    for _ in range(draws):
        _add(statistic(rng.integers(0, rows, rows)), samples, missing)
    return _collect(draws, level, samples, missing, point)


def noisy_table_bootstrap(table: np.ndarray, *, noise_std: float,
                          statistic: Callable[[np.ndarray], dict[str, float | None]], draws: int = 300,
                          level: float = LEVEL, seed: int = _MC_SEED,
                          point: Mapping[str, float | None] | None = None) -> dict[str, Interval]:  # fmt: skip
    """Intervals of statistics of a summed count table released with Gaussian noise.

    ``table`` holds noisy counts (any shape); ``noise_std`` the std of the noise on each of its
    cells (for a sum over ``m`` clients that each noised their own table: ``sigma * sqrt(m)``).
    Each draw re-samples the rows (multinomial over the clipped table's cells, the finite
    validation samples) and adds fresh noise of the same std: a parametric bootstrap over the
    known noise distribution, bias-corrected around ``point`` when given.
    """
    rng = np.random.default_rng(seed)
    t = np.maximum(np.asarray(table, dtype=np.float64), 0.0)
    total = int(round(t.sum()))
    probs = (t / t.sum()).reshape(-1) if t.sum() > 0 else np.full(t.size, 1.0 / t.size)
    samples: dict[str, list[float]] = {}
    missing: dict[str, int] = {}
    for _ in range(draws):
        drawn = rng.multinomial(total, probs).reshape(t.shape).astype(np.float64)
        if noise_std > 0:
            drawn = np.maximum(drawn + rng.normal(0.0, noise_std, t.shape), 0.0)
        _add(statistic(drawn), samples, missing)
    return _collect(draws, level, samples, missing, point)
