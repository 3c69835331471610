"""Server-side validation of client updates, before any aggregation.

A client update is untrusted input. It is rejected when its arrays do not match
the global model's names, shapes or dtypes, when it holds NaN or Inf, or when the
norm of the update (client model minus global model) is far above the clipping
bound or far above the round's median norm (the signature of a scaled or boosted
update, Bhagoji et al. 2019, arXiv:1811.12470). Each rejection names the client,
the reason and the norm, and is written to the run's audit log.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedready import constants as K

__all__ = ["Rejection", "UpdateValidator", "update_norm"]


@dataclass(frozen=True)
class Rejection:
    """Why one client's update was not aggregated."""

    client: str
    node_id: int
    reason: str
    norm: float | None
    detail: str = ""


def update_norm(update: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> float:
    """Return the L2 norm of ``update - reference`` over all arrays."""
    total = 0.0
    for name, ref in reference.items():
        d = np.asarray(update[name], dtype=np.float64) - np.asarray(ref, dtype=np.float64)
        total += float(np.sum(d * d))
    return float(np.sqrt(total))


class UpdateValidator:
    """Check updates against the global model and against each other.

    Parameters
    ----------
    clip_bound : float or None
        Norm bound updates were clipped to (client-side clipping); an update above
        ``clip_bound * clip_slack`` cannot be honest. None when clients do not clip.
    median_factor : float
        Reject an update whose norm exceeds this multiple of the round's median
        norm. Needs at least 3 updates to have a meaningful median.
    clip_slack : float
        Tolerance on ``clip_bound`` for float rounding and quantisation.
    structural_only : bool
        Check names, shapes, dtypes and finiteness only. Under client-level DP a rejection
        must not depend on other clients (the median rule does: one client could change which
        others are accepted), and the clip, not a rejection, bounds every norm.
    """

    def __init__(self, *, clip_bound: float | None = None, median_factor: float = 10.0,
                 clip_slack: float = 1.01, structural_only: bool = False) -> None:  # fmt: skip
        if median_factor <= 1:
            raise ValueError(f"median_factor must be > 1, got {median_factor}")
        if clip_bound is not None and clip_bound <= 0:
            raise ValueError(f"clip_bound must be > 0, got {clip_bound}")
        self.clip_bound = clip_bound
        self.median_factor = median_factor
        self.clip_slack = clip_slack
        self.structural_only = structural_only

    def _structural(self, update: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> tuple[str, str] | None:
        if set(update) != set(ref):
            return K.REJECT_SHAPE, f"arrays {sorted(update)} != expected {sorted(ref)}"
        for name, r in ref.items():
            u = update[name]
            if u.shape != r.shape:
                return K.REJECT_SHAPE, f"{name}: shape {u.shape} != expected {r.shape}"
            if u.dtype != r.dtype:
                return K.REJECT_DTYPE, f"{name}: dtype {u.dtype} != expected {r.dtype}"
        for name, u in update.items():
            if not np.isfinite(u).all():
                return K.REJECT_NON_FINITE, f"{name} holds NaN or Inf"
        return None

    def validate(
        self, updates: list[tuple[str, int, dict[str, np.ndarray]]], reference: dict[str, np.ndarray]
    ) -> tuple[list[int], list[Rejection]]:
        """Return (indices of accepted updates, rejections), in input order.

        Parameters
        ----------
        updates : list of (client id, node id, arrays)
            The round's candidate updates (full client models).
        reference : dict
            The global model the round started from.
        """
        rejections: list[Rejection] = []
        norms: dict[int, float] = {}
        for i, (client, node, arrays) in enumerate(updates):
            bad = self._structural(arrays, reference)
            if bad is not None:
                rejections.append(Rejection(client, node, bad[0], None, bad[1]))
                continue
            if self.structural_only:
                norms[i] = 0.0
                continue
            norm = update_norm(arrays, reference)
            if self.clip_bound is not None and norm > self.clip_bound * self.clip_slack:
                rejections.append(Rejection(client, node, K.REJECT_NORM_CLIP, norm,
                                            f"norm {norm:.4g} > clip bound {self.clip_bound:.4g}"))  # fmt: skip
                continue
            norms[i] = norm
        if len(norms) >= 3 and not self.structural_only:
            median = float(np.median(list(norms.values())))
            for i, norm in list(norms.items()):
                if median > 0 and norm > self.median_factor * median:
                    client, node, _ = updates[i]
                    detail = f"norm {norm:.4g} > {self.median_factor:g} x median {median:.4g}"
                    rejections.append(Rejection(client, node, K.REJECT_NORM_MEDIAN, norm, detail))
                    del norms[i]
        return sorted(norms), rejections
