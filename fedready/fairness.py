"""Group fairness from confusion counts: the one definition shared by clients, server and holdout.

A client computes, on its own validation split, a 2 x 2 confusion table per group
of every sensitive attribute and sends only those counts; the server sums them.
Every group metric (accuracy, selection rate, TPR, FPR) and every disparity
(demographic parity difference and ratio, equalized odds difference, equal
opportunity difference, worst-group accuracy) is a function of the summed
counts, so the federated numbers equal the pooled computation exactly
(Hardt et al. 2016, arXiv:1610.02413, for the definitions).

A rate whose denominator is zero (a group with no members, or no positives) is
reported as ``None`` ("undefined") and left out of the disparities, instead of
the silent 0.0 or NaN other libraries return.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fedready.errors import ConfigError
from fedready.schema import UNKNOWN_GROUP, DataSchema

__all__ = [
    "UNDEFINED",
    "confusion_counts",
    "fairness_from_counts",
    "group_labels",
    "group_names",
    "holdout_fairness",
    "sensitive_attributes",
]

UNDEFINED = "undefined"
# Order of the four cells in a group's count vector (shared with the wire format).
CELLS = ("tp", "fp", "tn", "fn")


def sensitive_attributes(schema: DataSchema, names: list[str] | None = None) -> list[str]:
    """Return the sensitive attributes to slice by (``names`` checked against the schema).

    Raises
    ------
    ConfigError
        If a name is not a declared sensitive attribute (field ``sensitive``).
    """
    if names is None:
        return list(schema.sensitive)
    unknown = [n for n in names if n not in schema.sensitive]
    if unknown:
        raise ConfigError("sensitive", f"unknown sensitive attribute '{unknown[0]}'; the schema declares: "
                                       f"{', '.join(schema.sensitive) or 'none'}")  # fmt: skip
    return list(names)


def group_names(schema: DataSchema, attribute: str) -> list[str]:
    """Every group of ``attribute`` in a fixed order: declared categories (or numeric bins), then unknown."""
    return schema.group_names(attribute)


def group_labels(schema: DataSchema, attribute: str, raw: np.ndarray) -> np.ndarray:
    """Map raw values of ``attribute`` to group names (see :func:`group_names`)."""
    return schema.group_labels(attribute, raw)


def confusion_counts(
    y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray, names: list[str], *, classes: int = 2
) -> np.ndarray:
    """Per-group confusion counts: int64 ``(len(names), 4)`` of (tp, fp, tn, fn) for a binary target.

    For ``classes`` > 2 each group's row is its ``classes x classes`` confusion matrix, flattened
    (true class by row, decided class by column): one row of data adds 1 to exactly one cell per
    group table, as in the binary case, so a noisy release has the same sensitivity. The
    one-vs-rest counts of every class follow from it (:func:`one_vs_rest_counts`).
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    width = 4 if classes == 2 else classes * classes
    out = np.zeros((len(names), width), dtype=np.int64)
    for i, g in enumerate(names):
        m = groups == g
        if classes == 2:
            t, p = y_true[m] == 1, y_pred[m] == 1
            out[i] = [np.sum(t & p), np.sum(~t & p), np.sum(~t & ~p), np.sum(t & ~p)]
        else:
            np.add.at(out[i], y_true[m].astype(np.int64) * classes + y_pred[m].astype(np.int64), 1)
    return out


def one_vs_rest_counts(matrices: np.ndarray, classes: int) -> np.ndarray:
    """``(groups, classes * classes)`` confusion matrices -> ``(groups, classes, 4)`` one-vs-rest (tp, fp, tn, fn)."""
    m = np.asarray(matrices, dtype=np.float64).reshape(len(matrices), classes, classes)
    tp = np.einsum("gcc->gc", m)
    fn = m.sum(axis=2) - tp
    fp = m.sum(axis=1) - tp
    tn = m.sum(axis=(1, 2))[:, None] - tp - fn - fp
    return np.stack([tp, fp, tn, fn], axis=2)


def _ratio(num: float, den: float, min_rows: float = 0.0) -> float | None:
    """``num / den`` within [0, 1] (noisy counts can leave it), or None when ``den`` is below ``min_rows`` or 0."""
    if den <= 0 or den < min_rows:
        return None
    return float(min(1.0, max(0.0, num / den)))


def _spread(values: list[float | None]) -> tuple[float | None, float | None]:
    """(max - min, min / max) over defined values; undefined with fewer than two groups."""
    v = [x for x in values if x is not None]
    if len(v) < 2:
        return None, None
    return float(max(v) - min(v)), _ratio(min(v), max(v))


def fairness_from_counts(counts: Mapping[str, np.ndarray], schema: DataSchema, *,
                         min_rows: float = 0.0) -> dict[str, Any]:  # fmt: skip
    """Group metrics and disparities for every attribute, from summed confusion counts.

    Parameters
    ----------
    counts : mapping
        Attribute -> counts as returned by :func:`confusion_counts` (``(groups, 4)``, or a
        flattened confusion matrix per group for a multi-class target), in :func:`group_names` order.
    schema : DataSchema
        The declared schema (group names, classes).

    min_rows : float
        A rate whose denominator (a group's rows, positives or negatives) is below this is
        undefined: too few rows to estimate it, so it stays out of every disparity.

    Returns
    -------
    dict
        ``{attribute: {"groups": {name: {...}}, "demographic_parity_difference": ..., ...}}``;
        an undefined value is ``None``. Multi-class: see :func:`_one_vs_rest`.
    """
    out: dict[str, Any] = {}
    for attr, table in counts.items():
        names = group_names(schema, attr)
        table = np.asarray(table).reshape(len(names), -1)
        if schema.target.binary:
            out[attr] = _disparities(_groups_from_counts(names, table, min_rows))
            continue
        k = len(schema.classes)
        ovr = one_vs_rest_counts(table, k)
        ovr = ovr.astype(np.int64) if np.array_equal(ovr, np.round(ovr)) else ovr  # exact counts stay integers
        per_class = {c: _disparities(_groups_from_counts(names, ovr[:, j, :], min_rows))
                     for j, c in enumerate(schema.classes)}  # fmt: skip
        correct = ovr[:, :, 0].sum(axis=1)  # the confusion matrix's diagonal
        sizes = ovr[:, 0, :].sum(axis=1)
        overall = {g: (_num(n), _num(c)) for g, n, c in zip(names, sizes, correct, strict=True)
                   if n > 0 or g != UNKNOWN_GROUP}  # fmt: skip
        out[attr] = _one_vs_rest(per_class, overall, min_rows)
    return out


def _num(v: float) -> float | int:
    """An exact count stays an int; a noisy one stays a float."""
    return int(v) if float(v).is_integer() else float(v)


def _groups_from_counts(names: list[str], table: np.ndarray, min_rows: float = 0.0) -> dict[str, dict[str, Any]]:
    groups: dict[str, dict[str, Any]] = {}
    for name, (tp, fp, tn, fn) in zip(names, np.asarray(table).tolist(), strict=True):
        n = tp + fp + tn + fn
        if n <= 0 and name == UNKNOWN_GROUP:
            continue  # the "unknown" slot is only reported when it has members
        groups[name] = {
            "count": n, "tp": tp, "fp": fp, "tn": tn, "fn": fn,
            "accuracy": _ratio(tp + tn, n, min_rows), "selection_rate": _ratio(tp + fp, n, min_rows),
            "tpr": _ratio(tp, tp + fn, min_rows), "fpr": _ratio(fp, fp + tn, min_rows),
        }  # fmt: skip
    return groups


def _worst(values: list[float | None], pick: Any) -> float | None:
    v = [x for x in values if x is not None]
    return pick(v) if v else None


def _one_vs_rest(per_class: dict[str, dict[str, Any]], overall: dict[str, tuple[int, int]],
                 min_rows: float = 0.0) -> dict[str, Any]:  # fmt: skip
    """Multi-class fairness: every binary metric per class (one-vs-rest), the worst class as the headline.

    ``overall`` maps each group to (rows, correctly classified rows). Disparities are the
    largest over classes (the smallest for the parity ratio); worst-group accuracy is on the
    multi-class decisions.
    """
    groups = {g: {"count": n, "accuracy": _ratio(k, n, min_rows)} for g, (n, k) in overall.items()}
    acc = [g["accuracy"] for g in groups.values() if g["accuracy"] is not None]
    metric = lambda m, pick=max: _worst([c[m] for c in per_class.values()], pick)  # noqa: E731
    return {
        "groups": groups,
        "per_class": per_class,
        "one_vs_rest": True,
        "undefined_groups": sorted({g for c in per_class.values() for g in c["undefined_groups"]}),
        "demographic_parity_difference": metric("demographic_parity_difference"),
        "demographic_parity_ratio": metric("demographic_parity_ratio", min),
        "equalized_odds_difference": metric("equalized_odds_difference"),
        "equal_opportunity_difference": metric("equal_opportunity_difference"),
        "worst_group_accuracy": min(acc) if acc else None,
    }


def _disparities(groups: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Disparities over the groups where each rate is defined."""
    dpd, dpr = _spread([g["selection_rate"] for g in groups.values()])
    tpr_d, _ = _spread([g["tpr"] for g in groups.values()])
    fpr_d, _ = _spread([g["fpr"] for g in groups.values()])
    acc = [g["accuracy"] for g in groups.values() if g["accuracy"] is not None]
    return {
        "groups": groups,
        "undefined_groups": [k for k, g in groups.items() if None in (g["tpr"], g["fpr"], g["accuracy"])],
        "demographic_parity_difference": dpd,
        "demographic_parity_ratio": dpr,
        "equalized_odds_difference": None if tpr_d is None or fpr_d is None else max(tpr_d, fpr_d),
        "equal_opportunity_difference": tpr_d,
        "worst_group_accuracy": min(acc) if acc else None,
    }


def holdout_fairness(
    y_true: np.ndarray, y_pred: np.ndarray, groups: Mapping[str, np.ndarray], *, classes: list[str] | None = None
) -> dict[str, dict[str, Any]]:
    """Per-group metrics with fairlearn's ``MetricFrame`` on data held in one place.

    Used on the server's holdout; the federated suite must agree with it on pooled data.
    Groups where a rate has a zero denominator are dropped from that rate's
    disparity rather than counted as 0.0. With more than two ``classes`` every metric is
    computed per class, one-vs-rest (see :func:`_one_vs_rest`).
    """
    if classes is None or len(classes) == 2:
        return {attr: _disparities(_fairlearn_groups(y_true, y_pred, g)) for attr, g in groups.items()}
    import pandas as pd
    from fairlearn.metrics import MetricFrame, count
    from sklearn.metrics import accuracy_score

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    out: dict[str, dict[str, Any]] = {}
    for attr, g in groups.items():
        per_class = {c: _disparities(_fairlearn_groups((y_true == j).astype(np.int64), (y_pred == j).astype(np.int64),
                                                       g)) for j, c in enumerate(classes)}  # fmt: skip
        mf = MetricFrame(metrics={"accuracy": accuracy_score, "count": count}, y_true=y_true, y_pred=y_pred,
                         sensitive_features=pd.Series(g, name=attr))  # fmt: skip
        overall = {str(name): (int(row["count"]), int(round(row["accuracy"] * row["count"])))
                   for name, row in mf.by_group.iterrows()}  # fmt: skip
        out[attr] = _one_vs_rest(per_class, overall)
    return out


def _fairlearn_groups(y_true: np.ndarray, y_pred: np.ndarray, g: np.ndarray) -> dict[str, dict[str, Any]]:
    import pandas as pd
    from fairlearn.metrics import MetricFrame, count, false_positive_rate, selection_rate, true_positive_rate
    from sklearn.metrics import accuracy_score

    mf = MetricFrame(
        metrics={"accuracy": accuracy_score, "selection_rate": selection_rate, "tpr": true_positive_rate,
                 "fpr": false_positive_rate, "count": count},
        y_true=y_true, y_pred=y_pred, sensitive_features=pd.Series(g, name="group"),
    )  # fmt: skip
    pos = pd.Series(y_true).groupby(np.asarray(g)).sum()
    neg = pd.Series(1 - np.asarray(y_true)).groupby(np.asarray(g)).sum()
    table: dict[str, dict[str, Any]] = {}
    for name, row in mf.by_group.iterrows():
        table[str(name)] = {
            "count": int(row["count"]), "accuracy": float(row["accuracy"]),
            "selection_rate": float(row["selection_rate"]),
            "tpr": float(row["tpr"]) if pos[name] > 0 else None,
            "fpr": float(row["fpr"]) if neg[name] > 0 else None,
        }  # fmt: skip
    return table
