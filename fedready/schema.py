"""Declared data schema: columns, vocabularies, ranges, target, sensitive attributes.

The schema is the one definition of every feature, shared by training and serving.
Encoding is derived from it alone (never fitted on pooled rows), because in a real
federation no party ever sees the pooled data.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fedready._io import read_toml
from fedready.errors import ConfigError

__all__ = [
    "CategoricalColumn",
    "DataContract",
    "DataSchema",
    "NumericColumn",
    "Target",
    "load_schema",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NumericColumn(_Strict):
    """A numeric column with a declared range (values outside are clipped)."""

    name: str
    kind: Literal["numeric"] = "numeric"
    min: float
    max: float
    transform: Literal["none", "log1p"] = "none"
    bins: list[float] = []  # declared cut points: threshold features for the model, histogram bins for monitoring
    unit: str = ""
    actionable: bool = False  # may a counterfactual explanation change it?

    @model_validator(mode="after")
    def _range(self) -> NumericColumn:
        if not self.max > self.min:
            raise ValueError(f"column '{self.name}': max ({self.max}) must exceed min ({self.min})")
        if self.transform == "log1p" and self.min < 0:
            raise ValueError(f"column '{self.name}': log1p needs min >= 0, got {self.min}")
        if sorted(set(self.bins)) != self.bins:
            raise ValueError(f"column '{self.name}': bins must be strictly increasing, got {self.bins}")
        return self


class CategoricalColumn(_Strict):
    """A categorical column with a closed vocabulary; anything else is 'unknown'."""

    name: str
    kind: Literal["categorical"] = "categorical"
    categories: list[str] = Field(min_length=1)
    missing_values: list[str] = ["?", ""]
    actionable: bool = False

    @model_validator(mode="after")
    def _unique(self) -> CategoricalColumn:
        if len(set(self.categories)) != len(self.categories):
            raise ValueError(f"column '{self.name}': categories repeat a value")
        return self


Column = Annotated[NumericColumn | CategoricalColumn, Field(discriminator="kind")]


class Target(_Strict):
    """The binary label column and the raw values that mean positive / negative."""

    column: str
    positive: list[str] = Field(min_length=1)
    negative: list[str] = Field(min_length=1)


class DataContract(_Strict):
    """What a data holder promises about its rows, checked before training (``[contract]``).

    Rates are shares of rows in [0, 1]. The declared vocabularies and ranges of the
    columns are part of the contract: a value outside them counts as invalid.
    """

    min_rows: int = Field(1, ge=1)  # rows in the local file
    max_missing_rate: float = Field(0.0, ge=0, le=1)  # per column, unless overridden in missing_rate
    missing_rate: dict[str, float] = {}  # column -> its own maximum missing share
    max_invalid_rate: float = Field(0.0, ge=0, le=1)  # values outside the vocabulary or range, unparseable numbers
    min_positive_rate: float = Field(0.0, ge=0, le=1)  # label balance: share of positive labels
    max_positive_rate: float = Field(1.0, ge=0, le=1)

    @model_validator(mode="after")
    def _rates(self) -> DataContract:
        bad = {k: v for k, v in self.missing_rate.items() if not 0 <= v <= 1}
        if bad:
            raise ValueError(f"missing_rate values must be shares in [0, 1], got {bad}")
        if self.min_positive_rate > self.max_positive_rate:
            raise ValueError(
                f"min_positive_rate ({self.min_positive_rate}) exceeds max_positive_rate ({self.max_positive_rate})"
            )
        return self

    def missing_limit(self, column: str) -> float:
        """The maximum missing share allowed in ``column``."""
        return self.missing_rate.get(column, self.max_missing_rate)


class DataSchema(_Strict):
    """A declared tabular schema.

    Attributes
    ----------
    columns : list
        Every feature column, in encoding order.
    target : Target
        The label column.
    sensitive : list of str
        Columns that are protected attributes (used for fairness slices, never
        changed by counterfactuals).
    ignore : list of str
        Declared columns that are not model inputs.
    contract : DataContract or None
        Limits a data holder checks its rows against before it trains.
    """

    name: str
    version: str = "1"
    columns: list[Column] = Field(min_length=1)
    target: Target
    sensitive: list[str] = []
    ignore: list[str] = []
    contract: DataContract | None = None

    @model_validator(mode="after")
    def _consistent(self) -> DataSchema:
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            raise ValueError("column names repeat")
        if self.target.column in names:
            raise ValueError(f"target '{self.target.column}' must not also be a feature column")
        protected = [c.name for c in self.columns if c.actionable and c.name in self.sensitive]
        if protected:
            raise ValueError(
                f"sensitive column(s) {protected} cannot be actionable: a counterfactual never changes them"
            )
        for key, values in (("sensitive", self.sensitive), ("ignore", self.ignore)):
            unknown = [v for v in values if v not in names]
            if unknown:
                raise ValueError(f"{key} names unknown column(s) {unknown}; declared: {names}")
        if self.contract is not None:
            unknown = [c for c in self.contract.missing_rate if c not in names]
            if unknown:
                raise ValueError(f"contract.missing_rate names unknown column(s) {unknown}; declared: {names}")
        return self

    @property
    def features(self) -> list[NumericColumn | CategoricalColumn]:
        """Columns that are model inputs, in encoding order."""
        return [c for c in self.columns if c.name not in self.ignore]

    def column(self, name: str) -> NumericColumn | CategoricalColumn:
        """Return the declared column called ``name``."""
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"unknown column '{name}'; declared: {[c.name for c in self.columns]}")

    def to_dict(self) -> dict:
        """Return the schema as plain JSON-compatible data."""
        out = self.model_dump(mode="json")
        if out["contract"] is None:  # a schema without a contract keeps the digest it always had
            del out["contract"]
        return out

    def digest(self) -> str:
        """Return ``sha256:<hex>`` of the canonical JSON form (sorted keys)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()
        return "sha256:" + hashlib.sha256(blob).hexdigest()


def load_schema(path: str | Path) -> DataSchema:
    """Read a schema TOML file.

    Raises
    ------
    ConfigError
        If the file is missing or does not describe a valid schema.
    """
    p = Path(path)
    raw = read_toml(p, field="schema", missing=f"file {p} does not exist; pass an existing schema TOML")
    try:
        return DataSchema.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        raise ConfigError("schema", f"{p}: {loc}: {err['msg']}") from e
