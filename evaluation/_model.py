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
from fedready.encoding import FeatureEncoder
from fedready.errors import ConfigError, IntegrityError
from fedready.modelio import arrays_digest, load_npz
from fedready.models import create_model
from fedready.schema import DataSchema

__all__ = ["RunModel", "check_width", "load_run", "model_from_arrays"]


def check_width(arrays: dict[str, np.ndarray], schema: DataSchema) -> None:
    """Raise ConfigError if the model's input width differs from what ``schema`` encodes."""
    width = FeatureEncoder(schema).width
    first = next(v for k, v in arrays.items() if k.endswith("weight"))
    if first.shape[1] != width:
        raise ConfigError("schema", f"the model takes {first.shape[1]} inputs but schema '{schema.name}' "
                                    f"encodes {width}; pass the schema the model was trained with")  # fmt: skip


def model_from_arrays(name: str, arrays: dict[str, np.ndarray]) -> nn.Module:
    """Build the registered model ``name`` and load ``arrays`` into it (input width from the first layer)."""
    first = next(k for k in arrays if k.endswith("weight"))
    model = create_model(name, int(arrays[first].shape[1]))
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()})
    return model.eval()


@dataclass
class RunModel:
    """A run's configuration, summary and global model, with batch prediction helpers."""

    run_dir: Path
    cfg: SimulationConfig
    summary: dict[str, Any]
    arrays: dict[str, np.ndarray]
    module: nn.Module

    @property
    def digest(self) -> str:
        """``sha256:<hex>`` of the model arrays (as in ``summary.json``)."""
        return arrays_digest(self.arrays)

    @torch.no_grad()
    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Probability of the positive class for each row of the encoded matrix ``x``."""
        logits = self.module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        return torch.softmax(logits, dim=1)[:, 1].numpy().astype(np.float64)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Hard 0/1 decisions (argmax of the two logits)."""
        return (self.predict_proba(x) > 0.5).astype(np.int64)


def load_run(run_dir: str | Path) -> RunModel:
    """Load ``config.json``, ``summary.json`` and ``model.npz`` from a finished run folder.

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
    return RunModel(run_dir, cfg, summary, arrays, model_from_arrays(cfg.model, arrays))
