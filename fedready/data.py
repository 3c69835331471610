"""Tabular data: the vendored UCI Adult copy (checksum-verified) and schema-driven CSV reading.

A :class:`Table` keeps raw column values as strings exactly as they appear in the
file; turning them into numbers is the encoder's job (:mod:`fedready.encoding`),
so training and serving share one definition of every feature.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from fedready.errors import ConfigError, IntegrityError
from fedready.schema import DataSchema, load_schema

__all__ = ["ADULT_SHA256", "Table", "adult_schema", "load_adult", "read_csv"]

# sha256 of the original (decompressed) files, as listed in PROVENANCE.md.
ADULT_SHA256 = {
    "train": "5b00264637dbfec36bdeaab5676b0b309ff9eb788d63554ca0a249491c86603d",
    "test": "a2a9044bc167a35b2361efbabec64e89d69ce82d9790d2980119aac5fd7e9c05",
}
_ADULT_FILES = {"train": "adult.data.gz", "test": "adult.test.gz"}
_ADULT_COLUMNS = [
    "age", "workclass", "fnlwgt", "education", "education-num", "marital-status",
    "occupation", "relationship", "race", "sex", "capital-gain", "capital-loss",
    "hours-per-week", "native-country", "income",
]  # fmt: skip


@dataclass(frozen=True)
class Table:
    """Raw rows held column-wise: ``columns[name]`` is a 1-D array of strings."""

    columns: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def take(self, index: np.ndarray) -> Table:
        """Return the rows at ``index`` (an integer array) as a new table."""
        return Table({k: v[index] for k, v in self.columns.items()})

    def labels(self, schema: DataSchema) -> np.ndarray:
        """Return the target as an int64 array of 0/1.

        Raises
        ------
        IntegrityError
            If a label value is neither a declared positive nor negative value.
        """
        raw = self.columns.get(schema.target.column)
        if raw is None:
            raise IntegrityError(f"label column '{schema.target.column}' is missing")
        pos = np.isin(raw, schema.target.positive)
        neg = np.isin(raw, schema.target.negative)
        bad = ~(pos | neg)
        if bad.any():
            first = str(raw[np.argmax(bad)])
            raise IntegrityError(
                f"label column '{schema.target.column}': {int(bad.sum())} row(s) hold undeclared "
                f"values (first: '{first}'); declared: {schema.target.positive + schema.target.negative}"
            )
        return pos.astype(np.int64)


def _parse(text: str, names: list[str] | None) -> Table:
    reader = csv.reader(io.StringIO(text), skipinitialspace=True)
    rows = [r for r in reader if r and not r[0].startswith("|")]
    if names is None:
        names, rows = rows[0], rows[1:]
    bad = [i for i, r in enumerate(rows) if len(r) != len(names)]
    if bad:
        raise IntegrityError(f"row {bad[0] + 1} has {len(rows[bad[0]])} fields, expected {len(names)}")
    data = np.array(rows, dtype=str).reshape(len(rows), len(names))
    return Table({n: np.char.strip(data[:, i]) for i, n in enumerate(names)})


@lru_cache(maxsize=2)
def load_adult(split: str = "train") -> Table:
    """Load the vendored UCI Adult split ``"train"`` (32,561 rows) or ``"test"`` (16,281).

    The decompressed bytes are checked against the sha256 in ``PROVENANCE.md``
    before any row is parsed.

    Raises
    ------
    IntegrityError
        If the vendored file's digest differs from the recorded one.
    """
    if split not in _ADULT_FILES:
        raise ValueError(f"unknown Adult split '{split}'; expected one of: train, test")
    ref = resources.files("fedready.datasets.adult").joinpath(_ADULT_FILES[split])
    raw = gzip.decompress(ref.read_bytes())
    got = hashlib.sha256(raw).hexdigest()
    if got != ADULT_SHA256[split]:
        raise IntegrityError(
            f"vendored {_ADULT_FILES[split]} is corrupt: expected sha256 {ADULT_SHA256[split]}, "
            f"got {got}; reinstall fedready"
        )
    return _parse(raw.decode("utf-8"), _ADULT_COLUMNS)


def adult_schema() -> DataSchema:
    """Return the declared schema of the vendored Adult data set."""
    with resources.as_file(resources.files("fedready.datasets.adult").joinpath("schema.toml")) as p:
        return load_schema(p)


def read_csv(path: str | Path, schema: DataSchema) -> Table:
    """Read a CSV with a header row and check it holds every declared column.

    Raises
    ------
    ConfigError
        If the file is missing or lacks a declared column.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise ConfigError("data", f"file {p} does not exist") from e
    table = _parse(text, None)
    needed = [c.name for c in schema.features] + [schema.target.column]
    missing = [n for n in needed if n not in table.columns]
    if missing:
        raise ConfigError("data", f"{p} lacks declared column(s) {missing}; fix the CSV header or the schema")
    return table
