"""Explanations: global permutation importance, per-row integrated gradients, nearest counterfactuals.

Everything works on raw columns declared in the schema, so an explanation names
the features a person knows ("hours-per-week"), not the encoder's one-hot slots:
attributions of a column's encoded features are summed, and a counterfactual
changes raw values and re-encodes them.

A counterfactual may only change columns the schema marks ``actionable``; the
schema refuses ``actionable`` on a sensitive attribute, and this module checks
again, so a protected attribute is never touched.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fedready.data import Table
from fedready.encoding import FeatureEncoder
from fedready.schema import CategoricalColumn, DataSchema, NumericColumn

__all__ = ["Counterfactual", "attributions", "counterfactual", "permutation_importance"]

CATEGORY_COST = 0.5  # cost of changing one categorical value (numeric: |change| / declared range)
CHANGE_COST = 0.1  # every changed column costs this on top: fewer changes read better


def _column_slices(schema: DataSchema) -> dict[str, slice]:
    out, i = {}, 0
    for col in schema.features:
        width = 1 + len(col.bins) if isinstance(col, NumericColumn) else len(col.categories) + 1
        out[col.name] = slice(i, i + width)
        i += width
    return out


def permutation_importance(
    table: Table, schema: DataSchema, y_true: np.ndarray, predict: Callable[[dict[str, np.ndarray]], np.ndarray],
    *, repeats: int = 3, seed: int = 0,
) -> dict[str, float]:  # fmt: skip
    """Mean accuracy drop when one raw column is shuffled across rows (Breiman 2001), per feature column."""
    rng = np.random.default_rng(seed)
    base = float((predict(table.columns) == y_true).mean())
    out = {}
    for col in schema.features:
        drops = []
        for _ in range(repeats):
            cols = dict(table.columns)
            cols[col.name] = rng.permutation(table.columns[col.name])
            drops.append(base - float((predict(cols) == y_true).mean()))
        out[col.name] = float(np.mean(drops))
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def attributions(model: nn.Module, schema: DataSchema, x_row: np.ndarray, baseline: np.ndarray) -> dict[str, float]:
    """Integrated gradients (Sundararajan et al. 2017, arXiv:1703.01365) per raw column.

    Attributions are for the margin of the predicted class (its logit minus the log-sum-exp
    of the other classes' logits; binary: the logit difference) against the baseline input
    (the benchmark's mean encoded row), summed over each column's encoded features; they add
    up to f(x) - f(baseline) up to the integral's error.
    """
    from captum.attr import IntegratedGradients

    x = torch.from_numpy(np.asarray(x_row, dtype=np.float32)[None, :])
    b = torch.from_numpy(np.asarray(baseline, dtype=np.float32)[None, :])
    with torch.no_grad():
        target = int(model(x).argmax(1))

    def margin(inp: torch.Tensor) -> torch.Tensor:
        out = model(inp)
        others = torch.cat([out[:, :target], out[:, target + 1 :]], dim=1)
        return out[:, target] - torch.logsumexp(others, dim=1)

    attr = IntegratedGradients(margin).attribute(x, baselines=b, n_steps=64).detach().numpy()[0]
    per_col = {name: float(attr[s].sum()) for name, s in _column_slices(schema).items()}
    return dict(sorted(per_col.items(), key=lambda kv: -abs(kv[1])))


@dataclass(frozen=True)
class Counterfactual:
    """The cheapest found change of actionable columns that flips the decision."""

    changes: tuple[tuple[str, str, str], ...]  # (column, from, to), raw values as text
    decision: int  # the decision (class index) after the change
    probability: float  # the probability of that class after the change
    cost: float

    def sentence(self, labels: list[str] | tuple[str, ...]) -> str:
        """Plain words: 'the decision would change to X if a were u instead of v and ...'."""
        parts = [f"{c} were {to} instead of {frm}" for c, frm, to in self.changes]
        return f"the decision would change to '{labels[self.decision]}' if " + " and ".join(parts)


def actionable_columns(schema: DataSchema) -> list[NumericColumn | CategoricalColumn]:
    """Feature columns a counterfactual may change: actionable and never sensitive."""
    return [c for c in schema.features if c.actionable and c.name not in schema.sensitive]


def _fmt(v: float) -> str:
    return f"{v:g}" if float(v) != int(v) else str(int(v))


def _candidates(col: NumericColumn | CategoricalColumn, current: str) -> list[tuple[str, float]]:
    """(new raw value, cost) for one column."""
    if isinstance(col, CategoricalColumn):
        return [(c, CATEGORY_COST + CHANGE_COST) for c in col.categories if c != current]
    cur = float(col.parse(np.asarray([current]))[0])  # a missing value counts as its fill
    grid = {col.min, col.max, *col.bins, *(b - 1 for b in col.bins), *np.linspace(col.min, col.max, 25)}
    grid |= {cur + d for d in (-10, -5, -2, -1, 1, 2, 5, 10)}
    fwd = np.log1p if col.transform == "log1p" else (lambda v: v)
    span = float(fwd(col.max) - fwd(col.min))
    out = []
    for v in sorted(grid):
        v = float(round(v))
        if col.min <= v <= col.max and v != cur:
            out.append((_fmt(v), abs(float(fwd(v) - fwd(cur))) / span + CHANGE_COST))
    return list(dict(out).items())


def counterfactual(
    row: dict[str, str], schema: DataSchema, predict_proba: Callable[[dict[str, np.ndarray]], np.ndarray],
    *, max_changes: int = 2,
) -> Counterfactual | None:  # fmt: skip
    """The cheapest change of at most ``max_changes`` actionable columns that changes the decision.

    ``predict_proba`` maps raw columns to ``(rows, classes)`` probabilities; the decision is the
    most probable class, and any other class counts as a change. Single changes are tried first,
    then pairs; the cheapest change wins (numeric cost: the change as a share of the declared
    range, log scale for log1p columns; categorical: a fixed cost). Returns ``None`` if nothing
    changes it.
    """
    cols = actionable_columns(schema)
    assert not {c.name for c in cols} & set(schema.sensitive)
    decision = int(np.argmax(predict_proba({k: np.asarray([v]) for k, v in row.items()})[0]))
    options = {c.name: _candidates(c, row[c.name]) for c in cols}
    for k in range(1, max_changes + 1):
        combos = []
        for names in itertools.combinations(options, k):
            for picks in itertools.product(*(options[n] for n in names)):
                combos.append((names, picks))
        if not combos:
            return None
        batch = {name: np.full(len(combos), row[name], dtype=object) for name in row}
        for i, (names, picks) in enumerate(combos):
            for n, (v, _) in zip(names, picks, strict=True):
                batch[n][i] = v
        p = predict_proba({k2: v.astype(str) for k2, v in batch.items()})
        new = p.argmax(axis=1)
        flipped = np.flatnonzero(new != decision)
        if len(flipped):
            costs = [sum(c for _, c in combos[i][1]) for i in flipped]
            best = int(flipped[int(np.argmin(costs))])
            names, picks = combos[best]
            changes = tuple((n, row[n], v) for n, (v, _) in zip(names, picks, strict=True))
            return Counterfactual(changes, int(new[best]), float(p[best, new[best]]), float(min(costs)))
    return None


def encoded_predict_proba(model: nn.Module, encoder: FeatureEncoder) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """Raw columns -> class probabilities ``(rows, classes)``, through the schema encoder and the model."""

    @torch.no_grad()
    def fn(columns: dict[str, np.ndarray]) -> np.ndarray:
        logits = model(torch.from_numpy(encoder.transform(columns)))
        return torch.softmax(logits, dim=1).numpy().astype(np.float64)

    return fn


def explain_row(model: nn.Module, schema: DataSchema, row: dict[str, str], baseline: np.ndarray) -> dict[str, Any]:
    """Decision, attributions and nearest counterfactual for one raw row (the body of ``fedready explain``)."""
    encoder = FeatureEncoder(schema)
    proba = encoded_predict_proba(model, encoder)
    columns = {k: np.asarray([v]) for k, v in row.items()}
    p = proba(columns)[0]
    labels, decided = schema.classes, int(np.argmax(p))
    cf = counterfactual(row, schema, proba)
    binary = len(labels) == 2
    return {
        "decision": labels[decided],
        "probability": float(p[decided]),
        "probabilities": {c: float(v) for c, v in zip(labels, p, strict=True)},
        **({"probability_positive": float(p[1])} if binary else {}),
        "attributions": attributions(model, schema, encoder.transform(columns)[0], baseline),
        "values": {c.name: row[c.name] for c in schema.features},
        "counterfactual": None if cf is None else {
            "changes": [{"column": c, "from": f, "to": t} for c, f, t in cf.changes],
            "decision": labels[cf.decision], "probability": cf.probability, "cost": cf.cost,
            **({"probability_positive": cf.probability if cf.decision == 1 else 1 - cf.probability}
               if binary else {}),
            "sentence": cf.sentence(labels),
        },
        "actionable": [c.name for c in actionable_columns(schema)],
    }  # fmt: skip
