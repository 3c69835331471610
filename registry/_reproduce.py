"""``fedready reproduce``: rebuild an artifact's model from its recorded configuration.

The artifact carries the run's ``config.json``; a simulation-trained model is a deterministic
function of it (data, partitioning, initialisation, Poisson sampling and DP noise are all
seeded), so re-running it must give the recorded model digest. A prediction can thus be
traced to, and rebuilt from, its exact training snapshot.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from fedready.errors import ConfigError
from fedready.registry._artifact import CONFIG_FILE, PROVENANCE_FILE, Provenance, verify_artifact
from fedready.registry._canonical import json_digest, read_json

__all__ = ["reproduce_artifact"]


def reproduce_artifact(
    artifact: Path, *, public_key: Path | None = None, out: Path | None = None, quiet: bool = True
) -> dict[str, Any]:
    """Re-run the artifact's recorded simulation and compare model digests.

    Returns a report with ``match`` (model digests equal), ``config_matches`` (the recorded
    config still has the digest the provenance names), both digests and the run folder. A
    config whose digest differs from the provenance's is reported as a mismatch without
    training (``reproduced_digest`` is None).

    Raises
    ------
    IntegrityError
        If ``public_key`` is given and the artifact does not verify.
    ConfigError
        If the artifact holds no run configuration.
    """
    from fedready.config import make_config
    from fedready.simulations.engine import check_config, simulate

    artifact = Path(artifact)
    if public_key is not None:
        prov = verify_artifact(artifact, public_key=public_key)
    else:
        prov = Provenance.from_dict(read_json(artifact / PROVENANCE_FILE, what="provenance"))
    if not (artifact / CONFIG_FILE).is_file():
        raise ConfigError("artifact", f"{artifact} holds no {CONFIG_FILE}; only simulation-trained artifacts reproduce")
    recorded = read_json(artifact / CONFIG_FILE, what="run config")
    values = recorded.get("config", recorded)
    if json_digest(values) != prov.config_digest:
        # No need to train to know the answer: this is not the configuration the model was built from.
        return {"artifact": str(artifact), "version": prov.version, "recorded_digest": prov.model_digest,
                "reproduced_digest": None, "match": False, "config_matches": False, "run_dir": None}  # fmt: skip
    cfg = make_config(**values)
    check_config(cfg)
    parent = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="fedready-reproduce-"))
    run_dir = parent / f"reproduce-{prov.version}"
    if (run_dir / "config.json").exists():
        raise ConfigError("out", f"{run_dir} already holds a run; pass another --out")
    try:
        summary = simulate(cfg, run_dir)
    finally:
        if out is None:
            shutil.rmtree(parent, ignore_errors=True)
    return {
        "artifact": str(artifact),
        "version": prov.version,
        "recorded_digest": prov.model_digest,
        "reproduced_digest": summary["model_digest"],
        "match": summary["model_digest"] == prov.model_digest,
        "config_matches": True,
        "run_dir": str(run_dir) if out is not None else None,
    }
