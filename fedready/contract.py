"""Checking a local table against its schema's data contract, on the client's premises.

Notes
-----
The full report (which column, how many rows, which limit) stays with the data
holder. What may leave the premises is :meth:`ContractReport.summary`: the names of
the checks that failed, with no counts and no row content, plus a fingerprint of the
data (schema digest, row count, sha256 of the file) for provenance.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedready.data import Table
from fedready.schema import CategoricalColumn, DataContract, DataSchema, NumericColumn

__all__ = ["ContractReport", "Violation", "contract_refusal", "empty_columns", "row_validity", "validate_contract"]

_NUMERIC_MISSING = ("", "?", "NA", "nan", "NaN")


@dataclass(frozen=True)
class Violation:
    """One broken limit: ``rows`` of ``total`` rows in ``column`` against ``limit``."""

    check: str  # min-rows | missing-rate | invalid-rate | positive-rate
    column: str
    rows: int
    total: int
    limit: str

    def message(self) -> str:
        """A readable line for the data holder."""
        if self.check == "min-rows":
            return f"{self.rows} rows, contract needs at least {self.limit}"
        share = self.rows / max(self.total, 1)
        what = {"missing-rate": "missing", "invalid-rate": "outside the declared values or range",
                "positive-rate": "positive"}[self.check]  # fmt: skip
        return f"column '{self.column}': {self.rows} of {self.total} rows ({share:.1%}) {what}, limit {self.limit}"


@dataclass(frozen=True)
class ContractReport:
    """The outcome of :func:`validate_contract`."""

    rows: int
    violations: list[Violation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every limit holds."""
        return not self.violations

    def lines(self) -> list[str]:
        """The readable report, one line per violation (stays on the client)."""
        return [v.message() for v in self.violations] or [f"{self.rows} rows: contract satisfied"]

    def summary(self) -> str:
        """What the coordinator is told: failed checks by column, no counts, no rows."""
        return ", ".join(f"{v.column}:{v.check}" for v in self.violations)


def _column_status(col: NumericColumn | CategoricalColumn, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (missing, invalid) for one column's raw string values."""
    if isinstance(col, CategoricalColumn):
        missing = np.isin(raw, col.missing_values)
        return missing, ~missing & ~np.isin(raw, col.categories)
    missing = np.isin(raw, _NUMERIC_MISSING)
    values = np.full(len(raw), np.nan)
    for i, v in enumerate(raw.tolist()):
        if v not in _NUMERIC_MISSING:
            try:
                values[i] = float(v)
            except ValueError:
                pass
    with np.errstate(invalid="ignore"):
        inside = np.isfinite(values) & (values >= col.min) & (values <= col.max)
    return missing, ~missing & ~inside


def row_validity(table: Table, schema: DataSchema) -> np.ndarray:
    """Rows a model can train on: every numeric feature parses inside its range and the label is declared.

    Missing or unknown categorical values are fine (they encode to the 'unknown' slot).
    """
    ok = np.ones(len(table), dtype=bool)
    for col in schema.features:
        if isinstance(col, NumericColumn):
            missing, invalid = _column_status(col, table.columns[col.name])
            ok &= ~missing & ~invalid
    label = table.columns[schema.target.column]
    return ok & np.isin(label, schema.target.declared_values())


def validate_contract(table: Table, schema: DataSchema) -> ContractReport:
    """Check ``table`` against ``schema.contract`` (a default contract if the schema has none).

    Checks, in order: minimum rows; per column the missing share and the share of values
    outside the declared vocabulary or range; the share of undeclared labels; the
    positive-label share.
    """
    contract = schema.contract or DataContract()
    n = len(table)
    out: list[Violation] = []
    if n < contract.min_rows:
        out.append(Violation("min-rows", "*", n, n, str(contract.min_rows)))
    for col in schema.features:
        missing, invalid = _column_status(col, table.columns[col.name])
        limit = contract.missing_limit(col.name)
        if missing.sum() > limit * n:
            out.append(Violation("missing-rate", col.name, int(missing.sum()), n, f"{limit:.1%}"))
        if invalid.sum() > contract.max_invalid_rate * n:
            out.append(Violation("invalid-rate", col.name, int(invalid.sum()), n, f"{contract.max_invalid_rate:.1%}"))
    label = table.columns[schema.target.column]
    pos = np.isin(label, schema.target.positive)
    declared = np.isin(label, schema.target.declared_values())
    if (~declared).sum() > contract.max_invalid_rate * n:
        out.append(Violation("invalid-rate", schema.target.column, int((~declared).sum()), n,
                             f"{contract.max_invalid_rate:.1%}"))  # fmt: skip
    labelled = int(declared.sum())
    if labelled and schema.target.binary:
        rate = pos.sum() / labelled
        if not contract.min_positive_rate <= rate <= contract.max_positive_rate:
            out.append(Violation("positive-rate", schema.target.column, int(pos.sum()), labelled,
                                 f"[{contract.min_positive_rate:.1%}, {contract.max_positive_rate:.1%}]"))  # fmt: skip
    return ContractReport(rows=n, violations=out)


def empty_columns(table: Table, schema: DataSchema) -> list[str]:
    """One line per feature column in which no value is usable: every one missing, unknown or out of range.

    Such a column (random identifiers under a categorical with other categories, a misspelt vocabulary)
    encodes to the same "unknown" slot on every row: it trains, and teaches the model nothing.
    """
    out = []
    for col in schema.features:
        raw = table.columns[col.name]
        missing, invalid = _column_status(col, raw)
        if len(raw) and not (~missing & ~invalid).any():
            kind = "declared categories" if isinstance(col, CategoricalColumn) else "declared range"
            out.append(f"column '{col.name}': none of its {len(raw)} values is inside its {kind} "
                       f"({int(invalid.sum())} outside, {int(missing.sum())} missing): it carries nothing to the "
                       "model; fix the schema (fedready schema draft) or list it under ignore")  # fmt: skip
    return out


def contract_refusal(table: Table, schema: DataSchema, *, data: str, schema_path: str) -> str | None:
    """The one-line reason ``table`` breaks ``schema.contract`` (None when it has none or keeps it)."""
    if schema.contract is None:
        return None
    report = validate_contract(table, schema)
    if report.ok:
        return None
    more = f" (and {len(report.violations) - 1} more)" if len(report.violations) > 1 else ""
    return (
        f"{data} breaks the schema's [contract]: {report.violations[0].message()}{more}; fix the data or the "
        f"contract (fedready contract check --data {data} --schema {schema_path} lists every violation)"
    )
