"""The server half of secure aggregation: Flower's SecAgg+ workflow with fedready's bookkeeping.

In Flower 1.42 SecAgg+ runs through the legacy ``DefaultWorkflow`` +
``SecAggPlusWorkflow`` path and a legacy strategy. The workflow reconstructs only
the (weighted) sum of the clients' masked vectors; every ``FitRes`` the strategy
sees carries that same aggregate, never an individual update. Client-level DP uses
client-side clipping (the server cannot clip what it cannot see: each client clips its
own update with Flower's ``fixedclipping_mod`` before masking), Poisson client sampling
from OS entropy, and the fixed denominator of :mod:`fedready.server.client_dp`: the
workflow's mean over the ``n`` clients that made it into the sum is turned back into the
sum of clipped updates (``n * (mean - current)``), Gaussian noise ``N(0, (z C)^2)`` is added
to that sum and it is divided by the expected number of sampled clients ``m``. A dropout
therefore contributes zero and never changes the denominator; the pre-noise aggregate
moves by at most ``C / m`` when one client is added or removed.

Parameters of the protocol are validated by :func:`fedready.config.make_config`:
``secagg_shares`` (each client's secret is split among this many neighbours),
``secagg_threshold`` (shares needed to reconstruct; up to ``shares - threshold``
dropouts are tolerated, and fewer than ``threshold`` colluding neighbours learn
nothing), ``secagg_clip_range`` and ``secagg_quantization`` (values are clipped to
``+-clip_range`` and quantised to that many levels before masking).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, Context
from flwr.common import FitIns, FitRes, Parameters, Scalar, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import LegacyContext, ServerConfig
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.serverapp import Grid
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from fedready import constants as K
from fedready.audit import AuditLog
from fedready.config import QUERY_MODULUS, SimulationConfig, query_clients, query_threshold
from fedready.constants import LEDGER_FILE
from fedready.errors import IntegrityError
from fedready.federation import task_of
from fedready.modelio import arrays_digest
from fedready.monitoring.federated import profile_needed, write_profile
from fedready.privacy.distributed import distributed_tau
from fedready.privacy.ledger import Ledger
from fedready.privacy.masks import full_entropy_masks
from fedready.server.app import (
    RoundReport,
    _append_metrics,
    _Checkpointer,
    _evaluate,
    charge_history,
    client_budget_rounds,
    client_noise_multiplier,
    new_ledger,
    refresh_privacy,
    write_summary,
)
from fedready.server.client_dp import ClientLevelDP
from fedready.server.queries import final_model, query_nodes, query_round, write_report
from fedready.server.strategies import client_sample_rate, sampled_clients

__all__ = ["run_secagg_query", "run_secagg_rounds"]

log = logging.getLogger(__name__)


class _BookkeepingFedAvg(LegacyFedAvg):
    """Flower's legacy FedAvg that hands each round's results to fedready's ledger first.

    With ``client_dp`` set it samples clients by Poisson sampling and replaces the weighted mean
    by the fixed-denominator noisy sum of :class:`~fedready.server.client_dp.ClientLevelDP`.
    """

    def __init__(self, *, on_fit: Callable[[int, list, list], None], client_dp: ClientLevelDP | None = None,
                 **kwargs: Any) -> None:  # fmt: skip
        super().__init__(**kwargs)
        self._on_fit = on_fit
        self.client_dp = client_dp
        self.current: list[np.ndarray] | None = None

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        self.current = parameters_to_ndarrays(parameters)
        if self.client_dp is None:
            return super().configure_fit(server_round, parameters, client_manager)
        client_manager.wait_for(self.client_dp.population_to_wait_for, timeout=self.client_dp.wait_for_nodes)
        clients = client_manager.all()
        picked = self.client_dp.sample(clients)
        config = dict(self.on_fit_config_fn(server_round)) if self.on_fit_config_fn else {}
        config[KEY_CLIPPING_NORM] = self.client_dp.clipping_norm  # read by the clients' fixedclipping_mod
        return [(clients[cid], FitIns(parameters, config)) for cid in picked]

    def aggregate_fit(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures: list[Any]
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        self._on_fit(server_round, results, failures)
        if self.client_dp is None:
            return super().aggregate_fit(server_round, results, failures)
        assert self.current is not None
        names = [str(i) for i in range(len(self.current))]
        reference = dict(zip(names, self.current, strict=True))
        if results:  # every FitRes carries the same unmasked mean over the n clients in the sum
            mean = parameters_to_ndarrays(results[0][1].parameters)
            n = len(results)
            # the sum of the n clipped models, as n pseudo-updates whose sum is exactly that sum
            summed = [reference[k] + n * (m - reference[k]) for k, m in zip(names, mean, strict=True)]
            # each client clipped itself (fixedclipping_mod) before masking
            new = self.client_dp.aggregate_arrays([dict(zip(names, summed, strict=True))], reference,
                                                  summed_by_secagg=True)  # fmt: skip
        else:
            new = self.client_dp.aggregate_arrays([], reference)
        return ndarrays_to_parameters([new[k] for k in names]), {}


class _FullEntropySecAggPlus(SecAggPlusWorkflow):
    """Flower's SecAgg+ workflow, unmasking with the clients' full-entropy masks (:mod:`fedready.privacy.masks`)."""

    def unmask_stage(self, grid: Grid, context: Any, state: Any) -> bool:
        with full_entropy_masks():
            return super().unmask_stage(grid, context, state)


def _history(metrics: dict[str, Any]) -> dict[str, Any]:
    """A SecAgg+ client's release history: legacy metrics carry scalars only, so it travels as JSON."""
    raw = metrics.get(K.HISTORY_JSON)
    return json.loads(str(raw)) if raw else {}


def run_secagg_rounds(
    grid: Grid, context: Context, cfg: SimulationConfig, run_dir: Path,
    *, on_round: Callable[[RoundReport], None] | None = None, refused: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """Run (or resume) ``cfg`` with SecAgg+; same run folder, ledger and audit log as ``run_rounds``."""
    t0 = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = _Checkpointer(run_dir)
    audit = AuditLog(run_dir / "audit.jsonl")
    state = ckpt.load()
    if state is None:
        model = task_of(cfg).model(seed=cfg.seed)
        current = {k: v.numpy() for k, v in model.state_dict().items()}
        ledger = new_ledger(cfg, run_dir.name)
        offset = 0
        audit.append("run-started", run=run_dir.name, config=cfg.model_dump())
    else:
        offset, current, ledger = state
        audit.append("run-resumed", run=run_dir.name, after_round=offset)
    names = list(current)
    z = client_noise_multiplier(cfg)
    m = sampled_clients(cfg)
    client_dp = None
    if z is not None:
        client_dp = ClientLevelDP(
            LegacyFedAvg(),
            noise_multiplier=z,
            clipping_norm=cfg.client_clip,
            sample_rate=client_sample_rate(cfg),
            population=cfg.num_clients,
            clip_on_client=True,
            wait_for_nodes=cfg.round_timeout,
            insecure_seed=(cfg.seed, 0xD9) if cfg.insecure_seeded_noise else None,
        )  # type: ignore[arg-type]
        client_dp.population_to_wait_for = cfg.num_clients - refused
    book: dict[str, Any] = {"report": None, "first": True, "accuracy": float("nan"), "loss": float("nan"),
                            "t": time.perf_counter()}  # fmt: skip

    def on_fit(r: int, results: list[tuple[ClientProxy, FitRes]], failures: list[Any]) -> None:
        server_round = offset + r
        report = RoundReport(round=server_round, accuracy=float("nan"), loss=float("nan"), epsilon=0.0, sampled=m,
                             aggregated=len(results))  # fmt: skip
        received = set()
        for _, res in results:
            mt = res.metrics
            client = str(int(mt[K.PARTITION_ID]))
            report.trained.append(client)
            try:
                charge_history(ledger, client, _history(mt), delta=cfg.delta, current_round=server_round)
            except (IntegrityError, ValueError) as e:  # the sum is already formed: record the problem, carry on
                audit.append("history-malformed", round=server_round, client=client, detail=str(e))
            received.add(arrays_digest(dict(zip(names, parameters_to_ndarrays(res.parameters), strict=True))))
        report.trained.sort()
        report.failed = [{"client": "?", "reason": str(f)} for f in failures]
        # What the server-side strategy was handed: one vector, the unmasked aggregate.
        audit.append("secagg-aggregate", round=server_round, clients=report.trained, received=sorted(received))
        if client_dp is not None:  # released below (noise added to the sum in aggregate_fit): charge it now
            ledger.charge(round=server_round, client="*", level="client", noise_multiplier=z, steps=1,
                          sample_rate=client_sample_rate(cfg), delta=cfg.client_delta)  # fmt: skip
        book["report"] = report

    def evaluate_fn(r: int, parameters: list[np.ndarray], config: dict[str, Scalar]) -> tuple[float, dict] | None:
        if r == 0:
            return None
        server_round = offset + r
        report = book["report"] or RoundReport(round=server_round, accuracy=float("nan"), loss=float("nan"),
                                               epsilon=0.0, sampled=m, skipped=True)  # fmt: skip
        book["report"] = None
        arrays = dict(zip(names, parameters, strict=True))
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

    # Each released round costs exactly (z, q, 1): run only as many as the client-level budget allows.
    allowed = client_budget_rounds(ledger, cfg, z) if z is not None else cfg.rounds
    remaining = min(cfg.rounds - offset, allowed)
    stopped = ""
    if remaining < cfg.rounds - offset:
        stopped = (f"client-level budget: {remaining} more round(s) fit in epsilon {cfg.client_epsilon}; "
                   f"{cfg.rounds - offset - remaining} not run")  # fmt: skip
        audit.append("run-stopped", round=offset + remaining + 1, reason="client-budget", detail=stopped)
        log.warning(stopped)
    if remaining > 0:
        strategy = _BookkeepingFedAvg(
            on_fit=on_fit, client_dp=client_dp, fraction_fit=cfg.fraction_train, fraction_evaluate=0.0,
            min_fit_clients=min(m, cfg.num_clients - refused), min_evaluate_clients=0,
            min_available_clients=cfg.num_clients - refused,
            evaluate_fn=evaluate_fn, on_fit_config_fn=lambda r: {K.SERVER_ROUND: offset + r},
            initial_parameters=ndarrays_to_parameters([current[k] for k in names]),
        )  # fmt: skip
        workflow = DefaultWorkflow(fit_workflow=_FullEntropySecAggPlus(
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
                         stopped=stopped, resumed_from=offset, t0=t0)  # fmt: skip


class _QueryFedAvg(LegacyFedAvg):
    """The post-training query as one SecAgg+ round: the final model and the query to the clients asked.

    Every ``FitRes`` it is handed carries the unmasked mean of the clients' count vectors and, beside
    it in the clear, that client's own metrics (its locally noised accuracy counts, its release history).
    """

    def __init__(self, *, config: dict[str, Scalar], expected: int, fraction: float, seed: int, timeout: float,
                 **kwargs: Any) -> None:  # fmt: skip
        super().__init__(**kwargs)
        self.query_config, self.expected, self.fraction = config, expected, fraction
        self.seed, self.timeout = seed, timeout
        self.results: list[tuple[ClientProxy, FitRes]] = []
        self.failures: list[Any] = []

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        client_manager.wait_for(self.expected, timeout=int(self.timeout))
        proxies = {p.node_id: p for p in client_manager.all().values()}
        picked = query_nodes(sorted(proxies), self.fraction, self.seed)  # the same clients the plain path asks
        return [(proxies[n], FitIns(parameters, dict(self.query_config))) for n in picked]

    def aggregate_fit(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures: list[Any]
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        self.results, self.failures = list(results), list(failures)
        return None, {}


def run_secagg_query(grid: Grid, context: Context, cfg: SimulationConfig, run_dir: Path, *, refused: int = 0
                     ) -> dict[str, Any] | None:  # fmt: skip
    """Ask the clients for their counts on the final model in one SecAgg+ round; write what the sum says.

    The count vectors that are only ever summed (group confusion tables, the reference profile's
    histograms) travel masked, and the server unmasks only their sum; each client's two accuracy
    counts travel beside them with the client's own noise. Under DP each client added to its summed
    counts either a ``1/t`` share of the noise (distributed noise: the sum of ``n >= t`` shares carries
    ``n / t`` times the whole variance) or the whole noise (a deployed client whose limits do not opt
    in, or ``--query-distributed-noise false``); the sum's noise std is the root of the sum of the
    variances they added. A sum of ``n >= t`` clients carries at least the whole noise, whatever the
    mix: one whole-noise client already adds ``s^2``, and ``t`` sharers add ``s^2`` between them
    (the charge each client made); a sum holding shares with fewer than ``t`` clients in all, or
    shares made for another ``t``, is refused (one line), and so is one whose clients disagree on
    its layout. The refusal keeps a mis-noised sum out of the report; it is no privacy barrier (the
    sum is already unmasked): what protects a client is that its share is sent only when the
    round's SecAgg+ threshold is at least ``t``.

    The query round has its own SecAgg+ parameters: every client asked is every other's neighbour
    (``num_shares`` = clients asked), the threshold is ``t``, values are clipped to
    ``+-query_secagg_clip`` and quantised to ``2 x query_secagg_clip`` levels (one level per integer:
    integer counts survive exactly), in a ring of ``2^40`` (no wrap for the sums the config allows).

    Returns
    -------
    dict or None
        The run summary with the query's releases charged (None if no sum came back).
    """
    asked = min(query_clients(cfg), cfg.num_clients - refused)
    t = query_threshold(cfg)
    if not 3 <= asked or asked <= t:
        log.warning("no federated counts: the query's SecAgg+ round needs more than t = %d clients (and at "
                    "least 3); %d can be asked", t, asked)  # fmt: skip
        return None
    arrays, _ = final_model(run_dir)
    queries = [K.QUERY_GROUP_COUNTS, *([K.QUERY_PROFILE] if profile_needed(run_dir) else [])]
    config: dict[str, Scalar] = {K.QUERY: ",".join(queries), K.SERVER_ROUND: query_round(run_dir), K.QUERY_SECAGG: 1}
    names = list(arrays)
    clip = cfg.query_secagg_clip
    strategy = _QueryFedAvg(
        config=config, expected=cfg.num_clients - refused, fraction=cfg.fraction_evaluate, seed=cfg.seed,
        timeout=cfg.round_timeout, fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=asked,
        min_evaluate_clients=0, min_available_clients=cfg.num_clients - refused,
        initial_parameters=ndarrays_to_parameters([arrays[k] for k in names]),
    )  # fmt: skip
    workflow = DefaultWorkflow(fit_workflow=_FullEntropySecAggPlus(
        num_shares=asked, reconstruction_threshold=t, clipping_range=float(clip), quantization_range=2 * clip,
        modulus_range=QUERY_MODULUS, max_weight=1.0, timeout=cfg.round_timeout,
    ))  # fmt: skip
    workflow(grid, LegacyContext(context=context, config=ServerConfig(num_rounds=1, round_timeout=cfg.round_timeout),
                                 strategy=strategy))  # fmt: skip
    failed = [str(f) for f in strategy.failures]
    if not strategy.results:
        log.warning("no federated counts: the query's SecAgg+ round did not complete (fewer than t = %d clients "
                    "answered; %d failed)", t, len(failed))  # fmt: skip
        return None
    answers = [dict(res.metrics) for _, res in strategy.results]
    path = run_dir / LEDGER_FILE
    ledger = Ledger.load(path) if path.exists() else new_ledger(cfg, run_dir.name)
    audit = AuditLog(run_dir / "audit.jsonl")
    for a in answers:
        try:
            charge_history(ledger, str(int(a[K.PARTITION_ID])), _history(a), delta=cfg.delta,
                           current_round=int(config[K.SERVER_ROUND]))  # fmt: skip
        except (IntegrityError, ValueError) as e:  # the sum is formed: record the problem, carry on
            audit.append("history-malformed", round=int(config[K.SERVER_ROUND]), client=str(a.get(K.PARTITION_ID)),
                         detail=str(e))  # fmt: skip
    summary = refresh_privacy(run_dir, cfg, ledger)
    mean = parameters_to_ndarrays(strategy.results[0][1].parameters)[0]
    secure = secure_sum(answers, mean, t)
    if secure.get("refused"):
        log.warning("refused the query's secure sum: %s; its summed counts are not used", secure["refused"])
        audit.append("secure-sum-refused", round=int(config[K.SERVER_ROUND]), detail=secure["refused"])
    write_report(cfg, run_dir, arrays, answers, failed=failed, declined=0, secure_sum=secure)
    if K.QUERY_PROFILE in queries and not secure.get("refused"):
        write_profile(cfg, run_dir, [], arrays_digest(arrays), secure_sum=secure)
    audit.append("secure-query", round=int(config[K.SERVER_ROUND]), failed=len(failed),
                 **{k: v for k, v in secure.items() if k != "sums"})  # fmt: skip
    return summary


def _query_charge(answer: dict[str, Any]) -> float | None:
    """The noise multiplier a client charged for its last post-training answer (its history), or None.

    The history is the client's (untrusted) word: a malformed one says nothing (the ledger records it).
    """
    try:
        history = _history(answer)
        levels, noises = history.get(K.HISTORY_LEVEL, []), history.get(K.HISTORY_NOISE, [])
        charges = [float(z) for level, z in zip(levels, noises, strict=True) if int(level) == 2]
    except (ValueError, TypeError, AttributeError):
        return None
    return charges[-1] if charges else None


def secure_sum(answers: list[dict[str, Any]], mean: np.ndarray, t: int) -> dict[str, Any]:
    """The summed count vectors from SecAgg+'s unmasked ``mean`` over the ``answers``' clients, and their noise.

    Returns
    -------
    dict
        ``sums`` (key -> summed vector, empty when refused), ``noise_std`` (on each summed count),
        ``clients``, ``shares`` (clients that added a ``1/t`` share), ``whole_noise`` (clients that added
        the whole noise), ``threshold`` (``t``), ``tau`` (KLS 2021's term for ``t`` shares),
        ``charged_noise_multiplier`` (the least Gaussian-equivalent multiplier a client charged for
        this answer, from its release history; None if none says), a description, and ``refused``
        (why the sum is not used, or empty).
    """
    n = len(answers)
    total = np.rint(np.asarray(mean, dtype=np.float64) * n).astype(np.int64)  # weights 1: the mean of n integers
    layouts = {str(a.get(K.QUERY_LAYOUT, "")) for a in answers}
    sharers = [a for a in answers if int(a.get(K.QUERY_SHARES, 0)) > 0]
    share_std = max((float(a[K.QUERY_SHARE_STD]) for a in sharers), default=0.0)
    whole = [a for a in answers if int(a.get(K.QUERY_SHARES, 0)) == 0 and float(a.get(K.QUERY_SHARE_STD, 0)) > 0]
    variance = sum(float(a.get(K.QUERY_SHARE_STD, 0.0)) ** 2 for a in answers)
    charged = [_query_charge(a) for a in answers]
    out: dict[str, Any] = {
        "sums": {}, "noise_std": math.sqrt(variance), "clients": n, "shares": len(sharers),
        "whole_noise": len(whole), "threshold": t, "share_std": share_std,
        "tau": distributed_tau(share_std**2, t) if sharers else 0.0,
        "charged_noise_multiplier": min((z for z in charged if z is not None), default=None),
        "distributed": (f"{len(sharers)} client(s) added a 1/{t} share of the noise (std {share_std:.4g} per count), "
                        f"{len(whole)} their whole noise" if sharers else
                        f"{len(whole)} client(s) added their whole noise (distributed noise off)"),
        "refused": "",
    }  # fmt: skip
    if len(layouts) != 1:
        out["refused"] = "the clients disagree on the layout of the summed vector"
    elif sharers and (n < t or any(int(a[K.QUERY_SHARES]) != t for a in sharers)):
        got = sorted({int(a[K.QUERY_SHARES]) for a in sharers})
        out["refused"] = (f"it holds {n} client(s), {len(sharers)} of them with distributed-noise shares for "
                          f"t = {got}; a share is charged for a sum of at least t = {t} clients")  # fmt: skip
    else:
        layout = json.loads(layouts.pop() or "[]")
        if sum(int(length) for _, length in layout) != total.size:
            out["refused"] = f"the layout names {sum(int(x) for _, x in layout)} counts, the sum holds {total.size}"
        else:
            start = 0
            for key, length in layout:
                out["sums"][str(key)] = total[start : start + int(length)].astype(np.float64)
                start += int(length)
    if out["refused"]:
        out["noise_std"] = 0.0
    return out
