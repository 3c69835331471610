"""``fedready schema draft``: a first schema for a person to review, read off one local CSV.

Nothing is fitted for training here: the draft only proposes what a person then decides
(kinds, ranges, vocabularies, bins, the target and its classes). It errs on the side of
saying less about the rows, because a schema is shared with every party of a federation:

* numeric ranges are widened to round numbers, and bins are rounded quantiles;
* a category seen fewer than ``min_count`` times is left out (it falls into the "unknown"
  slot): a rare value can single out a person;
* a column whose values are nearly all distinct looks like an identifier and is put in
  ``ignore``;
* sensitive attributes are never marked: the draft lists candidates in a comment and a
  person marks them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedready.data import Table, parse_csv, read_text
from fedready.errors import ConfigError
from fedready.schema import NUMERIC_MISSING, DataSchema

__all__ = ["Draft", "draft_schema"]

_MISSING = {*NUMERIC_MISSING, "null", "NULL", "None", "N/A", "n/a", "-"}
_TARGET_NAMES = ("target", "label", "class", "y", "outcome", "income", "churn", "default", "diagnosis", "species")
_PROTECTED = ("sex", "gender", "race", "ethnic", "religion", "age", "nationality", "country", "disab", "marital")
_POSITIVE = ("1", "yes", "y", "true", "t", "positive", "pos")
MAX_CLASSES = 50


@dataclass(frozen=True)
class Draft:
    """A drafted schema: its TOML text, the rows read and what a person should look at first."""

    toml: str
    rows: int
    target: str
    notes: tuple[str, ...]


def _range(lo: float, hi: float) -> tuple[float, float]:
    """``[lo, hi]`` widened outward to multiples of half the order of magnitude of its width (18..79 -> 15..80)."""
    width = hi - lo
    if width <= 0:
        return math.floor(lo) - 1.0, math.floor(lo) + 1.0
    step = 10 ** math.floor(math.log10(width)) / 2
    out_lo, out_hi = math.floor(lo / step) * step, math.ceil(hi / step) * step
    if lo >= 0 > out_lo:
        out_lo = 0.0  # a count or an amount stays non-negative
    return float(_round2(out_lo) if out_lo else 0.0), float(_round2(out_hi) if out_hi else 0.0)


def _round2(x: float) -> float:
    """``x`` rounded to two significant digits."""
    if x == 0:
        return 0.0
    step = 10 ** (math.floor(math.log10(abs(x))) - 1)
    return float(round(round(x / step) * step, 12))


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else f"{v:g}"


def _text(values: list[str]) -> str:
    return "[" + ", ".join(_quote(v) for v in values) + "]"


def _quote(v: str) -> str:
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else _quote(name)


def _numbers(raw: np.ndarray) -> np.ndarray | None:
    """The column as floats (missing values dropped), or None if any present value is not a number."""
    present = np.array([v for v in raw.tolist() if v not in _MISSING])
    if len(present) == 0:
        return None
    try:
        x = present.astype(np.float64)
    except ValueError:
        return None
    return x if np.isfinite(x).all() else None


def _guess_target(table: Table) -> str:
    names = list(table.columns)
    for cand in _TARGET_NAMES:
        for n in names:
            if n.lower() == cand:
                return n
    return names[-1]


def _class_values(raw: np.ndarray, column: str, source: str) -> list[str]:
    values = [v for v in raw.tolist() if v not in _MISSING]
    distinct = sorted(set(values))
    if len(distinct) < 2:
        raise ConfigError("target", f"{source}: column '{column}' holds {len(distinct)} class(es); a classifier "
                                    "needs two or more: pass --target with the label column")  # fmt: skip
    if len(distinct) > MAX_CLASSES:
        raise ConfigError("target", f"{source}: column '{column}' holds {len(distinct)} distinct values, too many "
                                    f"for classes (at most {MAX_CLASSES}; regression is not supported): pass "
                                    "--target with the label column")  # fmt: skip
    nums = _numbers(np.asarray(distinct))
    if nums is not None:
        order = np.argsort(nums, kind="stable")
        return [distinct[i] for i in order]
    return distinct


def _target_block(raw: np.ndarray, column: str, source: str, notes: list[str]) -> list[str]:
    classes = _class_values(raw, column, source)
    lines = ["[target]", f"column = {_quote(column)}"]
    if len(classes) == 2:
        lowered = [c.lower() for c in classes]
        pos = next((i for i, c in enumerate(lowered) if c in _POSITIVE), None)
        if pos is None:
            counts = [int((raw == c).sum()) for c in classes]
            pos = int(np.argmin(counts))
            notes.append(f"target '{column}': '{classes[pos]}' (the rarer class) was taken as positive; check it")
            lines.append("# REVIEW: the rarer class was taken as positive (class 1)")
        lines += [f"positive = {_text([classes[pos]])}", f"negative = {_text([classes[1 - pos]])}"]
    else:
        lines.append('# class i is index i; a class with several spellings is a list, e.g. ["a", "a."]')
        lines.append(f"classes = {_text(classes)}")
    return lines


def _numeric_block(name: str, x: np.ndarray, missing: int) -> list[str]:
    lo, hi = _range(float(x.min()), float(x.max()))
    lines = ["[[columns]]", f"name = {_quote(name)}", 'kind = "numeric"', f"min = {_num(lo)}", f"max = {_num(hi)}"]
    sd = float(x.std())
    skew = float(np.mean(((x - x.mean()) / sd) ** 3)) if sd > 0 else 0.0
    skewed = lo >= 0 and skew > 2.0  # a long right tail (amounts, counts): log1p spreads the bulk of the values
    if skewed:
        lines.append('transform = "log1p"  # heavy right tail: compressed before scaling')
    qs = np.quantile(x, [0.2, 0.4, 0.6, 0.8])
    bins = sorted({_round2(float(q)) for q in qs if lo < _round2(float(q)) < hi})
    if len(np.unique(x)) > 5 and bins:
        lines.append(f"bins = [{', '.join(_num(b) for b in bins)}]  # rounded quintiles: threshold features")
    if missing:
        lines.append(f"# {missing} missing value(s) read as the middle of the range; set impute = <value> to change")
    return lines


def _categorical_block(name: str, raw: np.ndarray, min_count: int, max_categories: int) -> tuple[list[str], int]:
    values, counts = np.unique([v for v in raw.tolist() if v not in _MISSING], return_counts=True)
    order = np.argsort(-counts, kind="stable")
    kept = [str(values[i]) for i in order if counts[i] >= min_count][:max_categories]
    dropped = len(values) - len(kept)
    lines = ["[[columns]]", f"name = {_quote(name)}", 'kind = "categorical"', f"categories = {_text(kept or ['?'])}"]
    if dropped:
        lines.append(f"# {dropped} rare value(s) left out (seen fewer than {min_count} times): they encode as unknown")
    return lines, dropped


def draft_schema(
    path: str | Path, *, target: str | None = None, name: str | None = None, min_count: int = 5,
    max_categories: int = 50,
) -> Draft:  # fmt: skip
    """Draft a schema for the CSV at ``path`` (read locally; nothing is sent anywhere).

    Parameters
    ----------
    target : str, optional
        The label column (default: a column named like a label, else the last one).
    name : str, optional
        The schema's name (default: the file's stem).
    min_count : int
        Categories seen fewer times are left out of the vocabulary.
    max_categories : int
        At most this many categories per column (the most frequent).

    Raises
    ------
    ConfigError
        For an unreadable file, an unknown ``target``, or a target that is not a class column.
    """
    p = Path(path)
    table = parse_csv(read_text(p), None, source=str(p))
    target = target or _guess_target(table)
    if target not in table.columns:
        raise ConfigError("target", f"{p} has no column '{target}'; columns: {', '.join(table.columns)}")
    notes: list[str] = []
    n = len(table)
    columns: list[list[str]] = []
    ignore: list[str] = []
    for col, raw in table.columns.items():
        if col == target:
            continue
        missing = int(np.isin(raw, list(_MISSING)).sum())
        x = _numbers(raw)
        if x is not None:
            columns.append(_numeric_block(col, x, missing))
            continue
        distinct = len(set(raw.tolist()))
        block, dropped = _categorical_block(col, raw, min_count, max_categories)
        if distinct > 0.5 * n and n >= 20:
            ignore.append(col)
            block.insert(1, "# REVIEW: nearly every value is distinct (an identifier?): ignored as a model input")
            notes.append(f"column '{col}' looks like an identifier: put in ignore")
        elif dropped == distinct - int(missing > 0):  # no value is frequent enough to keep
            ignore.append(col)
            block.insert(1, f"# REVIEW: no value is seen {min_count} times or more: ignored as a model input")
            notes.append(f"column '{col}' has no value seen {min_count} times: put in ignore")
        columns.append(block)
    candidates = [c for c in table.columns if c != target and any(k in c.lower() for k in _PROTECTED)]
    head = [
        f"# Drafted by `fedready schema draft` from {p.name} ({n} rows), read on this machine only.",
        "# REVIEW EVERY FIELD BEFORE SHARING THIS FILE: ranges, bins and categories describe your data.",
        "# Reference of every field: README, section 'Schema reference'.",
        f"name = {_quote(name or re.sub(r'[^A-Za-z0-9_-]+', '-', p.stem))}",
        'version = "1"',
        f"ignore = {_text(ignore)}",
        "# Mark the protected attributes (fairness is measured per group of each; counterfactuals never change"
        + (f" them). Candidates by name: {', '.join(candidates)}." if candidates else " them)."),
        "sensitive = []",
        "",
        *_target_block(table.columns[target], target, str(p), notes),
    ]
    body = "\n\n".join("\n".join(b) for b in columns)
    contract = ["", "# [contract]  # what each data holder's file must satisfy before it trains (uncomment, adjust)",
                "# min_rows = 100", "# max_missing_rate = 0.05", "# max_invalid_rate = 0.01"]  # fmt: skip
    toml = "\n".join(head) + "\n\n" + body + "\n" + "\n".join(contract) + "\n"
    import tomllib

    DataSchema.model_validate(tomllib.loads(toml))  # the draft always loads as it stands
    return Draft(toml=toml, rows=n, target=target, notes=tuple(notes))
