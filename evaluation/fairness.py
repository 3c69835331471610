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
from fedready.schema import CategoricalColumn, DataSchema

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
UNKNOWN_GROUP = "<unknown>"
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
    col = schema.column(attribute)
    if isinstance(col, CategoricalColumn):
        return [*col.categories, UNKNOWN_GROUP]
    edges = [col.min, *col.bins, col.max]
    return [f"[{lo:g}, {hi:g})" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]


def group_labels(schema: DataSchema, attribute: str, raw: np.ndarray) -> np.ndarray:
    """Map raw values of ``attribute`` to group names (see :func:`group_names`)."""
    col = schema.column(attribute)
    names = np.asarray(group_names(schema, attribute), dtype=object)
    if isinstance(col, CategoricalColumn):
        index = {c: i for i, c in enumerate(col.categories)}
        codes = np.fromiter((index.get(str(v), len(col.categories)) for v in raw), dtype=np.int64, count=len(raw))
    else:
        x = np.clip(np.asarray(raw, dtype=np.float64), col.min, col.max)
        codes = np.clip(np.searchsorted(np.asarray(col.bins), x, side="right"), 0, len(names) - 1)
    return names[codes]


def confusion_counts(y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray, names: list[str]) -> np.ndarray:
    """Return an int64 array ``(len(names), 4)`` of (tp, fp, tn, fn) per group."""
    y_true = np.asarray(y_true).astype(bool)
    y_pred = np.asarray(y_pred).astype(bool)
    out = np.zeros((len(names), 4), dtype=np.int64)
    for i, g in enumerate(names):
        m = groups == g
        t, p = y_true[m], y_pred[m]
        out[i] = [np.sum(t & p), np.sum(~t & p), np.sum(~t & ~p), np.sum(t & ~p)]
    return out


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den > 0 else None


def _spread(values: list[float | None]) -> tuple[float | None, float | None]:
    """(max - min, min / max) over defined values; undefined with fewer than two groups."""
    v = [x for x in values if x is not None]
    if len(v) < 2:
        return None, None
    return float(max(v) - min(v)), _ratio(min(v), max(v))


def fairness_from_counts(counts: Mapping[str, np.ndarray], schema: DataSchema) -> dict[str, Any]:
    """Group metrics and disparities for every attribute, from summed confusion counts.

    Parameters
    ----------
    counts : mapping
        Attribute -> ``(groups, 4)`` counts as returned by :func:`confusion_counts`, in
        :func:`group_names` order.
    schema : DataSchema
        The declared schema (group names).

    Returns
    -------
    dict
        ``{attribute: {"groups": {name: {...}}, "demographic_parity_difference": ..., ...}}``;
        an undefined value is ``None``.
    """
    out: dict[str, Any] = {}
    for attr, table in counts.items():
        names = group_names(schema, attr)
        groups: dict[str, dict[str, Any]] = {}
        for name, (tp, fp, tn, fn) in zip(names, np.asarray(table).tolist(), strict=True):
            n = tp + fp + tn + fn
            if n == 0 and name == UNKNOWN_GROUP:
                continue  # the "unknown" slot is only reported when it has members
            groups[name] = {
                "count": n, "tp": tp, "fp": fp, "tn": tn, "fn": fn,
                "accuracy": _ratio(tp + tn, n), "selection_rate": _ratio(tp + fp, n),
                "tpr": _ratio(tp, tp + fn), "fpr": _ratio(fp, fp + tn),
            }  # fmt: skip
        out[attr] = _disparities(groups)
    return out


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
    y_true: np.ndarray, y_pred: np.ndarray, groups: Mapping[str, np.ndarray]
) -> dict[str, dict[str, Any]]:
    """Per-group metrics with fairlearn's ``MetricFrame`` on data held in one place.

    Used on the server's holdout; the federated suite must agree with it on pooled data.
    Groups where a rate has a zero denominator are dropped from that rate's
    disparity rather than counted as 0.0.
    """
    import pandas as pd
    from fairlearn.metrics import MetricFrame, count, false_positive_rate, selection_rate, true_positive_rate
    from sklearn.metrics import accuracy_score

    out: dict[str, dict[str, Any]] = {}
    for attr, g in groups.items():
        mf = MetricFrame(
            metrics={"accuracy": accuracy_score, "selection_rate": selection_rate, "tpr": true_positive_rate,
                     "fpr": false_positive_rate, "count": count},
            y_true=y_true, y_pred=y_pred, sensitive_features=pd.Series(g, name=attr),
        )  # fmt: skip
        by = mf.by_group
        pos = pd.Series(y_true).groupby(np.asarray(g)).sum()
        neg = pd.Series(1 - np.asarray(y_true)).groupby(np.asarray(g)).sum()
        table: dict[str, dict[str, Any]] = {}
        for name, row in by.iterrows():
            table[str(name)] = {
                "count": int(row["count"]), "accuracy": float(row["accuracy"]),
                "selection_rate": float(row["selection_rate"]),
                "tpr": float(row["tpr"]) if pos[name] > 0 else None,
                "fpr": float(row["fpr"]) if neg[name] > 0 else None,
            }  # fmt: skip
        out[attr] = _disparities(table)
    return out


def client_spread(per_client: Mapping[str, tuple[float, float]]) -> dict[str, Any]:
    """Accuracy spread across clients from each client's (correct, rows) on its validation split.

    The pairs may be noisy (DP): an accuracy is clipped to [0, 1], and a client whose (noisy)
    row count is below 1 is undefined. Returns std (population), worst client, and the mean of
    the worst 10% of clients (at least one).
    """
    acc = {c: min(1.0, max(0.0, correct / rows)) for c, (correct, rows) in per_client.items() if rows >= 1}
    undefined = sorted(c for c, (_, rows) in per_client.items() if rows < 1)
    if not acc:
        return {"clients": {}, "std": None, "worst_client": None, "worst_accuracy": None,
                "worst_10pct_accuracy": None, "undefined_clients": undefined}  # fmt: skip
    values = np.array(sorted(acc.values()))
    k = max(1, int(np.ceil(0.1 * len(values))))
    worst = min(acc, key=lambda c: acc[c])
    return {
        "clients": dict(sorted(acc.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else kv[0])),
        "std": float(values.std()),
        "worst_client": worst,
        "worst_accuracy": float(acc[worst]),
        "worst_10pct_accuracy": float(values[:k].mean()),
        "undefined_clients": undefined,
    }
