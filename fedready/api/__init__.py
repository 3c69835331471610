"""The Python API: the same jobs as the CLI, with typed results (``import fedready``).

Each function takes a task (``data`` + ``schema`` [+ ``test``], and a ``model``: a registered
name, ``package.module:factory`` or an importable factory function; nothing given means the
embedded data set) and the options of the matching CLI command, and returns a frozen result.
The CLI commands are thin layers over these functions.

Example
-------
>>> import fedready
>>> r = fedready.simulate(data="train.csv", schema="schema.toml", rounds=5, epsilon=1.0)  # doctest: +SKIP
>>> r.accuracy, r.epsilon, r.run_dir  # doctest: +SKIP
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedready.errors import ConfigError

__all__ = [
    "AuditResult",
    "CompressionResult",
    "EvaluationResult",
    "PipelineResult",
    "RoundMetrics",
    "SimulationResult",
    "audit_privacy",
    "compress",
    "evaluate",
    "model_name",
    "pipeline",
    "simulate",
]


@dataclass(frozen=True)
class RoundMetrics:
    """One server round: the global model's accuracy and loss on the benchmark, and the epsilon spent so far."""

    round: int
    accuracy: float
    loss: float
    epsilon: float | None  # sample-level, largest over clients (None without DP)
    client_epsilon: float | None  # client-level (None without client-level DP)


@dataclass(frozen=True)
class SimulationResult:
    """What :func:`simulate` returns.

    Attributes
    ----------
    accuracy : float or None
        The final global model's accuracy on the benchmark (the server's public holdout); None when
        the run failed (no round aggregated an update: an untrained model's score is no result).
    epsilon, delta : float or None
        Record-level privacy spent: every release about a client's rows (noisy row count, each
        training round, the post-training counts) composed, largest over clients.
    client_epsilon : float or None
        Client-level epsilon, with client-level DP.
    run_dir : Path
        The run folder (config, model, ledger, metrics, audit log).
    rounds : list of RoundMetrics
        Per-round metrics, in order.
    summary : dict
        Everything ``summary.json`` holds.
    """

    accuracy: float | None
    epsilon: float | None
    delta: float | None
    client_epsilon: float | None
    run_dir: Path
    rounds: list[RoundMetrics]
    summary: dict[str, Any]

    @property
    def status(self) -> str:
        """``completed`` or ``failed`` (see ``summary["reason"]`` and ``summary["first_client_error"]``)."""
        return str(self.summary.get("status", "completed"))

    @property
    def private(self) -> bool:
        """Whether the epsilon is a guarantee (DP on, secret noise, nothing released outside it)."""
        return bool(self.summary.get("private", False))

    @property
    def majority_rate(self) -> float | None:
        """The benchmark's majority-class rate: the accuracy of always answering its most frequent class."""
        return self.summary.get("majority_rate")

    @property
    def balanced_accuracy(self) -> float | None:
        """The final model's balanced accuracy on the benchmark (mean per-class recall; chance is 1 / classes)."""
        return self.summary.get("balanced_accuracy")

    @property
    def below_majority(self) -> bool:
        """The model is no more accurate than always answering the majority class."""
        return self.accuracy is not None and self.majority_rate is not None and self.accuracy <= self.majority_rate


def model_name(model: str | Callable[..., Any]) -> str:
    """The ``--model`` spelling of ``model``: a name as is, an importable function as ``module:qualname``.

    Raises
    ------
    ConfigError
        If the function cannot be imported by name (defined in ``__main__`` or a notebook): the
        simulated clients run in other processes and import it from its module.
    """
    if isinstance(model, str):
        return model
    module, qualname = getattr(model, "__module__", None), getattr(model, "__qualname__", "")
    if not module or module == "__main__" or "<" in qualname:
        raise ConfigError("model", f"{qualname or model!r} is defined in __main__ or a closure; put the factory in "
                                   "an importable module and pass it (or 'module:function')")  # fmt: skip
    return f"{module}:{qualname}"


def _new_run_dir(out: Path) -> Path:
    return out / f"sim-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def _task_options(data: Any, schema: Any, test: Any, test_fraction: float | None, model: Any) -> dict[str, Any]:
    given: dict[str, Any] = {}
    for key, value in (("data", data), ("schema", schema), ("test", test)):
        if value is not None:
            given[key] = str(Path(value).expanduser().resolve())
    if test_fraction is not None:
        given["test_fraction"] = test_fraction
    if model is not None:
        given["model"] = model_name(model)
    return given


def simulate(
    data: str | Path | None = None,
    schema: str | Path | None = None,
    *,
    test: str | Path | None = None,
    test_fraction: float | None = None,
    model: str | Callable[..., Any] | None = None,
    out: str | Path = "runs",
    name: str | None = None,
    resume: str | Path | None = None,
    ray_address: str | None = None,
    on_round: Callable[[Any], None] | None = None,
    on_note: Callable[[str], None] | None = None,
    on_start: Callable[[Any], None] | None = None,
    wire_log: str | Path | None = None,
    **options: Any,
) -> SimulationResult:
    """Run (or resume) a private federated training in simulation.

    Parameters
    ----------
    data, schema : path, optional
        The training CSV and its schema TOML (default: the embedded data set).
    test : path, optional
        A benchmark CSV in the same format; otherwise ``test_fraction`` (default 0.2) of ``data``.
    model : str or callable, optional
        ``logreg | mlp | mlp-wide | mlp-large``, ``package.module:factory`` or an importable
        function ``(in_features, num_classes) -> torch.nn.Module``. [default: planned from rows per
        client, :func:`fedready.simulations.plan.plan_training`: under DP ``logreg`` below 2,000
        training rows per client, with its rate lowered to bound the final model's noise; else ``mlp``]
    out, name : path, str
        The run goes to ``out/name`` (default name: ``sim-<time>-<id>``).
    resume : path, optional
        Continue this run folder from its last checkpoint (only ``rounds`` may change).
    on_round, on_note, on_start : callable, optional
        Called with each round's report, with each one-line note (rows left out, a model Opacus
        fixed), and with the checked configuration before the first round.
    wire_log : path, optional
        Every client appends the keys of each message it sends to this file.
    **options
        Any field of :class:`~fedready.config.SimulationConfig` (``rounds``, ``num_clients``,
        ``epsilon``, ``partitioner``, ``client_dp``, ``secagg``, ``attack``, ...).

    Raises
    ------
    ConfigError
        For a bad option, data file, schema or model, before anything runs.
    """
    from fedready.config import make_config
    from fedready.simulations.engine import check_config, check_ray_temp_dir, load_run_config
    from fedready.simulations.engine import simulate as run

    given = {**options, **_task_options(data, schema, test, test_fraction, model)}
    planned = ""  # the training plan's one line (a resumed run keeps its recorded options)
    if resume is not None:
        run_dir = Path(resume)
        base = load_run_config(run_dir).model_dump()
        changed = sorted(k for k in given if k != "rounds" and given[k] != base.get(k))
        if changed:
            raise ConfigError(changed[0].replace("_", "-"), "cannot change when resuming; only --rounds may change")
        if "rounds" in given and base["budget_rounds"] is None:
            base["budget_rounds"] = base["rounds"]  # the budget stays planned over the original rounds
        cfg = make_config(**{**base, **given})
    else:
        plan = _plan(given)
        planned = plan.note
        cfg = make_config(**{**given, **plan.options})
        run_dir = Path(out) / name if name else _new_run_dir(Path(out))
        if (run_dir / "config.json").exists():
            raise ConfigError("name", f"{run_dir} already holds a run; pick another --name or use --resume")
    # fail fast (exit 2) before Ray starts or anything is written; a refused configuration prints only its error
    notes = [*([planned] if planned else []), *check_config(cfg)]
    for note in notes:
        if on_note is not None:
            on_note(note)
    check_ray_temp_dir(ray_address)
    if on_start is not None:
        on_start(cfg)
    summary = run(cfg, run_dir, on_round=on_round, ray_address=ray_address,
                  wire_log=Path(wire_log) if wire_log is not None else None)  # fmt: skip
    return simulation_result(summary)


def simulation_result(summary: dict[str, Any]) -> SimulationResult:
    """A :class:`SimulationResult` from a run's summary (and its ``metrics.jsonl``)."""
    run_dir = Path(summary["run_dir"])
    metrics = run_dir / "metrics.jsonl"
    rounds = []
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            h = json.loads(line)
            rounds.append(RoundMetrics(int(h["round"]), float(h["accuracy"]), float(h.get("loss", float("nan"))),
                                       h.get("epsilon") if summary.get("dp") else None,
                                       h.get("client_epsilon")))  # fmt: skip
    acc = summary.get("accuracy")
    return SimulationResult(accuracy=None if acc is None else float(acc), epsilon=summary.get("epsilon"),
                            delta=summary.get("delta"), client_epsilon=summary.get("client_epsilon"),
                            run_dir=run_dir, rounds=rounds, summary=summary)  # fmt: skip


@dataclass(frozen=True)
class AuditResult:
    """What :func:`audit_privacy` returns.

    Attributes
    ----------
    level : str
        ``client`` (canary clients) or ``sample`` (gradient canaries).
    epsilon_lower_bound : float
        The empirical lower bound (Steinke et al. 2023): with probability ``confidence`` the mechanism
        as implemented is not ``(epsilon, delta)``-DP for any smaller epsilon. Not a guarantee.
    confidence, delta : float
        Of the bound (``delta`` is the accounted one's).
    accounted_epsilon : float or None
        What the audit run's own ledger charges for the audited release (None without DP at that level).
    exceeded : bool
        The bound is above the accounted epsilon: the implementation leaks more than it charges (a bug).
    estimate : float
        The Gaussian-fit estimate (Andrew et al. 2024): information only, not a bound.
    written_to : Path
        The run folder that now holds ``audit_privacy.json`` (the audited run, or the audit's own run).
    audit_run_dir : Path
        The audit's own simulation (canaries included).
    report : dict
        Everything recorded for this level in ``audit_privacy.json``.
    """

    level: str
    epsilon_lower_bound: float
    confidence: float
    delta: float
    accounted_epsilon: float | None
    exceeded: bool
    estimate: float
    written_to: Path
    audit_run_dir: Path
    report: dict[str, Any]


def audit_privacy(
    run: str | Path | None = None,
    *,
    level: str = "client",
    canaries: int = 1000,
    confidence: float = 0.95,
    data: str | Path | None = None,
    schema: str | Path | None = None,
    test: str | Path | None = None,
    test_fraction: float | None = None,
    model: str | Callable[..., Any] | None = None,
    out: str | Path | None = None,
    name: str | None = None,
    ray_address: str | None = None,
    on_round: Callable[[Any], None] | None = None,
    on_note: Callable[[str], None] | None = None,
    on_start: Callable[[Any], None] | None = None,
    **options: Any,
) -> AuditResult | dict[str, AuditResult]:
    """Measure an empirical epsilon lower bound with canaries, in a second, simulated run.

    Parameters
    ----------
    run : path, optional
        Audit this run's configuration (its ``config.json``); ``audit_privacy.json`` is written into
        it. Without ``run``: the task and ``options`` as for :func:`simulate`, and the file goes into
        the audit's own run folder.
    level : {"client", "sample", "both", "scale"}
        Canary clients in the aggregation (Andrew et al. 2024), gradient canaries in the clients'
        DP-SGD steps (Steinke et al. 2023, white box), or both in one run: then the result is a
        dict of the two :class:`AuditResult`, by level. ``scale``: canary rows in simulated
        clients running the real client code, membership guessed from the released updates' norms
        (what would reveal a row count leaking through the update's scale); no federation is run.
    canaries : int
        Canaries per level, each inserted with probability 1/2 (default 1000: the bound cannot exceed
        about 4.4).
    confidence : float
        Confidence of the lower bound (default 0.95).
    out, name : path, str
        The audit's own run goes to ``out/name`` (default: beside ``run``, or ``runs``;
        ``audit-<level>-<time>-<id>``).

    Raises
    ------
    ConfigError
        For a bad option, a run folder a deployment wrote (canaries never enter real clients' data),
        SecAgg+, or a client-level audit of a non-mean aggregator.
    """
    from fedready.config import make_config
    from fedready.evaluation.card import record_audit
    from fedready.privacy.auditing import read_audits
    from fedready.simulations.audit import check_simulated_run, run_audit
    from fedready.simulations.engine import check_config, check_ray_temp_dir, load_run_config

    given = {**options, **_task_options(data, schema, test, test_fraction, model)}
    if run is not None:
        run_dir = Path(run).expanduser().resolve()
        if given:
            first = sorted(given)[0].replace("_", "-")
            raise ConfigError(first, "--run audits the run's own configuration (its config.json); pass options "
                                     "without --run")  # fmt: skip
        check_simulated_run(run_dir)
        cfg = load_run_config(run_dir)
    else:
        cfg = make_config(**given)
    for note in check_config(cfg):
        if on_note is not None:
            on_note(note)
    check_ray_temp_dir(ray_address)
    parent = Path(out) if out is not None else (run_dir.parent if run is not None else Path("runs"))
    audit_dir = (parent / name if name else parent / f"audit-{level}-{time.strftime('%Y%m%d-%H%M%S')}-"
                 f"{secrets.token_hex(2)}").resolve()  # fmt: skip
    if on_start is not None:
        on_start(cfg)
    reports = run_audit(cfg, audit_dir, level=level, canaries=canaries, confidence=confidence,
                        ray_address=ray_address, on_round=on_round)  # fmt: skip
    target = run_dir if run is not None else audit_dir
    plain = target / "summary.json" if run is not None else None
    for report in reports.values():
        if plain is not None:
            if plain.exists():
                report["cost"]["plain_run_seconds"] = json.loads(plain.read_text()).get("seconds")
            report["audited_run"] = str(run_dir)
        record_audit(report, target)
    recorded = read_audits(target)
    results = {
        lv: AuditResult(level=lv, epsilon_lower_bound=float(r["epsilon_lower_bound"]),
                        confidence=float(r["confidence"]), delta=float(r["delta"]),
                        accounted_epsilon=r["accounted"]["epsilon"], exceeded=bool(r["exceeds_accounted"]),
                        estimate=float(r["estimate"]["epsilon"]), written_to=target, audit_run_dir=audit_dir,
                        report=r)
        for lv, r in ((lv, recorded[lv]) for lv in reports)
    }  # fmt: skip
    return results if len(results) > 1 else results[level]


@dataclass(frozen=True)
class EvaluationResult:
    """What :func:`evaluate` returns: the headline numbers, the gates and the whole report.

    Attributes
    ----------
    passed : bool
        Whether every gate of the policy passed.
    failed : list of str
        The gates that failed (``gate[key]``).
    accuracy : float
        Accuracy on the benchmark.
    fairness : dict
        Per sensitive attribute: group metrics and disparities (multi-class: one-vs-rest per class).
    report : dict
        Everything ``evaluation.json`` holds.
    run_dir : Path
        The evaluated run (it now holds ``evaluation.json`` and the model card).
    """

    passed: bool
    failed: list[str]
    accuracy: float
    fairness: dict[str, Any]
    report: dict[str, Any]
    run_dir: Path


def evaluate(
    run: str | Path,
    *,
    policy: str | Path | None = None,
    baseline: str | Path | None = None,
    seeds: int = 0,
    federated: bool = True,
    data: str | Path | None = None,
    schema: str | Path | None = None,
    mitigate: str | None = None,
    seeds_epsilon: float | None = None,
) -> EvaluationResult:
    """Evaluate a finished run: fairness, stability, calibration, mitigation, explanations, gates, model card.

    See :func:`fedready.evaluation.evaluate_run` for the parameters.
    """
    from fedready.evaluation import evaluate_run

    report = evaluate_run(run, policy=policy, baseline=baseline, seeds=seeds, federated=federated,
                          data=Path(data) if data is not None else None,
                          schema=Path(schema) if schema is not None else None, mitigate=mitigate,
                          seeds_epsilon=seeds_epsilon)  # fmt: skip
    failed = [g["gate"] for g in report["gates"] if not g["passed"]]
    return EvaluationResult(passed=bool(report["passed"]), failed=failed, accuracy=float(report["metrics"]["accuracy"]),
                            fairness=report["fairness"], report=report, run_dir=Path(run))  # fmt: skip


@dataclass(frozen=True)
class CompressionResult:
    """What :func:`compress` returns.

    Attributes
    ----------
    selected : str or None
        The smallest variant that passed every gate (its file is ``RUN/compression/selected.onnx``).
    reason : str or None
        Why nothing was selected.
    variants : list of dict
        Every variant's size, speed, accuracy and gates.
    skipped : list of dict
        Variants that do not apply to this model, with the reason.
    report : dict
        Everything ``compression.json`` holds.
    """

    selected: str | None
    reason: str | None
    variants: list[dict[str, Any]]
    skipped: list[dict[str, str]]
    report: dict[str, Any]


def compress(
    run: str | Path,
    *,
    policy: str | Path | None = None,
    student_widths: tuple[int, ...] = (64,),
    prune_keep: float = 0.25,
    sparsity: float = 0.5,
    epochs: int = 30,
    seed: int = 0,
    timing: bool = True,
) -> CompressionResult:
    """Build edge variants of a run's model (int8, pruned, distilled), gate each, select the smallest passing one."""
    from fedready.compression.pipeline import CompressionOptions, compress_run

    opts = CompressionOptions(student_widths=tuple(student_widths), prune_keep=prune_keep, sparsity=sparsity,
                              epochs=epochs, seed=seed)  # fmt: skip
    report = compress_run(run, policy=policy, options=opts, timing=timing)
    return CompressionResult(selected=report["selected"], reason=report["reason"], variants=report["variants"],
                             skipped=report.get("skipped", []), report=report)  # fmt: skip


def _plan(given: dict[str, Any]) -> Any:
    """The training plan for options the user left unset (:func:`fedready.simulations.plan.plan_training`)."""
    from fedready.config import make_config
    from fedready.simulations.plan import plan_training
    from fedready.task import TaskSpec, load_task

    make_config(**given)  # a bad option is named before any data is read
    spec = TaskSpec(**{k: given[k] for k in ("data", "schema", "test", "test_fraction") if k in given})
    task = load_task(spec)
    return plan_training(given, train_rows=len(task.train), schema=task.schema)


@dataclass(frozen=True)
class PipelineResult:
    """What :func:`pipeline` returns: one entry per step (train, evaluate, compress, sign, publish, device)."""

    steps: dict[str, Any]
    out: Path

    @property
    def accuracy(self) -> float:
        """The trained model's accuracy on the benchmark."""
        return float(self.steps["train"]["accuracy"])

    @property
    def decision(self) -> str:
        """The release decision: passed, undecided, failed or not-run."""
        return str(self.steps["publish"]["decision"])

    @property
    def channels(self) -> list[str]:
        """The channels the release reached (stable only when every gate passed, or with force)."""
        return list(self.steps["publish"]["channels"])


def pipeline(
    data: str | Path | None = None,
    schema: str | Path | None = None,
    *,
    test: str | Path | None = None,
    test_fraction: float | None = None,
    model: str | Callable[..., Any] | None = None,
    out: str | Path | None = None,
    version: str = "1.0.0",
    say: Callable[[str], None] | None = None,
    simulate_with: Callable[..., dict[str, Any]] | None = None,
    force: bool = False,
    reason: str | None = None,
    **options: Any,
) -> PipelineResult:
    """The whole job: train, evaluate, compress, sign, publish, update a device and predict raw rows.

    Resumable: run it again after a failure and it picks up where it stopped. ``say`` receives
    one line per step (default: nothing); ``options`` are :func:`simulate` options. The release
    reaches stable only when every gate passes (an undecided one stops it at canary, a failed one
    promotes it nowhere) unless ``force`` with a ``reason``. ``out`` defaults to
    ``fedready-<schema name>`` for own data, ``fedready-demo`` for the embedded set; a folder
    holding a run of other data or another schema is refused. Options left unset are planned
    from rows per client as :func:`simulate` plans them
    (:func:`fedready.simulations.plan.plan_training`).
    """
    from fedready.api._pipeline import check_out, default_out, run_pipeline

    given = {**options, **_task_options(data, schema, test, test_fraction, model)}
    out = Path(out) if out is not None else default_out(data, schema)
    check_out(out, given)  # before anything reads the folder's run (its model, its summary)

    def train(given: dict[str, Any], *, out: Path, name: str | None, resume: Path | None,
              ray_address: str | None) -> dict[str, Any]:  # fmt: skip
        opts = dict(given)
        task = {k: opts.pop(k) for k in ("data", "schema", "test", "test_fraction", "model") if k in opts}
        return simulate(**task, out=out, name=name, resume=resume, ray_address=ray_address, on_note=say,
                        **opts).summary  # fmt: skip

    steps = run_pipeline(Path(out), given=given, version=version, say=say or (lambda _: None),
                         simulate=simulate_with or train, force=force, reason=reason)  # fmt: skip
    return PipelineResult(steps=steps, out=Path(out))
