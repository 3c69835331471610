"""Shadow comparison: the candidate model scores the same rows as the active one, nothing is served from it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedready.errors import ConfigError

__all__ = ["shadow_compare"]


def shadow_compare(active: Path, candidate: Path, rows: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Agreement of two artifacts' decisions on ``rows``, overall and per sensitive group, and score deltas.

    Parameters
    ----------
    active, candidate : Path
        Artifact folders (verify them first: :func:`fedready.registry.verify_artifact`).
    rows : list of dict
        Raw rows (recorded inputs or a sample of live traffic).

    Returns
    -------
    dict
        ``agreement`` (share of equal decisions), ``groups``: attribute -> group -> ``{rows, agreement}``,
        ``min_group_agreement``, ``score_delta`` (candidate minus active: mean, mean_abs, p95_abs, max_abs),
        ``positive_rate`` of each model, both versions and the row count.
    """
    from fedready.registry import Predictor

    if not rows:
        raise ConfigError("data", "no rows to compare on; pass a CSV or JSON lines file with a header and rows")
    a, c = Predictor(Path(active)), Predictor(Path(candidate))
    ra, rc = a.predict(rows), c.predict(rows)
    pa = np.array([r["prediction"] for r in ra])
    pc = np.array([r["prediction"] for r in rc])
    delta = np.array([r["probability"] for r in rc]) - np.array([r["probability"] for r in ra])
    same = pa == pc
    groups: dict[str, dict[str, dict[str, float]]] = {}
    for attr in a.schema.sensitive:
        values = np.array([str(r.get(attr, "")).strip() for r in rows])
        groups[attr] = {str(g): {"rows": int((values == g).sum()), "agreement": float(same[values == g].mean())}
                        for g in sorted(set(values.tolist()))}  # fmt: skip
    group_rates = [g["agreement"] for by in groups.values() for g in by.values()]
    return {
        "active_version": a.version,
        "candidate_version": c.version,
        "rows": len(rows),
        "agreement": float(same.mean()),
        "min_group_agreement": min(group_rates, default=float(same.mean())),
        "groups": groups,
        "positive_rate": {"active": float(pa.mean()), "candidate": float(pc.mean())},
        "score_delta": {"mean": float(delta.mean()), "mean_abs": float(np.abs(delta).mean()),
                        "p95_abs": float(np.quantile(np.abs(delta), 0.95)), "max_abs": float(np.abs(delta).max())},
    }  # fmt: skip
