"""Calibration: expected calibration error, Brier score and the reliability diagram's bins."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["calibration_report"]


def calibration_report(y_true: np.ndarray, p_positive: np.ndarray, *, bins: int = 10) -> dict[str, Any]:
    """ECE, Brier score and reliability bins of binary predictions.

    ECE is top-label (Guo et al. 2017, arXiv:1706.04599): the confidence of the
    predicted class is binned into ``bins`` equal-width bins over [0.5, 1]; ECE is
    the row-weighted mean of |accuracy - confidence| over the bins. Brier is the
    mean squared error of the positive-class probability.

    Raises
    ------
    ValueError
        If the inputs are empty or differ in length.
    """
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(p_positive, dtype=np.float64)
    if len(y) == 0 or len(y) != len(p):
        raise ValueError(f"need equally long, non-empty labels and scores; got {len(y)} and {len(p)}")
    pred = (p > 0.5).astype(np.float64)
    conf = np.where(pred == 1, p, 1 - p)
    correct = (pred == y).astype(np.float64)
    edges = np.linspace(0.5, 1.0, bins + 1)
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
    return {"ece": float(ece), "brier": float(np.mean((p - y) ** 2)), "bins": table}
