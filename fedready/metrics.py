"""Accuracy beside the numbers that make it mean something: the majority-class rate and balanced accuracy.

A model that always answers the most frequent class scores the majority-class rate; on an
imbalanced or multi-class target that can look like a good accuracy. Balanced accuracy (the mean
of the per-class recalls) is 1 / classes for any constant answer. Shared by the simulation's
summary, the evaluation report, the pipeline and the CLI, so they all report the same numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["BELOW_MAJORITY", "below_majority", "classification_metrics"]

BELOW_MAJORITY = (
    "warning: accuracy {accuracy:.4f} is no higher than always answering the majority class ({majority:.4f}): "
    "the model has not learned more than the class balance"
)


def classification_metrics(y: np.ndarray, pred: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Accuracy, the majority-class baseline, balanced accuracy and per-class recall and precision."""
    counts = np.bincount(y, minlength=len(classes))
    recall = {c: float((pred[y == i] == i).mean()) if counts[i] else None for i, c in enumerate(classes)}
    chosen = np.bincount(pred, minlength=len(classes))
    precision = {c: float((y[pred == i] == i).mean()) if chosen[i] else None for i, c in enumerate(classes)}
    defined = [r for r in recall.values() if r is not None]
    accuracy, majority, balanced = float((pred == y).mean()), float(counts.max() / len(y)), float(np.mean(defined))
    return {"accuracy": accuracy, "rows": len(y), "classes": list(classes), "majority_rate": majority,
            "balanced_accuracy": balanced, "accuracy_lift": accuracy - majority,
            "balanced_accuracy_lift": balanced - 1.0 / len(classes), "chance": 1.0 / len(classes),
            "recall": recall, "precision": precision}  # fmt: skip


def below_majority(m: Mapping[str, Any]) -> str | None:
    """The one-line warning when ``m["accuracy"]`` is at or below ``m["majority_rate"]`` (else None)."""
    acc, majority = m.get("accuracy"), m.get("majority_rate")
    if acc is None or majority is None or acc > majority:
        return None
    return BELOW_MAJORITY.format(accuracy=acc, majority=majority)
