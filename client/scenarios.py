"""Attack and fault scenarios for researchers: hostile, failing and slow clients.

Which clients attack, drop out or run slow is a seeded choice, so a scenario
replays exactly. Attacks act on the update a client releases:

========== ============================================================
sign-flip  send ``global - delta`` (gradient ascent; Damaskinos et al.)
scale      send ``global + s * delta`` (boosting, Bhagoji et al. 2019)
nan        send NaN everywhere (a broken client)
zero       send the global model back unchanged (a free rider)
label-flip train on ``1 - y`` (data poisoning)
========== ============================================================
"""

from __future__ import annotations

import numpy as np

from fedready.config import SimulationConfig

__all__ = ["ATTACKS", "ClientDropped", "apply_attack", "attackers", "drops_out", "is_slow"]

ATTACKS = ("none", "sign-flip", "scale", "nan", "zero", "label-flip")


class ClientDropped(RuntimeError):
    """Raised by a simulated client that drops out mid-round (before releasing anything)."""


def _chosen(cfg: SimulationConfig, fraction: float, salt: int) -> set[int]:
    k = int(round(fraction * cfg.num_clients))
    order = np.random.default_rng([cfg.seed, salt]).permutation(cfg.num_clients)
    return {int(i) for i in order[:k]}


def attackers(cfg: SimulationConfig) -> set[int]:
    """Partition ids of the attacking clients (fixed for the whole run)."""
    return _chosen(cfg, cfg.attack_fraction, 0xA77AC) if cfg.attack != "none" else set()


def is_slow(cfg: SimulationConfig, partition_id: int) -> bool:
    """Whether this client answers only after the round timeout."""
    # No permutation of every client id on each call when the scenario is off (10,000 clients).
    return cfg.slow_fraction > 0 and partition_id in _chosen(cfg, cfg.slow_fraction, 0x510)


def drops_out(cfg: SimulationConfig, partition_id: int, server_round: int) -> bool:
    """Whether this client drops out of this round (independently per round, seeded)."""
    if cfg.dropout <= 0:
        return False
    return bool(np.random.default_rng([cfg.seed, 0xD20, partition_id, server_round]).random() < cfg.dropout)


def apply_attack(
    attack: str, arrays: dict[str, np.ndarray], reference: dict[str, np.ndarray], *, scale: float
) -> dict[str, np.ndarray]:
    """Turn an honest client model into the attacker's (label-flip acts on data, not here)."""
    if attack == "sign-flip":
        return {k: (2 * reference[k] - v).astype(v.dtype) for k, v in arrays.items()}
    if attack == "scale":
        return {k: (reference[k] + scale * (v - reference[k])).astype(v.dtype) for k, v in arrays.items()}
    if attack == "nan":
        return {k: np.full_like(v, np.nan) for k, v in arrays.items()}
    if attack == "zero":
        return {k: reference[k].copy() for k in arrays}
    return arrays
