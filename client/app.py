"""The fedready ClientApp: local DP-SGD with a privacy budget that composes across rounds.

Notes
-----
Each client owns its privacy state. The Opacus accountant history lives in
Flower's per-node ``context.state`` (so it survives from round to round within a
run) and is mirrored to the client's own state folder on disk (so it survives a
crash and a resume). Before training, the client projects the epsilon it would
have spent after this round; if that exceeds its budget it declines with reason
``budget-exhausted`` instead of training.

A round that is asked for again after a crash, with the very same global model,
is answered with the update already released for it: re-sending a released
output is post-processing and costs no privacy, whereas training again would
spend the budget twice.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable

from fedready import constants as K
from fedready._io import atomic_write_bytes, atomic_write_text
from fedready.client.training import train
from fedready.config import SimulationConfig
from fedready.deploy.site import Site, site_from_node_config
from fedready.federation import client_shard, task_of
from fedready.modelio import arrays_digest, load_npz, save_npz
from fedready.models import model_for_schema
from fedready.privacy.accounting import calibrate_noise, compose_epsilon
from fedready.simulations.scenarios import ClientDropped, apply_attack, attackers, drops_out, is_slow

__all__ = ["app", "make_client_app"]

_STATE_KEY = "fedready.privacy"

log = logging.getLogger(__name__)


@dataclass
class ClientPrivacyState:
    """A client's own record of what it has released, round by round."""

    rounds: list[int] = field(default_factory=list)
    noise: list[float] = field(default_factory=list)
    rate: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    last_input_digest: str = ""  # global model the last released update was computed from
    # noise multipliers this client calibrated, by budget and plan: the search takes a fifth of a
    # second, and the simulation engine may hand the client to a different worker process each round
    calibrated: dict[str, float] = field(default_factory=dict)

    def history(self) -> list[tuple[float, float, int]]:
        return list(zip(self.noise, self.rate, self.steps, strict=True))

    def to_dict(self) -> dict[str, Any]:
        return {"rounds": self.rounds, "noise": self.noise, "rate": self.rate, "steps": self.steps,
                "last_input_digest": self.last_input_digest, "calibrated": self.calibrated}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClientPrivacyState:
        return cls(list(d["rounds"]), list(d["noise"]), list(d["rate"]), list(d["steps"]), d["last_input_digest"],
                   dict(d.get("calibrated", {})))  # fmt: skip

    def noise_for(self, epsilon: float, delta: float, rate: float, steps: int, accountant: str) -> float:
        """The noise multiplier meeting (epsilon, delta) over ``steps`` at ``rate``: calibrated once, then kept."""
        key = json.dumps([epsilon, delta, rate, steps, accountant])
        if key not in self.calibrated:
            self.calibrated[key] = _noise_multiplier(epsilon, delta, rate, steps, accountant)
        return self.calibrated[key]


class _Store:
    """Client state in ``context.state``, mirrored to a folder on the client's disk."""

    def __init__(self, context: Context, folder: Path | None) -> None:
        self.context = context
        self.folder = folder

    def load(self) -> ClientPrivacyState:
        rec = self.context.state.get(_STATE_KEY)
        if rec is not None:
            return ClientPrivacyState.from_dict(json.loads(str(rec["json"])))
        if self.folder is not None and (self.folder / "state.json").exists():
            return ClientPrivacyState.from_dict(json.loads((self.folder / "state.json").read_text()))
        return ClientPrivacyState()

    def save(self, state: ClientPrivacyState, reply_arrays: dict[str, np.ndarray], reply_metrics: dict) -> None:
        blob = json.dumps(state.to_dict(), sort_keys=True)
        self.context.state[_STATE_KEY] = ConfigRecord({"json": blob})
        if self.folder is not None:
            # The cached reply is written before the state that points at it.
            atomic_write_bytes(self.folder / "last_update.npz", save_npz(reply_arrays))
            atomic_write_text(self.folder / "last_metrics.json", json.dumps(reply_metrics, sort_keys=True))
            atomic_write_text(self.folder / "state.json", blob)

    def cached_reply(self) -> tuple[dict[str, np.ndarray], dict] | None:
        if self.folder is None or not (self.folder / "last_update.npz").exists():
            return None
        arrays = load_npz((self.folder / "last_update.npz").read_bytes())
        metrics = json.loads((self.folder / "last_metrics.json").read_text())
        return arrays, metrics


@lru_cache(maxsize=64)
def _noise_multiplier(epsilon: float, delta: float, rate: float, steps: int, accountant: str) -> float:
    return calibrate_noise(target_epsilon=epsilon, target_delta=delta, sample_rate=rate, steps=steps,
                           accountant=accountant)  # fmt: skip


def _train_seed(seed: int, partition_id: int, server_round: int) -> int:
    return int(np.random.SeedSequence([seed, partition_id, server_round]).generate_state(1)[0])


def _decline(msg: Message, pid: int, reason: str, detail: str, extra: dict[str, Any] | None = None) -> Message:
    content = RecordDict({
        K.METRICS: MetricRecord({K.NUM_EXAMPLES: 0, K.DECLINED: 1, K.PARTITION_ID: pid}),
        K.CONFIG: ConfigRecord({K.REASON: reason, K.DETAIL: detail, **(extra or {})}),
    })  # fmt: skip
    return Message(content=content, reply_to=msg)


def _reply(msg: Message, arrays: dict[str, np.ndarray], metrics: dict, extra: dict[str, Any] | None = None) -> Message:
    rec = ArrayRecord({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()})
    content = RecordDict({K.ARRAYS: rec, K.METRICS: MetricRecord(metrics)})
    if extra:  # a deployed client's data fingerprint, for provenance
        content[K.CONFIG] = ConfigRecord(extra)
    return Message(content=content, reply_to=msg)


@dataclass(frozen=True)
class Decline:
    """A client's refusal to train this round, with a reason code the server logs."""

    reason: str
    detail: str


def resolve_config(context: Context, overrides: dict[str, Any]) -> tuple[SimulationConfig, str | None]:
    """The run's config and run folder as this client sees them."""
    cfg = SimulationConfig.from_run_config({**dict(context.run_config), **overrides})
    run_dir = overrides.get(K.RUN_DIR) or context.run_config.get(K.RUN_DIR)
    return cfg, str(run_dir) if run_dir else None


def local_update(
    cfg: SimulationConfig,
    context: Context,
    run_dir: str | None,
    server_round: int,
    global_arrays: dict[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], dict[str, Any]] | Decline:
    """One round of local training on this client's shard: the update and its metrics, or a decline.

    Shared by the message-API ClientApp and the SecAgg+ (legacy NumPyClient) path.
    """
    pid = int(context.node_config["partition-id"])
    site = site_from_node_config(context.node_config)
    if site is not None:  # a deployed client keeps its state on its own premises, never in the server's run folder
        folder: Path | None = site.limits.state_dir / f"run-{context.run_id}"
    else:
        folder = Path(run_dir) / "clients" / str(pid) if run_dir else None
    store = _Store(context, folder)
    in_digest = arrays_digest(global_arrays)
    state = store.load()
    if state.rounds and state.rounds[-1] == server_round and state.last_input_digest == in_digest:
        cached = store.cached_reply()
        if cached is not None:
            arrays, metrics = cached
            return arrays, {**metrics, K.REPLAYED: 1}

    if drops_out(cfg, pid, server_round):
        raise ClientDropped(f"client {pid} dropped out of round {server_round} (simulated, p={cfg.dropout})")
    if is_slow(cfg, pid):
        time.sleep(cfg.round_timeout + 1.0)  # simulated straggler: the server has moved on
    if site is not None and not site.report.ok:
        return Decline(K.CONTRACT_VIOLATION, site.report.summary())
    if site is not None and not cfg.dp:
        return Decline(K.LOCAL_LIMIT, "the coordinator asked for a run without DP; local limits need DP-SGD")
    attacker = pid in attackers(cfg)
    if site is not None:
        x_train, y_train = _site_train(site, cfg)
    else:
        shard = client_shard(cfg, pid)
        x_train, y_train = shard.x_train, shard.y_train
    schema = site.schema if site is not None else task_of(cfg).schema
    y_train = (schema.target.num_classes - 1) - y_train if attacker and cfg.attack == "label-flip" else y_train
    n = len(y_train)
    batches = max(1, math.ceil(n / cfg.batch_size))
    steps = cfg.local_steps or cfg.local_epochs * batches
    noise, rate = 0.0, 1.0 / batches
    if cfg.dp:
        if cfg.delta >= 1.0 / n:
            return Decline("delta-too-large", f"delta {cfg.delta} >= 1/n = {1 / n:.3g} for {n} rows")
        noise = state.noise_for(cfg.epsilon, cfg.delta, rate, cfg.planned_rounds * steps, cfg.accountant)
        projected = compose_epsilon(state.history() + [(noise, rate, steps)], delta=cfg.delta,
                                    accountant=cfg.accountant)  # fmt: skip
        if projected > cfg.epsilon:
            spent = compose_epsilon(state.history(), delta=cfg.delta, accountant=cfg.accountant)
            return Decline(
                K.BUDGET_EXHAUSTED, f"epsilon would reach {projected:.4f} > budget {cfg.epsilon} (spent {spent:.4f})"
            )
        if site is not None:  # the organisation's own lifetime limits, whatever the coordinator asked
            refusal = site.privacy_refusal(requested_delta=cfg.delta, accountant=cfg.accountant,
                                           step=(noise, rate, steps))  # fmt: skip
            if refusal is not None:
                return Decline(*refusal)

    model = model_for_schema(cfg.model, schema)
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in global_arrays.items()})
    result = train(
        model, x_train, y_train,
        epochs=cfg.local_epochs, batch_size=cfg.batch_size, lr=cfg.lr_at(server_round), momentum=cfg.momentum,
        seed=_train_seed(cfg.seed, pid, server_round),
        noise_multiplier=noise if cfg.dp else None, max_grad_norm=cfg.max_grad_norm,
        history=state.history(), accountant=cfg.accountant, max_steps=steps,
    )  # fmt: skip
    state.rounds.append(server_round)
    if cfg.dp:
        state.noise.append(noise)
        state.rate.append(rate)
        state.steps.append(result.steps)
    state.last_input_digest = in_digest
    if site is not None and cfg.dp:
        site.record_release(run=str(context.run_id), server_round=server_round, step=(noise, rate, result.steps))
    eps = compose_epsilon(state.history(), delta=cfg.delta, accountant=cfg.accountant) if cfg.dp else 0.0
    metrics = {
        K.NUM_EXAMPLES: n, K.UNIFORM_WEIGHT: 1, K.PARTITION_ID: pid, K.TRAIN_LOSS: result.loss,
        K.DECLINED: 0, K.REPLAYED: 0,
        K.NOISE_MULTIPLIER: noise, K.SAMPLE_RATE: rate, K.STEPS: result.steps, K.EPSILON: eps, K.DELTA: cfg.delta,
    }  # fmt: skip
    arrays = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    if attacker:
        arrays = apply_attack(cfg.attack, arrays, global_arrays, scale=cfg.attack_scale)
    store.save(state, arrays, metrics)
    return arrays, metrics


def handle_train(msg: Message, context: Context, overrides: dict[str, Any]) -> Message:
    """Train on the local shard and reply with the update, or decline."""
    cfg, run_dir = resolve_config(context, overrides)
    server_round = int(msg.content[K.CONFIG][K.SERVER_ROUND])
    record = msg.content[K.ARRAYS]
    global_arrays = dict(zip(record.keys(), record.to_numpy_ndarrays(), strict=True))
    out = local_update(cfg, context, run_dir, server_round, global_arrays)
    pid = int(context.node_config["partition-id"])
    site = site_from_node_config(context.node_config)
    extra = dict(site.fingerprint) if site is not None else None
    if site is not None:
        _audit_round(site, str(context.run_id), server_round, out)
    if isinstance(out, Decline):
        return _decline(msg, pid, out.reason, out.detail, extra)
    return _reply(msg, *out, extra)


def _site_train(site: Site, cfg: SimulationConfig) -> tuple[np.ndarray, np.ndarray]:
    local = site.local_data(val_fraction=cfg.val_fraction, seed=cfg.seed)
    return local.x_train, local.y_train


def _audit_round(site: Site, run: str, server_round: int, out: tuple[dict, dict] | Decline) -> None:
    """The client's own record of the round; a contract violation keeps its full report here."""
    if isinstance(out, Decline):
        report = site.report.lines() if out.reason == K.CONTRACT_VIOLATION else []
        for line in report:
            log.warning("data contract: %s", line)
        site.audit.append("round-declined", run=run, round=server_round, reason=out.reason, detail=out.detail,
                          report=report)  # fmt: skip
    else:
        metrics = out[1]
        site.audit.append("round-trained", run=run, round=server_round, rows=metrics[K.NUM_EXAMPLES],
                          run_epsilon=metrics[K.EPSILON], replayed=metrics[K.REPLAYED])  # fmt: skip


def client_clipping_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Clip this client's update when the server asks for client-side clipping DP.

    Dispatches to Flower's ``fixedclipping_mod`` or ``adaptiveclipping_mod``
    according to the train config; otherwise passes the message through.

    Notes
    -----
    With secure aggregation this mod must sit *after* ``secaggplus_mod`` in the mod
    list (closer to the app), so the update is clipped before it is masked.
    """
    config = msg.content.config_records.get(K.CONFIG) if msg.metadata.message_type == "train" else None
    mode = str(config.get(K.CLIENT_CLIPPING, "")) if config is not None else ""
    mod = {"fixed": fixedclipping_mod, "adaptive": adaptiveclipping_mod}.get(mode)
    if mod is None:
        return call_next(msg, context)
    replies: list[Message] = []

    def _next(m: Message, c: Context) -> Message:
        replies.append(call_next(m, c))
        return replies[-1]

    out = mod(msg, context, _next)
    # A decline carries no arrays to clip; Flower's mods would turn it into an error.
    first = replies[0] if replies else None
    if first is not None and not first.has_error() and int(first.content[K.METRICS].get(K.DECLINED, 0)):
        return first
    return out


def make_client_app(overrides: dict[str, Any] | None = None) -> ClientApp:
    """Return a ClientApp whose run config is ``context.run_config`` updated by ``overrides``."""
    fixed = dict(overrides or {})
    client_app = ClientApp(mods=[client_clipping_mod])

    @client_app.train()
    def _train(msg: Message, context: Context) -> Message:
        torch.set_num_threads(1)  # one core per virtual client; Ray runs several side by side
        return handle_train(msg, context, fixed)

    @client_app.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        torch.set_num_threads(1)
        from fedready.evaluation.federated import handle_query

        cfg, _ = resolve_config(context, fixed)
        site = site_from_node_config(context.node_config)
        local = site.local_data(val_fraction=cfg.val_fraction, seed=cfg.seed) if site is not None else None
        return handle_query(msg, cfg, int(context.node_config["partition-id"]), local)

    return client_app


app = make_client_app()
