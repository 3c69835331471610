"""A federation over a task's rows: seeded client shards, each with a local validation split.

Simulated clients and the server call these with the run's configuration; every process
builds the task and the split once (cached). A client reads only its own shard. Deployed
clients read their own CSV instead (:mod:`fedready.client.site`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from fedready.config import SimulationConfig
from fedready.errors import ConfigError
from fedready.partition import create_partitioner
from fedready.task import Task, TaskSpec, load_task, task_of

__all__ = [
    "CONFIG_FILE",
    "SCHEMA_FILE",
    "ClientShard",
    "client_shard",
    "client_train_columns",
    "client_validation_attributes",
    "data_digest",
    "holdout",
    "partition_sizes",
    "record_run",
    "task_of",
]

CONFIG_FILE = "config.json"  # the run's configuration (every later command rebuilds the task from it)
SCHEMA_FILE = "schema.json"  # what the model's inputs and outputs mean


@dataclass(frozen=True)
class ClientShard:
    """One client's local data, already encoded."""

    partition_id: int
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


@lru_cache(maxsize=4)
def _partitions(
    spec: TaskSpec, num_clients: int, partitioner: str, alpha: float, attribute: str, seed: int, min_rows: int
) -> list[np.ndarray]:
    task = load_task(spec)
    part = create_partitioner(partitioner, alpha=alpha, attribute=attribute, min_size=min_rows)
    return part.partition(labels=task.y_train, attributes=task.train_groups, num_partitions=num_clients, seed=seed)


def _local_split(cfg: SimulationConfig, partition_id: int) -> tuple[np.ndarray, np.ndarray]:
    if not 0 <= partition_id < cfg.num_clients:
        raise ConfigError("partition-id", f"must be in [0, {cfg.num_clients}), got {partition_id}")
    parts = _partitions(TaskSpec.from_config(cfg), cfg.num_clients, cfg.partitioner, cfg.alpha,
                        cfg.skew_attribute or "", cfg.seed, cfg.min_client_rows)  # fmt: skip
    rng = np.random.default_rng([cfg.seed, partition_id])
    perm = rng.permutation(parts[partition_id])
    n_val = int(round(len(perm) * cfg.val_fraction))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def client_shard(cfg: SimulationConfig, partition_id: int) -> ClientShard:
    """Return the encoded local train/validation split of client ``partition_id``."""
    task = task_of(cfg)
    tr, va = _local_split(cfg, partition_id)
    return ClientShard(partition_id, task.x_train[tr], task.y_train[tr], task.x_train[va], task.y_train[va])


def client_validation_attributes(cfg: SimulationConfig, partition_id: int) -> dict[str, np.ndarray]:
    """Raw values of every sensitive attribute on client ``partition_id``'s validation rows."""
    task = task_of(cfg)
    _, va = _local_split(cfg, partition_id)
    return {a: task.train.columns[a][va] for a in task.schema.sensitive}


def client_train_columns(cfg: SimulationConfig, partition_id: int) -> dict[str, np.ndarray]:
    """Raw values of every column on client ``partition_id``'s training rows (for its reference profile)."""
    tr, _ = _local_split(cfg, partition_id)
    return {k: v[tr] for k, v in task_of(cfg).train.columns.items()}


def partition_sizes(cfg: SimulationConfig) -> list[int]:
    """Return each client's number of local training rows."""
    return [len(_local_split(cfg, i)[0]) for i in range(cfg.num_clients)]


def holdout(cfg: SimulationConfig) -> tuple[np.ndarray, np.ndarray]:
    """Return the server's public holdout (the task's benchmark rows), encoded, and its labels."""
    task: Task = task_of(cfg)
    return task.x_test, task.y_test


def data_digest(cfg: SimulationConfig) -> str:
    """``sha256:`` over every data file the run reads (recorded in config.json, checked on reproduce)."""
    from fedready.task import TaskSpec
    from fedready.task import data_digest as task_digest

    return task_digest(TaskSpec.from_config(cfg))


LAUNCHED_BY_SIMULATION = "fedready simulate"  # config.json's ``launched_by`` of a local simulation
LAUNCHED_BY_SERVER_APP = "ServerApp"  # ... of a run a ServerApp started (``flwr run``, possibly real clients)


def record_run(cfg: SimulationConfig, run_dir: Path, *, simulated: bool = False) -> None:
    """Write ``config.json`` (with the data digest) and ``schema.json`` into ``run_dir`` unless they are there.

    Every later step (evaluate, compress, package, reproduce) reads the task from them. Called
    by the simulation engine (``simulated=True``), and meant for any ServerApp that starts a run
    (``flwr run``). ``launched_by`` records which: ``fedready audit-privacy`` re-runs only a
    simulation's configuration (canaries never go near a deployment's clients).
    """
    import json

    from fedready.files import atomic_write_text

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / CONFIG_FILE).exists():
        launched_by = LAUNCHED_BY_SIMULATION if simulated else LAUNCHED_BY_SERVER_APP
        doc = {"config": cfg.model_dump(), "data_digest": data_digest(cfg), "launched_by": launched_by}
        atomic_write_text(run_dir / CONFIG_FILE, json.dumps(doc, indent=2, sort_keys=True) + "\n")
    if not (run_dir / SCHEMA_FILE).exists():
        atomic_write_text(run_dir / SCHEMA_FILE, json.dumps(task_of(cfg).schema.to_dict(), indent=2, sort_keys=True))
