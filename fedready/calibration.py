"""Calibration: expected calibration error, Brier score and the reliability diagram's bins."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["calibration_report"]


def calibration_report(y_true: np.ndarray, proba: np.ndarray, *, bins: int = 10) -> dict[str, Any]:
    """ECE, Brier score and reliability bins of probabilistic predictions.

    ``proba`` is either ``P(y = 1)`` per row (binary) or ``(rows, classes)`` probabilities.
    ECE is top-label (Guo et al. 2017, arXiv:1706.04599): the confidence of the predicted
    class is binned into ``bins`` equal-width bins over [1/classes, 1] ([0.5, 1] for binary);
    ECE is the row-weighted mean of |accuracy - confidence| over the bins. Brier is the mean
    squared error of the positive-class probability for a binary target, and the multi-class
    Brier score (squared error summed over classes, Brier 1950) otherwise.

    Raises
    ------
    ValueError
        If the inputs are empty or differ in length.
    """
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(proba, dtype=np.float64)
    if len(y) == 0 or len(y) != len(p):
        raise ValueError(f"need equally long, non-empty labels and scores; got {len(y)} and {len(p)}")
    if p.ndim == 2 and p.shape[1] == 2:
        p = p[:, 1]
    if p.ndim == 1:
        pred = (p > 0.5).astype(np.int64)
        conf = np.where(pred == 1, p, 1 - p)
        brier = float(np.mean((p - y) ** 2))
        low = 0.5
    else:
        pred = p.argmax(axis=1)
        conf = p.max(axis=1)
        onehot = np.eye(p.shape[1])[y]
        brier = float(np.mean(((p - onehot) ** 2).sum(axis=1)))
        low = 1.0 / p.shape[1]
    correct = (pred == y).astype(np.float64)
    edges = np.linspace(low, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        m = which == b
        n = int(m.sum())
        row = {
            "low": float(edges[b]), "high": float(edges[b + 1]), "count": n,
            "confidence": float(conf[m].mean()) if n else None, "accuracy": float(correct[m].mean()) if n else None,
        }  # fmt: skip
        if n:
            ece += n / len(y) * abs(row["accuracy"] - row["confidence"])
        table.append(row)
    return {"ece": float(ece), "brier": brier, "bins": table}
