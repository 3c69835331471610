"""A device's monitoring of its active model: drift against the shipped profile, shadow comparison.

Both read artifacts through the registry's edge agent and predictor; the summaries, windows,
drift statistics and storage limits they use live in :mod:`fedready.monitoring`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedready.audit import sign_record
from fedready.errors import ConfigError
from fedready.monitoring import MonitoringPolicy, compare
from fedready.monitoring.edge import (
    ALERT_CONTEXT,
    ALERTS_FILE,
    MONITOR_DIR,
    StorageLimits,
    append_bounded,
    load_window,
    summarize,
)
from fedready.monitoring.profile import PROFILE_FILE, Counts
from fedready.registry._canonical import read_json
from fedready.registry._edge import EdgeAgent
from fedready.registry._predict import Predictor

__all__ = ["monitor", "shadow_compare"]


def monitor(
    home: Path,
    *,
    window: int | None = None,
    policy: MonitoringPolicy | None = None,
    labelled: tuple[list[Mapping[str, Any]], np.ndarray] | None = None,
    alerts: Path | None = None,
    limits: StorageLimits | None = None,
) -> dict[str, Any]:
    """Compare the device's newest ``window`` rows with the active model's reference profile.

    Parameters
    ----------
    home : Path
        The device folder.
    window : int, optional
        Rows to compare (the newest summaries of the active version); None: every recorded row.
    policy : MonitoringPolicy, optional
        Thresholds (defaults: :class:`MonitoringPolicy`).
    labelled : (rows, labels), optional
        Rows whose outcome is now known; scored with the active model for calibration drift.
    alerts : Path, optional
        JSON lines file breaches are appended to (default ``HOME/monitoring/alerts.jsonl``),
        signed with the device's key (``HOME/device.key``) and rotated like every monitoring file.
    limits : StorageLimits, optional
        Rotation of the alerts file.

    Returns
    -------
    dict
        The drift report of :func:`~fedready.monitoring.compare` plus ``device_id``,
        ``channel``, ``version``, ``alerts_file`` and ``time``.

    Raises
    ------
    ConfigError
        If nothing was recorded for the active version or its artifact has no reference profile.
    """
    agent = EdgeAgent(home)
    state = agent.state()
    folder = agent.active_dir()
    version = state.get("active")
    if not (folder / PROFILE_FILE).exists():
        raise ConfigError("home", f"the active model {version} ships no {PROFILE_FILE}; package a run that has one")
    profile = read_json(folder / PROFILE_FILE, what="reference profile")
    counts = load_window(agent.home, version=version, rows=window)
    if labelled is not None:
        predictor = agent.predictor()
        rows, y = labelled
        lab = summarize(predictor.schema, rows, predictor.predict(rows), labels=y)
        counts = lab if counts is None else _with_labels(counts, lab)
    if counts is None:
        raise ConfigError("home", f"nothing recorded for {version} yet; predict with `fedready edge predict` or "
                                  "`edge serve` first")  # fmt: skip
    report = compare(profile, counts, policy)
    now = time.time()
    channel = state.get("source_channel") or state.get("channel")
    report.update(time=now, device_id=state.get("device_id"), channel=channel, version=version)
    target = Path(alerts) if alerts is not None else agent.home / MONITOR_DIR / ALERTS_FILE
    if report["breaches"]:
        key = agent.device_key()
        lines = [{"time": now, "device_id": state.get("device_id"), "channel": channel, "version": version,
                  "window_rows": counts.rows, **b} for b in report["breaches"]]  # fmt: skip
        target.parent.mkdir(parents=True, exist_ok=True)
        append_bounded(target, [{**a, "sig": sign_record(key, a, context=ALERT_CONTEXT)} for a in lines],
                       limits or StorageLimits())  # fmt: skip
    report["alerts_file"] = str(target)
    return report


def _with_labels(window: Counts, labelled: Counts) -> Counts:
    """The window's input and output histograms, with the labelled rows' calibration histograms."""
    return Counts(window.features, window.scores, window.predictions, labelled.labels, labelled.score_positives)


def shadow_compare(active: Path, candidate: Path, rows: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Agreement of two artifacts' decisions on ``rows``, overall and per sensitive group, and score deltas.

    Parameters
    ----------
    active, candidate : Path
        Artifact folders (verify them first: :func:`fedready.registry.verify_artifact`).
    rows : list of dict
        Raw rows (recorded inputs or a sample of live traffic).

    Returns
    -------
    dict
        ``agreement`` (share of equal decisions), ``groups``: attribute -> group -> ``{rows, agreement}``,
        ``min_group_agreement``, ``score_delta`` (candidate minus active: mean, mean_abs, p95_abs, max_abs),
        ``positive_rate`` of each model, both versions and the row count.
    """
    if not rows:
        raise ConfigError("data", "no rows to compare on; pass a CSV or JSON lines file with a header and rows")
    a, c = Predictor(Path(active)), Predictor(Path(candidate))
    ra, rc = a.predict(rows), c.predict(rows)
    pa = np.array([r["prediction"] for r in ra])
    pc = np.array([r["prediction"] for r in rc])
    delta = np.array([r["probability"] for r in rc]) - np.array([r["probability"] for r in ra])
    same = pa == pc
    groups: dict[str, dict[str, dict[str, float]]] = {}
    for attr in a.schema.sensitive:
        values = np.array([str(r.get(attr, "")).strip() for r in rows])
        groups[attr] = {str(g): {"rows": int((values == g).sum()), "agreement": float(same[values == g].mean())}
                        for g in sorted(set(values.tolist()))}  # fmt: skip
    group_rates = [g["agreement"] for by in groups.values() for g in by.values()]
    return {
        "active_version": a.version,
        "candidate_version": c.version,
        "rows": len(rows),
        "agreement": float(same.mean()),
        "min_group_agreement": min(group_rates, default=float(same.mean())),
        "groups": groups,
        "positive_rate": {"active": float(pa.mean()), "candidate": float(pc.mean())},
        "score_delta": {"mean": float(delta.mean()), "mean_abs": float(np.abs(delta).mean()),
                        "p95_abs": float(np.quantile(np.abs(delta), 0.95)), "max_abs": float(np.abs(delta).max())},
    }  # fmt: skip
