"""Edge monitoring: rolling summaries of what a device predicted, ``fedready monitor``, metrics.

Every prediction call (``edge predict``, each micro-batch of ``edge serve``) appends one line
to ``HOME/monitoring/summaries.jsonl``: the version that answered, the number of rows, the
call's latency and the histograms of :func:`~fedready.monitoring.count_rows` (never the rows
themselves; ``record_inputs`` additionally appends the raw rows to ``inputs.jsonl``).
:func:`monitor` sums the newest lines of the active version into a window, compares it with
the active artifact's reference profile and appends one alert line per breach.
NumPy only (plus ``prometheus-client`` in the serving process).
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedready.errors import ConfigError, IntegrityError
from fedready.monitoring._drift import MonitoringPolicy, compare
from fedready.monitoring._profile import PROFILE_FILE, Counts, count_rows
from fedready.schema import DataSchema

__all__ = ["ALERTS_FILE", "ALERT_CONTEXT", "SUMMARIES_FILE", "Recorder", "load_window", "monitor"]

MONITOR_DIR = "monitoring"
SUMMARIES_FILE = "summaries.jsonl"
INPUTS_FILE = "inputs.jsonl"
ALERTS_FILE = "alerts.jsonl"
ALERT_CONTEXT = b"fedready-alert/1\n"  # domain of the device's alert signatures (fedready.audit.sign_record)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def _columns(schema: DataSchema, rows: list[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    return {c.name: np.array([str(r.get(c.name, "")).strip() for r in rows]) for c in schema.features}


def summarize(schema: DataSchema, rows: list[Mapping[str, Any]], results: list[dict[str, Any]],
              labels: np.ndarray | None = None) -> Counts:  # fmt: skip
    """Histograms of one call's rows and the predictor's results for them."""
    return count_rows(schema, _columns(schema, rows), scores=np.array([r["probability"] for r in results]),
                      predictions=np.array([r["prediction"] for r in results]), labels=labels)  # fmt: skip


class Recorder:
    """Appends one summary line per prediction call and keeps the newest in memory.

    Parameters
    ----------
    home : Path
        The device folder.
    record_inputs : bool
        Also append the raw rows (JSON lines) to ``HOME/monitoring/inputs.jsonl``; off by default,
        because raw inputs are personal data the device need not keep.
    window_rows : int
        Rows kept in memory for :meth:`window` (the serving process's drift gauges).
    """

    def __init__(self, home: Path, *, record_inputs: bool = False, window_rows: int = 1000) -> None:
        self.folder = Path(home) / MONITOR_DIR
        self.record_inputs = record_inputs
        self.window_rows = window_rows
        self._recent: deque[tuple[str | None, Counts]] = deque()
        self._rows = 0.0

    def record(self, schema: DataSchema, rows: list[Mapping[str, Any]], results: list[dict[str, Any]],
               *, version: str | None, latency: float) -> Counts:  # fmt: skip
        """Summarise one call, append it, and return its counts."""
        counts = summarize(schema, rows, results)
        self.folder.mkdir(parents=True, exist_ok=True)
        line = {"time": time.time(), "version": version, "rows": len(rows), "latency_s": latency,
                "counts": counts.to_dict()}  # fmt: skip
        _append(self.folder / SUMMARIES_FILE, [line])
        if self.record_inputs:
            _append(self.folder / INPUTS_FILE, [{"time": line["time"], "version": version, "row": dict(r)}
                                                for r in rows])  # fmt: skip
        self._recent.append((version, counts))
        self._rows += counts.rows
        while len(self._recent) > 1 and self._rows - self._recent[0][1].rows >= self.window_rows:
            self._rows -= self._recent.popleft()[1].rows
        return counts

    def window(self, version: str | None) -> Counts | None:
        """Sum of the in-memory summaries of ``version`` (None if there are none)."""
        return _sum(c for v, c in self._recent if v == version)


def _append(path: Path, lines: list[dict[str, Any]]) -> None:
    data = "".join(json.dumps(x, sort_keys=True, default=str) + "\n" for x in lines)
    with path.open("a", encoding="utf-8") as f:  # one write per call: lines of concurrent writers do not interleave
        f.write(data)


def _sum(items: Any) -> Counts | None:
    total = None
    for c in items:
        total = c if total is None else total + c
    return total


def load_window(home: Path, *, version: str | None, rows: int | None = None) -> Counts | None:
    """Sum the newest summary lines of ``version`` until at least ``rows`` rows (None: all of them).

    Raises
    ------
    IntegrityError
        If a summary line is not JSON or not a summary.
    """
    path = Path(home) / MONITOR_DIR / SUMMARIES_FILE
    if not path.exists():
        return None
    picked: list[Counts] = []
    n = 0.0
    for i, line in enumerate(reversed(path.read_text(encoding="utf-8").splitlines())):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise IntegrityError(f"{path}: line {i + 1} from the end is not JSON ({e})") from e
        if rec.get("version") != version:
            continue
        picked.append(Counts.from_dict(rec["counts"]))
        n += picked[-1].rows
        if rows is not None and n >= rows:
            break
    return _sum(picked)


def monitor(
    home: Path,
    *,
    window: int | None = None,
    policy: MonitoringPolicy | None = None,
    labelled: tuple[list[Mapping[str, Any]], np.ndarray] | None = None,
    alerts: Path | None = None,
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
        JSON lines file breaches are appended to (default ``HOME/monitoring/alerts.jsonl``).

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
    from fedready.registry import EdgeAgent
    from fedready.registry._canonical import read_json

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
        from fedready.audit import sign_record

        key = agent.device_key()
        lines = [{"time": now, "device_id": state.get("device_id"), "channel": channel, "version": version,
                  "window_rows": counts.rows, **b} for b in report["breaches"]]  # fmt: skip
        target.parent.mkdir(parents=True, exist_ok=True)
        _append(target, [{**a, "sig": sign_record(key, a, context=ALERT_CONTEXT)} for a in lines])
    report["alerts_file"] = str(target)
    return report


def _with_labels(window: Counts, labelled: Counts) -> Counts:
    """The window's input and output histograms, with the labelled rows' calibration histograms."""
    return Counts(window.features, window.scores, window.predictions, labelled.labels, labelled.score_positives)


class Metrics:
    """Prometheus metrics of one serving process (its own registry, not the global one).

    ``fedready_predictions_total`` (counter, by version), ``fedready_prediction_latency_seconds``
    (histogram of each model call), ``fedready_drift_psi`` and ``fedready_drift_distance`` (gauges by
    feature, and ``feature="__score__"`` for the prediction distribution), ``fedready_window_rows``.
    Drift gauges are recomputed from the in-memory window at each scrape.
    """

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.predictions = Counter("fedready_predictions", "Rows predicted.", ["version"], registry=self.registry)
        self.latency = Histogram("fedready_prediction_latency_seconds", "Wall time of one model call.",
                                 buckets=LATENCY_BUCKETS, registry=self.registry)  # fmt: skip
        self.psi = Gauge("fedready_drift_psi", "PSI of the window against the reference profile.", ["feature"],
                         registry=self.registry)  # fmt: skip
        self.distance = Gauge("fedready_drift_distance", "Jensen-Shannon distance to the reference profile.",
                              ["feature"], registry=self.registry)  # fmt: skip
        self.window_rows = Gauge("fedready_window_rows", "Rows in the drift window.", registry=self.registry)

    def observe(self, *, version: str | None, rows: int, latency: float) -> None:
        """Count one model call."""
        self.predictions.labels(version=str(version)).inc(rows)
        self.latency.observe(latency)

    def render(self, profile: dict[str, Any] | None, window: Counts | None, policy: MonitoringPolicy) -> bytes:
        """The text exposition format, drift gauges refreshed first."""
        from prometheus_client import generate_latest

        if profile is not None and window is not None:
            report = compare(profile, window, policy)
            for name, scores in report["features"].items():
                self.psi.labels(feature=name).set(scores["psi"])
                self.distance.labels(feature=name).set(scores["distance"])
            self.psi.labels(feature="__score__").set(report["prediction"]["psi"])
            self.distance.labels(feature="__score__").set(report["prediction"]["distance"])
            self.window_rows.set(window.rows)
        return generate_latest(self.registry)
