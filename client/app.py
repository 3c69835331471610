"""The fedready ClientApp: local DP-SGD with a privacy budget that composes across every release.

Notes
-----
Each client owns its privacy state (:mod:`fedready.client.state`): every release about its
rows (its noisy row count, each DP-SGD round, the counts it answers after training) with its
DP parameters. Before any release the client projects its epsilon, composed over everything
it has released plus what it has planned, and declines with ``budget-exhausted`` if that
would exceed its budget. DP noise and Poisson sampling are drawn from OS entropy.

A round that is asked for again after a crash, with the very same global model, is answered
with the update already released for it: re-sending a released output is post-processing and
costs no privacy, whereas training again would spend the budget twice.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable

from fedready import constants as K
from fedready import profiling
from fedready.client.queries import answer_queries, answer_query
from fedready.client.scenarios import ClientDropped, apply_attack, attackers, drops_out, is_slow
from fedready.client.site import Site, site_from_node_config
from fedready.client.state import ClientPrivacyState, Release, Store, client_state_dir, query_noise_split
from fedready.client.training import OptimizerHooks, poisson_plan, train
from fedready.client.wire import make_wire_log_mod
from fedready.config import QUERY_MODULUS, SimulationConfig, query_threshold
from fedready.federation import client_shard, task_of
from fedready.modelio import arrays_digest
from fedready.models import model_for_schema
from fedready.privacy.accounting import compose_epsilon
from fedready.privacy.distributed import distributed_rho, gaussian_equivalent, sample_discrete_gaussian
from fedready.privacy.randomness import dp_numpy_rng

__all__ = ["SecAggSetup", "answer_through_secagg", "app", "make_client_app", "planned_query_release"]

log = logging.getLogger(__name__)


def _insecure_seed(seed: int, partition_id: int, server_round: int) -> int:
    """The seed ``--insecure-seeded-noise`` derives from the configuration (anyone with config.json can too)."""
    return int(np.random.SeedSequence([seed, partition_id, server_round]).generate_state(1)[0])


def planned_query_release(cfg: SimulationConfig) -> tuple[float, float, int]:
    """The post-training query each client plans for: one Gaussian release at ``cfg.query_noise``."""
    return (cfg.query_noise, 1.0, 1)


def _run_key(context: Context, run_dir: str | None) -> str:
    """What identifies a run across relaunches: the server's run folder name (else Flower's run id)."""
    return Path(run_dir).name if run_dir else f"flwr-{context.run_id}"


def _store(context: Context, run_dir: str | None, pid: int, site: Site | None) -> Store:
    if site is not None:  # a deployed client keeps its state on its own premises, keyed by run across relaunches
        return Store(context, site.limits.state_dir / f"run-{_run_key(context, run_dir)}")
    return Store(context, client_state_dir(run_dir, pid))


def _decline(msg: Message, pid: int, reason: str, detail: str, extra: dict[str, Any] | None = None) -> Message:
    content = RecordDict({
        K.METRICS: MetricRecord({K.DECLINED: 1, K.PARTITION_ID: pid}),  # no count of any kind
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
    *,
    optimizer_hooks: OptimizerHooks | None = None,
    train_rows: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]] | Decline:
    """One round of local training on this client's shard: the update and its metrics, or a decline.

    Shared by the message-API ClientApp and the SecAgg+ (legacy NumPyClient) path. The client's
    state is locked for the whole round (budget check, training, record). ``optimizer_hooks``
    (simulations only) sees a simulated client's optimisation steps; ``train_rows`` (simulations
    only: the update-scale audit) replaces a simulated client's shard. A client with its own data
    (a site) takes neither; the apps ``flwr run`` and SuperNodes load never pass them.
    """
    pid = int(context.node_config["partition-id"])
    site = site_from_node_config(context.node_config)
    store = _store(context, run_dir, pid, site)
    with store.locked():
        return _local_update(cfg, context, run_dir, server_round, global_arrays, pid, site, store, optimizer_hooks,
                             train_rows=train_rows if site is None else None)  # fmt: skip


def _local_update(
    cfg: SimulationConfig, context: Context, run_dir: str | None, server_round: int,
    global_arrays: dict[str, np.ndarray], pid: int, site: Site | None, store: Store,
    optimizer_hooks: OptimizerHooks | None = None, *, train_rows: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]] | Decline:  # fmt: skip
    clock = time.perf_counter
    t_start = clock()
    in_digest = arrays_digest(global_arrays)
    state = store.load()
    if state.last_round == server_round and state.last_input_digest == in_digest:
        cached = store.cached_reply()
        if cached is not None:
            arrays, metrics = cached
            return arrays, {**metrics, K.REPLAYED: 1}

    if site is not None:  # the organisation's own limits first: a run that loosens them is refused outright
        refusal = site.run_refusal(cfg)
        if refusal is not None:
            return Decline(*refusal)
        if not site.report.ok:
            return Decline(K.CONTRACT_VIOLATION, site.contract_detail())
    elif drops_out(cfg, pid, server_round):  # simulated scenarios never touch an organisation's client
        raise ClientDropped(f"client {pid} dropped out of round {server_round} (simulated, p={cfg.dropout})")
    attacker = site is None and pid in attackers(cfg)
    if site is not None:
        x_train, y_train = _site_train(site, cfg)
    elif train_rows is not None:
        x_train, y_train = train_rows
    else:
        shard = client_shard(cfg, pid)
        x_train, y_train = shard.x_train, shard.y_train
    schema = site.schema if site is not None else task_of(cfg).schema
    y_train = (schema.target.num_classes - 1) - y_train if attacker and cfg.attack == "label-flip" else y_train
    n = len(y_train)
    noise = 0.0
    if cfg.dp:
        # Everything below (weight, sample rate, steps, the update's divisor, the delta check) is computed
        # from the noisy count, so the exact row count never leaves the client, not even through the scale.
        seed = (cfg.seed, pid, 0xC0, server_round) if cfg.insecure_seeded_noise else None
        rows = state.noisy_count(n, noise_std=cfg.count_noise, server_round=server_round, insecure_seed=seed)
    else:
        rows = n
    # the sample rate, the update's divisor and the steps all come from the released (noisy) count
    rate, _, batches = poisson_plan(rows, cfg.batch_size)
    steps = cfg.local_steps or cfg.local_epochs * batches
    if cfg.dp:
        if cfg.delta >= 1.0 / rows:
            store.save(state)
            return Decline("delta-too-large", f"delta {cfg.delta} >= 1/n = {1 / rows:.3g} for about {rows} rows")
        query = planned_query_release(cfg)
        count = [r.step() for r in state.releases if r.level == "count"]
        noise = state.noise_for(epsilon=cfg.epsilon, delta=cfg.delta, rate=rate, steps=cfg.planned_rounds * steps,
                                accountant=cfg.accountant, planned=[*count, query])  # fmt: skip
        # the worst this round can cost: its training, plus the query still to come
        queried = any(r.level == "query" for r in state.releases)
        planned = [] if queried else [query]
        projected = compose_epsilon([*state.history(), (noise, rate, steps), *planned], delta=cfg.delta,
                                    accountant=cfg.accountant)  # fmt: skip
        if projected > cfg.epsilon:
            store.save(state)
            spent = state.epsilon(delta=cfg.delta, accountant=cfg.accountant)
            return Decline(
                K.BUDGET_EXHAUSTED, f"epsilon would reach {projected:.4f} > budget {cfg.epsilon} (spent {spent:.4f})"
            )
        if site is not None:  # the organisation's own lifetime limits, whatever the coordinator asked
            _record_site_releases(site, _run_key(context, run_dir), state)  # the count, conservatively now
            refusal = site.privacy_refusal(requested_delta=cfg.delta, accountant=cfg.accountant,
                                           step=(noise, rate, steps))  # fmt: skip
            if refusal is not None:
                store.save(state)
                return Decline(*refusal)
    t_checked = clock()
    if site is None and is_slow(cfg, pid):
        time.sleep(cfg.round_timeout + 1.0)  # simulated straggler: the server has moved on, the update still leaves

    model = model_for_schema(cfg.model, schema)
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in global_arrays.items()})
    seed = _insecure_seed(cfg.seed, pid, server_round) if (cfg.insecure_seeded_noise or not cfg.dp) else None
    # a simulated client only: a site (an organisation's own data) never takes a hook
    hook = optimizer_hooks(pid, server_round) if optimizer_hooks is not None and site is None else None
    result = train(
        model, x_train, y_train,
        epochs=cfg.local_epochs, batch_size=cfg.batch_size, lr=cfg.lr_at(server_round), momentum=cfg.momentum,
        seed=seed, noise_multiplier=noise if cfg.dp else None, max_grad_norm=cfg.max_grad_norm,
        history=state.history(), accountant=cfg.accountant, max_steps=steps, optimizer_hook=hook,
        released_rows=rows if cfg.dp else None,
    )  # fmt: skip
    t_trained = clock()
    if cfg.dp:
        # charge what the privacy engine did: its own accountant's record of this round, never a recomputation
        if len(result.released) != 1:
            raise RuntimeError(f"expected one (noise, rate, steps) entry from Opacus's accountant: {result.released}")
        z, q, k = result.released[0]
        state.releases.append(Release("sample", server_round, z, q, k))
        noise, rate = z, q  # the metrics below report what was charged
    state.last_round, state.last_input_digest = server_round, in_digest
    if site is not None and cfg.dp:
        _record_site_releases(site, _run_key(context, run_dir), state)
    metrics: dict[str, Any] = {
        K.NUM_EXAMPLES: rows, K.UNIFORM_WEIGHT: 1, K.PARTITION_ID: pid, K.DECLINED: 0, K.REPLAYED: 0,
        K.NOISE_MULTIPLIER: noise, K.SAMPLE_RATE: rate, K.STEPS: result.steps, K.DELTA: cfg.delta,
        K.EPSILON: state.epsilon(delta=cfg.delta, accountant=cfg.accountant) if cfg.dp else 0.0,
        **(state.wire_history() if cfg.dp else {}),
    }  # fmt: skip
    if cfg.release_train_loss or not cfg.dp:  # outside the guarantee under DP: opt-in only
        metrics[K.TRAIN_LOSS] = result.loss
    arrays = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    if attacker:
        arrays = apply_attack(cfg.attack, arrays, global_arrays, scale=cfg.attack_scale)
    t_recorded = clock()
    store.save(state, (arrays, metrics))
    if profiling.enabled():
        phases = {"state-load, count, budget check": t_checked - t_start, **result.phases,
                  "model build and load": t_trained - t_checked - sum(result.phases.values()),
                  "charge, epsilon, metrics": t_recorded - t_trained, "state write": clock() - t_recorded}  # fmt: skip
        for phase, seconds in phases.items():
            profiling.record("client", phase, seconds, round=server_round, client=pid)
    return arrays, metrics


def _record_site_releases(site: Site, run: str, state: ClientPrivacyState) -> None:
    """Write this run's releases that the lifetime ledger does not hold yet (it drives relaunched runs too)."""
    done = {(r.level, r.round) for r in site.ledger.releases_of(run)}
    for r in state.releases:
        if (r.level, r.round) not in done:
            site.record_release(run=run, server_round=r.round, level=r.level, step=r.step())


def handle_train(msg: Message, context: Context, overrides: dict[str, Any],
                 optimizer_hooks: OptimizerHooks | None = None) -> Message:  # fmt: skip
    """Train on the local shard and reply with the update, or decline."""
    t0 = time.perf_counter()
    cfg, run_dir = resolve_config(context, overrides)
    server_round = int(msg.content[K.CONFIG][K.SERVER_ROUND])
    record = msg.content[K.ARRAYS]
    global_arrays = dict(zip(record.keys(), record.to_numpy_ndarrays(), strict=True))
    site = site_from_node_config(context.node_config)
    profiling.record("client", "config and wire decoding", time.perf_counter() - t0, round=server_round,
                     client=context.node_config["partition-id"])  # fmt: skip
    out = local_update(cfg, context, run_dir, server_round, global_arrays, optimizer_hooks=optimizer_hooks)
    pid = int(context.node_config["partition-id"])
    extra = site.fingerprint if site is not None else None
    if site is not None:
        _audit_round(site, _run_key(context, run_dir), server_round, out)
    if isinstance(out, Decline):
        return _decline(msg, pid, out.reason, out.detail, extra)
    with profiling.span("client", "wire (reply encoding)", round=server_round, client=pid):
        return _reply(msg, *out, extra)


_ACCURACY_COUNTS = (K.VAL_CORRECT, K.VAL_WRONG)


def _is_count(key: str) -> bool:
    return key.startswith((K.COUNTS_PREFIX, K.PROFILE_PREFIX)) or key in _ACCURACY_COUNTS


def _is_group_count(key: str) -> bool:
    return key.startswith(K.COUNTS_PREFIX) or key in _ACCURACY_COUNTS


def handle_query(msg: Message, context: Context, overrides: dict[str, Any]) -> Message:
    """Answer a post-training query with counts this client has noised itself, and charge it.

    Notes
    -----
    Under DP every count vector of the answer (group confusion counts on the validation rows,
    the profile histograms of the training rows, rows and correct predictions) gains Gaussian
    noise of std ``query_noise * sqrt(k)`` for ``k`` vectors (one row adds at most 1 to one
    bucket of each: L2 sensitivity ``sqrt(k)``), drawn from OS entropy *on the client*: the
    server never sees an exact count. The release is charged to the client's own state (and
    lifetime ledger) before the answer leaves; one that would exceed the budget is declined.
    ``--exact-evaluation`` leaves the group counts exact, outside the guarantee (stamped).
    """
    cfg, run_dir = resolve_config(context, overrides)
    pid = int(context.node_config["partition-id"])
    site = site_from_node_config(context.node_config)
    config = msg.content.config_records.get(K.CONFIG)
    handshake = config is not None and str(config.get(K.QUERY, "")) == K.QUERY_SCHEMA
    refusal = site.run_refusal(cfg) if site is not None else None
    if handshake:
        # The handshake before round 1: the digest of the schema this client prepared its data with
        # (public: the schema is the federation's shared declaration). No row is read, so a client
        # whose data breaks its contract still answers, and then declines each round with the reason.
        # A run that loosens this organisation's limits is refused here, before anything is released.
        schema = site.schema if site is not None else task_of(cfg).schema
        if site is not None and refusal is not None:
            site.audit.append("run-refused", run=_run_key(context, run_dir), stage="handshake", reason=refusal[0],
                              detail=refusal[1])  # fmt: skip
            return _decline(msg, pid, *refusal, {K.SCHEMA_DIGEST: schema.digest()})
        return Message(content=RecordDict({K.METRICS: MetricRecord({K.PARTITION_ID: pid}),
                                           K.CONFIG: ConfigRecord({K.SCHEMA_DIGEST: schema.digest()})}),
                       reply_to=msg)  # fmt: skip
    if site is not None and refusal is not None:  # the run loosens this organisation's limits: nothing is answered
        site.audit.append("query-declined", run=_run_key(context, run_dir), reason=refusal[0], detail=refusal[1])
        return _decline(msg, pid, *refusal)
    local = site.local_data(val_fraction=cfg.val_fraction, seed=cfg.seed) if site is not None else None
    if site is not None and not site.report.ok:  # bad data answers nothing, as it trains nothing
        return _decline(msg, pid, K.CONTRACT_VIOLATION, site.contract_detail())
    answer = answer_query(msg, cfg, pid, local)
    if not cfg.dp:
        return Message(content=RecordDict({K.METRICS: MetricRecord(answer)}), reply_to=msg)
    store = _store(context, run_dir, pid, site)
    with store.locked():
        return _answer_privately(msg, context, cfg, run_dir, pid, site, store, answer)


def _answer_privately(msg: Message, context: Context, cfg: SimulationConfig, run_dir: str | None, pid: int,
                      site: Site | None, store: Store, answer: dict[str, Any]) -> Message:  # fmt: skip
    """Check the budget, noise ``answer`` on the client, record the release (under the state lock)."""
    state = store.load()
    noised = [k for k in answer if _is_count(k) and not (cfg.exact_evaluation and _is_group_count(k))]
    release = planned_query_release(cfg)
    refusal = _query_refusal(cfg, context, run_dir, site, state, release)
    if refusal is not None:
        return _decline(msg, pid, *refusal)
    r = _query_round(state, msg.content.config_records.get(K.CONFIG))
    # A row changes one cell of each count vector (a group's confusion table, each profile histogram)
    # and exactly one of (val-correct, val-wrong): every vector has L2 sensitivity 1.
    accuracy = [k for k in noised if k in _ACCURACY_COUNTS]
    sums = [k for k in noised if k not in _ACCURACY_COUNTS]
    accuracy_std, std = query_noise_split(cfg.query_noise, cfg.query_accuracy_share, accuracy=bool(accuracy),
                                          sum_vectors=len(sums))  # fmt: skip
    rng = dp_numpy_rng((cfg.seed, pid, 0x9E, r) if cfg.insecure_seeded_noise else None)
    for k in noised:
        values = np.asarray(answer[k], dtype=np.float64)
        noisy = values + rng.normal(0.0, accuracy_std if k in _ACCURACY_COUNTS else std, values.shape)
        answer[k] = float(noisy) if noisy.ndim == 0 else [float(v) for v in noisy]
    state.releases.append(Release("query", r, *release[:2], release[2]))
    store.save(state)
    if site is not None:
        _record_site_releases(site, _run_key(context, run_dir), state)
        site.audit.append("query-answered", run=_run_key(context, run_dir), round=r, noise_std=std,
                          accuracy_noise_std=accuracy_std, keys=sorted(answer))  # fmt: skip
    answer.update({K.QUERY_NOISE_STD: std, K.QUERY_ACCURACY_NOISE_STD: accuracy_std, K.DECLINED: 0,
                   **state.wire_history()})  # fmt: skip
    answer[K.EPSILON] = state.epsilon(delta=cfg.delta, accountant=cfg.accountant)
    return Message(content=RecordDict({K.METRICS: MetricRecord(answer)}), reply_to=msg)


def _query_refusal(cfg: SimulationConfig, context: Context, run_dir: str | None, site: Site | None,
                   state: ClientPrivacyState, release: tuple[float, float, int]) -> tuple[str, str] | None:  # fmt: skip
    """Why this client may not make the query ``release`` (its run budget, its organisation's limits), or None."""
    projected = compose_epsilon([*state.history(), release], delta=cfg.delta, accountant=cfg.accountant)
    refusal = None
    if projected > cfg.epsilon:
        refusal = (K.BUDGET_EXHAUSTED, f"the query would take epsilon to {projected:.4f} > budget {cfg.epsilon}")
    elif site is not None:
        _record_site_releases(site, _run_key(context, run_dir), state)
        refusal = site.privacy_refusal(requested_delta=cfg.delta, accountant=cfg.accountant, step=release)
    if refusal is not None and site is not None:
        site.audit.append("query-declined", run=_run_key(context, run_dir), reason=refusal[0], detail=refusal[1])
    return refusal


def _query_round(state: ClientPrivacyState, config: Any) -> int:
    """The round a query release is recorded under: the server's, or the next free one."""
    r = int(config.get(K.SERVER_ROUND, state.last_round + 1)) if config is not None else state.last_round + 1
    while any(x.level == "query" and x.round == r for x in state.releases):
        r += 1  # a second query is a second release, charged under its own round
    return r


@dataclass(frozen=True)
class SecAggSetup:
    """What the query round's SecAgg+ setup stage told this client (Flower's ``secaggplus_mod`` state)."""

    threshold: int  # shares needed to unmask: no sum of fewer clients can be unmasked
    clipping_range: float
    quantization_range: int
    max_weight: float
    mod_range: int  # the ring the masked sum lives in: a smaller one than the query's could wrap the sum


def answer_through_secagg(cfg: SimulationConfig, context: Context, run_dir: str | None, config: dict[str, Any],
                          global_arrays: dict[str, np.ndarray], setup: SecAggSetup | None
                          ) -> tuple[np.ndarray, dict[str, Any]] | Decline:  # fmt: skip
    """A client's answer to the post-training query in a SecAgg+ round: the summed counts as one integer vector.

    The vector (every count vector that is only ever summed over clients, in the order the
    ``query-layout`` metric gives) goes into SecAgg+'s masked sum; the per-client accuracy counts
    travel beside it in the clear, with their local noise, as in :func:`handle_query`.

    Notes
    -----
    Under DP the summed counts gain discrete Gaussian noise (:mod:`fedready.privacy.distributed`)
    of variance ``s^2 / t`` (a *share*: the secure sum of ``n >= t`` clients carries ``n s^2 / t``)
    when the run asks for distributed noise *and*, for a deployed client, its own limits opt in
    (``allow_distributed_noise``); otherwise the whole ``s^2`` (local noise: the guarantee does
    not rest on SecAgg+). A share is sent only if the round's SecAgg+ threshold is at least ``t``:
    no sum of fewer than ``t`` clients can then be unmasked. The whole noise needs at least ``t``
    *honest* clients in the sum (a colluding client's share is known to the coordinator), which no
    client can check: that is why the organisation opts in. The release is charged as what it is
    (KLS 2021, its ``tau`` term included) before anything leaves.
    """
    pid = int(context.node_config["partition-id"])
    site = site_from_node_config(context.node_config)
    store = _store(context, run_dir, pid, site)
    with store.locked():
        return _answer_through_secagg(cfg, context, run_dir, config, global_arrays, setup, pid, site, store)


def _answer_through_secagg(cfg: SimulationConfig, context: Context, run_dir: str | None, config: dict[str, Any],
                           global_arrays: dict[str, np.ndarray], setup: SecAggSetup | None, pid: int,
                           site: Site | None, store: Store) -> tuple[np.ndarray, dict[str, Any]] | Decline:  # fmt: skip
    if site is not None:
        refusal = site.run_refusal(cfg)
        if refusal is not None:
            site.audit.append("query-declined", run=_run_key(context, run_dir), reason=refusal[0], detail=refusal[1])
            return Decline(*refusal)
        if not site.report.ok:
            return Decline(K.CONTRACT_VIOLATION, site.contract_detail())
    clip = cfg.query_secagg_clip
    if (setup is None or (setup.clipping_range, setup.quantization_range, setup.max_weight) != (clip, 2 * clip, 1.0)
            or setup.mod_range < QUERY_MODULUS):  # fmt: skip
        got = "none" if setup is None else (f"({setup.clipping_range}, {setup.quantization_range}, "
                                            f"{setup.max_weight}, {setup.mod_range})")  # fmt: skip
        return Decline(K.SECAGG_ENCODING, f"the query round's SecAgg+ (clip, levels, max weight, modulus) must be "
                                          f"({clip}, {2 * clip}, 1.0, >= 2^40) to carry integer counts exactly; "
                                          f"got {got}")  # fmt: skip
    local = site.local_data(val_fraction=cfg.val_fraction, seed=cfg.seed) if site is not None else None
    answer = answer_queries(str(config[K.QUERY]), global_arrays, cfg, pid, local)
    summed = sorted(k for k in answer if k.startswith((K.COUNTS_PREFIX, K.PROFILE_PREFIX)))
    metrics: dict[str, Any] = {
        K.PARTITION_ID: pid, K.DECLINED: 0, K.VAL_CORRECT: float(answer[K.VAL_CORRECT]),
        K.VAL_WRONG: float(answer[K.VAL_WRONG]),
        K.QUERY_LAYOUT: json.dumps([[k, len(answer[k])] for k in summed]),
        K.QUERY_NOISE_STD: 0.0, K.QUERY_SHARE_STD: 0.0, K.QUERY_SHARES: 0, K.QUERY_ACCURACY_NOISE_STD: 0.0,
    }  # fmt: skip
    values = {k: np.asarray(answer[k], dtype=np.int64) for k in summed}
    if cfg.dp:
        share = _noise_through_secagg(cfg, context, run_dir, config, answer, values, setup, pid, site, store)
        if isinstance(share, Decline):
            return share
        metrics.update(share)
    vector = np.concatenate([values[k] for k in summed]) if summed else np.zeros(0, dtype=np.int64)
    if np.abs(vector).max(initial=0) > clip:  # SecAgg+ would clip it silently: refused loudly instead
        raise RuntimeError(f"a summed count is beyond --query-secagg-clip {clip}; raise it (below 2^30 and "
                           f"2^40 / (2 x clients asked))")  # fmt: skip
    return vector.astype(np.float64), metrics


def _noise_through_secagg(cfg: SimulationConfig, context: Context, run_dir: str | None, config: dict[str, Any],
                          answer: dict[str, Any], values: dict[str, np.ndarray], setup: SecAggSetup, pid: int,
                          site: Site | None, store: Store) -> dict[str, Any] | Decline:  # fmt: skip
    """Noise ``answer``'s accuracy counts (locally) and ``values`` (a share, or the whole), charge it, say what."""
    state = store.load()
    exact_groups = cfg.exact_evaluation
    accuracy = [k for k in _ACCURACY_COUNTS if not exact_groups]
    sums = [k for k in values if not (exact_groups and k.startswith(K.COUNTS_PREFIX))]
    accuracy_std, std = query_noise_split(cfg.query_noise, cfg.query_accuracy_share, accuracy=bool(accuracy),
                                          sum_vectors=len(sums))  # fmt: skip
    t = query_threshold(cfg)
    # a share's bound is proven in zCDP/RDP only (KLS 2021): a site whose lifetime ledger composes with PRV adds its
    # whole noise, which PRV charges soundly (the run's own accountant is refused with PRV when the config is built)
    opted = bool(sums) and cfg.query_distributed_noise and (
        site is None or (site.limits.allow_distributed_noise and site.limits.accountant == "rdp"))
    if opted and setup.threshold < t:  # a sum of fewer than t clients could be unmasked: no share is sent
        why = (f"the query round's SecAgg+ threshold {setup.threshold} is below t = {t}: a sum of fewer than t "
               f"shares would carry less than the whole noise")  # fmt: skip
        return Decline(K.SECAGG_BELOW_T, why)
    cells = sum(len(values[k]) for k in sums)
    # every summed vector changes in one cell by 1 when a row is added or removed: L1 = vectors, L2 = sqrt(vectors)
    share_var = std * std / t if opted else std * std
    if sums:
        rho_sums, tau = distributed_rho(share_variance=share_var, shares=t if opted else 1, l1=len(sums),
                                        l2=math.sqrt(len(sums)), dim=cells)  # fmt: skip
    else:
        rho_sums, tau = 0.0, 0.0
    rho = (0.5 / accuracy_std**2 if accuracy else 0.0) + rho_sums
    if rho == 0.0:  # --exact-evaluation with nothing to noise
        return {}
    release = (gaussian_equivalent(rho), 1.0, 1)
    refusal = _query_refusal(cfg, context, run_dir, site, state, release)
    if refusal is not None:
        return Decline(*refusal)
    r = _query_round(state, config)
    seeded = (cfg.seed, pid, 0x9E, r) if cfg.insecure_seeded_noise else None
    rng = dp_numpy_rng(seeded)
    for k in accuracy:
        answer[k] = float(answer[k] + rng.normal(0.0, accuracy_std))
    randbelow = random.Random(repr(seeded)).randrange if seeded is not None else None  # only the stamped research mode
    # the exact counts are clamped 10 share stds inside the clip (1-Lipschitz: the sensitivity stands), so the
    # noised value stays inside it; the caller's error on a value beyond the clip is the backstop
    bound = math.floor(cfg.query_secagg_clip - 10.0 * math.sqrt(share_var))
    for k in sums:
        exact = np.clip(values[k], -bound, bound) if bound > 0 else values[k]
        values[k] = exact + sample_discrete_gaussian(share_var, values[k].size, randbelow=randbelow)
    share_std = math.sqrt(share_var) if sums else 0.0
    state.releases.append(Release("query", r, release[0], 1.0, 1, shares=t if opted else 0, share_std=share_std,
                                  tau=tau))  # fmt: skip
    store.save(state)
    if site is not None:
        _record_site_releases(site, _run_key(context, run_dir), state)
        site.audit.append("query-answered", run=_run_key(context, run_dir), round=r, secagg=True,
                          distributed_noise=opted, shares=t if opted else 0, share_std=share_std, noise_std=std,
                          accuracy_noise_std=accuracy_std, tau=tau, keys=sorted(values))  # fmt: skip
    return {
        K.VAL_CORRECT: float(answer[K.VAL_CORRECT]), K.VAL_WRONG: float(answer[K.VAL_WRONG]),
        K.QUERY_NOISE_STD: std if sums else 0.0, K.QUERY_SHARE_STD: share_std, K.QUERY_SHARES: t if opted else 0,
        K.QUERY_ACCURACY_NOISE_STD: accuracy_std if accuracy else 0.0,
        K.EPSILON: state.epsilon(delta=cfg.delta, accountant=cfg.accountant), **state.wire_history(),
    }  # fmt: skip


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


def make_client_app(
    overrides: dict[str, Any] | None = None, *, optimizer_hooks: OptimizerHooks | None = None
) -> ClientApp:
    """Return a ClientApp whose run config is ``context.run_config`` updated by ``overrides``.

    ``optimizer_hooks`` is for simulations only (the sample-level privacy audit adds its gradient
    canaries with it): only Python code that builds the ClientApp object can pass it. The app
    ``flwr run`` and SuperNodes load (:data:`app`) is built without it, and a client with its own
    data (a site) never calls it, so no coordinator can reach an organisation's training with it.
    """
    fixed = dict(overrides or {})
    # the wire log is outermost: it records each reply as it leaves, after clipping
    client_app = ClientApp(mods=[make_wire_log_mod(fixed), client_clipping_mod])

    @client_app.train()
    def _train(msg: Message, context: Context) -> Message:
        torch.set_num_threads(1)  # one core per virtual client; Ray runs several side by side
        return handle_train(msg, context, fixed, optimizer_hooks)

    @client_app.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        torch.set_num_threads(1)
        return handle_query(msg, context, fixed)

    return client_app


app = make_client_app()
