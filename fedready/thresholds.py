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
from collections.abc import Mapping, Sequence
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


def row_uniform(features: Sequence[tuple[str, str]], *, secret: bytes) -> float:
    """A uniform number in [0, 1) fixed by a row's feature values and a per-device secret.

    ``features`` are the schema's feature columns as ``(name, canonical value)`` pairs, in
    schema order; nothing else of the request (ids, extra fields, key order) enters.

    Notes
    -----
    A randomised rule needs one draw per decision. Drawing it from the features alone makes
    the decision a function of the row: the same person always gets the same answer, and
    resending the row with another ``request_id`` cannot re-roll it. The HMAC key is a secret
    of the device (``HOME/decision.secret``), so nobody outside can tell in advance which rows
    land on the favourable side of a randomised group.
    """
    canon = json.dumps([[k, v] for k, v in features], ensure_ascii=False, separators=(",", ":"))
    digest = hmac.new(secret, canon.encode("utf-8"), hashlib.sha256).digest()
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
