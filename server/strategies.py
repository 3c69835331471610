"""Build the round's Flower strategy: an aggregator, optionally wrapped for client-level DP.

Aggregators are Flower's own strategies, registered under string keys. Client-level
DP (DP-FedAvg, McMahan et al. 2018, arXiv:1710.06963) wraps FedAvg in
:class:`~fedready.server.client_dp.ClientLevelDP` (Poisson client sampling, a fixed
denominator, secret noise; adaptive clipping after Andrew et al. 2021, arXiv:1905.03871);
its module docstring says why Flower's own DP wrappers are not used.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import (
    Bulyan,
    FedAvg,
    FedMedian,
    FedTrimmedAvg,
    Krum,
    MultiKrum,
    QFedAvg,
    Strategy,
)

from fedready import constants as K
from fedready.config import SimulationConfig
from fedready.errors import ConfigError
from fedready.server.client_dp import AdaptiveClipping, ClientLevelDP

__all__ = ["AGGREGATORS", "CLIENT_DP_MODES", "build_strategy", "client_sample_rate", "sampled_clients"]


def _no_metrics(records: list, weighting_metric_name: str) -> MetricRecord:
    """The server reads each reply's metrics itself; averaging them (release histories differ in length) is moot."""
    return MetricRecord()


def _common(cfg: SimulationConfig, weight_key: str) -> dict[str, Any]:
    m = sampled_clients(cfg)
    return {
        "train_metrics_aggr_fn": _no_metrics,
        "fraction_train": cfg.fraction_train,
        "fraction_evaluate": 0.0,  # the server evaluates on its holdout
        "min_train_nodes": m,
        "min_available_nodes": cfg.num_clients,
        "weighted_by_key": weight_key,
        "arrayrecord_key": K.ARRAYS,
        "configrecord_key": K.CONFIG,
    }


class _QFedAvgFloat32(QFedAvg):
    """Flower's QFedAvg, with the new global model cast back to the previous one's dtypes.

    QFedAvg divides by a float64 sum, so its result is float64; the next round's updates
    (float32) would then be rejected by update validation as a dtype mismatch.
    """

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        assert self.current_arrays is not None
        dtypes = {k: a.numpy().dtype for k, a in self.current_arrays.items()}
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is None:
            return arrays, metrics
        values = zip(arrays.keys(), arrays.to_numpy_ndarrays(), strict=True)
        return ArrayRecord({k: Array(np.asarray(v, dtype=dtypes[k])) for k, v in values}), metrics


# name -> builder(cfg, common kwargs). Unknown names are refused by SimulationConfig.
AGGREGATORS: dict[str, Callable[[SimulationConfig, dict[str, Any]], Strategy]] = {
    "fedavg": lambda cfg, kw: FedAvg(**kw),
    "median": lambda cfg, kw: FedMedian(**kw),
    "trimmed-mean": lambda cfg, kw: FedTrimmedAvg(**kw, beta=cfg.trim_beta),
    "krum": lambda cfg, kw: Krum(**kw, num_malicious_nodes=cfg.num_malicious),
    "multikrum": lambda cfg, kw: MultiKrum(**kw, num_malicious_nodes=cfg.num_malicious,
                                           num_nodes_to_select=max(1, sampled_clients(cfg) - cfg.num_malicious)),
    "bulyan": lambda cfg, kw: Bulyan(**kw, num_malicious_nodes=cfg.num_malicious),
    # q-FFL (Li et al. 2020, arXiv:1905.10497): weights clients by loss^q for a fairer spread of accuracy.
    # L = 1 / (round-1 local learning rate); clients already report their mean training loss.
    "qfedavg": lambda cfg, kw: _QFedAvgFloat32(**kw, client_learning_rate=cfg.lr, q=cfg.qffl_q,
                                               train_loss_key=K.TRAIN_LOSS),
}  # fmt: skip

CLIENT_DP_MODES = ("off", "server-fixed", "server-adaptive", "client-fixed", "client-adaptive")


def sampled_clients(cfg: SimulationConfig) -> int:
    """Clients sampled per round (Flower's FedAvg samples ``int(fraction * N)``, at least 1)."""
    return max(1, int(cfg.fraction_train * cfg.num_clients))


def client_sample_rate(cfg: SimulationConfig) -> float:
    """Under client-level DP, the Poisson rate q; ``q * N`` is the fixed denominator (expected clients)."""
    return sampled_clients(cfg) / cfg.num_clients


def build_strategy(cfg: SimulationConfig, noise_multiplier: float | None) -> Strategy:
    """Return the aggregator for ``cfg``, wrapped for client-level DP if that is on.

    Parameters
    ----------
    cfg : SimulationConfig
        The run configuration.
    noise_multiplier : float or None
        Client-level noise multiplier z (noise std = z * clip on the sum of clipped updates,
        divided by the expected number of sampled clients); required when ``cfg.client_dp``
        is not ``"off"``.
    """
    if cfg.client_dp == "off":
        return AGGREGATORS[cfg.aggregator](cfg, _common(cfg, K.NUM_EXAMPLES))
    if noise_multiplier is None:
        raise ConfigError("client-noise-multiplier", "client-level DP needs a noise multiplier or --client-epsilon")
    # The inner FedAvg only serves evaluation and summary; the DP wrapper aggregates (unweighted sum).
    inner = FedAvg(**_common(cfg, K.UNIFORM_WEIGHT))
    adaptive = None
    if cfg.client_dp.endswith("adaptive"):
        adaptive = AdaptiveClipping(target_quantile=cfg.clip_quantile, learning_rate=cfg.clip_learning_rate,
                                    count_stddev=cfg.clip_count_stddev)  # fmt: skip
    try:
        return ClientLevelDP(inner, noise_multiplier=noise_multiplier, clipping_norm=cfg.client_clip,
                             sample_rate=client_sample_rate(cfg), population=cfg.num_clients,
                             clip_on_client=cfg.client_dp.startswith("client-"), adaptive=adaptive,
                             arrayrecord_key=K.ARRAYS, configrecord_key=K.CONFIG, wait_for_nodes=cfg.round_timeout,
                             insecure_seed=(cfg.seed, 0xD9) if cfg.insecure_seeded_noise else None)  # fmt: skip
    except ValueError as e:  # e.g. z too large for the clipped-count noise of adaptive clipping
        raise ConfigError("clip-count-stddev", f"{e}") from e
