"""Drift scores of a window of counts against the reference profile, and their thresholds.

Population stability index (PSI, Yurdakul 2018, "Statistical properties of the population
stability index") and the Jensen-Shannon distance (base 2, in [0, 1]) per feature; the
same two on the score histogram; the positive-decision rate; and, when the window has
labels, the expected calibration error against the reference's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fedready.errors import ConfigError, IntegrityError
from fedready.files import read_toml
from fedready.monitoring.profile import PROFILE_FORMAT, SCORE_EDGES, Counts

__all__ = ["MonitoringPolicy", "compare", "js_distance", "load_monitoring_policy", "psi", "psi_interval"]

_FLOOR = 1e-4  # share given to an empty bucket, so PSI stays finite (a common convention)
_NOISE_SIGMAS = 3.0  # a noisy reference bucket below this many noise stds carries no signal: pooled


def pool_noisy_buckets(reference: np.ndarray, window: np.ndarray, noise_std: float | None) -> tuple[np.ndarray, ...]:
    """Pool the buckets whose noisy reference count is within ``3 * noise_std`` of zero into one.

    A DP reference profile's rare buckets (a country with a few dozen rows) are mostly noise: compared
    one by one they make PSI cry wolf on unshifted data. They are pooled into one bucket, which is kept
    if it clears the same bar (its noise std is ``noise_std * sqrt(k)`` for ``k`` pooled buckets) and
    otherwise left out of both histograms: drift confined to categories too rare for the noise to
    resolve is not detected, the price of a private reference. Post-processing: no privacy cost.
    """
    ref, win = np.asarray(reference, dtype=np.float64), np.asarray(window, dtype=np.float64)
    if not noise_std:
        return ref, win
    small = ref < _NOISE_SIGMAS * float(noise_std)
    if small.sum() < 2:
        return ref, win
    pooled_ref, pooled_win = ref[small].sum(), win[small].sum()
    if pooled_ref < _NOISE_SIGMAS * float(noise_std) * np.sqrt(small.sum()):
        return ref[~small], win[~small]
    return np.append(ref[~small], pooled_ref), np.append(win[~small], pooled_win)


def psi_interval(reference: np.ndarray, window: np.ndarray, noise_std: float | None, *, draws: int = 200,
                 level: float = 0.95) -> tuple[float, float] | None:  # fmt: skip
    """The PSI's 95% interval over the noise a DP reference profile carries (None for an exact reference).

    The reference's counts are noisy sums (Gaussian, std ``noise_std`` per bucket); a parametric
    bootstrap adds fresh noise of that std to them and recomputes the PSI against the window, so
    the alert reader sees how much of a score the reference's noise alone can move. Seeded:
    post-processing, not DP noise.
    """
    if not noise_std:
        return None
    ref, win = np.asarray(reference, dtype=np.float64), np.asarray(window, dtype=np.float64)
    rng = np.random.default_rng(0xD21F7)
    values = [psi(ref + rng.normal(0.0, float(noise_std), ref.shape), win) for _ in range(draws)]
    tail = 100 * (1 - level) / 2
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def _shares(counts: np.ndarray) -> np.ndarray:
    c = np.clip(np.asarray(counts, dtype=np.float64), 0.0, None)  # noisy counts may be negative
    total = c.sum()
    p = c / total if total > 0 else np.full(len(c), 1.0 / len(c))
    p = np.maximum(p, _FLOOR)
    return p / p.sum()


def psi(reference: np.ndarray, window: np.ndarray) -> float:
    """Population stability index ``sum((q - p) * ln(q / p))`` of two histograms (counts)."""
    p, q = _shares(reference), _shares(window)
    return float(np.sum((q - p) * np.log(q / p)))


def js_distance(reference: np.ndarray, window: np.ndarray) -> float:
    """Jensen-Shannon distance (square root of the divergence, base 2): 0 same, 1 disjoint."""
    p, q = _shares(reference), _shares(window)
    m = (p + q) / 2
    div = 0.5 * np.sum(p * np.log2(p / m)) + 0.5 * np.sum(q * np.log2(q / m))
    return float(np.sqrt(max(div, 0.0)))


def _ece(scores: np.ndarray, positives: np.ndarray) -> float:
    """Expected calibration error from a reliability histogram (bucket midpoints as the score)."""
    n = np.clip(scores, 0, None)
    pos = np.clip(positives, 0, None)
    edges = np.array([0.0, *SCORE_EDGES, 1.0])
    mid = (edges[:-1] + edges[1:]) / 2
    total = n.sum()
    if total <= 0:
        return 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(n > 0, np.minimum(pos / n, 1.0), mid)
    return float(np.sum(n / total * np.abs(rate - mid)))


class MonitoringPolicy(BaseModel):
    """Thresholds of ``fedready monitor``: the ``[monitoring]`` table of a gate policy TOML.

    A score above its threshold is a breach (an alert line). PSI conventions: below 0.1 no
    shift, 0.1 to 0.2 moderate, above 0.2 significant.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    psi_alert: float = Field(0.2, gt=0)  # per feature
    distance_alert: float = Field(0.2, gt=0, le=1)  # Jensen-Shannon distance per feature (~ PSI 0.3)
    prediction_psi_alert: float = Field(0.2, gt=0)  # on the score histogram
    positive_rate_alert: float = Field(0.1, gt=0, le=1)  # absolute change of the positive-decision rate
    calibration_alert: float = Field(0.05, gt=0, le=1)  # rise of the expected calibration error
    min_rows: int = Field(200, ge=1)  # smaller windows are reported, never alerted on
    features: list[str] = []  # only these features (empty: every feature)


def load_monitoring_policy(path: str | Path | None) -> MonitoringPolicy:
    """Read the ``[monitoring]`` table of a gate policy (defaults if ``path`` is None or has none).

    Raises
    ------
    ConfigError
        If the file is missing, not TOML, or the table has an unknown key or a bad value.
    """
    if path is None:
        return MonitoringPolicy()
    p = Path(path)
    raw = read_toml(p, field="gate", missing=f"policy file {p} does not exist")
    try:
        return MonitoringPolicy.model_validate(raw.get("monitoring", {}))
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        raise ConfigError(f"monitoring.{loc}", f"{p}: {err['msg']} (got {err.get('input')!r})") from e


def reference_counts(profile: dict[str, Any]) -> Counts:
    """The counts of a ``reference_profile.json`` document.

    Raises
    ------
    IntegrityError
        If the document is not a reference profile.
    """
    if profile.get("format") != PROFILE_FORMAT:
        raise IntegrityError(f"not a reference profile (format {profile.get('format')!r}, expected {PROFILE_FORMAT!r})")
    return Counts.from_dict(profile["counts"])


def compare(profile: dict[str, Any], window: Counts, policy: MonitoringPolicy | None = None) -> dict[str, Any]:
    """Drift of ``window`` against the reference ``profile``, with the breaches of ``policy``.

    Returns
    -------
    dict
        ``features``: name -> ``{psi, distance}`` (and ``psi_interval``, the PSI's 95% interval over
        the reference's DP noise, when the reference is noisy; a PSI above its threshold whose
        interval reaches below it is ``undecided``, reported and not alerted); ``prediction``: score
        PSI and distance, positive rates; ``calibration`` (window with labels only); ``breaches``: one
        dict per score above its threshold (``kind``, ``feature``, ``metric``, ``value``,
        ``threshold``); ``undecided``: the same, with the ``interval``; ``rows``; ``enough_rows``.
    """
    policy = policy or MonitoringPolicy()
    ref = reference_counts(profile)
    unknown = [f for f in policy.features if f not in ref.features]
    if unknown:
        raise ConfigError("monitoring.features", f"unknown feature(s) {unknown}; profile has {sorted(ref.features)}")
    breaches: list[dict[str, Any]] = []
    undecided: list[dict[str, Any]] = []

    def check(kind: str, feature: str | None, metric: str, value: float, threshold: float,
              interval: list[float] | None = None) -> None:  # fmt: skip
        if value <= threshold:
            return
        entry = {"kind": kind, "feature": feature, "metric": metric, "value": round(value, 6), "threshold": threshold}
        if interval is not None and interval[0] <= threshold:  # the reference's noise alone could reach it
            undecided.append({**entry, "interval": [round(interval[0], 6), round(interval[1], 6)]})
        else:
            breaches.append(entry)

    feats: dict[str, dict[str, float]] = {}
    noise_std = (profile.get("noise") or {}).get("scale")  # std of the noise on each summed bucket
    for name, counts in window.features.items():
        if name not in ref.features or len(ref.features[name]) != len(counts):
            raise IntegrityError(f"feature '{name}': the window's buckets differ from the reference profile's")
        r, w = pool_noisy_buckets(ref.features[name], counts, noise_std)
        feats[name] = {"psi": psi(r, w), "distance": js_distance(r, w)}
        interval = psi_interval(r, w, noise_std)
        if interval is not None:  # the reference is noisy: the score's spread from that noise alone
            feats[name]["psi_interval"] = list(interval)
        if not policy.features or name in policy.features:
            check("feature-drift", name, "psi", feats[name]["psi"], policy.psi_alert, feats[name].get("psi_interval"))
            check("feature-drift", name, "distance", feats[name]["distance"], policy.distance_alert)
    rate_ref = float(_shares(ref.predictions)[1])
    rate_win = float(_shares(window.predictions)[1])
    prediction = {"psi": psi(ref.scores, window.scores), "distance": js_distance(ref.scores, window.scores),
                  "positive_rate_reference": rate_ref, "positive_rate_window": rate_win,
                  "positive_rate_change": rate_win - rate_ref}  # fmt: skip
    scores_noise = noise_std if (profile.get("outputs") or {}).get("source", "").startswith("clients") else None
    interval = psi_interval(ref.scores, window.scores, scores_noise)  # public-data outputs carry no noise
    if interval is not None:
        prediction["psi_interval"] = list(interval)
    check("prediction-drift", None, "psi", prediction["psi"], policy.prediction_psi_alert,
          prediction.get("psi_interval"))
    if profile.get("outputs", {}).get("decisions") != "before-post-processing":
        check("prediction-drift", None, "positive_rate_change", abs(rate_win - rate_ref), policy.positive_rate_alert)
    else:  # the reference decisions are not the shipped rule's: a difference says nothing (see profile "outputs")
        prediction["positive_rate_checked"] = False
    out: dict[str, Any] = {"rows": window.rows, "features": feats, "prediction": prediction}
    if window.score_positives is not None and ref.score_positives is not None:
        ece_ref, ece_win = _ece(ref.scores, ref.score_positives), _ece(window.scores, window.score_positives)
        labelled = float(window.labels.sum()) if window.labels is not None else 0.0
        out["calibration"] = {"ece_reference": ece_ref, "ece_window": ece_win, "change": ece_win - ece_ref,
                              "labelled_rows": labelled}  # fmt: skip
        check("calibration-drift", None, "ece_change", ece_win - ece_ref, policy.calibration_alert)
    out["enough_rows"] = window.rows >= policy.min_rows
    out["breaches"] = breaches if out["enough_rows"] else []
    # above a threshold, but within what the DP reference's noise alone produces: reported, never alerted
    out["undecided"] = undecided if out["enough_rows"] else []
    return out
