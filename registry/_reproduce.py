"""``fedready reproduce``: rebuild an artifact's model from its recorded configuration and check it.

What is deterministic is checked exactly: the configuration (its digest in the signed
provenance), the training data (its digest, recorded at training time), the code (fedready
version and git commit in the provenance). The model itself is a deterministic function of
the configuration only when nothing in training is secret:

* runs without DP, and ``--insecure-seeded-noise`` runs (not private), must give the recorded
  model digest bit for bit;
* DP runs draw their noise and Poisson sampling from OS entropy (that is what makes the
  guarantee hold; see :mod:`fedready.privacy.randomness`), so a re-run gives a different model.
  Its behaviour must agree within stated bounds: test accuracy within ``max_accuracy_gap`` of the
  recorded one, and the artifact's shipped model and the re-run deciding the same on at least
  ``min_agreement`` of the benchmark rows. The defaults come from measuring repeated default runs
  (docs/guides/operator.md, "Reproduce").
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from fedready.errors import ConfigError
from fedready.registry._artifact import (
    CONFIG_FILE,
    MODEL_FILE,
    PROVENANCE_FILE,
    TRAINING_SUMMARY_FILE,
    Provenance,
    _git_commit,
    _version_of,
    verify_artifact,
)
from fedready.registry._canonical import json_digest, read_json

__all__ = ["DEFAULT_MAX_ACCURACY_GAP", "DEFAULT_MIN_AGREEMENT", "reproduce_artifact"]

DEFAULT_MAX_ACCURACY_GAP = 0.02  # accuracy points (as a fraction) between the recorded model and a DP re-run
DEFAULT_MIN_AGREEMENT = 0.90  # share of benchmark rows on which the shipped model and a DP re-run decide alike


def _decisions_of_artifact(artifact: Path, x: np.ndarray) -> np.ndarray:
    from fedready.compression.export import INPUT, PROBABILITIES, session

    (proba,) = session((artifact / MODEL_FILE).read_bytes()).run([PROBABILITIES], {INPUT: x})
    return np.asarray(proba).argmax(1)


def reproduce_artifact(
    artifact: Path, *, public_key: Path | None = None, out: Path | None = None, quiet: bool = True,
    max_accuracy_gap: float = DEFAULT_MAX_ACCURACY_GAP, min_agreement: float = DEFAULT_MIN_AGREEMENT,
) -> dict[str, Any]:  # fmt: skip
    """Re-run the artifact's recorded simulation and check it (see the module docstring).

    Returns a report: ``config_matches``, ``data_matches``, ``code_matches``, ``mode``
    (``exact`` or ``statistical``), both digests, the accuracies, the agreement and the bounds,
    and ``match`` (everything checked holds). A config whose digest differs from the
    provenance's is reported as a mismatch without training.

    Raises
    ------
    IntegrityError
        If ``public_key`` is given and the artifact does not verify.
    ConfigError
        If the artifact holds no run configuration, or a bound is out of range.
    """
    from fedready.config import make_config
    from fedready.federation import data_digest
    from fedready.simulations.engine import check_config, simulate

    if not 0 <= max_accuracy_gap <= 1:
        raise ConfigError("max-accuracy-gap", f"must be in [0, 1], got {max_accuracy_gap}")
    if not 0 <= min_agreement <= 1:
        raise ConfigError("min-agreement", f"must be in [0, 1], got {min_agreement}")
    artifact = Path(artifact)
    if public_key is not None:
        prov = verify_artifact(artifact, public_key=public_key)
    else:
        prov = Provenance.from_dict(read_json(artifact / PROVENANCE_FILE, what="provenance"))
    if not (artifact / CONFIG_FILE).is_file():
        raise ConfigError("artifact", f"{artifact} holds no {CONFIG_FILE}; only simulation-trained artifacts reproduce")
    recorded = read_json(artifact / CONFIG_FILE, what="run config")
    values = recorded.get("config", recorded)
    report: dict[str, Any] = {"artifact": str(artifact), "version": prov.version, "recorded_digest": prov.model_digest,
                              "reproduced_digest": None, "match": False, "config_matches": False, "run_dir": None,
                              "data_matches": None, "code_matches": None, "mode": None}  # fmt: skip
    if json_digest(values) != prov.config_digest:
        # No need to train to know the answer: this is not the configuration the model was built from.
        return report
    report["config_matches"] = True
    cfg = make_config(**values)
    check_config(cfg)
    recorded_data = recorded.get("data_digest")
    current_data = data_digest(cfg)
    report.update(recorded_data_digest=recorded_data, data_digest=current_data,
                  data_matches=recorded_data is None or recorded_data == current_data)  # fmt: skip
    code = {"fedready_version": _version_of("fedready"), "git_commit": _git_commit()}
    report["code"] = {"recorded": {"fedready_version": prov.fedready_version, "git_commit": prov.git_commit},
                      "current": code}  # fmt: skip
    report["code_matches"] = code["fedready_version"] == prov.fedready_version and (
        prov.git_commit is None or code["git_commit"] is None or code["git_commit"] == prov.git_commit
    )
    exact = not cfg.dp or cfg.insecure_seeded_noise
    report["mode"] = "exact" if exact else "statistical"
    parent = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="fedready-reproduce-"))
    run_dir = parent / f"reproduce-{prov.version}"
    if (run_dir / "config.json").exists():
        raise ConfigError("out", f"{run_dir} already holds a run; pass another --out")
    try:
        summary = simulate(cfg, run_dir)
        report["reproduced_digest"] = summary["model_digest"]
        if exact:
            report["match"] = bool(report["data_matches"]) and summary["model_digest"] == prov.model_digest
        else:
            report.update(_behaviour(artifact, run_dir, cfg, summary, max_accuracy_gap, min_agreement))
            report["match"] = bool(report["data_matches"]) and report["within_bounds"]
    finally:
        if out is None:
            shutil.rmtree(parent, ignore_errors=True)
            shutil.rmtree(Path(str(parent) + ".clients"), ignore_errors=True)
    report["run_dir"] = str(run_dir) if out is not None else None
    return report


def _behaviour(artifact: Path, run_dir: Path, cfg: Any, summary: dict[str, Any], gap: float,
               agreement: float) -> dict[str, Any]:  # fmt: skip
    """How the DP re-run compares with the recorded model: accuracy gap and decision agreement."""
    import torch

    from fedready.federation import holdout, task_of
    from fedready.modelio import load_npz

    x, _ = holdout(cfg)
    rerun = task_of(cfg).load_model(load_npz((run_dir / "model.npz").read_bytes()))
    with torch.no_grad():
        mine = rerun(torch.from_numpy(x)).argmax(1).numpy()
    shipped = _decisions_of_artifact(artifact, np.ascontiguousarray(x, dtype=np.float32))
    recorded_acc = read_json(artifact / TRAINING_SUMMARY_FILE, what="training summary").get("accuracy")
    acc_gap = abs(float(summary["accuracy"]) - float(recorded_acc)) if recorded_acc is not None else None
    agree = float((mine == shipped).mean())
    ok = (acc_gap is None or acc_gap <= gap) and agree >= agreement
    return {"recorded_accuracy": recorded_acc, "reproduced_accuracy": summary["accuracy"], "accuracy_gap": acc_gap,
            "agreement": agree, "bounds": {"max_accuracy_gap": gap, "min_agreement": agreement},
            "within_bounds": bool(ok)}  # fmt: skip
