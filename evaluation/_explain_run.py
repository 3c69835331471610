"""``fedready explain``: one row of the benchmark or of a CSV, explained."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedready.data import read_csv
from fedready.encoding import FeatureEncoder
from fedready.errors import ConfigError
from fedready.evaluation.explain import explain_row
from fedready.evaluation.model import check_width, load_run
from fedready.federation import task_of
from fedready.schema import load_schema


def explain_run_row(
    run: str | Path, *, row: int, csv: Path | None = None, schema: Path | None = None
) -> dict[str, Any]:
    """Decision, per-feature attributions and nearest counterfactual for row ``row``.

    The attribution baseline is the mean encoded row of the data the row comes from.

    Raises
    ------
    ConfigError
        If the row index is out of range or the schema does not fit the model.
    """
    rm = load_run(run, schema=load_schema(schema) if schema is not None else None)
    if csv is None:
        task = task_of(rm.cfg)
        sch, table = task.schema, task.test
    else:
        sch = rm.schema
        table = read_csv(csv, sch)
    if not 0 <= row < len(table):
        raise ConfigError("row", f"must be in [0, {len(table)}) for {csv or 'the run benchmark'}, got {row}")
    encoder = FeatureEncoder(sch)
    check_width(rm.arrays, sch, rm.cfg.model)
    values = {k: str(v[row]) for k, v in table.columns.items()}
    out = explain_row(rm.module, sch, values, encoder.transform(table.columns).mean(axis=0))
    out["row"] = row
    return out
