"""Schema-driven feature encoding (NumPy only, so edge devices can use it too).

Numeric columns read their declared missing values as ``fill`` (``impute``, or the middle
of the range), are clipped to their declared range, optionally log1p-transformed
and scaled to [-1, 1]; each declared bin edge adds a threshold feature
``1[x >= edge]`` (a thermometer code), which lets a small model bend a numeric
effect without fitting anything to data. Categorical columns are one-hot encoded over the declared
vocabulary plus one trailing "unknown or missing" slot. Nothing is fitted on data.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedready.errors import IntegrityError
from fedready.schema import CategoricalColumn, DataSchema, NumericColumn

__all__ = ["FeatureEncoder"]


class FeatureEncoder:
    """Encode raw column values into a float32 design matrix.

    Parameters
    ----------
    schema : DataSchema
        The declared schema; its feature columns fix the output layout.
    """

    def __init__(self, schema: DataSchema) -> None:
        self.schema = schema
        names: list[str] = []
        for col in schema.features:
            if isinstance(col, NumericColumn):
                names.append(col.name)
                names += [f"{col.name}>={edge:g}" for edge in col.bins]
            else:
                names += [f"{col.name}={c}" for c in col.categories] + [f"{col.name}=<unknown>"]
        self.feature_names = names

    @property
    def width(self) -> int:
        """Number of encoded features."""
        return len(self.feature_names)

    @classmethod
    def _numeric(cls, col: NumericColumn, raw: np.ndarray) -> np.ndarray:
        x = col.parse(raw)
        lo, hi = col.min, col.max
        x = np.clip(x, lo, hi)
        thresholds = (x[:, None] >= np.asarray(col.bins, dtype=np.float64)[None, :]).astype(np.float64)
        if col.transform == "log1p":
            x, lo, hi = np.log1p(x), np.log1p(lo), np.log1p(hi)
        scaled = 2.0 * (x - lo) / (hi - lo) - 1.0
        return np.concatenate([scaled[:, None], thresholds], axis=1)

    @staticmethod
    def _categorical(col: CategoricalColumn, raw: np.ndarray) -> np.ndarray:
        index = {c: i for i, c in enumerate(col.categories)}
        unknown = len(col.categories)
        codes = np.fromiter((index.get(v, unknown) for v in raw.tolist()), dtype=np.int64, count=len(raw))
        out = np.zeros((len(raw), unknown + 1))
        out[np.arange(len(raw)), codes] = 1.0
        return out

    def transform_column(self, name: str, raw: np.ndarray) -> np.ndarray:
        """Encode one feature column's raw values into its block of the design matrix (float64)."""
        col = self.schema.column(name)
        raw = np.asarray(raw)
        if isinstance(col, NumericColumn):
            return self._numeric(col, raw)
        return self._categorical(col, np.char.strip(raw.astype(str)))

    def transform(self, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        """Encode ``columns`` (name -> 1-D array of raw values) into a float32 matrix."""
        parts = []
        for col in self.schema.features:
            if col.name not in columns:
                raise IntegrityError(f"column '{col.name}' is missing from the input")
            parts.append(self.transform_column(col.name, columns[col.name]))
        return np.concatenate(parts, axis=1).astype(np.float32)
