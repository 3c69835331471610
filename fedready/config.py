"""Algorithm configuration for a simulated federated run (units in comments).

One pydantic model validated on construction: a bad value raises
:class:`~fedready.errors.ConfigError` naming the field and the fix. The same
values travel to Flower as a flat run config (``to_run_config``), so a run
started with ``fedready simulate`` and one started with ``flwr run .`` read the
same keys.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedready._validation import first_error, unknown_key_error
from fedready.errors import ConfigError

__all__ = ["RUN_CONFIG_KEYS", "KeyRule", "SimulationConfig", "loosened_keys", "make_config"]


# The field `schema` (the data's schema file) shadows pydantic's deprecated BaseModel.schema() classmethod,
# which nothing here calls; pydantic warns about exactly that when the class is built.
warnings.filterwarnings("ignore", message='Field name "schema" in "SimulationConfig"', category=UserWarning)


QUERY_MODULUS = 2**40  # the query round's SecAgg+ ring (2^40: up to 2^23 clients' int64 sum before the modulus)
QUERY_SECAGG_CLIP = 2**20  # the default of query_secagg_clip
MIN_SHARE_VARIANCE = 0.25  # KLS 2021 Proposition 14 needs each discrete Gaussian share's sigma >= 1/2


class SimulationConfig(BaseModel):
    """Everything that determines a simulated run's result."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # federation
    num_clients: int = Field(10, ge=1)  # virtual SuperNodes, one data shard each
    rounds: int = Field(50, ge=1)  # server rounds to run
    budget_rounds: int | None = Field(None, ge=1)  # rounds the DP budget is planned over (default: rounds)
    fraction_train: float = Field(1.0, gt=0, le=1)  # share of clients sampled per round
    fraction_evaluate: float = Field(1.0, gt=0, le=1)  # share asked for group counts + profile after training (seeded)
    # data: the task (fedready.task); all empty = the embedded data set
    data: str = ""  # training CSV the clients split (absolute path)
    schema: str = ""  # its schema TOML (required with data)
    test: str = ""  # benchmark CSV: the server's public holdout (default: a seeded test_fraction of data)
    test_fraction: float = Field(0.0, ge=0, lt=1)  # share of data held out when there is no test (0: 0.2)
    partitioner: str = "dirichlet"  # iid | dirichlet | sensitive | quantity
    alpha: float = Field(0.5, gt=0)  # Dirichlet concentration (smaller = more skew)
    skew_attribute: str | None = None  # for partitioner=sensitive (default: the schema's first sensitive attribute)
    val_fraction: float = Field(0.2, ge=0, lt=1)  # each client's local validation share (its own evaluation)
    min_client_rows: int = Field(20, ge=1)  # fewest rows a partitioner may give a client (lower it for 10,000s)
    seed: int = 0  # partitioning, initialisation, scenario choices; never DP noise or sampling (see privacy)
    # model and local training
    model: str = "mlp"
    local_epochs: int = Field(1, ge=1)  # epochs per round (when local_steps is 0)
    local_steps: int = Field(3, ge=0)  # fixed SGD steps per round (0: local_epochs); less drift under skew
    batch_size: int = Field(1024, ge=1)  # expected Poisson batch (rows)
    lr: float = Field(None, gt=0)  # local SGD rate at round 1 (default: 6.0 DP, 1.0 non-DP or mlp-large)
    lr_schedule: Literal["constant", "cosine"] = "cosine"  # decay of the local rate over the planned rounds
    momentum: float = Field(0.0, ge=0, lt=1)
    # sample-level differential privacy (per client, for the whole training)
    dp: bool = True
    epsilon: float = 1.0  # target epsilon after all planned rounds
    delta: float = 1e-5  # must be < 1/n for every client's n training rows
    max_grad_norm: float = Field(1.0, gt=0)  # per-sample clipping bound C
    accountant: str = "rdp"  # rdp | prv
    # Other releases about a client's rows, charged to the same budget (the training noise is
    # calibrated for what they leave): its noisy row count, sent once per run (Gaussian, std in rows),
    # and the counts it answers after training (group counts on its validation rows, reference-profile
    # histograms of its training rows), noised on the client with this multiplier x their L2 sensitivity.
    count_noise: float = Field(20.0, gt=0)  # std of the noise on a client's row count (sensitivity 1 row)
    query_noise: float = Field(12.0, gt=0)  # noise multiplier of the post-training counts (the whole answer)
    query_accuracy_share: float = Field(0.8, gt=0, lt=1)  # its share for each client's own accuracy counts
    # Research and diagnosis options that void or weaken the guarantee; stamped wherever epsilon is shown.
    insecure_seeded_noise: bool = False  # derive DP noise and sampling from --seed: bit-exact reruns, NOT private
    exact_evaluation: bool = False  # clients answer exact group counts (outside the guarantee)
    release_train_loss: bool = False  # clients send their training loss (outside the guarantee; q-FFL needs it)
    # client-level differential privacy (DP-FedAvg), on top of or instead of sample-level DP
    client_dp: Literal["off", "server-fixed", "server-adaptive", "client-fixed", "client-adaptive"] = "off"
    client_noise_multiplier: float | None = Field(None, gt=0)  # z: noise std = z * clip / sampled clients
    client_epsilon: float | None = Field(None, gt=0)  # target client-level epsilon (calibrates z; run budget)
    client_delta: float = Field(1e-5, gt=0, lt=1)  # client-level delta, below 1/num_clients
    client_clip: float = Field(1.0, gt=0)  # L2 bound on each client's update (initial bound if adaptive)
    clip_quantile: float = Field(0.5, ge=0, le=1)  # adaptive clipping: target share of unclipped updates
    clip_count_stddev: float | None = Field(None, gt=0)  # adaptive: noise std of the unclipped count (default m/20)
    clip_learning_rate: float = Field(0.2, gt=0)  # adaptive: geometric step of the clip norm per round
    # secure aggregation (SecAgg+, Bell et al. 2020); combines with client-side clipping DP only
    secagg: bool = False
    secagg_shares: int = Field(3, ge=2)  # shares of each client's secret, among its neighbours
    secagg_threshold: int = Field(2, ge=2)  # shares needed to reconstruct; tolerates shares - threshold dropouts
    secagg_clip_range: float = Field(8.0, gt=0)  # every model value is clipped to +-this before quantisation
    secagg_quantization: int = Field(4194304, ge=2)  # quantisation levels over [-clip_range, clip_range]
    # the post-training counts under SecAgg+: the query round's own protocol parameters (privacy/distributed.py)
    query_distributed_noise: bool = True  # under --secagg each client adds only a share of the summed counts' noise
    query_secagg_threshold: int | None = Field(None, ge=2)  # t: least clients in the query's sum (default: 90% of
    #                                                         those asked, at most all but one); the share is 1/t
    # exact summed counts are clamped 10 noise stds inside +-this; a noised one beyond it is an error, never clipped;
    # below 2^30: Flower's quantiser is int32
    query_secagg_clip: int = Field(QUERY_SECAGG_CLIP, ge=1, lt=2**30)
    # robustness: validation, aggregation, hostile and failing clients
    aggregator: Literal["fedavg", "median", "trimmed-mean", "krum", "multikrum", "bulyan", "qfedavg"] = "fedavg"
    qffl_q: float = Field(0.1, ge=0)  # q-FFL fairness exponent for aggregator=qfedavg (0 = FedAvg)
    trim_beta: float = Field(0.2, gt=0, lt=0.5)  # trimmed-mean: share cut from each end
    num_malicious: int = Field(0, ge=0)  # krum / multikrum / bulyan: assumed attackers per round
    validate_updates: bool = True  # reject malformed or outsized updates before aggregation
    median_factor: float = Field(10.0, gt=1)  # reject norms above this multiple of the round median
    min_clients: int = Field(1, ge=1)  # a round with fewer accepted updates is skipped
    round_timeout: float = Field(600.0, gt=0)  # seconds the server waits for replies
    attack: Literal["none", "sign-flip", "scale", "nan", "zero", "label-flip"] = "none"
    attack_fraction: float = Field(0.0, ge=0, le=1)  # share of clients that attack (seeded choice)
    attack_scale: float = Field(100.0, gt=0)  # factor for attack=scale
    dropout: float = Field(0.0, ge=0, lt=1)  # per-round probability a client drops out mid-round
    slow_fraction: float = Field(0.0, ge=0, le=1)  # share of clients that answer after the round timeout

    @model_validator(mode="before")
    @classmethod
    def _default_lr(cls, data: Any) -> Any:
        # Clipped DP-SGD steps have norm <= max_grad_norm, so DP takes a larger rate than
        # plain SGD, whose unclipped gradients diverge at that rate.
        if isinstance(data, dict) and data.get("lr") is None:
            # 3x256 ReLU layers diverge at the small models' DP rate; 1.0 suits both regimes there
            deep = data.get("model") == "mlp-large"
            data = {**data, "lr": 1.0 if deep or not data.get("dp", True) else 6.0}
        return data

    @field_validator("data", "schema", "test")
    @classmethod
    def _absolute(cls, v: str) -> str:
        # Ray workers and resumed runs may start in another folder: keep paths absolute.
        return str(Path(v).expanduser().resolve()) if v else v

    @field_validator("epsilon")
    @classmethod
    def _eps(cls, v: float) -> float:
        if not v > 0:
            raise ValueError("must be > 0 (a privacy budget); pass e.g. --epsilon 1.0, or --no-dp")
        return v

    @field_validator("delta")
    @classmethod
    def _delta(cls, v: float) -> float:
        if not 0 < v < 1:
            raise ValueError("must be in (0, 1) and below 1/n; pass e.g. --delta 1e-5")
        return v

    @field_validator("accountant")
    @classmethod
    def _acct(cls, v: str) -> str:
        if v not in ("rdp", "prv"):
            raise ValueError(f"unknown accountant '{v}'; expected one of: rdp, prv")
        return v

    @property
    def planned_rounds(self) -> int:
        """Rounds over which each client spreads its privacy budget."""
        return self.budget_rounds or self.rounds

    def lr_at(self, server_round: int) -> float:
        """Local learning rate for ``server_round`` (1-based): cosine decay over the planned rounds."""
        if self.lr_schedule == "constant":
            return self.lr
        progress = min(server_round - 1, self.planned_rounds) / self.planned_rounds
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * progress))

    def to_run_config(self) -> dict[str, Any]:
        """Return the flat Flower run config (hyphenated keys; unset values left out)."""
        return {k.replace("_", "-"): v for k, v in self.model_dump().items() if v is not None}

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> SimulationConfig:
        """Build from a Flower run config, ignoring keys that are not ours.

        Flower needs every key declared with a value, so an option whose default is "unset"
        (``lr``, ``budget_rounds``, ...) is declared as 0 or "" in pyproject.toml: read as unset.
        """
        known = set(cls.model_fields)
        unset = {k for k, f in cls.model_fields.items() if f.default is None}
        kw = {k.replace("-", "_"): v for k, v in run_config.items()}
        kw = {k: v for k, v in kw.items() if k in known and not (k in unset and v in (0, 0.0, ""))}
        return make_config(**kw)


# --------------------------------------------------------------------------------------------
# Who may decide each run-config key: the one place where every key a client reads is classified
# --------------------------------------------------------------------------------------------

NEUTRAL, TIGHTENING, LOOSENING = "neutral", "tightening", "loosening"


@dataclass(frozen=True)
class KeyRule:
    """How a run-config key bears on an organisation's record-level guarantee, and who decides it.

    ``neutral`` and ``tightening`` keys are taken from the coordinator's run config. A ``loosening``
    key is the organisation's choice: a deployed client refuses a run whose value loosens it
    (``loosens(value)``) unless its own ``limits.toml`` allows it (``limit``, a boolean
    ``allow_...`` key), or caps it with a local limit (``limit`` names the cap: ``max_epsilon``,
    ``max_delta``), or never accepts it (``limit`` None).
    """

    kind: str  # neutral | tightening | loosening
    why: str  # one line for the runbook
    limit: str | None = None  # the limits.toml key that allows or caps a loosening key
    loosens: Callable[[Any], bool] | None = None  # for a flag: is this value the loosening one?

    def __post_init__(self) -> None:
        if self.kind not in (NEUTRAL, TIGHTENING, LOOSENING):
            raise ValueError(f"unknown kind '{self.kind}'; expected one of: neutral, tightening, loosening")
        if self.kind == LOOSENING and self.loosens is None and self.limit not in ("max_epsilon", "max_delta"):
            raise ValueError("a loosening key needs loosens() unless a local cap (max_epsilon, max_delta) bounds it")


def _on(v: Any) -> bool:
    return bool(v) and str(v).lower() not in ("false", "0", "")


def _off(v: Any) -> bool:
    return not _on(v)


_POST = "post-processing of the DP release, or server side: no effect on what a row can reveal"
_SIM = "simulation scenario: a deployed client never applies it"
_CHARGED = "its release is charged to the same budget (the training noise is calibrated for what it leaves)"

# Every SimulationConfig field, plus the other run-config keys a client reads (RUN_CONFIG_EXTRA).
# tests/fedready/test_config.py checks this table against SimulationConfig's fields and the docs'
# runbook table against this one.
RUN_CONFIG_KEYS: dict[str, KeyRule] = {
    "num_clients": KeyRule(NEUTRAL, "server side: how many clients the server waits for"),
    "rounds": KeyRule(NEUTRAL, "the per-run budget is split over the rounds; every round is charged"),
    "budget_rounds": KeyRule(NEUTRAL, "the per-run budget is split over the rounds; every round is charged"),
    "fraction_train": KeyRule(NEUTRAL, "server side: which clients are asked"),
    "fraction_evaluate": KeyRule(NEUTRAL, "server side: which clients are asked"),
    "data": KeyRule(NEUTRAL, "simulation only: a deployed client reads its own CSV (node config)"),
    "schema": KeyRule(NEUTRAL, "the server's schema; a deployed client uses its own and reports the digest"),
    "test": KeyRule(NEUTRAL, "the server's holdout"),
    "test_fraction": KeyRule(NEUTRAL, "the server's holdout"),
    "partitioner": KeyRule(NEUTRAL, "simulation only: how the embedded data is split"),
    "alpha": KeyRule(NEUTRAL, "simulation only: how the embedded data is split"),
    "skew_attribute": KeyRule(NEUTRAL, "simulation only: how the embedded data is split"),
    "val_fraction": KeyRule(NEUTRAL, "which local rows are held out for the (charged) post-training query"),
    "min_client_rows": KeyRule(NEUTRAL, "simulation only: how the embedded data is split"),
    "seed": KeyRule(NEUTRAL, "initial model, splits, scenario choices; never DP noise or sampling"),
    "model": KeyRule(NEUTRAL, "DP-SGD's guarantee holds for any model"),
    "local_epochs": KeyRule(NEUTRAL, "the noise is calibrated for every step the budget pays for"),
    "local_steps": KeyRule(NEUTRAL, "the noise is calibrated for every step the budget pays for"),
    "batch_size": KeyRule(NEUTRAL, "the sample rate follows from it and is charged"),
    "lr": KeyRule(NEUTRAL, _POST),
    "lr_schedule": KeyRule(NEUTRAL, _POST),
    "momentum": KeyRule(NEUTRAL, _POST),
    "dp": KeyRule(LOOSENING, "false turns record-level DP off: a deployed client never trains without it",
                  loosens=_off),
    "epsilon": KeyRule(LOOSENING, "the per-run budget; capped by the organisation's lifetime max_epsilon",
                       limit="max_epsilon"),
    "delta": KeyRule(LOOSENING, "refused above the organisation's max_delta", limit="max_delta"),
    "max_grad_norm": KeyRule(NEUTRAL, "the noise scales with the clip: the guarantee does not depend on it"),
    "accountant": KeyRule(NEUTRAL, "both are upper bounds; the lifetime ledger uses the limits' own accountant"),
    "count_noise": KeyRule(NEUTRAL, _CHARGED),
    "query_noise": KeyRule(NEUTRAL, _CHARGED),
    "query_accuracy_share": KeyRule(NEUTRAL, "how the charged post-training release's noise is split between its "
                                             "parts: the release as a whole costs the same"),
    "insecure_seeded_noise": KeyRule(LOOSENING, "noise and sampling derived from --seed: no guarantee at all",
                                     limit="allow_insecure_seeded_noise", loosens=_on),
    "exact_evaluation": KeyRule(LOOSENING, "exact group counts on validation rows leave the client",
                                limit="allow_exact_evaluation", loosens=_on),
    "release_train_loss": KeyRule(LOOSENING, "the exact mean training loss leaves the client each round",
                                  limit="allow_release_train_loss", loosens=_on),
    "client_dp": KeyRule(NEUTRAL, "client-level DP is added on top (client-side clipping is post-processing)"),
    "client_noise_multiplier": KeyRule(NEUTRAL, "server side: client-level noise"),
    "client_epsilon": KeyRule(NEUTRAL, "server side: client-level budget"),
    "client_delta": KeyRule(NEUTRAL, "server side: client-level budget"),
    "client_clip": KeyRule(NEUTRAL, "clipping an update is post-processing"),
    "clip_quantile": KeyRule(NEUTRAL, "server side: adaptive clipping"),
    "clip_count_stddev": KeyRule(NEUTRAL, "server side: adaptive clipping"),
    "clip_learning_rate": KeyRule(NEUTRAL, "server side: adaptive clipping"),
    "secagg": KeyRule(TIGHTENING, "the server sees only the sum of the masked updates"),
    "secagg_shares": KeyRule(NEUTRAL, "SecAgg+ parameters; the record-level guarantee does not rely on SecAgg+"),
    "secagg_threshold": KeyRule(NEUTRAL, "SecAgg+ parameters; the record-level guarantee does not rely on SecAgg+"),
    "secagg_clip_range": KeyRule(NEUTRAL, "SecAgg+ parameters; the record-level guarantee does not rely on SecAgg+"),
    "secagg_quantization": KeyRule(NEUTRAL, "SecAgg+ parameters; the record-level guarantee does not rely on "
                                            "SecAgg+"),
    # neutral for the run (never refused): the organisation's own flag decides what its client adds
    "query_distributed_noise": KeyRule(NEUTRAL, "a deployed client adds only a 1/t share of the summed counts' noise "
                                                "if its own limits opt in; otherwise its whole noise (the run goes on)",
                                       limit="allow_distributed_noise"),
    "query_secagg_threshold": KeyRule(NEUTRAL, "a client divides its share by it only after checking that the query "
                                               "round's SecAgg+ threshold is at least it"),
    "query_secagg_clip": KeyRule(NEUTRAL, "exact counts are clamped 10 noise stds inside it; a noised "
                                                       "count beyond it is an error, never clipped"),
    "aggregator": KeyRule(NEUTRAL, "server side"),
    "qffl_q": KeyRule(NEUTRAL, "server side (its loss weights need release_train_loss)"),
    "trim_beta": KeyRule(NEUTRAL, "server side"),
    "num_malicious": KeyRule(NEUTRAL, "server side"),
    "validate_updates": KeyRule(NEUTRAL, "server side"),
    "median_factor": KeyRule(NEUTRAL, "server side"),
    "min_clients": KeyRule(NEUTRAL, "server side"),
    "round_timeout": KeyRule(NEUTRAL, "server side"),
    "attack": KeyRule(NEUTRAL, _SIM),
    "attack_fraction": KeyRule(NEUTRAL, _SIM),
    "attack_scale": KeyRule(NEUTRAL, _SIM),
    "dropout": KeyRule(NEUTRAL, _SIM),
    "slow_fraction": KeyRule(NEUTRAL, _SIM),
    # run-config keys outside SimulationConfig that a client reads
    "run-dir": KeyRule(NEUTRAL, "names the per-run state; the lifetime ledger spans every run whatever its name"),
    "fedready.wire-log": KeyRule(NEUTRAL, "simulation only: a deployed client takes its wire log from its own "
                                          "node config, never a path the coordinator names"),
}
RUN_CONFIG_EXTRA = ("run-dir", "fedready.wire-log")


def loosened_keys(cfg: SimulationConfig) -> list[tuple[str, KeyRule]]:
    """The loosening keys whose value in ``cfg`` loosens the guarantee (capped keys are checked elsewhere)."""
    return [(k, rule) for k, rule in RUN_CONFIG_KEYS.items()
            if rule.kind == LOOSENING and rule.loosens is not None and rule.loosens(getattr(cfg, k))]  # fmt: skip


def _cross_checks(cfg: SimulationConfig) -> None:
    from fedready.task import TaskSpec

    TaskSpec.from_config(cfg)  # data, schema, test and test_fraction go together as documented
    m = max(1, int(cfg.fraction_train * cfg.num_clients))
    if cfg.client_dp != "off":
        if cfg.client_noise_multiplier is None and cfg.client_epsilon is None:
            raise ConfigError("client-epsilon", "client-level DP needs --client-epsilon or --client-noise-multiplier")
        if cfg.aggregator != "fedavg":
            raise ConfigError("aggregator", "client-level DP needs the (unweighted) mean: use --aggregator fedavg")
        if cfg.client_delta >= 1.0 / cfg.num_clients:
            raise ConfigError("client-delta", f"must be below 1/num_clients = {1.0 / cfg.num_clients:.3g}")
    if cfg.secagg:
        if cfg.client_dp not in ("off", "client-fixed"):
            raise ConfigError("secagg", "the server never sees an update under SecAgg+; use --client-dp client-fixed")
        if cfg.aggregator != "fedavg" or cfg.attack != "none" or cfg.slow_fraction > 0:
            raise ConfigError("secagg", "SecAgg+ reveals only the sum: use --aggregator fedavg, no attack scenarios")
        if cfg.secagg_threshold > cfg.secagg_shares:
            raise ConfigError("secagg-threshold", f"{cfg.secagg_threshold} exceeds --secagg-shares {cfg.secagg_shares}")
        if cfg.secagg_shares > m:
            raise ConfigError("secagg-shares", f"{cfg.secagg_shares} exceeds the {m} clients sampled per round")
        asked = query_clients(cfg)
        if cfg.query_secagg_threshold is not None and not 2 <= cfg.query_secagg_threshold < asked:
            raise ConfigError("query-secagg-threshold", f"{cfg.query_secagg_threshold} must be at least 2 and below "
                                                        f"the {asked} clients asked after training")  # fmt: skip
        if asked * 2 * cfg.query_secagg_clip >= QUERY_MODULUS:
            raise ConfigError("query-secagg-clip", f"{asked} clients x 2 x {cfg.query_secagg_clip} would wrap the "
                                                   f"query's ring of 2^{QUERY_MODULUS.bit_length() - 1}; lower it")
        if cfg.dp and cfg.query_distributed_noise:
            _check_distributed_noise(cfg)
    else:
        given = [name for name, on in (("query-secagg-threshold", cfg.query_secagg_threshold is not None),
                                       ("query-secagg-clip", cfg.query_secagg_clip != QUERY_SECAGG_CLIP)) if on]
        if given:
            raise ConfigError(given[0], "applies only to the query's SecAgg+ round: pass --secagg, or drop it")
    if cfg.aggregator == "qfedavg" and cfg.dp and not cfg.release_train_loss:
        raise ConfigError("aggregator", "q-FFL weighs clients by their training loss, which DP does not cover: "
                                        "pass --release-train-loss (outside the guarantee) or --no-dp")  # fmt: skip
    if cfg.attack != "none" and cfg.attack_fraction == 0:
        raise ConfigError("attack-fraction", f"attack '{cfg.attack}' needs --attack-fraction > 0")
    if cfg.aggregator in ("krum", "multikrum") and m <= 2 * cfg.num_malicious + 2:
        raise ConfigError("num-malicious", f"krum needs sampled clients > 2f + 2; got {m} for f={cfg.num_malicious}")
    if cfg.aggregator == "bulyan" and m < 4 * cfg.num_malicious + 3:
        raise ConfigError("num-malicious", f"bulyan needs sampled clients >= 4f + 3; got {m} for f={cfg.num_malicious}")
    if cfg.min_clients > m:
        raise ConfigError("min-clients", f"{cfg.min_clients} exceeds the {m} clients sampled per round")


def _check_distributed_noise(cfg: SimulationConfig) -> None:
    """Refuse a distributed-noise configuration outside what KLS 2021 proves (checked before anything runs).

    Notes
    -----
    The sum of discrete Gaussian shares is bounded in zCDP/RDP only (Kairouz, Liu, Steinke 2021,
    Proposition 14, which also needs each share's sigma >= 1/2); the PRV accountant would charge it
    as a continuous Gaussian, under that bound. The least per-count std a client can draw from the
    configuration is ``query_noise`` itself (one summed vector, ``client.state.query_noise_split``),
    over ``sqrt(1 - query_accuracy_share)`` when the accuracy counts are noised too.
    """
    if cfg.accountant == "prv":
        raise ConfigError("accountant", "distributed noise under SecAgg+ is proven in RDP/zCDP only; use "
                                        "--accountant rdp or --query-local-noise")  # fmt: skip
    t = query_threshold(cfg)
    least = cfg.query_noise**2 / (1.0 if cfg.exact_evaluation else 1.0 - cfg.query_accuracy_share)
    if least / t < MIN_SHARE_VARIANCE:
        raise ConfigError("query-secagg-threshold", f"t = {t} makes a share's variance {least / t:.3g} (query noise "
                                                    f"per count^2 / t), below KLS 2021's 1/4 (sigma >= 1/2): lower "
                                                    f"--query-secagg-threshold or raise --query-noise")  # fmt: skip


def query_clients(cfg: SimulationConfig) -> int:
    """How many clients the post-training query asks (``fraction_evaluate`` of them, at least one)."""
    return max(1, math.ceil(cfg.fraction_evaluate * cfg.num_clients))


def query_threshold(cfg: SimulationConfig) -> int:
    """The query round's ``t`` under SecAgg+: given, or 90% of the clients asked (at most all but one, at least 2)."""
    if cfg.query_secagg_threshold is not None:
        return cfg.query_secagg_threshold
    asked = query_clients(cfg)
    return max(2, min(asked - 1, math.ceil(0.9 * asked)))


def make_config(**values: Any) -> SimulationConfig:
    """Build a :class:`SimulationConfig`, turning validation errors into ``ConfigError``.

    Raises
    ------
    ConfigError
        Naming the first invalid field, what was wrong and how to fix it.
    """
    try:
        cfg = SimulationConfig(**values)
    except ValidationError as e:
        err = first_error(e)
        unknown = unknown_key_error(SimulationConfig, err, noun="keyword")
        if unknown is not None:  # only a Python caller can pass one: named as spelt (num_clientz, not num-clientz)
            raise ConfigError(str(err["loc"][-1]), unknown) from e
        field = str(err["loc"][0]) if err["loc"] else "config"
        msg = str(err["msg"]).removeprefix("Value error, ")
        got = err.get("input")
        raise ConfigError(field.replace("_", "-"), f"{msg} (got {got!r})") from e
    _cross_checks(cfg)
    return cfg
