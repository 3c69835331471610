"""The embedded federation: Adult split into seeded client shards plus a server holdout.

Each process builds the split once (cached); a client reads only its own shard.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from fedready.config import SimulationConfig
from fedready.data import adult_schema, load_adult
from fedready.encoding import FeatureEncoder
from fedready.errors import ConfigError
from fedready.simulations.partitioners import create_partitioner

__all__ = [
    "ClientShard",
    "client_shard",
    "client_train_columns",
    "client_validation_attributes",
    "holdout",
    "partition_sizes",
]


@dataclass(frozen=True)
class ClientShard:
    """One client's local data, already encoded."""

    partition_id: int
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


@lru_cache(maxsize=1)
def _encoded_train() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    schema = adult_schema()
    table = load_adult("train")
    x = FeatureEncoder(schema).transform(table.columns)
    return x, table.labels(schema), {a: table.columns[a] for a in schema.sensitive}


@lru_cache(maxsize=4)
def _partitions(
    num_clients: int, partitioner: str, alpha: float, attribute: str, seed: int, min_rows: int
) -> list[np.ndarray]:
    _, y, attrs = _encoded_train()
    part = create_partitioner(partitioner, alpha=alpha, attribute=attribute, min_size=min_rows)
    return part.partition(labels=y, attributes=attrs, num_partitions=num_clients, seed=seed)


def _local_split(cfg: SimulationConfig, partition_id: int) -> tuple[np.ndarray, np.ndarray]:
    idx = _partitions(cfg.num_clients, cfg.partitioner, cfg.alpha, cfg.skew_attribute, cfg.seed, cfg.min_client_rows)[
        partition_id
    ]
    rng = np.random.default_rng([cfg.seed, partition_id])
    perm = rng.permutation(idx)
    n_val = int(round(len(perm) * cfg.val_fraction))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def client_shard(cfg: SimulationConfig, partition_id: int) -> ClientShard:
    """Return the encoded local train/validation split of client ``partition_id``."""
    if not 0 <= partition_id < cfg.num_clients:
        raise ConfigError("partition-id", f"must be in [0, {cfg.num_clients}), got {partition_id}")
    x, y, _ = _encoded_train()
    tr, va = _local_split(cfg, partition_id)
    return ClientShard(partition_id, x[tr], y[tr], x[va], y[va])


def client_validation_attributes(cfg: SimulationConfig, partition_id: int) -> dict[str, np.ndarray]:
    """Raw values of every sensitive attribute on client ``partition_id``'s validation rows."""
    if not 0 <= partition_id < cfg.num_clients:
        raise ConfigError("partition-id", f"must be in [0, {cfg.num_clients}), got {partition_id}")
    _, _, attrs = _encoded_train()
    _, va = _local_split(cfg, partition_id)
    return {a: v[va] for a, v in attrs.items()}


@lru_cache(maxsize=1)
def _train_table() -> dict[str, np.ndarray]:
    return load_adult("train").columns


def client_train_columns(cfg: SimulationConfig, partition_id: int) -> dict[str, np.ndarray]:
    """Raw values of every column on client ``partition_id``'s training rows (for its reference profile)."""
    if not 0 <= partition_id < cfg.num_clients:
        raise ConfigError("partition-id", f"must be in [0, {cfg.num_clients}), got {partition_id}")
    tr, _ = _local_split(cfg, partition_id)
    return {k: v[tr] for k, v in _train_table().items()}


def partition_sizes(cfg: SimulationConfig) -> list[int]:
    """Return each client's number of local training rows."""
    return [len(_local_split(cfg, i)[0]) for i in range(cfg.num_clients)]


@lru_cache(maxsize=1)
def holdout() -> tuple[np.ndarray, np.ndarray]:
    """Return the server's public holdout: Adult's test split, encoded."""
    schema = adult_schema()
    table = load_adult("test")
    return FeatureEncoder(schema).transform(table.columns), table.labels(schema)
