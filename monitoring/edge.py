"""Edge monitoring: rolling summaries of what a device predicted, ``fedready monitor``, metrics.

Every prediction call (``edge predict``, each micro-batch of ``edge serve``) appends one line
to ``HOME/monitoring/summaries.jsonl``: the version that answered, the number of rows, the
call's latency and the histograms of :func:`~fedready.monitoring.count_rows` (never the rows
themselves; ``record_inputs`` additionally appends the raw rows to ``inputs.jsonl``).
:func:`fedready.registry.monitor` sums the newest lines of the active version into a window, compares it with
the active artifact's reference profile and appends one alert line per breach.
NumPy only (plus ``prometheus-client`` in the serving process).

Storage is bounded (:class:`StorageLimits`): each JSON lines file rotates when the next write
would take it past ``max_file_bytes`` (``summaries.jsonl`` -> ``summaries.jsonl.1`` -> ... ->
``.{keep_files}``, the oldest dropped), so a file family never holds more than ``(keep_files +
1) * max_file_bytes``; a recorded row keeps the schema's columns only, each text value cut to
``max_value_chars``. :func:`load_window` streams the files newest line first and stops once it
has the window, so ``monitor`` reads what it needs, never a whole file into memory.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedready.errors import ConfigError, IntegrityError
from fedready.monitoring._drift import MonitoringPolicy, compare
from fedready.monitoring.profile import Counts, count_rows
from fedready.schema import DataSchema

__all__ = ["ALERTS_FILE", "ALERT_CONTEXT", "SUMMARIES_FILE", "Recorder", "StorageLimits", "append_bounded",
           "load_window", "read_lines_newest_first", "recorded_row", "summarize"]  # fmt: skip

MONITOR_DIR = "monitoring"
SUMMARIES_FILE = "summaries.jsonl"
INPUTS_FILE = "inputs.jsonl"
ALERTS_FILE = "alerts.jsonl"
ALERT_CONTEXT = b"fedready-alert/1\n"  # domain of the device's alert signatures (fedready.audit.sign_record)
_READ_BLOCK = 1 << 16  # bytes read at a time when streaming a file backwards
_MAX_LINE = 16 << 20  # a "line" longer than this is not one fedready wrote: refused, not held in memory


@dataclass(frozen=True)
class StorageLimits:
    """How much a device keeps of each monitoring file (summaries, inputs, alerts, review queue).

    Validated on construction; defaults keep at most 64 MiB per file family.
    """

    max_file_bytes: int = 16 << 20  # a file rotates before a write would take it past this
    keep_files: int = 3  # rotated files kept (NAME.1 newest ... NAME.3 oldest); older ones are deleted
    max_value_chars: int = 1024  # a recorded text value is cut to this many characters

    def __post_init__(self) -> None:
        if self.max_file_bytes < 4096:
            raise ConfigError("monitor-max-bytes", f"must be >= 4096 bytes, got {self.max_file_bytes}")
        if not 0 <= self.keep_files <= 100:
            raise ConfigError("monitor-keep-files", f"must be in 0..100, got {self.keep_files}")
        if self.max_value_chars < 16:
            raise ConfigError("record-max-value-chars", f"must be >= 16, got {self.max_value_chars}")


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
    limits : StorageLimits
        File sizes, rotation and the cap on recorded values.
    """

    def __init__(self, home: Path, *, record_inputs: bool = False, window_rows: int = 1000,
                 limits: StorageLimits | None = None) -> None:  # fmt: skip
        self.folder = Path(home) / MONITOR_DIR
        self.record_inputs = record_inputs
        self.window_rows = window_rows
        self.limits = limits or StorageLimits()
        self._recent: deque[tuple[str | None, Counts]] = deque()
        self._rows = 0.0
        self._lock = threading.Lock()  # record() runs on the inference thread, window() on the server's

    def record(self, schema: DataSchema, rows: list[Mapping[str, Any]], results: list[dict[str, Any]],
               *, version: str | None, latency: float) -> Counts:  # fmt: skip
        """Summarise one call, append it, and return its counts."""
        counts = summarize(schema, rows, results)
        self.folder.mkdir(parents=True, exist_ok=True)
        line = {"time": time.time(), "version": version, "rows": len(rows), "latency_s": latency,
                "counts": counts.to_dict()}  # fmt: skip
        append_bounded(self.folder / SUMMARIES_FILE, [line], self.limits)
        if self.record_inputs:
            append_bounded(self.folder / INPUTS_FILE, [{"time": line["time"], "version": version,
                                                        **recorded_row(schema, r, self.limits)} for r in rows],
                           self.limits)  # fmt: skip
        with self._lock:
            self._recent.append((version, counts))
            self._rows += counts.rows
            while len(self._recent) > 1 and self._rows - self._recent[0][1].rows >= self.window_rows:
                self._rows -= self._recent.popleft()[1].rows
        return counts

    def window(self, version: str | None) -> Counts | None:
        """Sum of the in-memory summaries of ``version`` (None if there are none)."""
        with self._lock:
            recent = list(self._recent)
        return _sum(c for v, c in recent if v == version)


def recorded_row(schema: DataSchema, row: Mapping[str, Any], limits: StorageLimits) -> dict[str, Any]:
    """What is kept of one raw row: the schema's columns, text values cut to ``limits.max_value_chars``.

    Returns ``{"row": ...}``, plus ``"cut"`` (columns whose value was shortened) and ``"dropped"``
    (how many keys outside the schema were left out) when that happened.
    """
    names = {c.name for c in schema.columns}
    kept: dict[str, Any] = {}
    cut = []
    for k, v in row.items():
        if k not in names:
            continue
        if isinstance(v, str) and len(v) > limits.max_value_chars:
            cut.append(k)
            v = v[: limits.max_value_chars]
        kept[k] = v
    out: dict[str, Any] = {"row": kept}
    if cut:
        out["cut"] = cut
    if len(kept) < len(row):
        out["dropped"] = len(row) - len(kept)
    return out


def append_bounded(path: Path, lines: list[dict[str, Any]], limits: StorageLimits) -> None:
    """Append JSON lines to ``path``, rotating it first if the write would take it past the limit.

    One write per call under an exclusive lock on the file, so concurrent writers (``edge serve``
    and ``edge predict``) neither interleave lines nor rotate twice (a writer that finds the file
    already rotated by another appends to the new one).
    """
    data = "".join(json.dumps(x, sort_keys=True, default=str) + "\n" for x in lines).encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        with path.open("ab") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
            st = os.fstat(f.fileno())
            try:
                current = os.stat(path).st_ino == st.st_ino
            except FileNotFoundError:
                current = False
            if not current:
                continue  # another writer rotated it while this one waited: append to the new file
            if st.st_size and st.st_size + len(data) > limits.max_file_bytes:
                _rotate(path, limits.keep_files)
                continue
            f.write(data)
            return


def _rotate(path: Path, keep: int) -> None:
    """NAME -> NAME.1 -> ... -> NAME.keep; the oldest is deleted (keep 0: NAME itself is)."""
    if keep == 0:
        path.unlink(missing_ok=True)
        return
    path.with_name(f"{path.name}.{keep}").unlink(missing_ok=True)
    for i in range(keep - 1, 0, -1):
        older = path.with_name(f"{path.name}.{i}")
        if older.exists():
            os.replace(older, path.with_name(f"{path.name}.{i + 1}"))
    os.replace(path, path.with_name(f"{path.name}.1"))


def _family(path: Path) -> list[Path]:
    """``path`` and its rotated files, newest first."""
    out = [path] if path.exists() else []
    i = 1
    while path.with_name(f"{path.name}.{i}").exists():
        out.append(path.with_name(f"{path.name}.{i}"))
        i += 1
    return out


def read_lines_newest_first(path: Path) -> Iterator[tuple[Path, int, str]]:
    """Yield ``(file, line number from its end, text)`` of ``path`` and its rotated files, newest line first.

    Reads blocks from each file's end, so memory holds one block and one line whatever the size.

    Raises
    ------
    IntegrityError
        If a line is longer than 16 MiB (not one fedready wrote) or is not UTF-8.
    """
    for file in _family(Path(path)):
        with file.open("rb") as f:
            pos = f.seek(0, os.SEEK_END)
            head = b""  # the bytes before the newest complete line not yielded yet (a line's start may lie before pos)
            n = 0
            while pos > 0:
                step = min(_READ_BLOCK, pos)
                pos -= step
                f.seek(pos)
                parts = (f.read(step) + head).split(b"\n")
                head = parts[0]
                if len(head) > _MAX_LINE:
                    raise IntegrityError(f"{file}: a line longer than {_MAX_LINE >> 20} MiB; not a monitoring file")
                for raw in reversed(parts[1:]):
                    n += int(bool(raw.strip()))
                    yield from _decoded(file, n, raw)
            n += int(bool(head.strip()))
            yield from _decoded(file, n, head)


def _decoded(file: Path, n: int, raw: bytes) -> Iterator[tuple[Path, int, str]]:
    if not raw.strip():
        return
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise IntegrityError(f"{file}: line {n} from the end is not UTF-8 ({e.reason})") from None
    yield file, n, text


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
    total: Counts | None = None
    n = 0.0
    for file, i, line in read_lines_newest_first(path):
        where = f"{file}: line {i} from the end"
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError) as e:
            raise IntegrityError(f"{where} is not JSON ({e}); move the file aside to start a new one") from e
        if not isinstance(rec, dict) or not isinstance(rec.get("counts"), dict):
            raise IntegrityError(f"{where} is not a summary (an object with 'counts'); move the file aside to start "
                                 "a new one")  # fmt: skip
        if rec.get("version") != version:
            continue
        try:
            counts = Counts.from_dict(rec["counts"])
            total = counts if total is None else total + counts
        except (IntegrityError, ValueError) as e:
            raise IntegrityError(f"{where}: {e}".replace("\n", " ")) from e
        n += counts.rows
        if rows is not None and n >= rows:
            break
    return total


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
