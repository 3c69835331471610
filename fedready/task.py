"""The task: what fedready learns from what.

A :class:`Task` holds the schema, the rows the clients split among themselves, the benchmark
rows (the server's public holdout, which evaluation and compression also use), the encoder,
the label space and the model factory. It is built from a :class:`TaskSpec`, a handful of
paths and options small enough to travel in a Flower run config (flat hyphenated keys:
``data``, ``schema``, ``test``, ``test-fraction``, ``model``), so every Ray worker process
rebuilds the same task cheaply and caches it (:func:`load_task`).

Sources of rows:

* nothing given: the embedded UCI Adult data (its training split for the clients, its test
  split as the benchmark), with its own schema;
* ``data`` + ``schema``: a user's CSV; the benchmark is ``test`` (a CSV in the same format),
  or else a seeded, stratified ``test_fraction`` of ``data`` (default 0.2) held out before
  the clients split the rest.

No other library module names the embedded data set: they all ask the task.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, fields
from functools import cached_property, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedready.data import Table, read_csv, undeclared_label
from fedready.encoding import FeatureEncoder
from fedready.errors import ConfigError, IntegrityError
from fedready.schema import DataSchema, load_schema

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "DEFAULT_TEST_FRACTION",
    "Task",
    "TaskSpec",
    "data_digest",
    "load_task",
    "task_from_dict",
    "task_of",
]

log = logging.getLogger(__name__)

DEFAULT_TEST_FRACTION = 0.2  # share of --data held out as the benchmark when no --test is given
_SPLIT_SEED = 0x7E57  # the benchmark split is the same for every run seed (seed stability compares like with like)
_MISSING_LABEL = ("", "?", "NA", "nan", "NaN")  # label values that mean "no label": such rows are left out


@dataclass(frozen=True)
class TaskSpec:
    """The paths and options a task is built from (JSON-able, hashable; empty = default).

    Attributes
    ----------
    data : str
        The training CSV the clients split ("" = the embedded data set).
    schema : str
        The schema TOML of ``data`` (required with ``data``).
    test : str
        A benchmark CSV in the same format (the server's public holdout).
    test_fraction : float
        Without ``test``: the share of ``data`` held out as the benchmark (0 = 0.2).
    model : str
        A registered model name or ``package.module:factory``.
    """

    data: str = ""
    schema: str = ""
    test: str = ""
    test_fraction: float = 0.0
    model: str = "mlp"

    def __post_init__(self) -> None:
        # schema + test without data: the coordinator of a deployment (the clients hold the rows)
        if self.schema and not self.data and not self.test:
            raise ConfigError("schema", "a schema describes --data; pass --data train.csv with it (a deployment's "
                                        "server passes test=holdout.csv, its public holdout)")  # fmt: skip
        if self.data and not self.schema:
            raise ConfigError("schema", f"--data {self.data} needs its --schema; write one with "
                                        f"`fedready schema draft {self.data}` and review it")  # fmt: skip
        if self.test and not self.schema:
            raise ConfigError("test", "--test goes with --schema (the embedded data has its own test split)")
        if self.test_fraction and not self.data:
            raise ConfigError("test-fraction", "--test-fraction goes with --data (the embedded data has its own "
                                               "test split)")  # fmt: skip
        if self.test and self.test_fraction:
            raise ConfigError("test-fraction", "pass either --test test.csv or --test-fraction, not both")
        if not 0.0 <= self.test_fraction < 1.0:
            raise ConfigError("test-fraction", f"must be in (0, 1), got {self.test_fraction}")

    @property
    def embedded(self) -> bool:
        """Whether the task uses the embedded data set."""
        return not self.data and not self.schema

    @property
    def server_only(self) -> bool:
        """A deployment's coordinator: a schema and a public holdout, no training rows (the clients hold them)."""
        return not self.data and bool(self.schema)

    @classmethod
    def from_config(cls, cfg: Any) -> TaskSpec:
        """The spec carried by a :class:`~fedready.config.SimulationConfig` (or any object with its fields)."""
        return cls(**{f.name: getattr(cfg, f.name) for f in fields(cls)})

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain data (the run-config keys, with underscores)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _digest(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True, eq=False)
class Task:
    """A built task: schema, rows, encoder, label space and model factory.

    Attributes
    ----------
    train : Table
        The rows the clients split (labelled rows only).
    test : Table
        The benchmark rows: the server's public holdout, evaluation's and compression's data.
    """

    spec: TaskSpec
    schema: DataSchema
    train: Table
    test: Table
    train_source: str
    test_source: str
    test_digest: str
    notes: tuple[str, ...] = ()  # one line per thing worth telling the user (rows left out, ...)
    caveats: tuple[str, ...] = ()  # what the model card must say about the data
    policy: Path | None = None  # a gate policy shipped beside the data set, if any

    @cached_property
    def encoder(self) -> FeatureEncoder:
        """The schema's encoder (nothing fitted on rows)."""
        return FeatureEncoder(self.schema)

    @property
    def in_features(self) -> int:
        """Width of the encoded input."""
        return self.encoder.width

    @property
    def classes(self) -> list[str]:
        """Class names; label ``i`` is ``classes[i]`` (binary: negative, positive)."""
        return self.schema.classes

    @property
    def num_classes(self) -> int:
        """Number of classes (the model's output width)."""
        return len(self.classes)

    @property
    def binary(self) -> bool:
        """Whether the target is binary (label 1 is the positive class)."""
        return self.num_classes == 2

    def encode(self, table: Table) -> np.ndarray:
        """Encode ``table``'s feature columns; a bad value is a ConfigError naming the file and line."""
        return _encode(self.encoder, table)

    @cached_property
    def x_train(self) -> np.ndarray:
        """The training rows, encoded (float32)."""
        return self.encode(self.train)

    @cached_property
    def y_train(self) -> np.ndarray:
        """The training labels (int64, ``0 .. num_classes - 1``)."""
        return self.train.labels(self.schema)

    @cached_property
    def x_test(self) -> np.ndarray:
        """The benchmark rows, encoded (float32)."""
        return self.encode(self.test)

    @cached_property
    def y_test(self) -> np.ndarray:
        """The benchmark labels."""
        return self.test.labels(self.schema)

    @cached_property
    def train_groups(self) -> dict[str, np.ndarray]:
        """Group label of every training row for each sensitive attribute (the ``sensitive`` partitioner's keys)."""
        return {a: self.schema.group_labels(a, self.train.columns[a]) for a in self.schema.sensitive}

    def model(self, *, seed: int = 0) -> nn.Module:
        """A fresh model for this task (deterministic initial weights for ``seed``)."""
        from fedready.models import model_for_schema

        return model_for_schema(self.spec.model, self.schema, seed=seed)

    def load_model(self, arrays: dict[str, np.ndarray]) -> nn.Module:
        """This task's model with ``arrays`` loaded, in evaluation mode (ConfigError if they do not fit)."""
        from fedready.models import model_for_schema

        return model_for_schema(self.spec.model, self.schema, arrays=arrays)

    def describe(self) -> dict[str, Any]:
        """What the task is, for reports and the model card."""
        return {"schema": self.schema.name, "schema_digest": self.schema.digest(), "train": self.train_source,
                "train_rows": len(self.train), "test": self.test_source, "test_rows": len(self.test),
                "test_digest": self.test_digest, "classes": self.classes, "in_features": self.in_features,
                "model": self.spec.model}  # fmt: skip


def _encode(encoder: FeatureEncoder, table: Table) -> np.ndarray:
    try:
        return encoder.transform(table.columns)
    except IntegrityError as e:
        row = getattr(e, "row", None)
        if row is None:
            raise ConfigError("data", f"{table.source or 'the data'}: {e}") from e
        raise ConfigError("data", f"{table.where(row)}: {e.detail}") from e  # type: ignore[attr-defined]


def _labelled(table: Table, schema: DataSchema) -> tuple[Table, str | None]:
    """Keep the rows that carry a label: a missing one is left out (with a note), an undeclared one is an error."""
    raw = table.columns[schema.target.column]
    y = schema.target.encode(raw)
    missing = (y < 0) & np.isin(np.char.strip(raw.astype(str)), _MISSING_LABEL)
    bad = (y < 0) & ~missing
    if bad.any():
        raise undeclared_label(table, schema, bad)
    if not missing.any():
        return table, None
    note = f"{table.source}: left out {int(missing.sum())} row(s) without a label in '{schema.target.column}'"
    return table.take(np.flatnonzero(~missing)), note


def _check_classes(table: Table, schema: DataSchema) -> None:
    y = table.labels(schema)
    if len(y) == 0:
        raise ConfigError("data", f"{table.source}: no row carries a label in '{schema.target.column}'; "
                                  "check the target column")  # fmt: skip
    present = np.unique(y)
    if len(present) < 2:
        name = schema.classes[int(present[0])]
        raise ConfigError("data", f"{table.source}: the target '{schema.target.column}' holds only the class "
                                  f"'{name}' ({len(y)} rows); a classifier needs at least two classes: check the "
                                  "target column and the schema's [target]")  # fmt: skip


def _split(y: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded (train, test) index arrays: ``fraction`` of each class goes to test."""
    rng = np.random.default_rng(np.random.SeedSequence([_SPLIT_SEED, len(y)]))
    test = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        test.append(idx[: int(round(fraction * len(idx)))])
    te = np.sort(np.concatenate(test))
    return np.setdiff1d(np.arange(len(y)), te), te


def _embedded(spec: TaskSpec) -> Task:
    from fedready.datasets import adult

    schema = adult.adult_schema()
    return Task(spec, schema, adult.load_adult("train"), adult.load_adult("test"),
                train_source="UCI Adult training split (adult.data, embedded)",
                test_source="UCI Adult test split (adult.test, 16,281 rows; the server's public holdout)",
                test_digest="sha256:" + adult.ADULT_SHA256["test"], caveats=tuple(adult.CAVEATS),
                policy=adult.policy_path())  # fmt: skip


def _server_only(spec: TaskSpec) -> Task:
    """The task a deployment's server builds: schema, encoder, model and its public holdout, no training rows."""
    schema = load_schema(spec.schema)
    test, note = _labelled(read_csv(spec.test, schema), schema)
    _check_classes(test, schema)
    return Task(spec, schema, test.take(np.arange(0)), test, train_source="the clients' own rows (a deployment)",
                test_source=f"{spec.test} ({len(test)} rows)", test_digest=_digest(Path(spec.test)),
                notes=(note,) if note else ())  # fmt: skip


def _from_files(spec: TaskSpec) -> Task:
    from fedready.contract import contract_refusal, empty_columns

    schema = load_schema(spec.schema)
    encoder = FeatureEncoder(schema)
    raw = read_csv(spec.data, schema)
    refusal = contract_refusal(raw, schema, data=spec.data, schema_path=spec.schema)
    if refusal is not None:  # what every deployed client checks before it trains
        raise ConfigError("data", refusal)
    train, note = _labelled(raw, schema)
    notes = [note] if note else []
    notes += empty_columns(train, schema)
    _check_classes(train, schema)
    x_train = _encode(encoder, train)  # a bad value fails here, naming its line, before any training starts
    if spec.test:
        test, note = _labelled(read_csv(spec.test, schema), schema)
        notes += [note] if note else []
        x_test = _encode(encoder, test)
        test_source, test_digest = f"{spec.test} ({len(test)} rows)", _digest(Path(spec.test))
    else:
        fraction = spec.test_fraction or DEFAULT_TEST_FRACTION
        tr, te = _split(train.labels(schema), fraction)
        if len(te) == 0 or len(tr) == 0:
            raise ConfigError("test-fraction", f"{spec.data} has {len(train)} labelled rows: too few to hold out "
                                               f"{fraction:g} of them; pass --test test.csv")  # fmt: skip
        train, test, x_train, x_test = train.take(tr), train.take(te), x_train[tr], x_train[te]
        test_source = f"a seeded, stratified {fraction:g} of {spec.data} ({len(te)} rows, never trained on)"
        test_digest = "sha256:" + hashlib.sha256(Path(spec.data).read_bytes() + f"|{fraction}".encode()).hexdigest()
        _check_classes(train, schema)
    task = Task(spec, schema, train, test, train_source=f"{spec.data} ({len(train)} rows)", test_source=test_source,
                test_digest=test_digest, notes=tuple(notes))  # fmt: skip
    task.__dict__.update(encoder=encoder, x_train=x_train, x_test=x_test)  # the cached properties, computed once
    return task


def _stamp(path: str) -> tuple[str, int, int]:
    if not path:
        return ("", 0, 0)
    try:
        st = Path(path).stat()
    except OSError:
        return (path, 0, 0)  # read_csv / load_schema say what is wrong
    return (path, st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=4)
def _load(spec: TaskSpec, _stamps: tuple[tuple[str, int, int], ...]) -> Task:
    task = _embedded(spec) if spec.embedded else _server_only(spec) if spec.server_only else _from_files(spec)
    for note in task.notes:
        log.warning(note)
    return task


def load_task(spec: TaskSpec | None = None) -> Task:
    """Build (or reuse, per process) the task of ``spec``; the embedded data set when None.

    The cache is keyed by the spec and the files' modification times and sizes, so a changed
    file is read again.

    Raises
    ------
    ConfigError
        For a missing or malformed file (naming the file, the line and the fix), an undeclared
        label, or a target with a single class.
    """
    spec = spec or TaskSpec()
    return _load(spec, tuple(_stamp(p) for p in (spec.data, spec.schema, spec.test)))


def data_digest(spec: TaskSpec) -> str:
    """``sha256:`` over the bytes of every data file the task reads (the embedded data set: its published checksums)."""
    paths = [Path(p) for p in (spec.data, spec.test) if p]
    h = hashlib.sha256()
    if not paths:
        from fedready.datasets import adult

        h.update(json.dumps(adult.ADULT_SHA256, sort_keys=True).encode())  # verified on every load
    for p in paths:
        h.update(p.name.encode() + b"\0")
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return "sha256:" + h.hexdigest()


def task_of(cfg: Any) -> Task:
    """The task of a run configuration (:class:`~fedready.config.SimulationConfig`)."""
    return load_task(TaskSpec.from_config(cfg))


def task_from_dict(values: dict[str, Any]) -> Task:
    """The task of a run's recorded config (``config.json``'s ``config``); older runs lack the keys."""
    names = {f.name for f in fields(TaskSpec)}
    return load_task(TaskSpec(**{k: v for k, v in values.items() if k in names and v is not None}))
