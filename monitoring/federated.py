"""The reference profile, computed federatedly: clients count, the server sums and adds noise.

After training, the server sends the final model with the query ``reference-profile``; each
client answers with histograms of its own training rows over the schema's bins (features,
labels, the model's scores and decisions on them, and positives per score bucket;
:func:`fedready.client.queries.local_profile_counts`). The server sums them
(:func:`fedready.server.app.run_profile_query`) and writes ``reference_profile.json``, which
``fedready package`` ships inside the artifact.

Notes
-----
The profile describes the clients' *training* rows. Under DP each client noises its own
histograms before they leave (Gaussian, ``--query-noise`` times the L2 sensitivity, from OS
entropy; :func:`fedready.client.app.handle_query`; under SecAgg+ a discrete Gaussian, a ``1/t``
share of it or the whole, inside the masked sum: :func:`fedready.server.secagg.run_secagg_query`)
and charges that release to its budget,
where it composes (RDP) with the client's training and its noisy row count: the run's
headline epsilon includes it. The server never sees an exact count; the document records
the per-client noise std and the std of the sum.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from fedready import constants as K
from fedready.config import SimulationConfig
from fedready.errors import IntegrityError
from fedready.federation import task_of
from fedready.files import atomic_write_text
from fedready.modelio import arrays_digest, load_npz
from fedready.monitoring.profile import PROFILE_FILE, Counts, NoiseRecord, profile_document

__all__ = ["FEATURE_PREFIX", "PROFILE_PARTS", "profile_needed", "sum_profiles", "write_profile"]

log = logging.getLogger(__name__)

FEATURE_PREFIX = K.PROFILE_PREFIX + "feature/"  # wire key of a feature's histogram (then the feature's name)
PROFILE_PARTS = ("scores", "predictions", "labels", "score-positives")  # the other histograms, in Counts' order


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
            parts = [hists[K.PROFILE_PREFIX + p] for p in PROFILE_PARTS]
            counts = Counts(
                {k.removeprefix(FEATURE_PREFIX): v for k, v in hists.items() if k.startswith(FEATURE_PREFIX)}, *parts
            )
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


def write_profile(cfg: SimulationConfig, run_dir: Path, replies: list, digest: str, *,
                  secure_sum: dict[str, Any] | None = None) -> dict[str, Any] | None:  # fmt: skip
    """Sum the profile counts of ``replies`` (query answers) on the model ``digest`` into ``reference_profile.json``.

    Only the replies carrying profile counts are used; their releases are charged by the caller.
    ``secure_sum`` (a query answered through SecAgg+, :func:`fedready.server.secagg.run_secagg_query`)
    holds the histograms already summed, ``noise_std`` (the std on each summed count), ``clients``
    and ``distributed`` (what each client added); ``replies`` are then not read.

    Returns
    -------
    dict or None
        The profile document (None if nobody answered).
    """
    if secure_sum is not None:
        hists = {k: v for k, v in secure_sum["sums"].items() if k.startswith(K.PROFILE_PREFIX)}
        if not hists:
            log.warning("the secure sum holds no reference profile; the run ships without a profile")
            return None
        std = float(secure_sum["noise_std"])
        total = sum_profiles([{**hists, K.QUERY_NOISE_STD: std, K.PARTITION_ID: "secure sum"}])
        noise = NoiseRecord("discrete-gaussian" if std > 0 else "none", scale=std or None,
                            noise_multiplier=(secure_sum.get("charged_noise_multiplier") or cfg.query_noise)
                            if std > 0 else None, delta=cfg.delta if std > 0 else None,
                            extra={"added_by": "each client, before masking (SecAgg+): " + secure_sum["distributed"],
                                   "charged_to": "each client's budget (ledger level 'query')"})  # fmt: skip
        return _write(cfg, run_dir, total, noise, digest, int(secure_sum["clients"]), f"noise std on the sum {std:.3g}")
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
    return _write(cfg, run_dir, total, noise, digest, len(ok), f"per-client noise std {per:.3g}")


def _write(cfg: SimulationConfig, run_dir: Path, total: Counts, noise: NoiseRecord, digest: str, clients: int,
           noise_note: str) -> dict[str, Any]:  # fmt: skip
    doc = profile_document(task_of(cfg).schema, total, noise, model_digest=digest, clients=clients)
    atomic_write_text(run_dir / PROFILE_FILE, json.dumps(doc, indent=1, sort_keys=True) + "\n")
    log.info("reference profile from %d clients (%s)", clients, noise_note)
    return doc
