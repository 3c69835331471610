"""The fedready ServerApp: FedAvg rounds with a ledger, checkpoints and resume.

The round loop is written once here (configure -> send -> triage -> aggregate ->
evaluate -> checkpoint) around Flower's own ``FedAvg`` strategy. It differs from
``Strategy.start`` in what a product needs: it can start from a checkpointed
round, it treats a client that declines (budget spent) as a normal event, and it
writes the ledger, the per-round metrics and a checkpoint after every round.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedready import constants as K
from fedready._io import atomic_write_bytes, atomic_write_text
from fedready.client.training import evaluate
from fedready.config import SimulationConfig
from fedready.modelio import arrays_digest, load_npz, save_npz
from fedready.models import create_model
from fedready.privacy.ledger import Ledger, LedgerEntry
from fedready.simulations.federated import holdout

__all__ = ["RoundReport", "app", "make_server_app", "run_rounds"]

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.json"
KEEP_CHECKPOINTS = 2


@dataclass
class RoundReport:
    """What happened in one round (one line of ``metrics.jsonl``)."""

    round: int
    accuracy: float
    loss: float
    epsilon: float
    trained: list[str] = field(default_factory=list)
    declined: list[dict[str, str]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    replayed: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _client_id(msg: Message) -> str:
    metrics = msg.content.metric_records.get(K.METRICS) if not msg.has_error() else None
    if metrics is not None and K.PARTITION_ID in metrics:
        return str(int(metrics[K.PARTITION_ID]))
    return f"node-{msg.metadata.src_node_id}"


def _triage(replies: list[Message]) -> tuple[list[Message], list[Message], list[Message]]:
    """Split replies into (trained, declined, failed); trained sorted by client for a stable sum."""
    trained, declined, failed = [], [], []
    for m in replies:
        if m.has_error():
            failed.append(m)
        elif int(m.content[K.METRICS].get(K.DECLINED, 0)):
            declined.append(m)
        else:
            trained.append(m)
    trained.sort(key=_client_id)
    return trained, declined, failed


def _evaluate(cfg: SimulationConfig, arrays: ArrayRecord) -> tuple[float, float]:
    x, y = holdout()
    model = create_model(cfg.model, x.shape[1])
    model.load_state_dict(arrays.to_torch_state_dict())
    return evaluate(model, x, y)


class _Checkpointer:
    """Round-by-round state in the run folder, each file written whole or not at all."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)

    def load(self) -> tuple[int, dict[str, np.ndarray], Ledger] | None:
        p = self.dir / CHECKPOINT
        if not p.exists():
            return None
        meta = json.loads(p.read_text())
        arrays = load_npz((self.dir / meta["arrays"]).read_bytes())
        if arrays_digest(arrays) != meta["model_digest"]:
            raise RuntimeError(f"checkpoint {meta['arrays']} does not match its recorded digest; cannot resume")
        return int(meta["round"]), arrays, Ledger.from_dict(meta["ledger"])

    def save(self, server_round: int, arrays: dict[str, np.ndarray], ledger: Ledger) -> None:
        name = f"checkpoints/round-{server_round:04d}.npz"
        atomic_write_bytes(self.dir / name, save_npz(arrays))
        ledger.save(self.dir / "ledger.json")
        meta = {"round": server_round, "arrays": name, "model_digest": arrays_digest(arrays),
                "ledger": ledger.to_dict()}  # fmt: skip
        # The pointer is written last: a crash before this line leaves the previous round intact.
        atomic_write_text(self.dir / CHECKPOINT, json.dumps(meta, sort_keys=True))
        for old in sorted((self.dir / "checkpoints").glob("round-*.npz"))[:-KEEP_CHECKPOINTS]:
            old.unlink()


def _append_metrics(path: Path, report: RoundReport, keep_through: int | None = None) -> None:
    lines = path.read_text().splitlines() if path.exists() else []
    if keep_through is not None:
        lines = [ln for ln in lines if json.loads(ln)["round"] <= keep_through]
    lines.append(json.dumps(report.to_dict(), sort_keys=True))
    atomic_write_text(path, "\n".join(lines) + "\n")


def run_rounds(
    grid: Grid,
    cfg: SimulationConfig,
    run_dir: Path,
    *,
    on_round: Callable[[RoundReport], None] | None = None,
    timeout: float = 3600.0,
) -> dict[str, Any]:
    """Run (or resume) the federated training described by ``cfg`` in ``run_dir``.

    Returns
    -------
    dict
        The run summary, also written to ``summary.json``.
    """
    t0 = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = _Checkpointer(run_dir)
    state = ckpt.load()
    if state is None:
        x, _ = holdout()
        model = create_model(cfg.model, x.shape[1], seed=cfg.seed)
        arrays = ArrayRecord(model.state_dict())
        start = 1
        ledger = Ledger(run_id=run_dir.name, delta=cfg.delta, target_epsilon=cfg.epsilon if cfg.dp else None,
                        accountant=cfg.accountant, dp=cfg.dp)  # fmt: skip
        resumed_from = 0
    else:
        last, np_arrays, ledger = state
        arrays = ArrayRecord({k: torch.from_numpy(v) for k, v in np_arrays.items()})
        start, resumed_from = last + 1, last
        log.info("resuming %s after round %d", run_dir, last)

    strategy = FedAvg(
        fraction_train=cfg.fraction_train,
        fraction_evaluate=0.0,  # the server evaluates on its holdout; see _evaluate
        min_train_nodes=max(1, int(cfg.fraction_train * cfg.num_clients)),
        min_available_nodes=cfg.num_clients,
        weighted_by_key=K.NUM_EXAMPLES,
        arrayrecord_key=K.ARRAYS,
        configrecord_key=K.CONFIG,
    )
    metrics_path = run_dir / "metrics.jsonl"
    accuracy = loss = float("nan")
    first_write = True
    for server_round in range(start, cfg.rounds + 1):
        t_round = time.perf_counter()
        messages = strategy.configure_train(server_round, arrays, ConfigRecord(), grid)
        replies = list(grid.send_and_receive(messages=messages, timeout=timeout))
        trained, declined, failed = _triage(replies)
        report = RoundReport(round=server_round, accuracy=float("nan"), loss=float("nan"), epsilon=0.0)
        for m in declined:
            c = m.content[K.CONFIG]
            ledger.record_decline(round=server_round, client=_client_id(m), reason=str(c[K.REASON]),
                                  detail=str(c[K.DETAIL]))  # fmt: skip
            report.declined.append({"client": _client_id(m), "reason": str(c[K.REASON])})
        for m in failed:
            report.failed.append({"client": _client_id(m), "reason": m.error.reason})
        for m in trained:
            mr = m.content[K.METRICS]
            report.trained.append(_client_id(m))
            if int(mr.get(K.REPLAYED, 0)):
                report.replayed.append(_client_id(m))
            if cfg.dp:
                ledger.record(LedgerEntry(
                    round=server_round, client=_client_id(m), noise_multiplier=float(mr[K.NOISE_MULTIPLIER]),
                    sample_rate=float(mr[K.SAMPLE_RATE]), steps=int(mr[K.STEPS]), accountant=cfg.accountant,
                    delta=float(mr[K.DELTA]), epsilon=float(mr[K.EPSILON]),
                ))  # fmt: skip
        if trained:
            new_arrays, _ = strategy.aggregate_train(server_round, trained)
            if new_arrays is not None:
                arrays = new_arrays
        loss, accuracy = _evaluate(cfg, arrays)
        report.accuracy, report.loss, report.epsilon = accuracy, loss, ledger.epsilon
        report.seconds = time.perf_counter() - t_round
        np_arrays = {k: v.numpy() for k, v in arrays.to_torch_state_dict().items()}
        ckpt.save(server_round, np_arrays, ledger)
        _append_metrics(metrics_path, report, keep_through=resumed_from if first_write else None)
        first_write = False
        if on_round is not None:
            on_round(report)
        if not trained and declined and len(declined) == len(replies):
            log.warning("round %d: every client declined (budget spent); stopping", server_round)
            break

    if first_write:  # nothing left to run: report the checkpointed model
        loss, accuracy = _evaluate(cfg, arrays)
    final = {k: v.numpy() for k, v in arrays.to_torch_state_dict().items()}
    atomic_write_bytes(run_dir / "model.npz", save_npz(final))
    summary = {
        "run_id": run_dir.name,
        "run_dir": str(run_dir),
        "accuracy": accuracy,
        "loss": loss,
        "dp": cfg.dp,
        "epsilon": ledger.epsilon if cfg.dp else None,
        "delta": cfg.delta if cfg.dp else None,
        "rounds": cfg.rounds,
        "clients": cfg.num_clients,
        "model_digest": arrays_digest(final),
        "resumed_from_round": resumed_from,
        "seconds": time.perf_counter() - t0,
    }
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def make_server_app(
    overrides: dict[str, Any] | None = None,
    *,
    on_round: Callable[[RoundReport], None] | None = None,
    on_summary: Callable[[dict[str, Any]], None] | None = None,
) -> ServerApp:
    """Return a ServerApp reading ``context.run_config`` updated by ``overrides``."""
    fixed = dict(overrides or {})
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        merged = {**dict(context.run_config), **fixed}
        cfg = SimulationConfig.from_run_config(merged)
        run_dir = Path(str(merged.get(K.RUN_DIR) or f"runs/flwr-{context.run_id}")).resolve()
        summary = run_rounds(grid, cfg, run_dir, on_round=on_round)
        if on_summary is not None:
            on_summary(summary)

    return server_app


app = make_server_app()
