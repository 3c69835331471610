"""``fedready audit-privacy``: re-run a configuration with canaries and measure how much the model leaks.

An accountant's epsilon is an upper bound computed from what the code says it does. This module
runs a simulation of a configuration with randomly included canaries and turns what the released
models show about them into an empirical lower bound (Steinke, Nasr and Jagielski 2023, one
training run; :mod:`fedready.privacy.auditing`), beside the epsilon the run's own ledger charges.
A bound above the accounted epsilon means the implementation releases more than it charges.

* **Client level** (Andrew et al. 2024, arXiv:2302.03098): canary clients, each inserted with
  probability 1/2, send an isotropic update of the clipping norm whenever they are sampled, at the
  rate real clients are. They enter the strategy's own aggregation (:class:`CanaryClients` wraps it:
  clipping, noise and fixed denominator all apply). Score: per round, the new model minus the old
  one minus the other clients' (known) contribution, projected on each canary's direction, then the
  likelihood ratio of the subsampled Gaussian mechanism as claimed.
* **Sample level** (white box, Steinke et al. Sec. 6): gradient canaries, each owned by one
  uniformly chosen client and inserted with probability 1/2. An inserted canary is a training row
  whose clipped gradient is a fixed isotropic vector of norm ``max_grad_norm``: in every DP-SGD step
  of its client it is Poisson-sampled at the client's rate and added to the clipped sum before the
  noise (:class:`GradientCanaries`). Score: each step's noisy sum minus the real rows' clipped sum,
  projected on each canary, scored by the likelihood ratio of the subsampled Gaussian as claimed.
* **Both** in one run (``level="both"``): each score removes everything but its own canaries and
  the noise (the client level subtracts the real replies, gradient canaries included; the sample
  level subtracts the real rows inside the client), so neither kind disturbs the other's bound.

Notes
-----
Canaries never reach a deployment. The hooks that carry them (``strategy_hook`` of
:func:`fedready.server.app.run_rounds`, ``train_rows`` of :func:`fedready.client.app.make_client_app`)
exist only as Python parameters that this module passes to a local simulation; the apps ``flwr run``
and SuperNodes load are built without them, and a client with its own data never calls the
optimiser hook. :func:`check_simulated_run` refuses a run folder a deployment wrote. Canary directions, rows,
inclusion bits and per-round sampling come from OS entropy (:mod:`fedready.privacy.randomness`),
never from ``--seed``: a score may not see the bits (arXiv:2305.08846, Algorithm 1).

Why the client-level score may subtract the other clients' updates: client-level DP must hold for
every choice of the other clients, and the released round is ``(others + canaries + noise) / m``
with ``others`` a function of earlier rounds and of the other clients' own randomness; an auditor
who knows ``others`` (the adversary of the DP definition knows every other client's data) sees
post-processing of the same releases, so the one-run bound stays valid. It is also what makes the
audit sharp on a small model: the other clients' drift along a canary, which at a few thousand
parameters is as large as the canary itself, is gone, and only the noise protects it. The sample
level uses the same argument one level down: DP-SGD's accounting covers every intermediate step
(Abadi et al. 2016), the other rows' clipped sum in a step is a function of the released iterate
and of their own sampling (independent of the canary's), so removing it leaves the canary and the
noise. Black-box canary rows scored by the final model's loss were measured first and certify
nothing on fedready's models even without DP (docs/guides/researcher.md, "Empirical privacy audit").
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedready import constants as K
from fedready.config import SimulationConfig
from fedready.constants import LEDGER_FILE
from fedready.errors import ConfigError
from fedready.federation import CONFIG_FILE, LAUNCHED_BY_SIMULATION, task_of
from fedready.files import atomic_write_bytes
from fedready.privacy.auditing import (
    CanaryAudit,
    canary_audit,
    canary_update,
    cosine_scores,
    flatten_update,
    inclusion_bits,
    isotropic_directions,
    subsampled_gaussian_scores,
)
from fedready.privacy.ledger import Ledger
from fedready.privacy.randomness import secret_numpy_rng
from fedready.server.client_dp import ClientLevelDP, WrappingStrategy, clipped_sum
from fedready.server.strategies import client_sample_rate

__all__ = [
    "BOTH",
    "SCALE",
    "DEFAULT_CANARIES",
    "LEVELS",
    "CanaryClients",
    "GradientCanaries",
    "accounted_epsilon",
    "check_auditable",
    "check_simulated_run",
    "local_client_updates",
    "run_audit",
    "run_scale_audit",
    "scale_scores",
]

log = logging.getLogger(__name__)

LEVELS = ("client", "sample")
BOTH = "both"  # both levels' canaries in one run
SCALE = "scale"  # membership guessed from the released updates' norms (the row count's leak through the scale)
SCALE_ROWS = 50  # rows of each audited client without its canary: the smaller, the larger one row's share
SCALE_ROUNDS = 3  # rounds each audited client releases (at the configuration's per-round noise)
DEFAULT_CANARIES = 1000  # the one-run bound's cap is 4.39 at 1000 (3.72 at 500, 5.03 at 2000): privacy/auditing.py
_ORTHOGONAL_MAX_DIM = 20_000  # orthogonalise canary directions up to this many parameters (above: nearly orthogonal)
_FLOAT32_ABOVE = 50_000_000  # store directions in float32 above this many values (1000 canaries x mlp-large)
REFERENCES = (
    "Steinke, Nasr, Jagielski 2023, Privacy Auditing with One (1) Training Run, arXiv:2305.08846",
    "Andrew, Kairouz, Oh, Oprea, McMahan, Suriyakumar 2024, One-shot Empirical Privacy Estimation for "
    "Federated Learning, arXiv:2302.03098",
)


# --------------------------------------------------------------------------------------------
# What may be audited
# --------------------------------------------------------------------------------------------


def check_simulated_run(run_dir: Path) -> None:
    """Refuse a folder that is not a ``fedready simulate`` run (e.g. one a deployment wrote).

    A simulation's ``config.json`` says ``launched_by: "fedready simulate"``
    (:func:`fedready.federation.record_run`); a ServerApp started by ``flwr run`` records
    ``"ServerApp"``. Older folders carry no such field: they are taken as simulations unless their
    audit log shows deployed clients (their data fingerprints, or a schema handshake's refusals).

    Raises
    ------
    ConfigError
        Naming ``run``: no ``config.json`` (not a run folder), a run a ServerApp started
        (``flwr run``), or deployed clients' traces in its audit log.
    """
    why = ("the audit inserts canaries, so it only ever re-runs a recorded configuration as a local "
           "simulation; it never sends canaries to real clients")  # fmt: skip
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise ConfigError("run", f"{run_dir} holds no {CONFIG_FILE}: it is not a `fedready simulate` run; {why}")
    try:
        launched_by = json.loads(path.read_text(encoding="utf-8")).get("launched_by")
    except (json.JSONDecodeError, AttributeError) as e:
        raise ConfigError("run", f"{path} is not a run's configuration ({e})") from None
    if launched_by is not None and launched_by != LAUNCHED_BY_SIMULATION:
        raise ConfigError("run", f"{run_dir} was started by a {launched_by} (`flwr run`), possibly with deployed "
                                 f"clients, not by `fedready simulate`; {why}")  # fmt: skip
    log_file = run_dir / "audit.jsonl"
    if log_file.is_file():
        text = log_file.read_text(encoding="utf-8")
        if '"client-data"' in text or '"client-refused"' in text:
            raise ConfigError("run", f"{run_dir} was trained by deployed clients on their own data; {why}")


def check_auditable(cfg: SimulationConfig, level: str) -> None:
    """Refuse what the audit cannot run faithfully, naming the option and the way out."""
    if level not in (*LEVELS, BOTH, SCALE):
        raise ConfigError("level", f"unknown level '{level}'; expected one of: {', '.join((*LEVELS, BOTH, SCALE))}")
    if level == SCALE:
        if not cfg.dp:
            raise ConfigError("dp", "the scale audit measures record-level DP-SGD releases; drop --no-dp")
        return
    if cfg.secagg:
        raise ConfigError("secagg", "the audit does not run under SecAgg+ (canary updates would have to enter the "
                                    "masked sum); audit the same configuration without --secagg: the DP "
                                    "mechanism (clip, sum, noise, fixed denominator) is the same")  # fmt: skip
    if level in ("client", BOTH) and cfg.aggregator != "fedavg":
        raise ConfigError("aggregator", f"canary clients are scored through the mean; '{cfg.aggregator}' is not "
                                        "one (and client-level DP needs --aggregator fedavg)")  # fmt: skip


def accounted_epsilon(ledger: Ledger, cfg: SimulationConfig, level: str) -> dict[str, Any]:
    """The accounted epsilon the audit's bound is compared with, and the run's claimed (headline) one.

    Client level: the ledger's client-level epsilon (every round's (z, q, 1), composed) at
    ``client_delta``. Sample level: the largest composition, over clients, of the releases the
    audited model is made from (the noisy row count and every DP-SGD round; the post-training
    counts come after the model and are not in it) at ``delta``; with client-level DP too, the
    smaller of that and the client-level epsilon (a row is part of its client). ``claimed`` is
    the headline every report prints (it also composes the post-training counts).
    """
    if level == "client":
        if cfg.client_dp == "off":
            return {"epsilon": None, "delta": cfg.client_delta, "claimed": None, "what": "no client-level DP"}
        eps = ledger.client_level_epsilon
        return {"epsilon": eps, "delta": cfg.client_delta, "claimed": eps,
                "what": "client level: the ledger's (z, q, 1) of every round, composed"}  # fmt: skip
    candidates = []
    if cfg.dp:
        model = max(ledger.client_epsilon(("count", "sample")).values(), default=0.0)
        candidates.append((model, cfg.delta, "record level, of the model: the ledger's noisy row count and "
                                             "DP-SGD rounds, composed, largest client"))  # fmt: skip
    if cfg.client_dp != "off" and (not cfg.dp or cfg.client_delta == cfg.delta):
        candidates.append((ledger.client_level_epsilon, cfg.client_delta,
                           "client level: a row is part of its client"))  # fmt: skip
    if not candidates:
        return {"epsilon": None, "delta": cfg.delta, "claimed": None, "what": "no differential privacy"}
    eps, delta, what = min(candidates)
    return {"epsilon": eps, "delta": delta, "claimed": ledger.epsilon if cfg.dp else eps, "what": what}


# --------------------------------------------------------------------------------------------
# Client level: canary clients inside the aggregation
# --------------------------------------------------------------------------------------------


def _arrays(msg: Message) -> dict[str, np.ndarray]:
    rec = msg.content[K.ARRAYS]
    return dict(zip(rec.keys(), rec.to_numpy_ndarrays(), strict=True))


def _metrics(msg: Message) -> MetricRecord:
    return next(iter(msg.content.metric_records.values()))


class CanaryClients(WrappingStrategy):
    """The round's strategy with canary clients among the replies it aggregates (Andrew et al. 2024).

    Every round each inserted canary takes part independently with probability ``sample_rate`` (the
    real clients' rate), drawn from the audit's own generator. A canary that takes part replies
    ``current + canary_update(direction, norm)`` with the norm of the clip, like any client; the
    wrapped strategy aggregates it with the real replies (under client-level DP: clip, sum, noise,
    fixed denominator; without: Flower's weighted FedAvg, a canary weighing as much as the round's
    median client). After each round the change of the model minus the real clients' contribution
    is projected on every canary's direction, in units of one canary's contribution.

    Parameters
    ----------
    strategy : Strategy
        What :func:`fedready.server.strategies.build_strategy` built; evaluation and summary are
        delegated to it.
    directions : numpy.ndarray, shape (k, d)
        Unit canary directions in :func:`~fedready.privacy.auditing.flatten_update` order.
    included : numpy.ndarray of bool, shape (k,)
        Inclusion bits (a canary never included never replies).
    sample_rate : float
        Per-round probability that an included canary replies.
    norm : float
        Update norm of a canary without client-level DP (with it: the round's clip ``C(t)``).
    rng : numpy.random.Generator
        The audit's generator (OS entropy), never the DP noise's.
    """

    def __init__(self, strategy: Strategy, *, directions: np.ndarray, included: np.ndarray, sample_rate: float,
                 norm: float, rng: np.random.Generator) -> None:  # fmt: skip
        if directions.shape[0] != included.shape[0]:
            raise ValueError(f"{directions.shape[0]} directions but {included.shape[0]} inclusion bits")
        self.strategy = strategy
        self.client_dp = strategy if isinstance(strategy, ClientLevelDP) else None
        self.weight_key = str(getattr(strategy, "weighted_by_key", K.NUM_EXAMPLES))
        self.directions, self.included = directions, np.asarray(included, dtype=bool)
        self.sample_rate, self.norm, self.rng = float(sample_rate), float(norm), rng
        # the score's noise multiplier: the one claimed (the constructor's, not what noise_std() draws)
        self.claimed_noise_multiplier = self.client_dp.update_noise_multiplier if self.client_dp else None
        self.current: ArrayRecord | None = None
        self.initial: np.ndarray | None = None
        self.final: np.ndarray | None = None
        self.projections: list[np.ndarray] = []
        self.participations = np.zeros(len(self.included), dtype=np.int64)
        self.real_replies: list[int] = []
        self._template: dict[str, Any] | None = None

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:  # fmt: skip
        self.current = arrays
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def _reply(self, j: int, reference: dict[str, np.ndarray], norm: float, weight: float) -> Message:
        update = canary_update(self.directions[j], reference, norm=norm)
        arrays = ArrayRecord({k: Array(np.ascontiguousarray(reference[k] + update[k])) for k in reference})
        metrics = dict(self._template or {})
        metrics.update({self.weight_key: weight, K.PARTITION_ID: -1 - j})
        content = RecordDict({K.ARRAYS: arrays, K.METRICS: MetricRecord(metrics)})
        return Message(content=content, dst_node_id=0, message_type=MessageType.TRAIN)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:  # fmt: skip
        """Aggregate the real replies and this round's canaries, then record the canaries' projections."""
        if self.current is None:
            raise RuntimeError("aggregate_train before configure_train")
        replies = list(replies)
        reference = {k: v.numpy() for k, v in self.current.items()}
        ref = flatten_update(reference)
        if self.initial is None:
            self.initial = ref
        present = self.included & (self.rng.random(len(self.included)) < self.sample_rate)
        updates = [_arrays(m) for m in replies]
        if replies and self._template is None:
            self._template = dict(_metrics(replies[0]))
        if self.client_dp is not None:  # sum of clipped updates + N(0, (z C)^2), over the fixed m
            norm, denominator = self.client_dp.clipping_norm, self.client_dp.denominator
            total, _ = clipped_sum(updates, reference, norm)
            real = flatten_update(total) / denominator
            weight, unit = 1.0, norm / denominator
        else:  # Flower's FedAvg: weighted mean over every reply, canaries included
            norm = self.norm
            weights = [float(_metrics(m)[self.weight_key]) for m in replies]
            weight = float(np.median(weights)) if weights else 1.0
            total_weight = sum(weights) + weight * int(present.sum())
            real = np.zeros_like(ref)
            for w, u in zip(weights, updates, strict=True):
                real += w * (flatten_update(u) - ref)
            real /= total_weight if total_weight > 0 else 1.0
            unit = weight * norm / total_weight if total_weight > 0 else 1.0
        canaries = [self._reply(int(j), reference, norm, weight) for j in np.flatnonzero(present)]
        arrays, metrics = self.strategy.aggregate_train(server_round, [*replies, *canaries])
        if arrays is None:  # nothing aggregated: no release this round
            return arrays, metrics
        new = flatten_update({k: v.numpy() for k, v in arrays.items()})
        self.projections.append(self.directions @ (new - ref - real) / unit)
        self.participations += present
        self.real_replies.append(len(replies))
        self.final = new
        return arrays, metrics

    def score(self, *, delta: float, confidence: float) -> tuple[np.ndarray, CanaryAudit, dict[str, Any]]:
        """The canaries' scores, their audit and the report's fields, once the rounds are over.

        Primary score (the bound and the alarm): each round's residual projection scored by the
        likelihood ratio of the subsampled Gaussian mechanism at the claimed multiplier
        (:func:`~fedready.privacy.auditing.subsampled_gaussian_scores`); without client-level DP, at a
        nominal multiplier 1 (any score keeps the bound valid). Secondary, information only: Andrew
        et al.'s cosine of the final model change with each direction, and their Gaussian-fit estimate.
        """
        if not self.projections or self.final is None or self.initial is None:
            raise ConfigError("rounds", "no round aggregated an update: nothing to score; run more rounds")
        y = np.stack(self.projections, axis=1)
        z = self.claimed_noise_multiplier or 1.0
        scores = subsampled_gaussian_scores(y, sample_rate=self.sample_rate, noise_multiplier=z,
                                            subtract_median=False)  # fmt: skip
        primary = canary_audit(scores, self.included, delta=delta, confidence=confidence)
        cosines = cosine_scores(self.final - self.initial, self.directions)
        secondary = canary_audit(cosines, self.included, delta=delta, confidence=confidence)
        rounds = y.shape[1]
        fields = {
            "score": "per-round residual projection, subsampled-Gaussian likelihood ratio at the claimed z",
            "score_noise_multiplier": z, "rounds_scored": rounds, "participations": self.participations.tolist(),
            "fit": {k: v for k, v in primary.to_dict().items() if k != "bound"},
            "secondary": {"score": "final-model cosine (Andrew et al.)", **secondary.to_dict()},
            "estimate": {"epsilon": secondary.estimate,
                         "method": "Gaussian fit to final-model cosines, Andrew et al."},
            "extra": f"{len(self.included)} canary clients ({int(self.included.sum())} inserted): "
                     f"{self.participations.sum() / rounds:.1f} canary updates aggregated per round beside "
                     f"{np.mean(self.real_replies):.1f} real ones",
        }  # fmt: skip
        return scores, primary, fields


def _directions(count: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """Canary directions: orthogonal for small models (they would interfere), independent above."""
    if count <= dim and dim <= _ORTHOGONAL_MAX_DIM:
        return isotropic_directions(count, dim, rng=rng, orthogonal=True)
    dtype = np.float32 if count * dim > _FLOAT32_ABOVE else np.float64
    chunks = [isotropic_directions(min(100, count - i), dim, rng=rng).astype(dtype) for i in range(0, count, 100)]
    return np.concatenate(chunks)


# --------------------------------------------------------------------------------------------
# Sample level: gradient canaries in clients' DP-SGD steps
# --------------------------------------------------------------------------------------------


def _flat(tensors: list[Any]) -> np.ndarray:
    import torch

    return torch.cat([t.detach().reshape(-1) for t in tensors]).double().numpy()


class GradientCanaries:
    """The ``optimizer_hooks`` of a sample-level audit: gradient canaries inside simulated clients' training.

    A plain class (not a closure) so Ray ships it to the simulated clients' processes by value. It
    holds each canary's owner, its inclusion bit and a seed for each client's canary directions
    (directions need not be secret; the per-step sampling is drawn in the client's process from OS
    entropy). Each round's projections go to ``folder/client-<id>-round-<r>.npz``.
    """

    def __init__(self, folder: Path, *, owners: np.ndarray, included: np.ndarray, seeds: dict[int, int]) -> None:
        self.folder = str(folder)
        self.clients = {pid: (np.flatnonzero(owners == pid), included[owners == pid], seed)
                        for pid, seed in seeds.items()}  # fmt: skip
        self._cache: dict[tuple[int, int], np.ndarray] = {}

    def canaries_of(self, partition_id: int) -> np.ndarray:
        """Indices (into the audit's canaries) of the canaries ``partition_id`` owns."""
        return self.clients[partition_id][0] if partition_id in self.clients else np.zeros(0, dtype=np.int64)

    def directions(self, partition_id: int, dim: int) -> np.ndarray:
        """The client's canary directions (orthogonal among themselves when the model allows)."""
        key = (partition_id, dim)
        if key in self._cache:
            return self._cache[key]
        idx, _, seed = self.clients[partition_id]
        dirs = _directions(len(idx), dim, np.random.default_rng(seed))
        if dirs.size <= 5_000_000:  # small models: keep them for the next rounds
            self._cache[key] = dirs
        return dirs

    def __call__(self, partition_id: int, server_round: int) -> _CanaryRound | None:
        if partition_id not in self.clients or len(self.clients[partition_id][0]) == 0:
            return None
        return _CanaryRound(self, int(partition_id), int(server_round))

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_cache": {}}


class _CanaryRound:
    """One client's round: add its sampled inserted canaries to each step, record every projection."""

    def __init__(self, canaries: GradientCanaries, partition_id: int, server_round: int) -> None:
        self.canaries, self.pid, self.round = canaries, partition_id, server_round
        self.rows: list[np.ndarray] = []
        self.rate, self.noise_multiplier = 1.0, 0.0

    def attach(self, optimizer: Any, *, sample_rate: float, noise_multiplier: float | None, max_grad_norm: float,
               batch_size: int) -> None:  # fmt: skip
        import torch

        params = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]
        dim = sum(p.numel() for p in params)
        dirs = self.canaries.directions(self.pid, dim)
        included = self.canaries.clients[self.pid][1]
        rng = secret_numpy_rng()  # which canaries a step samples: secret, like the rows' Poisson sampling
        self.rate, self.noise_multiplier = float(sample_rate), float(noise_multiplier or 0.0)
        sizes = [p.numel() for p in params]
        dp = noise_multiplier is not None
        unit = max_grad_norm if dp else max_grad_norm / batch_size  # one canary's share of what is released

        def add(target: list[Any]) -> None:
            sampled = included & (rng.random(len(included)) < self.rate)
            if sampled.any():
                chunks = np.split(unit * (sampled.astype(np.float64) @ dirs), np.cumsum(sizes)[:-1])
                for t, c in zip(target, chunks, strict=True):
                    t.add_(torch.from_numpy(c).to(t.dtype).view_as(t))

        if dp:  # Opacus: p.summed_grad is the clipped sum; add_noise makes p.grad = summed + noise
            original = optimizer.add_noise

            def add_noise() -> None:
                real = _flat([p.summed_grad for p in params])
                add([p.summed_grad for p in params])
                original()
                self.rows.append(dirs @ (_flat([p.grad for p in params]) - real) / unit)

            optimizer.add_noise = add_noise
        else:  # plain SGD: p.grad is the batch's mean gradient, a canary adds its share of it
            step = optimizer.step

            def step_with_canaries(*args: Any, **kwargs: Any) -> Any:
                real = _flat([p.grad for p in params])
                add([p.grad for p in params])
                self.rows.append(dirs @ (_flat([p.grad for p in params]) - real) / unit)
                return step(*args, **kwargs)

            optimizer.step = step_with_canaries

    def close(self) -> None:
        import io

        buf = io.BytesIO()
        y = np.stack(self.rows) if self.rows else np.zeros((0, len(self.canaries.canaries_of(self.pid))))
        np.savez(buf, projections=y, sample_rate=self.rate, noise_multiplier=self.noise_multiplier)
        atomic_write_bytes(Path(self.canaries.folder) / f"client-{self.pid:05d}-round-{self.round:05d}.npz",
                           buf.getvalue())  # fmt: skip


def _gradient_scores(canaries: GradientCanaries, count: int) -> tuple[np.ndarray, int]:
    """Each canary's score summed over its client's steps, and the number of steps scored."""
    scores, steps = np.zeros(count), 0
    for f in sorted(Path(canaries.folder).glob("client-*-round-*.npz")):
        pid = int(f.name.split("-")[1])
        with np.load(f) as d:
            y, q, z = d["projections"], float(d["sample_rate"]), float(d["noise_multiplier"])
        if y.size == 0:
            continue
        # no DP-SGD noise claimed: a nominal multiplier 1 (any score keeps the bound valid)
        scores[canaries.canaries_of(pid)] += subsampled_gaussian_scores(
            y.T, sample_rate=q, noise_multiplier=z if z > 0 else 1.0, subtract_median=False
        )
        steps += y.shape[0]
    return scores, steps


# --------------------------------------------------------------------------------------------
# Scale: membership guessed from the norm of the released updates
# --------------------------------------------------------------------------------------------


def local_client_updates(cfg: SimulationConfig, rows: tuple[np.ndarray, np.ndarray], *, rounds: int, node: int,
                         global_arrays: dict[str, np.ndarray]) -> tuple[list[dict[str, Any]], Any]:  # fmt: skip
    """Run the real client code for ``rounds`` rounds on ``rows``; return each round's metrics (with its norm).

    Each round is :func:`fedready.client.app.local_update` (noisy count, calibration, budget check,
    DP-SGD, charging) from ``global_arrays`` (the coordinator may send any model; the same one each
    round isolates the noise), in a client state of its own. ``norm`` is the L2 norm of the released
    update minus ``global_arrays``. Returns the metrics and the client's privacy state.
    """
    from flwr.app import Context

    from fedready.client.app import Decline, local_update
    from fedready.client.state import Store
    from fedready.server.validation import update_norm

    ctx = Context(run_id=0, node_id=node, node_config={K.PARTITION_ID: node}, state=RecordDict(), run_config={})
    out = []
    for r in range(1, rounds + 1):
        reply = local_update(cfg, ctx, None, r, global_arrays, train_rows=rows)
        if isinstance(reply, Decline):
            raise ConfigError("rounds", f"an audited client declined round {r} ({reply.reason}: {reply.detail})")
        arrays, metrics = reply
        out.append({**metrics, "norm": update_norm(arrays, global_arrays), "lr": cfg.lr_at(r)})
    return out, Store(ctx, None).load()


def scale_scores(rounds: list[list[dict[str, Any]]]) -> np.ndarray:
    """Each audited client's score: minus the mean log of its update norms per unit of learning rate.

    A client trained on one more row whose update is divided by its exact row count has a smaller
    noise norm (``z C sqrt(d) / n`` per step), so the score is higher when the canary row is in:
    the attack of issue 21's finding 2, which the record-level guarantee must make useless.
    """
    return np.array([-np.mean([np.log(m["norm"] / m["lr"]) for m in client]) for client in rounds])


def run_scale_audit(cfg: SimulationConfig, run_dir: Path, *, canaries: int, confidence: float,
                    rows: int = SCALE_ROWS, rounds: int = SCALE_ROUNDS) -> dict[str, Any]:  # fmt: skip
    """Audit the scale of the released updates: ``canaries`` simulated clients, each with or without one row.

    Every client holds the same ``rows`` rows of the task's data plus, with probability 1/2 (OS
    entropy), one more row (the canary); each releases ``min(rounds, cfg.rounds)`` updates through the
    real client code at the configuration's noise, from the initial model. The score
    (:func:`scale_scores`) guesses membership from the update norms alone; the one-run bound of
    Steinke et al. (each canary's bit changes one independent client's data, so the bound holds) is
    compared with the largest epsilon the clients' own ledgers charge for what they released.

    Notes
    -----
    This is the auditor that catches a normaliser or a sample rate derived from the exact row
    count: with it, one row moves every update's scale by ``1/n`` and the bound exceeds the
    accounted epsilon (tests/simulations/test_audit_privacy.py re-introduces that bug on purpose).
    """
    t0 = time.perf_counter()
    task = task_of(cfg)
    rng = secret_numpy_rng()  # which rows, which bits: never --seed
    x_all, y_all = task.x_train, task.y_train
    if len(y_all) < rows + 1:
        raise ConfigError("data", f"the scale audit needs at least {rows + 1} rows, the data has {len(y_all)}")
    pick = rng.choice(len(y_all), size=rows + 1, replace=False)
    base, canary = pick[:rows], pick[rows:]
    bits = inclusion_bits(canaries, rng=rng)
    released = min(rounds, cfg.rounds)
    global_arrays = {k: v.detach().numpy().copy() for k, v in task.model(seed=cfg.seed).state_dict().items()}
    per_client, states = [], []
    for j, inside in enumerate(bits):
        idx = np.concatenate([base, canary]) if inside else base
        metrics, state = local_client_updates(cfg, (x_all[idx], y_all[idx]), rounds=released, node=j,
                                              global_arrays=global_arrays)  # fmt: skip
        per_client.append(metrics)
        states.append(state)
    scores = scale_scores(per_client)
    eps = max(st.epsilon(delta=cfg.delta, accountant=cfg.accountant) for st in states)
    primary = canary_audit(scores, bits, delta=cfg.delta, confidence=confidence)
    bound = primary.bound
    seconds = round(time.perf_counter() - t0, 2)
    run_dir.mkdir(parents=True, exist_ok=True)
    return {
        "level": SCALE, "canaries": canaries, "seed_source": "os-entropy", "inserted": int(bits.sum()),
        "canary": f"one row of the data, in one of {canaries} simulated clients of {rows} rows each (with prob. 1/2)",
        "score": "minus the mean log update norm per unit of learning rate (membership from the update's scale)",
        "rounds_scored": released, "rows": rows, "confidence": confidence, "delta": cfg.delta,
        "epsilon_lower_bound": bound.epsilon, "bound": bound.to_dict(),
        "accounted": {"epsilon": eps, "delta": cfg.delta, "claimed": eps,
                      "what": f"record level: each audited client's noisy count and {released} DP-SGD rounds, "
                              "composed by its own ledger, largest client"},
        "exceeds_accounted": bool(bound.epsilon > eps),
        "fit": {k: v for k, v in primary.to_dict().items() if k != "bound"},
        "estimate": {"epsilon": primary.estimate,
                     "method": "Gaussian fit to the same scores, Andrew et al. (information only: the scores' spread "
                               "is mostly the noisy counts', which two fitted Gaussians turn into a large number)"},
        "bits": [int(b) for b in bits], "scores": [float(v) for v in scores],
        "private": not cfg.insecure_seeded_noise, "caveats": [], "notes": [],
        "parameters": int(sum(v.size for v in global_arrays.values())),
        "cost": {"extra": f"{canaries} simulated clients x {released} rounds of the real client code",
                 "audit_run_seconds": seconds, "audit_seconds": seconds, "levels_in_the_run": [SCALE]},
        "audit_run": str(run_dir), "config": cfg.model_dump(), "references": list(REFERENCES),
    }  # fmt: skip


# --------------------------------------------------------------------------------------------
# The audit
# --------------------------------------------------------------------------------------------


def _digest(a: np.ndarray) -> str:
    return "sha256:" + hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def run_audit(
    cfg: SimulationConfig,
    run_dir: Path,
    *,
    level: str,
    canaries: int = DEFAULT_CANARIES,
    confidence: float = 0.95,
    ray_address: str | None = None,
    on_round: Callable[[Any], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Simulate ``cfg`` in ``run_dir`` with ``canaries`` canaries per level audited; return the reports by level.

    Parameters
    ----------
    cfg : SimulationConfig
        The configuration to audit (as recorded in a run's ``config.json``, or new options).
    run_dir : Path
        A new folder for the audit's own run (its ledger is the one compared with).
    level : {"client", "sample", "both"}
        Canary clients in the aggregation, gradient canaries in clients' DP-SGD steps, or both in
        the same run (each level's score removes everything but its own canaries and the noise,
        so neither disturbs the other's bound: one run for the price of two).
    canaries : int
        Canaries per level, each included with probability 1/2.
    confidence : float
        Confidence of the lower bound.

    Returns
    -------
    dict
        Level -> the audit (bound, its confidence, the accounted and claimed epsilon, the
        Gaussian-fit estimate, canaries, scores, inclusion bits, cost); not yet written anywhere.
    """
    from fedready.simulations.engine import simulate

    check_auditable(cfg, level)
    if isinstance(canaries, bool) or not isinstance(canaries, int) or canaries < 8:
        raise ConfigError("canaries", f"must be an integer >= 8 (the bound needs both sides), got {canaries!r}")
    if not 0.5 <= confidence < 1:
        raise ConfigError("confidence", f"must be in [0.5, 1), e.g. 0.95; got {confidence}")
    if (run_dir / "config.json").exists():
        raise ConfigError("name", f"{run_dir} already holds a run; an audit always starts a new one")
    if level == SCALE:  # no federation needed: simulated clients released updates through the real client code
        return {SCALE: run_scale_audit(cfg, run_dir, canaries=canaries, confidence=confidence)}
    levels = LEVELS if level == BOTH else (level,)
    t0 = time.perf_counter()
    task = task_of(cfg)
    rng = secret_numpy_rng()  # directions, bits, owners, per-round sampling: never --seed
    holder: dict[str, CanaryClients] = {}
    reports: dict[str, dict[str, Any]] = {
        lv: {"level": lv, "canaries": canaries, "seed_source": "os-entropy"} for lv in levels
    }
    q = client_sample_rate(cfg)
    dim = sum(v.numel() for v in task.model(seed=cfg.seed).state_dict().values())
    hook, gradient = None, None
    bits: dict[str, np.ndarray] = {}
    crowded: dict[str, int] = {}
    if "client" in levels:
        directions = _directions(canaries, dim, rng)
        bits["client"] = inclusion_bits(canaries, rng=rng)

        def hook(strategy: Strategy) -> Strategy:
            holder["canaries"] = CanaryClients(strategy, directions=directions, included=bits["client"],
                                               sample_rate=q, norm=cfg.client_clip, rng=rng)  # fmt: skip
            return holder["canaries"]

        reports["client"].update(canary="an isotropic update of the clipping norm (a canary client, Andrew et al.)",
                                 directions_sha256=_digest(directions), sample_rate=q)  # fmt: skip
        crowded["client"] = canaries
    if "sample" in levels:
        bits["sample"] = inclusion_bits(canaries, rng=rng)
        owners = rng.integers(0, cfg.num_clients, size=canaries)
        seeds = {int(pid): int(rng.integers(2**63)) for pid in np.unique(owners)}
        gradient = GradientCanaries(run_dir / "canaries", owners=owners, included=bits["sample"], seeds=seeds)
        reports["sample"].update(canary="a gradient canary: a row whose clipped gradient is a fixed isotropic vector "
                                        "of norm max-grad-norm, in one random client's DP-SGD steps (white box)",
                                 owners=owners.tolist(), clients_with_canaries=len(seeds))  # fmt: skip
        crowded["sample"] = int(np.bincount(owners).max())
    summary = simulate(cfg, run_dir, on_round=on_round, ray_address=ray_address, strategy_hook=hook,
                       optimizer_hooks=gradient)  # fmt: skip
    simulated = time.perf_counter() - t0
    if summary.get("status") == "failed":
        raise ConfigError("run", f"the audit's simulation failed ({summary.get('reason')}); nothing to score")
    ledger = Ledger.load(run_dir / LEDGER_FILE)
    for lv, report in reports.items():
        notes: list[str] = []
        if crowded[lv] > dim:
            notes.append(f"{crowded[lv]} canaries share a model of {dim} parameters: their directions cannot be "
                         f"orthogonal and interfere, which weakens the bound (it stays valid); use --canaries so "
                         f"that at most {dim} share one model, or a larger model")  # fmt: skip
        accounted = accounted_epsilon(ledger, cfg, lv)
        delta = float(accounted["delta"])
        if lv == "client":
            scores, primary, fields = holder["canaries"].score(delta=delta, confidence=confidence)
            report.update(fields)
        else:
            assert gradient is not None
            scores, steps = _gradient_scores(gradient, canaries)
            if steps == 0:
                raise ConfigError("rounds", "no client trained a step: nothing to score; run more rounds")
            primary = canary_audit(scores, bits[lv], delta=delta, confidence=confidence)
            report.update(
                score="per-step residual projection (noisy sum minus the real rows' clipped sum), "
                      "subsampled-Gaussian likelihood ratio at the client's claimed noise multiplier",
                steps_scored=steps, fit={k: v for k, v in primary.to_dict().items() if k != "bound"},
                estimate={"epsilon": primary.estimate, "method": "Gaussian fit to the same scores, Andrew et al."},
                extra=f"{canaries} gradient canaries ({int(bits[lv].sum())} inserted, in "
                      f"{report['clients_with_canaries']} clients' DP-SGD steps; {steps} client steps scored)",
            )  # fmt: skip
        bound = primary.bound
        exceeded = accounted["epsilon"] is not None and bound.epsilon > accounted["epsilon"]
        report.update(
            parameters=dim, notes=notes, inserted=int(bits[lv].sum()), confidence=confidence, delta=delta,
            epsilon_lower_bound=bound.epsilon,
            bound=bound.to_dict(), accounted=accounted, exceeds_accounted=bool(exceeded),
            bits=[int(b) for b in bits[lv]], scores=[float(s) for s in scores],
            private=bool(ledger.private), caveats=ledger.caveats(),
            cost={"extra": report.pop("extra"),
                  "audit_run_seconds": round(float(summary.get("seconds", simulated)), 2),
                  "audit_seconds": round(time.perf_counter() - t0, 2),
                  "levels_in_the_run": list(levels)},
            audit_run=str(run_dir), config=cfg.model_dump(), references=list(REFERENCES),
        )  # fmt: skip
    return reports
