"""The reference profile, computed federatedly: clients count, the server sums and adds noise.

After training, the server sends the final model with the query ``reference-profile``; each
client answers with histograms of its own training rows over the schema's bins (features,
labels, the model's scores and decisions on them, and positives per score bucket). The
server sums them and writes ``reference_profile.json``, which ``fedready package`` ships
inside the artifact. Imports the training stack.

Notes
-----
The profile describes the clients' *training* rows. Under DP each client noises its own
histograms before they leave (Gaussian, ``--query-noise`` times the L2 sensitivity, from OS
entropy; :func:`fedready.client.app.handle_query`) and charges that release to its budget,
where it composes (RDP) with the client's training and its noisy row count: the run's
headline epsilon includes it. The server never sees an exact count; the document records
the per-client noise std and the std of the sum.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedready import constants as K
from fedready._io import atomic_write_text
from fedready.config import SimulationConfig
from fedready.errors import IntegrityError
from fedready.federation import task_of
from fedready.modelio import arrays_digest, load_npz
from fedready.models import model_for_schema

if TYPE_CHECKING:
    from fedready.deploy.site import LocalData
from fedready.monitoring._profile import PROFILE_FILE, Counts, NoiseRecord, count_rows, profile_document

__all__ = ["local_profile_counts", "profile_needed", "run_profile_query", "sum_profiles"]

log = logging.getLogger(__name__)

_FEATURE = K.PROFILE_PREFIX + "feature/"
_PARTS = ("scores", "predictions", "labels", "score-positives")


def local_profile_counts(
    cfg: SimulationConfig, partition_id: int, arrays: dict[str, np.ndarray], local: LocalData | None = None
) -> dict[str, Any]:
    """A client's exact answer to the ``reference-profile`` query (counts only; the client noises them).

    ``local`` is a deployed client's own data; without it the simulated shard of ``partition_id``.
    """
    import torch

    from fedready.federation import client_shard, client_train_columns

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
    out.update({_FEATURE + k: [int(x) for x in v] for k, v in d["features"].items()})
    for part, key in zip(_PARTS, ("scores", "predictions", "labels", "score_positives"), strict=True):
        out[K.PROFILE_PREFIX + part] = [int(x) for x in d[key]]
    return out


def sum_profiles(replies: list[dict[str, Any]]) -> Counts:
    """Sum the clients' histograms.

    Raises
    ------
    IntegrityError
        If a reply is missing a histogram, disagrees in shape with the others or holds negatives.
    """
    if not replies:
        raise IntegrityError("no client answered the reference-profile query")
    total: Counts | None = None
    for r in replies:
        try:
            hists = {k: np.asarray(v, dtype=np.float64) for k, v in r.items() if k.startswith(K.PROFILE_PREFIX)}
            noisy = float(r.get(K.QUERY_NOISE_STD, 0.0)) > 0
            if any(h.ndim != 1 or not np.isfinite(h).all() or (not noisy and (h < 0).any()) for h in hists.values()):
                raise ValueError("nested, non-finite or (exact) negative counts")
            parts = [hists[K.PROFILE_PREFIX + p] for p in _PARTS]
            counts = Counts({k.removeprefix(_FEATURE): v for k, v in hists.items() if k.startswith(_FEATURE)}, *parts)
            total = counts if total is None else total + counts
        except (KeyError, ValueError) as e:
            raise IntegrityError(f"client {r.get(K.PARTITION_ID)}: malformed profile counts ({e})") from e
    assert total is not None
    return total


def profile_needed(run_dir: Path) -> bool:
    """Whether the run's final model has no reference profile yet (one is never released twice)."""
    target = run_dir / PROFILE_FILE
    if not target.exists():
        return True
    digest = arrays_digest(load_npz((run_dir / "model.npz").read_bytes()))
    return json.loads(target.read_text()).get("model_digest") != digest


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
    from fedready.evaluation.federated import final_model, query_all

    if not profile_needed(run_dir):
        return None
    arrays, record = final_model(run_dir)
    digest = arrays_digest(arrays)
    if replies is None:
        from fedready.server.app import _query_round, charge_queries

        replies = query_all(grid, record, cfg.num_clients, cfg.round_timeout, query=K.QUERY_PROFILE,
                            fraction=cfg.fraction_evaluate, seed=cfg.seed,
                            server_round=_query_round(run_dir))  # fmt: skip
        replies = charge_queries(run_dir, cfg, replies)
    ok = [dict(m.content[K.METRICS]) for m in replies if not m.has_error()]
    ok = [r for r in ok if not int(r.get(K.DECLINED, 0)) and any(k.startswith(K.PROFILE_PREFIX) for k in r)]
    if not ok:
        log.warning("no client answered the reference-profile query; the run ships without a profile")
        return None
    stds = [float(r.get(K.QUERY_NOISE_STD, 0.0)) for r in ok]
    total = sum_profiles(ok)
    per = max(stds)
    noise = NoiseRecord("gaussian" if per > 0 else "none", scale=math.sqrt(sum(x * x for x in stds)) or None,
                        noise_multiplier=cfg.query_noise if per > 0 else None,
                        delta=cfg.delta if per > 0 else None,
                        extra={"added_by": "each client, before sending", "client_std": per,
                               "charged_to": "each client's budget (ledger level 'query')"})  # fmt: skip
    doc = profile_document(task_of(cfg).schema, total, noise, model_digest=digest, clients=len(ok))
    atomic_write_text(run_dir / PROFILE_FILE, json.dumps(doc, indent=1, sort_keys=True) + "\n")
    log.info("reference profile from %d clients (per-client noise std %.3g)", len(ok), per)
    return doc
