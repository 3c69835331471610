"""Histograms over the schema's bins: the reference profile and the edge's rolling windows.

One definition of the counts serves both sides, so a window is always comparable with the
reference: numeric columns are cut at the schema's declared ``bins`` (``len(bins) + 1``
buckets, values below the first edge in bucket 0), categorical columns count each declared
category plus one trailing "unknown or missing" bucket, scores are cut at tenths.
NumPy only: the edge install computes the same counts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedready.errors import IntegrityError
from fedready.schema import DataSchema, NumericColumn

__all__ = [
    "OUTPUTS_FILE",
    "PROFILE_FILE",
    "PROFILE_FORMAT",
    "SCORE_EDGES",
    "Counts",
    "NoiseRecord",
    "count_rows",
    "output_counts",
    "outputs_document",
    "privatize",
    "profile_document",
    "shipped_outputs",
    "with_outputs",
]

PROFILE_FILE = "reference_profile.json"
PROFILE_FORMAT = "fedready-reference-profile/1"
OUTPUTS_FILE = "output_profile.json"  # the shipped model's outputs on public data (written by `fedready compress`)
OUTPUTS_FORMAT = "fedready-output-profile/1"
SCORE_EDGES = [round(0.1 * i, 1) for i in range(1, 10)]  # score histogram: ten buckets of width 0.1
UNKNOWN = "<unknown>"


def bucket_labels(schema: DataSchema, name: str) -> list[str]:
    """Names of the buckets of feature ``name`` (for reports and Prometheus labels)."""
    col = schema.column(name)
    if isinstance(col, NumericColumn):
        edges = [f"{e:g}" for e in col.bins]
        return [f"<{edges[0]}" if edges else "all"] + [
            f"[{a},{b})" for a, b in zip(edges, edges[1:], strict=False)
        ] + ([f">={edges[-1]}"] if edges else [])  # fmt: skip
    return [*col.categories, UNKNOWN]


def _bucket(schema: DataSchema, name: str, raw: np.ndarray) -> np.ndarray:
    col = schema.column(name)
    if isinstance(col, NumericColumn):
        x = col.parse(np.asarray(raw))  # declared missing values count at the column's fill value
        return np.searchsorted(np.asarray(col.bins, dtype=np.float64), x, side="right")
    index = {c: i for i, c in enumerate(col.categories)}
    return np.fromiter((index.get(str(v).strip(), len(index)) for v in np.asarray(raw).tolist()), dtype=np.int64)


def _hist(codes: np.ndarray, size: int) -> np.ndarray:
    return np.bincount(np.asarray(codes, dtype=np.int64), minlength=size)[:size].astype(np.float64)


@dataclass(frozen=True)
class Counts:
    """Additive counts over one set of rows (float, because noisy counts are not integers).

    Attributes
    ----------
    features : dict
        Feature name -> counts per bucket (:func:`bucket_labels` order).
    scores : ndarray
        Rows per score bucket (``SCORE_EDGES``).
    predictions : ndarray
        Rows decided per class (binary: ``[negative, positive]``).
    labels : ndarray or None
        Rows labelled per class (None where labels are unknown).
    score_positives : ndarray or None
        Label-positive rows per score bucket (multi-class: correctly decided rows): the reliability
        diagram, for calibration.
    """

    features: dict[str, np.ndarray]
    scores: np.ndarray
    predictions: np.ndarray
    labels: np.ndarray | None = None
    score_positives: np.ndarray | None = None

    @property
    def rows(self) -> float:
        """Number of rows counted (the score histogram's total)."""
        return float(self.scores.sum())

    @property
    def histograms(self) -> int:
        """How many histograms one row is counted in (its L1 sensitivity, see :func:`privatize`)."""
        return len(self.features) + 2 + (2 if self.labels is not None else 0)

    def __add__(self, other: Counts) -> Counts:
        if set(self.features) != set(other.features):
            raise ValueError("cannot add counts over different features")

        def both(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
            return None if a is None or b is None else a + b

        return Counts({k: v + other.features[k] for k, v in self.features.items()}, self.scores + other.scores,
                      self.predictions + other.predictions, both(self.labels, other.labels),
                      both(self.score_positives, other.score_positives))  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible lists (integers stay integers)."""

        def out(a: np.ndarray | None) -> list[float] | None:
            if a is None:
                return None
            return [int(v) if float(v).is_integer() else round(float(v), 4) for v in a]

        return {"features": {k: out(v) for k, v in self.features.items()}, "scores": out(self.scores),
                "predictions": out(self.predictions), "labels": out(self.labels),
                "score_positives": out(self.score_positives)}  # fmt: skip

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Counts:
        """Parse :meth:`to_dict` output.

        Raises
        ------
        IntegrityError
            If a histogram is missing or not a list of finite numbers.
        """

        def arr(v: Any) -> np.ndarray | None:
            if v is None:
                return None
            a = np.asarray(v, dtype=np.float64)
            if a.ndim != 1 or not np.isfinite(a).all():
                raise ValueError("a histogram must be a flat list of finite numbers")
            return a

        try:
            feats = {str(k): arr(v) for k, v in data["features"].items()}
            scores, preds = arr(data["scores"]), arr(data["predictions"])
            if scores is None or preds is None or any(v is None for v in feats.values()):
                raise ValueError("features, scores and predictions are required")
            return cls(feats, scores, preds, arr(data.get("labels")), arr(data.get("score_positives")))  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise IntegrityError(f"malformed histogram counts ({e})") from e


def count_rows(
    schema: DataSchema,
    columns: Mapping[str, np.ndarray],
    *,
    scores: np.ndarray,
    predictions: np.ndarray,
    labels: np.ndarray | None = None,
) -> Counts:
    """Histograms of raw rows (column name -> raw values) and the model's outputs on them.

    Parameters
    ----------
    scores : ndarray
        P(positive) per row; for a multi-class target, the probability of the decided class.
    predictions : ndarray
        The decision (class index) per row.
    labels : ndarray, optional
        The true label (class index) per row; adds the label and calibration histograms (binary:
        positives per score bucket; multi-class: correctly decided rows per score bucket).
    """
    feats = {}
    for col in schema.features:
        if col.name not in columns:
            raise IntegrityError(f"column '{col.name}' is missing from the input")
        feats[col.name] = _hist(_bucket(schema, col.name, columns[col.name]), len(bucket_labels(schema, col.name)))
    decided = np.eye(schema.target.num_classes)[np.asarray(predictions, dtype=np.int64)]
    out = output_counts(scores, decided, labels)
    return Counts(feats, out.scores, out.predictions, out.labels, out.score_positives)


def output_counts(scores: np.ndarray, decisions: np.ndarray, labels: np.ndarray | None = None) -> Counts:
    """The output histograms alone (no feature histograms): scores, decisions, labels, calibration.

    ``decisions`` is ``(rows, classes)``: each row's probability of each decision, one-hot for a
    decided class; under a randomised binary rule ``[1 - q, q]``, so the decision histogram holds
    the expected counts. ``scores`` are as in :func:`count_rows` (binary: P(positive); multi-class:
    the decided class's probability, whose calibration histogram counts the correctly decided rows).
    """
    d = np.asarray(decisions, dtype=np.float64)
    k = d.shape[1]
    s_codes = np.searchsorted(np.asarray(SCORE_EDGES), np.asarray(scores, dtype=np.float64), side="right")
    n_s = len(SCORE_EDGES) + 1
    pos = None
    if labels is not None:
        y = np.asarray(labels, dtype=np.int64)
        hit = y == 1 if k == 2 else y == d.argmax(axis=1)
        pos = _hist(s_codes[hit], n_s)
        labels = _hist(y, k)
    return Counts({}, _hist(s_codes, n_s), d.sum(axis=0), labels, pos)


def outputs_document(counts: Counts, *, model_sha256: str, source: str, post_processing: str | None) -> dict[str, Any]:
    """``output_profile.json``: the output histograms of one model on public data (no client data)."""
    return {"format": OUTPUTS_FORMAT, "model_sha256": model_sha256, "source": source, "rows": int(counts.rows),
            "post_processing": post_processing, "counts": counts.to_dict()}  # fmt: skip


def shipped_outputs(
    proba: np.ndarray, labels: np.ndarray, *, rule: Mapping[str, Any] | None, groups: Mapping[str, np.ndarray],
    model_sha256: str, source: str,
) -> dict[str, Any]:  # fmt: skip
    """``output_profile.json`` of a model as it ships: its scores, and decisions after its ``rule``.

    ``proba`` is the model's class probabilities ``(rows, classes)``, counted as a device counts
    them (:func:`count_rows`): binary, P(positive) and the decision after ``rule``, the
    artifact's ``thresholds.json`` (None: ``score >= 0.5``); multi-class, the decided class's
    probability and one decision per class (the fairness post-processing is binary-only).
    ``groups`` are the rows' raw sensitive columns. Rows whose group the rule does not know count
    with the rule's fallback, else with ``score >= 0.5`` (a histogram cannot refuse a row).

    Raises
    ------
    IntegrityError
        If a multi-class model comes with a ``rule``.
    """
    from fedready.thresholds import DecisionRule

    p = np.asarray(proba, dtype=np.float64)
    if p.shape[1] == 2:
        decide = DecisionRule() if rule is None else DecisionRule.from_dict(rule)
        column = groups.get(decide.attribute) if decide.attribute is not None else None
        q = decide.expected_positive(p[:, 1], np.full(len(p), "") if column is None else np.asarray(column))
        scores, decisions = p[:, 1], np.stack([1.0 - q, q], axis=1)
    elif rule is not None:
        raise IntegrityError(f"a thresholds.json rule decides between two classes; this model has {p.shape[1]}")
    else:
        scores, decisions = p.max(axis=1), np.eye(p.shape[1])[p.argmax(axis=1)]
    return outputs_document(output_counts(scores, decisions, labels), model_sha256=model_sha256, source=source,
                            post_processing=None if rule is None else "thresholds.json")  # fmt: skip


def with_outputs(profile: Mapping[str, Any], outputs: Mapping[str, Any]) -> dict[str, Any]:
    """The reference profile with its output histograms replaced by those of ``outputs``.

    The feature histograms (the clients' rows) stay; scores, decisions, labels and the
    calibration histogram become the shipped model's on public data, so a device serving
    that model compares like with like. ``profile["outputs"]`` records where they came from.

    Raises
    ------
    IntegrityError
        If either document is malformed.
    """
    if outputs.get("format") != OUTPUTS_FORMAT:
        raise IntegrityError(f"not an output profile (format {outputs.get('format')!r}, expected {OUTPUTS_FORMAT!r})")
    mine = Counts.from_dict({"features": {}, **outputs["counts"]})
    theirs = dict(profile["counts"])
    merged = {**theirs, **{k: v for k, v in mine.to_dict().items() if k != "features"}}
    meta = {k: outputs.get(k) for k in ("source", "rows", "model_sha256", "post_processing")}
    return {**profile, "counts": merged, "outputs": {**meta, "decisions": "shipped"}}


@dataclass(frozen=True)
class NoiseRecord:
    """The noise added to a profile's counts and the privacy it buys.

    ``sensitivity`` is the L1 (Laplace) or L2 (Gaussian) norm of one row's contribution;
    ``scale`` the Laplace scale b or the Gaussian standard deviation sigma;
    ``noise_multiplier`` is ``scale / sensitivity`` (as in the ledger).
    """

    mechanism: str  # "none" | "gaussian" | "laplace" | "discrete-gaussian" (a secure sum of clients' noise)
    epsilon: float | None = None
    delta: float | None = None
    sensitivity: float | None = None
    scale: float | None = None
    noise_multiplier: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"mechanism": self.mechanism, "epsilon": self.epsilon, "delta": self.delta,
                "sensitivity": self.sensitivity, "scale": self.scale, "noise_multiplier": self.noise_multiplier,
                **self.extra}  # fmt: skip


MECHANISMS = ("none", "gaussian", "laplace")


def privatize(
    counts: Counts, *, mechanism: str, epsilon: float, delta: float, seed: int | None = None
) -> tuple[Counts, NoiseRecord]:
    """Add Gaussian or Laplace noise to every count: one ``(epsilon, delta)``-DP release.

    Parameters
    ----------
    mechanism : {"none", "gaussian", "laplace"}
        ``laplace`` is pure epsilon-DP (delta 0); ``gaussian`` is calibrated with Opacus's
        RDP accountant for one full-batch step (sample rate 1), so the ledger can recompute it.
    epsilon, delta : float
        The budget of this single release (delta is ignored by ``laplace``).
    seed : int, optional
        Seed of the noise (None: fresh OS entropy, what a deployment wants).

    Notes
    -----
    Neighbouring data sets differ by one row (add or remove). A row adds 1 to exactly one
    bucket of each of the ``H = counts.histograms`` histograms, so the L1 sensitivity is ``H``
    and the L2 sensitivity ``sqrt(H)`` (Dwork and Roth 2014, Thm. 3.6 and A.1). The noise is
    added once, by the server, to the summed counts (central DP, as in DP-FedAvg, arXiv:1710.06963):
    the server sees each client's exact counts, as it sees the group-count evaluation.
    Noisy counts are published as they are; consumers clip negatives to 0 (post-processing).
    """
    if mechanism not in MECHANISMS:
        raise ValueError(f"unknown noise mechanism '{mechanism}'; expected one of: {', '.join(MECHANISMS)}")
    if mechanism == "none":
        return counts, NoiseRecord("none")
    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise ValueError(f"profile epsilon must be a finite number > 0, got {epsilon}")
    h = counts.histograms
    rng = np.random.default_rng(seed)
    if mechanism == "laplace":
        sens = float(h)
        scale = sens / epsilon

        def noise(a: np.ndarray) -> np.ndarray:
            return a + rng.laplace(0.0, scale, size=a.shape)

        record = NoiseRecord("laplace", epsilon, 0.0, sens, scale, 1.0 / epsilon)
    else:
        from fedready.privacy.accounting import calibrate_noise, compose_epsilon

        z = calibrate_noise(target_epsilon=epsilon, target_delta=delta, sample_rate=1.0, steps=1)
        sens = math.sqrt(h)
        scale = z * sens

        def noise(a: np.ndarray) -> np.ndarray:
            return a + rng.normal(0.0, scale, size=a.shape)

        spent = compose_epsilon([(z, 1.0, 1)], delta=delta)
        record = NoiseRecord("gaussian", spent, delta, sens, scale, z)

    def opt(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else noise(a)

    noisy = Counts({k: noise(v) for k, v in counts.features.items()}, noise(counts.scores), noise(counts.predictions),
                   opt(counts.labels), opt(counts.score_positives))  # fmt: skip
    return noisy, record


def profile_document(
    schema: DataSchema, counts: Counts, noise: NoiseRecord, *, model_digest: str, clients: int
) -> dict[str, Any]:
    """The ``reference_profile.json`` document shipped inside an artifact."""
    return {
        "format": PROFILE_FORMAT,
        "schema_digest": schema.digest(),
        "model_digest": model_digest,
        "clients": clients,
        "buckets": {c.name: bucket_labels(schema, c.name) for c in schema.features},
        "score_edges": SCORE_EDGES,
        "counts": counts.to_dict(),
        "noise": noise.to_dict(),
    }
