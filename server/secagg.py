"""The server half of secure aggregation: Flower's SecAgg+ workflow with fedready's bookkeeping.

In Flower 1.42 SecAgg+ runs through the legacy ``DefaultWorkflow`` +
``SecAggPlusWorkflow`` path and a legacy strategy. The workflow reconstructs only
the (weighted) sum of the clients' masked vectors; every ``FitRes`` the strategy
sees carries that same aggregate, never an individual update. Client-level DP uses
client-side clipping (the server cannot clip what it cannot see) and Flower's
legacy ``DifferentialPrivacyClientSideFixedClipping`` wrapper, which adds the
noise to the unmasked aggregate.

Parameters of the protocol are validated by :func:`fedready.config.make_config`:
``secagg_shares`` (each client's secret is split among this many neighbours),
``secagg_threshold`` (shares needed to reconstruct; up to ``shares - threshold``
dropouts are tolerated, and fewer than ``threshold`` colluding neighbours learn
nothing), ``secagg_clip_range`` and ``secagg_quantization`` (values are clipped to
``+-clip_range`` and quantised to that many levels before masking).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, Context
from flwr.common import FitRes, Parameters, Scalar, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import LegacyContext, ServerConfig
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import DifferentialPrivacyClientSideFixedClipping
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.serverapp import Grid

from fedready import constants as K
from fedready.audit import AuditLog
from fedready.config import SimulationConfig
from fedready.modelio import arrays_digest
from fedready.models import create_model
from fedready.privacy.accounting import compose_epsilon
from fedready.privacy.ledger import Ledger, LedgerEntry
from fedready.server.app import (
    RoundReport,
    _append_metrics,
    _Checkpointer,
    _evaluate,
    client_noise_multiplier,
    write_summary,
)
from fedready.server.strategies import sampled_clients
from fedready.simulations.federated import holdout

__all__ = ["run_secagg_rounds"]

log = logging.getLogger(__name__)


class _BookkeepingFedAvg(LegacyFedAvg):
    """Flower's legacy FedAvg that hands each round's results to fedready's ledger first."""

    def __init__(self, *, on_fit: Callable[[int, list, list], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._on_fit = on_fit

    def aggregate_fit(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures: list[Any]
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        self._on_fit(server_round, results, failures)
        return super().aggregate_fit(server_round, results, failures)


def run_secagg_rounds(
    grid: Grid, context: Context, cfg: SimulationConfig, run_dir: Path,
    *, on_round: Callable[[RoundReport], None] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Run (or resume) ``cfg`` with SecAgg+; same run folder, ledger and audit log as ``run_rounds``."""
    t0 = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = _Checkpointer(run_dir)
    audit = AuditLog(run_dir / "audit.jsonl")
    state = ckpt.load()
    if state is None:
        model = create_model(cfg.model, holdout()[0].shape[1], seed=cfg.seed)
        current = {k: v.numpy() for k, v in model.state_dict().items()}
        ledger = Ledger(run_id=run_dir.name, delta=cfg.delta, target_epsilon=cfg.epsilon if cfg.dp else None,
                        accountant=cfg.accountant, dp=cfg.dp)  # fmt: skip
        offset = 0
        audit.append("run-started", run=run_dir.name, config=cfg.model_dump())
    else:
        offset, current, ledger = state
        audit.append("run-resumed", run=run_dir.name, after_round=offset)
    names = list(current)
    z = client_noise_multiplier(cfg)
    m = sampled_clients(cfg)
    q_clients = m / cfg.num_clients
    book: dict[str, Any] = {"report": None, "first": True, "accuracy": float("nan"), "loss": float("nan"),
                            "t": time.perf_counter()}  # fmt: skip

    def on_fit(r: int, results: list[tuple[ClientProxy, FitRes]], failures: list[Any]) -> None:
        server_round = offset + r
        report = RoundReport(round=server_round, accuracy=float("nan"), loss=float("nan"), epsilon=0.0, sampled=m)
        received = set()
        for _, res in results:
            mt = res.metrics
            client = str(int(mt[K.PARTITION_ID]))
            report.trained.append(client)
            if cfg.dp:
                ledger.record(LedgerEntry(
                    round=server_round, client=client, noise_multiplier=float(mt[K.NOISE_MULTIPLIER]),
                    sample_rate=float(mt[K.SAMPLE_RATE]), steps=int(mt[K.STEPS]), accountant=cfg.accountant,
                    delta=float(mt[K.DELTA]), epsilon=float(mt[K.EPSILON]),
                ))  # fmt: skip
            received.add(arrays_digest(dict(zip(names, parameters_to_ndarrays(res.parameters), strict=True))))
        report.trained.sort()
        report.failed = [{"client": "?", "reason": str(f)} for f in failures]
        # What the server-side strategy was handed: one vector, the unmasked aggregate.
        audit.append("secagg-aggregate", round=server_round, clients=report.trained, received=sorted(received))
        book["report"] = report

    def evaluate_fn(r: int, parameters: list[np.ndarray], config: dict[str, Scalar]) -> tuple[float, dict] | None:
        if r == 0:
            return None
        server_round = offset + r
        report = book["report"] or RoundReport(round=server_round, accuracy=float("nan"), loss=float("nan"),
                                               epsilon=0.0, sampled=m, skipped=True)  # fmt: skip
        book["report"] = None
        arrays = dict(zip(names, parameters, strict=True))
        if z is not None and report.trained:
            z_eff = z * len(report.trained) / m
            eps = compose_epsilon(ledger.client_level_history() + [(z_eff, q_clients, 1)], delta=cfg.client_delta,
                                  accountant=cfg.accountant)  # fmt: skip
            ledger.record(LedgerEntry(round=server_round, client="*", noise_multiplier=z_eff, sample_rate=q_clients,
                                      steps=1, accountant=cfg.accountant, delta=cfg.client_delta, epsilon=eps,
                                      level="client"))  # fmt: skip
        record = ArrayRecord({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()})
        loss, accuracy = _evaluate(cfg, record)
        report.accuracy, report.loss, report.epsilon = accuracy, loss, ledger.epsilon
        report.client_epsilon = ledger.client_level_epsilon
        report.seconds = time.perf_counter() - book["t"]
        _append_metrics(run_dir / "metrics.jsonl", report, keep_through=offset if book["first"] else None)
        ckpt.save(server_round, arrays, ledger)  # after the metrics line, as in server.app
        audit.append("round-finished", round=server_round, accuracy=accuracy, epsilon=ledger.epsilon,
                     client_epsilon=ledger.client_level_epsilon, accepted=len(report.trained))  # fmt: skip
        book.update(first=False, accuracy=accuracy, loss=loss, current=arrays, t=time.perf_counter())
        if on_round is not None:
            on_round(report)
        return loss, {"accuracy": accuracy}

    remaining = cfg.rounds - offset
    if remaining > 0:
        strategy: Any = _BookkeepingFedAvg(
            on_fit=on_fit, fraction_fit=cfg.fraction_train, fraction_evaluate=0.0, min_fit_clients=m,
            min_evaluate_clients=0, min_available_clients=cfg.num_clients, evaluate_fn=evaluate_fn,
            on_fit_config_fn=lambda r: {K.SERVER_ROUND: offset + r},
            initial_parameters=ndarrays_to_parameters([current[k] for k in names]),
        )  # fmt: skip
        if z is not None:
            strategy = DifferentialPrivacyClientSideFixedClipping(strategy, z, cfg.client_clip, m)
        workflow = DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(
            num_shares=cfg.secagg_shares, reconstruction_threshold=cfg.secagg_threshold,
            clipping_range=cfg.secagg_clip_range, quantization_range=cfg.secagg_quantization,
            max_weight=1.0 if z is not None else 100_000.0, timeout=cfg.round_timeout,
        ))  # fmt: skip
        legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=remaining,
                               round_timeout=cfg.round_timeout), strategy=strategy)  # fmt: skip
        workflow(grid, legacy)
    final = book.get("current", current)
    accuracy, loss = book["accuracy"], book["loss"]
    if book["first"]:
        record = ArrayRecord({k: torch.from_numpy(np.array(v)) for k, v in final.items()})
        loss, accuracy = _evaluate(cfg, record)
    return write_summary(cfg, run_dir, final, ledger, audit, accuracy=accuracy, loss=loss, noise_multiplier=z,
                         stopped="", resumed_from=offset, t0=t0)  # fmt: skip
