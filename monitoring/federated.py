"""The reference profile, computed federatedly: clients count, the server sums and adds noise.

After training, the server sends the final model with the query ``reference-profile``; each
client answers with histograms of its own training rows over the schema's bins (features,
labels, the model's scores and decisions on them, and positives per score bucket). The
server sums them, adds Gaussian or Laplace noise once (:func:`fedready.monitoring.privatize`),
records the release in the run's privacy ledger and writes ``reference_profile.json``,
which ``fedready package`` ships inside the artifact. Imports the training stack.

Notes
-----
The profile describes the clients' *training* rows, so it is released with noise by default
whenever the run is differentially private (Gaussian, epsilon 1.0 at the run's delta). Its
epsilon is a separate release from the model's: ``ledger.json`` charges it as a ``profile``
entry (client ``profile``), and the two compose (basic composition) if one asks for the total.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from fedready import constants as K
from fedready._io import atomic_write_text
from fedready.config import SimulationConfig
from fedready.errors import ConfigError, IntegrityError
from fedready.federation import task_of
from fedready.modelio import arrays_digest, load_npz
from fedready.monitoring._profile import MECHANISMS, PROFILE_FILE, Counts, count_rows, privatize, profile_document
from fedready.privacy.ledger import Ledger, LedgerEntry, compose_entries

__all__ = [
    "PROFILE_LEDGER_CLIENT",
    "local_profile_counts",
    "profile_needed",
    "resolve_noise",
    "run_profile_query",
    "sum_profiles",
]

log = logging.getLogger(__name__)

PROFILE_LEDGER_CLIENT = "profile"
_FEATURE = K.PROFILE_PREFIX + "feature/"
_PARTS = ("scores", "predictions", "labels", "score-positives")


def local_profile_counts(cfg: SimulationConfig, partition_id: int, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """A client's answer to the ``reference-profile`` query, as MetricRecord content (counts only)."""
    import torch

    from fedready.federation import client_shard, client_train_columns

    shard = client_shard(cfg, partition_id)
    model = task_of(cfg).load_model(arrays)
    with torch.no_grad():
        proba = torch.softmax(model(torch.from_numpy(shard.x_train)), dim=1).numpy()
    decided = proba.argmax(axis=1)  # binary: P(positive) is the score; multi-class: the decided class's probability
    score = proba[:, 1] if proba.shape[1] == 2 else proba.max(axis=1)
    counts = count_rows(task_of(cfg).schema, client_train_columns(cfg, partition_id), scores=score,
                        predictions=decided, labels=shard.y_train)  # fmt: skip
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
            if any((h < 0).any() or h.ndim != 1 for h in hists.values()):
                raise ValueError("negative or nested counts")
            parts = [hists[K.PROFILE_PREFIX + p] for p in _PARTS]
            counts = Counts({k.removeprefix(_FEATURE): v for k, v in hists.items() if k.startswith(_FEATURE)}, *parts)
            total = counts if total is None else total + counts
        except (KeyError, ValueError) as e:
            raise IntegrityError(f"client {r.get(K.PARTITION_ID)}: malformed profile counts ({e})") from e
    assert total is not None
    return total


def resolve_noise(run_config: dict[str, Any], cfg: SimulationConfig) -> tuple[str, float]:
    """The profile's noise mechanism and epsilon from the run config (``auto``: gaussian iff DP is on).

    Raises
    ------
    ConfigError
        For an unknown mechanism or a non-positive epsilon.
    """
    mech = str(run_config.get(K.PROFILE_NOISE, "auto"))
    if mech == "auto":
        mech = "gaussian" if cfg.dp else "none"
    if mech not in MECHANISMS:
        expected = ", ".join(("auto", *MECHANISMS))
        raise ConfigError("profile-noise", f"unknown mechanism '{mech}'; expected one of: {expected}")
    eps = float(run_config.get(K.PROFILE_EPSILON, 1.0))
    if not eps > 0:
        raise ConfigError("profile-epsilon", f"must be > 0, got {eps}")
    return mech, eps


def profile_needed(run_dir: Path) -> bool:
    """Whether the run's final model has no reference profile yet (one is never released twice)."""
    target = run_dir / PROFILE_FILE
    if not target.exists():
        return True
    digest = arrays_digest(load_npz((run_dir / "model.npz").read_bytes()))
    return json.loads(target.read_text()).get("model_digest") != digest


def run_profile_query(
    grid: Any, cfg: SimulationConfig, run_dir: Path, *, mechanism: str, epsilon: float, replies: list | None = None
) -> dict[str, Any] | None:
    """Ask every client (or ``cfg.fraction_evaluate`` of them) for profile counts on the final model.

    Writes ``reference_profile.json``. The sample is the same seeded share the group-count
    evaluation asks: with 10,000 simulated clients, asking each one would cost more than the
    whole training (one message per client).

    A profile already written for the same model is kept (asking again would spend budget twice).
    ``replies`` are answers already collected by a combined query (only those carrying profile
    counts are used); without them the clients are asked here.

    Returns
    -------
    dict or None
        The profile document (None if it was already there).
    """
    from fedready.evaluation.federated import final_model, query_all

    if not profile_needed(run_dir):
        return None
    arrays, record = final_model(run_dir)
    digest = arrays_digest(arrays)
    if replies is None:
        replies = query_all(grid, record, cfg.num_clients, cfg.round_timeout, query=K.QUERY_PROFILE,
                            fraction=cfg.fraction_evaluate, seed=cfg.seed)  # fmt: skip
    ok = [dict(m.content[K.METRICS]) for m in replies if not m.has_error()]
    ok = [r for r in ok if any(k.startswith(K.PROFILE_PREFIX) for k in r)]
    if not ok:  # e.g. deployed clients, which do not answer profile queries yet: no profile, nothing spent
        log.warning("no client answered the reference-profile query; the run ships without a profile")
        return None
    noisy, noise = privatize(sum_profiles(ok), mechanism=mechanism, epsilon=epsilon, delta=cfg.delta)
    doc = profile_document(task_of(cfg).schema, noisy, noise, model_digest=digest, clients=len(ok))
    if mechanism != "none":
        _charge(run_dir, noise.to_dict())
    atomic_write_text(run_dir / PROFILE_FILE, json.dumps(doc, indent=1, sort_keys=True) + "\n")
    log.info("reference profile from %d clients, noise %s (epsilon %s)", len(ok), mechanism, noise.epsilon)
    return doc


def _charge(run_dir: Path, noise: dict[str, Any]) -> None:
    """Record the profile release in ``ledger.json`` and in the checkpoint's copy (kept on resume)."""
    path = run_dir / "ledger.json"
    ledger = Ledger.load(path)
    done = max((e.round for e in ledger.entries), default=0)
    entry = LedgerEntry(round=done, client=PROFILE_LEDGER_CLIENT, noise_multiplier=float(noise["noise_multiplier"]),
                      sample_rate=1.0, steps=1, accountant="laplace" if noise["mechanism"] == "laplace" else "rdp",
                      delta=float(noise["delta"]), epsilon=float(noise["epsilon"]), level="profile")  # fmt: skip
    earlier = [e for e in ledger.entries if e.client == PROFILE_LEDGER_CLIENT]
    # like every ledger entry, the epsilon is composed over this party's releases so far
    ledger.record(dataclasses.replace(entry, epsilon=compose_entries([*earlier, entry])))
    ledger.save(path)
    ckpt = run_dir / "checkpoint.json"
    if ckpt.exists():
        meta = json.loads(ckpt.read_text())
        meta["ledger"] = ledger.to_dict()
        atomic_write_text(ckpt, json.dumps(meta, sort_keys=True))
