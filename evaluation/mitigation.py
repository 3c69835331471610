"""Group-fairness post-processing: per-group randomised thresholds, stored as plain JSON.

fairlearn's ``ThresholdOptimizer`` (Hardt et al. 2016, arXiv:1610.02413) is fitted
with the ``equalized_odds`` constraint on the model's positive-class probability
and the group of one sensitive attribute. The fitted rule is exported as plain
numbers (``thresholds.json``): for each group, with probability ``p0`` apply
``score > t0`` (or ``<``), else ``score > t1``; with probability ``p_ignore``
answer ``prediction_constant`` instead. An edge runtime applies it with
:func:`positive_probability` and one uniform draw per row, without fairlearn.

Notes
-----
Fitting and measuring on the same rows flatters the result, so the holdout is
cross-fitted: split in two seeded halves (stratified by group and label), the
rule stored with the model is fitted on half A and every reported number is
measured on half B; the swapped fold is reported too, as a check.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedready.errors import ConfigError
from fedready.thresholds import positive_probability

__all__ = ["MIN_LABEL_ROWS", "apply_thresholds", "fit_thresholds", "positive_probability", "split_halves"]


def _scores_estimator() -> Any:
    """A prefit sklearn estimator whose predict_proba returns the score column it is given."""
    from sklearn.base import BaseEstimator, ClassifierMixin

    class _Scores(ClassifierMixin, BaseEstimator):
        classes_ = np.array([0, 1])

        def fit(self, x: np.ndarray, y: np.ndarray) -> _Scores:
            return self

        def predict_proba(self, x: np.ndarray) -> np.ndarray:
            s = np.asarray(x)[:, 0]
            return np.stack([1 - s, s], axis=1)

        def __sklearn_is_fitted__(self) -> bool:
            return True

    return _Scores()


MIN_LABEL_ROWS = 5  # rows of each label a group needs in the fitted rows for a rule of its own
POOLED = "<pooled>"
# The rule of a group left without post-processing: decide ``score > 0.5`` (p0 = 1, never ignored).
PLAIN_RULE = {"p0": 1.0, "op0": ">", "t0": 0.5, "p1": 0.0, "op1": ">", "t1": 0.5, "p_ignore": 0.0,
              "prediction_constant": 0.0}  # fmt: skip


def _exported(b: Any) -> dict[str, Any]:
    return {
        "p0": float(b["p0"]), "op0": b["operation0"]._operator, "t0": float(b["operation0"]._threshold),
        "p1": float(b["p1"]), "op1": b["operation1"]._operator, "t1": float(b["operation1"]._threshold),
        "p_ignore": float(b.get("p_ignore", 0.0)), "prediction_constant": float(b.get("prediction_constant", 0.0)),
    }  # fmt: skip


def _too_small(y: np.ndarray) -> bool:
    return min(int((y == 0).sum()), int((y == 1).sum())) < MIN_LABEL_ROWS


def fit_thresholds(
    scores: np.ndarray, y: np.ndarray, groups: np.ndarray, *, attribute: str, names: list[str] | None = None
) -> dict[str, Any]:
    """Fit equalized-odds thresholds per group; return them as plain JSON-ready data.

    A group with fewer than :data:`MIN_LABEL_ROWS` rows of either label (one label only, or
    absent from the fitted rows but listed in ``names``) gets no rule of its own: such groups
    are pooled and share one rule fitted on their rows together (``"pooled"``), or, when the pool
    itself is too small, keep the plain decision ``score > 0.5`` (``"skipped"``). fairlearn
    cannot fit a group of one label (its ROC curve is undefined) and a handful of rows would
    give a rule that only fits those rows.

    Raises
    ------
    ConfigError
        If the labels hold a single class (nothing to equalise).
    """
    from fairlearn.postprocessing import ThresholdOptimizer

    if len(np.unique(y)) < 2:
        raise ConfigError("labels", f"the label column holds one class only ({int(y[0])}); cannot fit thresholds")
    groups = np.asarray(groups).astype(str)
    every = sorted(set(groups.tolist()) | set(names or []))
    small = [g for g in every if _too_small(y[groups == g])]
    pooled_rows = np.isin(groups, small)
    pool = bool(small) and not _too_small(y[pooled_rows])
    fit_groups = np.where(pooled_rows, POOLED, groups) if pool else groups
    keep = np.ones(len(y), dtype=bool) if pool else ~pooled_rows
    rules: dict[str, dict[str, Any]] = {}
    if keep.any():
        opt = ThresholdOptimizer(estimator=_scores_estimator(), constraints="equalized_odds", prefit=True,
                                 predict_method="predict_proba", objective="accuracy_score")  # fmt: skip
        opt.fit(np.asarray(scores)[keep][:, None], y[keep], sensitive_features=fit_groups[keep])
        rules = {str(g): _exported(b) for g, b in opt.interpolated_thresholder_.interpolation_dict.items()}
    for g in small:  # every group keeps a rule under its own name: a device refuses rows of a group it does not know
        rules[g] = dict(rules[POOLED]) if pool else dict(PLAIN_RULE)
    rules.pop(POOLED, None)
    return {"attribute": attribute, "constraint": "equalized_odds", "score": "p(positive)",
            "groups": {g: rules[g] for g in sorted(rules)},
            "pooled": small if pool else [], "skipped": [] if pool else small}  # fmt: skip


def apply_thresholds(scores: np.ndarray, groups: np.ndarray, rule: dict[str, Any], *, seed: int = 0) -> np.ndarray:
    """Randomised 0/1 decisions under a stored rule (one seeded uniform draw per row)."""
    u = np.random.default_rng(seed).random(len(scores))
    return (positive_probability(scores, groups, rule) >= u).astype(np.int64)


def split_halves(y: np.ndarray, groups: np.ndarray, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint halves of the row indices, stratified by (group, label)."""
    rng = np.random.default_rng(seed)
    a, b = [], []
    for key in sorted(set(zip(groups.tolist(), y.tolist(), strict=True))):
        idx = np.flatnonzero((groups == key[0]) & (y == key[1]))
        idx = rng.permutation(idx)
        a.append(idx[: len(idx) // 2])
        b.append(idx[len(idx) // 2 :])
    return np.sort(np.concatenate(a)), np.sort(np.concatenate(b))
