"""Serving one artifact with ONNX Runtime: raw rows in, thresholded predictions out.

Imports only NumPy, pydantic and ONNX Runtime, so it runs on the lean edge install.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedready.encoding import FeatureEncoder
from fedready.errors import ConfigError, IntegrityError
from fedready.registry._artifact import MODEL_FILE, PROVENANCE_FILE, SCHEMA_FILE, THRESHOLDS_FILE
from fedready.registry._canonical import read_json
from fedready.schema import DataSchema
from fedready.thresholds import positive_probability, row_uniform

__all__ = ["Predictor", "read_rows"]

_INPUT, _PROBABILITIES = "features", "probabilities"  # fedready.compression.export's names (no onnx import here)


class Predictor:
    """The model of one artifact folder, ready to predict.

    Parameters
    ----------
    artifact : Path
        A verified artifact folder (model.onnx, schema.json, optional thresholds.json).

    Raises
    ------
    IntegrityError
        If the model does not load or its input width differs from the schema's encoding.
    """

    def __init__(self, artifact: Path) -> None:
        import onnxruntime as ort

        self.artifact = Path(artifact)
        try:
            self.schema = DataSchema.model_validate(read_json(self.artifact / SCHEMA_FILE, what="schema"))
        except ValueError as e:
            raise IntegrityError(f"{self.artifact / SCHEMA_FILE} is not a valid schema ({e})") from e
        self.encoder = FeatureEncoder(self.schema)
        self.version = read_json(self.artifact / PROVENANCE_FILE, what="provenance").get("version")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = 1  # small MLPs: threads cost more than they save, and devices are small
        try:
            self.session = ort.InferenceSession(str(self.artifact / MODEL_FILE), opts,
                                                providers=["CPUExecutionProvider"])  # fmt: skip
        except Exception as e:  # noqa: BLE001 -- onnxruntime raises bare RuntimeError subclasses of its own
            raise IntegrityError(f"{self.artifact / MODEL_FILE} does not load in ONNX Runtime ({e})") from e
        width = self.session.get_inputs()[0].shape[1]
        if width != self.encoder.width:
            raise IntegrityError(f"model expects {width} features but the schema encodes {self.encoder.width}")
        self.thresholds = _Thresholds.load(self.artifact / THRESHOLDS_FILE)
        self.classes = self.schema.classes  # label i is classes[i]; binary: negative, positive

    def class_probabilities(self, rows: list[Mapping[str, Any]]) -> np.ndarray:
        """Probabilities ``(rows, classes)`` for raw rows (column name -> raw value, as in the CSV)."""
        if not rows:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        cols = {c.name: np.array([str(r.get(c.name, "")).strip() for r in rows]) for c in self.schema.features}
        x = self.encoder.transform(cols)
        (proba,) = self.session.run([_PROBABILITIES], {_INPUT: x})
        return proba

    def probabilities(self, rows: list[Mapping[str, Any]]) -> np.ndarray:
        """P(positive) for each raw row of a binary model (multi-class: the decided class's probability)."""
        proba = self.class_probabilities(rows)
        return proba[:, 1] if len(self.classes) == 2 else proba.max(axis=1)

    def predict(self, rows: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """One result per row: probability, threshold applied (binary), prediction (class index) and label.

        Multi-class: ``probability`` is the decided class's, ``probabilities`` maps every class to its own.
        """
        if len(self.classes) != 2:
            out = []
            for p in self.class_probabilities(rows):
                k = int(np.argmax(p))
                out.append({"probability": round(float(p[k]), 6), "prediction": k, "label": self.classes[k],
                            "probabilities": {c: round(float(v), 6) for c, v in zip(self.classes, p, strict=True)},
                            "version": self.version})  # fmt: skip
            return out
        out = []
        for row, p in zip(rows, self.probabilities(rows), strict=True):
            yes, basis = self.thresholds.decide(row, float(p))
            out.append({"probability": round(float(p), 6), **basis, "prediction": int(yes),
                        "label": self.classes[int(yes)], "version": self.version})  # fmt: skip
        return out


class _Thresholds:
    """The decision rule from ``thresholds.json``, or ``p >= 0.5`` everywhere.

    Two formats: the randomised equalized-odds rule ``fedready evaluate`` fits (``groups``
    with ``t0/t1/p0/p1/p_ignore``, applied with :func:`fedready.thresholds.positive_probability`
    and one draw fixed by the row's content), or plain per-group cut-offs an operator writes
    by hand (``{"attribute": ..., "thresholds": {group: cut-off}, "default": 0.5}``).
    """

    def __init__(self, attribute: str | None, by_group: dict[str, float], default: float,
                 rule: dict[str, Any] | None = None) -> None:  # fmt: skip
        self.attribute, self.by_group, self.default, self.rule = attribute, by_group, default, rule

    @classmethod
    def load(cls, path: Path) -> _Thresholds:
        if not path.exists():
            return cls(None, {}, 0.5)
        data = read_json(path, what="thresholds")
        try:
            if "groups" in data:
                for g in data["groups"].values():
                    [float(g[k]) for k in ("t0", "t1", "p0", "p1", "p_ignore", "prediction_constant")]
                return cls(str(data["attribute"]), {}, 0.5, rule=data)
            by_group = {str(k): float(v) for k, v in data.get("thresholds", {}).items()}
            return cls(data.get("attribute"), by_group, float(data.get("default", 0.5)))
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise IntegrityError(f"{path} is not a thresholds file ({e})") from e

    def decide(self, row: Mapping[str, Any], p: float) -> tuple[bool, dict[str, float]]:
        """The decision for one row with score ``p`` and what it was based on."""
        group = str(row.get(self.attribute, "")).strip() if self.attribute else ""
        if self.rule is not None:
            q = float(positive_probability(np.array([p]), np.array([group]), self.rule)[0])
            return q >= row_uniform(row) if 0.0 < q < 1.0 else q == 1.0, {"positive_probability": q}
        t = self.by_group.get(group, self.default) if self.attribute else self.default
        return bool(p >= t), {"threshold": t}


def read_rows(text: str, *, fmt: str = "auto") -> list[dict[str, Any]]:
    """Parse CSV (with a header row) or JSON lines into row dicts.

    Raises
    ------
    ConfigError
        For an unknown format or a malformed JSON line.
    """
    if fmt == "auto":
        fmt = "jsonl" if text.lstrip().startswith("{") else "csv"
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(text), skipinitialspace=True)
        return [{k.strip(): v for k, v in r.items() if k is not None} for r in reader if any(r.values())]
    if fmt == "jsonl":
        rows = []
        for n, line in enumerate(_nonblank(text.splitlines()), start=1):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ConfigError("input", f"line {n} is not JSON ({e})") from e
        return rows
    raise ConfigError("format", f"unknown format '{fmt}'; expected one of: auto, csv, jsonl")


def _nonblank(lines: Iterable[str]) -> Iterable[str]:
    return (line for line in lines if line.strip())
