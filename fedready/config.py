"""Algorithm configuration for a simulated federated run (units in comments).

One pydantic model validated on construction: a bad value raises
:class:`~fedready.errors.ConfigError` naming the field and the fix. The same
values travel to Flower as a flat run config (``to_run_config``), so a run
started with ``fedready simulate`` and one started with ``flwr run .`` read the
same keys.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fedready.errors import ConfigError

__all__ = ["SimulationConfig", "make_config"]


class SimulationConfig(BaseModel):
    """Everything that determines a simulated run's result."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # federation
    num_clients: int = Field(10, ge=1)  # virtual SuperNodes, one data shard each
    rounds: int = Field(50, ge=1)  # server rounds to run
    budget_rounds: int | None = Field(None, ge=1)  # rounds the DP budget is planned over (default: rounds)
    fraction_train: float = Field(1.0, gt=0, le=1)  # share of clients sampled per round
    # data
    partitioner: str = "dirichlet"  # iid | dirichlet | sensitive | quantity
    alpha: float = Field(0.5, gt=0)  # Dirichlet concentration (smaller = more skew)
    skew_attribute: str = "sex"  # for partitioner=sensitive
    val_fraction: float = Field(0.1, ge=0, lt=1)  # each client's local validation share
    seed: int = 0
    # model and local training
    model: str = "mlp"
    local_epochs: int = Field(1, ge=1)  # epochs per round (when local_steps is unset)
    local_steps: int | None = Field(3, ge=1)  # fixed SGD steps per round (None: local_epochs); less drift under skew
    batch_size: int = Field(1024, ge=1)  # expected Poisson batch (rows)
    lr: float = Field(6.0, gt=0)  # local SGD learning rate at round 1
    lr_schedule: Literal["constant", "cosine"] = "cosine"  # decay of the local rate over the planned rounds
    momentum: float = Field(0.0, ge=0, lt=1)
    # sample-level differential privacy (per client, for the whole training)
    dp: bool = True
    epsilon: float = 1.0  # target epsilon after all planned rounds
    delta: float = 1e-5  # must be < 1/n for every client's n training rows
    max_grad_norm: float = Field(1.0, gt=0)  # per-sample clipping bound C
    accountant: str = "rdp"  # rdp | prv

    @field_validator("epsilon")
    @classmethod
    def _eps(cls, v: float) -> float:
        if not v > 0:
            raise ValueError("must be > 0 (a privacy budget); pass e.g. --epsilon 1.0, or --no-dp")
        return v

    @field_validator("delta")
    @classmethod
    def _delta(cls, v: float) -> float:
        if not 0 < v < 1:
            raise ValueError("must be in (0, 1) and below 1/n; pass e.g. --delta 1e-5")
        return v

    @field_validator("accountant")
    @classmethod
    def _acct(cls, v: str) -> str:
        if v not in ("rdp", "prv"):
            raise ValueError(f"unknown accountant '{v}'; expected one of: rdp, prv")
        return v

    @property
    def planned_rounds(self) -> int:
        """Rounds over which each client spreads its privacy budget."""
        return self.budget_rounds or self.rounds

    def lr_at(self, server_round: int) -> float:
        """Local learning rate for ``server_round`` (1-based): cosine decay over the planned rounds."""
        if self.lr_schedule == "constant":
            return self.lr
        progress = min(server_round - 1, self.planned_rounds) / self.planned_rounds
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * progress))

    def to_run_config(self) -> dict[str, Any]:
        """Return the flat Flower run config (hyphenated keys; unset values left out)."""
        return {k.replace("_", "-"): v for k, v in self.model_dump().items() if v is not None}

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> SimulationConfig:
        """Build from a Flower run config, ignoring keys that are not ours."""
        known = set(cls.model_fields)
        kw = {k.replace("-", "_"): v for k, v in run_config.items()}
        return make_config(**{k: v for k, v in kw.items() if k in known})


def make_config(**values: Any) -> SimulationConfig:
    """Build a :class:`SimulationConfig`, turning validation errors into ``ConfigError``.

    Raises
    ------
    ConfigError
        Naming the first invalid field, what was wrong and how to fix it.
    """
    try:
        return SimulationConfig(**values)
    except ValidationError as e:
        err = e.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else "config"
        msg = str(err["msg"]).removeprefix("Value error, ")
        got = err.get("input")
        raise ConfigError(field.replace("_", "-"), f"{msg} (got {got!r})") from e
