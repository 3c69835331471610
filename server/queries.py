"""After training, the server's half of the query protocol: ask the clients, sum their counts.

The server sends the global model in a Flower ``evaluate`` message with one query, or several
joined by commas (``group-counts``, ``reference-profile``); each client answers with counts on
its own rows (:mod:`fedready.client.queries`). No row, score or label leaves a client, only
counts. The releases the replies report are charged by :func:`fedready.server.app.charge_queries`
under :func:`query_round`.

Notes
-----
Under DP each client adds Gaussian noise to its counts before they leave and charges the
release to its budget (:func:`fedready.client.app.handle_query`): the server sums noisy counts,
clips negative sums to zero (post-processing) and computes the metrics from them. Without DP,
or with ``--exact-evaluation`` (outside the guarantee, stamped in the ledger), the counts are
exact and the summed metrics equal those on the pooled predictions (:mod:`fedready.fairness`;
tested to 1e-9 against fairlearn).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedready import constants as K
from fedready.config import SimulationConfig
from fedready.constants import LEDGER_FILE
from fedready.errors import IntegrityError
from fedready.estimates import federated_fairness_estimates
from fedready.fairness import fairness_from_counts, group_names
from fedready.federation import task_of
from fedready.files import atomic_write_text
from fedready.intervals import client_spread
from fedready.modelio import arrays_digest, load_npz
from fedready.privacy.ledger import Ledger

if TYPE_CHECKING:
    from fedready.schema import DataSchema

__all__ = [
    "FEDERATED_FILE",
    "FORMAT",
    "federated_numbers",
    "federated_report",
    "final_model",
    "query_all",
    "query_nodes",
    "query_round",
    "sum_replies",
    "write_federated_evaluation",
    "write_report",
]

FEDERATED_FILE = "federated_eval.json"
FORMAT = 2  # 2: per-client (correct, wrong) and every number with its interval


def query_round(run_dir: Path) -> int:
    """The ledger round a post-training query is charged under: after every recorded round."""
    path = run_dir / LEDGER_FILE
    return max((e.round for e in Ledger.load(path).entries), default=0) + 1 if path.exists() else 1


def sum_replies(replies: list[dict[str, Any]], cfg: SimulationConfig,
                secure_sums: dict[str, np.ndarray] | None = None) -> dict[str, Any]:  # fmt: skip
    """Sum the clients' count tables (exact, or noised by each client) and keep each client's (correct, wrong).

    Noisy sums are clipped to zero (post-processing); exact counts stay integers. With
    ``secure_sums`` (the query answered through SecAgg+: every ``counts/<attr>`` already summed) the
    tables come from it, and the replies give only each client's (correct, wrong).

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
    tables: list[tuple[str, dict[str, Any]]] = [] if secure_sums is None else [("the secure sum", secure_sums)]
    for r in replies:
        per_client[str(int(r[K.PARTITION_ID]))] = (float(r[K.VAL_CORRECT]), float(r[K.VAL_WRONG]))
        if secure_sums is None:
            tables.append((f"client {r[K.PARTITION_ID]}", r))
    for who, r in tables:
        for key, flat in r.items():
            if not key.startswith(K.COUNTS_PREFIX):
                continue
            attr = key.removeprefix(K.COUNTS_PREFIX)
            table = np.asarray(flat, dtype=np.float64)
            if table.size != width * len(group_names(schema, attr)) or not np.isfinite(table).all():
                raise IntegrityError(f"{who}: malformed counts for '{attr}'")
            if not noisy and (table < 0).any():
                raise IntegrityError(f"{who}: negative counts for '{attr}'")
            sums[attr] = sums.get(attr, 0) + table.reshape(-1, width)
    ordered = [a for a in schema.sensitive if a in sums] + sorted(set(sums) - set(schema.sensitive))
    out = {a: np.maximum(sums[a], 0.0) for a in ordered}
    if not noisy:
        out = {a: v.astype(np.int64) for a, v in out.items()}
    return {"counts": {a: v.tolist() for a, v in out.items()}, "per_client": per_client, "noisy": noisy}


def query_nodes(nodes: list[int], fraction: float, seed: int) -> list[int]:
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
    nodes = query_nodes(sorted(nodes), fraction, seed)
    messages = [
        Message(content=RecordDict({K.ARRAYS: arrays,
                                    K.CONFIG: ConfigRecord({K.QUERY: query, K.SERVER_ROUND: server_round})}),
                dst_node_id=node, message_type=MessageType.EVALUATE)
        for node in nodes
    ]  # fmt: skip
    return list(grid.send_and_receive(messages=messages, timeout=timeout))


def final_model(run_dir: Path) -> tuple[dict[str, np.ndarray], ArrayRecord]:
    """A finished run's final model, as arrays and as the record the queries send."""
    arrays = load_npz((run_dir / "model.npz").read_bytes())
    return arrays, ArrayRecord({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()})


def write_federated_evaluation(cfg: SimulationConfig, run_dir: Path, arrays: dict[str, np.ndarray],
                               replies: list[Message]) -> dict[str, Any]:  # fmt: skip
    """Sum the ``group-counts`` replies on the final model ``arrays`` into ``federated_eval.json``.

    Returns
    -------
    dict
        Summed counts, metrics per attribute, per-client accuracy spread, failed clients,
        and the model digest the counts belong to.
    """
    answers = [dict(m.content[K.METRICS]) for m in replies if not m.has_error()]
    ok = [a for a in answers if not int(a.get(K.DECLINED, 0)) and any(k.startswith(K.COUNTS_PREFIX) for k in a)]
    failed = [m.error.reason for m in replies if m.has_error()]
    return write_report(cfg, run_dir, arrays, ok, failed=failed, declined=len(answers) - len(ok))


def write_report(
    cfg: SimulationConfig,
    run_dir: Path,
    arrays: dict[str, np.ndarray],
    answers: list[dict[str, Any]],
    *,
    failed: list[str],
    declined: int,
    secure_sum: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``federated_eval.json`` from the clients' ``answers`` (and a SecAgg+ ``secure_sum``); return it."""
    result = federated_report(answers, cfg, secure_sum)
    result.update(model_digest=arrays_digest(arrays), clients_failed=failed, clients_declined=declined)
    atomic_write_text(run_dir / FEDERATED_FILE, json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result


def federated_report(answers: list[dict[str, Any]], cfg: SimulationConfig,
                     secure_sum: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """What the clients' answers say, every number with its interval (``federated_eval.json``).

    ``client_accuracy`` holds each client's accuracy on its validation rows and the
    noise-corrected spread across clients (:func:`fedready.intervals.client_spread`); ``fairness``
    the group metrics of the summed counts, with intervals in ``estimates``
    (:func:`fedready.estimates.federated_fairness_estimates`). The noise stds are the
    ones the clients report: ``accuracy_noise_std`` on each client's two accuracy counts,
    ``noise_std`` on each of its summed counts when it adds the whole noise (the sum over ``m``
    clients then carries ``sqrt(m)`` times it), and ``sum_noise_std`` on each cell of the sum:
    under SecAgg+ with distributed noise (``secure_sum``, :func:`fedready.server.secagg.run_secagg_query`)
    the clients each added a ``1/t`` share, and the sum of ``n`` carries ``sqrt(n / t)`` times one
    client's whole noise.
    """
    summed = sum_replies(answers, cfg, None if secure_sum is None else secure_sum["sums"])
    schema = task_of(cfg).schema
    per_cell = [float(a.get(K.QUERY_NOISE_STD, 0.0)) for a in answers]
    added = [float(a.get(K.QUERY_SHARE_STD, a.get(K.QUERY_NOISE_STD, 0.0))) for a in answers]
    released = {
        "format": FORMAT,
        "clients_answered": len(answers),
        "noise_std": max(per_cell, default=0.0),  # per client, its whole noise on each summed count (0: exact)
        "sum_noise_std": math.sqrt(sum(s * s for s in added)),  # on each cell of the sum over those clients
        # per client, on its (correct, wrong) counts
        "accuracy_noise_std": max((float(a.get(K.QUERY_ACCURACY_NOISE_STD, 0.0)) for a in answers), default=0.0),
        "exact": not summed["noisy"],
        "counts": summed["counts"],
        "per_client_counts": {c: {"correct": v[0], "wrong": v[1]} for c, v in summed["per_client"].items()},
        "source": "the clients' validation rows" + ("" if not summed["noisy"] else " (counts each client noised)"),
    }
    if secure_sum is not None:
        released["secure_sum"] = {k: v for k, v in secure_sum.items() if k != "sums"}
        released["source"] += "; group counts summed by SecAgg+"
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
