"""Server-side validation of client updates, before any aggregation.

A client update is untrusted input. It is rejected when its arrays do not match
the global model's names, shapes or dtypes, when it holds NaN or Inf, or when the
norm of the update (client model minus global model) is far above the clipping
bound or far above the round's median norm (the signature of a scaled or boosted
update, Bhagoji et al. 2019, arXiv:1811.12470). Each rejection names the client,
the reason and the norm, and is written to the run's audit log.

Under sample-level DP-SGD the median rule is scale-aware: each norm is divided by
the size an honest update of that client's own DP-SGD round can have
(:func:`dp_sgd_scale`), so a client whose update is larger only because it holds
fewer rows (less privacy amplification, more noise per row) or ran more steps is
compared like for like, while a boosted update stays as many times too large.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedready import constants as K

__all__ = ["Rejection", "UpdateValidator", "dp_sgd_scale", "update_norm"]


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


def dp_sgd_scale(*, steps: int, noise_multiplier: float, sample_rate: float, rows: float, lr: float, clip: float,
                 params: int) -> tuple[float, float]:  # fmt: skip
    """What an honest update of one DP-SGD round is made of: (largest gradient part, expected noise norm).

    Each step moves the model by ``lr`` times the mean of clipped per-sample gradients (norm at
    most ``clip``) plus Gaussian noise of std ``noise_multiplier * clip / B`` per parameter, with
    ``B = sample_rate * rows`` the expected batch Opacus divides by. Over ``steps`` steps the
    gradients add at most linearly, to ``lr * clip * steps``, and the noise as a random walk, to an
    expected norm of ``lr * clip * noise_multiplier * sqrt(steps * params) / B``.

    Notes
    -----
    Every input but ``lr``, ``clip`` and ``params`` is the client's own report (the same numbers
    its privacy charge and its aggregation weight come from). A client that overstates its steps
    to hide a boosted update is charged for the steps it claims; a claimed noise multiplier only
    changes how large an update passes, never the global model's clip or noise.
    """
    batch = max(sample_rate * rows, 1.0)
    return float(lr * clip * steps), float(lr * clip * noise_multiplier * np.sqrt(steps * params) / batch)


def _expected_norms(norms: dict[int, float], scales: list[tuple[float, float]]) -> dict[int, float]:
    """Per update, the norm an honest one of its size reaches: its noise, plus the round's typical gradient part.

    The gradient part is ``g * lr * clip * steps`` with ``g`` in [0, 1] the round's median share of
    the clipped bound the updates used, after their own expected noise is taken out: clients that
    learn from similar data move alike per step, however many rows (and so how much noise) each has.
    """
    used = [min(1.0, np.sqrt(max(norms[i] ** 2 - scales[i][1] ** 2, 0.0)) / scales[i][0])
            for i in norms if scales[i][0] > 0]  # fmt: skip
    g = float(np.median(used)) if used else 0.0
    return {i: float(np.hypot(g * scales[i][0], scales[i][1])) for i in norms}


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
        self, updates: list[tuple[str, int, dict[str, np.ndarray]]], reference: dict[str, np.ndarray],
        scales: list[tuple[float, float]] | None = None,
    ) -> tuple[list[int], list[Rejection]]:  # fmt: skip
        """Return (indices of accepted updates, rejections), in input order.

        Parameters
        ----------
        updates : list of (client id, node id, arrays)
            The round's candidate updates (full client models).
        reference : dict
            The global model the round started from.
        scales : list of (float, float), optional
            Per update, its gradient bound and expected noise norm under DP-SGD (:func:`dp_sgd_scale`):
            the median rule then compares each norm with what an honest update of that size reaches,
            so clients of very different sizes or step counts are judged alike. Without it, raw norms.
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
            expected = _expected_norms(norms, scales) if scales is not None else {}
            scaled = {i: n / expected[i] if expected.get(i, 0.0) > 0 else n for i, n in norms.items()}
            median = float(np.median(list(scaled.values())))
            for i, norm in list(norms.items()):
                if median > 0 and scaled[i] > self.median_factor * median:
                    client, node, _ = updates[i]
                    detail = f"norm {norm:.4g} > {self.median_factor:g} x median {median:.4g}" if scales is None \
                        else (f"norm {norm:.4g} is {scaled[i]:.4g} x an honest update of its size ({expected[i]:.4g}), "
                              f"> {self.median_factor:g} x the round's median {median:.4g}")  # fmt: skip
                    rejections.append(Rejection(client, node, K.REJECT_NORM_MEDIAN, norm, detail))
                    del norms[i]
        return sorted(norms), rejections
