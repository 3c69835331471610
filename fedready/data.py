"""Tabular data: schema-driven CSV reading into raw string columns.

A :class:`Table` keeps raw column values as strings exactly as they appear in the
file; turning them into numbers is the encoder's job (:mod:`fedready.encoding`),
so training and serving share one definition of every feature.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedready.errors import ConfigError, IntegrityError
from fedready.schema import DataSchema

__all__ = ["Table", "parse_csv", "read_csv", "read_text"]


@dataclass(frozen=True)
class Table:
    """Raw rows held column-wise: ``columns[name]`` is a 1-D array of strings.

    ``source`` names the file the rows came from and ``lines`` holds each row's line number
    in it, so that an error about a row can point at it.
    """

    columns: dict[str, np.ndarray]
    source: str = ""
    lines: np.ndarray | None = field(default=None, compare=False)

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def take(self, index: np.ndarray) -> Table:
        """Return the rows at ``index`` (an integer array) as a new table."""
        lines = self.lines[index] if self.lines is not None else None
        return Table({k: v[index] for k, v in self.columns.items()}, self.source, lines)

    def where(self, row: int) -> str:
        """``"<file> line <n>"`` (or ``"row <n>"``) for 0-based row ``row``, for error messages."""
        if self.lines is not None:
            return f"{self.source or 'the data'} line {int(self.lines[row])}"
        return f"{self.source + ' ' if self.source else ''}row {row + 1}"

    def labels(self, schema: DataSchema) -> np.ndarray:
        """Return the target as an int64 array of class indices ``0 .. K-1`` (binary: 1 = positive).

        Raises
        ------
        IntegrityError
            If the label column is absent.
        ConfigError
            Naming ``target``, the file and the line, if a value is not declared for any class.
        """
        target = schema.target
        raw = self.columns.get(target.column)
        if raw is None:
            raise IntegrityError(f"{self.source or 'the data'}: label column '{target.column}' is missing")
        y = target.encode(raw)
        bad = y < 0
        if bad.any():
            raise undeclared_label(self, schema, bad)
        return y


def undeclared_label(table: Table, schema: DataSchema, bad: np.ndarray) -> ConfigError:
    """The one-line error for rows whose label (``bad``, a boolean mask) no class of the schema declares."""
    i = int(np.argmax(bad))
    raw = table.columns[schema.target.column]
    return ConfigError("target", f"{table.where(i)}: label '{raw[i]}' in column '{schema.target.column}' is not "
                                 f"declared ({int(bad.sum())} such row(s)); declared: "
                                 f"{schema.target.declared_values()}; add it to the schema's [target] or fix the "
                                 "rows")  # fmt: skip


_DELIMITERS = (",", ";", "\t", "|")


def parse_csv(text: str, names: list[str] | None, source: str = "") -> Table:
    """Parse CSV text (with a header row unless ``names`` are given) into a :class:`Table`.

    The delimiter of a file with a header is the most frequent of ``, ; TAB |`` in the header.

    Raises
    ------
    ConfigError
        For an empty file, a header without rows, or a row with the wrong number of fields
        (naming the file and the line).
    """
    where = source or "the data"
    delimiter = ","
    if names is None:
        first = next((line for line in text.splitlines() if line.strip()), "")
        if not first:
            raise ConfigError("data", f"{where} is empty; it needs a header row and at least one data row")
        delimiter = max(_DELIMITERS, key=first.count)
    reader = csv.reader(io.StringIO(text), skipinitialspace=True, delimiter=delimiter)
    rows, lines = [], []
    for r in reader:
        if r and any(v.strip() for v in r) and not r[0].startswith("|"):
            rows.append(r)
            lines.append(reader.line_num)
    if names is None:
        names, rows, header_line, lines = [n.strip() for n in rows[0]], rows[1:], lines[0], lines[1:]
        if not rows:
            raise ConfigError("data", f"{where} has a header (line {header_line}) but no data rows; add rows")
        if len(set(names)) != len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise ConfigError("data", f"{where}: the header names column(s) {twice} twice; rename one")
    bad = [i for i, r in enumerate(rows) if len(r) != len(names)]
    if bad:
        i = bad[0]
        raise ConfigError("data", f"{where} line {lines[i]} has {len(rows[i])} fields, the header has {len(names)}; "
                                  "fix that row (a stray delimiter or a missing value?)")  # fmt: skip
    data = np.array(rows, dtype=str).reshape(len(rows), len(names))
    return Table({n: np.char.strip(data[:, i]) for i, n in enumerate(names)}, source, np.asarray(lines))


def read_text(path: str | Path) -> str:
    """The text of a UTF-8 file (a byte-order mark is dropped).

    Raises
    ------
    ConfigError
        If the file is missing, a folder, or not UTF-8 text.
    """
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8-sig")
    except FileNotFoundError as e:
        raise ConfigError("data", f"file {p} does not exist") from e
    except IsADirectoryError as e:
        raise ConfigError("data", f"{p} is a folder; pass a CSV file") from e
    except UnicodeDecodeError as e:
        raise ConfigError("data", f"{p} is not UTF-8 text: {_position(e)}; save it as UTF-8 CSV (in a spreadsheet: "
                                  "Save as, CSV UTF-8)") from e  # fmt: skip


def _position(e: UnicodeDecodeError) -> str:
    """``line 3, column 7: byte 0xe9 (invalid continuation byte)``: where a text editor shows the bad byte."""
    before = bytes(e.object[: e.start])
    line = before.count(b"\n") + 1
    column = len(before[before.rfind(b"\n") + 1 :].decode("utf-8", errors="replace")) + 1  # characters, not bytes
    return f"line {line}, column {column}: byte 0x{e.object[e.start]:02x} ({e.reason})"


def read_csv(path: str | Path, schema: DataSchema) -> Table:
    """Read a CSV with a header row and check it holds every declared column.

    The delimiter (comma, semicolon, tab or pipe) is read off the header; a UTF-8 byte-order
    mark is ignored.

    Raises
    ------
    ConfigError
        If the file is missing, empty, holds only a header, has a ragged row (naming its line),
        or lacks a declared column.
    """
    p = Path(path)
    text = read_text(p)
    table = parse_csv(text, None, source=str(p))
    needed = [c.name for c in schema.features] + [schema.target.column]
    missing = [n for n in needed if n not in table.columns]
    if missing:
        raise ConfigError("data", f"{p} lacks declared column(s) {missing}; fix the CSV header or the schema")
    return table
