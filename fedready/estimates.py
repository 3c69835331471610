"""Intervals for every number a gate can read: the benchmark's (sampling) and the clients' (noise and sampling).

:func:`benchmark_estimates` bootstraps the coordinator's benchmark rows once and recomputes each
gated statistic on every resample (accuracy lifts, calibration, group fairness from confusion
counts, perturbation flip rates and accuracy drops, the post-processing's fairness); the result
is a flat map from the statistic's dotted report path to its :class:`~fedready.intervals.Estimate`,
stored in ``evaluation.json`` under ``estimates``. :func:`federated_fairness_estimates` does the
same for fairness computed from the clients' noisy summed counts, by a parametric bootstrap over
the known noise. :func:`constant_decision_groups` finds decisions that do not depend on the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from statistics import NormalDist
from typing import Any

import numpy as np

from fedready.fairness import confusion_counts, fairness_from_counts, group_names, one_vs_rest_counts
from fedready.intervals import LEVEL, Estimate, bootstrap_rows, wilson
from fedready.schema import DataSchema

__all__ = [
    "MIN_GROUP_ROWS",
    "benchmark_estimates",
    "constant_decision_groups",
    "federated_fairness_estimates",
    "fidelity_estimates",
    "small_groups",
]

MIN_GROUP_ROWS = 50  # a group's rate needs this many rows in its denominator to enter a gated disparity
_DISPARITIES = ("demographic_parity_difference", "demographic_parity_ratio", "equalized_odds_difference",
                "equal_opportunity_difference", "worst_group_accuracy")  # fmt: skip


def _ece(y: np.ndarray, proba: np.ndarray, bins: int = 10) -> float:
    from fedready.calibration import calibration_report

    return float(calibration_report(y, proba, bins=bins)["ece"])


def _brier(y: np.ndarray, proba: np.ndarray) -> float:
    if proba.shape[1] == 2:
        return float(np.mean((proba[:, 1] - y) ** 2))
    return float(np.mean(((proba - np.eye(proba.shape[1])[y]) ** 2).sum(axis=1)))


def _balanced(y: np.ndarray, pred: np.ndarray, k: int) -> float | None:
    recalls = [float((pred[y == c] == c).mean()) for c in range(k) if (y == c).any()]
    return float(np.mean(recalls)) if recalls else None


def _fairness_stats(schema: DataSchema, y: np.ndarray, pred: np.ndarray, groups: Mapping[str, np.ndarray],
                    prefix: str = "fairness", min_rows: float = MIN_GROUP_ROWS) -> dict[str, float | None]:  # fmt: skip
    k = schema.target.num_classes
    counts = {a: confusion_counts(y, pred, g, group_names(schema, a), classes=k) for a, g in groups.items()}
    fair = fairness_from_counts(counts, schema, min_rows=min_rows)
    return {f"{prefix}.{a}.{m}": fair[a].get(m) for a in fair for m in _DISPARITIES}


def _rate_table(counts: np.ndarray, k: int) -> list[np.ndarray]:
    """Per class (binary: one), ``(groups, 4)`` one-vs-rest (tp, fp, tn, fn) from a group's count table."""
    t = np.asarray(counts, dtype=np.float64)
    if k == 2:
        return [t.reshape(len(t), 4)]
    ovr = one_vs_rest_counts(t.reshape(len(t), -1), k)
    return [ovr[:, j, :] for j in range(k)]


# each rate: (numerator cells, denominator cells) over (tp, fp, tn, fn); the cells of a noisy table each carry noise
_RATES = {"selection_rate": ((0, 1), (0, 1, 2, 3)), "tpr": ((0,), (0, 3)), "fpr": ((1,), (1, 2)),
          "accuracy": ((0, 2), (0, 1, 2, 3))}  # fmt: skip


def _max_t(se: list[np.ndarray], level: float, draws: int = 4000) -> float:
    """Critical value making every pairwise difference's interval ``d +- c se`` hold jointly at ``level``.

    ``se`` lists, per rate, the standard errors of its groups' estimates (independent groups).
    The maximum over all pairs of ``|(se_i Z_i - se_j Z_j)| / sqrt(se_i^2 + se_j^2)`` is simulated
    with standard normal ``Z`` (a max-T simultaneous procedure: Hothorn, Bretz & Westfall 2008).
    The quantile is taken at ``(1 + level) / 2``: the normal approximation of a difference of
    binomial rates from estimated standard errors covers too little near a zero difference
    (measured: 93.7% at a nominal 95% for three groups of 60 to 900 positives), and a disparity's
    interval must hold at its nominal level there too (tests/fedready/test_intervals.py).
    """
    rng = np.random.default_rng(0x5E)
    worst = np.zeros(draws)
    for s_ in se:
        if len(s_) < 2:
            continue
        z = rng.standard_normal((draws, len(s_))) * s_
        i, j = np.triu_indices(len(s_), 1)
        pair = np.abs(z[:, i] - z[:, j]) / np.sqrt(s_[i] ** 2 + s_[j] ** 2)
        worst = np.maximum(worst, pair.max(axis=1))
    return float(np.quantile(worst, (1 + level) / 2)) if worst.any() else 1.959963984540054


def disparity_estimates(counts: Mapping[str, np.ndarray], schema: DataSchema, *, noise_std: float = 0.0,
                        min_rows: float = MIN_GROUP_ROWS, prefix: str = "fairness", source: str = "benchmark",
                        level: float = LEVEL) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Intervals for the group disparities of each attribute, from (exact or noisy) confusion counts.

    Each group's rates (selection rate, TPR, FPR, accuracy) get a standard error from the binomial
    sampling of its rows plus the noise on the cells they are summed from; groups whose
    denominator is below ``min_rows`` stay out (the fairness report names them). A disparity is a
    largest difference (or a smallest ratio, a smallest rate) over groups, and classes for a
    multi-class target; its interval comes from simultaneous intervals for all the pairwise
    differences (:func:`_max_t`) where the data choose the pair (the lower end of a largest
    difference, the smallest ratio, the smallest rate), so it holds at ``level`` whatever pair is
    the largest (:func:`_range_interval`).
    """
    out: dict[str, dict[str, Any]] = {}
    k = schema.target.num_classes
    for attr, table in counts.items():
        per_class = _rate_table(np.asarray(table), k)
        rates: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {name: [] for name in _RATES}
        for t in per_class:
            for name, (num, den) in _RATES.items():
                n, x = t[:, den].sum(axis=1), t[:, num].sum(axis=1)
                ok = n >= max(min_rows, 1.0)
                r = np.clip(x[ok] / n[ok], 0.0, 1.0)
                # Agresti-Caffo: one success and one failure added to each group for the standard error,
                # which keeps a difference's interval honest near 0 and 1 (Agresti & Caffo 2000)
                adj = np.clip((x[ok] + 1) / (n[ok] + 2), 0.0, 1.0)
                var = _rate_var(adj, n[ok] + 2, noise_std, len(num), len(den) - len(num))
                rates[name].append((r, np.sqrt(np.maximum(var, 1e-12))))
        if k > 2:  # a group's accuracy is the multi-class diagonal over its rows
            t = np.asarray(table, dtype=np.float64).reshape(len(per_class[0]), k, k)
            n, x = t.sum(axis=(1, 2)), np.einsum("gcc->g", t)
            ok = n >= max(min_rows, 1.0)
            r = np.clip(x[ok] / n[ok], 0.0, 1.0)
            rates["accuracy"] = [(r, np.sqrt(np.maximum(_rate_var(r, n[ok], noise_std, k, k * k - k), 1e-12)))]

        def crit(*names: str, _rates: dict[str, list[tuple[np.ndarray, np.ndarray]]] = rates) -> float:
            return _max_t([s_ for name in names for _, s_ in _rates[name]], level)  # joint over a disparity's rates

        z = NormalDist().inv_cdf((1 + level) / 2)
        c_odds = crit("tpr", "fpr")
        tpr, fpr = _range_interval(rates["tpr"], c_odds, z), _range_interval(rates["fpr"], c_odds, z)
        c_sel = crit("selection_rate")
        res: dict[str, tuple[float, float, float] | None] = {
            "demographic_parity_difference": _range_interval(rates["selection_rate"], c_sel, z),
            "equal_opportunity_difference": _range_interval(rates["tpr"], crit("tpr"), z),
            "equalized_odds_difference": None if tpr is None or fpr is None else
            tuple(max(a, b) for a, b in zip(tpr, fpr, strict=True)),  # type: ignore[dict-item]
            "demographic_parity_ratio": _ratio_interval(rates["selection_rate"], c_sel),
            "worst_group_accuracy": _min_interval(rates["accuracy"], crit("accuracy")),
        }  # fmt: skip
        for m, v in res.items():
            if v is None:
                continue
            out[f"{prefix}.{attr}.{m}"] = Estimate(v[0], v[1], v[2], source, noise_std, level).to_dict()
    return out


def _rate_var(r: np.ndarray, n: np.ndarray, noise_std: float, num_cells: int, rest_cells: int) -> np.ndarray:
    """Variance of ``x / n`` with ``x`` the sum of ``num_cells`` and ``n - x`` of ``rest_cells`` noisy cells."""
    return r * (1 - r) / n + noise_std**2 * (num_cells * (1 - r) ** 2 + rest_cells * r**2) / n**2


def _range_interval(per_class: list[tuple[np.ndarray, np.ndarray]], c: float,
                    z: float) -> tuple[float, float, float] | None:  # fmt: skip
    """Largest difference between groups (over classes), with its interval; None with fewer than 2 groups.

    The lower end is ``max(|d| - c se)`` over every pair, with ``c`` simultaneous over the pairs: the
    largest estimated difference is a pair chosen by the data. The upper end is ``max(|d| + z se)``
    with the plain normal quantile ``z``: it misses only if the pair whose *true* difference is the
    largest (a fixed pair) is underestimated by more than ``z`` standard errors, so each end errs
    with probability at most ``(1 - level) / 2``.
    """
    best: tuple[float, float, float] | None = None
    for r, se in per_class:
        if len(r) < 2:
            continue
        i, j = np.triu_indices(len(r), 1)
        d, s_ = np.abs(r[i] - r[j]), np.sqrt(se[i] ** 2 + se[j] ** 2)
        cand = (float(d.max()), float(max(0.0, (d - c * s_).max())), float(min(1.0, (d + z * s_).max())))
        best = cand if best is None else tuple(max(a, b) for a, b in zip(best, cand, strict=True))  # type: ignore[assignment]
    return best


def _ratio_interval(per_class: list[tuple[np.ndarray, np.ndarray]], c: float) -> tuple[float, float, float] | None:
    """Smallest min/max ratio of selection rates (over classes), with an interval from the groups' intervals."""
    best: tuple[float, float, float] | None = None
    for r, se in per_class:
        if len(r) < 2:
            continue
        lo_r, hi_r = np.clip(r - c * se, 0, 1), np.clip(r + c * se, 0, 1)
        value = float(r.min() / r.max()) if r.max() > 0 else None
        if value is None:
            continue
        cand = (value, float(lo_r.min() / hi_r.max()) if hi_r.max() > 0 else 0.0,
                float(min(1.0, hi_r.min() / lo_r.max())) if lo_r.max() > 0 else 1.0)  # fmt: skip
        best = cand if best is None else tuple(min(a, b) for a, b in zip(best, cand, strict=True))  # type: ignore[assignment]
    return best


def _min_interval(per_class: list[tuple[np.ndarray, np.ndarray]], c: float) -> tuple[float, float, float] | None:
    """Smallest group rate, with its simultaneous interval (the smallest lower and upper bounds)."""
    best: tuple[float, float, float] | None = None
    for r, se in per_class:
        if len(r) < 1:
            continue
        cand = (float(r.min()), float(np.clip(r - c * se, 0, 1).min()), float(np.clip(r + c * se, 0, 1).min()))
        best = cand if best is None else tuple(min(a, b) for a, b in zip(best, cand, strict=True))  # type: ignore[assignment]
    return best


def small_groups(fair: Mapping[str, Any], min_rows: float) -> dict[str, list[str]]:
    """Per attribute, the groups (and which of their rates) too small to enter a gated disparity."""
    out: dict[str, list[str]] = {}
    for attr, e in fair.items():
        parts = [e] if "per_class" not in e else list(e["per_class"].values())
        names: dict[str, set[str]] = {}
        for part in parts:
            for g, m in part["groups"].items():
                tp, fp, tn, fn = (m.get(c, 0) or 0 for c in ("tp", "fp", "tn", "fn"))
                dens = {"rows": m.get("count", 0) or 0, "positives": tp + fn, "negatives": fp + tn}
                short = {w for w, d in dens.items() if 0 < d < min_rows}
                if short:
                    names.setdefault(g, set()).update(short)
        if names:
            out[attr] = [f"{g} ({', '.join(sorted(w))} below {min_rows:g})" for g, w in sorted(names.items())]
    return out


def benchmark_estimates(
    schema: DataSchema, y: np.ndarray, proba: np.ndarray, groups: Mapping[str, np.ndarray], *,
    perturbed: Mapping[str, np.ndarray] | None = None,
    mitigated: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None, draws: int = 200,
    min_rows: float = MIN_GROUP_ROWS,
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Intervals, from the benchmark's finite sample, for every gated benchmark statistic.

    Parameters
    ----------
    y, proba : arrays
        Benchmark labels and the model's class probabilities on them.
    groups : mapping
        Sensitive attribute -> group name per row (as :func:`~fedready.fairness.group_labels`).
    perturbed : mapping, optional
        Perturbation name -> the model's decisions on the perturbed rows (paired with the unperturbed ones).
    mitigated : mapping, optional
        Attribute -> (row indices of the measured half, post-processed decisions on them).
    min_rows : float
        Group rates with fewer rows in their denominator stay out of the gated disparities
        (their notes name them): too few rows to estimate a rate the limit can be judged against.

    Returns
    -------
    dict
        Dotted report path -> :meth:`Estimate.to_dict`, source ``benchmark``.
    """
    y = np.asarray(y, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    pred = proba.argmax(axis=1)
    k = schema.target.num_classes
    n = len(y)
    majority = int(np.bincount(y, minlength=k).argmax())
    out: dict[str, Estimate] = {}

    correct = (pred == y).astype(np.float64)
    lo, hi = wilson(correct.sum(), n)
    out["metrics.accuracy"] = Estimate(float(correct.mean()), lo, hi, "benchmark")
    # lift over always answering the benchmark's majority class: a paired difference on the same rows
    diff = correct - (y == majority)
    half = 1.959963984540054 * float(diff.std(ddof=1)) / np.sqrt(n) if n > 1 else float("inf")
    out["metrics.accuracy_lift"] = Estimate(float(diff.mean()), float(diff.mean() - half), float(diff.mean() + half),
                                            "benchmark")  # fmt: skip

    perturbed = dict(perturbed or {})
    mitigated = dict(mitigated or {})

    def stats(idx: np.ndarray) -> dict[str, float | None]:
        yy, pp, pr = y[idx], pred[idx], proba[idx]
        bal = _balanced(yy, pp, k)
        s: dict[str, float | None] = {
            "metrics.balanced_accuracy_lift": None if bal is None else bal - 1.0 / k,
            "calibration.ece": _ece(yy, pr),
            "calibration.brier": _brier(yy, pr),
        }
        acc = float((pp == yy).mean())
        for name, q in perturbed.items():
            qq = np.asarray(q)[idx]
            s[f"stability.perturbations.{name}.flip_rate"] = float((qq != pp).mean())
            s[f"stability.perturbations.{name}.accuracy_drop"] = acc - float((qq == yy).mean())
        return s

    point = stats(np.arange(n))
    intervals = bootstrap_rows(stats, n, draws=draws, point=point)
    for path, value in point.items():
        lo_b, hi_b = intervals.get(path, (None, None))
        if value is not None:
            out[path] = Estimate(
                float(value),
                lo_b,
                hi_b,
                "benchmark",
                note="" if lo_b is not None else "undefined on too many resamples for an interval",
            )
    counts = {a: confusion_counts(y, pred, np.asarray(g), group_names(schema, a), classes=k) for a, g in groups.items()}
    result = {p: e.to_dict() for p, e in out.items()}
    result.update(_with_left_out(disparity_estimates(counts, schema, min_rows=min_rows), counts, schema, min_rows))
    for attr, (idx, decided) in mitigated.items():
        table = {attr: confusion_counts(y[idx], np.asarray(decided), np.asarray(groups[attr])[idx],
                                        group_names(schema, attr), classes=k)}  # fmt: skip
        after = disparity_estimates(table, schema, min_rows=min_rows, prefix="mitigation.by_attribute")
        after = _with_left_out(after, table, schema, min_rows)
        key = f"mitigation.by_attribute.{attr}.equalized_odds_difference"
        if key in after:
            result[f"mitigation.by_attribute.{attr}.eod_after"] = after[key]
    return result


def _with_left_out(est: dict[str, dict[str, Any]], counts: Mapping[str, np.ndarray], schema: DataSchema,
                   min_rows: float) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Name, in each disparity's note, the groups too small to enter it."""
    left_out = small_groups(fairness_from_counts(counts, schema), min_rows)
    for path, e in est.items():
        attr = path.split(".")[-2]
        if attr in left_out:
            e["note"] = "left out, too few rows to estimate: " + "; ".join(left_out[attr])
    return est


def fidelity_estimates(
    schema: DataSchema, y: np.ndarray, teacher: np.ndarray, variant: np.ndarray, groups: Mapping[str, np.ndarray],
    *, draws: int = 200, min_rows: float = MIN_GROUP_ROWS,
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """A compressed variant against the trained model on the same benchmark rows (paired intervals).

    ``teacher`` and ``variant`` are decisions. Returns ``fidelity.accuracy_loss`` (teacher's
    accuracy minus the variant's), ``fidelity.agreement`` (share of equal decisions) and
    ``fidelity.equalized_odds_change.<attribute>`` (absolute change of the equalized odds
    difference), each with a bootstrap interval over the rows.
    """
    y, t, v = (np.asarray(a, dtype=np.int64) for a in (y, teacher, variant))
    n = len(y)

    def stats(idx: np.ndarray) -> dict[str, float | None]:
        yy, tt, vv = y[idx], t[idx], v[idx]
        s: dict[str, float | None] = {"fidelity.accuracy_loss": float((tt == yy).mean() - (vv == yy).mean()),
                                      "fidelity.agreement": float((tt == vv).mean())}  # fmt: skip
        gg = {a: np.asarray(g)[idx] for a, g in groups.items()}
        before = _fairness_stats(schema, yy, tt, gg, min_rows=min_rows)
        after = _fairness_stats(schema, yy, vv, gg, min_rows=min_rows)
        for a in groups:
            key = f"fairness.{a}.equalized_odds_difference"
            s[f"fidelity.equalized_odds_change.{a}"] = (None if before[key] is None or after[key] is None
                                                        else abs(after[key] - before[key]))  # fmt: skip
        return s

    point = stats(np.arange(n))
    intervals = bootstrap_rows(stats, n, draws=draws, point=point)
    out = {}
    for path, value in point.items():
        if value is None:
            continue
        lo, hi = intervals.get(path, (None, None))
        if path == "fidelity.agreement":
            lo, hi = wilson(value * n, n)
        out[path] = Estimate(float(value), lo, hi, "benchmark").to_dict()
    return out


def federated_fairness_estimates(counts: Mapping[str, np.ndarray], schema: DataSchema, *,
                                 noise_std: float) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Intervals for fairness from the clients' summed counts (``noise_std``: the std on each summed cell).

    Exact counts (``noise_std`` 0) get the sampling error of the validation rows only. A noisy
    denominator must stand well clear of its noise to estimate a rate: groups below
    ``max(MIN_GROUP_ROWS, 3 sqrt(2) noise_std)`` rows stay out (named in the notes).
    """
    min_rows = max(MIN_GROUP_ROWS, 3.0 * float(np.sqrt(2.0)) * noise_std)
    out = _with_left_out(
        disparity_estimates(
            counts, schema, noise_std=noise_std, min_rows=min_rows, prefix="federated.fairness", source="clients"
        ),
        counts,
        schema,
        min_rows,
    )
    for attr in counts:
        for m in _DISPARITIES:
            path = f"federated.fairness.{attr}.{m}"
            if path not in out:
                out[path] = Estimate.undefined("clients", f"no two groups with {min_rows:.0f} or more rows (noisy) "
                                                          "to compare", noise_std).to_dict()  # fmt: skip
    return out


def constant_decision_groups(pred: np.ndarray, rules: Mapping[str, dict[str, Any]] | None = None) -> list[str]:
    """Decisions that do not depend on the model: the overall decision, or a post-processed group's.

    The model's decisions on the benchmark are constant when every row gets one class. A stored
    post-processing rule (``thresholds.json``, per attribute) makes a group's decision constant
    when its probability of a positive answer is the same for every score (fairlearn's
    ``ThresholdOptimizer`` can set ``t = -inf``, ``p = 1``: everybody in the group approved).
    Returns names such as ``"overall"`` or ``"sex=Male (post-processing)"``.
    """
    from fedready.thresholds import positive_probability

    out = []
    if len(np.unique(np.asarray(pred))) < 2:
        out.append("overall")
    grid = np.linspace(0.0, 1.0, 201)
    for attr, rule in (rules or {}).items():
        for g in sorted(rule.get("groups", {})):
            p = positive_probability(grid, np.full(len(grid), g, dtype=object), rule)
            if float(np.ptp(p)) < 1e-9:
                out.append(f"{attr}={g} (post-processing)")
    return out
