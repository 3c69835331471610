"""A finished run's global model, loaded once for every evaluation suite."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedready.config import SimulationConfig
from fedready.errors import ConfigError, IntegrityError
from fedready.modelio import arrays_digest, load_npz
from fedready.models import model_for_schema
from fedready.schema import DataSchema

__all__ = ["RunModel", "check_width", "load_run", "model_from_arrays", "run_schema"]


def run_schema(run_dir: Path, cfg: SimulationConfig | None = None) -> DataSchema:
    """The schema a run was trained on: its ``schema.json``, else (older runs) its task's."""
    p = Path(run_dir) / "schema.json"
    if p.exists():
        return DataSchema.model_validate(json.loads(p.read_text()))
    from fedready.federation import task_of

    if cfg is None:
        from fedready.simulations.engine import load_run_config

        cfg = load_run_config(Path(run_dir))
    return task_of(cfg).schema


def check_width(arrays: dict[str, np.ndarray], schema: DataSchema, model: str = "mlp") -> None:
    """Raise ConfigError if the model's input width or classes differ from what ``schema`` encodes."""
    model_from_arrays(model, arrays, schema)


def model_from_arrays(name: str, arrays: dict[str, np.ndarray], schema: DataSchema) -> nn.Module:
    """Build the model ``name`` for ``schema`` and load ``arrays`` into it (evaluation mode).

    Raises
    ------
    ConfigError
        If the arrays do not fit (the model was trained on another schema).
    """
    return model_for_schema(name, schema, arrays=arrays)


@dataclass
class RunModel:
    """A run's configuration, summary and global model, with batch prediction helpers."""

    run_dir: Path
    cfg: SimulationConfig
    summary: dict[str, Any]
    arrays: dict[str, np.ndarray]
    module: nn.Module
    schema: DataSchema

    @property
    def digest(self) -> str:
        """``sha256:<hex>`` of the model arrays (as in ``summary.json``)."""
        return arrays_digest(self.arrays)

    @torch.no_grad()
    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities ``(rows, classes)`` for the encoded matrix ``x``."""
        logits = self.module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        return torch.softmax(logits, dim=1).numpy().astype(np.float64)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Hard decisions: the most probable class (binary: 1 = positive)."""
        return self.predict_proba(x).argmax(axis=1).astype(np.int64)


def load_run(run_dir: str | Path, *, schema: DataSchema | None = None) -> RunModel:
    """Load ``config.json``, ``summary.json`` and ``model.npz`` from a finished run folder.

    The model is shaped by ``schema`` when given (evaluating on a CSV of that schema), else by
    the schema the run was trained on (:func:`run_schema`).

    Raises
    ------
    ConfigError
        If the folder is not a finished fedready run.
    IntegrityError
        If ``model.npz`` does not match the digest recorded in ``summary.json``.
    """
    from fedready.simulations.engine import load_run_config

    run_dir = Path(run_dir)
    for name in ("config.json", "summary.json", "model.npz"):
        if not (run_dir / name).exists():
            raise ConfigError("run", f"{run_dir} holds no {name}; pass the folder of a finished fedready run")
    cfg = load_run_config(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    arrays = load_npz((run_dir / "model.npz").read_bytes())
    got = arrays_digest(arrays)
    if summary.get("model_digest") not in (None, got):
        raise IntegrityError(f"{run_dir / 'model.npz'}: sha256 {got} differs from summary.json's "
                             f"{summary['model_digest']}")  # fmt: skip
    schema = schema or run_schema(run_dir, cfg)
    return RunModel(run_dir, cfg, summary, arrays, model_from_arrays(cfg.model, arrays, schema), schema)
