"""Empirical privacy auditing from canaries in one training run: lower bounds and estimates.

An accountant's epsilon is an upper bound computed from what the code says it does. This
module measures, from one run with randomly included canaries, how much the released model
really tells about them:

* **The one-run lower bound** of Steinke, Nasr and Jagielski, "Privacy Auditing with One (1)
  Training Run" (NeurIPS 2023, arXiv:2305.08846). Each of ``m`` canaries is included
  independently with probability 1/2; an auditor guesses "in" or "out" for ``r`` of them from
  their scores and abstains on the rest; ``v`` guesses are right. Their Theorem 3 bounds the
  probability of ``v`` or more right guesses under ``(epsilon, delta)``-DP; every epsilon whose
  bound falls below ``1 - confidence`` is ruled out. :func:`one_run_epsilon` returns the
  largest such epsilon, a lower bound that holds with the stated confidence.
* **The one-shot estimate** of Andrew, Kairouz, Oh, Oprea, McMahan and Suriyakumar, "One-shot
  Empirical Privacy Estimation for Federated Learning" (ICLR 2024, arXiv:2302.03098): canary
  clients send random isotropic updates of the clipping norm; the cosines of the final model
  delta with inserted and never-inserted canary directions are fitted by two Gaussians, and the
  epsilon separating them at ``delta`` is the estimate (:func:`gaussian_fit_epsilon`). It is an
  estimate, not a bound; :func:`canary_audit` reports it beside the rigorous one-run bound on
  the same scores.
* **Canary generators and score functions** for client-level canaries (directions and update
  dicts shaped like a model), sample-level canary records for any declared schema, the loss
  score (black box) and the gradient-canary score (white box).

A lower bound far below the accounted epsilon is expected. A lower bound *above* it means the
implementation releases more than its ledger charges: a bug.

Notes
-----
Validity needs three things the caller must provide: inclusion bits drawn independently with
probability 1/2 (:func:`inclusion_bits`) from randomness the training never sees; guesses that
depend on the scores only (ties are broken by canary index, which is independent of the bits);
and a choice of how many guesses to make that is fixed before the scores are seen. The last is
why :func:`one_run_audit` takes a fixed grid of guess counts and pays for trying all of them with
a union (Bonferroni) bound: picking the best count after looking at the result, without that
correction, overstates the confidence.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import linalg, optimize, special, stats

from fedready.data import Table
from fedready.schema import DataSchema, NumericColumn

__all__ = [
    "AUDIT_FILE",
    "AUDIT_FORMAT",
    "CanaryAudit",
    "OneRunAudit",
    "canary_audit",
    "canary_records",
    "canary_update",
    "cosine_scores",
    "default_guess_grid",
    "empirical_privacy_line",
    "flatten_update",
    "gaussian_fit_epsilon",
    "gradient_canary_scores",
    "inclusion_bits",
    "isotropic_directions",
    "loss_scores",
    "one_run_audit",
    "one_run_epsilon",
    "one_run_p_value",
    "read_audits",
    "subsampled_gaussian_scores",
    "two_gaussian_epsilon",
]

_EPS_TOL = 1e-10  # root-finding tolerance on epsilon, far below any reported digit
AUDIT_FILE = "audit_privacy.json"  # in a run folder: its audits (fedready audit-privacy), one per level
AUDIT_FORMAT = "fedready-audit-privacy/1"


# --------------------------------------------------------------------------------------------
# The one-run lower bound (Steinke, Nasr and Jagielski 2023)
# --------------------------------------------------------------------------------------------


def _check_privacy(*, delta: float, confidence: float | None = None) -> None:
    if not (0 <= delta < 1):
        raise ValueError(f"delta must be in [0, 1), got {delta}")
    if confidence is not None and not (0 < confidence < 1):
        raise ValueError(f"confidence must be in (0, 1), e.g. 0.95; got {confidence}")


def _check_counts(canaries: int, guesses: int, correct: int) -> None:
    for name, value in (("canaries", canaries), ("guesses", guesses), ("correct", correct)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if not 0 <= correct <= guesses <= canaries:
        raise ValueError(f"expected 0 <= correct <= guesses <= canaries, got {correct}, {guesses}, {canaries}")
    if canaries < 1:
        raise ValueError(f"canaries must be >= 1, got {canaries}")


def one_run_p_value(*, canaries: int, guesses: int, correct: int, epsilon: float, delta: float) -> float:
    """Bound on the chance of ``correct`` or more right guesses if the mechanism were ``(epsilon, delta)``-DP.

    Parameters
    ----------
    canaries : int
        ``m``: canaries, each included independently with probability 1/2.
    guesses : int
        ``r``: guesses made (the auditor abstains on the other ``m - r`` canaries).
    correct : int
        ``v``: right guesses among them.
    epsilon, delta : float
        The privacy claim under test.

    Returns
    -------
    float
        A p-value: under the claim, ``P[W >= v]`` is at most this number.

    Notes
    -----
    Steinke, Nasr and Jagielski (arXiv:2305.08846), Theorem 3: with
    ``f(v) = P[Binomial(r, e^eps / (1 + e^eps)) >= v]``,

    ``P[W >= v] <= f(v) + 2 m delta max_{i in 1..m} (f(v - i) - f(v)) / i``.

    For ``i >= v`` the numerator is ``1 - f(v)`` and only the denominator grows, so the maximum
    is over ``i = 1..v``. The numerators ``P[v - i <= Binomial < v]`` are summed from the
    probability mass function rather than taken as differences of tails, which would cancel.
    With ``delta = 0`` this is Theorem 1's binomial tail.
    """
    _check_counts(canaries, guesses, correct)
    _check_privacy(delta=delta)
    if not (epsilon >= 0 and math.isfinite(epsilon)):
        raise ValueError(f"epsilon must be a finite number >= 0, got {epsilon}")
    if correct == 0:
        return 1.0
    q = float(special.expit(epsilon))  # accuracy of epsilon-DP randomized response
    tail = float(stats.binom.sf(correct - 1, guesses, q))
    if delta == 0:
        return min(1.0, tail)
    below = stats.binom.pmf(np.arange(correct - 1, -1, -1), guesses, q)  # P[B = v-1], P[B = v-2], ..., P[B = 0]
    alpha = float(np.max(np.cumsum(below) / np.arange(1, correct + 1)))
    return min(1.0, tail + 2.0 * canaries * delta * alpha)


def one_run_epsilon(*, canaries: int, guesses: int, correct: int, delta: float, confidence: float = 0.95) -> float:
    """The largest epsilon that ``correct`` right guesses out of ``guesses`` rule out at ``delta``.

    Parameters
    ----------
    canaries, guesses, correct : int
        ``m``, ``r`` and ``v`` as in :func:`one_run_p_value`.
    delta : float
        The delta of the claims tested (the run's accounted delta).
    confidence : float
        ``1 - beta``: with at least this probability the returned value does not exceed the
        mechanism's true epsilon at ``delta``.

    Returns
    -------
    float
        The empirical lower bound ``sup {eps : p(eps) <= beta}``; 0 when even ``eps = 0`` is
        not ruled out.

    Notes
    -----
    The p-value of Theorem 3 (arXiv:2305.08846) grows with epsilon and tends to 1, so the set
    of ruled-out claims is an interval ``[0, eps*)``; the search doubles an upper end, then
    solves ``p(eps) = beta`` and steps down until ``p(eps) <= beta``, so the value returned is
    itself ruled out (never rounded up). The paper's Appendix listing bisects the same way.
    """
    _check_privacy(delta=delta, confidence=confidence)
    _check_counts(canaries, guesses, correct)
    beta = 1.0 - confidence

    def p(eps: float) -> float:
        return one_run_p_value(canaries=canaries, guesses=guesses, correct=correct, epsilon=eps, delta=delta)

    if p(0.0) > beta:
        return 0.0
    lo, hi = 0.0, 1.0
    while p(hi) <= beta:
        lo, hi = hi, 2.0 * hi
    eps = float(optimize.brentq(lambda e: p(e) - beta, lo, hi, xtol=_EPS_TOL))
    while eps > lo and p(eps) > beta:  # return a ruled-out value, never one rounded up past the root
        eps = max(lo, eps - _EPS_TOL)
    return eps


@dataclass(frozen=True)
class OneRunAudit:
    """The one-run lower bound and the guesses that gave it.

    Attributes
    ----------
    epsilon : float
        Empirical lower bound at ``delta``, holding with probability ``confidence``.
    delta, confidence : float
        As requested.
    canaries : int
        ``m``: canaries in the audit (included and excluded).
    guesses, correct : int
        ``r`` and ``v`` of the best hypothesis.
    k_pos, k_neg : int
        Guesses "in" for the ``k_pos`` highest scores and "out" for the ``k_neg`` lowest.
    hypotheses : int
        Guess counts tried; each was tested at ``1 - (1 - confidence) / hypotheses``.
    """

    epsilon: float
    delta: float
    confidence: float
    canaries: int
    guesses: int
    correct: int
    k_pos: int
    k_neg: int
    hypotheses: int

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as plain JSON-compatible data."""
        return asdict(self)


def default_guess_grid(canaries: int) -> list[tuple[int, int]]:
    """The guess counts :func:`one_run_audit` tries unless told otherwise.

    Guesses "in" for the top 1/16, 1/8, 1/4 and 3/8 of the scores, never "out" (``k_neg = 0``).

    Notes
    -----
    The bound is driven by how many confident right guesses there are, and the confident
    side of a membership score is the top: an excluded canary has no trace to find, while an
    included one that was never sampled looks excluded, so low scores are mixed. Four
    one-sided counts cost a factor ``ln(20 * 4) / ln(20)``, about 1.5, in the number of right
    guesses needed for a given bound (union bound at 95%); a finer grid costs more than it
    finds. Counts are fractions of the canaries, so the grid is fixed before any score is seen.
    """
    if isinstance(canaries, bool) or not isinstance(canaries, int | np.integer) or canaries < 1:
        raise ValueError(f"canaries must be an integer >= 1, got {canaries!r}")
    counts = sorted({max(1, (canaries * num) // 16) for num in (1, 2, 4, 6)})
    return [(k, 0) for k in counts]


def _as_scores(scores: Any, included: Any) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or s.size < 1:
        raise ValueError(f"scores must be a 1-D array with one score per canary, got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError(f"scores must be finite; {int((~np.isfinite(s)).sum())} are NaN or infinite")
    b = np.asarray(included)
    if b.shape != s.shape:
        raise ValueError(f"included must have one bit per canary: expected shape {s.shape}, got {b.shape}")
    if b.dtype != np.bool_:
        if not np.isin(b, (0, 1)).all():
            raise ValueError("included must hold booleans or 0/1 (the true inclusion bits)")
        b = b.astype(bool)
    return s, b


def one_run_audit(
    scores: Any,
    included: Any,
    *,
    delta: float,
    confidence: float = 0.95,
    guesses: Sequence[tuple[int, int]] | None = None,
) -> OneRunAudit:
    """The one-run lower bound from canary scores and their true inclusion bits.

    Parameters
    ----------
    scores : array_like, shape (m,)
        One score per canary; higher means "more likely included".
    included : array_like of bool, shape (m,)
        The true inclusion bits, each drawn independently with probability 1/2.
    delta : float
        Delta of the claims tested.
    confidence : float
        Overall confidence of the returned bound (default 95%).
    guesses : sequence of (k_pos, k_neg), optional
        Guess counts to try, fixed before looking at the scores: "in" for the ``k_pos``
        highest scores, "out" for the ``k_neg`` lowest. Default :func:`default_guess_grid`.
        Pass a single pair to test one pre-registered hypothesis at full confidence.

    Returns
    -------
    OneRunAudit
        The best bound over the grid, each hypothesis tested at
        ``1 - (1 - confidence) / len(guesses)``.

    Notes
    -----
    Algorithm 1 of Steinke, Nasr and Jagielski (arXiv:2305.08846) with Theorem 3 for each
    hypothesis; a union bound over the hypotheses keeps the maximum valid at ``confidence``.
    Ties in the scores are broken by canary index, which is independent of the inclusion bits.
    """
    _check_privacy(delta=delta, confidence=confidence)
    s, bits = _as_scores(scores, included)
    m = s.size
    grid = default_guess_grid(m) if guesses is None else [(int(kp), int(kn)) for kp, kn in guesses]
    if not grid:
        raise ValueError("guesses must hold at least one (k_pos, k_neg) pair")
    for kp, kn in grid:
        if kp < 0 or kn < 0 or not 0 < kp + kn <= m:
            raise ValueError(f"each (k_pos, k_neg) needs both >= 0 and 0 < k_pos + k_neg <= {m}, got ({kp}, {kn})")
    order = np.lexsort((np.arange(m), s))  # ascending score; ties by index
    per_test = 1.0 - (1.0 - confidence) / len(grid)
    best: OneRunAudit | None = None
    for kp, kn in grid:
        top, bottom = order[m - kp :], order[:kn]  # disjoint, as k_pos + k_neg <= m
        right = int(bits[top].sum() + (~bits[bottom]).sum())
        eps = one_run_epsilon(canaries=m, guesses=kp + kn, correct=right, delta=delta, confidence=per_test)
        if best is None or eps > best.epsilon:
            best = OneRunAudit(epsilon=eps, delta=delta, confidence=confidence, canaries=m, guesses=kp + kn,
                               correct=right, k_pos=kp, k_neg=kn, hypotheses=len(grid))  # fmt: skip
    assert best is not None
    return best


# --------------------------------------------------------------------------------------------
# The Gaussian-fit estimate (Andrew et al. 2024)
# --------------------------------------------------------------------------------------------


def _log_mass(lo: float, hi: float, mu: float, sigma: float) -> float:
    """log P[lo < X < hi] for X ~ N(mu, sigma^2), accurate in both tails."""
    a, b = (lo - mu) / sigma, (hi - mu) / sigma
    if a >= b:
        return -math.inf
    if a > 0:  # both in the upper tail: use survival functions, which keep their digits there
        a, b = -b, -a
    lb, la = float(special.log_ndtr(b)), float(special.log_ndtr(a))
    return lb + math.log1p(-math.exp(la - lb)) if la < lb else -math.inf


def _log_hockey_stick(mu_p: float, s_p: float, mu_q: float, s_q: float, eps: float) -> float:
    """log of ``sup_S P(S) - e^eps Q(S)`` for P = N(mu_p, s_p^2), Q = N(mu_q, s_q^2); -inf when <= 0."""
    # Privacy loss L(x) = log p(x)/q(x) = a x^2 + b x + c; the optimal S is {L > eps}.
    a = 0.5 / s_q**2 - 0.5 / s_p**2
    b = mu_p / s_p**2 - mu_q / s_q**2
    c = 0.5 * mu_q**2 / s_q**2 - 0.5 * mu_p**2 / s_p**2 + math.log(s_q / s_p)
    inf = math.inf
    if a == 0.0:
        if b == 0.0:
            return -inf  # identical distributions
        t = (eps - c) / b
        intervals = [(t, inf)] if b > 0 else [(-inf, t)]
    else:
        disc = b * b - 4.0 * a * (c - eps)
        if disc <= 0:
            return -inf  # L - eps has one sign everywhere: S is empty, or everything (then P - e^eps Q <= 0)
        # Numerically stable roots (no cancellation when a is tiny); root != 0 as disc > 0.
        root = -0.5 * (b + math.copysign(math.sqrt(disc), b))
        x1, x2 = sorted((root / a, (c - eps) / root))
        intervals = [(-inf, x1), (x2, inf)] if a > 0 else [(x1, x2)]
    log_p = special.logsumexp([_log_mass(lo, hi, mu_p, s_p) for lo, hi in intervals])
    log_q = special.logsumexp([_log_mass(lo, hi, mu_q, s_q) for lo, hi in intervals])
    gap = eps + log_q - log_p
    if not gap < 0:
        return -inf
    return float(log_p + math.log1p(-math.exp(gap)))


def two_gaussian_epsilon(*, mu0: float, sigma0: float, mu1: float, sigma1: float, delta: float) -> float:
    """The smallest epsilon for which N(mu0, sigma0^2) and N(mu1, sigma1^2) are ``(epsilon, delta)``-close.

    Parameters
    ----------
    mu0, sigma0 : float
        Mean and standard deviation of the scores of excluded canaries.
    mu1, sigma1 : float
        Mean and standard deviation of the scores of included canaries.
    delta : float
        Target delta, in (0, 1).

    Returns
    -------
    float
        ``inf`` if a standard deviation is 0 while the distributions differ.

    Notes
    -----
    ``delta(eps)`` is the larger of the two hockey-stick divergences
    ``sup_S P(S) - e^eps Q(S)``; for Gaussians the optimal ``S = {log p/q > eps}`` is where
    a quadratic exceeds ``eps`` (one interval, or the outside of one), so both masses are
    normal CDFs (Andrew et al., arXiv:2302.03098, Sec. 4 and their reference code; the
    divergence as in Steinke, arXiv:2210.00597). dp-accounting's Gaussian conversion
    (``get_epsilon_gaussian``, Balle and Wang 2018, arXiv:1805.06530) covers equal variances
    only, and fitted canary scores never have exactly equal variances; it is the cross-check
    in the tests. ``delta(eps)`` decreases in ``eps``; a root finder solves ``delta(eps) = delta``.
    """
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    for name, v in (("mu0", mu0), ("mu1", mu1), ("sigma0", sigma0), ("sigma1", sigma1)):
        if not math.isfinite(v):
            raise ValueError(f"{name} must be finite, got {v}")
    if sigma0 < 0 or sigma1 < 0:
        raise ValueError(f"standard deviations must be >= 0, got sigma0={sigma0}, sigma1={sigma1}")
    if sigma0 == 0 or sigma1 == 0:
        return 0.0 if (sigma0 == sigma1 and mu0 == mu1) else math.inf
    log_target = math.log(delta)

    def excess(eps: float) -> float:
        worst = max(_log_hockey_stick(mu1, sigma1, mu0, sigma0, eps), _log_hockey_stick(mu0, sigma0, mu1, sigma1, eps))
        return max(worst, -1e300) - log_target  # finite for the root finder

    if excess(0.0) <= 0:
        return 0.0
    lo, hi = 0.0, 1.0
    while excess(hi) > 0:
        lo, hi = hi, 2.0 * hi
    return float(optimize.brentq(excess, lo, hi, xtol=1e-10, rtol=1e-12))


def gaussian_fit_epsilon(in_scores: Any, out_scores: Any, *, delta: float) -> float:
    """Andrew et al.'s one-shot estimate: epsilon between Gaussians fitted to included and excluded scores.

    Parameters
    ----------
    in_scores, out_scores : array_like
        Scores (cosines, in the paper) of inserted and never-inserted canaries; at least two each.
    delta : float
        Target delta.

    Returns
    -------
    float
        An estimate of the epsilon the release shows, *not* a bound: sampling error in the fitted
        means and deviations moves it either way.

    Notes
    -----
    Andrew, Kairouz, Oh, Oprea, McMahan, Suriyakumar (arXiv:2302.03098), Sec. 4: model the
    statistic of an inserted canary as N(mu_1, s_1^2) and of an unseen one as N(mu_0, s_0^2)
    (sample means and unbiased deviations), and report the epsilon of that pair at ``delta``
    (:func:`two_gaussian_epsilon`).
    """
    a, b = np.asarray(in_scores, dtype=np.float64), np.asarray(out_scores, dtype=np.float64)
    for name, x in (("in_scores", a), ("out_scores", b)):
        if x.ndim != 1 or x.size < 2:
            raise ValueError(f"{name} must be a 1-D array of at least 2 scores, got shape {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError(f"{name} must be finite")
    return two_gaussian_epsilon(mu0=float(b.mean()), sigma0=float(b.std(ddof=1)), mu1=float(a.mean()),
                                sigma1=float(a.std(ddof=1)), delta=delta)  # fmt: skip


@dataclass(frozen=True)
class CanaryAudit:
    """What one run's canaries show: the rigorous one-run bound and the Gaussian-fit estimate.

    Attributes
    ----------
    bound : OneRunAudit
        Steinke et al.'s lower bound (holds with ``bound.confidence``).
    estimate : float
        Andrew et al.'s Gaussian-fit estimate (no confidence attached).
    in_mean, in_std, out_mean, out_std : float
        The fitted score distributions of included and excluded canaries.
    """

    bound: OneRunAudit
    estimate: float
    in_mean: float
    in_std: float
    out_mean: float
    out_std: float

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as plain JSON-compatible data (``inf`` as a string)."""
        out = asdict(self)
        out["estimate"] = self.estimate if math.isfinite(self.estimate) else "inf"
        return out


def canary_audit(
    scores: Any,
    included: Any,
    *,
    delta: float,
    confidence: float = 0.95,
    guesses: Sequence[tuple[int, int]] | None = None,
) -> CanaryAudit:
    """Audit one run's canaries: the one-run lower bound and the Gaussian-fit estimate on the same scores.

    Parameters
    ----------
    scores : array_like, shape (m,)
        One score per canary, higher meaning "more likely included" (e.g. :func:`cosine_scores`,
        :func:`subsampled_gaussian_scores`, :func:`loss_scores`).
    included : array_like of bool, shape (m,)
        True inclusion bits (probability 1/2 each); at least two canaries on each side.
    delta, confidence, guesses
        As in :func:`one_run_audit`.

    Returns
    -------
    CanaryAudit
    """
    s, bits = _as_scores(scores, included)
    if bits.sum() < 2 or (~bits).sum() < 2:
        n_in, n_out = int(bits.sum()), int((~bits).sum())
        raise ValueError(f"need at least 2 included and 2 excluded canaries, got {n_in} and {n_out}")
    bound = one_run_audit(s, bits, delta=delta, confidence=confidence, guesses=guesses)
    a, b = s[bits], s[~bits]
    return CanaryAudit(bound=bound, estimate=gaussian_fit_epsilon(a, b, delta=delta), in_mean=float(a.mean()),
                       in_std=float(a.std(ddof=1)), out_mean=float(b.mean()), out_std=float(b.std(ddof=1)))  # fmt: skip


# --------------------------------------------------------------------------------------------
# Canaries and scores
# --------------------------------------------------------------------------------------------


def _check_rng(rng: Any) -> None:
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator (numpy.random.default_rng()), got {type(rng).__name__}")


def inclusion_bits(count: int, *, rng: np.random.Generator) -> np.ndarray:
    """Draw each canary's inclusion bit independently with probability 1/2 (the one-run design).

    Notes
    -----
    The bits must come from randomness the training never sees (not the run's ``--seed``, not
    the DP noise's source): Steinke et al.'s analysis conditions on the bits being independent
    fair coins (arXiv:2305.08846, Algorithm 1).
    """
    _check_rng(rng)
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    return rng.random(count) < 0.5


def isotropic_directions(count: int, dim: int, *, rng: np.random.Generator, orthogonal: bool = False) -> np.ndarray:
    """Random unit vectors, each uniform on the sphere in ``dim`` dimensions.

    Parameters
    ----------
    count, dim : int
        Number of directions and their dimension.
    rng : numpy.random.Generator
        The canaries' own randomness.
    orthogonal : bool
        Draw the directions mutually orthogonal (needs ``count <= dim``). Each is still uniform on
        the sphere; together they do not interfere, which matters when ``count`` is a sizeable
        fraction of ``dim`` (small models).

    Returns
    -------
    numpy.ndarray, shape (count, dim), float64

    Notes
    -----
    Normalised Gaussian vectors are uniform on the sphere (Muller 1959); the orthogonal set is the
    Gram-Schmidt orthonormalisation of Gaussian rows, i.e. the Q factor with R's diagonal positive,
    which is Haar distributed (Mezzadri 2007, arXiv:math-ph/0609050). Andrew et al. (arXiv:2302.03098) use
    independent directions.
    """
    _check_rng(rng)
    if count < 1 or dim < 1:
        raise ValueError(f"count and dim must be >= 1, got count={count}, dim={dim}")
    if orthogonal:
        if count > dim:
            raise ValueError(f"orthogonal directions need count <= dim, got count={count} > dim={dim}")
        return _orthonormal_rows(rng.standard_normal((count, dim)))
    g = rng.standard_normal((count, dim))
    return g / np.linalg.norm(g, axis=1, keepdims=True)


def _orthonormal_rows(g: np.ndarray) -> np.ndarray:
    """Gram-Schmidt of the rows of ``g`` (the Q of its QR with R's diagonal positive), by CholeskyQR2.

    Two Cholesky passes (Fukaya et al. 2014, "CholeskyQR2") reach Householder QR's orthogonality for
    well-conditioned ``g`` at matrix-multiply speed, many times faster than LAPACK's QR for a few
    thousand rows; an ill-conditioned ``g`` (rows close to ``dim``) falls back to Householder QR.
    """
    q = g
    try:
        for _ in range(2):
            chol = np.linalg.cholesky(q @ q.T)
            q = linalg.solve_triangular(chol, q, lower=True)
    except np.linalg.LinAlgError:
        qt, r = np.linalg.qr(g.T)
        return np.ascontiguousarray((qt * np.sign(np.diag(r))).T)
    if not np.allclose(q @ q.T, np.eye(len(q)), atol=1e-8):
        qt, r = np.linalg.qr(g.T)
        return np.ascontiguousarray((qt * np.sign(np.diag(r))).T)
    return q


def flatten_update(update: Mapping[str, Any]) -> np.ndarray:
    """Concatenate a model's arrays into one float64 vector, in sorted key order.

    The order is canonical (sorted names), so the same model gives the same vector whatever
    order its arrays arrive in; :func:`canary_update` uses the same order.
    """
    if not update:
        raise ValueError("update holds no arrays")
    return np.concatenate([np.asarray(update[k], dtype=np.float64).ravel() for k in sorted(update)])


def canary_update(direction: Any, like: Mapping[str, Any], *, norm: float) -> dict[str, np.ndarray]:
    """A canary client's update: ``direction`` scaled to L2 norm ``norm``, shaped like ``like``.

    Parameters
    ----------
    direction : array_like, shape (d,)
        A direction with ``d`` = total size of ``like`` (e.g. a row of :func:`isotropic_directions`).
    like : mapping of str to array
        The model's arrays (names, shapes, dtypes to copy).
    norm : float
        L2 norm of the update: the clipping bound (Andrew et al., arXiv:2302.03098, Sec. 3).

    Returns
    -------
    dict of str to numpy.ndarray
        In sorted key order, with ``like``'s shapes and dtypes.
    """
    if not (norm > 0 and math.isfinite(norm)):
        raise ValueError(f"norm must be a finite number > 0 (the clipping bound), got {norm}")
    v = np.asarray(direction, dtype=np.float64).ravel()
    sizes = {k: int(np.asarray(like[k]).size) for k in sorted(like)}
    if v.size != sum(sizes.values()):
        raise ValueError(f"direction has {v.size} values; the model has {sum(sizes.values())}")
    length = float(np.linalg.norm(v))
    if not length > 0:
        raise ValueError("direction must be non-zero")
    v = v * (norm / length)
    out, start = {}, 0
    for k, n in sizes.items():
        ref = np.asarray(like[k])
        out[k] = v[start : start + n].reshape(ref.shape).astype(ref.dtype)
        start += n
    return out


def _as_vector(x: Any, dim: int, what: str) -> np.ndarray:
    v = flatten_update(x) if isinstance(x, Mapping) else np.asarray(x, dtype=np.float64).ravel()
    if v.size != dim:
        raise ValueError(f"{what} has {v.size} values; the canary directions have {dim}")
    return v


def _as_directions(directions: Any) -> np.ndarray:
    d = np.asarray(directions, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] < 1:
        raise ValueError(f"directions must be a 2-D array (canaries x parameters), got shape {d.shape}")
    norms = np.linalg.norm(d, axis=1)
    if not (norms > 0).all():
        raise ValueError("every canary direction must be non-zero")
    return d / norms[:, None]


def cosine_scores(model_delta: Any, directions: Any) -> np.ndarray:
    """Cosine of the model delta with each canary direction (Andrew et al.'s statistic).

    Parameters
    ----------
    model_delta : mapping of str to array, or array_like
        Final model minus initial model (a mapping is flattened by :func:`flatten_update`).
    directions : array_like, shape (m, d)
        Canary directions, inserted and never inserted alike.

    Returns
    -------
    numpy.ndarray, shape (m,)
    """
    d = _as_directions(directions)
    v = _as_vector(model_delta, d.shape[1], "model_delta")
    length = float(np.linalg.norm(v))
    if not length > 0:
        raise ValueError("model_delta is all zeros: the model did not change, so no cosine is defined")
    return d @ v / length


def subsampled_gaussian_scores(
    projections: Any, *, sample_rate: float, noise_multiplier: float, subtract_median: bool = True
) -> np.ndarray:
    """Per-canary log-likelihood ratio over rounds, for auditors who see every round's model.

    Parameters
    ----------
    projections : array_like, shape (m, T)
        ``projections[j, t]``: round ``t``'s model change projected on canary ``j``'s unit
        direction, in units of one client's contribution to that change (``clip / n_t`` for a
        mean over ``n_t`` updates), so an included, sampled canary adds about 1.
    sample_rate : float
        Per-round probability that a client (and so a canary) takes part, ``q``.
    noise_multiplier : float
        The configured ``z``: noise std in the same units.
    subtract_median : bool
        Subtract each canary's median over rounds first (default), which removes the real clients'
        drift along it. Pass False for projections from which the other clients' contribution was
        already removed exactly (an auditor who knows every other client's update, the adversary
        of the DP definition); only then may ``sample_rate`` be 1.

    Returns
    -------
    numpy.ndarray, shape (m,)
        ``sum_t log(1 - q + q exp((y_t - 1/2) / z^2))`` with ``y_t`` the projection (minus the
        canary's median over rounds by default).

    Notes
    -----
    Against the claimed mechanism, a round's projection is ``N(0, z^2)`` for an absent canary
    and ``q N(1, z^2) + (1 - q) N(0, z^2)`` for a present one: the worst-case pair of the
    Poisson-subsampled Gaussian mechanism (Mironov, Talwar, Zhang 2019, arXiv:1908.10530), so
    the log-likelihood ratio is the Neyman-Pearson score for the claim under audit. Every
    round's global model is released to the sampled clients, so the round-by-round view is the
    accounted threat model. Subtracting each canary's median over rounds (present in about
    ``q T`` of them) removes the steady drift of the real clients' updates along that canary,
    which at a few thousand parameters outweighs the canary itself. This score is fedready's
    choice; any score keeps the one-run bound valid, a better one only makes it tighter.
    """
    y = np.asarray(projections, dtype=np.float64)
    if y.ndim != 2 or y.shape[1] < 1:
        raise ValueError(f"projections must be 2-D (canaries x rounds), got shape {y.shape}")
    if not (0 < sample_rate < 1 or (sample_rate == 1 and not subtract_median)):
        raise ValueError(f"sample_rate must be in (0, 1) ((0, 1] without subtract_median: a canary in every "
                         f"round is its own median), got {sample_rate}")  # fmt: skip
    if not (noise_multiplier > 0 and math.isfinite(noise_multiplier)):
        raise ValueError(f"noise_multiplier must be a finite number > 0, got {noise_multiplier}")
    if subtract_median:
        y = y - np.median(y, axis=1, keepdims=True)
    log_ratio = (y - 0.5) / noise_multiplier**2
    absent = math.log1p(-sample_rate) if sample_rate < 1 else -math.inf
    return np.logaddexp(absent, math.log(sample_rate) + log_ratio).sum(axis=1)


def gradient_canary_scores(model_delta: Any, gradients: Any) -> np.ndarray:
    """White-box score of gradient canaries: how far the model moved against each canary gradient.

    Parameters
    ----------
    model_delta : mapping of str to array, or array_like
        Final minus initial model.
    gradients : array_like, shape (m, d)
        The canary gradients injected into (or withheld from) DP-SGD's clipped sum.

    Returns
    -------
    numpy.ndarray, shape (m,)
        ``-<delta, g_j> / ||g_j||``: gradient descent moves the model along ``-g_j`` each step the
        canary is sampled (Steinke et al., arXiv:2305.08846, Sec. 6, white-box auditing).
    """
    d = _as_directions(gradients)
    return -(d @ _as_vector(model_delta, d.shape[1], "model_delta"))


def loss_scores(logits: Any, labels: Any) -> np.ndarray:
    """Black-box score of canary records: the log-probability the model gives each canary's label.

    Parameters
    ----------
    logits : array_like, shape (n, classes)
        The model's outputs on the canary records.
    labels : array_like of int, shape (n,)
        The canaries' labels.

    Returns
    -------
    numpy.ndarray, shape (n,)
        Minus the cross-entropy loss: a trained-on record tends to have a lower loss
        (Steinke et al., arXiv:2305.08846, Sec. 6, black-box auditing; Yeom et al. 2018,
        arXiv:1709.01604).
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels)
    if z.ndim != 2 or z.shape[0] != y.shape[0] or y.ndim != 1:
        raise ValueError(f"expected logits of shape (n, classes) and n labels, got {z.shape} and {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) or y.size and (y.min() < 0 or y.max() >= z.shape[1]):
        raise ValueError(f"labels must be integers in [0, {z.shape[1]}), got {y[:5]}...")
    log_probs = z - special.logsumexp(z, axis=1, keepdims=True)
    return log_probs[np.arange(y.size), y]


def canary_records(schema: DataSchema, count: int, *, rng: np.random.Generator, label: int | None = None) -> Table:
    """Synthetic canary rows for any declared schema: every value in range, the label chosen.

    Parameters
    ----------
    schema : DataSchema
        The declared schema; every declared column and the target are filled.
    count : int
        Rows to make.
    rng : numpy.random.Generator
        The canaries' own randomness.
    label : {None, 0, 1}
        1 gives every row a declared positive value, 0 a negative one; None (default) flips a
        fair coin per row, so no feature predicts a canary's label and only memorising it helps.

    Returns
    -------
    Table
        Raw string values, as :func:`fedready.data.read_csv` would return them: numeric columns
        uniform over the declared range (uniform in ``log1p`` space where the column is
        ``log1p``-transformed, so the encoded values spread evenly), categorical columns uniform
        over the declared vocabulary. Each row passes the schema's range and vocabulary checks.
    """
    _check_rng(rng)
    if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 1:
        raise ValueError(f"count must be an integer >= 1, got {count!r}")
    if label not in (None, 0, 1):
        raise ValueError(f"label must be None (random), 0 or 1, got {label!r}")
    columns: dict[str, np.ndarray] = {}
    for col in schema.columns:
        if isinstance(col, NumericColumn):
            if col.transform == "log1p":
                x = np.expm1(rng.uniform(np.log1p(col.min), np.log1p(col.max), count))
            else:
                x = rng.uniform(col.min, col.max, count)
            x = np.clip(x, col.min, col.max)
            columns[col.name] = np.array([repr(float(v)) for v in x])
        else:
            columns[col.name] = np.asarray(col.categories)[rng.integers(0, len(col.categories), count)]
    positive = rng.random(count) < 0.5 if label is None else np.full(count, bool(label))
    columns[schema.target.column] = np.where(positive, schema.target.positive[0], schema.target.negative[0])
    return Table(columns)


# --------------------------------------------------------------------------------------------
# Recorded audits (``audit_privacy.json``)
# --------------------------------------------------------------------------------------------


def read_audits(run_dir: Any) -> dict[str, dict[str, Any]]:
    """The audits recorded in ``run_dir/audit_privacy.json`` by level (empty when there are none)."""
    import json
    from pathlib import Path

    path = Path(run_dir) / AUDIT_FILE
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return {}
    if not isinstance(doc, dict) or doc.get("format") != AUDIT_FORMAT:
        return {}
    return {k: v for k, v in doc.get("audits", {}).items() if isinstance(v, dict)}


def empirical_privacy_line(audit: Mapping[str, Any]) -> str:
    """One line for reports and the model card: the bound, its confidence and the accounted epsilon."""
    unit = {"client": "canary clients", "sample": "gradient canaries"}.get(str(audit.get("level")), "canaries")
    acc = audit.get("accounted") or {}
    versus = f"accounted {acc['epsilon']:.3f}" if acc.get("epsilon") is not None else "no epsilon accounted"
    line = (f"empirical privacy ({audit.get('level')} level): epsilon >= {audit['epsilon_lower_bound']:.3f} at delta "
            f"{audit['delta']:g} ({audit['confidence']:.0%} confidence, one-run audit with {audit['canaries']} "
            f"{unit}, Steinke et al. 2023) vs {versus}; a lower bound from a re-run, not a guarantee")  # fmt: skip
    if audit.get("exceeds_accounted"):
        line += ": ABOVE the accounted epsilon, the implementation leaks more than it charges"
    return line
