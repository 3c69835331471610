"""Applying a stored group-fairness rule (``thresholds.json``) with NumPy only.

Shared by the evaluation suite (which fits the rule with fairlearn), the compress step (which
describes the shipped decisions in the reference profile) and the edge runtime (which has no
fairlearn, torch or training stack), so all of them decide with the same code.

Two formats of ``thresholds.json``:

* the randomised equalized-odds rule ``fedready evaluate`` fits: ``{"attribute": A, "groups":
  {g: {op0, t0, op1, t1, p0, p1, p_ignore, prediction_constant}}}`` (Hardt et al. 2016,
  arXiv:1610.02413);
* plain per-group cut-offs an operator writes by hand: ``{"attribute": A, "thresholds": {g: t},
  "default": t}``.

A row whose sensitive value is missing or not a group of the rule is refused
(:class:`~fedready.errors.IntegrityError`), unless the file states a fallback: ``"unknown_group":
"no-post-processing"`` (decide ``score >= 0.5``) or ``"unknown_group": "group:NAME"`` (apply
group NAME's rule); for the hand-written format ``"default"`` is that fallback cut-off.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import operator
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedready.errors import IntegrityError

__all__ = ["DecisionRule", "positive_probability", "row_uniform"]

_OPS = {">": operator.gt, "<": operator.lt}
_RULE_KEYS = ("t0", "t1", "p0", "p1", "p_ignore", "prediction_constant")
REFUSE, PLAIN = "refuse", "no-post-processing"


def positive_probability(scores: np.ndarray, groups: np.ndarray, rule: Mapping[str, Any]) -> np.ndarray:
    """Probability of a positive decision per row under a stored ThresholdOptimizer rule.

    For each group: with probability ``p0`` decide ``score op0 t0``, else ``score op1 t1``;
    with probability ``p_ignore`` answer ``prediction_constant`` instead (Hardt et al. 2016,
    arXiv:1610.02413). A group the rule does not know keeps the plain decision ``score > 0.5``
    (callers that must not guess refuse such rows first: :class:`DecisionRule`).
    """
    s = np.asarray(scores, dtype=np.float64)
    out = (s > 0.5).astype(np.float64)
    for g, r in rule["groups"].items():
        m = groups == g
        p = r["p0"] * _OPS[r["op0"]](s[m], r["t0"]) + r["p1"] * _OPS[r["op1"]](s[m], r["t1"])
        out[m] = r["p_ignore"] * r["prediction_constant"] + (1 - r["p_ignore"]) * p
    return out


DRAW_GRID = 2**16  # encoded features are rounded to 1/65,536 before the draw (see row_uniform)
_DRAW_CONTEXT = b"fedready-decision-draw/2\n"  # domain separation: this HMAC means nothing elsewhere


def row_uniform(encoded: np.ndarray, *, secret: bytes) -> float:
    """A uniform number in [0, 1) fixed by the model's own view of a row and a per-device secret.

    ``encoded`` is the row as the model receives it: the float32 output of
    :class:`fedready.encoding.FeatureEncoder` (numbers parsed, missing values filled, clipped to the
    declared range and scaled; every category outside the vocabulary, and every spelling of it,
    in the one "unknown" slot). Each value is rounded to a grid of ``1 / DRAW_GRID`` before the
    HMAC, so differences far below what the model can resolve (``41`` against ``41 + 1e-9``)
    cannot move the draw across a float32 rounding edge either.

    Notes
    -----
    A randomised rule (Hardt et al. 2016, arXiv:1610.02413) needs one draw per decision. If the
    draw depended on anything the model does not see (request ids, key order, spacing, the
    spelling of an unknown category, digits below float32 precision, a value beyond the clipped
    range), a denied person could resubmit a meaningless variant of the row and re-roll: with an
    approval probability q, k tries succeed with probability 1 - (1 - q)^k. Keyed on the model's
    view, a resubmission gets a new draw only when the model itself sees a different row, and then
    its score changes too. The HMAC key is a secret of the device (``HOME/decision.secret``), so
    nobody outside can tell in advance which rows land on the favourable side. What this does not
    stop: a person who changes a value the model does see (an age of 41.01 instead of 41) gets
    that row's draw; lying about one's inputs is outside what any decision rule can detect.
    """
    x = np.asarray(encoded, dtype=np.float64).ravel()
    cells = np.round(x * DRAW_GRID).astype("<i8") + 0  # + 0: -0 and 0 are one cell
    digest = hmac.new(secret, _DRAW_CONTEXT + cells.tobytes(), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass(frozen=True)
class DecisionRule:
    """The decision rule of ``thresholds.json``, or ``score >= 0.5`` everywhere when there is none.

    Use :meth:`load` or :meth:`from_dict`; both validate the file.
    """

    attribute: str | None = None
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)  # randomised rule, by group
    cutoffs: dict[str, float] = field(default_factory=dict)  # hand-written cut-offs, by group
    fallback: str = REFUSE  # refuse | no-post-processing | group:NAME
    default: float | None = None  # hand-written format: the cut-off of any other group

    @property
    def randomised(self) -> bool:
        return bool(self.groups)

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "thresholds.json") -> DecisionRule:
        """Parse and validate a thresholds document.

        Raises
        ------
        IntegrityError
            If the document is not a thresholds file or names an impossible fallback.
        """
        try:
            attribute = data.get("attribute")
            fallback = str(data.get("unknown_group", REFUSE))
            if "groups" in data:
                groups = {str(g): dict(r) for g, r in data["groups"].items()}
                for r in groups.values():
                    for k in _RULE_KEYS:
                        float(r[k])
                    if r["op0"] not in _OPS or r["op1"] not in _OPS:
                        raise ValueError(f"unknown comparison {r['op0']!r}/{r['op1']!r}")
                rule = cls(str(attribute), groups=groups, fallback=fallback)
            else:
                cutoffs = {str(k): float(v) for k, v in data.get("thresholds", {}).items()}
                default = data.get("default")
                rule = cls(None if attribute is None else str(attribute), cutoffs=cutoffs, fallback=fallback,
                           default=None if default is None else float(default))  # fmt: skip
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise IntegrityError(f"{where} is not a thresholds file ({e})") from e
        known = set(rule.groups or rule.cutoffs)
        if fallback not in (REFUSE, PLAIN) and not (fallback.startswith("group:") and fallback[6:] in known):
            raise IntegrityError(f"{where}: unknown_group must be '{REFUSE}', '{PLAIN}' or 'group:NAME' with NAME one "
                                 f"of {sorted(known)}, got {fallback!r}")  # fmt: skip
        return rule

    @classmethod
    def load(cls, path: Path) -> DecisionRule:
        """Read ``path`` (no file: the plain ``score >= 0.5`` rule)."""
        path = Path(path)
        if not path.exists():
            return cls()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise IntegrityError(f"{path} is not valid JSON ({e})") from e
        return cls.from_dict(data, where=str(path))

    def known(self, group: str) -> bool:
        return group in (self.groups or self.cutoffs)

    def group_of(self, row: Mapping[str, Any]) -> str | None:
        """The group whose rule applies to ``row`` (None: no post-processing for it).

        Raises
        ------
        IntegrityError
            If the sensitive value is missing or unknown and the rule states no fallback.
        """
        if self.attribute is None:
            return None
        raw = row.get(self.attribute)
        group = "" if raw is None else str(raw).strip()
        if self.known(group):
            return group
        if self.cutoffs and self.default is not None:
            return None
        if self.fallback == PLAIN:
            return None
        if self.fallback.startswith("group:"):
            return self.fallback[6:]
        known = ", ".join(sorted(self.groups or self.cutoffs))
        what = f"'{self.attribute}' is missing" if not group else f"'{self.attribute}' is {group!r}, not one of {known}"
        raise IntegrityError(f"{what}: the model's fairness post-processing cannot be applied, so the row is refused "
                             "(send the exact value; an operator can set a fallback in thresholds.json)")  # fmt: skip

    def probability(self, score: float, group: str | None) -> tuple[float, dict[str, float]]:
        """P(positive decision) for one score and group, and what the decision is based on."""
        if group is None:
            t = self.default if self.cutoffs and self.default is not None else 0.5
            return float(score >= t), {"threshold": t}
        if self.cutoffs:
            t = self.cutoffs[group]
            return float(score >= t), {"threshold": t}
        q = float(positive_probability(np.array([score]), np.array([group]), {"groups": self.groups})[0])
        return q, {"positive_probability": q}

    def expected_positive(self, scores: np.ndarray, groups: np.ndarray) -> np.ndarray:
        """P(positive decision) per row of a data set (rows of unknown groups: their fallback, else ``>= 0.5``)."""
        out = np.empty(len(scores), dtype=np.float64)
        for i, (s, g) in enumerate(zip(np.asarray(scores, dtype=np.float64).tolist(), np.asarray(groups).tolist(),
                                       strict=True)):  # fmt: skip
            try:
                group = self.group_of({} if self.attribute is None else {self.attribute: g})
            except IntegrityError:
                group = None
            out[i] = self.probability(s, group)[0]
        return out
