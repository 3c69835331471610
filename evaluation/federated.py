"""Federated fairness: clients count, the server sums.

The server sends the global model in a Flower ``evaluate`` message with the query
``group-counts``; each client predicts on its own local validation split and
answers with a (tp, fp, tn, fn) table per group of every sensitive attribute,
plus its number of correct predictions and rows. No row, score or label leaves a
client, only counts.

Notes
-----
Under DP each client adds Gaussian noise to its counts before they leave and charges
the release to its budget (:func:`fedready.client.app.handle_query`): the server sums
noisy counts, clips negative sums to zero (post-processing) and computes the metrics
from them. Without DP, or with ``--exact-evaluation`` (outside the guarantee, stamped in
the ledger), the counts are exact and the summed metrics equal those on the pooled
predictions (:mod:`fedready.evaluation.fairness`; tested to 1e-9 against fairlearn).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedready import constants as K
from fedready._io import atomic_write_text
from fedready.config import SimulationConfig
from fedready.errors import IntegrityError
from fedready.evaluation.estimates import federated_fairness_estimates
from fedready.federation import task_of
from fedready.intervals import client_spread
from fedready.models import model_for_schema

if TYPE_CHECKING:
    from fedready.deploy.site import LocalData
    from fedready.schema import DataSchema
from fedready.evaluation.fairness import (
    confusion_counts,
    fairness_from_counts,
    group_labels,
    group_names,
)
from fedready.modelio import arrays_digest, load_npz

__all__ = [
    "FEDERATED_FILE",
    "answer_query",
    "federated_numbers",
    "federated_report",
    "final_model",
    "local_group_counts",
    "query_all",
    "run_federated_evaluation",
    "sum_replies",
]

FEDERATED_FILE = "federated_eval.json"
FORMAT = 2  # 2: per-client (correct, wrong) and every number with its interval


def local_group_counts(
    cfg: SimulationConfig, partition_id: int, arrays: dict[str, np.ndarray], local: LocalData | None = None
) -> dict[str, Any]:
    """A client's answer to the ``group-counts`` query, as MetricRecord content.

    ``local`` is a deployed client's own validation split; without it the simulated
    shard of ``partition_id`` is used.

    Returns
    -------
    dict
        ``counts/<attribute>``: flat list ``[tp, fp, tn, fn]`` per group in
        :func:`~fedready.evaluation.fairness.group_names` order; ``val-correct``,
        ``val-wrong`` (decisions right and wrong on the validation rows), ``partition-id``.
    """
    from fedready.federation import client_shard, client_validation_attributes

    schema = local.schema if local is not None else task_of(cfg).schema
    if local is not None:
        x_val, y_val, attributes = local.x_val, local.y_val, local.val_attributes
    else:
        shard = client_shard(cfg, partition_id)
        x_val, y_val = shard.x_val, shard.y_val
        attributes = client_validation_attributes(cfg, partition_id)
    model = model_for_schema(cfg.model, schema, arrays=arrays)
    import torch

    with torch.no_grad():
        pred = model(torch.from_numpy(x_val)).argmax(1).numpy()
    correct = int((pred == y_val).sum())
    out: dict[str, Any] = {K.PARTITION_ID: partition_id, K.VAL_CORRECT: correct, K.VAL_WRONG: int(len(y_val)) - correct}
    for attr, raw in attributes.items():
        names = group_names(schema, attr)
        table = confusion_counts(y_val, pred, group_labels(schema, attr, raw), names, classes=schema.target.num_classes)
        out[K.COUNTS_PREFIX + attr] = [int(v) for v in table.reshape(-1)]
    return out


def sum_replies(replies: list[dict[str, Any]], cfg: SimulationConfig) -> dict[str, Any]:
    """Sum the clients' count tables (exact, or noised by each client) and keep each client's (correct, wrong).

    Noisy sums are clipped to zero (post-processing); exact counts stay integers.

    Raises
    ------
    IntegrityError
        If a reply's count tables disagree in shape with the schema, or exact counts hold negatives.
    """
    schema = task_of(cfg).schema
    k = schema.target.num_classes
    width = 4 if k == 2 else k * k  # (tp, fp, tn, fn), or the confusion matrix, per group
    sums: dict[str, np.ndarray] = {}
    per_client: dict[str, tuple[float, float]] = {}
    noisy = any(float(r.get(K.QUERY_NOISE_STD, 0.0)) > 0 for r in replies)
    for r in replies:
        per_client[str(int(r[K.PARTITION_ID]))] = (float(r[K.VAL_CORRECT]), float(r[K.VAL_WRONG]))
        for key, flat in r.items():
            if not key.startswith(K.COUNTS_PREFIX):
                continue
            attr = key.removeprefix(K.COUNTS_PREFIX)
            table = np.asarray(flat, dtype=np.float64)
            if table.size != width * len(group_names(schema, attr)) or not np.isfinite(table).all():
                raise IntegrityError(f"client {r[K.PARTITION_ID]}: malformed counts for '{attr}'")
            if not noisy and (table < 0).any():
                raise IntegrityError(f"client {r[K.PARTITION_ID]}: negative counts for '{attr}'")
            sums[attr] = sums.get(attr, 0) + table.reshape(-1, width)
    ordered = [a for a in schema.sensitive if a in sums] + sorted(set(sums) - set(schema.sensitive))
    out = {a: np.maximum(sums[a], 0.0) for a in ordered}
    if not noisy:
        out = {a: v.astype(np.int64) for a, v in out.items()}
    return {"counts": {a: v.tolist() for a, v in out.items()}, "per_client": per_client, "noisy": noisy}


def _query_nodes(nodes: list[int], fraction: float, seed: int) -> list[int]:
    """All nodes, or a seeded sample of ``ceil(fraction * len(nodes))`` of them (at least one)."""
    if fraction >= 1.0 or not nodes:
        return nodes
    k = max(1, math.ceil(fraction * len(nodes)))
    picked = np.random.default_rng([seed, 0xE7A1]).choice(len(nodes), size=k, replace=False)
    return [nodes[i] for i in sorted(picked)]


def query_all(
    grid: Grid,
    arrays: ArrayRecord,
    num_clients: int,
    timeout: float,
    query: str = K.QUERY_GROUP_COUNTS,
    *,
    fraction: float = 1.0,
    seed: int = 0,
    server_round: int = 0,
) -> list[Message]:
    """Send the model and ``query`` to the connected clients (all, or a seeded ``fraction``).

    ``server_round`` is the ledger round the clients charge this query under.
    """
    deadline = time.monotonic() + timeout
    nodes = list(grid.get_node_ids())
    while len(nodes) < num_clients and time.monotonic() < deadline:
        time.sleep(0.5)
        nodes = list(grid.get_node_ids())
    # With thousands of clients, asking each one costs as much as many training rounds.
    nodes = _query_nodes(sorted(nodes), fraction, seed)
    messages = [
        Message(content=RecordDict({K.ARRAYS: arrays,
                                    K.CONFIG: ConfigRecord({K.QUERY: query, K.SERVER_ROUND: server_round})}),
                dst_node_id=node, message_type=MessageType.EVALUATE)
        for node in nodes
    ]  # fmt: skip
    return list(grid.send_and_receive(messages=messages, timeout=timeout))


def final_model(run_dir: Path) -> tuple[dict[str, np.ndarray], ArrayRecord]:
    """A finished run's final model, as arrays and as the record the queries send."""
    import torch

    arrays = load_npz((run_dir / "model.npz").read_bytes())
    return arrays, ArrayRecord({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()})


def run_federated_evaluation(
    grid: Grid, cfg: SimulationConfig, run_dir: Path, *, replies: list[Message] | None = None
) -> dict[str, Any]:
    """Ask every client (or ``cfg.fraction_evaluate`` of them) for group counts on the final model.

    Writes ``federated_eval.json``. ``replies`` are answers already collected (a combined query,
    see :func:`fedready.server.app.final_queries`); without them the clients are asked here.

    Returns
    -------
    dict
        Summed counts, metrics per attribute, per-client accuracy spread, failed clients,
        and the model digest the counts belong to.
    """
    arrays, record = final_model(run_dir)
    if replies is None:
        from fedready.server.app import _query_round, charge_queries

        replies = query_all(grid, record, cfg.num_clients, cfg.round_timeout, fraction=cfg.fraction_evaluate,
                            seed=cfg.seed, server_round=_query_round(run_dir))  # fmt: skip
        replies = charge_queries(run_dir, cfg, replies)
    answers = [dict(m.content[K.METRICS]) for m in replies if not m.has_error()]
    ok = [a for a in answers if not int(a.get(K.DECLINED, 0)) and any(k.startswith(K.COUNTS_PREFIX) for k in a)]
    failed = [m.error.reason for m in replies if m.has_error()]
    declined = len(answers) - len(ok)
    result = federated_report(ok, cfg)
    result.update(model_digest=arrays_digest(arrays), clients_failed=failed, clients_declined=declined)
    atomic_write_text(run_dir / FEDERATED_FILE, json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result


def federated_report(answers: list[dict[str, Any]], cfg: SimulationConfig) -> dict[str, Any]:
    """What the clients' answers say, every number with its interval (``federated_eval.json``).

    ``client_accuracy`` holds each client's accuracy on its validation rows and the
    noise-corrected spread across clients (:func:`fedready.intervals.client_spread`); ``fairness``
    the group metrics of the summed counts, with intervals in ``estimates``
    (:func:`fedready.evaluation.estimates.federated_fairness_estimates`). The noise stds are the
    ones the clients report: ``accuracy_noise_std`` on each client's two accuracy counts,
    ``noise_std`` on each of its summed counts (the sum over ``m`` clients carries ``sqrt(m)`` times it).
    """
    summed = sum_replies(answers, cfg)
    schema = task_of(cfg).schema
    per_cell = [float(a.get(K.QUERY_NOISE_STD, 0.0)) for a in answers]
    released = {
        "format": FORMAT,
        "clients_answered": len(answers),
        "noise_std": max(per_cell, default=0.0),  # per client, on each summed count (0: exact counts)
        "sum_noise_std": math.sqrt(sum(s * s for s in per_cell)),  # on each cell of the sum over those clients
        # per client, on its (correct, wrong) counts
        "accuracy_noise_std": max((float(a.get(K.QUERY_ACCURACY_NOISE_STD, 0.0)) for a in answers), default=0.0),
        "exact": not summed["noisy"],
        "counts": summed["counts"],
        "per_client_counts": {c: {"correct": v[0], "wrong": v[1]} for c, v in summed["per_client"].items()},
        "source": "the clients' validation rows" + ("" if not summed["noisy"] else " (counts each client noised)"),
    }
    return {**released, **federated_numbers(released, schema)}


def federated_numbers(released: dict[str, Any], schema: DataSchema) -> dict[str, Any]:
    """Everything computed from what the clients released: rates, disparities, accuracies, spread, intervals.

    Post-processing of ``released`` (the summed counts, each client's two accuracy counts and the
    noise stds), so ``fedready evaluate`` recomputes it from ``federated_eval.json`` at no privacy cost.
    """
    counts = {a: np.asarray(t, dtype=np.float64 if not released["exact"] else np.int64)
              for a, t in released["counts"].items()}  # fmt: skip
    per_client = {c: (float(v["correct"]), float(v["wrong"])) for c, v in released["per_client_counts"].items()}
    spread = client_spread(per_client, noise_std=float(released["accuracy_noise_std"]))
    return {
        "group_names": {a: group_names(schema, a) for a in counts},
        "fairness": fairness_from_counts(counts, schema),
        "estimates": federated_fairness_estimates(counts, schema, noise_std=float(released["sum_noise_std"])),
        "client_accuracy": spread.to_dict(),
    }


def answer_query(msg: Message, cfg: SimulationConfig, partition_id: int,
                 local: LocalData | None = None) -> dict[str, Any]:  # fmt: skip
    """A client's exact answer to an ``evaluate`` message: one query, or several joined by commas.

    The client adds noise and charges the release before anything leaves
    (:func:`fedready.client.app.handle_query`).
    """
    from fedready.monitoring.federated import local_profile_counts

    known = (K.QUERY_GROUP_COUNTS, K.QUERY_PROFILE)
    queries = str(msg.content[K.CONFIG].get(K.QUERY, "")).split(",")
    for query in queries:
        if query not in known:
            raise ValueError(f"unknown query '{query}'; expected one of: {', '.join(known)}")
    record = msg.content[K.ARRAYS]
    arrays = dict(zip(record.keys(), record.to_numpy_ndarrays(), strict=True))
    metrics: dict[str, Any] = {K.PARTITION_ID: partition_id}
    if K.QUERY_GROUP_COUNTS in queries:
        metrics.update(local_group_counts(cfg, partition_id, arrays, local))
    if K.QUERY_PROFILE in queries:
        metrics.update(local_profile_counts(cfg, partition_id, arrays, local))
    return metrics
