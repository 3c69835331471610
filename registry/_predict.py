"""Serving one artifact with ONNX Runtime: raw rows in, thresholded predictions out.

Imports only NumPy, pydantic and ONNX Runtime, so it runs on the lean edge install.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from fedready.encoding import FeatureEncoder
from fedready.errors import ConfigError, IntegrityError
from fedready.registry._artifact import MODEL_FILE, PROVENANCE_FILE, SCHEMA_FILE, THRESHOLDS_FILE
from fedready.registry._canonical import read_json
from fedready.schema import DataSchema, NumericColumn
from fedready.thresholds import DecisionRule, row_uniform

__all__ = ["Predictor", "parse_json", "read_rows"]

_INPUT, _PROBABILITIES = "features", "probabilities"  # fedready.compression.export's names (no onnx import here)


class Predictor:
    """The model of one artifact folder, ready to predict.

    Parameters
    ----------
    artifact : Path
        A verified artifact folder (model.onnx, schema.json, optional thresholds.json).
    secret : bytes
        The device's secret behind the draws of a randomised fairness rule
        (:func:`fedready.thresholds.row_uniform`); devices pass theirs (``HOME/decision.secret``).

    Raises
    ------
    IntegrityError
        If the model does not load or its input width differs from the schema's encoding.
    """

    def __init__(self, artifact: Path, *, secret: bytes = b"") -> None:
        import onnxruntime as ort

        self.artifact = Path(artifact)
        self.secret = secret
        try:
            self.schema = DataSchema.model_validate(read_json(self.artifact / SCHEMA_FILE, what="schema"))
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(map(str, first["loc"])) or "the document"
            raise IntegrityError(f"{self.artifact / SCHEMA_FILE} is not a valid schema ({where}: {first['msg']}; "
                                 f"{e.error_count()} error(s))") from e  # fmt: skip
        except ValueError as e:
            raise IntegrityError(f"{self.artifact / SCHEMA_FILE} is not a valid schema ({e})") from e
        self.encoder = FeatureEncoder(self.schema)
        prov = read_json(self.artifact / PROVENANCE_FILE, what="provenance")
        if not isinstance(prov, dict) or not isinstance(prov.get("version"), str):
            raise IntegrityError(f"{self.artifact / PROVENANCE_FILE} names no version; refused")
        self.version = prov["version"]
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
        self.rule = DecisionRule.load(self.artifact / THRESHOLDS_FILE)
        self.classes = self.schema.classes  # label i is classes[i]; binary: negative, positive
        if len(self.classes) != 2 and (self.artifact / THRESHOLDS_FILE).exists():
            raise IntegrityError(f"{self.artifact / THRESHOLDS_FILE}: a fairness rule decides between two classes, "
                                 f"this model has {len(self.classes)}")  # fmt: skip
        self._numeric = {c.name: c for c in self.schema.features if isinstance(c, NumericColumn)}

    def check_rows(self, rows: list[Any]) -> dict[str, list[str]]:
        """Validate raw rows; return the schema's feature columns as canonical strings.

        Numeric values must be finite numbers or one of the column's declared ``missing_values``
        (read as its fill value, as in training); categorical values are plain values (unknown
        ones fall in the schema's "unknown" slot); the fairness rule's sensitive value must be one
        of its groups unless ``thresholds.json`` states a fallback.

        Raises
        ------
        IntegrityError
            Naming the first bad row (1-based) and column.
        """
        cols: dict[str, list[str]] = {c.name: [] for c in self.schema.features}
        for n, row in enumerate(rows, start=1):
            if not isinstance(row, Mapping):
                raise IntegrityError(f"row {n} is a {type(row).__name__}, not an object of column -> value")
            for name, out in cols.items():
                try:
                    out.append(_canonical(row.get(name), numeric=self._numeric.get(name)))
                except ValueError as e:
                    raise IntegrityError(f"row {n}: column '{name}' {e}") from None
            try:
                self.rule.group_of(row)
            except IntegrityError as e:
                raise IntegrityError(f"row {n}: {e}") from None
        return cols

    def class_probabilities(self, rows: list[Mapping[str, Any]]) -> np.ndarray:
        """Probabilities ``(rows, classes)`` for raw rows (column name -> raw value, as in the CSV), checked first."""
        if not rows:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        return self.column_probabilities(self.check_rows(rows))

    def probabilities(self, rows: list[Mapping[str, Any]]) -> np.ndarray:
        """P(positive) for each raw row of a binary model (multi-class: the decided class's probability)."""
        proba = self.class_probabilities(rows)
        return proba[:, 1] if len(self.classes) == 2 else proba.max(axis=1)

    def column_probabilities(self, columns: Mapping[str, Any]) -> np.ndarray:
        """Probabilities ``(rows, classes)`` for whole columns (column name -> raw values), without row checks.

        For a trusted table (the public holdout) or what :meth:`check_rows` returned.
        """
        return self._run(self.encoder.transform({k: np.asarray(v) for k, v in columns.items()}))

    def _run(self, x: np.ndarray) -> np.ndarray:
        (proba,) = self.session.run([_PROBABILITIES], {_INPUT: x})
        return proba

    def predict(self, rows: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """One result per row: probability, what the decision was based on (binary), prediction (class index), label.

        Multi-class: ``probability`` is the decided class's, ``probabilities`` maps every class to its own.

        Raises
        ------
        IntegrityError
            If a row is malformed (:meth:`check_rows`); no row is predicted then.
        """
        return self.predict_checked(rows, self.check_rows(rows)) if rows else []

    def predict_checked(self, rows: list[Mapping[str, Any]], cols: dict[str, list[str]]) -> list[dict[str, Any]]:
        """:meth:`predict` for rows already validated: ``cols`` is what :meth:`check_rows` returned for them."""
        if not rows:
            return []
        x = self.encoder.transform({k: np.asarray(v) for k, v in cols.items()})  # the model's view of each row
        proba = self._run(x)
        out = []
        if len(self.classes) != 2:
            for p in proba:
                k = int(np.argmax(p))
                out.append({"probability": round(float(p[k]), 6), "prediction": k, "label": self.classes[k],
                            "probabilities": {c: round(float(v), 6) for c, v in zip(self.classes, p, strict=True)},
                            "version": self.version})  # fmt: skip
            return out
        for i, (row, p) in enumerate(zip(rows, proba[:, 1], strict=True)):
            q, basis = self.rule.probability(float(p), self.rule.group_of(row))
            if 0.0 < q < 1.0:  # a randomised group: one draw fixed by what the model sees and the device secret
                yes = q >= row_uniform(x[i], secret=self.secret)
            else:
                yes = q == 1.0
            out.append({"probability": round(float(p), 6), **basis, "prediction": int(yes),
                        "label": self.classes[int(yes)], "version": self.version})  # fmt: skip
        return out


def _canonical(value: Any, *, numeric: NumericColumn | None) -> str:
    """One raw value as the canonical string the encoder and the decision draw see (ValueError: why not).

    ``numeric`` is the column when it is numeric: a declared missing value becomes the column's
    fill value (what the encoder reads it as), anything else must be a finite number.
    """
    if isinstance(value, (dict, list)):
        raise ValueError(f"is a JSON {'object' if isinstance(value, dict) else 'array'}; send a plain value")
    if value is None:
        text = ""
    elif isinstance(value, str):
        text = value.strip()
    elif isinstance(value, bool):
        raise ValueError("is a boolean; send a number or a category")
    else:
        try:
            text = str(value)
        except ValueError:  # an integer beyond Python's digit limit
            raise ValueError("holds a number too large to read") from None
    if numeric is None:
        return text
    if text in numeric.missing_values:
        return repr(float(numeric.fill))
    if not text:
        raise ValueError(f"is missing; send a number (or declare '' in the column's missing_values, now "
                         f"{numeric.missing_values})")  # fmt: skip
    if len(text) > 64:
        raise ValueError(f"holds {len(text)} characters, not a number")
    try:
        x = float(text)
    except ValueError:
        raise ValueError(f"holds {text[:20]!r}, not a number") from None
    if not math.isfinite(x):
        raise ValueError(f"holds {text[:20]!r}, not a finite number")
    return repr(x)


def read_rows(text: str, *, fmt: str = "auto") -> list[dict[str, Any]]:
    """Parse CSV (with a header row) or JSON lines into row dicts.

    Raises
    ------
    ConfigError
        For an unknown format, a malformed CSV or JSON line (numbers beyond Python's digit
        limit and nesting beyond its recursion limit included), or a line that is not an object.
    """
    if fmt == "auto":
        fmt = "jsonl" if text.lstrip().startswith("{") else "csv"
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(text), skipinitialspace=True)
        try:
            return [{k.strip(): v for k, v in r.items() if k is not None} for r in reader if any(r.values())]
        except csv.Error as e:
            raise ConfigError("input", f"CSV line {reader.line_num} cannot be read ({e})") from None
    if fmt == "jsonl":
        rows = []
        for n, line in enumerate(_nonblank(text.splitlines()), start=1):
            row = parse_json(line, what=f"line {n}")
            if not isinstance(row, dict):
                raise ConfigError("input", f"line {n} is a JSON {type(row).__name__}, not an object of column -> value")
            rows.append(row)
        return rows
    raise ConfigError("format", f"unknown format '{fmt}'; expected one of: auto, csv, jsonl")


def parse_json(text: str | bytes, *, what: str) -> Any:
    """``json.loads`` that fails with one :class:`ConfigError` line for every kind of bad input.

    Covers invalid JSON, bytes that are not UTF-8, integers beyond Python's 4,300-digit limit
    and nesting deeper than the recursion limit (each of which raises something else).
    """
    try:
        # decoded here, strictly: json.loads would guess UTF-16/32 from the first bytes of a body
        return json.loads(text.decode("utf-8") if isinstance(text, bytes) else text)
    except UnicodeDecodeError as e:
        raise ConfigError("input", f"{what} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ConfigError("input", f"{what} is not JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except ValueError:  # int('9' * 5000): "Exceeds the limit (4300 digits) for integer string conversion"
        raise ConfigError("input", f"{what} holds an integer of more than 4300 digits; refused") from None
    except RecursionError:
        raise ConfigError("input", f"{what} is nested too deeply to read") from None


def _nonblank(lines: Iterable[str]) -> Iterable[str]:
    return (line for line in lines if line.strip())
