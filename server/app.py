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

from fedready import constants as K
from fedready._io import atomic_write_bytes, atomic_write_text
from fedready.audit import AuditLog
from fedready.client.training import evaluate
from fedready.config import SimulationConfig
from fedready.modelio import arrays_digest, load_npz, save_npz
from fedready.models import create_model
from fedready.privacy.accounting import calibrate_noise, compose_epsilon, flower_client_epsilon
from fedready.privacy.ledger import Ledger, LedgerEntry
from fedready.server.strategies import build_strategy, sampled_clients
from fedready.server.validation import UpdateValidator, update_norm
from fedready.simulations.federated import holdout

__all__ = ["RoundReport", "app", "final_queries", "make_server_app", "run_rounds"]

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
    rejected: list[dict[str, Any]] = field(default_factory=list)
    sampled: int = 0
    late: int = 0  # sampled clients that did not answer before the round timeout
    skipped: bool = False  # fewer than min_clients updates were accepted: model unchanged
    client_epsilon: float = 0.0
    undefended_accuracy: float | None = None  # plain FedAvg over every received update (attack scenarios)
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


def _np_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.to_torch_state_dict().items()}


def _reply_arrays(m: Message) -> dict[str, np.ndarray]:
    record = m.content[K.ARRAYS]
    return dict(zip(record.keys(), record.to_numpy_ndarrays(), strict=True))


def _plain_fedavg(replies: list[Message]) -> ArrayRecord:
    """Example-weighted mean of every received update, with no defence at all."""
    weights = np.array([float(m.content[K.METRICS][K.NUM_EXAMPLES]) for m in replies])
    arrays = [_reply_arrays(m) for m in replies]
    with np.errstate(all="ignore"):
        mean = {k: sum(w * a[k].astype(np.float64) for w, a in zip(weights, arrays, strict=True)) / weights.sum()
                for k in arrays[0]}  # fmt: skip
    return ArrayRecord({k: torch.from_numpy(v.astype(np.float32)) for k, v in mean.items()})


def _audit_fingerprint(audit: AuditLog, seen: dict[str, tuple], server_round: int, msg: Message) -> None:
    """Log a deployed client's data fingerprint (schema digest, rows, data digest) when first seen or changed."""
    config = msg.content.config_records.get(K.CONFIG)
    if config is None or K.DATA_SHA256 not in config:
        return
    client = _client_id(msg)
    fp = (str(config[K.SCHEMA_DIGEST]), int(config[K.DATA_ROWS]), str(config[K.DATA_SHA256]))
    if seen.get(client) != fp:
        seen[client] = fp
        audit.append("client-data", round=server_round, client=client, node_id=msg.metadata.src_node_id,
                     schema_digest=fp[0], rows=fp[1], data_sha256=fp[2])  # fmt: skip


def client_noise_multiplier(cfg: SimulationConfig) -> float | None:
    """The client-level noise multiplier z: given, or calibrated to ``client_epsilon``.

    Calibration uses the subsampled Gaussian mechanism over the planned rounds with
    sampling rate = clients sampled per round / total clients.
    """
    if cfg.client_dp == "off":
        return None
    if cfg.client_noise_multiplier is not None:
        return cfg.client_noise_multiplier
    assert cfg.client_epsilon is not None  # enforced by the config's cross-checks
    q = sampled_clients(cfg) / cfg.num_clients
    return calibrate_noise(target_epsilon=cfg.client_epsilon, target_delta=cfg.client_delta, sample_rate=q,
                           steps=cfg.planned_rounds, accountant=cfg.accountant)  # fmt: skip


def run_rounds(
    grid: Grid,
    cfg: SimulationConfig,
    run_dir: Path,
    *,
    on_round: Callable[[RoundReport], None] | None = None,
) -> dict[str, Any]:
    """Run (or resume) the federated training described by ``cfg`` in ``run_dir``.

    Each round: sample and instruct clients, wait up to ``cfg.round_timeout``, sort
    replies into trained / declined / failed, validate the trained updates, skip
    the round if fewer than ``cfg.min_clients`` remain, aggregate (robustly and/or
    with client-level DP), evaluate on the holdout, write ledger and checkpoint.

    Returns
    -------
    dict
        The run summary, also written to ``summary.json``.
    """
    t0 = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = _Checkpointer(run_dir)
    audit = AuditLog(run_dir / "audit.jsonl")
    state = ckpt.load()
    if state is None:
        x, _ = holdout()
        model = create_model(cfg.model, x.shape[1], seed=cfg.seed)
        arrays = ArrayRecord(model.state_dict())
        start = 1
        ledger = Ledger(run_id=run_dir.name, delta=cfg.delta, target_epsilon=cfg.epsilon if cfg.dp else None,
                        accountant=cfg.accountant, dp=cfg.dp)  # fmt: skip
        resumed_from = 0
        audit.append("run-started", run=run_dir.name, config=cfg.model_dump())
    else:
        last, np_arrays, ledger = state
        arrays = ArrayRecord({k: torch.from_numpy(v) for k, v in np_arrays.items()})
        start, resumed_from = last + 1, last
        log.info("resuming %s after round %d", run_dir, last)
        audit.append("run-resumed", run=run_dir.name, after_round=last)

    z = client_noise_multiplier(cfg)
    strategy = build_strategy(cfg, z)
    m = sampled_clients(cfg)
    q_clients = m / cfg.num_clients
    validator = None
    if cfg.validate_updates:
        bound = cfg.client_clip if cfg.client_dp == "client-fixed" else None
        validator = UpdateValidator(clip_bound=bound, median_factor=cfg.median_factor)
    train_cfg: dict[str, Any] = {}
    if cfg.client_dp in ("client-fixed", "client-adaptive"):
        train_cfg[K.CLIENT_CLIPPING] = cfg.client_dp.removeprefix("client-")

    fingerprints: dict[str, tuple] = {}
    metrics_path = run_dir / "metrics.jsonl"
    accuracy = loss = float("nan")
    first_write = True
    stopped = ""
    for server_round in range(start, cfg.rounds + 1):
        if z is not None and cfg.client_epsilon is not None:
            projected = compose_epsilon(ledger.client_level_history() + [(z, q_clients, 1)],
                                        delta=cfg.client_delta, accountant=cfg.accountant)  # fmt: skip
            if projected > cfg.client_epsilon:
                stopped = (f"client-level budget: round {server_round} would reach epsilon {projected:.4f} "
                           f"> {cfg.client_epsilon}")  # fmt: skip
                audit.append("run-stopped", round=server_round, reason="client-budget", detail=stopped)
                log.warning(stopped)
                break
        t_round = time.perf_counter()
        reference = _np_arrays(arrays)
        messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(dict(train_cfg)), grid))
        replies = list(grid.send_and_receive(messages=messages, timeout=cfg.round_timeout))
        trained, declined, failed = _triage(replies)
        report = RoundReport(round=server_round, accuracy=float("nan"), loss=float("nan"), epsilon=0.0)
        report.sampled = len(messages)
        report.late = max(0, report.sampled - len(replies))
        for msg in declined:
            c = msg.content[K.CONFIG]
            ledger.record_decline(round=server_round, client=_client_id(msg), reason=str(c[K.REASON]),
                                  detail=str(c[K.DETAIL]))  # fmt: skip
            report.declined.append({"client": _client_id(msg), "reason": str(c[K.REASON])})
            audit.append("client-declined", round=server_round, client=_client_id(msg), reason=str(c[K.REASON]),
                         detail=str(c[K.DETAIL]))  # fmt: skip
        for msg in trained + declined:
            _audit_fingerprint(audit, fingerprints, server_round, msg)
        for msg in failed:
            report.failed.append({"client": _client_id(msg), "reason": msg.error.reason})
            audit.append("client-failed", round=server_round, node_id=msg.metadata.src_node_id,
                         reason=msg.error.reason)  # fmt: skip
        for msg in trained:
            mr = msg.content[K.METRICS]
            report.trained.append(_client_id(msg))
            if int(mr.get(K.REPLAYED, 0)):
                report.replayed.append(_client_id(msg))
            if cfg.dp:  # every released update is charged, accepted or not
                ledger.record(LedgerEntry(
                    round=server_round, client=_client_id(msg), noise_multiplier=float(mr[K.NOISE_MULTIPLIER]),
                    sample_rate=float(mr[K.SAMPLE_RATE]), steps=int(mr[K.STEPS]), accountant=cfg.accountant,
                    delta=float(mr[K.DELTA]), epsilon=float(mr[K.EPSILON]),
                ))  # fmt: skip
        accepted = trained
        if validator is not None and trained:
            candidates = [(_client_id(msg), msg.metadata.src_node_id, _reply_arrays(msg)) for msg in trained]
            keep, rejections = validator.validate(candidates, reference)
            accepted = [trained[i] for i in keep]
            for r in rejections:
                report.rejected.append({"client": r.client, "reason": r.reason, "norm": r.norm})
                audit.append("update-rejected", round=server_round, client=r.client, node_id=r.node_id,
                             reason=r.reason, norm=r.norm, detail=r.detail)  # fmt: skip
        for msg in accepted:
            audit.append(
                "update-accepted",
                round=server_round,
                client=_client_id(msg),
                norm=update_norm(_reply_arrays(msg), reference),
            )
        if cfg.attack != "none" and trained:
            _, report.undefended_accuracy = _evaluate(cfg, _plain_fedavg(trained))
        if len(accepted) < cfg.min_clients:
            report.skipped = True
            audit.append("round-skipped", round=server_round, accepted=len(accepted), min_clients=cfg.min_clients)
        else:
            new_arrays, _ = strategy.aggregate_train(server_round, accepted)
            if new_arrays is not None:
                arrays = new_arrays
                if z is not None:
                    # Noise std is z * clip / m; with fewer than m updates in the mean the
                    # sensitivity grows, so the effective multiplier shrinks: charge that.
                    z_eff = z * len(accepted) / m
                    eps = compose_epsilon(ledger.client_level_history() + [(z_eff, q_clients, 1)],
                                          delta=cfg.client_delta, accountant=cfg.accountant)  # fmt: skip
                    ledger.record(LedgerEntry(round=server_round, client="*", noise_multiplier=z_eff,
                                              sample_rate=q_clients, steps=1, accountant=cfg.accountant,
                                              delta=cfg.client_delta, epsilon=eps, level="client"))  # fmt: skip
        loss, accuracy = _evaluate(cfg, arrays)
        report.accuracy, report.loss, report.epsilon = accuracy, loss, ledger.epsilon
        report.client_epsilon = ledger.client_level_epsilon
        report.seconds = time.perf_counter() - t_round
        # The round's metrics line goes first: a crash between the two writes leaves a line past the
        # checkpoint, which the resumed run trims (keep_through), never a checkpoint without its line.
        _append_metrics(metrics_path, report, keep_through=resumed_from if first_write else None)
        first_write = False
        ckpt.save(server_round, _np_arrays(arrays), ledger)
        audit.append("round-finished", round=server_round, accuracy=accuracy, epsilon=ledger.epsilon,
                     client_epsilon=ledger.client_level_epsilon, accepted=len(accepted))  # fmt: skip
        if on_round is not None:
            on_round(report)
        if not trained and declined and len(declined) == len(replies):
            stopped = f"round {server_round}: every client declined (budget spent)"
            log.warning(stopped)
            break

    if first_write:  # nothing left to run: report the checkpointed model
        loss, accuracy = _evaluate(cfg, arrays)
    return write_summary(cfg, run_dir, _np_arrays(arrays), ledger, audit, accuracy=accuracy, loss=loss,
                         noise_multiplier=z, stopped=stopped, resumed_from=resumed_from, t0=t0)  # fmt: skip


def write_summary(
    cfg: SimulationConfig, run_dir: Path, final: dict[str, np.ndarray], ledger: Ledger, audit: AuditLog, *,
    accuracy: float, loss: float, noise_multiplier: float | None, stopped: str, resumed_from: int, t0: float,
) -> dict[str, Any]:  # fmt: skip
    """Write ``model.npz`` and ``summary.json`` for a finished run and return the summary."""
    atomic_write_bytes(run_dir / "model.npz", save_npz(final))
    metrics_path = run_dir / "metrics.jsonl"
    history = [json.loads(x) for x in metrics_path.read_text().splitlines()] if metrics_path.exists() else []
    z = noise_multiplier
    summary = {
        "run_id": run_dir.name,
        "run_dir": str(run_dir),
        "accuracy": accuracy,
        "loss": loss,
        "dp": cfg.dp,
        "epsilon": ledger.epsilon if cfg.dp else None,
        "delta": cfg.delta if cfg.dp else None,
        "client_dp": cfg.client_dp,
        "client_epsilon": ledger.client_level_epsilon if z is not None else None,
        "client_delta": cfg.client_delta if z is not None else None,
        "client_noise_multiplier": z,
        # the same releases through Flower's own accountant, as a cross-check
        "client_epsilon_flower": flower_client_epsilon(
            [(nm, round(q * cfg.num_clients)) for nm, q, _ in ledger.client_level_history()],
            population=cfg.num_clients,
            delta=cfg.client_delta,
        )
        if z is not None
        else None,
        "secagg": cfg.secagg,
        "rounds": cfg.rounds,
        "rounds_completed": len(history),
        "clients": cfg.num_clients,
        "aggregator": cfg.aggregator,
        "attack": cfg.attack,
        "rejected_updates": sum(len(h.get("rejected", [])) for h in history),
        "failed_clients": sum(len(h.get("failed", [])) for h in history),
        "declined": sum(len(h.get("declined", [])) for h in history),
        "skipped_rounds": [h["round"] for h in history if h.get("skipped")],
        "undefended_accuracy": history[-1].get("undefended_accuracy") if history else None,
        "stopped": stopped or None,
        "model_digest": arrays_digest(final),
        "resumed_from_round": resumed_from,
        "seconds": time.perf_counter() - t0,
    }
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    audit.append("run-finished", accuracy=accuracy, epsilon=summary["epsilon"],
                 client_epsilon=summary["client_epsilon"], model_digest=summary["model_digest"])  # fmt: skip
    return summary


def make_server_app(
    overrides: dict[str, Any] | None = None,
    *,
    on_round: Callable[[RoundReport], None] | None = None,
    on_summary: Callable[[dict[str, Any]], None] | None = None,
) -> ServerApp:
    """Return a ServerApp reading ``context.run_config`` updated by ``overrides``.

    The same app runs plain rounds (:func:`run_rounds`) and, when the configuration asks
    for ``secagg``, SecAgg+ rounds (:func:`fedready.server.secagg.run_secagg_rounds`).

    After training, the app asks the clients (all, or the ``fraction_evaluate`` share), in one
    message each, for group confusion counts on the final model and for the monitoring reference
    profile (:func:`final_queries`: ``federated_eval.json``, ``reference_profile.json``). With
    ``fedready.mode = "evaluate"`` in the run config it trains nothing and only asks (for runs whose
    counts are missing or stale).
    """
    fixed = dict(overrides or {})
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        merged = {**dict(context.run_config), **fixed}
        cfg = SimulationConfig.from_run_config(merged)
        run_dir = Path(str(merged.get(K.RUN_DIR) or f"runs/flwr-{context.run_id}")).resolve()
        if merged.get(K.MODE) == K.MODE_EVALUATE:
            summary = final_queries(grid, cfg, run_dir, merged)
        elif cfg.secagg:  # SecAgg+ runs through Flower's legacy workflow (server/secagg.py)
            from fedready.server.secagg import run_secagg_rounds

            summary = run_secagg_rounds(grid, context, cfg, run_dir, on_round=on_round)
        else:
            summary = run_rounds(grid, cfg, run_dir, on_round=on_round)
            final_queries(grid, cfg, run_dir, merged)  # while the clients are up (fedready evaluate reuses it)
        if on_summary is not None:
            on_summary(summary)

    return server_app


def final_queries(grid: Grid, cfg: SimulationConfig, run_dir: Path, run_config: dict[str, Any]) -> dict[str, Any]:
    """Ask the clients, in one message each, for group counts and (if missing) the reference profile.

    Group counts feed :func:`fedready.evaluation.federated.run_federated_evaluation`; the profile
    (noisy by default under DP, charged to the ledger) feeds
    :func:`fedready.monitoring.federated.run_profile_query`. One round trip instead of two:
    with thousands of clients each round trip costs as much as a training round.
    """
    from fedready.evaluation.federated import final_model, query_all, run_federated_evaluation
    from fedready.monitoring.federated import profile_needed, resolve_noise, run_profile_query

    mechanism, epsilon = resolve_noise(run_config, cfg)
    queries = [K.QUERY_GROUP_COUNTS, *([K.QUERY_PROFILE] if profile_needed(run_dir) else [])]
    _, record = final_model(run_dir)
    replies = query_all(grid, record, cfg.num_clients, cfg.round_timeout, query=",".join(queries),
                        fraction=cfg.fraction_evaluate, seed=cfg.seed)  # fmt: skip
    summary = run_federated_evaluation(grid, cfg, run_dir, replies=replies)
    if K.QUERY_PROFILE in queries:
        run_profile_query(grid, cfg, run_dir, mechanism=mechanism, epsilon=epsilon, replies=replies)
    return summary


app = make_server_app()
