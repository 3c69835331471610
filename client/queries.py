"""After training, a client's half of the query protocol: counts on its own rows, nothing else.

The server asks (:mod:`fedready.server.queries`) with the final model and one query, or several
joined by commas: ``group-counts`` (a confusion table per group of every sensitive attribute, on
the client's validation rows) and ``reference-profile`` (histograms of its training rows over the
schema's bins, for monitoring). The answers here are exact; the client adds noise and charges the
release before anything leaves (:func:`fedready.client.app.handle_query`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from flwr.app import Message

from fedready import constants as K
from fedready.client.site import LocalData
from fedready.config import SimulationConfig
from fedready.fairness import confusion_counts, group_labels, group_names
from fedready.federation import client_shard, client_train_columns, client_validation_attributes, task_of
from fedready.models import model_for_schema
from fedready.monitoring.federated import FEATURE_PREFIX, PROFILE_PARTS
from fedready.monitoring.profile import count_rows

__all__ = ["answer_queries", "answer_query", "local_group_counts", "local_profile_counts"]


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
        :func:`~fedready.fairness.group_names` order; ``val-correct``,
        ``val-wrong`` (decisions right and wrong on the validation rows), ``partition-id``.
    """
    schema = local.schema if local is not None else task_of(cfg).schema
    if local is not None:
        x_val, y_val, attributes = local.x_val, local.y_val, local.val_attributes
    else:
        shard = client_shard(cfg, partition_id)
        x_val, y_val = shard.x_val, shard.y_val
        attributes = client_validation_attributes(cfg, partition_id)
    model = model_for_schema(cfg.model, schema, arrays=arrays)
    with torch.no_grad():
        pred = model(torch.from_numpy(x_val)).argmax(1).numpy()
    correct = int((pred == y_val).sum())
    out: dict[str, Any] = {K.PARTITION_ID: partition_id, K.VAL_CORRECT: correct, K.VAL_WRONG: int(len(y_val)) - correct}
    for attr, raw in attributes.items():
        names = group_names(schema, attr)
        table = confusion_counts(y_val, pred, group_labels(schema, attr, raw), names, classes=schema.target.num_classes)
        out[K.COUNTS_PREFIX + attr] = [int(v) for v in table.reshape(-1)]
    return out


def local_profile_counts(
    cfg: SimulationConfig, partition_id: int, arrays: dict[str, np.ndarray], local: LocalData | None = None
) -> dict[str, Any]:
    """A client's exact answer to the ``reference-profile`` query (counts only; the client noises them).

    ``local`` is a deployed client's own data; without it the simulated shard of ``partition_id``.
    """
    if local is not None:
        x_train, y_train, columns = local.x_train, local.y_train, local.train_columns
    else:
        shard = client_shard(cfg, partition_id)
        x_train, y_train, columns = shard.x_train, shard.y_train, client_train_columns(cfg, partition_id)
    schema = local.schema if local is not None and local.schema is not None else task_of(cfg).schema
    model = model_for_schema(cfg.model, schema, arrays=arrays)  # the local schema
    with torch.no_grad():
        proba = torch.softmax(model(torch.from_numpy(x_train)), dim=1).numpy()
    decided = proba.argmax(axis=1)  # binary: P(positive) is the score; multi-class: the decided class's probability
    score = proba[:, 1] if proba.shape[1] == 2 else proba.max(axis=1)
    counts = count_rows(schema, columns, scores=score, predictions=decided, labels=y_train)
    d = counts.to_dict()
    out: dict[str, Any] = {K.PARTITION_ID: partition_id}
    out.update({FEATURE_PREFIX + k: [int(x) for x in v] for k, v in d["features"].items()})
    for part, key in zip(PROFILE_PARTS, ("scores", "predictions", "labels", "score_positives"), strict=True):
        out[K.PROFILE_PREFIX + part] = [int(x) for x in d[key]]
    return out


def answer_query(msg: Message, cfg: SimulationConfig, partition_id: int,
                 local: LocalData | None = None) -> dict[str, Any]:  # fmt: skip
    """A client's exact answer to an ``evaluate`` message: one query, or several joined by commas.

    The client adds noise and charges the release before anything leaves
    (:func:`fedready.client.app.handle_query`).
    """
    record = msg.content[K.ARRAYS]
    arrays = dict(zip(record.keys(), record.to_numpy_ndarrays(), strict=True))
    return answer_queries(str(msg.content[K.CONFIG].get(K.QUERY, "")), arrays, cfg, partition_id, local)


def answer_queries(query: str, arrays: dict[str, np.ndarray], cfg: SimulationConfig, partition_id: int,
                   local: LocalData | None = None) -> dict[str, Any]:  # fmt: skip
    """The exact answer to ``query`` (names joined by commas) on the model ``arrays``.

    Raises
    ------
    ValueError
        On an unknown query name.
    """
    known = (K.QUERY_GROUP_COUNTS, K.QUERY_PROFILE)
    queries = query.split(",")
    for q in queries:
        if q not in known:
            raise ValueError(f"unknown query '{q}'; expected one of: {', '.join(known)}")
    metrics: dict[str, Any] = {K.PARTITION_ID: partition_id}
    if K.QUERY_GROUP_COUNTS in queries:
        metrics.update(local_group_counts(cfg, partition_id, arrays, local))
    if K.QUERY_PROFILE in queries:
        metrics.update(local_profile_counts(cfg, partition_id, arrays, local))
    return metrics
