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
from flwr.serverapp.strategy import Strategy

from fedready import constants as K
from fedready import profiling
from fedready.audit import AuditLog
from fedready.config import SimulationConfig
from fedready.constants import LEDGER_FILE
from fedready.errors import IntegrityError
from fedready.federation import holdout, record_run, task_of
from fedready.files import append_line, atomic_write_bytes, atomic_write_text
from fedready.modelio import arrays_digest, load_npz, save_npz
from fedready.models import evaluate
from fedready.monitoring.federated import profile_needed, write_profile
from fedready.privacy.accounting import calibrate_noise, compose_epsilon, dp_accounting_epsilon
from fedready.privacy.ledger import Ledger
from fedready.server.client_dp import ClientLevelDP
from fedready.server.queries import final_model, query_all, query_round, write_federated_evaluation
from fedready.server.strategies import build_strategy, client_sample_rate
from fedready.server.validation import UpdateValidator, dp_sgd_scale, update_norm

__all__ = [
    "RoundReport",
    "app",
    "charge_history",
    "charge_queries",
    "final_queries",
    "make_server_app",
    "new_ledger",
    "run_federated_evaluation",
    "run_profile_query",
    "run_rounds",
    "schema_handshake",
]

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
    aggregated: int = 0  # updates that went into the new model
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
    x, y = holdout(cfg)
    model = task_of(cfg).model()
    model.load_state_dict(arrays.to_torch_state_dict())
    return evaluate(model, x, y)


REFERENCE_KEYS = ("majority_rate", "balanced_accuracy", "chance")  # beside the accuracy in summary.json


def _dp_scales(cfg: SimulationConfig, server_round: int, replies: list[Message],
               reference: dict[str, np.ndarray]) -> list[tuple[float, float]]:  # fmt: skip
    """Per reply, its DP-SGD gradient bound and expected noise norm (the scale-aware median rule)."""
    params = sum(int(np.asarray(v).size) for v in reference.values())
    out = []
    for msg in replies:
        mr = msg.content[K.METRICS]
        out.append(dp_sgd_scale(steps=int(mr.get(K.STEPS, 0)), noise_multiplier=float(mr.get(K.NOISE_MULTIPLIER, 0.0)),
                                sample_rate=float(mr.get(K.SAMPLE_RATE, 1.0)),
                                rows=float(mr.get(K.NUM_EXAMPLES, 1.0)), lr=cfg.lr_at(server_round),
                                clip=cfg.max_grad_norm, params=params))  # fmt: skip
    return out


def reference_numbers(cfg: SimulationConfig, final: dict[str, np.ndarray]) -> dict[str, float]:
    """The benchmark's majority-class rate and the final model's balanced accuracy (macro recall) and chance.

    On the server's public holdout, as the accuracy: post-processing, no privacy cost.
    """
    from fedready.metrics import classification_metrics

    x, y = holdout(cfg)
    task = task_of(cfg)
    model = task.model()
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in final.items()})
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).argmax(1).numpy()
    m = classification_metrics(y, pred, task.schema.classes)
    return {k: m[k] for k in REFERENCE_KEYS}


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
        self.strategy_state = dict(meta.get("strategy", {}))
        return int(meta["round"]), arrays, Ledger.from_dict(meta["ledger"])

    strategy_state: dict[str, Any] = {}  # noqa: RUF012 (per instance once loaded) e.g. the adaptive clip norm

    def save(self, server_round: int, arrays: dict[str, np.ndarray], ledger: Ledger,
             strategy: dict[str, Any] | None = None) -> None:  # fmt: skip
        name = f"checkpoints/round-{server_round:04d}.npz"
        atomic_write_bytes(self.dir / name, save_npz(arrays))  # on the disk before the pointer names it
        # ledger.json is what every later step reads as the run's record (the charges of queries and retraining,
        # packaging, `fedready ledger`), so it is durable too; serialised once for both files
        data = ledger.to_dict()
        ledger.save(self.dir / LEDGER_FILE, data=data)
        meta = {"round": server_round, "arrays": name, "model_digest": arrays_digest(arrays),
                "ledger": data, "strategy": dict(strategy or {})}  # fmt: skip
        # The pointer is written last: a crash before this line leaves the previous round intact.
        atomic_write_text(self.dir / CHECKPOINT, json.dumps(meta, sort_keys=True))
        for old in sorted((self.dir / "checkpoints").glob("round-*.npz"))[:-KEEP_CHECKPOINTS]:
            old.unlink()


def _append_metrics(path: Path, report: RoundReport, keep_through: int | None = None) -> None:
    """Append the round's line (on the disk before the checkpoint that follows it).

    ``keep_through`` (the first line after a start or a resume): first rewrite the file with only the
    lines of rounds up to the checkpoint's, dropping the lines of rounds a crash cut short and a torn
    last line.
    """
    line = json.dumps(report.to_dict(), sort_keys=True)
    if keep_through is None:
        append_line(path, line)
        return
    # each line was written as json.dumps(..., sort_keys=True): dumping it again gives the same text
    kept = [json.dumps(m, sort_keys=True) for m in read_metrics(path) if m.get("round", 0) <= keep_through]
    atomic_write_text(path, "\n".join([*kept, line]) + "\n")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The lines of ``metrics.jsonl`` (none if it is missing), without a last line torn by a crash."""
    out = []
    for ln in Path(path).read_text().splitlines() if Path(path).exists() else []:
        try:
            line = json.loads(ln)
        except ValueError:
            continue
        if isinstance(line, dict):
            out.append(line)
    return out


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
    """Log a deployed client's fingerprint (schema digest, salted data commitment) when first seen or changed."""
    config = msg.content.config_records.get(K.CONFIG)
    if config is None or K.DATA_COMMITMENT not in config:
        return
    client = _client_id(msg)
    fp = (str(config[K.SCHEMA_DIGEST]), str(config[K.DATA_COMMITMENT]))
    if seen.get(client) != fp:
        seen[client] = fp
        audit.append("client-data", round=server_round, client=client, node_id=msg.metadata.src_node_id,
                     schema_digest=fp[0], data_commitment=fp[1])  # fmt: skip


_HISTORY_LEVELS = {0: "count", 1: "sample", 2: "query"}
_HISTORY_KEYS = (K.HISTORY_LEVEL, K.HISTORY_ROUND, K.HISTORY_NOISE, K.HISTORY_RATE, K.HISTORY_STEPS)


def charge_history(ledger: Ledger, client: str, metrics: Any, *, delta: float, current_round: int) -> int:
    """Charge every release in a client's reported history that the ledger does not hold yet.

    Clients send their whole release history with every reply, so a release the server never
    saw arrive (a straggler's update that came after the round timeout) is charged as soon as
    the client is heard from again, marked ``late``. Returns the number of entries charged.

    Raises
    ------
    IntegrityError
        If the history is malformed (lists of different lengths, unknown levels, bad parameters).
    """
    if metrics is None or K.HISTORY_LEVEL not in metrics:
        return 0
    try:
        cols = [list(metrics[k]) for k in _HISTORY_KEYS]
    except KeyError as e:
        raise IntegrityError(f"client {client}: release history lacks {e}") from e
    if len({len(c) for c in cols}) != 1:
        raise IntegrityError(f"client {client}: release history columns differ in length")
    shares = list(metrics[K.HISTORY_SHARES]) if K.HISTORY_SHARES in metrics else [0] * len(cols[0])
    if len(shares) != len(cols[0]):
        raise IntegrityError(f"client {client}: release history columns differ in length")
    added = 0
    for (lv, r, z, q, n), t in zip(zip(*cols, strict=True), shares, strict=True):
        level = _HISTORY_LEVELS.get(int(lv))
        if level is None or not (float(z) > 0 and 0 < float(q) <= 1 and int(n) >= 0 and int(t) >= 0):
            raise IntegrityError(f"client {client}: malformed release ({lv}, {r}, {z}, {q}, {n})")
        if ledger.charged(client, level, int(r)):
            continue
        late = level == "sample" and int(r) < current_round
        # a distributed-noise share: the charge (z) is that of the secure sum of >= t shares (KLS 2021, tau included)
        note = "late" if late else (f"distributed noise: a 1/{int(t)} share, whole in a secure sum of >= {int(t)}"
                                    if int(t) else "")  # fmt: skip
        ledger.charge(round=int(r), client=client, level=level, noise_multiplier=float(z), sample_rate=float(q),
                      steps=int(n), delta=delta, note=note)  # fmt: skip
        added += 1
    return added


def new_ledger(cfg: SimulationConfig, run_id: str) -> Ledger:
    """An empty ledger for ``cfg``, stamped with what weakens or voids its guarantee."""
    outside = []
    if cfg.dp and cfg.exact_evaluation:
        outside.append("exact group counts and per-client accuracy on validation rows (--exact-evaluation)")
    if cfg.dp and cfg.release_train_loss:
        outside.append("per-round training loss (--release-train-loss)")
    return Ledger(run_id=run_id, delta=cfg.delta, target_epsilon=cfg.epsilon if cfg.dp else None,
                  accountant=cfg.accountant, dp=cfg.dp, insecure_seeded_noise=cfg.dp and cfg.insecure_seeded_noise,
                  outside_guarantee=outside)  # fmt: skip


def client_noise_multiplier(cfg: SimulationConfig) -> float | None:
    """The client-level noise multiplier z: given, or calibrated to ``client_epsilon``.

    Calibration uses the Poisson-subsampled Gaussian mechanism over the planned rounds with
    sampling rate q = expected clients per round / total clients (what the strategy implements).
    """
    if cfg.client_dp == "off":
        return None
    if cfg.client_noise_multiplier is not None:
        return cfg.client_noise_multiplier
    assert cfg.client_epsilon is not None  # enforced by the config's cross-checks
    q = client_sample_rate(cfg)
    return calibrate_noise(target_epsilon=cfg.client_epsilon, target_delta=cfg.client_delta, sample_rate=q,
                           steps=cfg.planned_rounds, accountant=cfg.accountant)  # fmt: skip


def client_budget_rounds(ledger: Ledger, cfg: SimulationConfig, z: float) -> int:
    """How many more client-level rounds fit in ``--client-epsilon`` (each costs exactly (z, q, 1))."""
    if cfg.client_epsilon is None:
        return 10**9
    history, q, k = ledger.client_level_history(), client_sample_rate(cfg), 0
    while compose_epsilon([*history, (z, q, k + 1)], delta=cfg.client_delta, accountant=cfg.accountant) \
            <= cfg.client_epsilon:  # fmt: skip
        k += 1
        if k > cfg.rounds:
            break
    return k


def run_rounds(
    grid: Grid,
    cfg: SimulationConfig,
    run_dir: Path,
    *,
    on_round: Callable[[RoundReport], None] | None = None,
    refused: int = 0,
    strategy_hook: Callable[[Strategy], Strategy] | None = None,
) -> dict[str, Any]:
    """Run (or resume) the federated training described by ``cfg`` in ``run_dir``.

    ``refused`` clients were refused before round 1 (:func:`schema_handshake`): the strategy waits
    for and samples among the others only.

    Each round: sample and instruct clients, wait up to ``cfg.round_timeout``, sort
    replies into trained / declined / failed, charge every release the replies report,
    validate the trained updates, aggregate (robustly and/or with client-level DP),
    evaluate on the holdout, write ledger and checkpoint. Without client-level DP a round
    with fewer than ``cfg.min_clients`` accepted updates is skipped; with it, every round
    is released (the noise alone if nobody answered) and charged.

    ``strategy_hook`` (simulations only: the client-level privacy audit wraps the strategy to add
    canary clients) receives the built strategy and returns the one the rounds use; the ServerApp
    that ``flwr run`` loads never passes one.

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
        model = task_of(cfg).model(seed=cfg.seed)
        arrays = ArrayRecord(model.state_dict())
        start = 1
        ledger = new_ledger(cfg, run_dir.name)
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
    if refused:
        _exclude(strategy, refused, cfg)
    client_dp = strategy if isinstance(strategy, ClientLevelDP) else None
    if client_dp is not None and "clipping_norm" in ckpt.strategy_state:
        client_dp.clipping_norm = float(ckpt.strategy_state["clipping_norm"])  # adaptive clipping resumes where it was
    if strategy_hook is not None:
        strategy = strategy_hook(strategy)
    validator = None
    if cfg.validate_updates:
        # Under client-level DP a rejection may not depend on other clients: structure only (the clip bounds norms).
        validator = UpdateValidator(median_factor=cfg.median_factor, structural_only=client_dp is not None)
    train_cfg: dict[str, Any] = {}
    if cfg.client_dp in ("client-fixed", "client-adaptive"):
        train_cfg[K.CLIENT_CLIPPING] = cfg.client_dp.removeprefix("client-")
    budget_left = client_budget_rounds(ledger, cfg, z) if z is not None else 10**9

    fingerprints: dict[str, tuple] = {}
    metrics_path = run_dir / "metrics.jsonl"
    accuracy = loss = float("nan")
    first_write = True
    stopped = ""
    for server_round in range(start, cfg.rounds + 1):
        if budget_left <= 0:
            stopped = (f"client-level budget: round {server_round} would take epsilon past {cfg.client_epsilon} "
                       f"(spent {ledger.client_level_epsilon:.4f})")  # fmt: skip
            audit.append("run-stopped", round=server_round, reason="client-budget", detail=stopped)
            log.warning(stopped)
            break
        t_round = time.perf_counter()
        lap = profiling.Laps("server", round=server_round, inner=("audit log", lambda: audit.seconds))
        audit.defer_sync()  # the round's events reach the disk together, before its checkpoint (audit.sync below)
        reference = _np_arrays(arrays)
        messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(dict(train_cfg)), grid))
        lap("sample and configure")
        replies = list(grid.send_and_receive(messages=messages, timeout=cfg.round_timeout)) if messages else []
        lap("send and receive (the clients' rounds)")
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
        well_formed = []
        for msg in trained:
            mr = msg.content[K.METRICS]
            report.trained.append(_client_id(msg))
            if int(mr.get(K.REPLAYED, 0)):
                report.replayed.append(_client_id(msg))
            try:  # every released update is charged, accepted or not (and late ones the client reports)
                charge_history(ledger, _client_id(msg), mr, delta=cfg.delta, current_round=server_round)
                well_formed.append(msg)
            except IntegrityError as e:
                report.rejected.append({"client": _client_id(msg), "reason": "malformed-history", "norm": None})
                audit.append(
                    "update-rejected",
                    round=server_round,
                    client=_client_id(msg),
                    node_id=msg.metadata.src_node_id,
                    reason="malformed-history",
                    norm=None,
                    detail=str(e),
                )
        lap("triage and charge the ledger")
        accepted = well_formed
        if validator is not None and well_formed:
            candidates = [(_client_id(msg), msg.metadata.src_node_id, _reply_arrays(msg)) for msg in well_formed]
            scales = _dp_scales(cfg, server_round, well_formed, reference) if cfg.dp else None
            keep, rejections = validator.validate(candidates, reference, scales)
            accepted = [well_formed[i] for i in keep]
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
        lap("update validation")
        if client_dp is None and len(accepted) < cfg.min_clients:
            report.skipped = True
            audit.append("round-skipped", round=server_round, accepted=len(accepted), min_clients=cfg.min_clients)
        else:
            new_arrays, _ = strategy.aggregate_train(server_round, accepted)
            if new_arrays is not None:
                arrays = new_arrays
                report.aggregated = len(accepted)
            if client_dp is not None:  # one release of the Poisson-subsampled Gaussian, whatever arrived
                assert z is not None
                ledger.charge(round=server_round, client="*", level="client", noise_multiplier=z,
                              sample_rate=client_sample_rate(cfg), steps=1, delta=cfg.client_delta)  # fmt: skip
                budget_left -= 1
                if not accepted:
                    report.skipped = True  # released the noise alone: nothing aggregated
        lap("aggregation")
        loss, accuracy = _evaluate(cfg, arrays)
        lap("holdout evaluation")
        report.accuracy, report.loss, report.epsilon = accuracy, loss, ledger.epsilon
        report.client_epsilon = ledger.client_level_epsilon
        lap("ledger epsilon")
        report.seconds = time.perf_counter() - t_round
        # The round's events and metrics line go first: a crash between these writes and the checkpoint leaves
        # a line past the checkpoint, which the resumed run trims (keep_through), never a checkpoint without them.
        audit.sync()
        _append_metrics(metrics_path, report, keep_through=resumed_from if first_write else None)
        first_write = False
        lap("metrics line")
        extra = {"clipping_norm": client_dp.clipping_norm} if client_dp is not None else None
        ckpt.save(server_round, _np_arrays(arrays), ledger, extra)
        lap("checkpoint (model, ledger, pointer)")
        audit.append("round-finished", round=server_round, accuracy=accuracy, epsilon=ledger.epsilon,
                     client_epsilon=ledger.client_level_epsilon, accepted=len(accepted))  # fmt: skip
        if on_round is not None:
            on_round(report)
        lap.close()
        if not trained and declined and len(declined) == len(replies) and client_dp is None:
            why = sorted({r["reason"] for r in report.declined})
            stopped = f"round {server_round}: every client declined ({', '.join(why)})"
            log.warning(stopped)
            break

    if first_write:  # nothing left to run: report the checkpointed model
        loss, accuracy = _evaluate(cfg, arrays)
    with profiling.span("server", "summary (after the last round)"):
            return write_summary(cfg, run_dir, _np_arrays(arrays), ledger, audit, accuracy=accuracy, loss=loss,
                             noise_multiplier=z, stopped=stopped, resumed_from=resumed_from, t0=t0)  # fmt: skip


def privacy_summary(cfg: SimulationConfig, ledger: Ledger, noise_multiplier: float | None, *,
                    cross_check: bool = False) -> dict[str, Any]:  # fmt: skip
    """The privacy part of ``summary.json``: the composed epsilon, its parts, caveats and cross-checks.

    The cross-checks (``*_dp_accounting``: the same releases through independent code) are computed
    only with ``cross_check``: once per run, when every release is charged (:func:`cross_check_privacy`),
    not on every summary write. Until then they read ``None``.
    """
    z = noise_multiplier
    out = _privacy_fields(cfg, ledger, z)
    if cross_check:
        out.update(_cross_checks(cfg, ledger, z))
    return out


def _privacy_fields(cfg: SimulationConfig, ledger: Ledger, z: float | None) -> dict[str, Any]:
    return {
        "dp": cfg.dp,
        # every release about a client's rows (count, training, queries), composed; max over clients
        "epsilon": ledger.epsilon if cfg.dp else None,
        "epsilon_parts": ledger.epsilon_parts() if cfg.dp else None,
        "delta": cfg.delta if cfg.dp else None,
        "private": ledger.private if cfg.dp else False,
        "caveats": ledger.caveats(),
        "epsilon_dp_accounting": None,  # filled once per run (cross_check_privacy)
        "client_dp": cfg.client_dp,
        "client_epsilon": ledger.client_level_epsilon if z is not None else None,
        "client_delta": cfg.client_delta if z is not None else None,
        "client_noise_multiplier": z,
        "client_epsilon_dp_accounting": None,
    }


def _cross_checks(cfg: SimulationConfig, ledger: Ledger, z: float | None) -> dict[str, Any]:
    """The worst client's releases, and the client-level ones, through Google's dp-accounting: RDP and PLD."""
    worst = max(ledger.client_epsilon().items(), key=lambda kv: kv[1], default=(None, 0.0))
    worst_history = [(e.noise_multiplier, e.sample_rate, e.steps) for e in ledger.entries if e.client == worst[0]]
    return {
        "epsilon_dp_accounting": dp_accounting_epsilon(worst_history, delta=cfg.delta) if cfg.dp else None,
        "client_epsilon_dp_accounting": dp_accounting_epsilon(ledger.client_level_history(), delta=cfg.client_delta)
        if z is not None
        else None,
    }


def cross_check_privacy(run_dir: Path, cfg: SimulationConfig) -> dict[str, Any] | None:
    """Add the cross-checks to the run's ``summary.json``, from its ledger as the command ends; return it.

    None when the run folder holds no summary or no ledger yet (nothing to check).
    """
    path, summary_path = run_dir / LEDGER_FILE, run_dir / "summary.json"
    if not path.exists() or not summary_path.exists():
        return None
    summary = json.loads(summary_path.read_text())
    summary.update(_cross_checks(cfg, Ledger.load(path), summary.get("client_noise_multiplier")))
    atomic_write_text(summary_path, json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def mostly_rejected(history: list[dict[str, Any]]) -> list[tuple[str, int, int, list[str]]]:
    """Clients whose updates were rejected in most rounds they trained in: (client, rejected, trained, reasons)."""
    trained: dict[str, int] = {}
    rejected: dict[str, list[str]] = {}
    for h in history:
        for c in h.get("trained", []):
            trained[str(c)] = trained.get(str(c), 0) + 1
        for r in h.get("rejected", []):
            rejected.setdefault(str(r["client"]), []).append(str(r["reason"]))
    return [(c, len(rs), max(trained.get(c, 0), len(rs)), sorted(set(rs))) for c, rs in sorted(rejected.items())
            if 2 * len(rs) > max(trained.get(c, 0), len(rs))]  # fmt: skip


def rejection_lines(run_dir: Path) -> list[str]:
    """One warning line per client rejected in most rounds, read from the run folder's ``metrics.jsonl``.

    The client is named: the line is for the operator at the run folder (``summary.json``, which ships,
    only counts them).
    """
    history = read_metrics(Path(run_dir) / "metrics.jsonl")
    return [f"warning: client {c}'s updates were rejected in {n} of the {t} rounds it trained in "
            f"({', '.join(reasons)}): its rows barely shaped the model (see {run_dir}/audit.jsonl)"
            for c, n, t, reasons in mostly_rejected(history)]  # fmt: skip


def run_status(history: list[dict[str, Any]], stopped: str) -> dict[str, Any]:
    """``completed`` or ``failed`` (no round aggregated a single update), with the reason and first client error."""
    aggregated = sum(int(h.get("aggregated", len(h.get("trained", [])) if not h.get("skipped") else 0))
                     for h in history)  # fmt: skip
    # The summary ships in the artifact (training_summary.json): it names no client (under client-level DP a
    # name says who took part); which client it was stays in the run folder's audit.jsonl and metrics.jsonl.
    first = None
    reasons: dict[str, int] = {}
    for h in history:
        for kind in ("failed", "declined", "rejected"):
            for x in h.get(kind, []):
                key = f"{kind}: {x.get('reason')}"
                reasons[key] = reasons.get(key, 0) + 1
                if first is None:
                    first = f"round {h['round']}: {key}"
    problems: dict[str, Any] = {k: sum(len(h.get(k, [])) for h in history) for k in ("failed", "declined", "rejected")}
    problems["skipped_rounds"] = sum(1 for h in history if h.get("skipped"))
    problems["reasons"] = dict(sorted(reasons.items()))
    if aggregated == 0:
        why = "no round aggregated any update: every sampled client failed, declined or was refused"
        if not history:
            why = f"no round ran ({stopped})" if stopped else "no round ran"
        return {"status": "failed", "reason": why, "first_client_error": first, "problems": problems}
    partial = any(problems.values())
    return {"status": "completed", "reason": stopped or None, "first_client_error": first if partial else None,
            "problems": problems}  # fmt: skip


def write_summary(
    cfg: SimulationConfig, run_dir: Path, final: dict[str, np.ndarray], ledger: Ledger, audit: AuditLog, *,
    accuracy: float, loss: float, noise_multiplier: float | None, stopped: str, resumed_from: int, t0: float,
) -> dict[str, Any]:  # fmt: skip
    """Write ``model.npz`` and ``summary.json`` for a finished run and return the summary."""
    atomic_write_bytes(run_dir / "model.npz", save_npz(final))
    history = read_metrics(run_dir / "metrics.jsonl")
    status = run_status(history, stopped)
    failed = status["status"] == "failed"
    summary = {
        "run_id": run_dir.name,
        "run_dir": str(run_dir),
        **status,
        # a run that trained nothing reports no accuracy: the untrained model's score is not a result
        "accuracy": None if failed else accuracy,
        "loss": None if failed else loss,
        **(dict.fromkeys(REFERENCE_KEYS) if failed else reference_numbers(cfg, final)),
        **privacy_summary(cfg, ledger, noise_multiplier),
        "secagg": cfg.secagg,
        "rounds": cfg.rounds,
        "rounds_completed": len(history),
        "clients": cfg.num_clients,
        "aggregator": cfg.aggregator,
        "attack": cfg.attack,
        "rejected_updates": sum(len(h.get("rejected", [])) for h in history),
        "mostly_rejected_clients": len(mostly_rejected(history)),  # counted, not named (the summary ships)
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
    audit.append("run-finished", status=summary["status"], reason=summary["reason"], accuracy=summary["accuracy"],
                 epsilon=summary["epsilon"], client_epsilon=summary["client_epsilon"],
                 model_digest=summary["model_digest"])  # fmt: skip
    if failed:
        log.error("run %s failed: %s (first client error: %s)", run_dir.name, summary["reason"],
                  summary["first_client_error"])  # fmt: skip
    return summary


def refresh_privacy(run_dir: Path, cfg: SimulationConfig, ledger: Ledger, *,
                    cross_check: bool = False) -> dict[str, Any]:  # fmt: skip
    """Save ``ledger`` (and the checkpoint's copy) and rewrite the summary's privacy fields from it.

    ``cross_check``: also recompute the cross-checks (for a charge after the run ended).
    """
    ledger.save(run_dir / LEDGER_FILE)
    ckpt = run_dir / CHECKPOINT
    if ckpt.exists():
        meta = json.loads(ckpt.read_text())
        meta["ledger"] = ledger.to_dict()
        atomic_write_text(ckpt, json.dumps(meta, sort_keys=True))
    path = run_dir / "summary.json"
    summary = json.loads(path.read_text()) if path.exists() else {}
    summary.update(privacy_summary(cfg, ledger, summary.get("client_noise_multiplier"), cross_check=cross_check))
    atomic_write_text(path, json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


class _FilteredGrid:
    """A Grid that hides refused nodes from every strategy (they are never sampled)."""

    def __init__(self, grid: Grid, refused: set[int]) -> None:
        self._grid, self._refused = grid, set(refused)

    def get_node_ids(self) -> list[int]:
        return [n for n in self._grid.get_node_ids() if n not in self._refused]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


def schema_handshake(grid: Grid, cfg: SimulationConfig, run_dir: Path) -> list[dict[str, Any]]:
    """Before round 1: ask every client for its schema's digest; refuse (for this run) every mismatch.

    Returns the refusals (node id, client, both digests, reason), each also written to the audit log
    and, by the caller, to the summary. A client that does not answer is not refused here (it fails
    like any absent client).
    """
    mine = task_of(cfg).schema.digest()
    audit = AuditLog(run_dir / "audit.jsonl")
    replies = query_all(grid, ArrayRecord(), cfg.num_clients, cfg.round_timeout, query=K.QUERY_SCHEMA)
    refused = []
    for m in replies:
        if m.has_error():
            continue
        config = m.content.config_records.get(K.CONFIG)
        theirs = str(config.get(K.SCHEMA_DIGEST, "")) if config is not None else ""
        metrics = m.content.metric_records.get(K.METRICS)
        declined = metrics is not None and int(metrics.get(K.DECLINED, 0))
        if declined or theirs != mine:
            reason = (f"{K.SCHEMA_MISMATCH}: the client's schema digest {theirs or '(none)'} differs from the "
                      f"server's {mine}; both sides must use the same schema file")  # fmt: skip
            if declined and config is not None:  # the organisation refuses the run itself (its own limits)
                reason = f"{config.get(K.REASON, 'declined')}: {config.get(K.DETAIL, '')}"
            entry = {"node_id": m.metadata.src_node_id, "client": _client_id(m), "reason": reason,
                     "client_schema_digest": theirs, "server_schema_digest": mine}  # fmt: skip
            refused.append(entry)
            audit.append("client-refused", **entry)
            log.warning("client %s refused: %s", entry["client"], reason)
    return refused


def _exclude(strategy: Any, refused: int, cfg: SimulationConfig) -> None:
    """Wait for, and sample among, only the clients that were not refused."""
    available = max(1, cfg.num_clients - refused)
    for attr in ("min_available_nodes", "population_to_wait_for"):
        if hasattr(strategy, attr):
            setattr(strategy, attr, available)
    if hasattr(strategy, "min_train_nodes"):
        strategy.min_train_nodes = min(strategy.min_train_nodes, available)


def make_server_app(
    overrides: dict[str, Any] | None = None,
    *,
    on_round: Callable[[RoundReport], None] | None = None,
    on_summary: Callable[[dict[str, Any]], None] | None = None,
    strategy_hook: Callable[[Strategy], Strategy] | None = None,
) -> ServerApp:
    """Return a ServerApp reading ``context.run_config`` updated by ``overrides``.

    The same app runs plain rounds (:func:`run_rounds`) and, when the configuration asks
    for ``secagg``, SecAgg+ rounds (:func:`fedready.server.secagg.run_secagg_rounds`).

    After training, the app asks the clients (all, or the ``fraction_evaluate`` share), in one
    message each, for group confusion counts on the final model and for the monitoring reference
    profile (:func:`final_queries`: ``federated_eval.json``, ``reference_profile.json``). With
    ``fedready.mode = "evaluate"`` in the run config it trains nothing and only asks (for runs whose
    counts are missing or stale). ``strategy_hook``: see :func:`run_rounds` (plain rounds only).
    """
    fixed = dict(overrides or {})
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        profiling.mark("server", "ServerApp started (seconds after fedready's import)")
        merged = {**dict(context.run_config), **fixed}
        cfg = SimulationConfig.from_run_config(merged)
        run_dir = Path(str(merged.get(K.RUN_DIR) or f"runs/flwr-{context.run_id}")).resolve()
        record_run(cfg, run_dir, simulated=bool(merged.get(K.SIMULATION)))
        if merged.get(K.SIMULATION) and hasattr(grid, "pull_interval"):
            # Flower's in-memory grid looks for replies every 0.1 s: a round of the default simulation
            # waits ~50 ms for nothing. Its state lives in this process, so looking 10x as often is cheap.
            grid.pull_interval = SIMULATION_PULL_INTERVAL
        refused: list[dict[str, Any]] = []
        if merged.get(K.MODE) != K.MODE_EVALUATE and not merged.get(K.SIMULATION):
            # a deployment: the clients' schemas are theirs; a simulation's clients share the server's task
            refused = schema_handshake(grid, cfg, run_dir)
            if refused:
                grid = _FilteredGrid(grid, {int(r["node_id"]) for r in refused})  # type: ignore[assignment]
        if merged.get(K.MODE) == K.MODE_EVALUATE:
            summary = final_queries(grid, cfg, run_dir, merged)
        elif refused and len(refused) >= cfg.num_clients:
            summary = _all_refused(cfg, run_dir, refused)
        elif cfg.secagg:  # SecAgg+ runs through Flower's legacy workflow (server/secagg.py)
            from fedready.server.secagg import run_secagg_query, run_secagg_rounds

            if strategy_hook is not None:
                raise RuntimeError("strategy_hook applies to plain rounds; SecAgg+ aggregates inside its workflow")

            summary = run_secagg_rounds(grid, context, cfg, run_dir, on_round=on_round, refused=len(refused))
            if summary["status"] != "failed":  # the counts travel through SecAgg+ too (their own round)
                summary = run_secagg_query(grid, context, cfg, run_dir, refused=len(refused)) or summary
        else:
            summary = run_rounds(grid, cfg, run_dir, on_round=on_round, refused=len(refused),
                                 strategy_hook=strategy_hook)  # fmt: skip
            if summary["status"] != "failed":  # nothing to ask about a model nobody trained
                with profiling.span("server", "post-training queries (after the last round)"):
                    final_queries(grid, cfg, run_dir, merged, refused=len(refused))  # while the clients are up
                summary = json.loads((run_dir / "summary.json").read_text())  # with the query releases charged
        with profiling.span("server", "privacy cross-check (once, at the end)"):
            checked = cross_check_privacy(run_dir, cfg)  # every release of the run is charged by now
        if checked is not None and merged.get(K.MODE) != K.MODE_EVALUATE:  # evaluate mode returns its counts
            summary = checked
        if refused:
            summary = {**summary, "refused_clients": refused}
            atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
        if on_summary is not None:
            on_summary(summary)
        else:  # `flwr run`: one line that Flower streams back to the user, with what `fedready simulate` prints
            from flwr.common.logger import log as flwr_log

            flwr_log(logging.INFO, "fedready: run %s %s: accuracy %s, epsilon %s; run folder %s", run_dir.name,
                     summary.get("status", "completed"), _fmt(summary.get("accuracy"), ".4f"),
                     _fmt(summary.get("epsilon"), ".3f"), run_dir)  # fmt: skip
        if summary.get("status") == "failed" and on_summary is None:
            # under `flwr run` the ServerApp's failure is the run's failure: a non-zero exit, not a quiet result
            raise RuntimeError(
                f"fedready run {run_dir.name} failed: {summary['reason']} "
                f"(first client error: {summary['first_client_error']})"
            )

    return server_app


SIMULATION_PULL_INTERVAL = 0.01  # seconds between looks for replies in a simulation


def _fmt(value: Any, spec: str) -> str:
    """A summary number for a log line (``-`` when absent or not a number)."""
    return format(value, spec) if isinstance(value, int | float) else "-"


def charge_queries(run_dir: Path, cfg: SimulationConfig, replies: list[Message]) -> list[Message]:
    """Charge the releases the query replies report; return the replies whose history was well formed."""
    path = run_dir / LEDGER_FILE
    ledger = Ledger.load(path) if path.exists() else new_ledger(cfg, run_dir.name)
    current = max((e.round for e in ledger.entries), default=0) + 1
    ok = []
    for m in replies:
        try:
            if not m.has_error():
                charge_history(ledger, _client_id(m), m.content[K.METRICS], delta=cfg.delta, current_round=current)
            ok.append(m)
        except IntegrityError as e:
            log.warning("query reply refused: %s", e)
    refresh_privacy(run_dir, cfg, ledger)
    return ok


def _all_refused(cfg: SimulationConfig, run_dir: Path, refused: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary of a run none of whose clients could take part (nothing trained, nothing released)."""
    audit = AuditLog(run_dir / "audit.jsonl")
    model = task_of(cfg).model(seed=cfg.seed)
    summary = write_summary(cfg, run_dir, {k: v.numpy() for k, v in model.state_dict().items()},
                            new_ledger(cfg, run_dir.name), audit, accuracy=float("nan"), loss=float("nan"),
                            noise_multiplier=None, stopped="", resumed_from=0, t0=time.perf_counter())  # fmt: skip
    summary.update(reason=f"every client was refused before round 1: {refused[0]['reason']}",
                   first_client_error=f"refused before round 1: {refused[0]['reason']}")  # fmt: skip
    return summary


def final_queries(grid: Grid, cfg: SimulationConfig, run_dir: Path, run_config: dict[str, Any], *,
                  refused: int = 0) -> dict[str, Any]:  # fmt: skip
    """Ask the clients, in one message each, for group counts and (if missing) the reference profile.

    Each client answers with counts it has noised itself (under DP) and its release history;
    the query release is charged to the ledger here and the summary's epsilon updated. Group
    counts feed :func:`run_federated_evaluation`, the profile :func:`run_profile_query`. One round trip instead of two:
    with thousands of clients each round trip costs as much as a training round.
    """
    queries = [K.QUERY_GROUP_COUNTS, *([K.QUERY_PROFILE] if profile_needed(run_dir) else [])]
    _, record = final_model(run_dir)
    # wait only for the clients that were not refused (``refused`` of them, before round 1): waiting for a
    # refused node would cost a whole round timeout
    expected = max(1, cfg.num_clients - refused)
    replies = query_all(grid, record, expected, cfg.round_timeout, query=",".join(queries),
                        fraction=cfg.fraction_evaluate, seed=cfg.seed,
                        server_round=query_round(run_dir))  # fmt: skip
    ok = charge_queries(run_dir, cfg, replies)
    summary = run_federated_evaluation(grid, cfg, run_dir, replies=ok)
    if K.QUERY_PROFILE in queries:
        run_profile_query(grid, cfg, run_dir, replies=ok)
    return summary


def run_federated_evaluation(
    grid: Grid, cfg: SimulationConfig, run_dir: Path, *, replies: list[Message] | None = None
) -> dict[str, Any]:
    """Ask every client (or ``cfg.fraction_evaluate`` of them) for group counts on the final model.

    Writes ``federated_eval.json`` (:func:`fedready.server.queries.write_federated_evaluation`).
    ``replies`` are answers already collected (a combined query, see :func:`final_queries`);
    without them the clients are asked here and the releases charged.
    """
    arrays, record = final_model(run_dir)
    if replies is None:
        replies = query_all(grid, record, cfg.num_clients, cfg.round_timeout, fraction=cfg.fraction_evaluate,
                            seed=cfg.seed, server_round=query_round(run_dir))  # fmt: skip
        replies = charge_queries(run_dir, cfg, replies)
    return write_federated_evaluation(cfg, run_dir, arrays, replies)


def run_profile_query(grid: Any, cfg: SimulationConfig, run_dir: Path, *, replies: list | None = None
                      ) -> dict[str, Any] | None:  # fmt: skip
    """Sum the clients' profile counts on the final model into ``reference_profile.json``.

    ``replies`` are answers already collected by a combined query (only those carrying profile
    counts are used; their releases are charged by the caller); without them the clients are
    asked here (the same seeded ``cfg.fraction_evaluate`` share as the group counts) and the
    releases charged here. A profile already written for the same model is kept.

    Returns
    -------
    dict or None
        The profile document (None if it was already there, or nobody answered).
    """
    if not profile_needed(run_dir):
        return None
    arrays, record = final_model(run_dir)
    if replies is None:
        replies = query_all(grid, record, cfg.num_clients, cfg.round_timeout, query=K.QUERY_PROFILE,
                            fraction=cfg.fraction_evaluate, seed=cfg.seed,
                            server_round=query_round(run_dir))  # fmt: skip
        replies = charge_queries(run_dir, cfg, replies)
    return write_profile(cfg, run_dir, replies, arrays_digest(arrays))


app = make_server_app()
