"""Applying a stored group-fairness rule (``thresholds.json``) with NumPy only.

Shared by the evaluation suite (which fits the rule with fairlearn) and the edge runtime
(which has no fairlearn, torch or training stack), so both decide with the same code.
"""

from __future__ import annotations

import hashlib
import json
import operator
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["positive_probability", "row_uniform"]

_OPS = {">": operator.gt, "<": operator.lt}


def positive_probability(scores: np.ndarray, groups: np.ndarray, rule: Mapping[str, Any]) -> np.ndarray:
    """Probability of a positive decision per row under a stored ThresholdOptimizer rule.

    For each group: with probability ``p0`` decide ``score op0 t0``, else ``score op1 t1``;
    with probability ``p_ignore`` answer ``prediction_constant`` instead (Hardt et al. 2016,
    arXiv:1610.02413). A group the rule does not know keeps the plain decision ``score > 0.5``.
    """
    s = np.asarray(scores, dtype=np.float64)
    out = (s > 0.5).astype(np.float64)
    for g, r in rule["groups"].items():
        m = groups == g
        p = r["p0"] * _OPS[r["op0"]](s[m], r["t0"]) + r["p1"] * _OPS[r["op1"]](s[m], r["t1"])
        out[m] = r["p_ignore"] * r["prediction_constant"] + (1 - r["p_ignore"]) * p
    return out


def row_uniform(row: Mapping[str, Any], *, salt: str = "") -> float:
    """A uniform number in [0, 1) fixed by the row's content.

    A randomised rule needs one draw per decision; deriving it from the row makes the
    device's answer reproducible (the same row always gets the same decision, and an
    audited prediction can be recomputed) instead of depending on process state.
    """
    canon = json.dumps({str(k): str(v).strip() for k, v in row.items()}, sort_keys=True)
    digest = hashlib.sha256((salt + canon).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64
