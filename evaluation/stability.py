"""Stability: perturbed inputs, retraining with other seeds, and churn against a previous model.

Perturbations act on raw column values (what a person would mistype or leave
blank) and are re-encoded with the schema, so they mean the same for any data set.
They are registered under string kinds; a named perturbation is ``<kind>-<arg>``:

* ``gaussian-<s>``: every numeric feature gets N(0, (s * declared range)^2) noise,
  clipped back to the range (for ``log1p`` columns in log space, where the encoder works);
* ``missing-<column>``: the column is dropped to missing (its first declared missing value:
  categorical columns encode it in the unknown slot, numeric ones at their ``impute`` value);
* ``swap-<column>``: 10% of rows get another declared category of the column.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from fedready.data import Table
from fedready.errors import ConfigError
from fedready.schema import CategoricalColumn, DataSchema, NumericColumn

__all__ = [
    "GAUSSIAN_SCALES",
    "PERTURBATIONS",
    "apply_perturbation",
    "check_perturbation",
    "churn",
    "default_perturbations",
    "perturbation_report",
    "seed_stability",
]

GAUSSIAN_SCALES = (0.01, 0.05, 0.1, 0.2)  # noise std as a share of each column's declared range
SWAP_RATE = 0.1


def _gaussian(table: Table, schema: DataSchema, arg: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    try:
        scale = float(arg)
    except ValueError as e:
        raise ConfigError("perturbation", f"gaussian needs a number, e.g. gaussian-0.1 (got '{arg}')") from e
    out = dict(table.columns)
    for col in schema.features:
        if isinstance(col, NumericColumn):
            x = np.clip(col.parse(table.columns[col.name]), col.min, col.max)  # missing values at their fill
            # Noise in the scale the encoder sees: log1p columns (dollars) get multiplicative noise.
            fwd, inv = (np.log1p, np.expm1) if col.transform == "log1p" else (lambda v: v, lambda v: v)
            lo, hi = fwd(col.min), fwd(col.max)
            out[col.name] = np.clip(inv(fwd(x) + rng.normal(0.0, scale * (hi - lo), len(x))), col.min, col.max)
    return out


def _feature(schema: DataSchema, name: str, kind: type | None = None) -> NumericColumn | CategoricalColumn:
    names = [c.name for c in schema.features if kind is None or isinstance(c, kind)]
    if name not in names:
        raise ConfigError("perturbation", f"unknown column '{name}'; expected one of: {', '.join(names)}")
    return schema.column(name)


def _missing(table: Table, schema: DataSchema, arg: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    col = _feature(schema, arg)
    out = dict(table.columns)
    n = len(table)
    if isinstance(col, NumericColumn):
        out[arg] = np.full(n, col.fill)  # what a declared missing value encodes as
    else:
        out[arg] = np.full(n, col.missing_values[0] if col.missing_values else "")  # the unknown slot
    return out


def _swap(table: Table, schema: DataSchema, arg: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    col = _feature(schema, arg, CategoricalColumn)
    assert isinstance(col, CategoricalColumn)
    out = dict(table.columns)
    raw = table.columns[arg].astype(object).copy()
    hit = np.flatnonzero(rng.random(len(raw)) < SWAP_RATE)
    cats = np.asarray(col.categories, dtype=object)
    for i in hit:
        others = cats[cats != raw[i]]
        if len(others):
            raw[i] = others[rng.integers(len(others))]
    out[arg] = raw.astype(str)
    return out


# kind -> perturb(table, schema, argument, rng) -> new columns
PERTURBATIONS: dict[str, Callable[[Table, DataSchema, str, np.random.Generator], dict[str, np.ndarray]]] = {
    "gaussian": _gaussian,
    "missing": _missing,
    "swap": _swap,
}


def apply_perturbation(table: Table, schema: DataSchema, name: str, *, seed: int = 0) -> dict[str, np.ndarray]:
    """Return perturbed raw columns for the perturbation called ``name`` (``<kind>-<arg>``).

    Raises
    ------
    ConfigError
        If the kind is not registered or its argument does not fit the schema.
    """
    kind, _, arg = name.partition("-")
    fn = PERTURBATIONS.get(kind)
    if fn is None or not arg:
        raise ConfigError("perturbation", f"unknown perturbation '{name}'; expected <kind>-<arg> with kind one of: "
                                          f"{', '.join(PERTURBATIONS)}")  # fmt: skip
    return fn(table, schema, arg, np.random.default_rng([seed, sum(name.encode())]))


def check_perturbation(schema: DataSchema, name: str, *, field: str = "perturbation") -> None:
    """Raise ConfigError (naming ``field``) if ``name`` is not a valid perturbation for ``schema``."""
    empty = Table({c.name: np.asarray([], dtype=str) for c in schema.columns})
    try:
        apply_perturbation(empty, schema, name)
    except ConfigError as e:
        raise ConfigError(field, str(e).removeprefix("perturbation: ")) from e


def default_perturbations(schema: DataSchema) -> list[str]:
    """Every Gaussian scale, every feature set to missing, every categorical feature swapped."""
    names = [f"gaussian-{s:g}" for s in GAUSSIAN_SCALES]
    names += [f"missing-{c.name}" for c in schema.features]
    names += [f"swap-{c.name}" for c in schema.features if isinstance(c, CategoricalColumn)]
    return names


def perturbation_report(
    table: Table,
    schema: DataSchema,
    y_true: np.ndarray,
    predict: Callable[[dict[str, np.ndarray]], np.ndarray],
    groups: dict[str, np.ndarray],
    *,
    names: list[str] | None = None,
    seed: int = 0,
    decisions: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Accuracy drop and prediction flip rate per perturbation, overall and per group.

    Parameters
    ----------
    predict : callable
        Raw columns -> 0/1 decisions (encodes and runs the model).
    groups : dict
        Sensitive attribute -> group label per row (unperturbed).
    decisions : dict, optional
        Filled with each perturbation's decisions per row (for the intervals, which resample rows).
    """
    base = predict(table.columns)
    base_acc = float((base == y_true).mean())
    out: dict[str, Any] = {}
    for name in names or default_perturbations(schema):
        pred = predict(apply_perturbation(table, schema, name, seed=seed))
        if decisions is not None:
            decisions[name] = pred
        acc = float((pred == y_true).mean())
        entry: dict[str, Any] = {"accuracy": acc, "accuracy_drop": base_acc - acc,
                                 "flip_rate": float((pred != base).mean()), "groups": {}}  # fmt: skip
        for attr, g in groups.items():
            entry["groups"][attr] = {}
            for name_g in sorted(set(g.tolist())):
                m = g == name_g
                entry["groups"][attr][name_g] = {
                    "accuracy_drop": float((base[m] == y_true[m]).mean() - (pred[m] == y_true[m]).mean()),
                    "flip_rate": float((pred[m] != base[m]).mean()),
                }
        out[name] = entry
    return out


def seed_stability(predictions: list[np.ndarray], y_true: np.ndarray) -> dict[str, Any]:
    """Spread of accuracy over models retrained with different seeds, and per-example disagreement.

    ``disagreement_rate`` is the share of rows on which not all models agree;
    ``pairwise_disagreement`` the mean share of rows two models decide differently.
    """
    if len(predictions) < 2:
        raise ValueError(f"seed stability needs at least two models; got {len(predictions)}")
    p = np.stack(predictions)
    acc = (p == y_true[None, :]).mean(axis=1)
    pairs = [float((p[i] != p[j]).mean()) for i in range(len(p)) for j in range(i + 1, len(p))]
    return {"models": len(p), "accuracies": acc.tolist(), "accuracy_std": float(acc.std()),
            "accuracy_range": float(acc.max() - acc.min()),
            "disagreement_rate": float((p != p[0]).any(axis=0).mean()),
            "pairwise_disagreement": float(np.mean(pairs))}  # fmt: skip


def churn(current: np.ndarray, previous: np.ndarray) -> float:
    """Share of rows whose decision differs between two model versions."""
    if current.shape != previous.shape:
        raise ValueError(f"predictions differ in shape: {current.shape} vs {previous.shape}")
    return float((current != previous).mean())
