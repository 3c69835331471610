"""A run folder with an untrained model, for demos, benchmarks and tests (NumPy only, no Ray, no torch)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fedready.config import make_config
from fedready.constants import LEDGER_FILE
from fedready.encoding import FeatureEncoder
from fedready.modelio import arrays_digest, save_npz
from fedready.task import load_task

__all__ = ["write_demo_run"]


def write_demo_run(run: Path, *, seed: int = 0, hidden: int = 16) -> Path:
    """Write ``run`` as ``fedready simulate`` leaves it, holding a randomly initialised MLP.

    Files: ``model.npz`` (the ``mlp`` layout: ``0.weight``, ``0.bias``, ``2.weight``,
    ``2.bias``), ``config.json``, ``summary.json`` (with the model digest) and ``ledger.json``.
    """
    run = Path(run)
    run.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    width = FeatureEncoder(load_task().schema).width  # the embedded data set's task
    arrays = {
        "0.weight": rng.normal(0, 1 / np.sqrt(width), (hidden, width)).astype(np.float32),
        "0.bias": np.zeros(hidden, np.float32),
        "2.weight": rng.normal(0, 1 / np.sqrt(hidden), (2, hidden)).astype(np.float32),
        "2.bias": np.zeros(2, np.float32),
    }
    cfg = make_config(rounds=3, seed=seed)
    (run / "model.npz").write_bytes(save_npz(arrays))
    (run / "config.json").write_text(json.dumps({"config": cfg.model_dump()}, sort_keys=True))
    summary = {"run_id": run.name, "model_digest": arrays_digest(arrays), "accuracy": None, "epsilon": None}
    (run / "summary.json").write_text(json.dumps(summary, sort_keys=True))
    # no release at all (the model saw no data), so nothing voids the guarantee: private, as a ledger states it
    ledger = {"accountant": "rdp", "delta": 1e-5, "dp": True, "epsilon": None, "clients": {}, "entries": [],
              "declines": [], "private": True, "insecure_seeded_noise": False, "caveats": []}  # fmt: skip
    (run / LEDGER_FILE).write_text(json.dumps(ledger, sort_keys=True))
    _write_profile(run, arrays)
    return run


def _write_profile(run: Path, arrays: dict[str, np.ndarray]) -> None:
    """The reference profile of the demo model on the embedded training rows (exact counts, one 'client')."""
    from fedready.monitoring import NoiseRecord, count_rows, profile_document

    schema, table = load_task().schema, load_task().train
    x = FeatureEncoder(schema).transform(table.columns).astype(np.float64)
    hidden = np.maximum(x @ arrays["0.weight"].T + arrays["0.bias"], 0.0)
    logits = hidden @ arrays["2.weight"].T + arrays["2.bias"]
    proba = 1.0 / (1.0 + np.exp(logits[:, 0] - logits[:, 1]))  # softmax of two logits
    counts = count_rows(schema, table.columns, scores=proba, predictions=(proba >= 0.5).astype(np.int64),
                        labels=table.labels(schema))  # fmt: skip
    doc = profile_document(schema, counts, NoiseRecord("none"), model_digest=arrays_digest(arrays), clients=1)
    (run / "reference_profile.json").write_text(json.dumps(doc, sort_keys=True))
