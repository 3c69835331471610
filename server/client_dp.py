"""Client-level DP (DP-FedAvg) at the sensitivity the accountant assumes.

:class:`ClientLevelDP` wraps an inner Flower strategy (it delegates evaluation and summary)
and does the two things the DP guarantee depends on itself:

* **Poisson client sampling.** Each client is sampled independently with probability ``q``,
  drawn from OS entropy, which is exactly the mechanism the accountant models (the
  subsampled Gaussian under add/remove adjacency, Mironov et al. 2019, arXiv:1908.10530).
* **A fixed denominator.** The new model is ``current + (sum of clipped updates + noise) / m``
  with ``m = q * N`` the *expected* number of sampled clients (McMahan et al. 2018,
  arXiv:1710.06963, the fixed-denominator estimator). A dropped, declined or rejected client
  contributes zero and never shrinks the denominator, so adding or removing one client moves
  the pre-noise aggregate by at most ``C / m``, and the noise ``N(0, (z C)^2)`` on the sum
  gives exactly multiplier ``z``.

Why not Flower's wrappers: they delegate the mean to the inner FedAvg, which divides by the
number of replies (a variable denominator: one client then moves the mean by up to about
``2 C / m`` while the noise is sized for ``C / m``); they sample a fixed number of clients
while the accountant assumes Poisson sampling; their noise comes from NumPy's global
generator; and the adaptive wrapper updates the clipping norm before adding the noise, so
the noise is sized for ``C(t+1)`` while updates were clipped to ``C(t)``.

Adaptive clipping (Andrew et al. 2021, arXiv:1905.03871): updates are clipped to ``C(t)``,
noise is sized for ``C(t)``, the count of unclipped updates is released with its own noise
(centred, sensitivity 1/2: Theorem 1 then makes the pair of releases a Gaussian mechanism
with the configured multiplier ``z``), and only then is ``C(t+1)`` computed from it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM, KEY_NORM_BIT, compute_adaptive_noise_params

from fedready.privacy.randomness import dp_numpy_rng

__all__ = ["AdaptiveClipping", "ClientLevelDP", "WrappingStrategy", "clip_update", "clipped_sum"]


def clip_update(
    update: dict[str, np.ndarray], reference: dict[str, np.ndarray], clip: float
) -> tuple[dict[str, np.ndarray], bool]:
    """The update's delta from ``reference`` scaled to L2 norm at most ``clip``, and whether it was within."""
    delta = {k: np.asarray(update[k], dtype=np.float64) - np.asarray(reference[k], dtype=np.float64) for k in reference}
    norm = math.sqrt(sum(float(np.sum(d * d)) for d in delta.values()))
    scale = 1.0 if norm <= clip else clip / norm
    return {k: d * scale for k, d in delta.items()}, norm <= clip


def clipped_sum(
    updates: list[dict[str, np.ndarray]], reference: dict[str, np.ndarray], clip: float
) -> tuple[dict[str, np.ndarray], list[bool]]:
    """Sum of the updates' clipped deltas (float64) and each update's unclipped bit.

    Adding or removing one update changes the sum by at most ``clip`` in L2 norm: the
    sensitivity every client-level DP path in fedready is accounted with.
    """
    total = {k: np.zeros(np.shape(v), dtype=np.float64) for k, v in reference.items()}
    bits = []
    for u in updates:
        delta, within = clip_update(u, reference, clip)
        for k in total:
            total[k] += delta[k]
        bits.append(within)
    return total, bits


@dataclass
class AdaptiveClipping:
    """Andrew et al. 2021 geometric update of the clipping norm from a noisy unclipped count."""

    target_quantile: float = 0.5
    learning_rate: float = 0.2
    count_stddev: float | None = None  # default m / 20 (the paper's choice)


class WrappingStrategy(Strategy):
    """A strategy around another (``self.strategy``): evaluation and summary are delegated to it."""

    strategy: Strategy

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:  # fmt: skip
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.strategy.summary()


class ClientLevelDP(WrappingStrategy):
    """DP-FedAvg around ``strategy``: Poisson sampling, clipping, a fixed denominator, secret noise.

    Parameters
    ----------
    strategy : Strategy
        The inner strategy; evaluation and summary are delegated to it.
    noise_multiplier : float
        ``z``: the mechanism's noise std is ``z * C`` on the sum of clipped updates (with adaptive
        clipping, ``z`` is the combined multiplier of Theorem 1 of Andrew et al.).
    clipping_norm : float
        ``C`` (the initial value with adaptive clipping).
    sample_rate : float
        ``q``: each client takes part in a round with this probability.
    population : int
        Number of clients ``N``; the fixed denominator is ``q * N``.
    clip_on_client : bool
        Send ``C(t)`` to the clients so Flower's client mods clip before sending (the server
        clips again: a client's own clipping is not trusted for the guarantee).
    adaptive : AdaptiveClipping, optional
        Adapt ``C`` each round.
    """

    def __init__(
        self, strategy: Strategy, *, noise_multiplier: float, clipping_norm: float, sample_rate: float,
        population: int, clip_on_client: bool = False, adaptive: AdaptiveClipping | None = None,
        arrayrecord_key: str = "arrays", configrecord_key: str = "config", wait_for_nodes: float = 600.0,
        insecure_seed: tuple[int, ...] | None = None,
    ) -> None:  # fmt: skip
        if not noise_multiplier >= 0:
            raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
        if not clipping_norm > 0:
            raise ValueError(f"clipping_norm must be > 0, got {clipping_norm}")
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        if population < 1:
            raise ValueError(f"population must be >= 1, got {population}")
        self.strategy = strategy
        self.noise_multiplier = float(noise_multiplier)
        self.clipping_norm = float(clipping_norm)
        self.sample_rate = float(sample_rate)
        self.population = int(population)
        self.denominator = self.sample_rate * self.population  # m: expected sampled clients
        self.clip_on_client = clip_on_client
        self.adaptive = adaptive
        self.count_stddev = 0.0
        self.update_noise_multiplier = self.noise_multiplier  # z for the vector part
        if adaptive is not None:
            self.count_stddev, self.update_noise_multiplier = compute_adaptive_noise_params(
                self.noise_multiplier, self.denominator, adaptive.count_stddev
            )
        self.arrayrecord_key = arrayrecord_key
        self.configrecord_key = configrecord_key
        self.wait_for_nodes = wait_for_nodes
        self.population_to_wait_for = self.population  # fewer when clients were refused before round 1
        self._rng = dp_numpy_rng(insecure_seed)  # secret unless --insecure-seeded-noise
        self.current: ArrayRecord | None = None
        self.last_pre_noise: dict[str, np.ndarray] | None = None  # sum / m before noise (tests, audits)
        self.last_clip = self.clipping_norm  # the norm the last aggregate was clipped and noised with

    # -- sampling -------------------------------------------------------------------------------
    def sample(self, node_ids: Iterable[int]) -> list[int]:
        """Each node independently with probability ``q`` (OS-entropy randomness)."""
        nodes = sorted(node_ids)
        keep = self._rng.random(len(nodes)) < self.sample_rate
        return [n for n, k in zip(nodes, keep, strict=True) if k]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Poisson-sample the clients and send them the model (and ``C(t)`` under client-side clipping)."""
        self.current = arrays
        deadline = time.monotonic() + self.wait_for_nodes
        nodes = list(grid.get_node_ids())
        while len(nodes) < self.population_to_wait_for and time.monotonic() < deadline:
            time.sleep(0.2)
            nodes = list(grid.get_node_ids())
        config["server-round"] = server_round
        if self.clip_on_client:
            config[KEY_CLIPPING_NORM] = self.clipping_norm
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return [Message(content=record, message_type=MessageType.TRAIN, dst_node_id=n) for n in self.sample(nodes)]

    # -- aggregation ----------------------------------------------------------------------------
    def noise_std(self) -> float:
        """Std of the Gaussian noise on the sum of clipped updates this round: ``z_update * C(t)``."""
        return self.update_noise_multiplier * self.clipping_norm

    def aggregate_arrays(
        self, updates: list[dict[str, np.ndarray]], reference: dict[str, np.ndarray],
        reported_bits: list[bool] | None = None, *, summed_by_secagg: bool = False,
    ) -> dict[str, np.ndarray]:  # fmt: skip
        """``reference + (sum of clipped updates + noise) / m``, then the clip update if adaptive.

        ``summed_by_secagg``: ``updates`` holds one pseudo-update, ``reference`` plus the sum of
        updates each client clipped itself before masking (the server cannot clip them).
        """
        clip = self.clipping_norm
        total, bits = clipped_sum(updates, reference, math.inf if summed_by_secagg else clip)
        if reported_bits is not None:  # client-side adaptive clipping: the client saw the unclipped norm
            bits = [b and r for b, r in zip(bits, reported_bits, strict=True)]
        self.last_pre_noise = {k: v / self.denominator for k, v in total.items()}
        self.last_clip = clip
        std = self.noise_std()
        out = {}
        for k, ref in reference.items():
            noisy = total[k] + self._rng.normal(0.0, std, size=np.shape(ref))
            out[k] = (np.asarray(ref, dtype=np.float64) + noisy / self.denominator).astype(np.asarray(ref).dtype)
        if self.adaptive is not None:
            # centred count (sensitivity 1/2) with its own noise, offset by the *expected* m/2
            centred = sum(b - 0.5 for b in bits) + self._rng.normal(0.0, self.count_stddev)
            unclipped = centred / self.denominator + 0.5
            step = self.adaptive.learning_rate * (unclipped - self.adaptive.target_quantile)
            self.clipping_norm = clip * math.exp(-step)
        return out

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate the accepted replies (possibly none: the release is then the noise alone)."""
        if self.current is None:
            raise RuntimeError("aggregate_train before configure_train")
        reference = {k: v.numpy() for k, v in self.current.items()}
        replies = list(replies)
        updates, reported = [], []
        for m in replies:
            rec = m.content[self.arrayrecord_key]
            updates.append(dict(zip(rec.keys(), rec.to_numpy_ndarrays(), strict=True)))
            metrics = next(iter(m.content.metric_records.values()), None)
            reported.append(bool(int(metrics.get(KEY_NORM_BIT, 1))) if metrics is not None else True)
        bits = reported if (self.clip_on_client and self.adaptive is not None) else None
        new = self.aggregate_arrays(updates, reference, bits)
        record = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in new.items()})
        return record, MetricRecord({"clipping-norm": float(self.last_clip), "aggregated": len(updates)})
