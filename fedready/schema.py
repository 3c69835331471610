"""Declared data schema: columns, vocabularies, ranges, target, sensitive attributes.

The schema is the one definition of every feature, shared by training and serving.
Encoding is derived from it alone (never fitted on pooled rows), because in a real
federation no party ever sees the pooled data.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedready._validation import first_error, unknown_key_error
from fedready.errors import ConfigError, IntegrityError
from fedready.files import read_toml

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


UNKNOWN_GROUP = "<unknown>"  # the group of a categorical value outside the declared categories
NUMERIC_MISSING = ["", "?", "NA", "nan", "NaN"]  # raw values a numeric column reads as missing by default


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
    missing_values: list[str] = NUMERIC_MISSING  # raw values that mean "missing" (encoded as `impute`)
    impute: float | None = None  # value a missing entry takes (default: the middle of the range, as encoded)

    @model_validator(mode="after")
    def _range(self) -> NumericColumn:
        if not self.max > self.min:
            raise ValueError(f"column '{self.name}': max ({self.max}) must exceed min ({self.min})")
        if self.transform == "log1p" and self.min < 0:
            raise ValueError(f"column '{self.name}': log1p needs min >= 0, got {self.min}")
        if sorted(set(self.bins)) != self.bins:
            raise ValueError(f"column '{self.name}': bins must be strictly increasing, got {self.bins}")
        if self.impute is not None and not self.min <= self.impute <= self.max:
            raise ValueError(f"column '{self.name}': impute ({self.impute}) must lie in [min, max]")
        return self

    @property
    def fill(self) -> float:
        """The raw value a missing entry stands for: ``impute``, or the middle of the range as encoded."""
        if self.impute is not None:
            return self.impute
        if self.transform == "log1p":
            return float(np.expm1((np.log1p(self.min) + np.log1p(self.max)) / 2))
        return (self.min + self.max) / 2

    def parse(self, raw: np.ndarray) -> np.ndarray:
        """Raw values as float64; declared missing values become :attr:`fill`.

        Raises
        ------
        IntegrityError
            Naming the first row (0-based, also in the error's ``row`` attribute) whose value is
            neither a number nor declared missing.
        """
        raw = np.asarray(raw)
        if raw.dtype.kind in "fiub":
            x = raw.astype(np.float64)
        else:
            text = np.char.strip(raw.astype(str))
            missing = np.isin(text, self.missing_values)
            x = np.full(len(text), self.fill, dtype=np.float64)
            try:
                x[~missing] = text[~missing].astype(np.float64)
            except ValueError:
                for i in np.flatnonzero(~missing):
                    try:
                        float(text[i])
                    except ValueError:
                        raise _row_error(
                            i,
                            f"column '{self.name}': '{text[i]}' is not a number; fix the value "
                            f"or declare it in the column's missing_values (now {self.missing_values})",
                        ) from None
        bad = ~np.isfinite(x)
        if bad.any():
            raise _row_error(
                int(np.argmax(bad)),
                f"column '{self.name}': NaN or infinite value; declare it in the column's missing_values",
            )
        return x


class CategoricalColumn(_Strict):
    """A categorical column with a closed vocabulary; anything else is 'unknown'."""

    name: str
    kind: Literal["categorical"] = "categorical"
    categories: list[str] = Field(min_length=1)
    missing_values: list[str] = ["?", ""]
    actionable: bool = False

    @field_validator("categories", "missing_values", mode="before")
    @classmethod
    def _as_text(cls, v: Any) -> Any:
        # raw CSV values are text: `categories = [1, 2, 3]` means the strings "1", "2", "3"
        return [_spelling(x) if not isinstance(x, str) else x for x in v] if isinstance(v, list) else v

    @model_validator(mode="after")
    def _unique(self) -> CategoricalColumn:
        if len(set(self.categories)) != len(self.categories):
            raise ValueError(f"column '{self.name}': categories repeat a value")
        return self


Column = Annotated[NumericColumn | CategoricalColumn, Field(discriminator="kind")]


def _row_error(row: int, message: str) -> IntegrityError:
    err = IntegrityError(f"row {row}: {message}")
    err.row = row  # type: ignore[attr-defined]  # the caller names the file and line
    err.detail = message  # type: ignore[attr-defined]
    return err


def _spelling(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, str | int | float):
        raise ValueError(f"a class value must be a string or a number, got {v!r}")
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v).strip()


class Target(_Strict):
    """The label column and its classes.

    Binary: ``positive`` and ``negative`` list the raw values of each class (class 1 is
    positive). Multi-class: ``classes`` lists the classes in order (class ``i`` is index
    ``i``); an entry is one raw value, or a list of raw values that all mean that class
    (the first names it), e.g. ``classes = [["<=50K", "<=50K."], [">50K", ">50K."]]``.
    Values may be strings or integers: raw CSV values are text, so ``1`` matches ``1``
    (and ``1.0``).
    """

    column: str
    positive: list[str] = []
    negative: list[str] = []
    classes: list[list[str]] = []

    @field_validator("positive", "negative", mode="before")
    @classmethod
    def _values(cls, v: Any) -> Any:
        if not isinstance(v, list):
            v = [v]
        return [_spelling(x) for x in v]

    @field_validator("classes", mode="before")
    @classmethod
    def _classes(cls, v: Any) -> Any:
        if not isinstance(v, list):
            raise ValueError('classes must be a list, e.g. classes = ["low", "mid", "high"] or [0, 1, 2]')
        out = []
        for c in v:
            spellings = c if isinstance(c, list) else [c]
            if not spellings:
                raise ValueError("a class needs at least one raw value")
            out.append([_spelling(x) for x in spellings])
        return out

    @model_validator(mode="after")
    def _one_form(self) -> Target:
        if self.classes and (self.positive or self.negative):
            raise ValueError("declare either classes = [...] or positive/negative, not both")
        if not self.classes and not (self.positive and self.negative):
            raise ValueError("declare classes = [...] (two or more), or both positive = [...] and negative = [...]")
        if self.classes and len(self.classes) < 2:
            raise ValueError(f"a classifier needs at least two classes, got {len(self.classes)}")
        seen: dict[str, int] = {}
        for i, spellings in enumerate(self.spelled()):
            for s in spellings:
                if s in seen:
                    raise ValueError(f"the raw value '{s}' is declared for two classes ({seen[s]} and {i})")
                seen[s] = i
        return self

    def spelled(self) -> list[list[str]]:
        """Every class's raw values, in class order (binary: negative, then positive)."""
        return self.classes if self.classes else [self.negative, self.positive]

    @property
    def class_names(self) -> list[str]:
        """One name per class (its first raw value), in class order."""
        return [s[0] for s in self.spelled()]

    @property
    def num_classes(self) -> int:
        """Number of classes (2 for a binary target)."""
        return len(self.spelled())

    @property
    def binary(self) -> bool:
        """True when the target has exactly two classes (class 1 is the positive one)."""
        return self.num_classes == 2

    def declared_values(self) -> list[str]:
        """Every raw value the schema declares for the target."""
        return [s for spellings in self.spelled() for s in spellings]

    def encode(self, raw: np.ndarray) -> np.ndarray:
        """Class index (int64) of each raw value, ``-1`` where the value is not declared."""
        index = {s: i for i, spellings in enumerate(self.spelled()) for s in spellings}
        out = np.full(len(raw), -1, dtype=np.int64)
        for n, v in enumerate(np.asarray(raw).astype(str).tolist()):
            i = index.get(v.strip())
            if i is None:
                i = index.get(_number_spelling(v), -1)
            out[n] = i
        return out


def _number_spelling(v: str) -> str:
    """``"1.0"`` -> ``"1"``: a number written as a float in the CSV matches an integer class."""
    try:
        f = float(v)
    except ValueError:
        return v
    return str(int(f)) if f.is_integer() else v


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
        if self.contract is not None and not self.target.binary:
            c = self.contract
            if c.min_positive_rate > 0 or c.max_positive_rate < 1:
                raise ValueError("contract min/max_positive_rate need a binary target (positive/negative)")
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
        """Return the schema as plain JSON-compatible data.

        Fields added after the first release are left out while they hold their defaults, so
        a schema that does not use them keeps the digest it always had.
        """
        out = self.model_dump(mode="json")
        if out["contract"] is None:
            del out["contract"]
        for key in ("positive", "negative", "classes"):
            if not out["target"][key]:
                del out["target"][key]
        for col in out["columns"]:
            if col["kind"] == "numeric":
                if col["missing_values"] == NUMERIC_MISSING:
                    del col["missing_values"]
                if col["impute"] is None:
                    del col["impute"]
        return out

    def group_names(self, attribute: str) -> list[str]:
        """Every group of ``attribute`` in a fixed order: declared categories then unknown, or numeric bins."""
        col = self.column(attribute)
        if isinstance(col, CategoricalColumn):
            return [*col.categories, UNKNOWN_GROUP]
        edges = [col.min, *col.bins, col.max]
        return [f"[{lo:g}, {hi:g})" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]

    def group_labels(self, attribute: str, raw: np.ndarray) -> np.ndarray:
        """Map raw values of ``attribute`` to their group names (see :meth:`group_names`)."""
        col = self.column(attribute)
        names = np.asarray(self.group_names(attribute), dtype=object)
        if isinstance(col, CategoricalColumn):
            index = {c: i for i, c in enumerate(col.categories)}
            codes = np.fromiter((index.get(str(v).strip(), len(col.categories)) for v in raw), dtype=np.int64,
                                count=len(raw))  # fmt: skip
        else:
            x = np.clip(col.parse(np.asarray(raw)), col.min, col.max)
            codes = np.clip(np.searchsorted(np.asarray(col.bins), x, side="right"), 0, len(names) - 1)
        return names[codes]

    @property
    def classes(self) -> list[str]:
        """The target's class names, in class order (index ``i`` is label ``i``)."""
        return self.target.class_names

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
        err = first_error(e)
        unknown = unknown_key_error(DataSchema, err)
        if unknown is not None:  # where the key sits: its section, or its column by name
            where = [str(x) for x in err["loc"][:-1] if x not in ("numeric", "categorical")]
            if len(where) == 2 and where[0] == "columns" and isinstance(raw, dict):
                name = raw["columns"][int(where[1])].get("name") if isinstance(raw.get("columns"), list) else None
                where = [f"column '{name}'"] if isinstance(name, str) else where
            raise ConfigError("schema", f"{p}: {'.'.join(where) + ': ' if where else ''}{unknown}") from e
        loc = ".".join(str(x) for x in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise ConfigError("schema", f"{p}: {loc + ': ' if loc else ''}{msg}") from e
