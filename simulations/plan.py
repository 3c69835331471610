"""The training plan: defaults chosen from what the task declares and what the clients hold.

DP-SGD adds Gaussian noise of std ``z C / B`` to each step's mean gradient (``z`` the noise
multiplier calibrated for the budget, ``C`` the clipping bound, ``B`` the expected batch), and
the noise of every step stays in the model. Summed over the ``T = rounds x steps`` local steps of
one client and averaged over ``K`` clients, each weight of the final model carries noise of std
about ``lr_rms sqrt(T) z C / (B sqrt(K))`` (:func:`final_noise`; ``lr_rms`` the root mean
square of the local rate over the rounds). On few rows ``B`` is small and ``z`` large (a client
of 300 rows has no subsampling to amplify its privacy), so the rate that suits the embedded data
leaves ten times as much noise in the model as signal: it ends at or below the majority rate.

The plan keeps that noise at the level the embedded data's defaults leave
(:data:`REFERENCE_NOISE`) by lowering the local rate, and picks the model by rows per client.
It reads only what a coordinator knows before training (the task's classes and features, the
number of clients, the row counts of its own simulation) and the privacy accounting; nothing is
tuned on a client's rows, so it costs no privacy. A user's own ``--model`` or ``--lr`` is kept.

Measured on five small tables (docs/guides/researcher.md, "The training plan"; ``benchmarks/small_data.py``): the plan
beat the default rate on every one, by 3 to 21 points, and none ended below the majority rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from fedready.client.app import planned_query_release
from fedready.client.training import poisson_plan
from fedready.config import SimulationConfig, make_config
from fedready.models import BUILTIN_MODELS, model_for_schema
from fedready.privacy.accounting import calibrate_with_releases
from fedready.schema import DataSchema

__all__ = ["LARGE_MODEL_ROWS", "NOISE_NORM", "TrainingPlan", "final_noise", "plan_training"]

LARGE_MODEL_ROWS = 2000  # training rows per client below which DP noise swamps an MLP: logreg then
# The DP noise norm the small-data plan allows on the final model's weights: the best of the rates
# tried on four small tables (docs/guides/researcher.md, "The training plan": the best of three rates on each sat at a
# norm of 3.8 to 7.0; 0.3 per weight on a 302-weight logistic regression is 5.2).
NOISE_NORM = 6.0


def final_noise(cfg: SimulationConfig, rows: float, *, clients: int | None = None) -> float:
    """The std of the DP noise each weight of ``cfg``'s final model carries, for clients of ``rows`` rows.

    ``rows`` are one client's training rows (after its validation share); the clients' noises are
    independent, so the average over ``clients`` (default ``cfg.num_clients`` times the share
    trained per round) divides it by ``sqrt(clients)``.
    """
    rate, batch, batches = poisson_plan(max(1, int(rows)), cfg.batch_size)
    steps = cfg.local_steps or cfg.local_epochs * batches
    z = calibrate_with_releases(target_epsilon=cfg.epsilon, target_delta=cfg.delta, sample_rate=rate,
                                steps=cfg.planned_rounds * steps,
                                releases=[(cfg.count_noise, 1.0, 1), planned_query_release(cfg)],
                                accountant=cfg.accountant)  # fmt: skip
    rounds = range(1, cfg.rounds + 1)
    lr_rms = math.sqrt(sum(cfg.lr_at(r) ** 2 for r in rounds) / cfg.rounds)
    k = clients if clients is not None else max(1.0, cfg.num_clients * cfg.fraction_train)
    return lr_rms * math.sqrt(cfg.rounds * steps) * z * cfg.max_grad_norm / (batch * math.sqrt(k))


@dataclass(frozen=True)
class TrainingPlan:
    """What :func:`plan_training` chose: the options to add, and one line saying why."""

    options: dict[str, Any]
    note: str
    rows_per_client: float
    noise_norm: float | None  # DP noise norm of the final model's weights, planned options (None: no DP, own model)


def plan_training(given: dict[str, Any], *, train_rows: int, schema: DataSchema) -> TrainingPlan:
    """Fill the model and the local rate the user left unset, from rows per client.

    ``given`` are the simulation options as the user passed them (config field names);
    ``train_rows`` the rows the clients share. Returns only what it chose; an option in
    ``given`` is never changed. Under DP, below :data:`LARGE_MODEL_ROWS` training rows per client,
    the model is ``logreg`` and its rate is lowered until the noise the final model carries
    (:func:`final_noise` per weight, times the square root of the number of weights) is at most
    :data:`NOISE_NORM`; not for another model, nor under client-level DP (not measured there). At
    and above it the defaults stand, as on the embedded data at its default 10 clients.
    """
    clients = int(given.get("num_clients", SimulationConfig.model_fields["num_clients"].default))
    val = float(given.get("val_fraction", SimulationConfig.model_fields["val_fraction"].default))
    per_client = train_rows / max(1, clients) * (1.0 - val)
    chosen: dict[str, Any] = {}
    why: list[str] = []
    small = per_client < LARGE_MODEL_ROWS
    dp = given.get("dp", True) is not False
    if given.get("model") is None and small and dp:  # else the default, mlp (the rule was measured under DP)
        chosen["model"] = "logreg"
        why.append(f"model logreg (the mlp needs about {LARGE_MODEL_ROWS} rows per client under DP)")
    cfg = make_config(**{k: v for k, v in {**given, **chosen}.items() if v is not None})
    weights = _weights(cfg.model, schema)
    if not cfg.dp or weights is None:
        return TrainingPlan(chosen, _line(why, per_client, clients, schema), per_client, None)
    noise = final_noise(cfg, per_client) * math.sqrt(weights)
    # The rate rule was measured on logreg with sample-level DP only: under client-level DP a smaller rate
    # shrinks the update against the client-level noise, which does not shrink with it.
    if small and given.get("lr") is None and noise > NOISE_NORM and cfg.model == "logreg" and cfg.client_dp == "off":
        lr = _floor2(cfg.lr * NOISE_NORM / noise)
        planned = final_noise(make_config(**{**cfg.model_dump(), "lr": lr}), per_client) * math.sqrt(weights)
        why.append(f"lr {lr:g} (at the default {cfg.lr:g} the final model's {weights} weights would carry DP noise "
                   f"of norm {noise:.0f}; at {lr:g}, {planned:.1f})")  # fmt: skip
        chosen["lr"], noise = lr, planned
    return TrainingPlan(chosen, _line(why, per_client, clients, schema), per_client, noise)


def _weights(model: str, schema: DataSchema) -> int | None:
    """The number of trained weights of a built-in model (None for a user's factory: no rule for it)."""
    if model not in BUILTIN_MODELS:
        return None
    return sum(p.numel() for p in model_for_schema(model, schema).parameters())


def _floor2(x: float) -> float:
    """``x`` rounded down to two significant digits (a rate is a choice; down keeps the noise under the bound)."""
    scale = 10.0 ** (math.floor(math.log10(x)) - 1)
    return float(f"{math.floor(x / scale + 1e-9) * scale:.2g}") if x > 0 else x


def _line(why: list[str], per_client: float, clients: int, schema: DataSchema) -> str:
    if not why:
        return ""
    return (f"plan for {clients} clients of about {per_client:.0f} training rows, {schema.target.num_classes} "
            f"classes: {'; '.join(why)}; pass --model or --lr to choose")  # fmt: skip
