"""``fedready schema draft``: a first schema for a person to review, read off one local CSV.

Nothing is fitted for training here: the draft only proposes what a person then decides
(kinds, ranges, vocabularies, bins, the target and its classes). It errs on the side of
saying less about the rows, because a schema is shared with every party of a federation:

* numeric ranges are widened to round numbers, and bins are rounded quantiles;
* a category seen fewer than ``min_count`` times is left out (it falls into the "unknown"
  slot): a rare value can single out a person;
* a column whose values are nearly all distinct looks like an identifier and is put in
  ``ignore``;
* sensitive attributes are never marked unless ``sensitive`` names them: the draft lists
  candidates (column names whose words name a protected attribute) in a comment and a person
  marks them; a candidate is never guessed as the target.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from fedready.data import Table, parse_csv, read_text
from fedready.errors import ConfigError
from fedready.schema import NUMERIC_MISSING, DataSchema

__all__ = ["Draft", "draft_schema"]

_MISSING = {*NUMERIC_MISSING, "null", "NULL", "None", "N/A", "n/a", "-"}
_TARGET_NAMES = ("target", "label", "class", "y", "outcome", "income", "churn", "default", "diagnosis", "species")
# words of a column name that suggest a protected attribute (matched as whole words, so `wage` is not `age`)
_PROTECTED = frozenset({
    "sex", "gender", "female", "male", "race", "racial", "ethnicity", "ethnic", "afam", "black", "white", "hispanic",
    "latino", "latina", "asian", "religion", "religious", "age", "nationality", "citizenship", "citizen", "country",
    "foreign", "immigrant", "native", "disability", "disabled", "marital", "married", "pregnant", "pregnancy",
})  # fmt: skip
_PROTECTED_STEMS = ("ethnic", "disab", "relig", "nationalit", "marit")  # ethnicities, disabilities, maritalstatus
_POSITIVE = ("1", "yes", "y", "true", "t", "positive", "pos")
MAX_CLASSES = 50


@dataclass(frozen=True)
class Draft:
    """A drafted schema: its TOML text, the rows read and what a person should look at first.

    ``warnings`` are choices the data forced on the draft that may hide a data problem (a
    numeric column holding some text); ``notes`` are the rest of what to review.
    """

    toml: str
    rows: int
    target: str
    notes: tuple[str, ...]
    warnings: tuple[str, ...] = ()


def _words(name: str) -> list[str]:
    """The lower-cased words of a column name: split on ``_``, ``-``, spaces and camelCase (``isForeignWorker``)."""
    return [w.lower() for w in re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+", name)]


def _protected(name: str) -> bool:
    """True when a word of ``name`` names a protected attribute (``age``, ``afam``, ``foreign_worker``)."""
    return any(w in _PROTECTED or w.startswith(_PROTECTED_STEMS) for w in _words(name))


def _range(lo: float, hi: float) -> tuple[float, float]:
    """``[lo, hi]`` widened outward to round numbers; the result always has ``max > min``.

    First to multiples of half the order of magnitude of the width (18..79 -> 15..80), then
    each end outward to two significant digits, or more where two would more than double the
    width: 2003..2009 becomes 2000..2010, not 2000..2100 (nor 2000..2000).
    """
    width = hi - lo
    if width <= 0:
        return math.floor(lo) - 1.0, math.floor(lo) + 1.0
    step = 10 ** math.floor(math.log10(width)) / 2
    out_lo, out_hi = _fixed(math.floor(_fixed(lo / step)) * step), _fixed(math.ceil(_fixed(hi / step)) * step)
    for digits in range(2, 16):
        r_lo, r_hi = _outward(out_lo, digits, up=False), _outward(out_hi, digits, up=True)
        if r_hi - r_lo <= 2 * (out_hi - out_lo):
            out_lo, out_hi = r_lo, r_hi
            break
    if lo >= 0 > out_lo:
        out_lo = 0.0  # a count or an amount stays non-negative
    return float(out_lo) + 0.0, float(out_hi) + 0.0  # + 0.0: no "-0"


def _fixed(x: float) -> float:
    """``x`` without float noise (``0.30000000000000004`` -> ``0.3``) before it is floored or ceiled."""
    return round(x, 9)


def _outward(x: float, digits: int, *, up: bool) -> float:
    """``x`` rounded to ``digits`` significant digits, up (towards +inf) or down."""
    if x == 0:
        return 0.0
    step = 10.0 ** (math.floor(math.log10(abs(x))) - digits + 1)
    q = _fixed(x / step)
    return float(round((math.ceil(q) if up else math.floor(q)) * step, 12))


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


def _guess_target(table: Table, sensitive: set[str], notes: list[str]) -> str:
    """A column named like a label, else the last column that is neither sensitive nor ignored."""
    names = [n for n in table.columns if n not in sensitive]
    for cand in _TARGET_NAMES:
        for n in names:
            if n.lower() == cand:
                return n
    if not names:
        raise ConfigError("target", "every column is sensitive or ignored; pass --target with the label column")
    last = list(table.columns)[-1]
    if names[-1] != last:
        notes.append(f"target: '{names[-1]}' was taken as the label (the last column '{last}' is sensitive or "
                     "ignored and never guessed as the label); pass --target to choose another")  # fmt: skip
    return names[-1]


def _mostly_numbers(raw: np.ndarray) -> tuple[np.ndarray, list[str]] | None:
    """The numbers of a column where a few values are text: (numbers, the text values), or None.

    A column counts when at least 80% of its present values are numbers and at most 10
    distinct text values remain (``"unknown"``, ``"n.a."``): those are read as missing.
    """
    present = [v.strip() for v in raw.tolist() if v.strip() not in _MISSING]
    numbers, text = [], []
    for v in present:
        try:
            numbers.append(float(v))
        except ValueError:
            text.append(v)
    x = np.asarray(numbers, dtype=np.float64)
    if not text or len(x) < 0.8 * len(present) or len(set(text)) > 10 or not np.isfinite(x).all():
        return None
    return x, sorted(set(text))


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


def _numeric_block(name: str, x: np.ndarray, missing: int, raw: np.ndarray) -> list[str]:
    lo, hi = _range(float(x.min()), float(x.max()))
    lines = ["[[columns]]", f"name = {_quote(name)}", 'kind = "numeric"', f"min = {_num(lo)}", f"max = {_num(hi)}"]
    # every non-number in the column must be declared missing, or the column fails to load
    extra = sorted({v.strip() for v in raw.tolist() if not _is_number(v)} - set(NUMERIC_MISSING))
    if extra:
        lines.append(f"missing_values = {_text([*NUMERIC_MISSING, *extra])}")
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


def _is_number(v: str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True


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
    max_categories: int = 50, sensitive: Sequence[str] = (), ignore: Sequence[str] = (),
) -> Draft:  # fmt: skip
    """Draft a schema for the CSV at ``path`` (read locally; nothing is sent anywhere).

    Parameters
    ----------
    target : str, optional
        The label column (default: a column named like a label, else the last column that is
        neither a sensitive-attribute candidate nor in ``sensitive`` or ``ignore``).
    name : str, optional
        The schema's name (default: the file's stem).
    min_count : int
        Categories seen fewer times are left out of the vocabulary.
    max_categories : int
        At most this many categories per column (the most frequent).
    sensitive : sequence of str
        Columns to mark as protected attributes (``sensitive = [...]``).
    ignore : sequence of str
        Columns to declare but not use as model inputs (``ignore = [...]``).

    Raises
    ------
    ConfigError
        For an unreadable file, an unknown ``target``, ``sensitive`` or ``ignore`` column, a
        target that is not a class column, or data the draft cannot describe (one line).
    """
    p = Path(path)
    table = parse_csv(read_text(p), None, source=str(p))
    for field, given in (("sensitive", sensitive), ("ignore", ignore)):
        unknown = [c for c in given if c not in table.columns]
        if unknown:
            raise ConfigError(field, f"{p} has no column(s) {', '.join(unknown)}; columns: {', '.join(table.columns)}")
    notes: list[str] = []
    warnings: list[str] = []
    candidates = [c for c in table.columns if _protected(c)]
    if target is None:
        target = _guess_target(table, {*candidates, *sensitive, *ignore}, notes)
    if target not in table.columns:
        raise ConfigError("target", f"{p} has no column '{target}'; columns: {', '.join(table.columns)}")
    for field, given in (("sensitive", sensitive), ("ignore", ignore)):
        if target in given:
            raise ConfigError(field, f"'{target}' is the target; a label column cannot also be {field}")
    n = len(table)
    columns: list[list[str]] = []
    ignored: list[str] = [c for c in table.columns if c in ignore]
    for col, raw in table.columns.items():
        if col == target:
            continue
        missing = int(np.isin(raw, list(_MISSING)).sum())
        x = _numbers(raw)
        mixed = None if x is not None else _mostly_numbers(raw)
        if mixed is not None:
            x, text = mixed
            k = int(np.isin(np.char.strip(raw.astype(str)), text).sum())
            warnings.append(f"column '{col}': numbers, but {k} of {n} value(s) are text ({', '.join(text)}): "
                            "drafted as numeric with the text read as missing; check the file")  # fmt: skip
            block = _numeric_block(col, x, missing + k, raw)
            block.insert(1, "# REVIEW: mostly numbers; its text values are declared missing (missing_values)")
            columns.append(block)
            continue
        if x is not None:
            columns.append(_numeric_block(col, x, missing, raw))
            continue
        distinct = len(set(raw.tolist()))
        block, dropped = _categorical_block(col, raw, min_count, max_categories)
        if col in ignored:
            pass
        elif distinct > 0.5 * n and n >= 20:
            ignored.append(col)
            block.insert(1, "# REVIEW: nearly every value is distinct (an identifier?): ignored as a model input")
            notes.append(f"column '{col}' looks like an identifier: put in ignore")
        elif dropped == distinct - int(missing > 0):  # no value is frequent enough to keep
            ignored.append(col)
            block.insert(1, f"# REVIEW: no value is seen {min_count} times or more: ignored as a model input")
            notes.append(f"column '{col}' has no value seen {min_count} times: put in ignore")
        columns.append(block)
    candidates = [c for c in candidates if c != target and c not in sensitive]
    marked = [c for c in table.columns if c in sensitive]
    head = [
        f"# Drafted by `fedready schema draft` from {p.name} ({n} rows), read on this machine only.",
        "# REVIEW EVERY FIELD BEFORE SHARING THIS FILE: ranges, bins and categories describe your data.",
        "# Reference of every field: docs/reference/schema.md (the documentation's schema reference).",
        f"name = {_quote(name or re.sub(r'[^A-Za-z0-9_-]+', '-', p.stem))}",
        'version = "1"',
        f"ignore = {_text(ignored)}",
        "# Mark the protected attributes (fairness is measured per group of each; counterfactuals never change"
        + (f" them). Candidates by name: {', '.join(candidates)}." if candidates else " them)."),
        f"sensitive = {_text(marked)}",
        "",
        *_target_block(table.columns[target], target, str(p), notes),
    ]
    body = "\n\n".join("\n".join(b) for b in columns)
    contract = ["", "# [contract]  # what each data holder's file must satisfy before it trains (uncomment, adjust)",
                "# min_rows = 100", "# max_missing_rate = 0.05", "# max_invalid_rate = 0.01"]  # fmt: skip
    toml = "\n".join(head) + "\n\n" + body + "\n" + "\n".join(contract) + "\n"
    try:
        DataSchema.model_validate(tomllib.loads(toml))  # the draft always loads as it stands
    except (ValidationError, tomllib.TOMLDecodeError) as e:
        detail = e.errors()[0]["msg"].removeprefix("Value error, ") if isinstance(e, ValidationError) else str(e)
        raise ConfigError("data", f"{p}: the drafted schema does not load ({detail}); pass --target, --ignore "
                                  "or --sensitive to set that column aside, or fix the file") from e  # fmt: skip
    return Draft(toml=toml, rows=n, target=target, notes=tuple(notes), warnings=tuple(warnings))
